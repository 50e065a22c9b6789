"""Fixtures: small grids of synthetic run folders written by the tests themselves."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import synthetic as sy

from reports.results import ResultsWarning


def write_smoke_grid(root: Path, name: str = "smoke", seeds=(0, 1), samples=False) -> list[Path]:
    """S_train fixed 1 / 4 and decay 0.9, S_eval 1 and 4, `seeds`; plus one failed run."""
    runs = []
    for seed in seeds:
        for st in (1, 4):
            runs.append(
                sy.write_run(root, ar_mode="fixed", ar_steps=st, seed=seed, samples=samples)
            )
        runs.append(sy.write_run(root, ar_mode="decay", ar_decay=0.9, seed=seed, samples=samples))
    runs.append(sy.write_run(root, ar_mode="fixed", ar_steps=64, seed=0, state="failed"))
    sy.write_grid(root, name, runs)
    return runs


@pytest.fixture
def smoke_root(tmp_path: Path) -> Path:
    """A root holding grid 'smoke' (6 completed runs, 1 failed)."""
    write_smoke_grid(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def report_root(tmp_path_factory) -> Path:
    """A root with a richer grid (samples, checkpoints, two model sizes) and its report."""
    from reports.report import write_report

    root = tmp_path_factory.mktemp("report")
    runs = write_smoke_grid(root, "rich", seeds=(0, 1, 2), samples=True)
    for seed in (0, 1):
        runs.append(
            sy.write_run(root, model="S", ar_mode="decay", seed=seed, ckpt_steps=(150, 300))
        )
    sy.write_grid(root, "rich", runs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResultsWarning)
        write_report(root, "rich")
    return root
