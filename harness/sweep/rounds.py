"""`cfh sweep GRID --until-decided`: rounds that add seeds or samples until the findings decide.

After the grid's points finish, its findings are judged (reports.findings). For each one still
`undecided`, the cheaper lever at the measured variance split is taken (reports.decide): more
training seeds for the runs of the finding's two cells, or more samples per evaluation on their
existing checkpoints; only those points are added (signatures: nothing runs twice), and the
grid is judged again, until every finding is decided, no lever fits within --max-seeds /
--max-samples, or the next addition would pass --budget-hours of estimated compute (estimated
from the grid's own measured training wall time and sampling speed).

The rounds live in `<root>/grids/<GRID>/decide.json`, written before their points are
submitted: a sweep killed at any moment and started again with --retry (the killed points are
failed then, as after any killed sweep) re-plans the same points, skips the ones done, and goes
on with the next round. `cfh status` prints the round and what is
pending; `cfh report` lists every round.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.config import num_tokens
from core.errors import UserError
from core.io import atomic_write_json, now_iso
from core.runfolder import decide_path, read_json
from harness.grid.expansion import Grid, config_matches
from harness.grid.points import TrainPoint

if TYPE_CHECKING:  # pandas is not loaded by `cfh status`, which prints the rounds
    import pandas as pd

MAX_ROUNDS = 8
EVAL_SECTIONS = ("sample", "eval")
TOKEN_KEYS = ("train.ar.steps", "sample.ar_steps")


@dataclass(frozen=True)
class Budget:
    """What the rounds may add: seeds per side, samples per evaluation, estimated hours."""

    max_seeds: int = 10
    max_samples: int = 2000
    hours: float = 4.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The --until-decided flags of `cfh sweep`."""
    d = Budget()
    p.add_argument(
        "--until-decided",
        action="store_true",
        help="after the points finish, judge the grid's findings and add seeds or samples to "
        "the undecided ones, round after round, until each is decided or the budget is spent "
        "(implies --wait; resumable; rounds in grids/GRID/decide.json)",
    )
    p.add_argument(
        "--max-seeds",
        type=int,
        default=d.max_seeds,
        help=f"--until-decided: at most this many seeds a cell (default {d.max_seeds})",
    )
    p.add_argument("--max-samples", type=int, default=d.max_samples,
                   help="--until-decided: at most this many samples an evaluation "
                   f"(default {d.max_samples})")  # fmt: skip
    p.add_argument("--budget-hours", type=float, default=d.hours,
                   help="--until-decided: estimated compute the rounds may add, in hours "
                   f"(default {d.hours:g})")  # fmt: skip


def parse_budget(args: argparse.Namespace) -> Budget:
    """The flags as a Budget; UserError naming a bad value (before any work)."""
    seeds, samples, hours = args.max_seeds, args.max_samples, args.budget_hours
    if not isinstance(seeds, int) or seeds < 2 or seeds > 1000:
        raise UserError(f"--max-seeds {seeds} is not allowed; expected an integer in 2..1000")
    if not isinstance(samples, int) or samples < 4 or samples > 10_000_000:
        raise UserError(
            f"--max-samples {samples} is not allowed; expected an integer in 4..10000000"
        )
    if not (isinstance(hours, float | int) and math.isfinite(hours) and 0 < hours <= 1e5):
        raise UserError(f"--budget-hours {hours} is not allowed; expected hours in (0, 100000]")
    return Budget(seeds, samples, float(hours))


# ---------------------------------------------------------------- state


def load_state(root: str, grid: Grid, budget: Budget) -> dict:
    """decide.json of the grid (a new one when absent), with this sweep's budget."""
    state, _ = read_json(decide_path(root, grid.name))
    if not isinstance(state, dict) or not isinstance(state.get("rounds"), list):
        state = {"grid": grid.name, "rounds": [], "spent_hours": 0.0, "created": now_iso()}
    state.update(
        decide_on=grid.decide_on,
        budget_hours=budget.hours,
        max_seeds=budget.max_seeds,
        max_samples=budget.max_samples,
        finished_because=None,
    )
    return state


def save_state(root: str, grid: Grid, state: dict) -> None:
    """Write decide.json atomically."""
    state["updated"] = now_iso()
    atomic_write_json(decide_path(root, grid.name), state)


def additions(state: dict) -> list[dict]:
    """Every addition of every round, in order."""
    return [a for r in state.get("rounds", []) for a in r.get("added", [])]


# ---------------------------------------------------------------- points


def augmented(grid: Grid, points: list[TrainPoint], state: dict) -> list[TrainPoint]:
    """The grid's points plus what the rounds added: runs with more seeds (for the cells' train
    settings) and eval points with more samples (on the cells' runs)."""
    out = {p.signature: p for p in points}
    adds = additions(state)
    seeds = {int(p.config.get("seed", 0)) for p in points}  # the grid's (or its default)
    for a in adds:
        if a.get("lever") == "seeds":
            seeds |= set(a["seeds"])
            for p in _expanded(grid, seeds=a["seeds"]):
                if _train_match(p, a["cells"]) and p.signature not in out:
                    out[p.signature] = p
    for a in adds:
        if a.get("lever") == "samples":
            for p in _expanded(grid, seeds=sorted(seeds) or None, num=a["num"]):
                target = out.get(p.signature)
                if target is None:
                    continue
                known = {e.key for e in target.evals}
                for cell in a["cells"]:
                    if not _match_part(p.config, cell, train=True):
                        continue
                    for e in p.evals:
                        if e.key not in known and _eval_match(e.settings, p.config, cell):
                            target.evals.append(e)
                            known.add(e.key)
    return list(out.values())


def _expanded(grid: Grid, seeds: list[int] | None = None, num: int | None = None) -> list:
    """The grid's points with other seeds and/or sample.num, expanded as a sweep would."""
    g = copy.deepcopy(grid)
    if seeds is not None:
        g.seeds = list(seeds)
    if num is not None:
        g.cli_eval_axes = {**g.cli_eval_axes, "sample.num": [int(num)]}
    return g.expand()


def _train_match(p: TrainPoint, cells: list[dict]) -> bool:
    return any(_match_part(p.config, cell, train=True) for cell in cells)


def _match_part(cfg: dict, cell: dict, train: bool) -> bool:
    """The train (or eval) keys of a finding's cell all hold in the config."""
    for key, value in cell.items():
        if (key.split(".")[0] in EVAL_SECTIONS) == train:
            continue
        if not _holds(cfg, cfg, key, value):
            return False
    return True


def _eval_match(settings: dict, cfg: dict, cell: dict) -> bool:
    return all(
        _holds(settings, cfg, k, v) for k, v in cell.items() if k.split(".")[0] in EVAL_SECTIONS
    )


def _holds(where: dict, cfg: dict, key: str, value: Any) -> bool:
    """`where` has `value` at `key` (model/data: the group's name; L: the tokens per image;
    sample.order train: the run's own training order)."""
    if key in ("model", "data"):
        key = f"{key}.name"
    if key in TOKEN_KEYS and value == "L":
        value = num_tokens(cfg)
    if key == "sample.order" and value == "train":
        value = cfg["train"]["order"]
    return config_matches(where, key, value)


# ---------------------------------------------------------------- choosing the next round


def next_round(
    grid: Grid, points: list[TrainPoint], judged: pd.DataFrame, costs: dict, state: dict
) -> list[dict]:
    """The additions for every undecided finding whose lever fits the caps and the budget."""
    added: list[dict] = []
    spent = float(state.get("spent_hours", 0.0))
    used = {int(p.config.get("seed", 0)) for p in points}  # a grid without seeds: its default
    for _, f in judged.iterrows():
        if f["verdict"] != "undecided" or f["lever"] not in ("seeds", "samples"):
            continue
        cells = [f["better"], f["worse"]]
        settings = [p for p in points if _train_match(p, cells)]
        n_settings = len({_no_seed(p.axes) for p in settings}) or 1
        total = f["var_sampling"] + f["var_seed"]
        share = f["var_sampling"] / total if total > 0 else 0.0
        if f["lever"] == "seeds":
            more = int(f["need_seeds"]) - int(f["seeds"])
            new = [s for s in range(max(used | {-1}) + 1, 10**6)][:more]
            hours = more * n_settings * costs.get("seed", 1.0)
            what = f"+{more} seeds ({', '.join(map(str, new))}) for {n_settings} settings"
            entry = {"lever": "seeds", "seeds": new}
            why = f"seed variance {1 - share:.0%} of the difference's"
        else:
            num = min(int(math.ceil(int(f["need_samples"]) / 100) * 100), state["max_samples"])
            evals = sum(1 for p in settings for e in p.evals if _cell_eval(e, p, cells))
            hours = num * evals * costs.get("samples", 0.0)  # drawn anew: keyed by their count
            what = f"{num} samples per eval on {evals} evaluations"
            entry = {"lever": "samples", "num": num}
            why = f"sampling variance {share:.0%} of the difference's"
        if spent + hours > state["budget_hours"]:
            continue
        spent += hours
        if entry["lever"] == "seeds":
            used |= set(entry["seeds"])
        added.append(
            {**entry, "finding": int(f["finding"]), "claim": f["claim"], "cells": cells,
             "what": what, "why": f"{why}; {f['need']}", "hours": round(hours, 4)}
        )  # fmt: skip
    state["spent_hours"] = spent
    return added


def _no_seed(axes: dict) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in axes.items() if k != "seed"))


def _cell_eval(e: Any, p: TrainPoint, cells: list[dict]) -> bool:
    return any(
        _match_part(p.config, c, train=True) and _eval_match(e.settings, p.config, c) for c in cells
    )


# ---------------------------------------------------------------- the loop


def run_rounds(
    grid: Grid,
    points: list[TrainPoint],
    root: str,
    budget: Budget,
    run: Callable[[list[TrainPoint]], None],
    judge: Callable[[], tuple[pd.DataFrame, dict]],
) -> dict:
    """Submit and wait (`run`), judge (`judge`: the findings table and lever costs), add a
    round, repeat; returns the final state (also in decide.json)."""
    state = load_state(root, grid, budget)
    while True:
        t0 = time.monotonic()
        current = augmented(grid, points, state)
        run(current)
        judged, costs = judge()
        verdicts = [
            {k: _plain(f[k]) for k in ("finding", "claim", "verdict", "difference", "lo", "hi")}
            for _, f in judged.iterrows()
        ]
        if not judged.empty and judged["verdict"].isin(["holds", "contradicted"]).all():
            state["finished_because"] = "every finding decided"
        elif judged.empty or not (judged["verdict"] == "undecided").any():
            state["finished_because"] = (
                "findings not measured (failed or missing points: --retry resubmits them)"
            )
        elif len(state["rounds"]) >= MAX_ROUNDS:
            state["finished_because"] = f"{MAX_ROUNDS} rounds"
        added = [] if state["finished_because"] else next_round(grid, current, judged, costs, state)
        if not added and not state["finished_because"]:
            state["finished_because"] = "the undecided findings need more than the budget"
        state["rounds"].append(
            {"round": len(state["rounds"]) + 1, "judged": now_iso(), "verdicts": verdicts,
             "added": added, "wall_s": round(time.monotonic() - t0, 1)}
        )  # fmt: skip
        save_state(root, grid, state)
        for a in added:
            print(f"round {len(state['rounds'])}: {a['claim']}: {a['what']} ({a['why']})")
        if state["finished_because"]:
            print(f"until-decided: {state['finished_because']} after {len(state['rounds'])} "
                  "rounds")  # fmt: skip
            return state


def judge_results(root: str, grid: Grid, budget: Budget) -> tuple[pd.DataFrame, dict]:
    """The grid's findings judged from its results, and the levers' measured costs."""
    # pandas and scipy load only here: `cfh sweep` plans and refuses input without them
    from reports.findings import judge_findings, lever_costs, observations
    from reports.results import ResultsWarning, scan

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResultsWarning)
        results = scan(root, grid.name)
    table, reps = results.table, results.replicates
    judged = judge_findings(
        table, grid.findings, grid.decide_on, reps, budget.max_seeds, budget.max_samples
    )
    return judged, lever_costs(observations(table, grid.decide_on, reps))


def _plain(v: Any) -> Any:
    """A JSON-safe scalar (NaN as None)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v.item() if hasattr(v, "item") else v


def status_lines(root: str, name: str) -> list[str]:
    """What `cfh status` says of a grid's until-decided rounds (nothing when it has none)."""
    state, _ = read_json(decide_path(root, name))
    rounds = state.get("rounds") if isinstance(state, dict) else None
    if not rounds:
        return []
    last = rounds[-1]
    counts: dict[str, int] = {}
    for v in last.get("verdicts", []):
        counts[v["verdict"]] = counts.get(v["verdict"], 0) + 1
    text = ", ".join(f"{n} {k}" for k, n in counts.items())
    lines = [f"until-decided: round {len(rounds)}: {text}"]
    if state.get("finished_because"):
        lines.append(f"until-decided: ended ({state['finished_because']})")
    else:
        lines += [f"  pending: {a['claim']}: {a['what']}" for a in last.get("added", [])]
    return lines
