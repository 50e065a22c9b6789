"""Run folders and bench files -> one tidy pandas table (one row per run x eval settings x ckpt).

Inputs (docs/architecture.md): `<root>/runs/<signature>/` with config.yaml, point.json,
status.json, metrics.jsonl and eval/<hash>.json; `<root>/grids/<name>/plan.json` for a grid's
points. Every file may be missing, half-written by a job that is still running, or corrupt: the
loader never raises on them, it keeps the run as a row with its `state` and a `problems` note and
emits one `ResultsWarning` that counts such runs. A run folder is read by core.runfolder (the
reader `cfh status` uses too) and turned into rows by reports.rows; the column names are in
reports.columns, derived labels in reports.labels, model sizes in reports.sizes.

Bench rows (issue 6) come from JSON files written by `cfh bench` (harness/bench/command.py), at
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
from reports.rows import BOOTSTRAP, bench_grid, point_axes, read_bench, read_run
from reports.sizes import add_model_size, add_sample_flops

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
    # (signature, eval_file) -> the eval record's bootstrap replicates (reports.decide pairs them)
    replicates: dict[tuple[str, str], dict] = field(default_factory=dict)


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
    replicates: dict[tuple[str, str], dict] = {}
    for run_dir, axes, keys in run_dirs:
        run_rows, run_curve = read_run(run_dir, axes, keys)
        for r in run_rows:
            boot = r.pop(BOOTSTRAP, None)
            if boot is not None:
                replicates[(r["signature"], r["eval_file"])] = boot
        rows += run_rows
        curves += run_curve
        bench_files += sorted(list_files(run_dir / "bench", "*.json"))
    for path in bench_files:
        rows += read_bench(path)
    curve_frame = _curve_frame(curves)
    table = _finish(pd.DataFrame(rows), curve_frame, grid)
    _warn_incomplete(table)
    return Results(table, curve_frame, grid, plan, root, replicates)


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
    df = add_sample_flops(df)  # the cost that does not move with the machine's load
    df["train_key"] = key_text(df, TRAIN_KEY_COLUMNS)
    df["eval_key"] = key_text(df, EVAL_KEY_COLUMNS)
    df["setting"] = setting_labels(df)
    df["problems"] = df["problems"].fillna("").astype(str)
    order = [*LEAD_COLUMNS, *sorted(c for c in df if c not in LEAD_COLUMNS)]
    return df[order].reset_index(drop=True)


def _merge_train_stats(df: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """Add each run's throughput, memory, wall time and final loss from metrics.jsonl; a row of
    a checkpoint's evaluation gets the wall time up to that checkpoint (wall_curves)."""
    train = df["kind"] == "train"
    batch = df[train].groupby("signature")["batch_size"].first() if "batch_size" in df else None
    stats = train_stats(curves, batch)
    if stats.empty:
        return df
    merged = df[["signature"]].merge(stats, how="left", left_on="signature", right_index=True)
    for col in stats.columns:
        # bench rows carry their own throughput and match no run: keep what a row already has
        own = df[col] if col in df else pd.Series(np.nan, index=df.index)
        df[col] = own.where(own.notna() | (df["kind"] != "train"), merged[col].to_numpy())
    if "wall_s" in curves and "ckpt_step" in df:
        walls = wall_curves(curves, batch)
        at = train & df["ckpt_step"].notna() & df["signature"].isin(walls)
        df.loc[at, "wall_hours"] = [
            _wall_at(walls[sig], step) / 3600.0
            for sig, step in zip(df.loc[at, "signature"], df.loc[at, "ckpt_step"], strict=True)
        ]
    return df


def train_stats(curves: pd.DataFrame, batch: pd.Series | None = None) -> pd.DataFrame:
    """Per run: median throughput, MFU and share of time waiting for data (first log step =
    warm-up excluded; and in gradient all-reduces, comm_frac, for runs of several ranks that
    logged it), peak memory, wall hours of the logged steps (wall_curves), final loss
    and last step."""
    cols = ["train_img_per_s", "train_tokens_per_s", "mfu", "data_wait_frac", "peak_mem_mb"]
    cols.append("wall_hours")
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
            # rows before cfh logged it (issue 19) have none: NaN
            "data_wait_frac": sg["data_wait_frac"].median() if "data_wait_frac" in c else np.nan,
        }
    )
    if "comm_frac" in c:  # several ranks (gloo): the share of time in gradient all-reduces
        out["comm_frac"] = sg["comm_frac"].median()
    out["peak_mem_mb"] = g["peak_mem_mb"].max() if "peak_mem_mb" in c else np.nan
    if "wall_s" in c:
        walls = wall_curves(c, batch)
        out["wall_hours"] = pd.Series({s: w[1][-1] / 3600.0 for s, w in walls.items()})
    else:
        out["wall_hours"] = np.nan
    last = c.groupby("signature").last()
    out["final_loss"] = last["loss"] if "loss" in last else np.nan
    out["last_step"] = g["step"].max()
    return out


def wall_curves(
    curves: pd.DataFrame, batch: pd.Series | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{signature: (steps, training wall seconds up to each step)}, from step 0 at 0 s.

    What counts is the time of the attempts that produced the logged steps. metrics.jsonl
    holds each step once: an attempt that resumes a stopped one (cancelled, failed, interrupted)
    first cuts the rows logged after the checkpoint it resumes from (core.io.cut_jsonl), so the
    time a stopped attempt spent on steps it did not save is not counted. Each attempt's clock
    (wall_s) starts at 0; an attempt's time is the wall_s of its last kept row, and the attempts
    before it are added to its rows. A row starts a new attempt where wall_s falls, or rose by
    less than half of what its window's steps took at its own img/s (known with the run's
    batch). status.json's `attempts` counts job starts (eval-only and requeued ones too), so the
    attempts are read from the rows. A row of an evaluation counts the time up to its
    checkpoint step (a later attempt, e.g. a cancelled --extend, did not produce it).
    """
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    c = curves[curves["wall_s"].notna()].sort_values(["signature", "_order"])
    for sig, run in c.groupby("signature", sort=False):
        step, wall = run["step"].to_numpy(float), run["wall_s"].to_numpy(float)
        rose = np.diff(wall, prepend=0.0)
        restart = rose < 0
        if batch is not None and "img_per_s" in run and np.isfinite(batch.get(sig, np.nan)):
            took = np.diff(step, prepend=0.0) * batch[sig] / run["img_per_s"].to_numpy(float)
            restart |= rose < 0.5 * np.nan_to_num(took, nan=0.0)
        restart[0] = False
        attempt = np.cumsum(restart)
        ends = pd.Series(wall).groupby(attempt).max().to_numpy()  # each attempt's time
        offset = np.concatenate([[0.0], np.cumsum(ends)[:-1]])[attempt]
        out[str(sig)] = (np.concatenate([[0.0], step]), np.concatenate([[0.0], offset + wall]))
    return out


def _wall_at(curve: tuple[np.ndarray, np.ndarray], step: float) -> float:
    """Wall seconds up to `step` (linear between logged steps; the last one past the end)."""
    steps, walls = curve
    return float(np.interp(step, steps, walls))


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
