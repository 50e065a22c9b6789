"""Signatures, run folders and grid folders: where every point's state lives on disk.

A run's signature is a short hash of its resolved config's delta from the default config,
restricted to keys that change results (dora's idea), plus the number of ranks when it is not
1: the same training in two grids is one run folder, `<root>/runs/<signature>/`, trained once.
A grid keeps `<root>/grids/<name>/plan.json` (its expanded points as last swept) and
`runs/<signature>` symlinks to its run folders.

Files in a run folder written here (the trainer and jobs.py own status.json and the rest):
    config.yaml      resolved config with run_dir set; written once, when the folder is made
    point.json       {"signature", "axes", "overrides", "evals": [{"key", "overrides",
                     "values"}], "grids": [names]}; eval points of every grid that uses the run
    submission.json  the harness's record of the job: {"job_id", "backend", "submitted",
                     "grid", "cancelled", "history": [...]}; never written by the job itself,
                     so a sweep and a running job never race on one file
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from core.errors import UserError
from core.io import atomic_write_json, atomic_write_text, now_iso, read_status
from harness.config import config_dirs, resolve_overrides

SIGNATURE_LEN = 10
NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
SIGNATURE_RE = re.compile(r"^[0-9a-f]{10}$")  # SIGNATURE_LEN hex digits
# Keys (and key prefixes) that decide how or where a run executes, not what it learns.
NON_RESULT_KEYS = (
    "run_dir",
    "sample",
    "eval",
    "cluster",
    "train.log_every",
    "train.loggers",  # where metrics go, not what they are
    "train.num_workers",
    "train.ckpt_every",
    "train.keep_checkpoints",
    "train.device",
    "train.dist_timeout_s",
    "train.compile",
    "train.grad_checkpointing",
    "train.max_nonfinite",
    "model.attention",  # sdpa and flex compute the same attention
)
# key -> (key, values) under which it is used; elsewhere it is ignored by the trainer, so it is
# left out of the signature (uniform S_train does not depend on train.ar.steps).
CONDITIONAL_KEYS = {
    "train.ar.steps": ("train.ar.mode", ("fixed",)),
    "train.ar.decay": ("train.ar.mode", ("decay",)),
    "train.order_block": ("train.order", ("block_raster",)),
    "train.loss.min_snr_gamma": ("train.loss.noise_weighting", ("min_snr",)),
}


# ---------------------------------------------------------------- signatures


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def _default_flat() -> dict[str, Any]:
    """The default config, flat, for the config dirs in effect (they may change in-process)."""
    return _default_flat_for(config_dirs())


@functools.cache
def _default_flat_for(dirs: tuple[Path, ...]) -> dict[str, Any]:
    return flatten(resolve_overrides([]))


@functools.cache
def _is_result_key(key: str) -> bool:
    return not any(key == k or key.startswith(f"{k}.") for k in NON_RESULT_KEYS)


def _canonical(value: Any, default: Any) -> Any:
    """Compare 1 and 1.0 as equal where the default is a float (the config's type)."""
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def config_delta(cfg: dict) -> dict[str, Any]:
    """{dotted key: value} where the resolved config differs from the default, result keys only."""
    flat = flatten(cfg)
    default = _default_flat()
    for key, (cond, values) in CONDITIONAL_KEYS.items():
        if key in flat and flat.get(cond) not in values:
            flat[key] = default.get(key)
    if not flat.get("bench.enabled"):  # bench.* settings only shape bench points
        for key in [k for k in flat if k.startswith("bench.") and k != "bench.enabled"]:
            flat[key] = default.get(key)
    aw = "train.loss.ar_weight."
    if flat.get(f"{aw}max") == flat.get(f"{aw}min"):  # the schedule only shapes a ramp
        flat[f"{aw}schedule"] = default.get(f"{aw}schedule")
    delta = {}
    for key in sorted(set(flat) | set(default)):
        if not _is_result_key(key):
            continue
        value = _canonical(flat.get(key), default.get(key))
        if value != _canonical(default.get(key), default.get(key)) or key not in default:
            delta[key] = value
    ranks = _world_size(cfg.get("cluster") or {})
    if ranks != 1:  # each rank has its own random streams: another rank count, another run
        delta["world_size"] = ranks
    return delta


def _world_size(cluster: dict) -> int:
    from harness.profiles import world_size

    return world_size(cluster)


def signature(cfg: dict) -> str:
    """Short hash (10 hex of sha1) of the resolved config's result-relevant delta."""
    from harness.grid import short_hash

    return short_hash(config_delta(cfg), SIGNATURE_LEN)


# ---------------------------------------------------------------- names and folders


def check_name(name: str, what: str = "grid name") -> str:
    """A folder name from the user: letters, digits, _ and - only (no path traversal)."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise UserError(f"{what} {name!r} may only use letters, digits, _ and -")
    return name


def check_signature(sig: str) -> str:
    """A signature read from disk or typed by the user: exactly 10 lowercase hex digits."""
    if not isinstance(sig, str) or not SIGNATURE_RE.match(sig):
        raise UserError(f"signature {sig!r} must be {SIGNATURE_LEN} lowercase hex digits")
    return sig


def run_dir(root: str | os.PathLike, sig: str) -> Path:
    """`<root>/runs/<signature>/`."""
    return Path(root) / "runs" / check_signature(sig)


def grid_dir(root: str | os.PathLike, name: str) -> Path:
    """`<root>/grids/<name>/`."""
    return Path(root) / "grids" / check_name(name)


# ---------------------------------------------------------------- run folder files


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def read_point(rdir: str | os.PathLike) -> dict:
    """The run's point.json ({} when absent or unreadable)."""
    return _read_json(Path(rdir) / "point.json")


def read_submission(rdir: str | os.PathLike) -> dict:
    """The run's submission.json ({} when never submitted)."""
    return _read_json(Path(rdir) / "submission.json")


def write_submission(rdir: str | os.PathLike, **fields: Any) -> dict:
    """Merge fields into submission.json; a new job_id starts a new history entry."""
    path = Path(rdir) / "submission.json"
    sub = _read_json(path)
    if "job_id" in fields and fields["job_id"] != sub.get("job_id"):
        history = sub.get("history", [])
        if sub.get("job_id") is not None:
            history.append({k: sub.get(k) for k in ("job_id", "backend", "submitted", "grid")})
        sub = {"history": history}
    sub.update(fields)
    atomic_write_json(path, sub)
    return sub


def write_run(root: str | os.PathLike, grid_name: str, point: Any) -> Path:
    """Create or update one point's run folder: config.yaml (once), point.json, grid link."""
    rdir = run_dir(root, point.signature)
    rdir.mkdir(parents=True, exist_ok=True)
    cfg_path = rdir / "config.yaml"
    if not cfg_path.exists():
        # Written once: a later grid with other non-result keys (log_every, cluster) reuses it.
        cfg = {**point.config, "run_dir": str(rdir.resolve())}
        atomic_write_text(cfg_path, OmegaConf.to_yaml(OmegaConf.create(cfg)))
    old = read_point(rdir)
    evals = {e["key"]: e for e in old.get("evals", []) if isinstance(e, dict) and "key" in e}
    for e in point.evals:
        evals.setdefault(e.key, e.to_json())
    grids = sorted(set(old.get("grids", [])) | {grid_name})
    new = {
        "signature": point.signature,
        "axes": point.axes if not old.get("axes") else {**old["axes"], **point.axes},
        "overrides": old.get("overrides", point.overrides),
        "evals": list(evals.values()),
        "grids": grids,
    }
    if new != {k: old.get(k) for k in new}:
        atomic_write_json(rdir / "point.json", new)
    link(root, grid_name, point.signature)
    return rdir


def link(root: str | os.PathLike, grid_name: str, sig: str) -> None:
    """`<root>/grids/<name>/runs/<sig>` -> `../../../runs/<sig>` (relative: the root may move)."""
    path = grid_dir(root, grid_name) / "runs" / check_signature(sig)
    if path.is_symlink():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(Path("..", "..", "..", "runs", sig), target_is_directory=True)


def unlink(root: str | os.PathLike, grid_name: str, sig: str) -> None:
    """Drop a grid's link to a run (the run folder itself is kept: other grids may share it)."""
    path = grid_dir(root, grid_name) / "runs" / check_signature(sig)
    if path.is_symlink():
        path.unlink()


def evals_done(rdir: str | os.PathLike, status: dict | None = None) -> set[str]:
    """Keys of the eval points jobs.py recorded as done for this run."""
    status = read_status(rdir) if status is None else status
    done = status.get("evals")
    return set(done) if isinstance(done, dict) else set()


# ---------------------------------------------------------------- grid folder


@contextlib.contextmanager
def grid_lock(root: str | os.PathLike, name: str, command: str) -> Iterator[None]:
    """Hold `<root>/grids/<name>/.lock` exclusively (an OS lock: it dies with the process).

    `cfh sweep` (plan, run folders, submission), `cfh cancel` and `--prune` run under it, so two
    of them on one grid never act on the same stale plan. A second one waits, saying who holds it.
    """
    folder = grid_dir(root, name)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            print(f"waiting for {path}: held by {holder}", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({command})\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def check_grid_file(root: str | os.PathLike, grid: Any) -> None:
    """Refuse a grid file whose name another grid file already uses in this root."""
    swept = read_plan(root, grid.name).get("file")
    if not swept:
        return
    old, new = Path(swept).resolve(), Path(grid.path).resolve()
    if old != new and old.exists():
        raise UserError(
            f"grid name {grid.name!r} in root {root} belongs to {old}; {new} has the same name. "
            "Rename one of the files, or use another --root"
        )


def read_plan(root: str | os.PathLike, name: str) -> dict:
    """The grid's plan.json ({} when never swept)."""
    return _read_json(grid_dir(root, name) / "plan.json")


def write_plan(
    root: str | os.PathLike, grid: Any, points: list, removed: list[dict] | None = None
) -> Path:
    """Write `<root>/grids/<name>/plan.json`: the points as swept and those removed since."""
    path = grid_dir(root, grid.name) / "plan.json"
    plan = {
        "grid": grid.name,
        "file": str(grid.path),
        "description": grid.description,
        "overrides": grid.cli_overrides,
        "axis_keys": grid.axis_keys(),
        "eval_axis_keys": grid.eval_axis_keys(),
        "updated": now_iso(),
        "points": [p.to_json() for p in points],
        "removed": removed or [],
    }
    atomic_write_json(path, plan)
    return path
