"""A grid's points as the sweep, plan.json and point.json see them: train points, eval points.

An eval point is known by its key, a short hash of its resolved sample/eval settings; the
settings that change how fast, not what, is sampled are left out of it. Eval keys name the
records already on disk: EVAL_KEY_EXCLUDE and the hash's spelling must not change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from core.hashing import json_hash

# Sample keys that change how fast, not what, is sampled: left out of an eval point's key.
EVAL_KEY_EXCLUDE = ("sample.batch_size", "sample.adm_npz")


@dataclass(frozen=True)
class EvalPoint:
    """One evaluation of a trained run: sample.*/eval.* overrides and what they resolve to."""

    overrides: tuple[str, ...]
    values: dict[str, Any]  # the eval axis values that tell this point apart
    key: str  # short hash of the resolved sample/eval settings (see EVAL_KEY_EXCLUDE)
    settings: dict = field(compare=False, repr=False, default_factory=dict)  # sample/eval

    def to_json(self) -> dict:
        """Plain dict for plan.json / point.json."""
        return {"key": self.key, "overrides": list(self.overrides), "values": self.values}


@dataclass
class TrainPoint:
    """One training run of a grid and the evaluations to run on it."""

    signature: str
    overrides: list[str]  # train + cluster overrides (what `cfh train` would be given)
    axes: dict[str, Any]  # the axis values this point sets (train axes, include keys, seed)
    config: dict  # resolved config; sample/eval sections hold the grid's eval base
    evals: list[EvalPoint]

    @property
    def shape(self) -> str:
        """The resource shape: points with equal shapes share one job array."""
        return json.dumps(self.config["cluster"], sort_keys=True)

    def to_json(self) -> dict:
        """Plain dict for plan.json."""
        return {
            "signature": self.signature,
            "axes": self.axes,
            "overrides": self.overrides,
            "evals": [e.to_json() for e in self.evals],
            "cluster": self.config["cluster"],
        }


def points_text(n: int, kind: str = "") -> str:
    """'1 point', '3 eval points': a count of points as a plan prints it."""
    noun = f"{kind} point" if kind else "point"
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def evals_per_point_text(points: list[TrainPoint]) -> str:
    """'4 eval points per train point', or where points differ (an eval exclude, a checkpoint
    that a shorter run lacks) '2 eval points for 4 train points, 3 for 2'."""
    counts: dict[int, int] = {}
    for p in points:
        counts[len(p.evals)] = counts.get(len(p.evals), 0) + 1
    if len(counts) == 1:
        return f"{points_text(next(iter(counts)), 'eval')} per train point"
    parts = [f"{n} for {points_text(k, 'train')}" for n, k in sorted(counts.items())]
    return f"eval points per train point: {', '.join(parts)}"


def eval_key(settings: dict) -> str:
    """Short hash of an eval point's resolved sample/eval settings (speed-only keys left out)."""
    kept = {s: dict(v) for s, v in settings.items()}
    for key in EVAL_KEY_EXCLUDE:
        section, leaf = key.split(".", 1)
        kept[section].pop(leaf, None)
    return json_hash(kept)
