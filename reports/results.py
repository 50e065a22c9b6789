"""Run folders and bench files -> one tidy pandas table (one row per run x eval settings x ckpt).

Inputs (docs/architecture.md): `<root>/runs/<signature>/` with config.yaml, point.json,
status.json, metrics.jsonl and eval/<hash>.json; `<root>/grids/<name>/plan.json` for a grid's
points. Every file may be missing, half-written by a job that is still running, or corrupt: the
loader never raises on them, it keeps the run as a row with its `state` and a `problems` note and
emits one `ResultsWarning` that counts such runs.

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

import functools
import hashlib
import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from core.errors import UserError
from core.io import atomic_write_json, load_status
from core.records import eval_record_problem, metrics_row_problem

# Results column <- dotted key of the resolved run config.
CONFIG_COLUMNS = {
    "model": "model.name",
    "dataset": "data.name",
    "seed": "seed",
    "ar_mode": "train.ar.mode",
    "ar_steps": "train.ar.steps",
    "ar_decay": "train.ar.decay",
    "train_order": "train.order",
    "ar_weight_max": "train.loss.ar_weight.max",
    "ar_weight_min": "train.loss.ar_weight.min",
    "ar_weight_schedule": "train.loss.ar_weight.schedule",
    "noise_weighting": "train.loss.noise_weighting",
    "train_steps": "train.steps",
    "batch_size": "train.batch_size",
    "attention": "model.attention",
    "num_cond_tokens": "model.num_cond_tokens",
    "pos_embed": "model.pos_embed",
    "resolution": "data.resolution",
    "channels": "data.channels",
    "patch_size": "data.patch_size",
    "num_classes": "data.num_classes",
    "caption_prob": "train.joint.caption_prob",
    "text_weight": "train.joint.text_weight",
}
# Results column <- key of an eval json's "settings".
EVAL_COLUMNS = {
    "s_eval": "s_eval",
    "eval_order": "order",
    "cfg": "cfg",
    "cfg_interval": "cfg_interval",
    "sampler_steps": "steps",
    "sampler": "sampler",
    "num_samples": "num_samples",
    "ckpt_step": "ckpt_step",
    "extractor": "extractor",
    "extractor_weights_hash": "extractor_weights_hash",
    "task": "task",
    "split": "split",
}
METRIC_COLUMNS = (
    "fid", "fid_bootstrap_std", "kid", "kid_std", "precision", "recall", "class_acc",
    "sample_img_per_s", "cider", "bleu4", "rouge_l", "caption_acc",
)  # fmt: skip
# What identifies a training setting (seed excluded: seeds are what the tables average over).
TRAIN_KEY_COLUMNS = (
    "model",
    "dataset",
    "s_train",
    "train_order",
    "ar_weighting",
    "noise_weighting",
    "train_steps",
    "batch_size",
)
# What identifies an evaluation setting; ckpt_step included so checkpoints never mix.
EVAL_KEY_COLUMNS = (
    "s_eval",
    "eval_order",
    "cfg",
    "cfg_interval",
    "sampler",
    "sampler_steps",
    "num_samples",
    "ckpt_step",
    "extractor",
    "task",
)
STATES = ("completed", "running", "requeued", "pending", "failed", "cancelled", "missing")
LEAD_COLUMNS = (
    "kind",
    "grid",
    "signature",
    "state",
    "phase",
    "model",
    "params",
    "flops",
    "dataset",
    "tokens",
    "s_train",
    "ar_mode",
    "ar_steps",
    "ar_decay",
    "train_order",
    "ar_weighting",
    "ar_weight_max",
    "ar_weight_min",
    "ar_weight_schedule",
    "noise_weighting",
    "seed",
    *EVAL_COLUMNS,
    *METRIC_COLUMNS,
    "nfe",
    "sample_cost",
    "train_img_per_s",
    "train_tokens_per_s",
    "mfu",
    "peak_mem_mb",
    "wall_hours",
    "final_loss",
    "last_step",
    "train_steps",
    "setting",
    "train_key",
    "eval_key",
    "problems",
    "error",
    "run_dir",
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~10x faster


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


def check_name(name: str, what: str = "grid") -> str:
    """A grid name safe to use as a folder name (no path traversal), or UserError."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise UserError(
            f"{what} name {name!r} is not allowed: use letters, digits, '_', '-', '.' "
            "(starting with a letter or digit)"
        )
    return name


def known_grids(root: str | os.PathLike) -> list[str]:
    """Names of the grids under `<root>/grids/`."""
    return sorted(p.name for p in (Path(root) / "grids").glob("*") if p.is_dir())


def scan(root: str | os.PathLike, grid: str | None = None) -> Results:
    """Read every run folder (and bench file) of `grid`, or of the whole root when grid is None."""
    root = Path(root)
    plan: dict = {}
    if grid is not None:
        check_name(grid)
        grid_dir = root / "grids" / grid
        if not grid_dir.is_dir():
            known = ", ".join(known_grids(root)) or "none"
            raise UserError(f"no grid {grid!r} under {root / 'grids'}; known grids: {known}")
        plan = _read_json(grid_dir / "plan.json")[0] or {}
        points = plan_points(plan)
        eval_keys = plan_eval_keys(plan)
        run_dirs = [(root / "runs" / sig, axes, eval_keys.get(sig)) for sig, axes in points.items()]
        bench_files = [p for p in _glob(root / "bench", "*.json") if _bench_grid(p) == grid]
    else:
        run_dirs = [(p, {}, None) for p in sorted(_glob(root / "runs", "*")) if p.is_dir()]
        bench_files = sorted(_glob(root / "bench", "*.json"))
    rows: list[dict] = []
    curves: list[dict] = []
    for run_dir, axes, keys in run_dirs:
        run_rows, run_curve = read_run(run_dir, axes, keys)
        rows += run_rows
        curves += run_curve
        bench_files += sorted(_glob(run_dir / "bench", "*.json"))
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
        if not isinstance(sig, str) or not _NAME_RE.match(sig):
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


def point_axes(point: dict) -> dict:
    """The train-axis values ({dotted key: value}) of a plan entry or point.json."""
    for key in ("axes", "values", "train_axes", "train", "overrides"):
        value = point.get(key)
        if isinstance(value, dict):
            return _flatten(value)
        if isinstance(value, list) and all(isinstance(v, str) and "=" in v for v in value):
            return dict(v.split("=", 1) for v in value)
    skip = {"signature", "sig", "grid", "eval", "eval_axes", "eval_points", "run_dir", "created"}
    return {k: v for k, v in _flatten(point).items() if k.split(".")[0] not in skip}


def read_run(
    run_dir: Path, planned_axes: dict | None = None, eval_keys: set[str] | None = None
) -> tuple[list[dict], list[dict]]:
    """One run folder -> (result rows, training-curve records); never raises on bad files.

    With `eval_keys` (a grid's eval points), only the eval files that status.json's "evals"
    map those keys to are read; without that map every eval file is.
    """
    sig = run_dir.name
    base: dict[str, Any] = {"kind": "train", "signature": sig, "run_dir": str(run_dir)}
    problems: list[str] = []
    if not run_dir.is_dir():
        axes = {**(planned_axes or {})}
        return [{**base, **_axis_columns(axes, {}), "state": "missing", "problems": ""}], []
    status, bad = load_status(run_dir)
    if bad:
        problems.append(f"damaged: status.json: {bad}")
    cfg, bad = _read_yaml(run_dir / "config.yaml")
    not_started = not status and bad.startswith("missing")  # submitted, no job wrote yet
    if bad and not not_started:
        problems.append(f"damaged: config.yaml: {bad}")
    point, bad = _read_json(run_dir / "point.json")
    if bad and "missing" not in bad:  # point.json only exists for grid points
        problems.append(f"damaged: point.json: {bad}")
    cfg = cfg if isinstance(cfg, dict) else {}
    axes = {**(planned_axes or {}), **(point_axes(point) if isinstance(point, dict) else {})}
    state = "damaged" if _status_damaged(problems) else status.get("state")
    base.update(
        state=state
        if isinstance(state, str) and state
        else "pending"
        if not_started
        else "unknown",
        phase=status.get("phase"),
        progress_step=status.get("step"),
        total_steps=status.get("total_steps"),
        attempts=status.get("attempts"),
        job_id=status.get("job_id"),
        error=_first_line(status.get("error")),
        log=status.get("log"),
        **_axis_columns(axes, cfg),
    )
    curve = [
        {"signature": sig, **r}
        for r in _read_jsonl(run_dir / "metrics.jsonl", problems)
        if isinstance(r, dict)
    ]
    rows = []
    for path in _eval_files(run_dir, status, eval_keys):
        record, bad = _read_json(path)
        bad = bad or eval_record_problem(record)
        row = None if bad else _eval_columns(record)
        if bad or row is None:
            problems.append(f"damaged: {path.parent.name}/{path.name}: {bad or 'no metrics'}")
            continue
        rows.append({**base, **row, "eval_file": path.name})
    note = "; ".join(problems)
    return [{**r, "problems": note} for r in rows or [base]], curve


def _eval_files(run_dir: Path, status: dict, eval_keys: set[str] | None) -> list[Path]:
    """The run's eval jsons, restricted to a grid's eval points when status.json maps them."""
    files = sorted(_glob(run_dir / "eval", "*.json"))
    done = status.get("evals")
    if eval_keys is None or not isinstance(done, dict) or not done:
        return files
    wanted = {
        os.path.normpath(str(rec.get("file")))
        for key, rec in done.items()
        if key in eval_keys and isinstance(rec, dict) and rec.get("file")
    }
    return [p for p in files if os.path.join("eval", p.name) in wanted]


def read_bench(path: Path) -> list[dict]:
    """A bench JSON file -> result rows with kind="bench" (one row noting corruption if bad)."""
    data, bad = _read_json(path)
    base = {"kind": "bench", "signature": path.stem, "run_dir": str(path), "state": "completed"}
    rows = data.get("rows") if isinstance(data, dict) else None
    if bad or not isinstance(rows, list):
        return [{**base, "state": "corrupt", "problems": bad or f"no rows list in {path.name}"}]
    machine = data.get("machine") if isinstance(data.get("machine"), dict) else {}
    extra = {f"machine_{k}": v for k, v in machine.items() if _scalar(v)}
    extra.update(created=data.get("created"), grid=data.get("grid"))
    out = [
        {
            **base,
            **extra,
            **{k: v for k, v in r.items() if _scalar(v)},
            "state": "failed" if r.get("error") else "completed",  # a measurement that raised
            "problems": "",
        }
        for r in rows
        if isinstance(r, dict)
    ]
    return out or [{**base, "state": "corrupt", "problems": f"no usable rows in {path.name}"}]


def _axis_columns(axes: dict, cfg: dict) -> dict:
    """Config-derived axis columns, plus any other grid axis under its dotted key."""
    flat = _flatten(cfg)
    out = {col: flat.get(key) for col, key in CONFIG_COLUMNS.items()}
    by_key = {key: col for col, key in CONFIG_COLUMNS.items()}
    by_key.update(model="model", data="dataset")  # config-group axes (`model: [T, S]`)
    for key, value in axes.items():
        if key.split(".")[0] in ("sample", "eval", "cluster"):
            continue  # eval axes come from the eval json's settings; resources are no setting
        col = by_key.get(key, key)
        if out.get(col) is None:
            out[col] = flat.get(key, value)  # the resolved config wins over the raw axis text
    return out


def _eval_columns(record: Any) -> dict | None:
    """An eval json -> its setting and metric columns (None when it has neither)."""
    if not isinstance(record, dict):
        return None
    settings, metrics = record.get("settings"), record.get("metrics")
    if not isinstance(settings, dict) or not isinstance(metrics, dict):
        return None
    row = {col: settings.get(key) for col, key in EVAL_COLUMNS.items()}
    if isinstance(row["cfg_interval"], list | tuple):
        row["cfg_interval"] = ",".join(f"{v:g}" for v in row["cfg_interval"])
    if isinstance(record.get("ckpt_step"), int):  # the resolved step, even if settings say latest
        row["ckpt_step"] = record["ckpt_step"]
    row.update({m: _number(metrics.get(m)) for m in METRIC_COLUMNS})
    row["created"] = record.get("created")
    return row


def _finish(df: pd.DataFrame, curves: pd.DataFrame, grid: str | None) -> pd.DataFrame:
    """Typed columns, training stats, derived labels, model size, and a stable column order."""
    if df.empty:
        return pd.DataFrame(columns=list(LEAD_COLUMNS))
    for col in (*LEAD_COLUMNS, *CONFIG_COLUMNS):  # bench-only or damaged roots lack some
        if col not in df:
            df[col] = np.nan
    if grid is not None:
        df["grid"] = df["grid"].where(df["grid"].notna(), grid)
    numeric = [
        *METRIC_COLUMNS,
        "s_eval",
        "cfg",
        "sampler_steps",
        "num_samples",
        "ckpt_step",
        "seed",
        "ar_steps",
        "ar_decay",
        "ar_weight_max",
        "ar_weight_min",
        "train_steps",
        "batch_size",
        "resolution",
        "patch_size",
        "num_cond_tokens",
        "params",
        "flops",
        "train_img_per_s",
        "train_tokens_per_s",
        "mfu",
        "peak_mem_mb",
    ]
    for col in numeric:
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    df = _merge_train_stats(df, curves)
    df["tokens"] = (df["resolution"] // df["patch_size"]) ** 2
    df["s_train"] = _s_train_labels(df)
    df["ar_weighting"] = _ar_weighting_labels(df)
    df = _add_model_size(df)
    cfg_factor = np.where(df["cfg"].fillna(1.0) > 1.0, 2.0, 1.0)  # CFG doubles every evaluation
    df["nfe"] = df["s_eval"] * df["sampler_steps"] * cfg_factor
    # Tokens each evaluation denoises: one of S_eval groups, L / S_eval tokens on average.
    df["sample_cost"] = df["nfe"] * df["tokens"] / df["s_eval"]
    df["train_key"] = _key(df, TRAIN_KEY_COLUMNS)
    df["eval_key"] = _key(df, EVAL_KEY_COLUMNS)
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


def _s_train_labels(df: pd.DataFrame) -> pd.Series:
    """S_train as the paper writes it: fixed step counts, '64 (L)', 'uniform', or 'decay 0.9'."""
    mode, steps, decay, tokens = df["ar_mode"], df["ar_steps"], df["ar_decay"], df["tokens"]
    fixed = _text(steps)
    fixed = fixed.where(steps != tokens, fixed + " (L)")
    label = pd.Series(
        np.select(
            [mode == "fixed", mode == "uniform", mode == "decay"],
            [fixed, "uniform", "decay " + _text(decay)],
            default=None,
        ),
        index=df.index,
        dtype=object,
    )
    rank = np.select(
        [mode == "fixed", mode == "uniform", mode == "decay"],
        [steps.fillna(0), 1e9, 2e9 - decay.fillna(0)],  # fixed by S, then uniform, decay 1 -> 0
        default=3e9,
    )
    cats = pd.Series(label.values, index=rank).dropna()
    cats = cats[~cats.duplicated()].sort_index().tolist()
    return pd.Series(pd.Categorical(label, categories=cats, ordered=True), index=df.index)


def _ar_weighting_labels(df: pd.DataFrame) -> pd.Series:
    """AR-axis loss weighting as 'max->min', with the schedule when it is not linear."""
    hi, lo, sched = df["ar_weight_max"], df["ar_weight_min"], df["ar_weight_schedule"]
    label = _text(hi) + "->" + _text(lo)
    label = label.where(sched.isin(["linear"]) | sched.isna(), label + " " + _text(sched))
    return label.where(hi.notna(), None)


def _text(values: pd.Series) -> pd.Series:
    """Values as compact text, object dtype even when every value is missing ('-')."""
    return values.astype(object).map(_fmt).astype(object)


def _key(df: pd.DataFrame, columns: tuple[str, ...]) -> pd.Series:
    """A canonical 'col=value ...' string per row: stable across grids, for merges and CSVs."""
    parts = [f"{c}=" + _text(df[c]) for c in columns if c in df]
    return functools.reduce(lambda a, b: a + " " + b, parts)


def setting_labels(df: pd.DataFrame) -> pd.Series:
    """A short legend label per row: the train-key columns that vary in `df` (seed excluded)."""
    train = df[df["kind"] == "train"]
    varying = [c for c in TRAIN_KEY_COLUMNS if c in df and train[c].nunique(dropna=False) > 1]
    extra = [c for c in df.columns if "." in c and train[c].nunique(dropna=False) > 1]
    names = {
        "s_train": "S_train",
        "train_order": "order",
        "ar_weighting": "AR weight",
        "noise_weighting": "noise",
        "train_steps": "steps",
        "batch_size": "batch",
    }
    cols = varying + extra or ["s_train"]
    parts = [
        (names.get(c, c) + "=" if len(cols) > 1 or c != "s_train" else "S_train=") + _text(df[c])
        for c in cols
    ]
    return functools.reduce(lambda a, b: a + ", " + b, parts)


def _fmt(v: Any) -> str:
    """Compact text for a key value (floats without trailing zeros, None/NaN as '-')."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


# ---- model size: params and FLOPs from model.network, cached per (model, data) geometry ----

_GEOMETRY = ("model", "resolution", "channels", "patch_size", "num_classes", "num_cond_tokens")


def _add_model_size(df: pd.DataFrame) -> pd.DataFrame:
    """Fill params and train FLOPs per image (NaN when model.network cannot say)."""
    train = df["kind"] == "train"
    if not train.any() or df.loc[train, "model"].isna().all():
        return df
    cols = [*_GEOMETRY, "ar_mode", "ar_steps", "ar_decay", "tokens"]
    combos = df.loc[train, cols].drop_duplicates().reset_index(drop=True)
    sizes = [
        model_size(*geo) if pd.notna(list(geo)).all() else None
        for geo in combos[list(_GEOMETRY)].itertuples(index=False, name=None)
    ]
    combos["params_"] = [s["params"] if s else np.nan for s in sizes]
    inv_s = [_expected_inverse_s(*r) for r in combos[cols[-4:]].itertuples(index=False, name=None)]
    combos["flops_"] = [_flops(s, n) if s else np.nan for s, n in zip(sizes, inv_s, strict=True)]
    found = df.loc[train, cols].merge(combos, how="left", on=cols)  # merge matches NaN keys too
    found.index = df.index[train]
    for col in ("params", "flops"):
        df.loc[train, col] = df.loc[train, col].fillna(found[f"{col}_"])
    return df


def _expected_inverse_s(mode: Any, steps: Any, decay: Any, tokens: Any) -> float:
    """E[1/S] of a run's AR-step distribution (the last group has L/S tokens on average)."""
    if not np.isfinite(tokens) or tokens < 1:
        return np.nan
    k = np.arange(1, int(tokens) + 1, dtype=float)
    if mode == "fixed":
        return 1.0 / steps if steps and np.isfinite(steps) else np.nan
    if mode == "uniform" or (mode == "decay" and decay == 1.0):
        return float(np.mean(1.0 / k))
    if mode == "decay" and np.isfinite(decay) and 0 < decay < 1:
        w = decay ** (k - 1)
        return float(np.sum(w / k) / np.sum(w))
    return np.nan


def _flops(info: dict, inv_s: float) -> float:
    """Train FLOPs per image at the expected sequence length C + 2L - L E[1/S]."""
    if not np.isfinite(inv_s) or info.get("flops_fn") is None:
        return np.nan
    c, tokens = info["num_cond_tokens"], info["tokens"]
    return float(info["flops_fn"](c + 2 * tokens - tokens * inv_s))


@functools.cache
def model_size(
    model: str, resolution: float, channels: float, patch: float, classes: float, cond: float
) -> dict | None:
    """{params, tokens, num_cond_tokens, flops_fn} of one model on one data geometry, or None.

    Builds the network on the meta device (no memory, no weights) through model.network; a
    small on-disk cache keyed by network.py's size and mtime spares later reports the torch import.
    """
    geometry = dict(
        input_size=int(resolution),
        in_channels=int(channels),
        patch_size=int(patch),
        num_classes=int(classes),
        num_cond_tokens=int(cond),
    )
    cache_key = json.dumps([model, geometry, _network_stamp()])
    cached = _size_cache().get(cache_key)
    if cached is not None:
        return _with_flops_fn(cached)
    try:
        import torch

        from model.method.network import build_model, count_params
    except ImportError:
        return None
    try:
        with torch.device("meta"):
            net = build_model(str(model), **geometry)
        cfg = net.cfg
    except Exception:  # an unknown size or a network still being written: NaN, not a crash
        return None
    entry = {"params": count_params(net), "model_cfg": _cfg_dict(cfg)}
    _size_cache()[cache_key] = entry
    _save_size_cache()
    return _with_flops_fn(entry)


def _cfg_dict(cfg: Any) -> dict:
    """A dataclass ModelConfig as a plain dict for the JSON cache."""
    import dataclasses

    return dataclasses.asdict(cfg)


def _with_flops_fn(entry: dict) -> dict:
    """Attach a FLOPs function of the mean sequence length (imports model.network lazily)."""
    mc = entry["model_cfg"]
    grid = mc["input_size"] // mc["patch_size"]

    def flops_fn(seq_len: float) -> float:
        try:
            from model.method.network import ModelConfig, train_flops_per_image

            return float(train_flops_per_image(ModelConfig(**mc), seq_len))
        except Exception:
            return np.nan

    return {
        "params": entry["params"],
        "tokens": grid * grid,
        "num_cond_tokens": mc["num_cond_tokens"],
        "flops_fn": functools.cache(flops_fn),
    }


_SIZE_CACHE_PATH: Path | None = None


def set_size_cache(path: str | os.PathLike | None) -> None:
    """Where the model-size cache lives (None: in memory only)."""
    global _SIZE_CACHE_PATH
    _SIZE_CACHE_PATH = Path(path) if path is not None else None
    _size_cache.cache_clear()


@functools.cache
def _size_cache() -> dict:
    """The on-disk model-size cache, read once per process."""
    if _SIZE_CACHE_PATH is None:
        return {}
    data, _ = _read_json(_SIZE_CACHE_PATH)
    return data if isinstance(data, dict) else {}


def _save_size_cache() -> None:
    """Write the model-size cache (atomically; concurrent reports each write a whole file)."""
    if _SIZE_CACHE_PATH is not None:
        try:
            atomic_write_json(_SIZE_CACHE_PATH, _size_cache())
        except OSError:
            pass  # a read-only root only costs the next report an import


@functools.cache
def _network_stamp() -> str:
    """Size and mtime of model/network.py: a changed network invalidates cached sizes."""
    try:
        import model

        p = Path(model.__file__).parent / "network.py"
        st = p.stat()
        return hashlib.sha1(f"{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    except (ImportError, OSError, TypeError):
        return "none"


# ---- tolerant readers ----


def _read_json(path: Path) -> tuple[Any, str]:
    """(parsed JSON, '') or (None, a short problem note); never raises."""
    try:
        return json.loads(path.read_text(encoding="utf-8")), ""
    except FileNotFoundError:
        return None, f"missing {path.name}"
    except (OSError, ValueError) as e:
        return None, f"not JSON ({type(e).__name__})"


def _status_damaged(problems: list[str]) -> bool:
    """Whether a run's problem notes say its status.json is damaged."""
    return any(p.startswith("damaged: status.json") for p in problems)


def _read_yaml(path: Path) -> tuple[Any, str]:
    """(parsed YAML, '') or (None, a short problem note); never raises."""
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER), ""
    except FileNotFoundError:
        return None, f"missing {path.name}"
    except (OSError, ValueError, yaml.YAMLError) as e:
        return None, f"not YAML ({type(e).__name__})"


def _read_jsonl(path: Path, problems: list[str]) -> list[Any]:
    """Metrics lines, skipping torn or malformed ones (noted once in `problems`, with the first
    reason)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    out, bad = [], []
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except ValueError:
            bad.append(f"line {n} is not JSON")
            continue
        problem = metrics_row_problem(row)
        if problem:
            bad.append(f"line {n}: {problem}")
        else:
            out.append(row)
    if bad:
        problems.append(f"damaged: {path.name}: {len(bad)} bad line(s), first {bad[0]}")
    return out


def _glob(folder: Path, pattern: str) -> list[Path]:
    """Paths in `folder` matching `pattern`, skipping hidden temp files; [] if no folder."""
    try:
        return [p for p in folder.glob(pattern) if not p.name.startswith(".")]
    except OSError:
        return []


def _bench_grid(path: Path) -> Any:
    """The grid a root-level bench file is tagged with (None when untagged or unreadable)."""
    data, _ = _read_json(path)
    return data.get("grid") if isinstance(data, dict) else None


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {dotted key: leaf value}."""
    if not isinstance(d, dict):
        return {prefix: d} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(_flatten(v, key) if isinstance(v, dict) else {key: v})
    return out


def _number(v: Any) -> float:
    """A metric value as float (NaN for missing or non-numeric)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return np.nan


def _scalar(v: Any) -> bool:
    """Whether a value fits in one table cell."""
    return v is None or isinstance(v, str | int | float | bool)


def _first_line(text: Any) -> Any:
    """The first line of an error message (status.json keeps the whole traceback text)."""
    return text.strip().splitlines()[0] if isinstance(text, str) and text.strip() else None


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
