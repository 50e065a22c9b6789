"""A grid file's `findings:`: the paper's claims the grid tests, checked before anything runs.

    findings:
      - claim:  text                  what the paper finds, in a line
        better: {key: value, ...}     the cell that should have the lower mean FID
        worse:  {key: value, ...}     the cell it should beat

A cell is a set of train axis values (seed excluded: seeds are what a cell averages over) and
eval axis values (S_eval = sample.ar_steps, sample.order, sample.cfg, ...): the results of the
runs and eval points that match every key. A key must vary in the grid (an axis, zip or include
key of the train or eval section, or a command-line sweep), and a value must be one the grid
gives that key (`L` and `sample.order: train` as the grid writes them; for a key that only
include entries set, also its value in the other points: the base's, else the config default).
`cfh sweep` stores the findings in the grid's plan.json; `cfh report` prints each with its
verdict against the noise (reports.findings). Torch-free, like harness.grid.files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.errors import UserError
from core.keys import flatten
from harness.config.compose import resolve_overrides
from harness.grid.expansion import Grid, Space

FINDING_KEYS = ("claim", "better", "worse")


def parse_findings(raw: Any, grid: Grid, err: Callable[[str, str], UserError]) -> list[dict]:
    """The checked `findings:` list of a grid file ([] when absent), cells as dotted keys."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise err("findings", "must be a list of {claim: text, better: {...}, worse: {...}}")
    values = _axis_values(grid)
    out = []
    for i, item in enumerate(raw):
        where = f"findings[{i}]"
        if not isinstance(item, dict) or set(item) != set(FINDING_KEYS):
            keys = sorted(map(str, item)) if isinstance(item, dict) else type(item).__name__
            raise err(where, f"must have the keys claim, better and worse; got {keys}")
        claim = item["claim"]
        if not isinstance(claim, str) or not claim.strip():
            raise err(f"{where}.claim", f"must be a line of text, got {claim!r}")
        cells = {
            side: _cell(item[side], f"{where}.{side}", values, err) for side in FINDING_KEYS[1:]
        }
        if cells["better"] == cells["worse"]:
            raise err(where, "better and worse name the same cell; they must differ in a value")
        out.append({"claim": claim.strip(), **cells})
    return out


def _cell(raw: Any, where: str, values: dict[str, list], err: Callable) -> dict[str, Any]:
    """One side of a finding: {axis key: a value the grid gives it}."""
    if not isinstance(raw, dict) or not raw:
        raise err(where, f"must be a non-empty mapping of axis key: value, got {raw!r}")
    cell = flatten(raw)
    for key, value in cell.items():
        if key not in values:
            allowed = ", ".join(values) or "none (the grid has no axis)"
            raise err(f"{where}.{key}", f"is not an axis of the grid; allowed: {allowed}")
        if not any(_same(value, v) for v in values[key]):
            shown = ", ".join(map(str, values[key]))
            raise err(f"{where}.{key}", f"{value!r} is not a value of this axis; allowed: {shown}")
    return cell


def _same(a: Any, b: Any) -> bool:
    """Equal as the grid means it: 1 and 1.0 alike, but true is not 1."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _axis_values(grid: Grid) -> dict[str, list]:
    """{axis key: the values the grid gives it}, train keys (seed excluded) then eval keys."""
    out: dict[str, list] = {}
    spaces: list[tuple[Space, dict[str, list]]] = [(grid.train, grid.cli_axes)]
    if grid.eval is not None:
        spaces.append((grid.eval, grid.cli_eval_axes))
    defaults = flatten(resolve_overrides([f"cluster={grid.cluster}"]))
    for space, cli in spaces:
        lists = [space.axes, *space.zips, cli]
        lists += [{k: [v]} for entry in space.include for k, v in entry.items()]
        for key in {k for entry in space.include for k in entry}:  # the points without it
            other = space.base.get(key, defaults.get(f"{key}.name", defaults.get(key)))
            lists.append({key: [other]} if other is not None else {})
        for mapping in lists:
            for key, vals in mapping.items():
                seen = out.setdefault(key, [])
                seen += [v for v in vals if not any(_same(v, s) for s in seen)]
    out.pop("seed", None)
    return out
