"""The findings a grid file names (`findings:`, stored in plan.json), each with a verdict.

A finding says that one cell should have a lower value of the grid's metric (`decide_on`: fid,
fid_inf or kid; lower is better for all three) than another; a cell is a set of grid axis values
as dotted config keys (harness.grid.findings checks them before a sweep), matched here against the
results table at each run's final checkpoint. Per cell and training seed the value is the mean
over the cell's rows (a cell that leaves an axis open averages over it), at the largest sample
count that both cells were evaluated with (FID's bias moves with the count: never compare two).
reports.decide turns the two cells into a difference worse - better with its 95% interval, the
verdict (holds | contradicted | undecided | not measured), its variance split into training
seed and evaluation sampling, and what would decide it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from reports.columns import CONFIG_COLUMNS
from reports.decide import (
    LEVEL,
    Pooled,
    Side,
    compare,
    pooled_seed_variance,
    what_decides,
)
from reports.labels import fmt_value
from reports.tables import final_evals

METRIC_NAMES = {"fid": "FID", "fid_inf": "FID_inf", "kid": "KID"}
DEFAULT_MAX_SEEDS = 10
DEFAULT_MAX_SAMPLES = 2000
# Results column <- dotted key of a cell (the config's, for the eval axes as the grid writes them).
CELL_COLUMNS = {
    **{key: col for col, key in CONFIG_COLUMNS.items()},
    "model": "model",
    "data": "dataset",
    "sample.ar_steps": "s_eval",
    "sample.order": "eval_order",
    "sample.cfg": "cfg",
    "sample.cfg_interval": "cfg_interval",
    "sample.steps": "sampler_steps",
    "sample.sampler": "sampler",
    "sample.num": "num_samples",
    "sample.ckpt": "ckpt_step",
    "eval.extractor": "extractor",
    "eval.task": "task",
}
TOKEN_KEYS = ("train.ar.steps", "sample.ar_steps")  # the symbol L: the tokens per image


def observations(
    df: pd.DataFrame, metric: str = "fid", replicates: dict | None = None
) -> pd.DataFrame:
    """The grid's measurements: final-checkpoint rows with `metric`, each with its cell
    (training setting x eval setting), seed, value, sampling variance and replicates."""
    data = final_evals(df)
    if metric not in data:
        return data.iloc[0:0].assign(cell="", value=np.nan, samp_var=np.nan, design=None)
    data = data[data[metric].notna()].copy()
    replicates = replicates or {}
    reps, var, designs = [], [], []
    nothing = pd.Series(np.nan, index=data.index)
    boot_sds = (
        data["fid_bootstrap_std"] if metric == "fid" and "fid_bootstrap_std" in data else nothing
    )
    files = data["eval_file"] if "eval_file" in data else nothing
    for sig, file, boot_sd in zip(data["signature"], files, boot_sds, strict=True):
        boot = replicates.get((sig, file)) or {}
        values = boot.get(metric)
        rep = np.asarray(values, float) if isinstance(values, list) and len(values) > 1 else None
        reps.append(rep)
        var.append(float(np.var(rep, ddof=1)) if rep is not None else float(boot_sd) ** 2)
        keys = ("seed", "count", "num_samples", "num_reference", "resample")
        designs.append(tuple(boot.get(k) for k in keys) if rep is not None else None)
    data["value"] = data[metric].astype(float)
    data["samp_var"] = var
    data["reps"] = reps
    data["design"] = designs
    data["cell"] = data["setting"].astype(str) + " | " + data["eval_key"].astype(str)
    data["seed"] = data["seed"].fillna(-1).astype(int) if "seed" in data else -1
    return data


def side_of(rows: pd.DataFrame) -> Side:
    """A finding's side from its matching observations: per seed, the mean over its rows."""
    side = Side()
    if rows.empty:
        return side
    side.num_samples = float(rows["num_samples"].max())
    for seed, g in rows.groupby("seed"):
        k = len(g)
        side.values[int(seed)] = float(g["value"].mean())
        side.samp_var[int(seed)] = float(g["samp_var"].sum()) / k**2
        reps = list(g["reps"])
        side.reps[int(seed)] = None if any(r is None for r in reps) else np.mean(reps, axis=0)
        side.designs |= set(g["design"])
    return side


def matched(obs: pd.DataFrame, better: Any, worse: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both cells' observations at the largest sample count that both have."""
    b = obs[cell_mask(obs, better)] if isinstance(better, dict) and better else obs.iloc[0:0]
    w = obs[cell_mask(obs, worse)] if isinstance(worse, dict) and worse else obs.iloc[0:0]
    both = set(b["num_samples"].dropna()) & set(w["num_samples"].dropna())
    if b.empty or w.empty:
        return b, w
    if not both:  # never compare FIDs of two sample counts: their biases differ
        return b.iloc[0:0], w.iloc[0:0]

    def seeds(rows: pd.DataFrame, n: float) -> int:
        return rows.loc[rows["num_samples"] == n, "seed"].nunique()

    # the largest count at which both cells have all their seeds (a count still being scored
    # on some seeds waits), else the largest
    full = [
        n for n in both if seeds(b, n) == b["seed"].nunique() and seeds(w, n) == w["seed"].nunique()
    ]
    n = max(full or both)
    return b[b["num_samples"] == n], w[w["num_samples"] == n]


def grid_pool(obs: pd.DataFrame, settings: Any = None) -> Pooled:
    """The pooled seed variance over the grid's cells of the given training `settings` (all
    when None: FID's seed spread differs between training settings far more than between the
    eval settings of one, so a finding pools over the cells of its own two), at the most
    common sample count (cells evaluated again with more samples would count seeds twice)."""
    if settings is not None:
        obs = obs[obs["setting"].isin(set(settings))]
    if obs.empty:
        return Pooled()
    common = obs["num_samples"].mode()
    base = obs[obs["num_samples"] == common.iloc[0]] if len(common) else obs
    return pooled_seed_variance(base)


def judge_findings(
    df: pd.DataFrame,
    findings: Any,
    decide_on: str = "fid",
    replicates: dict | None = None,
    max_seeds: int = DEFAULT_MAX_SEEDS,
    max_samples: int = DEFAULT_MAX_SAMPLES,
) -> pd.DataFrame:
    """One row per finding: both cells' means and seeds, the difference with its 95% interval,
    the verdict, the variance split and what would decide it (reports.decide)."""
    obs = observations(df, decide_on, replicates)
    costs = lever_costs(obs)
    rows = []
    for i, item in enumerate(findings if isinstance(findings, list) else []):
        if not isinstance(item, dict):
            continue
        b_rows, w_rows = matched(obs, item.get("better"), item.get("worse"))
        better, worse = side_of(b_rows), side_of(w_rows)
        pooled = grid_pool(obs, {*b_rows["setting"], *w_rows["setting"]})
        c = compare(better, worse, pooled)
        need = what_decides(c, max_seeds, max_samples, costs)
        rows.append(
            {
                "finding": i,
                "claim": str(item.get("claim", "")),
                "better": item.get("better"),
                "worse": item.get("worse"),
                **_side_summary("better", better),
                **_side_summary("worse", worse),
                **c.as_dict(),
                "lever": need.lever,
                "need_seeds": need.seeds,
                "need_samples": need.samples,
                "need": need.text,
                "metric": decide_on,
                "pool_cells": pooled.cells,
                "pool_df": c.df,
            }
        )
    return pd.DataFrame(rows)


def lever_costs(obs: pd.DataFrame) -> dict[str, float]:
    """Measured hours of one more seed (training of one run, median) and of one more sample of
    one evaluation (median 1 / sample_img_per_s), so that the cheaper lever is chosen."""
    if obs.empty:
        return {}
    train = obs.drop_duplicates("signature")["wall_hours"] if "wall_hours" in obs else None
    speed = obs["sample_img_per_s"] if "sample_img_per_s" in obs else None
    hours_seed = float(np.nanmedian(train)) if train is not None and train.notna().any() else 1.0
    per_sample = (
        float(np.nanmedian(1 / speed)) / 3600 if speed is not None and speed.notna().any() else 0.0
    )
    evals_per_run = max(1.0, len(obs) / max(1, obs["signature"].nunique()))
    return {"seed": hours_seed + per_sample * float(obs["num_samples"].median()) * evals_per_run,
            "samples": per_sample}  # fmt: skip


def _side_summary(name: str, side: Side) -> dict[str, Any]:
    values = list(side.values.values())
    return {
        f"{name}_mean": float(np.mean(values)) if values else math.nan,
        f"{name}_sd": float(np.std(values, ddof=1)) if len(values) > 1 else math.nan,
        f"{name}_n": side.n,
        f"{name}_seeds": sorted(side.values),
    }


def cell_mask(data: pd.DataFrame, cell: dict) -> pd.Series:
    """Rows whose columns hold every value of the cell (L = the row's tokens; sample.order
    train = the row's own training order)."""
    mask = pd.Series(True, index=data.index)
    for key, value in cell.items():
        col = CELL_COLUMNS.get(key, key)
        if col not in data:
            return pd.Series(False, index=data.index)
        if key in TOKEN_KEYS and value == "L":
            value = data["tokens"]
        elif key == "sample.order" and value == "train":
            value = data["train_order"]
        mask &= _equal(data[col], value)
    return mask


def _equal(column: pd.Series, value: Any) -> pd.Series:
    """Numbers compared as numbers (1 == 1.0), anything else as its text."""
    numbers = pd.to_numeric(column, errors="coerce")
    if isinstance(value, pd.Series):
        other = pd.to_numeric(value, errors="coerce")
        same_text = column.astype(object).map(fmt_value) == value.astype(object).map(fmt_value)
        return (numbers.notna() & np.isclose(numbers, other)) | same_text
    if isinstance(value, int | float) and not isinstance(value, bool):
        return numbers.notna() & np.isclose(numbers, float(value))
    return column.astype(object).map(fmt_value) == fmt_value(value)


def findings_view(judged: pd.DataFrame) -> pd.DataFrame:
    """The judged findings as the report prints them."""

    def cell(side: str) -> pd.Series:
        mean, sd, n = judged[f"{side}_mean"], judged[f"{side}_sd"], judged[f"{side}_n"]
        text = mean.map(_num) + (" ± " + sd.map(_num)).where(sd.notna(), "")
        return (text + " (n=" + n.astype(int).astype(str) + ")").where(n > 0, "no results")

    interval = "[" + judged["lo"].map(_num) + ", " + judged["hi"].map(_num) + "]"
    total = judged["var_seed"] + judged["var_sampling"]
    share = (100 * judged["var_sampling"] / total).map(
        lambda v: "-" if not np.isfinite(v) else f"{v:.0f}% / {100 - v:.0f}%"
    )
    return pd.DataFrame(
        {
            "finding": judged["claim"],
            "better cell": cell("better"),
            "worse cell": cell("worse"),
            "difference": judged["difference"].map(_num),
            "95% interval": interval.where(judged["lo"].notna(), "-"),
            "paired": judged["paired"].map({True: "yes", False: "no"}),
            "sampling / seed": share,
            "verdict": judged["verdict"],
            "to decide": judged["need"].where(judged["need"] != "", "-"),
        }
    )


def method_note(judged: pd.DataFrame, pooled: Pooled | None = None) -> str:
    """One line under the findings table: what the numbers are and how they were judged."""
    metric = METRIC_NAMES.get(str(judged["metric"].iloc[0]), "FID") if len(judged) else "FID"
    kinds = sorted({k for k in judged.get("sampling_kind", []) if k and k != "none"})
    dfs = sorted({int(d) for d in judged.get("pool_df", []) if d and d > 0})
    cells = int(judged["pool_cells"].max()) if len(judged) else 0
    df_text = ", ".join(map(str, dfs)) or "none"
    return (
        f"Judged on {metric} at each run's final checkpoint; cell = mean ± sd over seeds (n); "
        f"difference = worse - better, {LEVEL:.0%} interval = difference ± t x SE with Student "
        f"t at the pooled seed variance's df ({df_text}); seed variance pooled over the cells of "
        f"the finding's two training settings (up to {cells}; paired = same seeds: residual of "
        "cells + seeds; else within cells), "
        f"its sampling part removed; sampling variance by {' / '.join(kinds) or 'none known'} "
        "(samples and reference resampled alike in both arms); sampling / seed = the shares of "
        "the difference's variance; holds / contradicted when the interval excludes 0, else "
        "undecided."
    )


def _num(v: Any) -> str:
    """Two decimals (more for small values such as KID), '-' for NaN."""
    if v is None or not np.isfinite(v):
        return "-"
    return f"{v:.2f}" if abs(v) >= 0.1 or v == 0 else f"{v:.2g}"
