"""The winner per eval setting: best training setting, runner-up and whether the margin decides
it (reports.decide, as for the findings); a one-seed grid borrows its shipped baseline's seed
variance."""

from __future__ import annotations

import math

import pandas as pd

from reports.decide import Pooled, compare
from reports.findings import grid_pool, observations, side_of
from reports.tables import final_evals, seed_summary

__all__ = ["stored_noise", "stored_pool", "winners"]


def stored_noise(grid: str | None) -> float | None:
    """The pooled seed std of FID in a grid's shipped baseline (reports/baselines/<grid>.csv:
    the smoke grid's, from 3 seeds), or None when the grid has none."""
    pool = stored_pool(grid)
    return math.sqrt(pool.within) if pool is not None else None


def stored_pool(grid: str | None) -> Pooled | None:
    """The seed variance of a grid's shipped baseline as a pooled estimate (df = sum over its
    entries of seeds - 1), for a grid run with one seed; None when the grid has none."""
    from reports.check import default_baseline

    if not grid or not default_baseline(grid).is_file():
        return None
    base = pd.read_csv(default_baseline(grid))
    if "fid_std" not in base or not base["fid_std"].notna().any():
        return None
    base = base[base["fid_std"].notna()]
    n = base["n_seeds"] if "n_seeds" in base else pd.Series(2, index=base.index)
    dof = int((n - 1).clip(lower=0).sum())
    var = float(((n - 1) * base["fid_std"] ** 2).sum() / dof) if dof else math.nan
    return Pooled(within=var, within_df=dof, block=2 * var, block_df=dof, cells=len(base))


def winners(df: pd.DataFrame, replicates: dict | None = None) -> pd.DataFrame:
    """Per eval setting: best training setting by mean FID, runner-up, margin with its 95%
    interval (reports.decide: paired over shared seeds, seed variance pooled over the two
    settings' cells, or for a one-seed grid the shipped baseline's) and whether it decides."""
    summary = seed_summary(final_evals(df))
    if summary.empty:
        return summary
    obs = observations(df, "fid", replicates)
    grids = df["grid"].dropna().unique() if "grid" in df else []
    grid_name = str(grids[0]) if len(grids) == 1 else ""
    stored = stored_pool(grid_name)
    ranked = summary.sort_values(["eval_key", "mean"])
    g = ranked.groupby("eval_key", sort=False)
    first = g.nth(0).set_index("eval_key")
    cols = ["setting", "mean", "std", "n"]
    second = g.nth(1).set_index("eval_key")[cols]
    both = first.join(second.add_suffix("_2"), how="left")
    both["margin"] = both["mean_2"] - both["mean"]
    judged, kinds = [], []
    for key, row in both.iterrows():
        at = obs[obs["eval_key"] == key]
        pooled, kind = grid_pool(obs, [row["setting"], row.get("setting_2")]), "pooled"
        if pooled.within_df == 0 and stored is not None:
            pooled, kind = stored, f"seed std of the shipped {grid_name} baseline"
        kinds.append(kind)
        c = compare(
            side_of(at[at["setting"] == row["setting"]]),
            side_of(at[at["setting"] == row.get("setting_2")]),
            pooled,
        )
        judged.append(c)
    both["lo"] = [c.lo for c in judged]
    both["hi"] = [c.hi for c in judged]
    both["paired"] = [c.paired for c in judged]
    both["df"] = [c.df for c in judged]
    both["noise_kind"] = [
        f"{k} (df {c.df})" if c.df else "no seed variance"
        for k, c in zip(kinds, judged, strict=True)
    ]
    both["verdict"] = [
        "only one setting" if pd.isna(m) else "decided" if c.verdict == "holds" else "undecided"
        for m, c in zip(both["mean_2"], judged, strict=True)
    ]
    return both.sort_values("s_eval").reset_index()
