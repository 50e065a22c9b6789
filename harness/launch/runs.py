"""Run folders and grid folders: where every point's state lives on disk.

A run is trained once in `<root>/runs/<signature>/` (harness.grid.signatures), whichever grids use
it. A grid keeps `<root>/grids/<name>/plan.json` (its expanded points as last swept) and
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
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from core.config.identity import IDENTITY_FIELD, config_identity
from core.errors import UserError
from core.io import atomic_write_json, atomic_write_text, now_iso, raise_if_full, read_status
from core.names import check_name, check_signature

# ---------------------------------------------------------------- names and folders


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
    old = read_point(rdir)
    identity = old.get(IDENTITY_FIELD)
    if not cfg_path.exists():
        # Written once: a later grid with other non-result keys (log_every, cluster) reuses it.
        cfg = {**point.config, "run_dir": str(rdir.resolve())}
        atomic_write_text(cfg_path, OmegaConf.to_yaml(OmegaConf.create(cfg)))
        identity = config_identity(cfg)  # what it trains: a later hand edit shows against it
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
    if identity:
        new[IDENTITY_FIELD] = identity
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
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} ({command})\n".encode(), 0)
        except OSError as e:  # a full disk: DiskFull naming the lock file
            raise_if_full(e, path)
            raise
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
        "findings": grid.findings,  # the claims `cfh report` judges (harness.grid.findings)
        "decide_on": grid.decide_on,  # the metric they are judged on
        "updated": now_iso(),
        "points": [p.to_json() for p in points],
        "removed": removed or [],
    }
    atomic_write_json(path, plan)
    return path
