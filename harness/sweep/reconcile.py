"""`cfh sweep GRID`: reconcile a grid with what exists (status and cancel: harness.sweep.monitor).

`cfh sweep` expands and validates the grid, then compares every point with its run folder and
the scheduler: a point with no result is submitted, a running one left alone, a completed one
skipped, a failed, interrupted or cancelled one resubmitted only with --retry; points that
left the grid since the last sweep are reported (their jobs cancelled with --prune). It prints
that plan before submitting (--dry-run stops there), so running it twice submits nothing the
second time. The plan itself is harness.sweep.plan; `--extend` is harness.sweep.extend.

Execution goes through harness.launch.submission and harness.launch.executors (submitit):
every point is one
job running `harness.launch.jobs.run_point(run_dir)` (train, then its eval points), wrapped in the
checkpointable PointJob that requeues on preemption or time-out. cluster=local runs the points
on this machine, at most `cluster.parallelism` at once, and blocks until they end, then prints
the status table; cluster=slurm submits one job array per resource shape and returns (--wait
blocks). Job pickles and logs live in `<root>/submitit/`; each run's submission.json records its
job.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time
from typing import Any

from core.config import SCHEMA
from core.config.spec import quote
from core.errors import UserError, defer_missing_data
from harness.config.values import format_value
from harness.grid.expansion import Grid
from harness.grid.files import load_grid
from harness.grid.points import TrainPoint, evals_per_point_text, points_text
from harness.launch import runs
from harness.launch.submission import (
    cancel_points,
    compress_ids,
    resources_text,
    submit,
    wait_local,
)
from harness.sweep.edited_runs import check_run_folders
from harness.sweep.extend import check_extends, extend_runs, parse_extend
from harness.sweep.monitor import cmd_cancel, cmd_status, print_status, wait
from harness.sweep.plan import Decision, plan_table, reconcile
from harness.sweep.rounds import (
    Budget,
    add_arguments,
    augmented,
    judge_results,
    load_state,
    parse_budget,
    run_rounds,
)

# ---------------------------------------------------------------- commands


def cmd_sweep(args: argparse.Namespace) -> int:
    """cfh sweep GRID [overrides] [--dry-run] [--retry] [--prune] [--wait]"""
    t0 = time.perf_counter()
    every = parse_every(getattr(args, "every", 60.0))  # the flags first: before any work
    seeds = getattr(args, "seeds", None)
    seeds = parse_seeds(seeds) if seeds is not None else None
    extend = getattr(args, "extend", None)
    extend = parse_extend(extend) if extend is not None else None
    budget = parse_budget(args) if getattr(args, "until_decided", False) else None
    grid = load_grid(args.grid, args.overrides)
    if budget is not None and not grid.findings:
        raise UserError(
            f"--until-decided: grid {grid.name} ({grid.path}) names no findings: to decide"
        )
    if seeds is not None:
        set_seeds(grid, seeds)
    # a dry run plans before the data exists (latents not encoded yet): what needs the data
    # on disk is a warning there, and is checked again at submission
    with defer_missing_data() if args.dry_run else contextlib.nullcontext([]) as missing:
        points = grid.expand()
    root = args.root
    if extend is not None:
        check_extends(grid, points, extend)
    if budget is not None and extend is not None:
        raise UserError("--until-decided and --extend: give one of them at a time")
    points = augmented(grid, points, load_state(root, grid, budget or Budget()))
    runs.check_grid_file(root, grid)
    new_run = getattr(args, "new_run", False)
    if args.dry_run:
        if not new_run:  # a dry run sets nothing aside: it refuses what a sweep would
            check_run_folders(root, points, False, grid.name)
        _plan(grid, points, args)
        print(resources_text(grid, points, root))
        for note in missing:
            print(f"warning: {note} (a dry run plans without the data; a sweep refuses)")
        print("dry run: nothing submitted")
        return 0
    if budget is not None:
        return until_decided(grid, points, args, budget)
    with runs.grid_lock(root, grid.name, "cfh sweep"):  # plan and submit as one step
        check_run_folders(root, points, new_run, grid.name)  # before anything is written
        todo, submitted = _plan_and_submit(grid, points, args, extend)
    local = points[0].config["cluster"]["backend"] == "local"
    if not todo:
        print("nothing to submit")
        if args.wait and not local:
            wait(root, grid.name, every)
        return print_status(root, grid.name) if local or args.wait else 0
    ids = [str(job.job_id) for _, job in submitted]
    if local:
        parallel = todo[0].config["cluster"].get("parallelism", 1)
        jobs = compress_ids(ids)
        print(f"running {points_text(len(todo))} here, {parallel} at a time (jobs {jobs})")
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
        return print_status(root, grid.name)
    print(f"submitted {len(ids)} jobs: {compress_ids(ids)}")
    if args.wait:
        wait(root, grid.name, every)
        return print_status(root, grid.name)
    print(f"watch with: cfh --root {root} status {grid.name} --watch")
    return 0


def until_decided(
    grid: Grid, points: list[TrainPoint], args: argparse.Namespace, budget: Budget
) -> int:
    """The rounds of harness.sweep.rounds: each submits what is missing and waits for it
    (locally or on SLURM), then judges the findings from the results."""
    root = args.root
    local = points[0].config["cluster"]["backend"] == "local"

    def run(current: list[TrainPoint]) -> None:
        with runs.grid_lock(root, grid.name, "cfh sweep"):
            todo, submitted = _plan_and_submit(grid, current, args)
        if todo and local:
            wait_local(root, submitted, args.every)
        else:  # also points another sweep is running: returns at once when none is active
            wait(root, grid.name, args.every)

    run_rounds(grid, points, root, budget, run, lambda: judge_results(root, grid, budget))
    return print_status(root, grid.name)


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
    counts = f"{points_text(len(points), 'train')}, {points_text(n_evals, 'eval')}"
    print(f"# grid {grid.name} ({grid.path}): {counts}")
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
    print(f"grid {grid.name} ({grid.path}): {points_text(len(points))}; root {args.root}")
    if grid.description:
        print(grid.description)
    for note in grid.notes:
        print(f"note: {note}")
    print(plan_table(grid, decisions))
    if grid.eval_axis_keys() and points:
        print(f"eval axes: {', '.join(grid.eval_axis_keys())}; {evals_per_point_text(points)}")
    n_todo = sum(d.action in ("submit", "retry") and d.point is not None for d in decisions)
    n_removed = sum(d.action in ("removed", "cancel", "prune") for d in decisions)
    n_skip = sum(d.action == "skip" for d in decisions)
    removed_text = f", {n_removed} removed from the grid" if n_removed else ""
    print(f"plan: {n_todo} to submit, {n_skip} to skip{removed_text}")
    return decisions


def parse_seeds(text: str) -> list[int]:
    """--seeds 0,1,2 -> [0, 1, 2]; UserError naming the bad value."""
    parts = [t.strip() for t in str(text).split(",")]
    if not parts or not all(t.isascii() and t.isdigit() for t in parts):
        raise UserError(f"--seeds {quote(text)} is not allowed; expected integers >= 0 like 0,1,2")
    seeds = list(dict.fromkeys(int(t) for t in parts))
    spec = SCHEMA["seed"]  # the range every generator that consumes a seed can hold
    for seed in seeds:
        if not spec.accepts(seed):
            raise UserError(f"--seeds: {spec.refusal('seed', seed)}")
    return seeds


def parse_every(value: float) -> float:
    """--every SECONDS: a number of seconds > 0."""
    every = float(value)
    if not every > 0:  # also refuses nan
        raise UserError(f"--every {every:g} is not allowed; expected a number of seconds > 0")
    return every


def set_seeds(grid: Grid, seeds: list[int]) -> None:
    """--seeds replaces the grid file's seeds; a grid that sets `seed` itself is refused."""
    if "seed" in grid.train.axis_keys() or "seed" in grid.train.base or "seed" in grid.cli_axes:
        raise UserError(
            f"--seeds: grid {grid.name} ({grid.path}) sets seed in its base, axes or include; "
            "give seeds in one place"
        )
    grid.seeds = seeds


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


KEYS = (
    "Config keys and their meaning: experiments/config.yaml; grid files: "
    "experiments/grids/ (and --config-dir)."
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
    p.add_argument("grid", help="grid name (grids/NAME.yaml of a config dir) or a .yaml file path")
    p.add_argument(
        "overrides",
        nargs="*",
        default=[],  # with a default, argparse does not list it as required
        help="key=value overrides added to the grid's base; hydra sweeps add axes",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan, submit nothing")
    p.add_argument(
        "--retry", action="store_true", help="resubmit failed, interrupted and cancelled points"
    )
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
        "--new-run",
        action="store_true",
        help="a run folder whose config.yaml was edited by hand: set its files aside "
        "(replaced-*/) and train the point again, instead of refusing",
    )
    p.add_argument(
        "--seeds",
        metavar="0,1,2",
        help="the seeds to cross with every train point, replacing the grid file's `seeds`",
    )
    add_arguments(p)
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
    p.add_argument("overrides", nargs="*", default=[], help="filters such as train.ar.mode=fixed")
    p.set_defaults(func=cmd_cancel)
