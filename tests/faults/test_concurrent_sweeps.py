"""Five `cfh sweep` of one grid at once submit every point exactly once (local and SLURM).

The sweeps are real processes started together; the grid folder's lock makes them plan and
submit one after another, so all but one find the points already submitted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from core.io import read_jsonl, read_status
from harness.launch.runs import read_submission

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

BASE = {
    "model": "T",
    "data": "digits",
    "train.steps": 4,
    "train.batch_size": 16,
    "train.ckpt_every": 2,
    "train.log_every": 1,
}


def write_grid(folder: Path, resources: dict) -> Path:
    name = f"conc_{uuid.uuid4().hex[:6]}"  # unique job names in the cluster's accounting
    body = {"base": BASE, "resources": resources, "axes": {"seed": [1, 2]}, "eval": False}
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(body))
    return path


def sweep_five(root: Path, grid: Path) -> list[str]:
    """Start five sweeps of the grid together; their outputs once all have ended."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("CFH_CACHE", str(REPO / ".cache" / "cfh"))
    cmd = [sys.executable, "-m", "harness.cli", "--root", str(root), "sweep", str(grid)]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(5)
    ]
    outs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=400)
        outs.append(out.decode())
    return outs


def run_dirs(root: Path, grid: Path) -> list[Path]:
    plan = json.loads((root / "grids" / grid.stem / "plan.json").read_text())
    return [root / "runs" / p["signature"] for p in plan["points"]]


def assert_each_point_ran_once(root: Path, grid: Path, outs: list[str]) -> None:
    dirs = run_dirs(root, grid)
    assert len(dirs) == 2
    for rdir in dirs:
        sub = read_submission(rdir)
        assert sub["job_id"] and not sub.get("history"), (sub, outs)  # one job, never two
        status = read_status(rdir)
        assert status["state"] == "completed" and status["attempts"] == 1, (status, outs)
        steps = [r["step"] for r in read_jsonl(rdir / "metrics.jsonl")]
        assert steps == [1, 2, 3, 4], (steps, outs)  # one trainer, not two on one folder


def test_five_local_sweeps_submit_each_point_once(tmp_path):
    grid = write_grid(tmp_path, {"cluster.parallelism": 2})
    outs = sweep_five(tmp_path / "out", grid)
    assert sum("plan: 2 to submit" in o for o in outs) == 1, outs
    assert sum("plan: 0 to submit, 2 to skip" in o for o in outs) == 4, outs
    assert_each_point_ran_once(tmp_path / "out", grid, outs)


@pytest.mark.slurm
def test_five_slurm_sweeps_submit_each_point_once(tmp_path, slurm_cluster):
    resources = {"cluster": "slurm", **slurm_cluster.profile()}
    resources = {k: v for k, v in resources.items() if k not in ("name", "backend")}
    grid = write_grid(tmp_path, resources)
    root = tmp_path / "out"
    outs = sweep_five(root, grid)
    assert sum("plan: 2 to submit" in o for o in outs) == 1, outs
    wait = subprocess.run(
        [sys.executable, "-m", "harness.cli", "--root", str(root), "sweep", str(grid), "--wait"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "2 completed" in wait.stdout, wait.stdout + wait.stderr
    assert_each_point_ran_once(root, grid, outs)
    time.sleep(1)
    acct = subprocess.run(
        ["sacct", "-n", "-X", "-P", f"--name=cfh-{grid.stem}", "-o", "JobID"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert len(acct.stdout.split()) == 2, acct.stdout  # two array tasks in all
