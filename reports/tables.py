"""Paper-shaped tables (mean +- std over seeds, best value per column marked): markdown, LaTeX.

Every table averages over seeds only: any other training or evaluation setting that varies in
the data becomes an extra row or column level, so that different settings are never mixed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from reports.bench_table import table_bench
from reports.columns import EVAL_KEY_COLUMNS, TRAIN_KEY_COLUMNS
from reports.table_render import BETTER, Table, column_labels, value_text

__all__ = [  # Table and the key columns: what callers of the table makers use with them
    "EVAL_KEY_COLUMNS",
    "TRAIN_KEY_COLUMNS",
    "Table",
    "all_tables",
    "class_acc_context",
    "final_evals",
    "fid_context",
    "metric_rows",
    "pivot",
    "pooled_std",
    "seed_summary",
    "table_bench",
    "table_decay",
    "table_joint",
    "table_model_size",
    "table_order",
    "table_s_train",
    "table_weighting",
    "train_columns",
    "varying",
]

# ---- selecting and pivoting ----


def final_evals(df: pd.DataFrame) -> pd.DataFrame:
    """Train rows with a FID at the run's final checkpoint (its last train step, else its last
    evaluated checkpoint), so that tables never mix checkpoints."""
    rows = df[(df["kind"] == "train") & df["fid"].notna()]
    if rows.empty:
        return rows
    last_eval = rows.groupby("signature")["ckpt_step"].transform("max")
    final = rows["train_steps"].where(rows["train_steps"].isin(rows["ckpt_step"]), last_eval)
    return rows[(rows["ckpt_step"] == final) | rows["ckpt_step"].isna()]


def varying(df: pd.DataFrame, columns: list[str] | tuple[str, ...]) -> list[str]:
    """The columns among `columns` that take more than one value in `df`."""
    return [c for c in columns if c in df and df[c].astype(object).nunique(dropna=False) > 1]


def train_columns(df: pd.DataFrame) -> list[str]:
    """Setting columns of training: the key columns plus any extra grid axis (dotted names)."""
    return [*TRAIN_KEY_COLUMNS, *[c for c in df.columns if "." in c]]


def pivot(
    df: pd.DataFrame,
    index: list[str],
    *,
    name: str,
    title: str,
    value: str = "fid",
    columns: tuple[str, ...] = ("s_eval",),
    derived_from: tuple[str, ...] = (),
) -> Table:
    """value's mean/std/count over seeds, rows = index (+ other varying train settings),
    columns = `columns` (+ other varying eval settings)."""
    skip = {*index, *columns, *derived_from, "ckpt_step"}
    rows = index + [c for c in varying(df, train_columns(df)) if c not in skip]
    cols = list(columns) + [c for c in varying(df, EVAL_KEY_COLUMNS) if c not in skip]
    data = df.copy()
    for c in rows + cols:  # pivot_table drops NaN keys: name them instead
        if data[c].isna().any() and not isinstance(data[c].dtype, pd.CategoricalDtype):
            data[c] = data[c].astype(object).where(data[c].notna(), "-")
    grouped = data.groupby(rows + cols, observed=True)
    stats = grouped[value].agg(["mean", "std", "count"])
    wide = stats.unstack(cols)  # a pivot that keeps an all-NaN std (every cell a single seed)
    mean, std, count = wide["mean"], wide["std"], wide["count"].fillna(0)
    boot = None
    if value == "fid" and "fid_bootstrap_std" in data:
        boot = grouped["fid_bootstrap_std"].mean().unstack(cols).reindex_like(mean)
    better = dict.fromkeys(mean.columns, BETTER.get(value))
    decimals = dict.fromkeys(mean.columns, 3) if value == "class_acc" else {}
    return Table(
        name=name, title=title, mean=mean, std=std, count=count, better=better, boot=boot,
        decimals=decimals, row_best="s_eval" in cols and mean.shape[1] > 1,
    )  # fmt: skip


# the metrics of the paper tables (FID_inf and KID where the records hold them)
METRIC_TITLES = {"fid": "FID", "class_acc": "Class accuracy", "fid_inf": "FID_inf", "kid": "KID"}


def metric_rows(df: pd.DataFrame, value: str = "fid") -> pd.DataFrame:
    """final_evals with a `value`; class accuracy only where the classifier measured it."""
    data = final_evals(df)
    if value == "fid":
        return data
    if value in ("fid_inf", "kid"):
        return data[data[value].notna()] if value in data else data.iloc[0:0]
    classifier = data["extractor"].eq("classifier") if "extractor" in data else False
    return data[data[value].notna() & classifier] if value in data else data.iloc[0:0]


def _named(name: str, value: str) -> str:
    """A table's file name: the FID table's, or with the metric appended."""
    return name if value == "fid" else f"{name}_{value}"


def table_s_train(df: pd.DataFrame, value: str = "fid") -> Table | None:
    """Table 2: FID (or `value`) for each S_train (rows) at each S_eval (columns)."""
    data = metric_rows(df, value)
    if data.empty:
        return None
    table = pivot(
        data,
        ["s_train"],
        name=_named("table2_s_train", value),
        title=f"{METRIC_TITLES[value]} by S_train (rows) and S_eval (columns), as paper Table 2",
        value=value,
        derived_from=("ar_mode", "ar_steps", "ar_decay"),
    )
    if table.mean.index.nlevels == 1:  # keep rows of settings with no FID yet (failed, running)
        planned = df.loc[df["kind"] == "train", "s_train"].dropna().unique()
        rows = [r for r in table.mean.index.categories if r in set(planned)]
        for part in ("mean", "std", "count"):
            setattr(table, part, getattr(table, part).reindex(pd.CategoricalIndex(
                rows, categories=table.mean.index.categories, ordered=True, name="s_train"
            )))  # fmt: skip
    return table


def table_decay(df: pd.DataFrame, value: str = "fid") -> Table | None:
    """Table 3a: FID (or `value`) for each AR-step decay (uniform = decay 1) at each S_eval."""
    data = metric_rows(df, value)
    data = data[data["ar_mode"].isin(["decay", "uniform"])].copy()
    data["decay"] = data["ar_decay"].where(data["ar_mode"] == "decay", 1.0)
    if data["decay"].nunique() < 2:
        return None
    data = data.sort_values("decay", ascending=False)
    data["decay"] = pd.Categorical(
        data["decay"], categories=sorted(data["decay"].unique(), reverse=True), ordered=True
    )
    return pivot(
        data,
        ["decay"],
        name=_named("table3a_decay", value),
        title=f"{METRIC_TITLES[value]} by AR-step decay (1 = uniform) and S_eval, "
        "as paper Table 3a",
        value=value,
        derived_from=("s_train", "ar_mode", "ar_steps", "ar_decay"),
    )


def table_order(df: pd.DataFrame, value: str = "fid") -> Table | None:
    """Table 3b: FID (or `value`) for each training token order at each S_eval."""
    data = metric_rows(df, value)
    if data["train_order"].nunique() < 2:
        return None
    return pivot(
        data,
        ["train_order"],
        name=_named("table3b_order", value),
        title=f"{METRIC_TITLES[value]} by token order and S_eval, as paper Table 3b",
        value=value,
    )


def table_weighting(df: pd.DataFrame, value: str = "fid") -> Table | None:
    """Table 3c: FID (or `value`) per AR weighting max->min (and noise weighting) and S_eval."""
    data = metric_rows(df, value)
    index = varying(data, ["ar_weighting", "noise_weighting"])
    if not index:
        return None
    return pivot(
        data,
        index,
        name=_named("table3c_weighting", value),
        title=f"{METRIC_TITLES[value]} by loss weighting (AR max->min, noise axis) and S_eval, "
        "as paper Table 3c",
        value=value,
        derived_from=("ar_weight_max", "ar_weight_min", "ar_weight_schedule"),
    )


def table_model_size(df: pd.DataFrame) -> Table | None:
    """Model size x (params, GFLOPs/img, FID per S_eval, train img/s, sample img/s)."""
    data = final_evals(df)
    if data["model"].nunique() < 2:
        return None
    index = ["model", *[c for c in varying(data, train_columns(data)) if c != "model"]]
    evals = [
        "s_eval",
        *[c for c in varying(data, EVAL_KEY_COLUMNS) if c not in ("s_eval", "ckpt_step")],
    ]
    fid = data.pivot_table(values="fid", index=[*index, "signature"], columns=evals, observed=True)
    fid.columns = ["FID " + label for label in column_labels(fid.columns, "plain")]
    per_run = data.groupby("signature").agg(
        **{
            "params (M)": ("params", "first"),
            "train GFLOPs/img": ("flops", "first"),
            "train img/s": ("train_img_per_s", "first"),
            "sample img/s": ("sample_img_per_s", "median"),
        }
    )
    per_run[["params (M)", "train GFLOPs/img"]] /= [1e6, 1e9]
    runs = fid.join(per_run, on="signature")
    runs = runs[["params (M)", "train GFLOPs/img", *fid.columns, "train img/s", "sample img/s"]]
    stats = runs.groupby(level=index, observed=True).agg(["mean", "std", "count"])
    order = stats[("params (M)", "mean")].sort_values(kind="stable").index  # small to large
    parts = {k: stats.xs(k, axis=1, level=1).reindex(order) for k in ("mean", "std", "count")}
    better = {**dict.fromkeys(fid.columns, "min"), "train img/s": "max", "sample img/s": "max"}
    decimals = {"train GFLOPs/img": 3, "train img/s": 1, "sample img/s": 1}
    return Table(
        name="model_size",
        title="Model size: parameters, training FLOPs, FID and throughput",
        better=better,
        decimals=decimals,
        exact=("params (M)", "train GFLOPs/img"),
        remark="img/s are measured: they move with the machine's load (the fid_vs_cost plot "
        "compares sampling cost by FLOPs)",
        **parts,
    )


# The joint settings a grid may vary (train.joint.*), shown as rows when they vary.
JOINT_SETTINGS = ("caption_prob", "text_weight", "text_dropout")
JOINT_METRICS = {  # column title <- (eval task, metric)
    "t2i FID": ("t2i", "fid"),
    "t2i class_acc": ("t2i", "class_acc"),
    "CIDEr": ("caption", "cider"),
    "BLEU-4": ("caption", "bleu4"),
    "ROUGE-L": ("caption", "rouge_l"),
    "caption_acc": ("caption", "caption_acc"),
}


def table_joint(df: pd.DataFrame) -> Table | None:
    """Joint runs: text-to-image FID and class_acc beside captioning CIDEr, BLEU-4, ROUGE-L and
    caption_acc, per training setting (caption share, text weight, S_train, ...), final
    checkpoints only; text-to-image columns per guidance scale where the grid varies it."""
    if "task" not in df:
        return None
    rows = df[(df["kind"] == "train") & df["task"].isin(["caption", "t2i"])]
    if rows.empty:
        return None
    rows = rows[rows["ckpt_step"] == rows.groupby("signature")["ckpt_step"].transform("max")]
    index = ["caption_prob", "s_train"]
    settings = [*JOINT_SETTINGS, *train_columns(rows)]
    index += [c for c in varying(rows, settings) if c not in index]
    index = [c for c in index if c not in ("ar_mode", "ar_steps", "ar_decay")]
    data = rows.copy()
    for c in index:
        if data[c].isna().any() and not isinstance(data[c].dtype, pd.CategoricalDtype):
            data[c] = data[c].astype(object).where(data[c].notna(), "-")
    t2i = data[data["task"] == "t2i"]
    scales = sorted(t2i["cfg"].dropna().unique()) if "cfg" in t2i else []
    per_run, metric = {}, {}
    for title, (task, m) in JOINT_METRICS.items():
        part = data[data["task"] == task]
        if m not in part:
            continue
        # a mean over guidance scales is no setting anyone samples with: one column per scale
        for g in scales if task == "t2i" and len(scales) > 1 else [None]:
            name = title if g is None else f"{title} (cfg {value_text(g)})"
            sel = part if g is None else part[part["cfg"] == g]
            per_run[name] = sel.groupby([*index, "signature"], observed=True)[m].mean()
            metric[name] = m
    runs = pd.DataFrame(per_run).dropna(axis=1, how="all")
    if runs.empty:
        return None
    stats = runs.groupby(level=index, observed=True).agg(["mean", "std", "count"])
    parts = {k: stats.xs(k, axis=1, level=1) for k in ("mean", "std", "count")}
    better = {t: BETTER[metric[t]] for t in runs.columns}
    decimals = {t: 3 for t in runs.columns if metric[t] != "fid"}
    return Table(
        name="joint",
        title="Joint image-text runs: text-to-image FID and class_acc, captioning scores",
        better=better,
        decimals=decimals,
        note="CIDEr, BLEU-4 and ROUGE-L: pycocoevalcap scorers on the eval split's references",
        **parts,
    )


def fid_context(df: pd.DataFrame) -> str:
    """What the grid's FIDs are: extractor, samples, diffusion steps and sampler, reference
    split, e.g. 'classifier FID of 300 samples (50 ddpm steps) vs the test split'."""
    rows = df[(df["kind"] == "train") & df["fid"].notna()]
    if rows.empty:
        return ""

    def values(col: str) -> str:
        if col not in rows:
            return "?"
        seen = rows[col].dropna().unique()
        return "/".join(value_text(v) for v in sorted(seen, key=str)) if len(seen) else "?"

    return (
        f"{values('extractor')} FID of {values('num_samples')} samples "
        f"({values('sampler_steps')} {values('sampler')} steps) vs the {values('split')} split"
    )


def class_acc_context(df: pd.DataFrame) -> str:
    """What a class-accuracy table's numbers are, e.g. 'share of 300 samples (50 ddpm steps)
    that the classifier assigns to their requested class'."""
    rows = metric_rows(df, "class_acc")
    if rows.empty:
        return ""
    seen = {c: "/".join(value_text(v) for v in sorted(rows[c].dropna().unique(), key=str)) or "?"
            for c in ("num_samples", "sampler_steps", "sampler")}  # fmt: skip
    return (
        f"share of {seen['num_samples']} samples ({seen['sampler_steps']} {seen['sampler']} "
        "steps) that the classifier assigns to their requested class; higher is better"
    )


OTHER_CONTEXT = {
    "fid_inf": "FID_inf: FID at several subset sizes of the same samples (eval.fid_inf_sizes), "
    "fitted in 1/N and extrapolated to N = infinity (Chong and Forsyth 2020)",
    "kid": "KID: kernel inception distance on the same features, unbiased at any N",
}


def all_tables(df: pd.DataFrame) -> list[Table]:
    """Every table the data supports, in report order; FID tables say what their FID is. Where
    the FID extractor is the classifier, each paper table is followed by its class accuracy."""
    made: list[Table] = []
    context, acc_context = fid_context(df), class_acc_context(df)
    for make in (table_s_train, table_decay, table_order, table_weighting):
        fid_table = make(df)
        if fid_table is None:
            continue
        fid_table.context = context
        made.append(fid_table)
        acc = make(df, "class_acc") if acc_context else None
        if acc is not None and np.nansum(acc.count.to_numpy(dtype=float)) > 0:
            acc.context = acc_context
            made.append(acc)
        for other in ("fid_inf", "kid"):  # the bias-corrected FID and KID, where measured
            extra = make(df, other) if other in df and df[other].notna().any() else None
            if extra is not None and np.nansum(extra.count.to_numpy(dtype=float)) > 0:
                extra.context = f"{context}; {OTHER_CONTEXT[other]}" if context else ""
                made.append(extra)
    for make in (table_model_size, table_joint):
        table = make(df)
        if table is not None:
            table.context = context
            made.append(table)
    bench = table_bench(df)
    return made + ([bench] if bench is not None else [])


# ---- seed statistics shared by the report and `cfh check` ----


def seed_summary(df: pd.DataFrame, value: str = "fid") -> pd.DataFrame:
    """Mean, std and seed count of `value` per (train setting, eval setting), with readable
    setting columns kept alongside the canonical keys; for FID also the mean sampling bootstrap
    std (`boot`)."""
    rows = df[(df["kind"] == "train") & df[value].notna()]
    keep = [c for c in ("setting", "s_train", *EVAL_KEY_COLUMNS) if c in rows]
    extra = {}
    if value == "fid" and "fid_bootstrap_std" in rows:
        extra["boot"] = ("fid_bootstrap_std", "mean")
    out = rows.groupby(["train_key", "eval_key"], observed=True, sort=False).agg(
        mean=(value, "mean"),
        std=(value, "std"),
        n=(value, "count"),
        **extra,
        **{c: (c, "first") for c in keep},
    )
    return out.reset_index()


def pooled_std(std_a: Any, n_a: Any, std_b: Any, n_b: Any) -> Any:
    """Pooled standard deviation of two groups; NaN when neither has two or more values."""
    std_a, std_b = np.nan_to_num(std_a), np.nan_to_num(std_b)
    dof_a, dof_b = np.maximum(np.asarray(n_a) - 1, 0), np.maximum(np.asarray(n_b) - 1, 0)
    dof = dof_a + dof_b
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(dof > 0, np.sqrt((dof_a * std_a**2 + dof_b * std_b**2) / dof), np.nan)
