"""A sweep's plan: what it does with every point of a grid (and every point that left it), and
the table `cfh sweep` prints before it submits anything."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.names import SIGNATURE_RE
from harness.config.values import format_value
from harness.grid.expansion import Grid
from harness.grid.points import TrainPoint
from harness.launch import runs
from harness.launch.status import ACTIVE, RETRYABLE, collect, short_key

# What reconcile does with a point, by state (the RETRYABLE ones depend on --retry).
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
        if state in RETRYABLE:
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
        if isinstance(sig, str) and SIGNATURE_RE.match(sig) and sig not in current:
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
