"""The one reader of a run folder, shared by `cfh status` and the results loader.

`<root>/runs/<signature>/` holds status.json, config.yaml, point.json, metrics.jsonl and
eval/<hash>.json. Any file may be missing, half-written by a job still running, or corrupt: the
readers here never raise. A file that fails its checker (core.records) becomes one note,
`damaged: <file>: <reason>`, in `RunFolder.problems`. Torch-free and pandas-free on purpose:
`cfh status` imports this module and must stay fast.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config.identity import edited_config
from core.io import RUN_LOCK, load_status, lock_state
from core.records import STATUS_STATES, eval_record_problem, metrics_row_problem

# The states a shown row may have: what a job writes, plus "missing" (no run folder or nothing
# submitted) and "damaged" (status.json is not what a job writes; the row says why).
ROW_STATES = (*STATUS_STATES, "missing", "damaged")


def damaged(file: str, reason: str) -> str:
    """The note a reader shows for a file that fails its check."""
    return f"damaged: {file}: {reason}"


# ---------------------------------------------------------------- tolerant file readers


def read_json(path: Path) -> tuple[Any, str]:
    """(parsed JSON, '') or (None, a short problem note); never raises."""
    try:
        return json.loads(path.read_text(encoding="utf-8")), ""
    except FileNotFoundError:
        return None, f"missing {path.name}"
    except (OSError, ValueError) as e:
        return None, f"not JSON ({type(e).__name__})"


def read_yaml(path: Path) -> tuple[Any, str]:
    """(parsed YAML, '') or (None, a short problem note); never raises. A file past the YAML
    bounds (core.yaml_bounds: an alias bomb, deep nesting) is noted, not loaded."""
    import yaml  # here: `cfh status` reads no YAML

    from core.yaml_bounds import yaml_file_problem

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~10x faster
    try:
        problem = yaml_file_problem(path)
        if problem:
            return None, problem
        return yaml.load(path.read_text(encoding="utf-8"), Loader=loader), ""
    except FileNotFoundError:
        return None, f"missing {path.name}"
    except (OSError, ValueError, yaml.YAMLError) as e:
        return None, f"not YAML ({type(e).__name__})"


def read_metrics(path: Path, problems: list[str]) -> list[dict]:
    """metrics.jsonl rows, skipping torn or malformed lines (noted once in `problems`, with the
    first reason)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    out, bad = [], []
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except ValueError:
            bad.append(f"line {n} is not JSON")
            continue
        problem = metrics_row_problem(row)
        if problem:
            bad.append(f"line {n}: {problem}")
        else:
            out.append(row)
    if bad:
        problems.append(damaged(path.name, f"{len(bad)} bad line(s), first {bad[0]}"))
    return out


def list_files(folder: Path, pattern: str) -> list[Path]:
    """Paths in `folder` matching `pattern`, skipping hidden temp files; [] if no folder."""
    try:
        return [p for p in folder.glob(pattern) if not p.name.startswith(".")]
    except OSError:
        return []


# ---------------------------------------------------------------- one run folder


@dataclass
class RunFolder:
    """What one read of a run folder found; the files not asked for stay empty."""

    path: Path
    exists: bool = False
    status: dict = field(default_factory=dict)  # {} when absent or damaged
    problems: list[str] = field(default_factory=list)  # "damaged: <file>: <reason>", in order
    config: dict = field(default_factory=dict)
    config_missing: bool = True
    point: dict | None = None
    records: list[tuple[Path, dict]] = field(default_factory=list)  # usable eval records
    metrics: list[dict] = field(default_factory=list)
    gone: str | None = None  # status.json says running but no process holds the run: why
    edited: str | None = None  # config.yaml changed after cfh wrote it: why (not trusted then)

    @property
    def signature(self) -> str:
        """The folder's name: the run's signature."""
        return self.path.name

    @property
    def status_damaged(self) -> bool:
        """Whether status.json exists but is not what a job writes."""
        return any(p.startswith(damaged("status.json", "")) for p in self.problems)

    @property
    def not_started(self) -> bool:
        """Submitted, but no job has written yet (no status.json, no config.yaml)."""
        return not self.status and self.config_missing

    @property
    def evals(self) -> dict:
        """status.json's eval-point map: {eval key: {file, fid, s_eval, created, ...}}."""
        evals = self.status.get("evals")
        return evals if isinstance(evals, dict) else {}

    def eval_entries(self, keys: Collection[str]) -> dict[str, dict]:
        """The eval-map entries of `keys` (a grid's eval points) that the run has done."""
        evals = self.evals
        return {k: evals[k] for k in keys if isinstance(evals.get(k), dict)}

    def eval_files(self, keys: Collection[str] | None) -> list[Path]:
        """The run's eval jsons, restricted to the files of `keys` when status.json maps them
        (runs shared by several grids hold every grid's evals; a grid shows its own)."""
        files = sorted(list_files(self.path / "eval", "*.json"))
        if keys is None or not self.evals:
            return files
        wanted = {
            os.path.normpath(str(rec.get("file")))
            for rec in self.eval_entries(keys).values()
            if rec.get("file")
        }
        return [p for p in files if os.path.join("eval", p.name) in wanted]

    def progress(self) -> dict[str, Any]:
        """What status.json says of the run's progress (None where it says nothing)."""
        keys = ("state", "phase", "step", "total_steps", "attempts", "job_id", "loss")
        return {k: self.status.get(k) for k in (*keys, "error", "log", "started", "updated")}


def read_run_folder(
    path: str | os.PathLike, eval_keys: Collection[str] | None = None, *, full: bool = True
) -> RunFolder:
    """Read one run folder; `full=False` reads status.json only (what `cfh status` needs).

    With `full`, also config.yaml, point.json, metrics.jsonl and the eval records (only those of
    `eval_keys` when given and status.json maps them). Problems are noted in file order: status,
    config, point, metrics, eval records.
    """
    folder = RunFolder(path=Path(path))
    if not folder.path.is_dir():
        return folder
    folder.exists = True
    folder.status, bad = load_status(folder.path)
    if bad:
        folder.problems.append(damaged("status.json", bad))
    if folder.status.get("state") == "running":
        folder.gone = process_gone(folder.path)
    if not full:
        return folder
    cfg, bad = read_yaml(folder.path / "config.yaml")
    folder.config_missing = bad.startswith("missing")
    if bad and not folder.not_started:
        folder.problems.append(damaged("config.yaml", bad))
    folder.config = cfg if isinstance(cfg, dict) else {}
    point, bad = read_json(folder.path / "point.json")
    if bad and "missing" not in bad:  # point.json only exists for grid points
        folder.problems.append(damaged("point.json", bad))
    folder.point = point if isinstance(point, dict) else None
    if folder.config:  # a missing or unreadable config.yaml is noted above
        folder.edited = edited_config(folder.config, folder.status, folder.point or {})
    if folder.edited:
        folder.problems.append(damaged("config.yaml", folder.edited))
    folder.metrics = read_metrics(folder.path / "metrics.jsonl", folder.problems)
    for file in folder.eval_files(eval_keys):
        record, bad = read_json(file)
        bad = bad or eval_record_problem(record)
        if bad:
            folder.problems.append(damaged(f"{file.parent.name}/{file.name}", bad))
        else:
            folder.records.append((file, record))
    return folder


def last_log_line(run_dir: str | os.PathLike, tail_bytes: int = 8192) -> str | None:
    """The last non-empty line of the run's log.txt (cut to 200 characters), or None."""
    try:
        with open(Path(run_dir) / "log.txt", "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - tail_bytes))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    lines = [line.strip() for line in lines if line.strip()]
    return lines[-1][:200] if lines else None


def process_gone(run_dir: str | os.PathLike) -> str | None:
    """Why no process runs a run whose status.json says running (its run lock is free), with
    its last log line; None while a process holds the lock, or when this host cannot tell (a
    filesystem without locks, or a lock last taken on another host: locks may not be shared
    between hosts there)."""
    held, holder = lock_state(Path(run_dir) / RUN_LOCK)
    if held is not False or holder.get("host", socket.gethostname()) != socket.gethostname():
        return None
    last = last_log_line(run_dir)
    said = f"; last log line: {last}" if last else "; log.txt is empty or missing"
    return f"process gone (status.json says running, but no process holds {RUN_LOCK}){said}"


# ---------------------------------------------------------------- grids under a root


def plan_path(root: str | os.PathLike, grid: str) -> Path:
    """`<root>/grids/<grid>/plan.json`: written by the first sweep of the grid."""
    return Path(root) / "grids" / grid / "plan.json"


def decide_path(root: str | os.PathLike, grid: str) -> Path:
    """`<root>/grids/<grid>/decide.json`: the rounds of `cfh sweep GRID --until-decided`."""
    return Path(root) / "grids" / grid / "decide.json"


def swept_grids(root: str | os.PathLike) -> list[str]:
    """Names of the grids swept under `root` (those with a plan.json)."""
    grids = Path(root) / "grids"
    return sorted(p.parent.name for p in list_files(grids, "*/plan.json"))


def never_swept(root: str | os.PathLike, grid: str) -> str:
    """What `cfh status` and `cfh report` say of a grid with no plan under `root`."""
    known = ", ".join(swept_grids(root)) or "none"
    return (
        f"grid {grid!r} has never been swept under {root}: run `cfh --root {root} sweep {grid}` "
        f"first (grids swept there: {known})"
    )


def compact_hosts(names: Collection[str]) -> str:
    """Host names as SLURM writes a node list: cfh-node1, cfh-node2, gpu07 ->
    cfh-node[1-2],gpu07 (runs of one prefix and consecutive numbers of one width)."""
    groups: dict[tuple[str, int], list[int]] = {}
    out: list[str] = []
    for name in names:
        head = name.rstrip("0123456789")
        digits = name[len(head) :]
        if not digits:
            out.append(name)
            continue
        groups.setdefault((head, len(digits)), []).append(int(digits))
    for (head, width), numbers in groups.items():
        numbers = sorted(set(numbers))
        if len(numbers) == 1:
            out.append(f"{head}{numbers[0]:0{width}d}")
            continue
        runs: list[str] = []
        start = prev = numbers[0]
        for n in [*numbers[1:], None]:
            if n is not None and n == prev + 1:
                prev = n
                continue
            runs.append(f"{start:0{width}d}" + (f"-{prev:0{width}d}" if prev != start else ""))
            if n is not None:
                start = prev = n
        out.append(f"{head}[{','.join(runs)}]")
    return ",".join(out)
