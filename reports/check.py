"""`cfh check`: mean FID per (train setting, eval setting) against a baseline CSV.

A regression is a current mean FID above the baseline's by more than max(abs_tol, k x noise),
where noise is the larger of the pooled std over training seeds (baseline and current) and FID's
sampling bootstrap std (eval records' fid_bootstrap_std, mean over seeds). Exit codes: 0
nothing regressed, 1 a regression, 2 unusable input (missing or malformed baseline, no
overlap), the last raised as UserError so that cfh prints one line and exits 2.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import UserError
from core.io import atomic_write_text
from reports.columns import EVAL_KEY_COLUMNS
from reports.tables import pooled_std, seed_summary

BASELINE_DIR = Path(__file__).resolve().parent / "baselines"
REQUIRED = ("train_key", "eval_key", "fid_mean")
DEFAULT_ABS_TOL = 1.0
DEFAULT_K = 2.0
STATUS_ORDER = ("regressed", "missing", "improved", "same", "new")


@dataclass
class CheckResult:
    """The comparison table (one row per entry of either side) and the resulting exit code."""

    table: pd.DataFrame
    exit_code: int

    def counts(self) -> dict[str, int]:
        """Entries per status."""
        return {s: int((self.table["status"] == s).sum()) for s in STATUS_ORDER}


def default_baseline(grid: str) -> Path:
    """reports/baselines/<grid>.csv (shipped with the package)."""
    return BASELINE_DIR / f"{grid}.csv"


def current_summary(results: pd.DataFrame) -> pd.DataFrame:
    """Current FID per (train_key, eval_key) in baseline form: fid_mean, fid_std, n_seeds."""
    summary = seed_summary(results)
    summary = summary.rename(
        columns={"mean": "fid_mean", "std": "fid_std", "n": "n_seeds", "boot": "fid_boot_std"}
    )
    if "fid_boot_std" not in summary:
        summary["fid_boot_std"] = np.nan
    lead = ["train_key", "eval_key", "setting", "s_train", "fid_mean", "fid_std", "n_seeds"]
    lead.append("fid_boot_std")
    rest = [c for c in EVAL_KEY_COLUMNS if c in summary]
    return summary[lead + rest].sort_values(["train_key", "eval_key"]).reset_index(drop=True)


def read_baseline(path: str | os.PathLike) -> pd.DataFrame:
    """A baseline CSV; UserError when it is missing or lacks the key and FID columns."""
    path = Path(path)
    try:
        base = pd.read_csv(path)
    except FileNotFoundError:
        raise UserError(
            f"baseline {path} does not exist; create it with "
            "`cfh check GRID --update-baseline --baseline PATH` after a good sweep"
        ) from None
    except (OSError, ValueError) as e:
        raise UserError(f"baseline {path} is not a readable CSV: {e}") from None
    missing = [c for c in REQUIRED if c not in base]
    if missing:
        raise UserError(f"baseline {path} lacks column(s) {', '.join(missing)}")
    for col in ("fid_mean", "fid_std", "n_seeds"):
        if col in base and not pd.api.types.is_numeric_dtype(base[col]):
            bad = next(v for v in base[col] if pd.isna(pd.to_numeric(v, errors="coerce")))
            raise UserError(f"baseline {path}: column {col} holds {bad!r}; expected numbers")
    for col, default in (("fid_std", np.nan), ("n_seeds", 1)):
        if col not in base:
            base[col] = default
    return base


def write_baseline(results: pd.DataFrame, path: str | os.PathLike) -> pd.DataFrame:
    """Write the current results as the new baseline CSV (atomically); return it."""
    summary = current_summary(results)
    if summary.empty:
        raise UserError("no FID results to write as a baseline (has the sweep evaluated yet?)")
    atomic_write_text(path, summary.to_csv(index=False))
    return summary


def compare(
    current: pd.DataFrame,
    baseline: pd.DataFrame,
    abs_tol: float = DEFAULT_ABS_TOL,
    k: float = DEFAULT_K,
) -> CheckResult:
    """Compare current and baseline summaries entry by entry (outer join on the keys)."""
    cols = ["train_key", "eval_key", "fid_mean", "fid_std", "n_seeds", "fid_boot_std", "setting"]
    base = baseline[[c for c in cols if c in baseline]]
    both = current.merge(
        base, on=["train_key", "eval_key"], how="outer", suffixes=("", "_base"), indicator=True
    )
    pooled = pooled_std(
        both["fid_std"], both["n_seeds"], both["fid_std_base"], both["n_seeds_base"]
    )
    # the larger of the two noises: over training seeds (pooled) and of the sampling (bootstrap)
    nan = pd.Series(np.nan, index=both.index)
    boot = np.fmax(both.get("fid_boot_std", nan), both.get("fid_boot_std_base", nan))
    noise = np.fmax(np.nan_to_num(pooled), np.nan_to_num(boot))
    both["tolerance"] = np.maximum(abs_tol, k * noise)
    both["delta"] = both["fid_mean"] - both["fid_mean_base"]
    both["status"] = np.select(
        [
            both["_merge"] == "right_only",
            both["_merge"] == "left_only",
            both["delta"] > both["tolerance"],
            both["delta"] < -both["tolerance"],
        ],
        ["missing", "new", "regressed", "improved"],
        default="same",
    )
    both["status"] = pd.Categorical(both["status"], categories=STATUS_ORDER, ordered=True)
    if "setting_base" in both:  # name missing entries by the baseline's label
        both["setting"] = both["setting"].fillna(both["setting_base"])
    table = both.drop(columns="_merge").sort_values(["status", "train_key", "eval_key"])
    compared = int(both["_merge"].eq("both").sum())
    if compared == 0:
        code = 2
    elif (table["status"] == "regressed").any():
        code = 1
    else:
        code = 0
    return CheckResult(table=table.reset_index(drop=True), exit_code=code)


def format_result(result: CheckResult) -> str:
    """The comparison as a printable table plus a one-line summary."""
    t = result.table
    view = pd.DataFrame(
        {
            "status": t["status"].astype(str),
            "setting": t["setting"].fillna(t["train_key"]),
            "eval": _short_eval(t["eval_key"]),
            "baseline": _pm(t["fid_mean_base"], t["fid_std_base"], t["n_seeds_base"]),
            "current": _pm(t["fid_mean"], t["fid_std"], t["n_seeds"]),
            "delta": t["delta"].map(lambda v: "-" if pd.isna(v) else f"{v:+.2f}"),
            "tolerance": t["tolerance"].map(lambda v: f"{v:.2f}"),
        }
    )
    buf = io.StringIO()
    buf.write(view.to_markdown(index=False, disable_numparse=True, tablefmt="simple") + "\n\n")
    c = result.counts()
    compared = c["regressed"] + c["improved"] + c["same"]
    buf.write(
        f"compared {compared}: {c['regressed']} regressed, {c['improved']} improved, "
        f"{c['same']} within tolerance; {c['missing']} missing from the current results, "
        f"{c['new']} new (not in the baseline)\n"
    )
    return buf.getvalue()


def _short_eval(keys: pd.Series) -> pd.Series:
    """Eval keys cut to the settings that differ between entries (S_eval always kept)."""
    parts = keys.astype(str).str.split(" ", expand=True)  # keys list columns in one order
    keep = [c for c in parts if parts[c].nunique() > 1 or parts[c].str.startswith("s_eval=").all()]
    return parts[keep].agg(" ".join, axis=1) if keep else keys


def _pm(mean: pd.Series, std: pd.Series, n: pd.Series) -> pd.Series:
    """'mean ± std' text, '-' where absent."""
    text = mean.map(lambda v: "-" if pd.isna(v) else f"{v:.2f}")
    spread = std.map(lambda v: "" if pd.isna(v) else f" ± {v:.2f}")
    return text + spread.where(n.fillna(0) > 1, "")


def check_tolerances(abs_tol: float, k: float) -> None:
    """UserError unless both tolerances are finite and >= 0 (NaN would let everything pass)."""
    for flag, value in (("--abs-tol", abs_tol), ("--k", k)):
        if not (math.isfinite(value) and value >= 0):
            raise UserError(f"{flag}={value} is not allowed; expected a finite number >= 0")


def run_check(
    results: pd.DataFrame,
    baseline_path: str | os.PathLike,
    abs_tol: float = DEFAULT_ABS_TOL,
    k: float = DEFAULT_K,
) -> CheckResult:
    """Compare a results table with a baseline file; UserError when nothing is comparable."""
    check_tolerances(abs_tol, k)
    baseline = read_baseline(baseline_path)
    current = current_summary(results)
    if current.empty:
        raise UserError("no current FID results to check (has the sweep evaluated yet?)")
    return compare(current, baseline, abs_tol, k)
