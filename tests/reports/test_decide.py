"""reports.decide: the paired and unpaired intervals against scipy's own, the sampling part,
one-seed grids, and the verdicts' calibration on simulated grids with known effects."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from reports.decide import Side, compare, pooled_seed_variance, t_multiplier, what_decides


def side(values: dict[int, float], var: float = 0.0, reps: dict | None = None) -> Side:
    s = Side(values=dict(values), samp_var=dict.fromkeys(values, var), num_samples=200.0)
    s.reps = dict(reps) if reps else dict.fromkeys(values)
    s.designs = {("d",)} if reps else {None}
    return s


def obs_of(cells: dict[str, dict[int, float]], var: float = 0.0) -> pd.DataFrame:
    rows = [
        {"cell": c, "seed": s, "value": v, "samp_var": var}
        for c, by_seed in cells.items()
        for s, v in by_seed.items()
    ]
    return pd.DataFrame(rows)


def test_two_cells_with_shared_seeds_give_the_paired_t_interval():
    rng = np.random.default_rng(0)
    a = rng.normal(50, 5, 6)
    b = a + 3 + rng.normal(0, 1, 6)  # correlated through the seed: pairing matters
    cells = {"a": dict(enumerate(a)), "b": dict(enumerate(b))}
    c = compare(side(cells["a"]), side(cells["b"]), pooled_seed_variance(obs_of(cells)))
    ci = stats.ttest_rel(b, a).confidence_interval(0.95)
    assert c.paired and c.df == 5
    assert c.difference == pytest.approx(float(np.mean(b - a)))
    assert (c.lo, c.hi) == (pytest.approx(ci.low), pytest.approx(ci.high))
    # judged as independent samples the same numbers would be far wider
    ind = stats.ttest_ind(b, a).confidence_interval(0.95)
    assert ind.high - ind.low > 2 * (c.hi - c.lo)


def test_disjoint_seeds_give_the_pooled_two_sample_t_interval():
    a, b = [10.0, 12.0, 11.0, 15.0], [14.0, 18.0, 13.0]
    cells = {"a": dict(enumerate(a)), "b": {10 + i: v for i, v in enumerate(b)}}
    c = compare(side(cells["a"]), side(cells["b"]), pooled_seed_variance(obs_of(cells)))
    ci = stats.ttest_ind(b, a, equal_var=True).confidence_interval(0.95)
    assert not c.paired and c.df == 5
    assert (c.lo, c.hi) == (pytest.approx(ci.low), pytest.approx(ci.high))


def test_pooling_over_more_cells_narrows_the_multiplier_and_states_its_df():
    rng = np.random.default_rng(1)
    cells = {f"c{k}": dict(enumerate(rng.normal(k, 1, 3))) for k in range(8)}
    pooled = pooled_seed_variance(obs_of(cells))
    assert pooled.within_df == 8 * 2 and pooled.block_df == (8 - 1) * (3 - 1)
    c = compare(side(cells["c0"]), side(cells["c1"]), pooled)
    assert c.df == 14 and c.t == pytest.approx(stats.t.ppf(0.975, 14))
    assert t_multiplier(2) == pytest.approx(4.3027, abs=1e-4)  # n = 3 alone: not 2


def test_the_sampling_part_is_removed_from_the_pooled_seed_variance():
    """Seeds that differ only by sampling noise: the seed variance is about 0, and the
    interval is the sampling one (not twice it)."""
    rng = np.random.default_rng(2)
    var = 4.0
    cells = {f"c{k}": dict(enumerate(rng.normal(0, 2.0, 50))) for k in range(4)}
    pooled = pooled_seed_variance(obs_of(cells, var))
    assert pooled.within == pytest.approx(0.0, abs=0.6) and pooled.block < 1.2


def test_paired_bootstrap_uses_the_replicates_of_the_difference():
    rng = np.random.default_rng(3)
    common = rng.normal(0, 3, 200)  # the same sample indices in both arms: shared noise
    reps_a = {s: 40 + s + common + rng.normal(0, 0.5, 200) for s in range(3)}
    reps_b = {s: 45 + s + common + rng.normal(0, 0.5, 200) for s in range(3)}
    a = side({s: 40.0 + s for s in range(3)}, 9.0, reps_a)
    b = side({s: 45.0 + s for s in range(3)}, 9.0, reps_b)
    obs = obs_of({"a": a.values, "b": b.values}, 9.0)
    c = compare(a, b, pooled_seed_variance(obs))
    d = np.mean([reps_b[s] for s in range(3)], axis=0) - np.mean([reps_a[s] for s in range(3)], 0)
    assert c.sampling_kind == "paired bootstrap"
    assert c.var_sampling == pytest.approx(np.var(d, ddof=1))
    assert c.var_sampling < 0.2  # the shared part cancels; the sum of variances would be 6


def test_a_one_seed_grid_is_undecided_whatever_the_bootstrap_says():
    cells = {"a": {0: 10.0}, "b": {0: 90.0}}
    c = compare(side(cells["a"], 0.01), side(cells["b"], 0.01), pooled_seed_variance(obs_of(cells)))
    assert c.verdict == "undecided" and "seed variance" in c.reason


def test_what_decides_picks_a_lever_within_the_caps():
    rng = np.random.default_rng(4)
    cells = {f"c{k}": dict(enumerate(rng.normal(0, 1.0, 3))) for k in range(6)}
    cells["c1"] = {s: v + 1.5 for s, v in cells["c0"].items()}
    pooled = pooled_seed_variance(obs_of(cells, 4.0))
    c = compare(side(cells["c0"], 4.0), side(cells["c1"], 4.0), pooled)
    assert c.verdict == "undecided"
    # sampling dominates (4.0 against ~1): more samples is the cheaper lever
    need = what_decides(c, max_seeds=10, max_samples=100_000, costs={"seed": 1.0, "samples": 1e-6})
    assert need.lever == "samples" and need.samples > 200
    assert "samples per eval" in need.text
    none = what_decides(c, max_seeds=3, max_samples=201)
    assert none.lever is None and "more than the budget" in none.text


def simulate_grid(rng, effect: float, seeds: int = 3, cells: int = 6):
    """Two training settings x 3 eval settings = 6 cells x seeds of FID (the cells a finding
    pools over): cell means (cell 1 = cell 0 + effect), a seed effect shared by
    the cells (common random numbers), a seed x cell part (sd 1) and sampling noise (sd 1,
    reported as a bootstrap variance measured with 20 replicates)."""
    mu = rng.normal(80, 10, cells)
    mu[1] = mu[0] + effect
    seed_effect = rng.normal(0, 2.0, seeds)
    y = mu[:, None] + seed_effect[None] + rng.normal(0, 1.0, (cells, seeds))
    y += rng.normal(0, 1.0, (cells, seeds))
    boot = rng.chisquare(19, (cells, seeds)) / 19  # an estimated sampling variance of 1
    rows = [
        {"cell": f"c{c}", "seed": s, "value": y[c, s], "samp_var": boot[c, s]}
        for c in range(cells)
        for s in range(seeds)
    ]
    obs = pd.DataFrame(rows)
    sides = [
        side({s: y[c, s] for s in range(seeds)}) for c in (0, 1)
    ]  # fmt: skip
    for c, sd in zip((0, 1), sides, strict=True):
        sd.samp_var = {s: boot[c, s] for s in range(seeds)}
    return obs, sides


@pytest.mark.parametrize("seeds", [2, 3, 5])
def test_a_null_effect_is_decided_in_at_most_about_5_percent_of_grids(seeds: int):
    """2,000 simulated grids per seed count: the 95% interval decides a null effect (holds or
    contradicted) in at most 5% + 1.5 points (3 Monte-Carlo standard errors)."""
    rng = np.random.default_rng(100 + seeds)
    decided = 0
    n = 2000
    for _ in range(n):
        obs, (better, worse) = simulate_grid(rng, 0.0, seeds)
        c = compare(better, worse, pooled_seed_variance(obs))
        decided += c.verdict in ("holds", "contradicted")
    assert decided / n <= 0.065, decided / n


def test_an_effect_of_3_x_the_noise_is_decided_in_most_grids():
    """True difference 3 x its standard error (seed x cell 1 and sampling 1 per arm, 3 seeds:
    SE = sqrt(4 / 3)): decided as holding in most grids (measured about 75%), contradicted in
    none."""
    rng = np.random.default_rng(7)
    se = np.sqrt(4 / 3)
    verdicts = []
    for _ in range(1000):
        obs, (better, worse) = simulate_grid(rng, 3 * se, 3)
        verdicts.append(compare(better, worse, pooled_seed_variance(obs)).verdict)
    share = verdicts.count("holds") / len(verdicts)
    assert share > 0.6, share
    assert verdicts.count("contradicted") == 0
