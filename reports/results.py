"""Run folders and bench files -> one tidy pandas table (one row per run x eval settings x ckpt).

Inputs (docs/architecture.md): `<root>/runs/<signature>/` with config.yaml, point.json,
status.json, metrics.jsonl and eval/<hash>.json; `<root>/grids/<name>/plan.json` for a grid's
points. Every file may be missing, half-written by a job that is still running, or corrupt: the
loader never raises on them, it keeps the run as a row with its `state` and a `problems` note and
emits one `ResultsWarning` that counts such runs. A run folder is read by core.runfolder (the
reader `cfh status` uses too) and turned into rows by reports.rows; the column names are in
reports.columns, derived labels in reports.labels, model sizes in reports.sizes.

Bench rows (issue 6) come from JSON files written by `cfh bench` (harness/bench.py), at
`<root>/bench/*.json` (a standalone bench; `cfh report GRID` shows it when its "grid" names
GRID, `cfh report` without a grid always) or `<run_dir>/bench/*.json` (a bench point of a sweep):

    {"kind": "bench", "created": iso-time, "grid": null or a grid name, "command": str,
     "machine": {"cpu": str, "cores": int, "gpu": str|null, "torch": str, "peak_flops": float},
     "rows": [{"measure": "train" | "sample" | "extract", "impl": "cfh" | "reference",
               "model": "T", "dataset": "digits", "attention": "sdpa", "dtype": "fp32",
               "params": .., "flops": .., "batch_size": 64, "seq_len": 100.4,
               "train_img_per_s": .., "train_tokens_per_s": .., "mfu": .., "peak_mem_mb": ..,
               "speedup_vs_reference": ..,                                 # measure=train
               "s_eval": 4, "kv_cache": true, "sampler_steps": 10, "sample_img_per_s": ..,
               "speedup_vs_recompute": ..,                                 # measure=sample
               "extractor": "inception", "extract_ms_per_img": ..,         # measure=extract
               "error": "..."}, ...]}                                # a measurement that raised

Each entry of "rows" becomes one results row with kind="bench" (state "failed" when it has an
error); its keys are results columns (unknown keys are kept as extra columns), machine fields
become `machine_<key>` columns.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.errors import UserError
from core.names import check_name, is_name
from core.runfolder import list_files, never_swept, plan_path, read_json
from reports.columns import (
    CONFIG_COLUMNS,
    EVAL_KEY_COLUMNS,
    LEAD_COLUMNS,
    NUMERIC_COLUMNS,
    TRAIN_KEY_COLUMNS,
)
from reports.labels import ar_weighting_labels, key_text, s_train_labels, setting_labels
from reports.rows import bench_grid, point_axes, read_bench, read_run
from reports.sizes import add_model_size

__all__ = [  # the loader's names, and those other modules and cfh bench take from here
    "EVAL_KEY_COLUMNS",
    "TRAIN_KEY_COLUMNS",
    "Results",
    "ResultsWarning",
    "check_name",
    "load_curves",
    "load_results",
    "plan_eval_keys",
    "plan_points",
    "read_bench",
    "scan",
    "train_stats",
]


class ResultsWarning(UserWarning):
    """Some runs are incomplete, failed or have corrupt files (they are still rows)."""


@dataclass
class Results:
    """What one scan of the root found: the tidy table, training curves, and the grid's plan."""

    table: pd.DataFrame
    curves: pd.DataFrame
    grid: str | None = None
    plan: dict = field(default_factory=dict)
    root: Path = Path(".")


def load_results(root: str | os.PathLike, grid: str | None = None) -> pd.DataFrame:
    """The tidy results table of a grid (or of every run and bench file under `root`)."""
    return scan(root, grid).table


def load_curves(root: str | os.PathLike, grid: str | None = None) -> pd.DataFrame:
    """Per-log-step training metrics (signature, step, loss, img_per_s, ...) of a grid's runs."""
    return scan(root, grid).curves


def scan(root: str | os.PathLike, grid: str | None = None) -> Results:
    """Read every run folder (and bench file) of `grid`, or of the whole root when grid is None."""
    root = Path(root)
    plan: dict = {}
    if grid is not None:
        check_name(grid)
        if not plan_path(root, grid).is_file():  # the words `cfh status` uses too
            raise UserError(never_swept(root, grid))
        plan = read_json(plan_path(root, grid))[0] or {}
        points = plan_points(plan)
        eval_keys = plan_eval_keys(plan)
        run_dirs = [(root / "runs" / sig, axes, eval_keys.get(sig)) for sig, axes in points.items()]
        bench_files = [p for p in list_files(root / "bench", "*.json") if bench_grid(p) == grid]
    else:
        run_dirs = [(p, {}, None) for p in sorted(list_files(root / "runs", "*")) if p.is_dir()]
        bench_files = sorted(list_files(root / "bench", "*.json"))
    rows: list[dict] = []
    curves: list[dict] = []
    for run_dir, axes, keys in run_dirs:
        run_rows, run_curve = read_run(run_dir, axes, keys)
        rows += run_rows
        curves += run_curve
        bench_files += sorted(list_files(run_dir / "bench", "*.json"))
    for path in bench_files:
        rows += read_bench(path)
    curve_frame = _curve_frame(curves)
    table = _finish(pd.DataFrame(rows), curve_frame, grid)
    _warn_incomplete(table)
    return Results(table=table, curves=curve_frame, grid=grid, plan=plan, root=root)


def plan_points(plan: Any) -> dict[str, dict]:
    """{signature: axis values} from a grid's plan.json, tolerant of its exact layout."""
    items = plan.get("points", plan.get("train_points", [])) if isinstance(plan, dict) else plan
    if isinstance(items, dict):  # {signature: point}
        items = [{"signature": k, **(v if isinstance(v, dict) else {})} for k, v in items.items()]
    out: dict[str, dict] = {}
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        sig = item.get("signature", item.get("sig"))
        if not is_name(sig):
            continue  # a signature becomes a path: never trust an odd one
        out[sig] = point_axes(item)
    return out


def plan_eval_keys(plan: Any) -> dict[str, set[str]]:
    """{signature: the grid's eval-point keys} from plan.json (runs shared by several grids
    hold every grid's evals; a grid's report shows its own)."""
    items = plan.get("points", []) if isinstance(plan, dict) else []
    out = {}
    for item in items if isinstance(items, list) else []:
        evals = item.get("evals") if isinstance(item, dict) else None
        if isinstance(evals, list) and isinstance(item.get("signature"), str):
            out[item["signature"]] = {e["key"] for e in evals if isinstance(e, dict) and "key" in e}
    return out


def _finish(df: pd.DataFrame, curves: pd.DataFrame, grid: str | None) -> pd.DataFrame:
    """Typed columns, training stats, derived labels, model size, and a stable column order."""
    if df.empty:
        return pd.DataFrame(columns=list(LEAD_COLUMNS))
    for col in (*LEAD_COLUMNS, *CONFIG_COLUMNS):  # bench-only or damaged roots lack some
        if col not in df:
            df[col] = np.nan
    if grid is not None:
        df["grid"] = df["grid"].where(df["grid"].notna(), grid)
    for col in NUMERIC_COLUMNS:
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    df = _merge_train_stats(df, curves)
    df["tokens"] = (df["resolution"] // df["patch_size"]) ** 2
    df["s_train"] = s_train_labels(df)
    df["ar_weighting"] = ar_weighting_labels(df)
    df = add_model_size(df)
    cfg_factor = np.where(df["cfg"].fillna(1.0) > 1.0, 2.0, 1.0)  # CFG doubles every evaluation
    df["nfe"] = df["s_eval"] * df["sampler_steps"] * cfg_factor
    # Tokens each evaluation denoises: one of S_eval groups, L / S_eval tokens on average.
    df["sample_cost"] = df["nfe"] * df["tokens"] / df["s_eval"]
    df["train_key"] = key_text(df, TRAIN_KEY_COLUMNS)
    df["eval_key"] = key_text(df, EVAL_KEY_COLUMNS)
    df["setting"] = setting_labels(df)
    df["problems"] = df["problems"].fillna("").astype(str)
    order = [*LEAD_COLUMNS, *sorted(c for c in df if c not in LEAD_COLUMNS)]
    return df[order].reset_index(drop=True)


def _merge_train_stats(df: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """Add each run's throughput, memory, wall time and final loss from metrics.jsonl."""
    stats = train_stats(curves)
    if stats.empty:
        return df
    merged = df[["signature"]].merge(stats, how="left", left_on="signature", right_index=True)
    for col in stats.columns:
        # bench rows carry their own throughput and match no run: keep what a row already has
        own = df[col] if col in df else pd.Series(np.nan, index=df.index)
        df[col] = own.where(own.notna() | (df["kind"] != "train"), merged[col].to_numpy())
    return df


def train_stats(curves: pd.DataFrame) -> pd.DataFrame:
    """Per run: median throughput and MFU (first log step = warm-up excluded), peak memory,
    wall hours summed over attempts, final loss and last step."""
    cols = ["train_img_per_s", "train_tokens_per_s", "mfu", "peak_mem_mb", "wall_hours"]
    if curves.empty or "step" not in curves:
        return pd.DataFrame(columns=[*cols, "final_loss", "last_step"])
    c = curves.sort_values(["signature", "_order"])
    g = c.groupby("signature", sort=False)
    steady = c[g.cumcount() > 0]
    steady = pd.concat([steady, c[g["step"].transform("size") == 1]])  # one record: keep it
    sg = steady.groupby("signature")
    out = pd.DataFrame(
        {
            "train_img_per_s": sg["img_per_s"].median() if "img_per_s" in c else np.nan,
            "train_tokens_per_s": sg["tokens_per_s"].median() if "tokens_per_s" in c else np.nan,
            "mfu": sg["mfu"].median() if "mfu" in c else np.nan,
        }
    )
    out["peak_mem_mb"] = g["peak_mem_mb"].max() if "peak_mem_mb" in c else np.nan
    if "wall_s" in c:
        # wall_s restarts at 0 in a resumed attempt: sum the longest wall time of each attempt
        restart = (c["wall_s"] < c["wall_s"].shift()) & (c["signature"] == c["signature"].shift())
        per_attempt = c.groupby(["signature", restart.cumsum()])["wall_s"].max()
        out["wall_hours"] = per_attempt.groupby(level=0).sum() / 3600.0
    else:
        out["wall_hours"] = np.nan
    last = c.groupby("signature").last()
    out["final_loss"] = last["loss"] if "loss" in last else np.nan
    out["last_step"] = g["step"].max()
    return out


def _curve_frame(records: list[dict]) -> pd.DataFrame:
    """Training-curve records -> a numeric frame; `_order` keeps file order within a run."""
    if not records:
        return pd.DataFrame(columns=["signature", "step", "loss", "_order"])
    df = pd.DataFrame(records)
    df["_order"] = np.arange(len(df))
    for col in df.columns.drop(["signature"]):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    return df[df["step"].notna()] if "step" in df else df.iloc[:0]


def _warn_incomplete(df: pd.DataFrame) -> None:
    """One warning counting runs that are not completed or have corrupt files."""
    if df.empty:
        return
    per_run = df.groupby(["kind", "signature"], sort=False).agg(
        state=("state", "first"), problems=("problems", "first")
    )
    bad = per_run[(per_run["state"] != "completed") | (per_run["problems"] != "")]
    if bad.empty:
        return
    counts = bad["state"].value_counts()
    corrupt = int((bad["problems"] != "").sum())
    parts = [f"{n} {s}" for s, n in counts.items()]
    if corrupt:
        parts.append(f"{corrupt} with unreadable files")
    warnings.warn(
        f"{len(bad)} of {len(per_run)} runs are incomplete or damaged ({', '.join(parts)}); "
        "they are kept as rows with their state",
        ResultsWarning,
        stacklevel=3,
    )
