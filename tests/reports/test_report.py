"""report.md, self-contained report.html, results files and tables; `cfh report`."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pandas as pd

from harness.cli.main import main


def test_report_folder_contents(report_root: Path):
    out = report_root / "grids" / "rich" / "report"
    df = pd.read_parquet(out / "results.parquet")
    csv = pd.read_csv(out / "results.csv")
    assert len(df) == len(csv) == 3 * 3 * 2 + 1 + 2 * 2 * 2  # smoke x 3 seeds, failed, model S
    assert {"fid", "s_train", "s_eval", "state", "params"} <= set(df.columns)
    assert (out / "tables" / "table2_s_train.md").read_text().count("**") >= 4
    assert r"\textbf" in (out / "tables" / "table2_s_train.tex").read_text()
    assert (out / "tables" / "model_size.md").exists()


def test_report_markdown_sections(report_root: Path):
    md = (report_root / "grids" / "rich" / "report" / "report.md").read_text()
    for heading in ("## What the grid varies", "## Run states", "## Winner per S_eval",
                    "## Tables", "## Plots", "## Appendix: the grid's plan"):  # fmt: skip
        assert heading in md
    assert md.index("## Plots") < md.index("## Appendix")  # the plan is an appendix
    assert "RuntimeError: loss is NaN" in md  # the failed run, with its error
    assert "![" in md and "plots/fid_vs_s_eval.png" in md
    assert "winner decided" in md and "pooled (df" in md
    assert "95% interval (Student t" in md
    assert "classifier FID of" in md and "steps) vs the" in md  # what each FID is
    assert "Warning: 1 of 12 runs" in md


def test_report_html_is_self_contained(report_root: Path):
    page = (report_root / "grids" / "rich" / "report" / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]{0,40})', page)
    assert len(sources) == 6 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "font-weight: bold" in page and "<table" in page
    assert "http://" not in page and "https://" not in page


def test_cli_report_prints_the_html_path(smoke_root: Path, capsys):
    assert main(["--root", str(smoke_root), "report", "smoke"]) == 0
    captured = capsys.readouterr()
    path = Path(captured.out.strip().splitlines()[-1])
    assert path == smoke_root / "grids" / "smoke" / "report" / "report.html" and path.exists()
    assert captured.err.startswith("warning: 1 of 7 runs")


def test_a_published_report_holds_what_a_repository_should(smoke_root: Path, capsys):
    out = smoke_root / "docs" / "results" / "smoke"
    assert main(["--root", str(smoke_root), "report", "smoke", "--publish", "--out", str(out)]) == 0
    assert Path(capsys.readouterr().out.strip().splitlines()[-1]) == out / "report.md"
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"report.md", "results.csv", "plots/fid_vs_s_eval.png"} <= files
    assert not [f for f in files if f.endswith((".html", ".parquet", ".svg"))]
    md = (out / "report.md").read_text()
    assert "(plots/fid_vs_s_eval.png)" in md and ".svg" not in md and "Code: " in md


def test_cli_report_unknown_grid_exits_2(tmp_path: Path, capsys):
    assert main(["--root", str(tmp_path), "report", "nope"]) == 2
    assert "grid 'nope' has never been swept under" in capsys.readouterr().err


def test_report_of_bench_rows_only(tmp_path: Path, capsys):
    import json

    rows = [
        {"measure": "train", "impl": "cfh", "model": "T", "attention": "sdpa", "dtype": "fp32",
         "train_img_per_s": 27.8, "mfu": 0.34, "params": 8.5e5, "speedup_vs_reference": 1.33},
        {"measure": "sample", "impl": "cfh", "model": "T", "attention": "sdpa", "dtype": "fp32",
         "s_eval": 16, "kv_cache": True, "sample_img_per_s": 30.0, "params": 8.5e5,
         "speedup_vs_recompute": 3.4},
        {"measure": "extract", "impl": "cfh", "extractor": "inception", "extract_ms_per_img": 9.0},
        {"measure": "train", "impl": "cfh", "model": "S", "error": "out of memory"},
    ]  # fmt: skip
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "b.json").write_text(json.dumps({"kind": "bench", "rows": rows}))
    assert main(["--root", str(tmp_path), "report"]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "train speedup vs reference" in md and "KV vs recompute S=16" in md
    assert "extract ms/img inception" in md and "out of memory" not in md.split("## Tables")[1]
    # one model size: nothing to plot throughput against
    assert not (tmp_path / "report" / "plots" / "throughput_vs_params.png").exists()


def test_report_of_an_empty_root(tmp_path: Path, capsys):
    assert main(["--root", str(tmp_path), "report"]) == 0
    assert "No FID results yet" in (tmp_path / "report" / "report.md").read_text()


def test_report_out_that_is_a_file_exits_2(tmp_path: Path, capsys):
    out = tmp_path / "a_file"
    out.write_text("")
    assert main(["--root", str(tmp_path), "report", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "is a file" in err and "Traceback" not in err


def test_single_seed_winners_use_the_stored_seed_variance(tmp_path: Path):
    from conftest import write_smoke_grid

    from reports.report import write_report
    from reports.results import ResultsWarning
    from reports.winners import stored_noise

    write_smoke_grid(tmp_path, seeds=(0,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResultsWarning)
        md = write_report(tmp_path, "smoke").with_suffix(".md").read_text()
    winners = md[md.index("## Winner") : md.index("## Tables")]
    assert "seed std of the shipped smoke baseline (df" in winners  # and it says which noise
    assert 15 < stored_noise("smoke") < 30  # the 3-seed baseline's pooled std (about 21)
    assert stored_noise("no-such-grid") is None


def test_a_submitted_point_without_files_is_pending_not_damaged(tmp_path: Path):
    from reports.results import scan

    run = tmp_path / "runs" / "abcdef0123"
    run.mkdir(parents=True)  # the sweep made the folder; no job has written to it yet
    table = scan(tmp_path, None).table
    row = table[table["signature"] == "abcdef0123"].iloc[0]
    assert row["state"] == "pending" and row["problems"] == ""


def test_plot_captions_say_what_is_shown(report_root: Path, smoke_root: Path):
    md = (report_root / "grids" / "rich" / "report" / "report.md").read_text()
    assert "plots/training_curves.png" in md  # model S runs have two checkpoints evaluated
    assert "FID vs checkpoint step (right; runs with two or more checkpoints evaluated)" in md
    assert "analytic sampling FLOPs per image (right), which do not move with the machine" in md
    assert "img/s are measured: they move with the machine's load" in md  # model-size table
    legend = "*bold: best S_train/model in each column (lowest); †: best S_eval in each row"
    assert legend in md  # model varies too: a row is an (S_train, model) pair
    assert "Class accuracy by S_train (rows) and S_eval (columns)" in md  # the classifier's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["--root", str(smoke_root), "report", "smoke"]) == 0
    md = (smoke_root / "grids" / "smoke" / "report" / "report.md").read_text()
    assert "plots/training_loss.png" in md and "training_curves" not in md  # one checkpoint
    assert "Training loss vs training step (no FID over training: each run has one" in md
    assert "Training loss and FID" not in md
