"""`cfh sweep GRID`, `cfh status GRID`, `cfh cancel GRID`: reconcile a grid with what exists.

`cfh sweep` expands and validates the grid, then compares every point with its run folder and
the scheduler: a point with no result is submitted, a running one left alone, a completed one
skipped, a failed or cancelled one resubmitted only with --retry; points that left the grid since
the last sweep are reported (their jobs cancelled with --prune). It prints that plan before
submitting (--dry-run stops there), so running it twice submits nothing the second time.

Execution goes through harness.executors (submitit): every point is one job running
`harness.jobs.run_point(run_dir)` (train, then its eval points), wrapped in the checkpointable
PointJob that requeues on preemption or time-out. cluster=local runs the points on this machine,
at most `cluster.parallelism` at once, and blocks until they end, then prints the status table;
cluster=slurm submits one job array per resource shape and returns (--wait blocks). Job pickles
and logs live in `<root>/submitit/`; each run's submission.json records its job.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.io import now_iso
from harness import runs
from harness.config import parse_override, resolve_overrides
from harness.grid import Grid, TrainPoint, format_value, get_value, load_grid
from harness.status import (
    ACTIVE,
    FAILING,
    Row,
    collect,
    progress_lines,
    render,
    row_for,
    short_key,
    summary,
    train_rate,
)

# What reconcile does with a point, by state (failed/cancelled depend on --retry).
ACTION_BY_STATE = {
    "missing": "submit",
    "pending": "skip",
    "running": "skip",
    "requeued": "skip",
    "completed": "skip",
}


@dataclass
class Decision:
    """What one sweep does with one point, and why."""

    signature: str
    axes: dict[str, Any]
    state: str
    action: str  # submit | retry | skip | removed (kept) | cancel / prune (with --prune)
    reason: str = ""
    point: TrainPoint | None = None


# ---------------------------------------------------------------- reconcile


def reconcile(
    grid: Grid, points: Sequence[TrainPoint], root: str, retry: bool = False, prune: bool = False
) -> list[Decision]:
    """Decide, for every point of the grid and every point removed from it, what to do."""
    plan = {"points": [p.to_json() for p in points]}
    rows = collect(root, plan)
    out = []
    for p, row in zip(points, rows, strict=True):
        state = row.state
        if state in ("failed", "cancelled", "damaged"):
            action = "retry" if retry else "skip"
            reason = "" if retry else f"{state}; --retry resubmits it"
        elif row.extra.get("evals_missing"):
            action, reason = "submit", "trained; eval points missing"
        else:
            action = ACTION_BY_STATE.get(state, "skip")
            reason = "" if action == "submit" else state
        out.append(Decision(p.signature, p.axes, state, action, reason, p))
    out += _removed(grid, points, root, prune)
    return out


def _removed(grid: Grid, points: Sequence[TrainPoint], root: str, prune: bool) -> list[Decision]:
    """Points of the last sweep's plan (or its removed list) that the grid no longer has."""
    old = runs.read_plan(root, grid.name)
    current = {p.signature for p in points}
    gone: dict[str, dict] = {}
    for entry in list(old.get("points", [])) + list(old.get("removed", [])):
        sig = entry.get("signature")
        if isinstance(sig, str) and runs.SIGNATURE_RE.match(sig) and sig not in current:
            gone.setdefault(sig, entry)
    if not gone:
        return []
    rows = collect(root, {"points": list(gone.values())})
    out = []
    for entry, row in zip(gone.values(), rows, strict=True):
        active = row.state in ACTIVE
        if prune:
            action = "cancel" if active else "prune"
            reason = "removed from the grid; " + ("cancel" if active else "unlink")
        else:
            action = "removed"
            reason = "removed from the grid; --prune " + ("cancels it" if active else "unlinks it")
        out.append(Decision(entry["signature"], entry.get("axes", {}), row.state, action, reason))
    return out


# ---------------------------------------------------------------- the plan table


def plan_table(grid: Grid, decisions: Sequence[Decision]) -> str:
    """Signature, axis values, state and action of every point, one line each."""
    keys = grid.axis_keys()
    header = ["signature", *map(short_key, keys), "state", "action"]
    lines = []
    for d in decisions:
        action = d.action + (f" ({d.reason})" if d.reason and d.reason != d.state else "")
        lines.append(
            [d.signature, *(format_value(d.axes[k]) if k in d.axes else "-" for k in keys)]
            + [d.state, action]
        )
    widths = [max([len(h)] + [len(c[i]) for c in lines]) for i, h in enumerate(header)]
    return "\n".join(_line(cells, widths) for cells in [header, *lines])


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


# ---------------------------------------------------------------- submission


def submitit_folder(root: str) -> Path:
    """`<root>/submitit`: job pickles and logs; local runs share its parallelism slots."""
    return (Path(root) / "submitit").absolute()


def submit(points: Sequence[TrainPoint], grid: Grid, root: str) -> list[tuple[TrainPoint, Any]]:
    """Submit the points, one job array per resource shape; record each job in submission.json."""
    from harness.executors import PointJob, make_executor, submit_array

    by_shape: dict[str, list[TrainPoint]] = {}
    for p in points:
        by_shape.setdefault(p.shape, []).append(p)
    folder = submitit_folder(root)
    out = []
    for shape_points in by_shape.values():
        cluster = shape_points[0].config["cluster"]
        executor = make_executor(cluster, folder, job_name=f"cfh-{grid.name}")
        dirs = [str(runs.run_dir(root, p.signature).absolute()) for p in shape_points]
        jobs = submit_array(executor, PointJob.for_profile(cluster), dirs)
        for p, job in zip(shape_points, jobs, strict=True):
            runs.write_submission(
                runs.run_dir(root, p.signature),
                job_id=str(job.job_id),
                backend=cluster["backend"],
                folder=str(folder),
                submitted=now_iso(),
                grid=grid.name,
                cancelled=False,
            )
            out.append((p, job))
    return out


def print_progress(root: str, rows: Sequence[Row]) -> None:
    """`HH:MM:SS` and one line per active point (state, phase, step/total, ETA)."""
    rates = {r.signature: train_rate(runs.run_dir(root, r.signature)) for r in rows}
    lines = progress_lines(rows, rates)
    if lines:
        print(f"{time.strftime('%H:%M:%S')} {len(lines)} active:", flush=True)
        print("\n".join(f"  {line}" for line in lines), flush=True)


def wait_local(root: str, submitted: Sequence[tuple[TrainPoint, Any]], every: float = 60) -> None:
    """Block until the local jobs end, printing one line per finished point and, every `every`
    seconds, one line per running point."""
    pending = list(submitted)
    total = len(pending)
    last = time.monotonic()
    while pending:
        time.sleep(0.5)
        if time.monotonic() - last >= every:
            last = time.monotonic()
            rows = [row_for(p.signature, p.axes, [e.key for e in p.evals], root, {})
                    for p, _ in pending]  # fmt: skip
            print_progress(root, rows)
        for item in [x for x in pending if x[1].done()]:
            pending.remove(item)
            p = item[0]
            row = row_for(p.signature, p.axes, [e.key for e in p.evals], root, {})
            fid = f", fid {row.fid:.2f}" if row.fid is not None else ""
            n = total - len(pending)
            print(f"[{n}/{total}] {p.signature} {row.state}{fid}", flush=True)


def cancel_points(root: str, sigs: Sequence[str]) -> list[str]:
    """Cancel the points' jobs and mark them cancelled; returns the job ids cancelled."""
    from harness.executors import cancel

    groups: dict[tuple[str, str | None], list[str]] = {}
    for sig in sigs:
        rdir = runs.run_dir(root, sig)
        sub = runs.read_submission(rdir)
        if sub.get("job_id"):
            key = (sub.get("backend", "local"), sub.get("folder"))
            groups.setdefault(key, []).append(str(sub["job_id"]))
        runs.write_submission(rdir, cancelled=True)
    for (backend, folder), ids in groups.items():
        cancel(ids, backend, folder=Path(folder) if folder else None)
    return [j for ids in groups.values() for j in ids]


# ---------------------------------------------------------------- commands


def cmd_sweep(args: argparse.Namespace) -> int:
    """cfh sweep GRID [overrides] [--dry-run] [--retry] [--prune] [--wait]"""
    t0 = time.perf_counter()
    grid = load_grid(args.grid, args.overrides)
    if getattr(args, "seeds", None):
        grid.seeds = parse_seeds(args.seeds)
    points = grid.expand()
    root = args.root
    extend = parse_extend(args.extend) if getattr(args, "extend", None) else None
    runs.check_grid_file(root, grid)
    if args.dry_run:
        _plan(grid, points, args)
        print(resources_text(grid, points, root))
        print("dry run: nothing submitted")
        return 0
    every = float(getattr(args, "every", 60.0))
    if not every > 0:
        raise UserError(f"--every {every:g} must be a number of seconds > 0")
    with runs.grid_lock(root, grid.name, "cfh sweep"):  # plan and submit as one step
        todo, submitted = _plan_and_submit(grid, points, args, extend)
    local = points[0].config["cluster"]["backend"] == "local"
    if not todo:
        print("nothing to submit")
        if args.wait and not local:
            _wait(root, grid.name, every)
        return _print_status(root, grid.name) if local or args.wait else 0
    ids = [str(job.job_id) for _, job in submitted]
    if local:
        parallel = todo[0].config["cluster"].get("parallelism", 1)
        print(f"running {len(todo)} points here, {parallel} at a time (jobs {_compress(ids)})")
        try:
            wait_local(root, submitted, every)
        except KeyboardInterrupt:
            cancel_points(root, [p.signature for p, job in submitted if not job.done()])
            print(
                "interrupted: the points still running were stopped and marked cancelled; "
                f"`cfh sweep {grid.name} --retry` resumes them from their checkpoints"
            )
            raise
        print(f"sweep {grid.name} finished in {time.perf_counter() - t0:.0f} s")
        return _print_status(root, grid.name)
    print(f"submitted {len(ids)} jobs: {_compress(ids)}")
    if args.wait:
        _wait(root, grid.name, every)
        return _print_status(root, grid.name)
    print(f"watch with: cfh --root {root} status {grid.name} --watch")
    return 0


def arrays(points: Sequence[TrainPoint]) -> list[list[TrainPoint]]:
    """The job arrays submit() makes: one per resource shape, at most MAX_ARRAY_SIZE points."""
    from harness.profiles import MAX_ARRAY_SIZE

    by_shape: dict[str, list[TrainPoint]] = {}
    for p in points:
        by_shape.setdefault(p.shape, []).append(p)
    return [
        group[i : i + MAX_ARRAY_SIZE]
        for group in by_shape.values()
        for i in range(0, len(group), MAX_ARRAY_SIZE)
    ]


def resources_text(grid: Grid, points: Sequence[TrainPoint], root: str) -> str:
    """Each array's resources; for SLURM profiles the #SBATCH options submitit would write."""
    from harness.profiles import validate_profile

    lines = []
    groups = arrays(points)
    for i, group in enumerate(groups):
        p = validate_profile(group[0].config["cluster"])
        tasks = p.tasks_per_node
        mem = f"{p.mem_gb:g} GB" if p.mem_gb is not None else "default"
        head = (
            f"array {i + 1}/{len(groups)}: {len(group)} points, cluster {p.name} ({p.backend}): "
            f"nodes {p.nodes}, tasks/node {tasks}, gpus/node {p.gpus_per_node}, cpus/task "
            f"{p.cpus_per_task}, mem {mem}, time {p.timeout_min:g} min"
        )
        if p.backend == "local":
            lines.append(f"{head}, {p.parallelism} at a time")
            continue
        lines.append(f"{head}, partition {p.partition or 'default'}")
        from harness.executors import sbatch_options  # submitit's own sbatch script builder

        opts = sbatch_options(p, submitit_folder(root), f"cfh-{grid.name}", len(group))
        lines += [f"  #SBATCH {o}" for o in opts]
        lines += [f"  setup: {line}" for line in p.setup]
    return "\n".join(lines)


def cfg_job(args: argparse.Namespace) -> int:
    """`cfh sweep GRID --cfg job`: the first point's resolved config (with its first eval
    point's sample/eval settings) as YAML, then every point's axis values as YAML comments."""
    from omegaconf import OmegaConf

    grid = load_grid(args.grid, args.overrides)
    points = grid.expand()
    first = points[0]
    cfg = copy.deepcopy(first.config)
    if first.evals:
        cfg.update(copy.deepcopy(first.evals[0].settings))
    cfg["run_dir"] = str(runs.run_dir(args.root, first.signature))
    n_evals = sum(len(p.evals) for p in points)
    print(f"# grid {grid.name} ({grid.path}): {len(points)} train points, {n_evals} eval points")
    print(f"# the first point's config ({first.signature}, its first eval point):")
    print(OmegaConf.to_yaml(OmegaConf.create(cfg)), end="")
    print("# every point, by the values that tell it apart:")
    for p in points:
        axes = " ".join(f"{k}={format_value(v)}" for k, v in p.axes.items())
        evals = "; ".join(
            " ".join(f"{k}={format_value(v)}" for k, v in e.values.items()) or "-" for e in p.evals
        )
        print(f"#   {p.signature}  {axes}  evals: {evals or 'none'}")
    return 0


def _plan(grid: Grid, points: list[TrainPoint], args: argparse.Namespace) -> list[Decision]:
    """Reconcile the grid with the root and print the plan."""
    decisions = reconcile(grid, points, args.root, retry=args.retry, prune=args.prune)
    print(f"grid {grid.name} ({grid.path}): {len(points)} points; root {args.root}")
    if grid.description:
        print(grid.description)
    for note in grid.notes:
        print(f"note: {note}")
    print(plan_table(grid, decisions))
    if grid.eval_axis_keys() and points:
        n_evals = sorted({len(p.evals) for p in points})
        print(
            f"eval axes: {', '.join(grid.eval_axis_keys())}; "
            f"{'/'.join(map(str, n_evals))} eval points per train point"
        )
    n_todo = sum(d.action in ("submit", "retry") and d.point is not None for d in decisions)
    n_removed = sum(d.action in ("removed", "cancel", "prune") for d in decisions)
    n_skip = sum(d.action == "skip" for d in decisions)
    removed_text = f", {n_removed} removed from the grid" if n_removed else ""
    print(f"plan: {n_todo} to submit, {n_skip} to skip{removed_text}")
    return decisions


def parse_seeds(text: str) -> list[int]:
    """--seeds 0,1,2 -> [0, 1, 2]; UserError naming the bad value."""
    parts = [t.strip() for t in str(text).split(",")]
    if not parts or not all(t.isdigit() for t in parts):
        raise UserError(f"--seeds {text!r} is not allowed; expected integers >= 0 like 0,1,2")
    return list(dict.fromkeys(int(t) for t in parts))


def parse_extend(text: str) -> int:
    """--extend train.steps=N -> N; the one key a run can be extended along."""
    key, sep, value = str(text).partition("=")
    if key.strip() != "train.steps" or not sep or not value.strip().isdigit():
        raise UserError(
            f"--extend {text!r} is not allowed; expected train.steps=N (N an integer >= 1)"
        )
    steps = int(value)
    if steps < 1:
        raise UserError(f"--extend train.steps={steps} is not allowed; expected N >= 1")
    return steps


def extend_runs(root: str, decisions: list[Decision], steps: int) -> list[Decision]:
    """Raise train.steps to `steps` in the run folders of the grid's trained points and mark
    them for submission: the job resumes training from the last checkpoint and redoes the evals
    at the new final checkpoint. Running points are left alone (extend once they end); a run
    already at `steps` or beyond is not shortened."""
    from omegaconf import OmegaConf

    from core.io import atomic_write_text

    out = []
    for d in decisions:
        rdir = runs.run_dir(root, d.signature)
        path = rdir / "config.yaml"
        if d.point is None or not path.is_file() or d.state in ("running", "requeued"):
            out.append(d)
            continue
        cfg = OmegaConf.load(path)
        have = int(cfg.train.steps)
        if have > steps:
            raise UserError(
                f"--extend train.steps={steps}: run {d.signature} already has train.steps={have};"
                " a run is extended, never shortened"
            )
        if have < steps:
            cfg.train.steps = steps
            atomic_write_text(path, OmegaConf.to_yaml(cfg))
        if have < steps or d.state != "completed" or not _extended_evals_done(rdir, steps):
            d = Decision(d.signature, d.axes, d.state, "submit", f"extend to {steps}", d.point)
        out.append(d)
    return out


def _extended_evals_done(rdir: Any, steps: int) -> bool:
    """Whether every eval of status.json was made at checkpoint `steps`."""
    from core.io import read_status

    evals = read_status(rdir).get("evals") or {}
    return all(isinstance(e, dict) and e.get("ckpt_step") == steps for e in evals.values())


def _plan_and_submit(
    grid: Grid, points: list[TrainPoint], args: argparse.Namespace, extend: int | None = None
) -> tuple[list[TrainPoint], list[tuple[TrainPoint, Any]]]:
    """Plan, write the run folders and the plan, cancel/prune, submit (under the grid lock)."""
    root = args.root
    decisions = _plan(grid, points, args)
    if extend is not None:
        decisions = extend_runs(root, decisions, extend)
        n = sum(d.reason.startswith("extend") for d in decisions)
        print(f"extend: {n} runs continue to train.steps={extend}")
    todo = [d.point for d in decisions if d.action in ("submit", "retry") and d.point]
    for p in points:
        runs.write_run(root, grid.name, p)
    removed = [
        {"signature": d.signature, "axes": d.axes} for d in decisions if d.action == "removed"
    ]
    runs.write_plan(root, grid, points, removed)
    to_cancel = [d.signature for d in decisions if d.action == "cancel"]
    if to_cancel:
        cancel_points(root, to_cancel)
    for d in decisions:  # the run folder stays: other grids may share it, results are kept
        if d.action in ("cancel", "prune"):
            runs.unlink(root, grid.name, d.signature)
    return todo, submit(todo, grid, root) if todo else []


def _compress(ids: Sequence[str]) -> str:
    arrays: dict[str, list[str]] = {}
    for j in ids:
        head, _, task = j.partition("_")
        arrays.setdefault(head, []).append(task)
    parts = [f"{h}_[{','.join(t)}]" if any(t) else h for h, t in arrays.items()]
    return " ".join(parts)


def _plan_or_grid(root: str, name: str) -> dict:
    """The grid's plan.json; a grid never swept gives its expanded points (all missing)."""
    plan = runs.read_plan(root, runs.check_name(name)) if "/" not in name else {}
    if plan.get("points"):
        return plan
    grid = load_grid(name)
    points = grid.expand()
    return {
        "grid": grid.name,
        "axis_keys": grid.axis_keys(),
        "points": [p.to_json() for p in points],
    }


def _print_status(root: str, name: str) -> int:
    plan = _plan_or_grid(root, name)
    rows = collect(root, plan)
    print(render(rows, plan.get("axis_keys", [])))
    print(f"{plan.get('grid', name)}: {summary(rows)}")
    if plan.get("removed"):
        print(
            f"{len(plan['removed'])} points removed from the grid "
            "(cfh sweep --prune cancels and unlinks them)"
        )
    return 1 if any(r.state in FAILING for r in rows) else 0


def _wait(root: str, name: str, every: float = 60.0, poll_s: float = 5.0) -> None:
    """Block until no point of the grid is pending, running or requeued; every `every` seconds
    print one line per active point (print_progress)."""
    last = None
    while True:
        rows = collect(root, _plan_or_grid(root, name))
        if not any(r.state in ACTIVE for r in rows):
            return
        if last is None or time.monotonic() - last >= every:
            last = time.monotonic()
            print_progress(root, rows)
        time.sleep(min(poll_s, every))


def cmd_status(args: argparse.Namespace) -> int:
    """cfh status GRID [--watch [SECONDS]]"""
    name = _grid_name(args.grid)
    if not args.watch:
        return _print_status(args.root, name)
    try:
        while True:
            if sys.stdout.isatty():
                print("\033[2J\033[H", end="")
            print(f"{time.strftime('%H:%M:%S')}  cfh status {name} (every {args.watch:g} s)")
            _print_status(args.root, name)
            rows = collect(args.root, _plan_or_grid(args.root, name))
            if not any(r.state in ACTIVE for r in rows):
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


def _grid_name(text: str) -> str:
    """A grid name from a name or a grid file path (its stem)."""
    name = Path(text).stem if text.endswith((".yaml", ".yml")) else text
    return runs.check_name(name)


def matches_filters(point: dict, filters: Sequence[tuple[str, Any]]) -> bool:
    """The plan point's resolved config has every filter's value."""
    if not filters:
        return True
    axes = point.get("axes", {})
    cfg = None
    for key, value in filters:
        if key in axes:
            got = axes[key]
        else:
            cfg = cfg or resolve_overrides(point.get("overrides", []))
            try:
                got = get_value(cfg, key)
            except (KeyError, TypeError):
                raise UserError(f"filter {key}={value!r}: no such config key") from None
        if got != value or isinstance(got, bool) != isinstance(value, bool):
            return False
    return True


def cmd_cancel(args: argparse.Namespace) -> int:
    """cfh cancel GRID [key=value filters]"""
    name = _grid_name(args.grid)
    if not runs.read_plan(args.root, name).get("points"):
        raise UserError(f"grid {name} has not been swept under {args.root}; nothing to cancel")
    filters = [parse_override(f) for f in args.overrides]
    with runs.grid_lock(args.root, name, "cfh cancel"):
        plan = runs.read_plan(args.root, name)
        chosen = [p for p in plan["points"] if matches_filters(p, filters)]
        if not chosen:
            raise UserError(f"no point of grid {name} matches {' '.join(args.overrides)}")
        rows = collect(args.root, {**plan, "points": chosen})
        active = [r.signature for r in rows if r.state in ACTIVE]
        ids = cancel_points(args.root, active)
    print(
        f"cancelled {len(active)} points (jobs {_compress(ids) or 'none'}); "
        f"{len(rows) - len(active)} matching points were not active"
    )
    _print_status(args.root, name)
    return 0


KEYS = (
    "Config keys and their meaning: harness/configs/config.yaml; grid files: "
    "harness/configs/grids/ (and --config-dir)."
)
SWEEP_EPILOG = f"""examples:
  cfh sweep smoke --dry-run                          # the plan and each array's resources
  cfh sweep smoke cluster=slurm train.lr=1e-4,3e-4   # an extra train axis (hydra sweep syntax)
  cfh sweep ar_steps 'train.steps=range(1000,3001,1000)' --retry --wait
  cfh sweep smoke --cfg job                          # the first point's config, all points' deltas

Overrides: a plain key=value extends the grid's base; a hydra sweep (a,b / range(...) /
choice(...) / glob(...)) becomes one more axis, a train axis, or an eval axis for sample.* and
eval.* keys, crossed with the grid's axes. {KEYS}"""
STATUS_EPILOG = f"""examples:
  cfh status smoke
  cfh status smoke --watch 30 --root /scratch/cfh

{KEYS}"""
CANCEL_EPILOG = f"""examples:
  cfh cancel long                       # every active point of grid long
  cfh cancel long train.ar.mode=fixed   # the active points with that config value

{KEYS}"""


def _parser(sub: argparse._SubParsersAction, name: str, text: str, epilog: str) -> Any:
    return sub.add_parser(
        name,
        help=text,
        description=text,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add sweep, status and cancel to the cfh parser."""
    p = _parser(sub, "sweep", "submit a grid's missing points (reconcile)", SWEEP_EPILOG)
    p.add_argument("grid", help="grid name (grids/NAME.yaml of a config dir) or a grid file path")
    p.add_argument(
        "overrides",
        nargs="*",
        help="key=value overrides added to the grid's base; hydra sweeps add axes",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan, submit nothing")
    p.add_argument("--retry", action="store_true", help="resubmit failed and cancelled points")
    p.add_argument(
        "--prune", action="store_true", help="cancel and unlink points removed from the grid"
    )
    p.add_argument("--wait", action="store_true", help="SLURM: block until the points end")
    p.add_argument(
        "--extend",
        metavar="train.steps=N",
        help="continue the grid's existing runs to N steps (same run folders, exact resume; "
        "evals redone at the new final checkpoint) instead of starting new runs",
    )
    p.add_argument(
        "--seeds",
        metavar="0,1,2",
        help="the seeds to cross with every train point, replacing the grid file's `seeds`",
    )
    p.add_argument(
        "--every",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="while waiting, one line per active point every SECONDS (default 60)",
    )
    p.set_defaults(func=cmd_sweep, cfg_job=cfg_job)
    p = _parser(sub, "status", "one row per point of a grid: state, progress, FID", STATUS_EPILOG)
    p.add_argument("grid")
    p.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=10.0,
        default=0.0,
        metavar="SECONDS",
        help="refresh every SECONDS (default 10) until no point is active",
    )
    p.set_defaults(func=cmd_status)
    p = _parser(sub, "cancel", "cancel a grid's active points (key=value filters)", CANCEL_EPILOG)
    p.add_argument("grid")
    p.add_argument("overrides", nargs="*", help="filters such as train.ar.mode=fixed")
    p.set_defaults(func=cmd_cancel)
