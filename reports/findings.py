"""The findings a grid file names (`findings:`, stored in plan.json), each with a verdict.

A finding says that one cell should have a lower mean FID than another; a cell is a set of grid
axis values as dotted config keys (harness.findings checks them before a sweep), matched here
against the results table at each run's final checkpoint. Per cell: the mean over seeds of
each seed's mean FID (a cell that leaves an axis open averages over it), sd = the std over
seeds, with FID's sampling bootstrap std as its floor (and as sd where there is one seed), and
n = the number of seeds. The difference worse - better is compared with 2 x the combined
standard error sqrt(sd_b^2 / n_b + sd_w^2 / n_w):

    holds beyond noise   the difference is above 2 x SE
    holds within noise   it is positive but not above 2 x SE (or SE is unknown)
    does not hold        it is zero or negative
    not measured         a cell has no results (yet)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from reports.columns import CONFIG_COLUMNS
from reports.labels import fmt_value
from reports.tables import final_evals

Z = 2.0  # a difference "beyond noise" exceeds Z combined standard errors
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


def judge_findings(df: pd.DataFrame, findings: Any) -> pd.DataFrame:
    """One row per finding: its cells' mean, sd and seeds, the difference, 2 x SE, verdict."""
    data = final_evals(df)
    rows = []
    for item in findings if isinstance(findings, list) else []:
        if not isinstance(item, dict):
            continue
        row: dict[str, Any] = {"claim": str(item.get("claim", ""))}
        for side in ("better", "worse"):
            stats = cell_stats(data, item.get(side))
            row.update({f"{side}_{k}": v for k, v in stats.items()})
        rows.append(_verdict(row))
    return pd.DataFrame(rows)


def cell_stats(data: pd.DataFrame, cell: Any) -> dict[str, float]:
    """mean (over seeds of each seed's mean FID), sd (seed std, bootstrap std its floor) and n
    (seeds) of the rows matching every key of `cell`; NaN and n = 0 when none match."""
    rows = data[cell_mask(data, cell)] if isinstance(cell, dict) and cell else data.iloc[0:0]
    if rows.empty:
        return {"mean": np.nan, "sd": np.nan, "n": 0}
    seeds = rows["seed"].fillna(-1) if "seed" in rows else pd.Series(0, index=rows.index)
    per_seed = rows.groupby(seeds)["fid"].mean()
    seed_sd = per_seed.std() if len(per_seed) > 1 else np.nan
    boot = np.nan
    if "fid_bootstrap_std" in rows and rows["fid_bootstrap_std"].notna().any():
        # the bootstrap std of one seed's mean over its rows, averaged over seeds
        g = rows.groupby(seeds)["fid_bootstrap_std"]
        boot = float((np.sqrt(g.apply(lambda b: (b**2).sum())) / g.count()).mean())
    return {"mean": float(per_seed.mean()), "sd": float(np.fmax(seed_sd, boot)), "n": len(per_seed)}


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


def _verdict(row: dict) -> dict:
    """Difference (worse - better mean FID), 2 x SE and the verdict of one finding."""
    diff = row["worse_mean"] - row["better_mean"]
    b, w = (row[f"{side}_sd"] ** 2 / max(row[f"{side}_n"], 1) for side in ("better", "worse"))
    se = np.sqrt(b + w)
    if not (row["better_n"] and row["worse_n"]):
        verdict = "not measured"
    elif diff <= 0:
        verdict = "does not hold"
    elif np.isfinite(se) and diff > Z * se:
        verdict = "holds beyond noise"
    else:
        verdict = "holds within noise" + ("" if np.isfinite(se) else " (noise unknown)")
    return {**row, "difference": diff, "noise_2se": Z * se, "verdict": verdict}


def findings_view(judged: pd.DataFrame) -> pd.DataFrame:
    """The judged findings as the report prints them."""

    def cell(side: str) -> pd.Series:
        mean, sd, n = judged[f"{side}_mean"], judged[f"{side}_sd"], judged[f"{side}_n"]
        text = mean.map(_num) + (" ± " + sd.map(_num)).where(sd.notna(), "")
        return (text + " (n=" + n.astype(int).astype(str) + ")").where(n > 0, "no results")

    return pd.DataFrame(
        {
            "finding": judged["claim"],
            "better cell FID": cell("better"),
            "worse cell FID": cell("worse"),
            "difference": judged["difference"].map(_num),
            "2 x SE": judged["noise_2se"].map(_num),
            "verdict": judged["verdict"],
        }
    )


NOTE = (
    "FID at each run's final checkpoint; mean over seeds ± sd (std over seeds, FID's sampling "
    "bootstrap std its floor and the sd of a single seed), n seeds; difference = worse - better; "
    "beyond noise: difference > 2 x sqrt(sd_b²/n_b + sd_w²/n_w)"
)


def _num(v: Any) -> str:
    """Two decimals, '-' for NaN."""
    return "-" if v is None or not np.isfinite(v) else f"{v:.2f}"
