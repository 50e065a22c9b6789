"""The findings a grid names, judged against the noise: verdicts on known inputs, in the report."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
from conftest import write_smoke_grid
from test_tables import frame

from reports.findings import judge_findings
from reports.results import ResultsWarning


def cells(rows: list[tuple[int, int, float, float]]):
    """A results frame of (S_train fixed, S_eval, seed, FID) rows with a bootstrap std of 1."""
    return frame(
        [{"ar_steps": st, "s_eval": se, "seed": seed, "fid": fid, "fid_bootstrap_std": 1.0}
         for st, se, seed, fid in rows]
    )  # fmt: skip


def finding(better: dict, worse: dict, claim: str = "c") -> dict:
    return {"claim": claim, "better": better, "worse": worse}


S1 = {"train.ar.mode": "fixed", "train.ar.steps": 1}


def test_verdicts_are_three_valued_with_a_t_interval():
    df = cells(
        [(1, 1, 0, 10.0), (1, 1, 1, 12.0), (1, 4, 0, 300.0), (1, 4, 1, 310.0),
         (1, 2, 0, 13.0), (1, 2, 1, 11.5)]
    )  # fmt: skip
    judged = judge_findings(
        df,
        [
            finding({**S1, "sample.ar_steps": 1}, {**S1, "sample.ar_steps": 4}),
            finding({**S1, "sample.ar_steps": 1}, {**S1, "sample.ar_steps": 2}),
            finding({**S1, "sample.ar_steps": 4}, {**S1, "sample.ar_steps": 1}),
            finding({**S1, "sample.ar_steps": 1}, {**S1, "sample.ar_steps": 8}),
        ],
    )
    verdicts = list(judged["verdict"])
    assert verdicts == ["holds", "undecided", "contradicted", "not measured"]
    first = judged.iloc[0]
    assert first["better_mean"] == 11.0 and first["worse_mean"] == 305.0
    assert first["better_n"] == 2 and first["better_sd"] == pytest.approx(math.sqrt(2.0))
    assert first["paired"] and first["df"] == 2  # 3 cells x 2 seeds: (3 - 1) x (2 - 1)
    assert first["t"] == pytest.approx(4.303, abs=1e-3)  # not 2: two degrees of freedom
    assert first["lo"] > 0
    second = judged.iloc[1]  # 12.25 vs 11: positive, its interval holds 0
    assert second["difference"] == pytest.approx(1.25) and second["lo"] < 0 < second["hi"]


def test_one_seed_is_undecided_however_small_the_bootstrap_std():
    df = cells([(1, 1, 0, 10.0), (1, 4, 0, 12.0), (4, 4, 0, 10.5)])
    judged = judge_findings(
        df,
        [
            finding({**S1, "sample.ar_steps": 1}, {**S1, "sample.ar_steps": 4}),
            finding({"train.ar.steps": 4, "sample.ar_steps": 4}, {**S1, "sample.ar_steps": 4}),
        ],
    )
    assert list(judged["verdict"]) == ["undecided", "undecided"]
    assert judged["better_n"].iloc[0] == 1
    assert "seed variance" in judged["reason"].iloc[0]
    far = cells([(1, 1, 0, 10.0), (1, 4, 0, 200.0)])
    judged = judge_findings(far, [finding({"sample.ar_steps": 1}, {"sample.ar_steps": 4})])
    assert judged["verdict"].iloc[0] == "undecided"  # an open axis: S_train averaged


def test_cells_match_the_symbol_L_and_the_own_order():
    df = frame(
        [{"ar_steps": 64, "s_eval": 8, "fid": 50.0, "tokens": 64, "eval_order": "raster"},
         {"ar_steps": 64, "s_eval": 1, "fid": 90.0, "tokens": 64, "eval_order": "raster"},
         {"ar_steps": 1, "s_eval": 1, "fid": 9.0, "tokens": 64, "train_order": "raster",
          "eval_order": "raster"}]
    )  # fmt: skip
    judged = judge_findings(
        df,
        [
            finding({"train.ar.steps": "L", "sample.ar_steps": 8},
                    {"train.ar.steps": "L", "sample.ar_steps": 1}),
            finding({"train.order": "raster", "sample.order": "train"},
                    {"train.order": "random", "sample.order": "train"}),
        ],
    )  # fmt: skip
    assert judged["better_mean"].tolist()[0] == 50.0 and judged["worse_mean"].tolist()[0] == 90.0
    # random-order runs sampled in raster order only: no result in their own order
    assert judged["better_n"].iloc[1] == 1 and judged["worse_n"].iloc[1] == 0


def test_the_report_prints_each_finding_with_its_verdict(tmp_path: Path):
    from reports.report import write_report

    write_smoke_grid(tmp_path, "smoke", seeds=(0, 1, 2))
    plan_path = tmp_path / "grids" / "smoke" / "plan.json"
    plan = json.loads(plan_path.read_text())
    plan["findings"] = [
        finding({**S1, "sample.ar_steps": 1}, {**S1, "sample.ar_steps": 4}, "S_train 1 collapses"),
        finding({"train.ar.mode": "decay", "train.ar.decay": 0.9, "sample.ar_steps": 4},
                {**S1, "sample.ar_steps": 4}, "decay keeps S_eval 4 usable"),
        finding({**S1, "sample.ar_steps": 4}, {**S1, "sample.ar_steps": 1}, "a wrong claim"),
    ]  # fmt: skip
    plan_path.write_text(json.dumps(plan))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResultsWarning)
        write_report(tmp_path, "smoke")
    md = (tmp_path / "grids" / "smoke" / "report" / "report.md").read_text()
    section = md.split("## Findings the grid tests", 1)[1].split("## Tables", 1)[0]
    lines = {line.split("|")[1].strip(): line for line in section.splitlines() if "|" in line}
    verdict = {k: [c.strip() for c in v.split("|")][-3] for k, v in lines.items()}
    assert verdict["S_train 1 collapses"] == "holds"
    assert verdict["decay keeps S_eval 4 usable"] == "holds"
    assert verdict["a wrong claim"] == "contradicted"
    assert "(n=3)" in lines["S_train 1 collapses"]
    assert "Student t at the pooled seed variance's df" in section  # the method, in one line
    assert "plots/findings_forest.png" in section  # the forest plot
    assert (tmp_path / "grids" / "smoke" / "report" / "plots" / "findings_forest.png").is_file()
    html = (tmp_path / "grids" / "smoke" / "report" / "report.html").read_text()
    assert "Findings the grid tests" in html and "contradicted" in html
