"""Plots: every figure is written as a non-empty valid PNG plus an SVG; no data, no crash."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
from PIL import Image

from reports import plots
from reports.results import ResultsWarning, load_results

EXPECTED = (
    "fid_vs_s_eval",
    "heatmap_s_train_s_eval",
    "training_curves",
    "throughput_vs_params",
    "fid_vs_cost",
    "samples",
)


def test_every_plot_is_a_valid_png_and_svg(report_root: Path):
    folder = report_root / "grids" / "rich" / "report" / "plots"
    for name in EXPECTED:
        png, svg = folder / f"{name}.png", folder / f"{name}.svg"
        assert png.stat().st_size > 5_000, name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(png) as im:
            im.verify()
            assert im.size[0] > 300 and im.size[1] > 200
        assert svg.stat().st_size > 5_000 and b"<svg" in svg.read_bytes()[:2000]


def test_pareto_front_keeps_only_undominated_points():
    pts = pd.DataFrame({"cost": [1, 2, 2, 3, 4], "fid": [30.0, 20.0, 25.0, 22.0, 10.0]})
    front = plots.pareto_front(pts, "cost")
    assert front[["cost", "fid"]].values.tolist() == [[1, 30.0], [2, 20.0], [4, 10.0]]


def test_no_results_means_no_plots_and_no_crash(tmp_path: Path):
    df = load_results(tmp_path)
    assert plots.all_plots(df, pd.DataFrame(columns=["signature", "step"]), tmp_path / "p") == {}


def test_runs_without_evals_still_plot_their_loss(smoke_root: Path, tmp_path: Path):
    from reports.results import scan

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResultsWarning)
        r = scan(smoke_root, "smoke")
    table = r.table.assign(fid=float("nan"))
    made = plots.all_plots(table, r.curves, tmp_path)
    assert "training_loss" in made and "fid_vs_s_eval" not in made
    assert "training_curves" not in made  # its name says what it shows: loss only


def test_fid_over_training_only_for_runs_with_two_checkpoints(smoke_root: Path, tmp_path: Path):
    from reports.results import scan

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResultsWarning)
        r = scan(smoke_root, "smoke")  # every run has one checkpoint evaluated
    made = plots.all_plots(r.table, r.curves, tmp_path / "one")
    assert "training_loss" in made and "training_curves" not in made
    two = r.table[r.table["fid"].notna()].iloc[:2].assign(ckpt_step=150.0)  # one run, 2 ckpts
    both = pd.concat([r.table, two], ignore_index=True)
    assert two["signature"].nunique() == 1
    made = plots.all_plots(both, r.curves, tmp_path / "two")
    assert "training_curves" in made and "training_loss" not in made
