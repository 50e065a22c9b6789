"""benchmarks/gpu_check.sh, the prepared GPU check, run end to end on the CPU (GPU_CHECK_TINY=1).

GPU time is lent in minutes, so a check that broke on this machine (a renamed bench option, a
JSON key its summary reads) would waste them. This runs the script as the device tool will:
cfh installed with --no-index --no-deps into a target folder, the work folder apart from the
folder of results to bring back ($OUT), a deadline. Stages after the first may run out of their
limits on a loaded machine, so only the first stage's rows, the summary and the copied results
are required; a stage cut short must say so in the summary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_gpu_check_runs_its_stages_and_brings_back_its_results(tmp_path: Path) -> None:
    work, results, wheels = tmp_path / "work", tmp_path / "results", tmp_path / "wheels"
    wheels.mkdir()  # the venv already holds what the GPU machine gets as wheels
    env = {
        **os.environ,
        "GPU_CHECK_TINY": "1",
        "PYTHON": sys.executable,
        "WHEELS": str(wheels),
        "GPU_CHECK_DIR": str(work),
        "OUT": str(results),
        "DEADLINE_S": "240",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    summary = out[out.index("== summary") :]
    assert "bench train  T   cfh/sdpa: batch 4  step" in summary, summary
    assert "x the reference" in summary, summary  # the CPU run benches the reference at T
    assert "cfh/flex: error: NotImplementedError" in summary  # flex has no CPU backward
    for name in ("bench_xl", "bench_compiled", "bench_sample"):  # rows, or said to be missing
        assert (work / f"{name}.json").is_file() or f"{name}: no rows" in summary, summary
    if (work / "bench_xl.json").is_file():
        assert "bench train  XS  cfh/sdpa: batch 4  step" in summary, summary
    rows = json.loads((work / "bench_train.json").read_text())["rows"]
    assert {(r["model"], r["impl"], r["attention"]) for r in rows} == {
        ("T", "cfh", "sdpa"),
        ("T", "cfh", "flex"),
        ("T", "reference", "explicit"),
    }
    brought = sorted(p.name for p in results.iterdir())
    assert len(brought) <= 8, brought  # what the device tool brings back at most
    assert {"bench_train.json", "logs.tar.gz"} <= set(brought), brought
    assert (work / "run" / "metrics.jsonl").is_file() == ("metrics.jsonl" in brought)
