"""Issue 30, point 5: a near miss (grid, config key, group option, choice) gets "did you mean"."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

CASES = [
    (["sweep", "smok", "--dry-run"], "unknown grid 'smok' (did you mean 'smoke'?)"),
    (["train", "train.stepz=3"], "did you mean 'train.steps'"),
    (["train", "data=digit"], "unknown data='digit' (did you mean 'digits'"),
    (["train", "train.order=rastr"], "(did you mean 'raster'?)"),
    (["evaluate", "eval.extractor=inceptoin"], "(did you mean 'inception'?)"),
]


@pytest.mark.parametrize(("argv", "expected"), CASES)
def test_a_near_miss_is_named_in_one_line_in_under_a_second(tmp_path, argv, expected):
    start = time.perf_counter()
    run_dir = [] if argv[0] == "sweep" else [f"run_dir={tmp_path / 'run'}"]
    cmd = [sys.executable, "-m", "harness.cli", "--root", str(tmp_path), *argv, *run_dir]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    took = time.perf_counter() - start
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], out.stderr
    assert not (tmp_path / "run").exists()
    # a fresh interpreter included; the refusal itself comes before torch is imported
    assert took < 5, took


def test_no_suggestion_when_nothing_is_close():
    from core.config.spec import did_you_mean

    assert did_you_mean("zzzz", ["raster", "random"]) == ""
    assert did_you_mean("randm", ["raster", "random"]) == " (did you mean 'random'?)"
