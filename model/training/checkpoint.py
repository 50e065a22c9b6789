"""Checkpoints: plain dicts, a sha256 beside each, the newest good one found, per-rank states.

`R/checkpoints/ckpt_<step:08d>.pt` is written atomically, then its checksum file
`ckpt_<step:08d>.pt.sha256` (`sha256sum -c` reads it): a checksum file never names a checkpoint
that is not there. A save that fails (a full disk: core.errors.DiskFull naming the file) leaves
neither, nor a temp file; a checkpoint is removed before its checksum file, and a checksum file
left alone (a process killed between the two) is removed before training. Reading verifies the
checksum: a damaged file (bytes flipped, truncated) is reported by name and the previous good
one is used; when checkpoints exist but none is good, the run fails with their list instead of
silently starting again from step 0. A checkpoint whose checksum file is missing (written before
cfh checksummed checkpoints, the file was lost, or the process was killed between the two
writes) is checked against the CRCs of its own zip archive and loads with a warning that says
the checksum file is missing. Each warning is logged once per process (cfh.train: stderr and
the run's log.txt).
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.errors import UserError
from core.io import atomic_write_bytes, atomic_write_text

log = logging.getLogger("cfh.train")

CKPT_GLOB = "ckpt_*.pt"
SUFFIX = ".sha256"


class DamagedCheckpoints(UserError):
    """A run's checkpoints exist but none passes its checksum or loads."""


def checkpoint_path(run_dir: Path, step: int) -> Path:
    """`run_dir/checkpoints/ckpt_<step:08d>.pt`."""
    return Path(run_dir) / "checkpoints" / f"ckpt_{int(step):08d}.pt"


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, oldest first (verified or not)."""
    return sorted((Path(run_dir) / "checkpoints").glob(CKPT_GLOB))


def step_of(path: Path) -> int:
    """The step in a checkpoint's file name."""
    return int(path.stem.split("_")[1])


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save `state` to `path` atomically, then its sha256 beside it; when the checksum
    cannot be written, the checkpoint is removed again (and the error raised)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    atomic_write_bytes(path, data)
    try:
        atomic_write_text(_sidecar(path), f"{digest}  {path.name}\n")
    except BaseException:
        remove_checkpoint(path)  # with an older sidecar of the same name: it names other bytes
        raise


def remove_stale_temps(run_dir: Path) -> int:
    """Delete temp files of checkpoint writes a killed process left, and checksum files whose
    checkpoint is gone (call before training)."""
    folder = Path(run_dir) / "checkpoints"
    stale = list(folder.glob(".ckpt_*.tmp"))
    stale += [s for s in folder.glob(CKPT_GLOB + SUFFIX) if not _checkpoint_of(s).exists()]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint and its checksum file."""
    path.unlink(missing_ok=True)
    _sidecar(path).unlink(missing_ok=True)


_verified: dict[tuple[str, int, int], str | None] = {}  # (path, mtime_ns, size) -> problem


def damage(path: Path) -> str | None:
    """Why a checkpoint cannot be trusted (missing, checksum mismatch), or None if it is good.

    Cached per (path, mtime, size): a file is hashed once per process.
    """
    try:
        st = path.stat()
    except OSError:
        return "missing"
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _verified:
        _verified[key] = _check(path)
    return _verified[key]


def _check(path: Path) -> str | None:
    side = _sidecar(path)
    if not side.exists():  # no checksum to compare with: the archive's own CRCs catch damage
        try:
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
        except (OSError, zipfile.BadZipFile, EOFError) as e:
            return f"not a readable checkpoint ({type(e).__name__}); its {SUFFIX} file is missing"
        return f"CRC error in {bad}; its {SUFFIX} file is missing" if bad else None
    expected = side.read_text().split()[0] if side.read_text().split() else ""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    if h.hexdigest() != expected:
        return f"sha256 {h.hexdigest()[:12]}... does not match {side.name} ({expected[:12]}...)"
    return None


def read_checkpoint(path: Path, map_location: str = "cpu") -> dict:
    """A verified checkpoint's dict; DamagedCheckpoints naming the file when it is not good."""
    problem = damage(path)
    if problem is None:
        if not _sidecar(path).exists():
            warn_once(
                f"checkpoint {path} is not verified: its checksum file {_sidecar(path).name} is "
                "missing (written before checksums, or lost); loaded as its zip CRCs allow"
            )
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is damaged
            problem = f"unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    raise DamagedCheckpoints(f"checkpoint {path} is damaged: {problem}")


def saved_config(path: Path) -> dict | None:
    """The config a good checkpoint was trained with, its tensors left on disk (mmap); None
    for a damaged file or one without a config (load_latest_checkpoint names the damage)."""
    if damage(path) is not None:
        return None
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception:  # noqa: BLE001 - unreadable: the resume's own load says so
        return None
    config = state.get("config") if isinstance(state, dict) else None
    return config if isinstance(config, dict) else None


def good_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoints whose checksum matches, oldest first."""
    return [p for p in checkpoint_paths(run_dir) if damage(p) is None]


def load_latest_checkpoint(run_dir: Path, map_location: str = "cpu") -> dict | None:
    """The newest good checkpoint (damaged ones are skipped, each named in a warning).

    None when the run has no checkpoint at all; DamagedCheckpoints when it has some and none is
    good (listing them), so a run never silently starts over.
    """
    paths = checkpoint_paths(run_dir)
    problems = []
    for path in reversed(paths):
        try:
            state = read_checkpoint(path, map_location)
        except DamagedCheckpoints as e:
            problems.append(str(e))
            continue
        for problem in problems:  # said once a good one is found: "previous" names it
            warn_once(f"{problem}; using the previous good checkpoint {path.name}")
        return state
    if paths:
        names = ", ".join(p.name for p in paths)
        raise DamagedCheckpoints(
            f"run_dir={run_dir}: no good checkpoint among {names} ({problems[0]}); restore one "
            "or delete the checkpoints folder to start the run again from step 0"
        )
    return None


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + SUFFIX)


def _checkpoint_of(sidecar: Path) -> Path:
    return sidecar.with_name(sidecar.name.removesuffix(SUFFIX))


_warned: set[str] = set()


def warn_once(msg: str) -> None:
    """Log a checkpoint warning once per process (a run's checkpoints are looked at twice)."""
    if msg not in _warned:
        _warned.add(msg)
        log.warning(msg)


def skipped_for(run_dir: Path, used: Path) -> list[dict]:
    """The checkpoints newer than `used` that are damaged: [{"path", "reason"}], newest first."""
    newer = [p for p in reversed(checkpoint_paths(run_dir)) if step_of(p) > step_of(used)]
    return [{"path": str(p), "reason": why} for p in newer if (why := damage(p)) is not None]


# ---------------------------------------------------------------- per-rank states


def rng_state(device: torch.device | None = None) -> dict:
    """RNG states of python, numpy, torch and this rank's CUDA device, as plain values.

    Only the current device's CUDA state: get_rng_state_all would open a context on every
    visible GPU from every rank.
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() saved."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if isinstance(cuda, torch.Tensor) and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda, torch.cuda.current_device())


def rank_states(ckpt: dict, world: int, run_dir: Path) -> dict[str, list[Any]]:
    """The checkpoint's per-rank RNG states and data positions; refuses another world size.

    Each rank's noise, timesteps, label dropout and AR splits come from its own streams, so
    continuing with another number of ranks would not continue the same run.
    """
    rng, data = ckpt["rng"], ckpt["data"]
    if not isinstance(rng, list):  # written by a single process before per-rank lists
        rng, data = [rng], [data]
    saved = int(ckpt.get("world_size", len(rng)))
    if saved != world:
        raise UserError(
            f"run_dir={run_dir} was checkpointed by {saved} rank(s) (world size {saved}) at step "
            f"{ckpt['step']}; this job has world size {world}. Resume with {saved} rank(s) "
            "(cluster.nodes x tasks per node, or torchrun --nproc_per_node), or start a new run_dir"
        )
    return {"rng": rng, "data": data}
