"""End to end on a real tiny sweep: `cfh sweep smoke` (local, a few steps) -> report -> check."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from harness.cli.main import main
from reports import load_results
from reports.results import ResultsWarning

TINY = [
    "cluster=local",
    "train.steps=4",
    "train.ckpt_every=2",
    "train.log_every=2",
    "sample.num=20",
    "sample.steps=2",
    "eval.kid_subset_size=10",
]


@pytest.mark.slow
def test_tiny_real_sweep_reports_and_checks(tmp_path: Path, capsys):
    main(["--root", str(tmp_path), "sweep", "smoke", *TINY])  # rc: a failed point is allowed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResultsWarning)
        df = load_results(tmp_path, "smoke")
    assert df["signature"].nunique() == 3  # every planned point is a row, whatever its state
    done = df[df["fid"].notna()]
    assert not done.empty, df[["signature", "state", "error"]].to_string()
    assert set(done["s_eval"]) <= {1, 4} and (done["model"] == "T").all()
    assert done["params"].gt(0).all() and done["train_img_per_s"].gt(0).all()

    capsys.readouterr()
    assert main(["--root", str(tmp_path), "report", "smoke"]) == 0
    html = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert html.exists() and "data:image/png;base64," in html.read_text()
    assert (html.parent / "plots" / "samples.png").exists()  # from the runs' grid.png
    md = (html.parent / "report.md").read_text()  # the grid file's findings, via plan.json
    findings = md.split("## Findings the grid tests", 1)[1].split("## Tables", 1)[0]
    assert "a fixed S_train collapses at another S_eval" in findings
    assert any(f"| {v} " in findings for v in ("holds", "undecided", "contradicted"))

    base = tmp_path / "smoke.csv"
    assert main(["--root", str(tmp_path), "check", "smoke", "--baseline", str(base),
                 "--update-baseline"]) == 0  # fmt: skip
    assert main(["--root", str(tmp_path), "check", "smoke", "--baseline", str(base)]) == 0
