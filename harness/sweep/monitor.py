"""`cfh status GRID` and `cfh cancel GRID`, and the wait of `cfh sweep --wait`.

A grid's points come from its plan.json (as last swept); a grid never swept shows its expanded
points, all missing. Rows and their rendering are harness.launch.status'.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.names import check_name
from core.runfolder import never_swept, plan_path
from harness.config.compose import parse_override, resolve_overrides
from harness.config.values import get_value
from harness.grid.files import load_grid
from harness.launch import runs
from harness.launch.status import ACTIVE, FAILING, collect, render, summary
from harness.launch.submission import cancel_points, compress_ids, print_progress
from harness.sweep.rounds import status_lines


def plan_or_grid(root: str, name: str) -> dict:
    """The grid's plan.json; a grid never swept gives its expanded points (all missing)."""
    plan = runs.read_plan(root, check_name(name)) if "/" not in name else {}
    if plan.get("points"):
        return plan
    grid = load_grid(name)
    points = grid.expand()
    return {
        "grid": grid.name,
        "axis_keys": grid.axis_keys(),
        "points": [p.to_json() for p in points],
    }


def print_status(root: str, name: str) -> int:
    """Print the grid's status table and summary; 1 when a point failed, else 0."""
    plan = plan_or_grid(root, name)
    rows = collect(root, plan)
    print(render(rows, plan.get("axis_keys", [])))
    print(f"{plan.get('grid', name)}: {summary(rows)}")
    for line in status_lines(root, plan.get("grid", name)):
        print(line)
    if plan.get("removed"):
        print(
            f"{len(plan['removed'])} points removed from the grid "
            "(cfh sweep --prune cancels and unlinks them)"
        )
    return 1 if any(r.state in FAILING for r in rows) else 0


def wait(root: str, name: str, every: float = 60.0, poll_s: float = 5.0) -> None:
    """Block until no point of the grid is pending, running or requeued; every `every` seconds
    print one line per active point (print_progress)."""
    last = None
    while True:
        rows = collect(root, plan_or_grid(root, name))
        if not any(r.state in ACTIVE for r in rows):
            return
        if last is None or time.monotonic() - last >= every:
            last = time.monotonic()
            print_progress(root, rows)
        time.sleep(min(poll_s, every))


def cmd_status(args: argparse.Namespace) -> int:
    """cfh status GRID [--watch [SECONDS]]"""
    if args.watch < 0 or args.watch != args.watch:  # 0: no watch; nan refused too
        raise UserError(f"--watch {args.watch:g} is not allowed; expected a number of seconds > 0")
    name = _grid_name(args.grid)
    if not plan_path(args.root, name).is_file():  # show the points it would run, then refuse
        print_status(args.root, name)  # as `cfh report` does: same words, same exit code
        raise UserError(never_swept(args.root, name))
    if not args.watch:
        return print_status(args.root, name)
    try:
        while True:
            if sys.stdout.isatty():
                print("\033[2J\033[H", end="")
            print(f"{time.strftime('%H:%M:%S')}  cfh status {name} (every {args.watch:g} s)")
            print_status(args.root, name)
            rows = collect(args.root, plan_or_grid(args.root, name))
            if not any(r.state in ACTIVE for r in rows):
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


def _grid_name(text: str) -> str:
    """A grid name from a name or a grid file path (its stem)."""
    name = Path(text).stem if text.endswith((".yaml", ".yml")) else text
    return check_name(name)


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
        f"cancelled {len(active)} points (jobs {compress_ids(ids) or 'none'}); "
        f"{len(rows) - len(active)} matching points were not active"
    )
    print_status(args.root, name)
    return 0
