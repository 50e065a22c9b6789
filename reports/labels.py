"""Derived label columns of the results table: S_train as the paper writes it, AR weighting,
the canonical train/eval keys, and a short legend label per training setting."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import pandas as pd

from reports.columns import TRAIN_KEY_COLUMNS


def s_train_labels(df: pd.DataFrame) -> pd.Series:
    """S_train as the paper writes it: fixed step counts, '64 (L)', 'uniform', or 'decay 0.9'."""
    mode, steps, decay, tokens = df["ar_mode"], df["ar_steps"], df["ar_decay"], df["tokens"]
    fixed = as_text(steps)
    fixed = fixed.where(steps != tokens, fixed + " (L)")
    label = pd.Series(
        np.select(
            [mode == "fixed", mode == "uniform", mode == "decay"],
            [fixed, "uniform", "decay " + as_text(decay)],
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


def ar_weighting_labels(df: pd.DataFrame) -> pd.Series:
    """AR-axis loss weighting as 'max->min', with the schedule when it is not linear."""
    hi, lo, sched = df["ar_weight_max"], df["ar_weight_min"], df["ar_weight_schedule"]
    label = as_text(hi) + "->" + as_text(lo)
    label = label.where(sched.isin(["linear"]) | sched.isna(), label + " " + as_text(sched))
    return label.where(hi.notna(), None)


def as_text(values: pd.Series) -> pd.Series:
    """Values as compact text, object dtype even when every value is missing ('-')."""
    return values.astype(object).map(fmt_value).astype(object)


def key_text(df: pd.DataFrame, columns: tuple[str, ...]) -> pd.Series:
    """A canonical 'col=value ...' string per row: stable across grids, for merges and CSVs."""
    parts = [f"{c}=" + as_text(df[c]) for c in columns if c in df]
    return functools.reduce(lambda a, b: a + " " + b, parts)


def setting_labels(df: pd.DataFrame) -> pd.Series:
    """A short legend label per row: the train-key columns that vary in `df` (seed excluded);
    a column a run leaves empty (a setting it did not use, reports.rows) adds no part."""
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
    named = [names.get(c, c) if len(cols) > 1 or c != "s_train" else "S_train" for c in cols]
    parts = [  # a setting the run did not use (an empty column) adds no part
        (name + "=" + as_text(df[c])).where(df[c].notna() | (c == cols[0]), "").astype(object)
        for name, c in zip(named, cols, strict=True)
    ]
    return functools.reduce(lambda a, b: a + (", " + b).where(b != "", ""), parts)


def fmt_value(v: Any) -> str:
    """Compact text for a key value (floats without trailing zeros, None/NaN as '-')."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)
