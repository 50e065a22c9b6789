"""Tables: values, mean ± std over seeds, best marks, and the paper's shapes on known inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from reports import tables
from reports.columns import EVAL_KEY_COLUMNS
from reports.labels import key_text, setting_labels
from reports.winners import winners


def frame(rows: list[dict]) -> pd.DataFrame:
    """A results table from a few fields per row, other columns at the smoke defaults."""
    base = {
        "kind": "train", "state": "completed", "model": "T", "dataset": "digits",
        "ar_mode": "fixed", "ar_steps": 1, "ar_decay": 0.9, "train_order": "random",
        "ar_weighting": "1->1", "noise_weighting": "uniform", "train_steps": 300,
        "batch_size": 64, "eval_order": "random", "cfg": 1.0, "cfg_interval": None,
        "sampler": "ddpm", "sampler_steps": 100, "num_samples": 1000, "ckpt_step": 300,
        "extractor": "classifier", "task": "generate", "seed": 0, "params": 8.5e5,
        "flops": 6e8, "train_img_per_s": 250.0, "sample_img_per_s": 30.0,
    }  # fmt: skip
    df = pd.DataFrame([{**base, **r} for r in rows])
    df["s_train"] = pd.Categorical(
        np.where(
            df["ar_mode"] == "fixed",
            df["ar_steps"].astype(str),
            "decay " + df["ar_decay"].astype(str),
        ),
    )
    df["signature"] = df["s_train"].astype(str) + df["model"] + df["seed"].astype(str)
    df["train_key"] = key_text(df, tables.TRAIN_KEY_COLUMNS)
    df["eval_key"] = key_text(df, EVAL_KEY_COLUMNS)
    df["setting"] = setting_labels(df)
    return df


def table2_input() -> pd.DataFrame:
    """S_train 1 (two seeds) and 4 (two seeds, S_eval 4 has one seed) at S_eval 1 and 4."""
    return frame(
        [
            {"ar_steps": 1, "seed": 0, "s_eval": 1, "fid": 10.0},
            {"ar_steps": 1, "seed": 1, "s_eval": 1, "fid": 12.0},
            {"ar_steps": 1, "seed": 0, "s_eval": 4, "fid": 300.0},
            {"ar_steps": 1, "seed": 1, "s_eval": 4, "fid": 310.0},
            {"ar_steps": 4, "seed": 0, "s_eval": 1, "fid": 40.0},
            {"ar_steps": 4, "seed": 1, "s_eval": 1, "fid": 44.0},
            {"ar_steps": 4, "seed": 0, "s_eval": 4, "fid": 18.0},
        ]
    )


def test_table2_mean_std_and_best_marks():
    t = tables.table_s_train(table2_input())
    assert t.mean.loc["1", 1] == 11.0 and t.mean.loc["4", 4] == 18.0
    assert t.std.loc["1", 1] == pytest.approx(np.sqrt(2.0))
    assert t.count.loc["4", 4] == 1
    md = t.to_markdown()
    assert "**11.00 ± 1.41†**" in md  # best at S_eval 1 (bold) and of its row (†)
    assert "| 42.00 ± 2.83 " in md  # not best: no mark
    assert "**18.00†**" in md  # single seed: no ± and still marked best
    assert "S_eval=1" in md and "S_train" in md
    assert "mean ± std over 1-2 training seeds" in md
    tex = t.to_latex()
    assert r"\textbf{11.00 $\pm$ 1.41$^\dagger$}" in tex and r"\textbf{18.00$^\dagger$}" in tex
    assert r"\toprule" in tex and r"$S_\mathrm{eval}$=4" in tex
    assert "305.00 $\\pm$ 7.07" in tex and "\\textbf{305" not in tex


def test_ties_are_all_marked_and_one_row_is_never_marked():
    t = tables.table_s_train(
        frame([{"ar_steps": 1, "s_eval": 1, "fid": 5.0}, {"ar_steps": 2, "s_eval": 1, "fid": 5.0}])
    )
    assert t.best_mask().to_numpy().all()
    single = tables.table_s_train(frame([{"ar_steps": 1, "s_eval": 1, "fid": 5.0}]))
    assert not single.best_mask().to_numpy().any()
    assert "**" not in single.to_markdown().split("\n", 2)[2]


def test_other_varying_settings_become_levels_never_averaged():
    df = table2_input()
    df = pd.concat([df, df.assign(cfg=1.5, fid=df["fid"] - 1)], ignore_index=True)
    df["eval_key"] = key_text(df, EVAL_KEY_COLUMNS)
    t = tables.table_s_train(df)
    assert t.mean.columns.names == ["s_eval", "cfg"]
    assert t.mean.loc["1", (1, 1.5)] == 10.0
    assert "S_eval=1, CFG=1.5" in t.to_markdown()


def test_only_the_final_checkpoint_enters_tables():
    df = frame(
        [
            {"ar_steps": 1, "s_eval": 1, "fid": 10.0, "ckpt_step": 300},
            {"ar_steps": 1, "s_eval": 1, "fid": 90.0, "ckpt_step": 100},
        ]
    )
    t = tables.table_s_train(df)
    assert t.mean.loc["1", 1] == 10.0


def test_decay_table_orders_decay_descending_with_uniform_as_one():
    df = frame(
        [
            {"ar_mode": "uniform", "s_eval": 1, "fid": 21.3},
            {"ar_mode": "decay", "ar_decay": 0.9, "s_eval": 1, "fid": 12.9},
            {"ar_mode": "decay", "ar_decay": 0.8, "s_eval": 1, "fid": 12.8},
            {"ar_mode": "fixed", "ar_steps": 4, "s_eval": 1, "fid": 24.1},  # not in 3a
        ]
    )
    t = tables.table_decay(df)
    assert list(t.mean.index) == [1.0, 0.9, 0.8]
    assert t.best_mask().loc[0.8].all()
    assert tables.table_decay(frame([{"s_eval": 1, "fid": 1.0}])) is None


def test_weighting_and_order_tables_appear_only_when_they_vary():
    df = frame(
        [
            {"ar_weighting": "1->1", "s_eval": 1, "fid": 12.89},
            {"ar_weighting": "2->1", "s_eval": 1, "fid": 12.13},
            {"ar_weighting": "2->1", "noise_weighting": "min_snr", "s_eval": 1, "fid": 12.5},
        ]
    )
    t = tables.table_weighting(df)
    assert t.mean.index.names == ["ar_weighting", "noise_weighting"]
    assert t.mean.loc[("2->1", "uniform"), 1] == 12.13
    assert tables.table_order(df) is None
    names = [x.name for x in tables.all_tables(df)]
    assert names == ["table2_s_train", "table3c_weighting"]


def test_model_size_table_columns_and_marks():
    df = frame(
        [
            {"model": "T", "params": 8.5e5, "flops": 6e8, "seed": s, "s_eval": 1, "fid": f,
             "train_img_per_s": 250.0}
            for s, f in ((0, 20.0), (1, 22.0))
        ]
        + [
            {"model": "S", "params": 2.1e7, "flops": 1.5e10, "seed": 0, "s_eval": 1, "fid": 15.0,
             "train_img_per_s": 10.0, "sample_img_per_s": 5.0}
        ]
    )  # fmt: skip
    t = tables.table_model_size(df)
    assert list(t.mean.index) == ["T", "S"]  # by size
    assert list(t.mean.columns) == [
        "params (M)", "train GFLOPs/img", "FID S_eval=1", "train img/s", "sample img/s",
    ]  # fmt: skip
    md = t.to_markdown()
    assert "0.85 " in md and "0.85 ±" not in md  # params never carry a seed std
    assert "**15.00**" in md and "**250.0 ± 0.0**" in md and "**30.0 ± 0.0**" in md


def test_bench_table_from_bench_rows():
    rows = frame([{"s_eval": 1, "fid": 10.0}])
    bench = pd.DataFrame(
        [
            {"kind": "bench", "state": "completed", "model": "T", "attention": "sdpa",
             "precision": "fp32", "impl": "cfh", "train_img_per_s": 250.0, "mfu": 0.6},
            {"kind": "bench", "state": "completed", "model": "T", "attention": "sdpa",
             "precision": "fp32", "impl": "reference", "train_img_per_s": 195.0, "mfu": 0.45},
            {"kind": "bench", "state": "completed", "model": "T", "attention": "sdpa",
             "precision": "fp32", "impl": "cfh", "s_eval": 16, "kv_cache": True,
             "sample_img_per_s": 30.0},
        ]
    )  # fmt: skip
    t = tables.table_bench(pd.concat([rows, bench], ignore_index=True))
    assert t.mean.loc[("T", "sdpa", "fp32", "cfh"), "train img/s"] == 250.0
    assert "sample img/s S=16 KV" in t.mean.columns
    assert "**250.0**" in t.to_markdown()


def test_winners_margin_with_a_t_interval():
    w = winners(table2_input()).set_index("s_eval")
    assert w.loc[1, "setting"] == "S_train=1" and w.loc[1, "margin"] == pytest.approx(31.0)
    assert w.loc[1, "lo"] > 0 and w.loc[1, "verdict"] == "decided"
    close = frame(
        [
            {"ar_steps": 1, "seed": 0, "s_eval": 1, "fid": 10.0},
            {"ar_steps": 1, "seed": 1, "s_eval": 1, "fid": 14.0},
            {"ar_steps": 2, "seed": 0, "s_eval": 1, "fid": 12.5},
            {"ar_steps": 2, "seed": 1, "s_eval": 1, "fid": 12.5},
        ]
    )
    assert winners(close)["verdict"].iloc[0] == "undecided"
    assert winners(close)["noise_kind"].iloc[0].startswith("pooled (df 1)")
    single = frame(
        [{"ar_steps": 1, "s_eval": 1, "fid": 10.0}, {"ar_steps": 2, "s_eval": 1, "fid": 11.0}]
    )
    assert winners(single)["verdict"].iloc[0] == "undecided"
    # one seed each: a small sampling bootstrap std alone never decides the winner
    boot = single.assign(fid_bootstrap_std=[0.03, 0.04], margin=None)
    w = winners(boot).iloc[0]
    assert w["verdict"] == "undecided" and w["noise_kind"] == "no seed variance"


def test_pooled_std():
    assert tables.pooled_std(1.0, 2, 3.0, 2) == pytest.approx(np.sqrt(5.0))
    assert np.isnan(tables.pooled_std(np.nan, 1, np.nan, 1))
    assert tables.pooled_std(2.0, 3, np.nan, 1) == pytest.approx(2.0)


def test_table2_keeps_settings_without_fid_as_dash_rows():
    df = table2_input()
    failed = frame([{"ar_steps": 8, "s_eval": np.nan, "fid": np.nan, "state": "failed"}])
    df = pd.concat([df, failed], ignore_index=True)
    df["s_train"] = pd.Categorical(df["s_train"].astype(str), categories=["1", "4", "8"])
    t = tables.table_s_train(df)
    assert list(t.mean.index) == ["1", "4", "8"]
    assert "| 8         | -" in t.to_markdown()


def test_joint_table_puts_both_tasks_of_a_run_side_by_side():
    rows = []
    for prob, s_train, seed, fid, acc, cider in (
        (0.25, 1, 0, 60.0, 0.5, 1.2),
        (0.25, 1, 1, 70.0, 0.7, 1.4),
        (0.5, 1, 0, 80.0, 0.9, 2.0),
    ):
        common = {"caption_prob": prob, "ar_steps": s_train, "seed": seed, "dataset": "d_c"}
        rows.append({**common, "task": "t2i", "fid": fid, "class_acc": 0.4})
        rows.append({**common, "task": "caption", "cider": cider, "bleu4": 0.3,
                     "rouge_l": 0.6, "caption_acc": acc})  # fmt: skip
    df = frame(rows)
    df["signature"] = df["caption_prob"].astype(str) + df["seed"].astype(str)
    table = tables.table_joint(df)
    assert table is not None and table.name == "joint"
    assert list(table.mean.columns) == [
        "t2i FID", "t2i class_acc", "CIDEr", "BLEU-4", "ROUGE-L", "caption_acc",
    ]  # fmt: skip
    low = table.mean.xs(0.25, level="caption_prob").iloc[0]
    assert low["t2i FID"] == 65.0 and low["CIDEr"] == pytest.approx(1.3)
    assert table.count.xs(0.25, level="caption_prob").iloc[0]["caption_acc"] == 2
    assert table.better["t2i FID"] == "min" and table.better["CIDEr"] == "max"
    assert tables.table_joint(frame([{"fid": 50.0}])) is None  # no joint evals, no table


def test_joint_table_keeps_text_weight_and_guidance_apart():
    """Runs that differ in text_weight are rows of their own; t2i columns per guidance scale."""
    rows = []
    for weight, sig in ((0.2, "a"), (0.0, "b")):
        common = {"caption_prob": 0.5, "text_weight": weight, "ar_steps": 1, "signature": sig}
        for cfg, acc in ((1.0, 0.2), (3.0, 0.4 + weight)):
            rows.append({**common, "task": "t2i", "cfg": cfg, "fid": 100.0, "class_acc": acc})
        rows.append({**common, "task": "caption", "cfg": 1.0, "caption_acc": 0.9 + weight / 10})
    table = tables.table_joint(frame(rows))
    assert "text_weight" in table.mean.index.names
    cols = list(table.mean.columns)
    assert "t2i class_acc (cfg 1)" in cols and "t2i class_acc (cfg 3)" in cols
    row = table.mean.xs(0.2, level="text_weight").iloc[0]
    assert row["t2i class_acc (cfg 3)"] == pytest.approx(0.6)
    assert row["t2i class_acc (cfg 1)"] == pytest.approx(0.2)
    assert row["caption_acc"] == pytest.approx(0.92)
    assert (
        table.better["t2i class_acc (cfg 3)"] == "max"
        and table.decimals.get("t2i FID (cfg 1)") is None
    )


# ---------------------------------------------------------------- issue 20: marks and accuracy


def test_table2_marks_the_best_per_column_and_per_row_and_says_which():
    t = tables.table_s_train(
        frame(
            [
                {"ar_steps": 1, "s_eval": 1, "fid": 10.0},
                {"ar_steps": 1, "s_eval": 4, "fid": 300.0},
                {"ar_steps": 4, "s_eval": 1, "fid": 40.0},  # best of its row, not of its column
                {"ar_steps": 4, "s_eval": 4, "fid": 50.0},  # best of its column, not its row
            ]
        )
    )
    assert t.best_mask().to_numpy().tolist() == [[True, False], [False, True]]
    assert t.row_best_mask().to_numpy().tolist() == [[True, False], [True, False]]
    md = t.to_markdown()
    assert "**10.00†**" in md and "| 40.00†" in md and "**50.00**" in md and "300.00 " in md
    legend = "bold: best S_train in each column (lowest); †: best S_eval in each row (lowest)"
    assert f"*{legend}*" in md
    assert legend in t.to_html().replace("&dagger;", "†")
    tex = t.to_latex()
    assert r"40.00$^\dagger$" in tex and r"\textbf{50.00}" in tex and "best S" in tex


def test_row_marks_compare_s_eval_within_other_eval_settings():
    t = tables.table_s_train(
        frame(
            [
                {"s_eval": 1, "cfg": 1.0, "fid": 10.0},
                {"s_eval": 4, "cfg": 1.0, "fid": 20.0},
                {"s_eval": 1, "cfg": 2.0, "fid": 30.0},
                {"s_eval": 4, "cfg": 2.0, "fid": 25.0},
            ]
        )
    )
    marks = dict(zip(t.mean.columns, t.row_best_mask().to_numpy()[0], strict=True))
    assert marks == {(1, 1.0): True, (4, 1.0): False, (1, 2.0): False, (4, 2.0): True}


def test_class_accuracy_table_beside_each_fid_table_with_the_classifier():
    good = table2_input().drop(columns=["s_train", "signature", "train_key", "eval_key", "setting"])
    failed = {"ar_steps": 8, "state": "failed", "fid": float("nan"), "s_eval": float("nan")}
    rows = frame([*good.to_dict("records"), failed])  # S_train 8 failed: a row without results
    rows["class_acc"] = 1.0 - rows["fid"] / 1000
    made = {t.name: t for t in tables.all_tables(rows)}
    assert list(made) == ["table2_s_train", "table2_s_train_class_acc"]
    acc = made["table2_s_train_class_acc"]
    assert acc.mean.loc["1", 1] == pytest.approx(0.989) and acc.better[1] == "max"
    md = acc.to_markdown()
    assert "Class accuracy by S_train" in md and "**0.989 ± 0.001†**" in md
    assert "the classifier assigns to their requested class" in md
    decay = frame([{"ar_mode": "decay", "ar_decay": d, "s_eval": 1, "fid": 10.0 + d,
                    "class_acc": 0.9} for d in (0.9, 1.0)])  # fmt: skip
    names = [t.name for t in tables.all_tables(decay)]
    assert "table3a_decay_class_acc" in names
    inception = rows.assign(extractor="inception", class_acc=float("nan"))
    assert [t.name for t in tables.all_tables(inception)] == ["table2_s_train"]
