"""Is a difference between two cells of a grid real? 95% intervals, verdicts, the variance split.

A grid's measurements are `observations`: one value per grid cell x training seed (a cell is a
training setting x an eval setting; the value is FID, FID_inf or KID of one eval record), each
with its sampling variance (the bootstrap over the eval's samples and reference) and, where the
record kept them, its bootstrap replicates. A comparison of two sides (each one or more grid
cells, averaged) gives the difference D = worse - better and its variance in two parts:

    seed      Var from training seeds: the seed variance pooled over the grid's cells, minus the
              sampling part the pooled spread already holds. Paired (both sides hold the same
              seeds: same init, data order and per-sample noise), it is the residual variance of
              an additive cells + seeds fit (the randomized-block error term, df N - C - S + 1),
              x 2 for a per-seed difference; unpaired, the within-cell variance (df N - C).
    sampling  Var from the evaluation: the variance over bootstrap replicates of D itself (sample
              i and reference image j are drawn alike in both arms, so it is a paired bootstrap)
              or, without replicates, the sum of the rows' bootstrap variances.

The interval is D +- t(0.975, df) x sqrt(max(seed + sampling, plain)), df the pooled seed
variance's (the smaller, so the multiplier errs wide), `plain` the variance of D that the pooled
spread itself gives (the classic pooled t interval; its sampling part, at most the whole spread,
scaled to the finding's sample count): a seed part estimated at 0 never leaves the bootstrap
alone to decide. No pooled df (every cell one seed) leaves the finding
`undecided`: the bootstrap alone never decides. Verdicts: holds (interval above 0),
contradicted (below 0), undecided (contains 0), not measured (a side has no value).

What would decide an undecided one, at the measured variances and the observed |D|: seeds n'
with t^2 (A + B) / n' < D^2, or samples N' with t^2 (A + B N / N') / n < D^2 (sampling
variance ~ 1/N), A and B being one seed's seed and sampling variance of the difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

LEVEL = 0.95
VERDICTS = ("holds", "contradicted", "undecided", "not measured")


@dataclass
class Pooled:
    """The grid's pooled seed variance: one-way (within cells) and two-way (cells + seeds)."""

    within: float = math.nan  # seed variance of one cell's value
    within_df: int = 0
    block: float = math.nan  # seed variance of one per-seed difference of two cells (2 x resid)
    block_df: int = 0
    within_total: float = math.nan  # the same spreads with their sampling part kept
    block_total: float = math.nan
    within_samp: float = 0.0  # the sampling part those spreads hold (bootstrap expectation)
    block_samp: float = 0.0
    base_n: float = math.nan  # the sample count the spreads were measured at
    cells: int = 0
    seeds: int = 0

    def for_pairing(self, paired: bool) -> tuple[float, int]:
        """(seed variance of one per-seed difference, its df) for a paired or unpaired pair."""
        if paired:
            return self.block, self.block_df
        return 2 * self.within, self.within_df

    def total(self, paired: bool, num_samples: float) -> float:
        """The variance of one per-seed difference as the pooled spread shows it, its sampling
        part (at most the whole spread) scaled from base_n to `num_samples` samples."""
        spread = self.block_total if paired else 2 * self.within_total
        samp = self.block_samp if paired else 2 * self.within_samp
        samp = min(samp, spread)
        scale = self.base_n / num_samples if np.isfinite(self.base_n / num_samples) else 1.0
        return spread - samp + samp * min(1.0, scale)


@dataclass
class Side:
    """One side of a comparison: per seed its value, sampling variance, replicates."""

    values: dict[int, float] = field(default_factory=dict)
    samp_var: dict[int, float] = field(default_factory=dict)
    reps: dict[int, np.ndarray | None] = field(default_factory=dict)
    designs: set = field(default_factory=set)  # the bootstrap designs of its rows
    num_samples: float = math.nan

    @property
    def n(self) -> int:
        return len(self.values)


def t_multiplier(df: int, level: float = LEVEL) -> float:
    """Student t quantile for a two-sided `level` interval with `df` degrees of freedom."""
    return float(stats.t.ppf(0.5 + level / 2, df)) if df > 0 else math.inf


def pooled_seed_variance(obs: pd.DataFrame) -> Pooled:
    """Pool the seed variance over the cells of `obs` (columns cell, seed, value, samp_var).

    The sampling part of each spread is subtracted with its expectation (sum of the residual
    projector's diagonal times each value's sampling variance), so what is left is training-seed
    variance; it is floored at 0.
    """
    obs = obs[np.isfinite(obs["value"])]
    if obs.empty:
        return Pooled()
    v = np.nan_to_num(obs["samp_var"].to_numpy(float))
    y = obs["value"].to_numpy(float)
    cells = pd.factorize(obs["cell"])[0]
    seeds = pd.factorize(obs["seed"])[0]
    out = Pooled(cells=int(cells.max()) + 1, seeds=int(seeds.max()) + 1)
    if "num_samples" in obs:
        out.base_n = float(obs["num_samples"].median())
    # one-way: deviations from each cell's mean
    n_c = np.bincount(cells)
    mean_c = np.bincount(cells, weights=y) / n_c
    ss = float(((y - mean_c[cells]) ** 2).sum())
    samp = float(((1 - 1 / n_c[cells]) * v).sum())
    out.within_df = int((n_c - 1).sum())
    if out.within_df > 0:
        out.within = max(0.0, (ss - samp) / out.within_df)
        out.within_total = ss / out.within_df
        out.within_samp = samp / out.within_df
    # two-way additive (cells + seeds): the residual projector R = I - X X^+
    x = np.concatenate([np.eye(out.cells)[cells], np.eye(out.seeds)[seeds][:, 1:]], axis=1)
    rank = np.linalg.matrix_rank(x)
    out.block_df = int(len(y) - rank)
    if out.block_df > 0:
        hat = x @ np.linalg.pinv(x)
        resid = y - hat @ y
        r_ii = 1 - np.diag(hat)
        out.block = 2 * max(0.0, (float(resid @ resid) - float(r_ii @ v)) / out.block_df)
        out.block_total = 2 * float(resid @ resid) / out.block_df
        out.block_samp = 2 * float(r_ii @ v) / out.block_df
    return out


@dataclass
class Comparison:
    """The judged difference of two sides."""

    difference: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    verdict: str = "not measured"
    paired: bool = False
    seeds: int = 0  # seeds per side used (paired: the common ones)
    var_seed: float = math.nan
    var_sampling: float = math.nan
    df: int = 0
    t: float = math.nan
    sampling_kind: str = ""  # paired bootstrap | bootstrap sum | none
    num_samples: float = math.nan
    per_seed_a: float = math.nan  # one seed's seed variance of the difference (A)
    per_seed_b: float = math.nan  # one seed's sampling variance of the difference (B)
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def compare(better: Side, worse: Side, pooled: Pooled) -> Comparison:
    """D = worse - better with its 95% interval and verdict (module doc)."""
    out = Comparison(num_samples=better.num_samples)
    if not (better.n and worse.n):
        out.reason = "a side has no results"
        return out
    common = sorted(set(better.values) & set(worse.values))
    paired = bool(common) and (len(common) >= 2 or set(better.values) == set(worse.values))
    out.paired = paired
    if paired:
        seeds_b = seeds_w = common
        out.difference = float(np.mean([worse.values[s] - better.values[s] for s in common]))
        out.seeds = len(common)
    else:
        seeds_b, seeds_w = sorted(better.values), sorted(worse.values)
        mean_b = np.mean([better.values[s] for s in seeds_b])
        out.difference = float(np.mean([worse.values[s] for s in seeds_w]) - mean_b)
        out.seeds = min(len(seeds_b), len(seeds_w))
    out.var_sampling, out.sampling_kind = _sampling_var(better, worse, seeds_b, seeds_w)
    seed_var, out.df = pooled.for_pairing(paired)
    if out.df <= 0 or not np.isfinite(seed_var):
        out.verdict, out.reason = "undecided", "no estimate of the seed variance (one seed a cell)"
        return out
    n_b, n_w = len(seeds_b), len(seeds_w)
    # one seed's share: paired, Var(d_s); unpaired, half of it in each arm
    out.var_seed = seed_var / len(common) if paired else seed_var / 2 * (1 / n_b + 1 / n_w)
    out.t = t_multiplier(out.df)
    # never narrower than the plain pooled t interval (spread with its sampling part kept): a
    # seed part estimated at 0 must not leave the bootstrap alone to decide
    scale = 1 / len(common) if paired else (1 / n_b + 1 / n_w) / 2
    classic = pooled.total(paired, better.num_samples) * scale
    out.var_seed = max(out.var_seed, classic - out.var_sampling)  # the rest is the seeds'
    half = out.t * math.sqrt(out.var_seed + out.var_sampling)
    out.lo, out.hi = out.difference - half, out.difference + half
    out.verdict = "holds" if out.lo > 0 else "contradicted" if out.hi < 0 else "undecided"
    n_eff = len(common) if paired else 2 / (1 / n_b + 1 / n_w)
    out.per_seed_a, out.per_seed_b = out.var_seed * n_eff, out.var_sampling * n_eff
    return out


def _sampling_var(
    better: Side, worse: Side, seeds_b: list[int], seeds_w: list[int]
) -> tuple[float, str]:
    """Sampling variance of D: over paired bootstrap replicates when every row has them in one
    design, else the sum of the rows' bootstrap variances (0 and 'none' when unknown)."""
    reps_b = [better.reps.get(s) for s in seeds_b]
    reps_w = [worse.reps.get(s) for s in seeds_w]
    designs = better.designs | worse.designs
    reps = reps_b + reps_w
    if len(designs) == 1 and None not in designs and all(r is not None for r in reps):
        if len({len(r) for r in reps}) == 1 and len(reps[0]) >= 2:
            d = np.mean(reps_w, axis=0) - np.mean(reps_b, axis=0)
            return float(np.var(d, ddof=1)), "paired bootstrap"
    var_b = [better.samp_var.get(s, math.nan) for s in seeds_b]
    var_w = [worse.samp_var.get(s, math.nan) for s in seeds_w]
    if not np.all(np.isfinite(var_b + var_w)):
        return 0.0, "none"
    total = sum(var_b) / len(seeds_b) ** 2 + sum(var_w) / len(seeds_w) ** 2
    return float(total), "bootstrap sum"


# ---------------------------------------------------------------- what would decide it


@dataclass
class Need:
    """The cheaper way to decide an undecided comparison, within the caps."""

    lever: str | None  # seeds | samples | None (more than the caps allow)
    seeds: int | None = None  # seeds per side needed
    samples: int | None = None  # samples per evaluation needed
    text: str = ""


def what_decides(
    c: Comparison, max_seeds: int, max_samples: int, costs: dict | None = None
) -> Need:
    """At the measured per-seed variances A (seed) and B (sampling) and the observed |D|: the
    seeds n' or samples N' that would put 0 outside the interval (same t: "about"); the cheaper
    of the two by `costs` ({"seed": hours per added seed, "samples": hours per added sample per
    seed}; equal costs pick the one needing less compute by count), or None beyond the caps."""
    if c.verdict != "undecided":
        return Need(None, text="")
    if c.df <= 0:  # no seed variance yet: a second and third seed give one
        seeds = max(3, c.seeds + 1)
        if seeds > max_seeds:
            return Need(None, text=f"needs more than the budget (max {max_seeds} seeds)")
        return Need("seeds", seeds=seeds, text=f"{seeds} seeds a side: no seed variance yet")
    if not np.isfinite(c.per_seed_a):
        return Need(None, text="")
    target = (c.difference / c.t) ** 2 if np.isfinite(c.t) and c.difference else 0.0
    a, b, n, big_n = c.per_seed_a, c.per_seed_b, c.seeds, c.num_samples
    seeds = math.ceil((a + b) / target) if target > 0 else None
    seeds = max(seeds, n + 1) if seeds is not None else None
    samples = None
    if target > 0 and n * target > a and b > 0 and np.isfinite(big_n):
        samples = max(math.ceil(b * big_n / (n * target - a)), int(big_n) + 1)
    ok_seeds = seeds is not None and seeds <= max_seeds
    ok_samples = samples is not None and samples <= max_samples
    costs = costs or {}
    cost_seeds = (seeds - n) * costs.get("seed", 1.0) if ok_seeds else math.inf
    cost_samples = samples * n * costs.get("samples", 0.0) if ok_samples else math.inf
    if ok_seeds and (not ok_samples or cost_seeds <= cost_samples):
        return Need("seeds", seeds=seeds, text=f"about {seeds - n} more seeds ({seeds} a side)")
    if ok_samples:
        return Need("samples", samples=samples, text=f"about {samples} samples per eval")
    asked = [f"{seeds} seeds" if seeds else "", f"{samples} samples" if samples else ""]
    asked_text = " or ".join(t for t in asked if t) or "an effect of 0 never decides"
    return Need(
        None,
        text=f"needs more than the budget (max {max_seeds} seeds, {max_samples} samples: "
        f"{asked_text})",
    )
