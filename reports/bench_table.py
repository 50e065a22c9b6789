"""The bench table: `cfh bench` rows as training and sampling throughput per size and backend."""

from __future__ import annotations

import pandas as pd

from reports.table_render import Table, value_text

BENCH_METRICS = {
    "train_img_per_s": "train img/s",
    "train_tokens_per_s": "train tokens/s",
    "mfu": "MFU",
    "peak_mem_mb": "peak MB",
    "speedup_vs_reference": "train speedup vs reference",
}


def table_bench(df: pd.DataFrame) -> Table | None:
    """Bench rows (`cfh bench`): training and sampling throughput per size and backend, with
    cfh/reference and KV-cache/recompute ratios."""
    bench = df[(df["kind"] == "bench") & (df["state"] == "completed")].copy()
    if bench.empty:
        return None
    index = [
        c
        for c in ("model", "attention", "dtype", "precision", "impl")
        if c in bench and bench[c].notna().any()
    ]
    for c in index:
        bench[c] = bench[c].astype(object).where(bench[c].notna(), "-")
    train = bench[bench.get("measure", pd.Series("train", index=bench.index)) != "sample"]
    present = [c for c in BENCH_METRICS if c in train]
    long = train.melt(id_vars=index, value_vars=present, var_name="column").dropna(subset="value")
    long["column"] = long["column"].map(BENCH_METRICS)
    if "sample_img_per_s" in bench:
        long = pd.concat([long, *_bench_sampling(bench, index)], ignore_index=True)
    if "extract_ms_per_img" in bench:
        name = bench.get("extractor", pd.Series("", index=bench.index)).fillna("").astype(str)
        extract = bench[index].assign(
            column="extract ms/img " + name, value=bench["extract_ms_per_img"]
        )
        long = pd.concat([long, extract.dropna(subset=["value"])], ignore_index=True)
    if long.empty:
        return None
    columns = list(dict.fromkeys(long["column"]))  # first-seen order: train, then sampling
    stats = long.groupby([*index, "column"])["value"].agg(["mean", "std", "count"])
    wide = stats.unstack("column")
    parts = {
        k: wide[k].reindex(columns=columns).rename_axis(columns=None)
        for k in ("mean", "std", "count")
    }
    better = {c: ("min" if c == "peak MB" or "ms/img" in c else "max") for c in columns}
    decimals = {
        c: (3 if c == "MFU" else 2 if "speedup" in c or " vs " in c else 1) for c in columns
    }
    return Table(
        name="bench",
        title="Throughput (cfh bench, medians over timed repeats)",
        better=better,
        decimals=decimals,
        note="mean ± std over bench files when several measured a cell",
        **parts,
    )


def _bench_sampling(bench: pd.DataFrame, index: list[str]) -> list[pd.DataFrame]:
    """Long rows of sampling img/s per S_eval and KV/no-KV, and the KV-cache speedup."""
    kv = bench.get("kv_cache", pd.Series(index=bench.index, dtype=object))
    kv_text = kv.map({True: " KV", False: " no KV"}, na_action="ignore").fillna("")
    s_eval = bench["s_eval"].map(value_text, na_action="ignore").astype(object)
    parts = [
        bench[index].assign(
            column="sample img/s S=" + s_eval + kv_text, value=bench["sample_img_per_s"]
        )
    ]
    if "speedup_vs_recompute" in bench:
        parts.append(
            bench[index].assign(
                column="KV vs recompute S=" + s_eval, value=bench["speedup_vs_recompute"]
            )
        )
    return [p.dropna(subset=["value"]) for p in parts]
