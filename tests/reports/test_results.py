"""load_results: tidy rows, derived columns, and tolerance of broken run folders."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pandas as pd
import pytest
import synthetic as sy

from core.errors import UserError
from reports import load_results
from reports.results import ResultsWarning, plan_points


def _load(root, grid="smoke"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResultsWarning)
        return load_results(root, grid)


def test_one_row_per_run_eval_and_axis_columns(smoke_root: Path):
    df = _load(smoke_root)
    train = df[df["fid"].notna()]
    assert len(train) == 6 * 2  # 6 completed runs x S_eval 1, 4
    assert set(train["s_train"].astype(str)) == {"1", "4", "decay 0.9"}
    assert list(df["s_train"].cat.categories) == ["1", "4", "64 (L)", "decay 0.9"]
    assert set(train["s_eval"]) == {1, 4}
    assert set(train["seed"]) == {0, 1}
    for col in ("model", "dataset", "ar_mode", "ar_steps", "ar_decay", "train_order",
                "ar_weight_max", "ar_weight_min", "ar_weight_schedule", "noise_weighting",
                "eval_order", "cfg", "sampler_steps", "num_samples", "extractor", "kid",
                "precision", "recall", "class_acc", "sample_img_per_s", "mfu", "peak_mem_mb",
                "wall_hours", "state", "params", "flops", "ckpt_step"):  # fmt: skip
        assert col in df, col
    assert (train["model"] == "T").all() and (train["dataset"] == "digits").all()
    assert (train["tokens"] == 64).all()


def test_training_stats_skip_warmup_and_sum_wall_time(smoke_root: Path):
    df = _load(smoke_root)
    row = df[df["fid"].notna()].iloc[0]
    speed = 2e8 / sy.SIZES["T"]  # synthetic steady speed; the first window runs at 0.4x
    assert row["train_img_per_s"] == pytest.approx(speed, rel=0.05)
    assert row["wall_hours"] == pytest.approx(300 * 64 / speed / 3600, rel=0.01)
    assert 0 < row["final_loss"] < 0.5


def test_params_and_flops_from_model_network(smoke_root: Path):
    pytest.importorskip("model.method.network")
    df = _load(smoke_root)
    assert df["params"].notna().all() and (df["params"] > 1e5).all()
    flops = df.groupby("s_train", observed=True)["flops"].first()
    # a longer mean training sequence (S_train = 4: C + 2L - L/4) costs more than S_train = 1
    assert flops["4"] > flops["1"] > 0


def test_sampling_cost_is_nfe_times_group_tokens(smoke_root: Path):
    df = _load(smoke_root)
    row = df[(df["s_eval"] == 4)].iloc[0]
    assert row["nfe"] == 4 * 100
    assert row["sample_cost"] == 4 * 100 * 64 / 4


def test_failed_corrupt_and_missing_runs_are_rows_with_one_warning(smoke_root: Path):
    runs = sorted((smoke_root / "runs").iterdir())
    ok = [r for r in runs if json.loads((r / "status.json").read_text())["state"] == "completed"]
    evals = sorted((ok[0] / "eval").glob("*.json"))
    evals[0].write_text('{"settings": {"s_eval": 1}, "metr')  # torn eval file
    (ok[1] / "config.yaml").write_text("model: [unclosed\n")
    (ok[2] / "status.json").write_text("{not json")
    (ok[3] / "metrics.jsonl").unlink()
    with (ok[4] / "metrics.jsonl").open("a") as f:
        f.write('{"step": 999, "loss": 0.1')  # torn last line
    plan_path = smoke_root / "grids" / "smoke" / "plan.json"
    plan = json.loads(plan_path.read_text())
    plan["points"].append({"signature": "notstarted01", "axes": {"train.ar.steps": 8}})
    plan_path.write_text(json.dumps(plan))
    with pytest.warns(ResultsWarning) as rec:
        df = load_results(smoke_root, "smoke")
    assert len(rec) == 1
    message = str(rec[0].message)
    assert "1 failed" in message and "1 missing" in message and "with unreadable files" in message
    states = df.drop_duplicates("signature").set_index("signature")["state"]
    assert states["notstarted01"] == "missing"
    assert states[ok[2].name] == "damaged"
    assert (states == "failed").sum() == 1
    by_run = df.groupby("signature")
    assert by_run.size()[ok[0].name] == 1  # the torn eval dropped, the good one kept
    assert "damaged: eval/" in df.loc[df["signature"] == ok[0].name, "problems"].iloc[0]
    assert "config.yaml" in df.loc[df["signature"] == ok[1].name, "problems"].iloc[0]
    assert math.isnan(df.loc[df["signature"] == ok[3].name, "train_img_per_s"].iloc[0])
    note = df.loc[df["signature"] == ok[4].name, "problems"].iloc[0]
    assert "damaged: metrics.jsonl: 1 bad line(s), first line" in note and "not JSON" in note
    assert (
        "damaged: status.json: not JSON"
        in df.loc[df["signature"] == ok[2].name, "problems"].iloc[0]
    )
    assert df.loc[df["signature"] == "notstarted01", "ar_steps"].iloc[0] == 8
    failed = df[df["state"] == "failed"].iloc[0]
    assert failed["error"] == "RuntimeError: loss is NaN at step 151"
    assert math.isnan(failed["fid"])


@pytest.mark.timeout(30)
def test_a_run_config_past_the_yaml_bounds_is_a_damaged_row_not_a_hang(smoke_root: Path):
    """An alias bomb as a run's config.yaml (issue 32): the row notes it, nothing expands it."""
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * 10) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    run = sorted((smoke_root / "runs").iterdir())[0]
    (run / "config.yaml").write_text("\n".join(lines) + "\n")
    df = _load(smoke_root)
    note = df.loc[df["signature"] == run.name, "problems"].iloc[0]
    assert "damaged: config.yaml: YAML expands to more than 100000 nodes" in note


def test_empty_and_half_written_run_folders_never_crash(tmp_path: Path):
    (tmp_path / "runs" / "empty0000001").mkdir(parents=True)
    run = sy.write_run(tmp_path)
    (run / "eval" / "junk.json").write_text("[1, 2, 3]")
    (run / "eval" / ".x.json.tmp").write_text("{")  # an atomic write in flight: ignored
    with pytest.warns(ResultsWarning):
        df = load_results(tmp_path)
    assert set(df["state"]) == {"pending", "completed"}  # an empty folder: not started yet
    assert df["fid"].notna().sum() == 2


def test_no_runs_gives_an_empty_table(tmp_path: Path):
    df = load_results(tmp_path)
    assert df.empty and "fid" in df


def test_grid_names_are_checked(tmp_path: Path):
    with pytest.raises(UserError, match="grid 'nope' has never been swept under"):
        load_results(tmp_path, "nope")
    with pytest.raises(UserError, match="may only use letters"):
        load_results(tmp_path, "../etc")


def test_plan_points_ignore_unsafe_signatures():
    plan = {"points": [{"signature": "../../x", "axes": {}}, {"signature": "ab12", "seed": 3}]}
    assert plan_points(plan) == {"ab12": {"seed": 3}}
    assert plan_points([{"sig": "cd34", "overrides": ["seed=1"]}]) == {"cd34": {"seed": "1"}}


def test_bench_files_become_bench_rows(tmp_path: Path):
    run = sy.write_run(tmp_path)
    bench = {
        "kind": "bench",
        "created": "2025-01-01T00:00:00",
        "grid": "g",
        "machine": {"cpu": "test cpu", "cores": 2, "torch": "2.14.1", "peak_flops": 2.1e11},
        "rows": [
            {"measure": "train", "impl": "cfh", "model": "T", "attention": "sdpa",
             "train_img_per_s": 250.0, "mfu": 0.6, "params": 8.5e5},
            {"measure": "train", "impl": "reference", "model": "T", "attention": "sdpa",
             "train_img_per_s": 195.0, "mfu": 0.45, "params": 8.5e5},
            {"measure": "sample", "impl": "cfh", "model": "T", "s_eval": 16, "kv_cache": True,
             "sample_img_per_s": 30.0},
        ],
    }  # fmt: skip
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "b1.json").write_text(json.dumps(bench))
    (tmp_path / "bench" / "broken.json").write_text("{")
    (run / "bench").mkdir()
    (run / "bench" / "b2.json").write_text(json.dumps({**bench, "grid": None}))
    sy.write_grid(tmp_path, "g", [run])
    with pytest.warns(ResultsWarning, match="1 corrupt"):
        everything = load_results(tmp_path)
    bench_rows = everything[everything["kind"] == "bench"]
    assert len(bench_rows) == 3 + 3 + 1
    good = bench_rows[bench_rows["state"] == "completed"]
    assert set(good["machine_cpu"]) == {"test cpu"}
    ref = good[(good["impl"] == "reference")].iloc[0]
    assert ref["train_img_per_s"] == 195.0 and ref["mfu"] == 0.45  # not overwritten by runs
    grid = _load(tmp_path, "g")
    assert (grid["kind"] == "bench").sum() == 6  # tagged root file + the run's own file


def test_results_round_trip_through_parquet(smoke_root: Path, tmp_path: Path):
    from reports.report import parquet_safe

    df = _load(smoke_root)
    path = tmp_path / "r.parquet"
    parquet_safe(df).to_parquet(path)
    back = pd.read_parquet(path)
    assert len(back) == len(df) and back["fid"].sum() == pytest.approx(df["fid"].sum())


def test_a_grid_shows_only_its_own_evals_of_a_shared_run(smoke_root: Path):
    run = next(p for p in (smoke_root / "runs").iterdir() if (p / "eval").is_dir())
    status = json.loads((run / "status.json").read_text())
    other = {"settings": {"s_eval": 16, "ckpt_step": 300}, "metrics": {"fid": 99.0}}
    (run / "eval" / "othergrid.json").write_text(json.dumps(other))
    status["evals"]["kother"] = {"file": "eval/othergrid.json", "fid": 99.0}
    (run / "status.json").write_text(json.dumps(status))
    assert 99.0 not in set(_load(smoke_root)["fid"])  # grid smoke's plan lacks that key
    assert 99.0 in set(_load(smoke_root, None)["fid"])  # all results show it


# ---------------------------------------------------------------- issue 20: what a reader trusts


def test_settings_a_run_did_not_use_are_not_shown_as_its_settings(smoke_root: Path):
    df = _load(smoke_root)
    fixed, decay = df[df["ar_mode"] == "fixed"], df[df["ar_mode"] == "decay"]
    assert fixed["ar_decay"].isna().all()  # config.yaml holds train.ar.decay=0.9: unused
    assert fixed["ar_steps"].notna().all()
    assert decay["ar_steps"].isna().all() and (decay["ar_decay"] == 0.9).all()
    assert not df["setting"].str.contains("=-").any()
    # the same rule as run signatures, from core/ (reports may not import harness/)
    from core.keys import CONDITIONAL_KEYS, unused_keys

    assert unused_keys({"train.ar.mode": "uniform", "train.order": "block_raster"}) == [
        "train.ar.steps",
        "train.ar.decay",
    ]
    assert unused_keys({"train.loss.noise_weighting": "min_snr"}) == []
    assert set(CONDITIONAL_KEYS) >= {"train.order_block", "train.loss.min_snr_gamma"}


def test_an_unused_grid_axis_is_blank_and_left_out_of_the_label(tmp_path: Path):
    runs = [sy.write_run(tmp_path, order=o, seed=0) for o in ("raster", "block_raster")]
    for run in runs:  # a token-order grid: train.order_block is an include key
        point = json.loads((run / "point.json").read_text())
        point["axes"]["train.order_block"] = 4
        (run / "point.json").write_text(json.dumps(point))
    sy.write_grid(tmp_path, "order", runs)
    df = _load(tmp_path, "order")
    raster = df[df["train_order"] == "raster"]
    block = df[df["train_order"] == "block_raster"]
    assert raster["train.order_block"].isna().all() and (block["train.order_block"] == 4).all()
    assert set(raster["setting"]) == {"order=raster"}
    assert set(block["setting"]) == {"order=block_raster, train.order_block=4"}


def _metrics(run: Path, rows: list[tuple[int, float, float]]) -> None:
    """metrics.jsonl rows (step, wall_s, img/s of the window) of a run at batch 64."""
    lines = [json.dumps({"step": s, "loss": 0.5, "img_per_s": v, "wall_s": w}) for s, w, v in rows]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_wall_hours_count_the_attempts_that_produced_the_result(tmp_path: Path):
    run = sy.write_run(tmp_path, train_steps=300, log_every=100)
    sy.write_grid(tmp_path, "g", [run])
    # one attempt: 300 steps x 64 images at 100 img/s = 192 s
    _metrics(run, [(100, 64.0, 100.0), (200, 128.0, 100.0), (300, 192.0, 100.0)])
    assert _load(tmp_path, "g")["wall_hours"].iloc[0] * 3600 == pytest.approx(192.0)
    # attempt 1 was cancelled after step 200's checkpoint; attempt 2 cut its later rows and
    # resumed on a slower machine, its clock starting at 0 but its first row (150 s for 100
    # steps) later than attempt 1's last kept row (128 s): wall_s does not fall, the window's
    # own img/s (6400 images in 150 s) tells the attempts apart
    _metrics(run, [(100, 64.0, 100.0), (200, 128.0, 100.0), (300, 150.0, 6400 / 150)])
    assert _load(tmp_path, "g")["wall_hours"].iloc[0] * 3600 == pytest.approx(128.0 + 150.0)
    # an --extend to 400 steps, cancelled at 400: the evaluation at step 300 was produced by
    # the first 300 steps only; the run's train-only row counts every kept step
    _metrics(run, [(100, 64.0, 100.0), (200, 128.0, 100.0), (300, 192.0, 100.0), (400, 70.0, 91.4)])
    df = _load(tmp_path, "g")
    assert list(df["wall_hours"] * 3600) == pytest.approx([192.0] * len(df))
    from reports.results import load_curves, train_stats

    curves = load_curves(tmp_path, "g")
    assert train_stats(curves)["wall_hours"].iloc[0] * 3600 == pytest.approx(192.0 + 70.0)


def test_sampling_flops_do_not_move_with_the_measured_speed(smoke_root: Path):
    df = _load(smoke_root)
    rows = df[df["fid"].notna()]
    per_setting = rows.groupby(["model", "s_eval", "sampler_steps"])["sample_flops"].nunique()
    assert (per_setting == 1).all()  # one number per sampling setting, whatever the seed
    assert (rows["sample_flops"] > 0).all()
    from reports.sizes import model_size, sample_flops_per_image

    mc = model_size("T", 8, 1, 1, 10, 4)["model_cfg"]
    one, four = (sample_flops_per_image(mc, s, 100) for s in (1, 4))
    assert one > four > 0.8 * one  # S_eval moves only the attention term (groups see less)
    assert sample_flops_per_image(mc, 4, 200) == pytest.approx(2 * four, rel=0.01)
    assert sample_flops_per_image(mc, 4, 100, guided=True) == pytest.approx(2 * four)
    big = model_size("S", 8, 1, 1, 10, 4)["model_cfg"]
    assert sample_flops_per_image(big, 4, 100) > 5 * four
