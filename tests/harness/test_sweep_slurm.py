"""`cfh sweep/status/cancel` on the real local SLURM cluster (tests/conftest.py: slurm_cluster).

Tiny real runs (model T on digits, a few steps, 20 samples, classifier FID): a 4-point job
array to completion and a no-op second sweep; USR2 + requeue resuming bitwise-exactly; a raising
job shown failed and retried alone; cancel.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import torch
from sweep_procs import cfh, plan_sigs, wait_for

from core.io import read_status
from harness.launch.runs import read_submission

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TINY = {
    "model": "T",
    "data": "digits",
    "train.batch_size": 16,
    "train.ckpt_every": 2,
    "train.log_every": 2,
    "sample.num": 20,
    "sample.steps": 4,
    "sample.batch_size": 20,
    "eval.extractor": "classifier",
    "eval.kid_subset_size": 10,
}


def write_grid(path: Path, cluster, body: str, resources: dict | None = None, **base) -> Path:
    """A grid file: TINY base (updated with `base`, `__` for `.`), body, the cluster's slurm
    resources (updated with `resources`; cluster=None: those alone, on the local executor)."""
    merged = {**TINY, **{k.replace("__", "."): v for k, v in base.items()}}
    if cluster is None:
        resources = dict(resources or {})
    else:
        profile = {k: v for k, v in cluster.profile().items() if k not in ("name", "backend")}
        resources = {"cluster": "slurm", **profile, **(resources or {})}
    text = f"base: {json.dumps(merged)}\nresources: {json.dumps(resources)}\n"
    path.write_text(text + textwrap.dedent(body))
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory, slurm_cluster):
    """A sweep root shared by the tests of this module (points are shared across grids)."""
    os.environ.setdefault("CFH_CACHE", str(REPO / ".cache" / "cfh"))  # the cached classifier
    return tmp_path_factory.mktemp("slurm") / "out"


@pytest.fixture(scope="module")
def four(root, slurm_cluster, tmp_path_factory):
    """The 4-point grid swept to completion as one job array."""
    grid = write_grid(
        tmp_path_factory.mktemp("grids") / "four.yaml",
        slurm_cluster,
        """
        axes:
          train.ar.mode: [fixed]
          train.ar.steps: [1, 2, 4, 8]
        eval:
          axes:
            sample.ar_steps: [1, 4]
        """,
        train__steps=4,
    )
    t0 = time.perf_counter()
    code, out = cfh("--root", str(root), "sweep", str(grid), "--wait")
    print(f"4-point grid on SLURM: {time.perf_counter() - t0:.0f} s\n{out}")
    return {"grid": grid, "code": code, "out": out}


def test_four_point_array_completes_and_second_sweep_submits_nothing(root, four):
    assert four["code"] == 0, four["out"]
    sigs = plan_sigs(root, "four")
    jobs = [read_submission(root / "runs" / s)["job_id"] for s in sigs]
    assert len({j.split("_")[0] for j in jobs}) == 1, jobs  # one job array
    assert sorted(j.split("_")[1] for j in jobs) == ["0", "1", "2", "3"]
    code, out = cfh("--root", str(root), "status", "four")
    assert code == 0 and "four: 4 completed" in out, out
    for sig in sigs:
        status = read_status(root / "runs" / sig)
        assert len(status["evals"]) == 2
        assert all(isinstance(e["fid"], float) for e in status["evals"].values())
        row = next(line for line in out.splitlines() if line.startswith(sig))
        assert " completed " in row and "2/2" in row
    code, out = cfh("--root", str(root), "sweep", str(four["grid"]))
    assert "plan: 0 to submit, 4 to skip" in out and "submitted" not in out
    assert [read_submission(root / "runs" / s)["job_id"] for s in sigs] == jobs


def test_usr2_requeue_resumes_bitwise(root, slurm_cluster, tmp_path):
    body = "seeds: [0]\neval: false\n"  # one run
    grid = write_grid(tmp_path / "requeue.yaml", slurm_cluster, body, train__steps=40)
    ref_root = tmp_path / "reference"  # the same run, uninterrupted, under the same scheduler
    cfh("--root", str(ref_root), "sweep", str(grid))
    cfh("--root", str(root), "sweep", str(grid))
    (sig,) = plan_sigs(root, "requeue")
    rdir = root / "runs" / sig
    job = read_submission(rdir)["job_id"]
    wait_for(lambda: read_status(rdir).get("step", 0) >= 6, 300, "training to reach step 6")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    wait_for(lambda: read_status(rdir).get("attempts", 0) >= 2, 240, "the requeued job to start")
    code, out = cfh("--root", str(root), "sweep", str(grid), "--wait")
    code_ref, out_ref = cfh("--root", str(ref_root), "sweep", str(grid), "--wait")
    assert "requeue: 1 completed" in out and "requeue: 1 completed" in out_ref, out + out_ref
    assert "resumed from step" in (rdir / "log.txt").read_text()
    assert read_submission(rdir)["job_id"] == job  # requeued, not resubmitted
    final = "checkpoints/ckpt_00000040.pt"
    a = torch.load(rdir / final, weights_only=True)
    b = torch.load(ref_root / "runs" / sig / final, weights_only=True)
    for part in ("model", "ema"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part}.{name} differs after requeue"


def test_raising_job_is_failed_and_retried_alone(root, four, slurm_cluster, tmp_path):
    empty = tmp_path / "broken_images"  # valid up front; the job fails reading the image
    (empty / "a").mkdir(parents=True)
    for i in range(16):  # as many as a batch: a smaller folder is refused up front
        (empty / "a" / f"{i:02d}x.png").write_bytes(b"not a png")
    body = f"""
        include:
          - {{train.ar.steps: 1}}
          - {{data: imagefolder, data.root: {empty}, data.resolution: 8, data.patch_size: 1,
             data.num_classes: 1}}
        eval:
          axes:
            sample.ar_steps: [1, 4]
        """
    grid = write_grid(
        tmp_path / "raises.yaml", slurm_cluster, body, train__steps=4, train__ar__mode="fixed"
    )
    code, out = cfh("--root", str(root), "sweep", str(grid), "--wait")
    assert "plan: 1 to submit, 1 to skip" in out  # train.ar.steps=1 is a run of grid `four`
    code, out = cfh("--root", str(root), "status", "raises")
    assert code == 1 and "raises: 1 completed, 1 failed" in out, out
    assert "^ UnidentifiedImageError: cannot identify image file" in out and "x.png" in out
    assert "(log: " in out and "log.txt" in out  # the run's log: training lines + traceback
    good, bad = plan_sigs(root, "raises")
    good_job = read_submission(root / "runs" / good)["job_id"]
    bad_job = read_submission(root / "runs" / bad)["job_id"]
    code, out = cfh("--root", str(root), "sweep", str(grid), "--retry", "--wait")
    assert "plan: 1 to submit, 1 to skip" in out
    assert read_submission(root / "runs" / good)["job_id"] == good_job
    assert read_submission(root / "runs" / bad)["job_id"] != bad_job
    assert read_status(root / "runs" / bad)["attempts"] == 2


def test_cancel_leaves_points_cancelled(root, slurm_cluster, tmp_path):
    body = """
        axes:
          seed: [1, 2]
        eval: false
        """
    grid = write_grid(
        tmp_path / "long.yaml", slurm_cluster, body, train__steps=100000, train__ar__mode="fixed"
    )
    cfh("--root", str(root), "sweep", str(grid))
    sigs = plan_sigs(root, "long")
    wait_for(
        lambda: all(read_status(root / "runs" / s).get("state") == "running" for s in sigs),
        240,
        "both points to run",
    )
    code, out = cfh("--root", str(root), "cancel", "long", "train.ar.mode=fixed")
    assert "cancelled 2 points" in out, out
    jobs = [read_submission(root / "runs" / s)["job_id"] for s in sigs]

    def gone() -> bool:
        q = subprocess.run(["squeue", "-h", "-j", ",".join(jobs)], capture_output=True, text=True)
        return q.stdout.strip() == ""

    wait_for(gone, 120, "the cancelled jobs to leave the queue")
    code, out = cfh("--root", str(root), "status", "long")
    assert "long: 2 cancelled" in out, out
    code, out = cfh("--root", str(root), "sweep", str(grid), "--dry-run")
    assert "plan: 0 to submit, 2 to skip" in out and "cancelled; --retry resubmits it" in out


def test_two_task_point_trains_evaluates_and_requeue_resumes_exactly(root, slurm_cluster, tmp_path):
    """A point of 2 gloo ranks (cluster.tasks_per_node=2): USR2 mid-training requeues it, and
    it ends bitwise equal to the same 2-rank point run without interruption on the local
    executor (which runs its ranks as submitit local tasks)."""
    body = """
        eval:
          axes:
            sample.ar_steps: [1, 2]
        """
    ranks = {"tasks_per_node": 2, "cpus_per_task": 1}
    grid = write_grid(tmp_path / "ranks.yaml", slurm_cluster, body, ranks, train__steps=40)
    (tmp_path / "local").mkdir()
    local = write_grid(tmp_path / "local" / "ranks.yaml", None, body, ranks, train__steps=40)
    code, out = cfh("--root", str(root), "sweep", str(grid))
    assert code == 0 and "submitted" in out, out
    (sig,) = plan_sigs(root, "ranks")
    rdir = root / "runs" / sig
    job = read_submission(rdir)["job_id"]
    wait_for(lambda: read_status(rdir).get("step", 0) >= 6, 300, "training to reach step 6")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    ref_root = tmp_path / "reference"
    code, out = cfh("--root", str(ref_root), "sweep", str(local), "--wait")
    assert code == 0 and "[1/1]" in out and " completed" in out, out
    code, out = cfh("--root", str(root), "sweep", str(grid), "--wait")
    assert "ranks: 1 completed" in out, out
    status = read_status(rdir)
    assert status["attempts"] == 2 and read_submission(rdir)["job_id"] == job, status
    assert "resumed from step" in (rdir / "log.txt").read_text()
    final = "checkpoints/ckpt_00000040.pt"
    a = torch.load(rdir / final, weights_only=True)
    b = torch.load(ref_root / "runs" / sig / final, weights_only=True)
    assert a["world_size"] == b["world_size"] == 2
    for part in ("model", "ema"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part}.{name} differs after requeue"
    for key, state in a["optimizer"]["state"].items():
        assert all(torch.equal(v, b["optimizer"]["state"][key][n]) for n, v in state.items())
    ref = read_status(ref_root / "runs" / sig)
    assert len(status["evals"]) == 2
    assert {k: e["fid"] for k, e in status["evals"].items()} == {
        k: e["fid"] for k, e in ref["evals"].items()
    }


def test_until_decided_adds_seeds_through_slurm(root, slurm_cluster, four, tmp_path):
    """The four grid's runs (one seed each) and a finding between two of its settings: with no
    seed variance the finding is undecided, so round 1 adds seeds 1 and 2 for those two
    settings only; they run as SLURM jobs, and the sweep waits for them and judges again."""
    grid = write_grid(
        tmp_path / "four_decide.yaml",
        slurm_cluster,
        """
        axes:
          train.ar.mode: [fixed]
          train.ar.steps: [1, 2, 4, 8]
        eval:
          axes:
            sample.ar_steps: [1, 4]
        findings:
          - claim: S_train 1 beats 8 at S_eval 1
            better: {train.ar.steps: 1, sample.ar_steps: 1}
            worse: {train.ar.steps: 8, sample.ar_steps: 1}
        """,
        train__steps=4,
    )
    code, out = cfh(
        "--root", str(root), "sweep", str(grid), "--until-decided", "--max-seeds", "3",
        "--budget-hours", "1", "--every", "30",
    )  # fmt: skip
    assert code in (0, 1), out
    state = json.loads((root / "grids" / "four_decide" / "decide.json").read_text())
    first = state["rounds"][0]
    assert first["verdicts"][0]["verdict"] == "undecided"
    (added,) = first["added"]
    assert added["lever"] == "seeds" and added["seeds"] == [1, 2]
    plan = json.loads((root / "grids" / "four_decide" / "plan.json").read_text())
    seeded = [p for p in plan["points"] if p["axes"].get("seed") in (1, 2)]
    assert sorted((p["axes"]["train.ar.steps"], p["axes"]["seed"]) for p in seeded) == [
        (1, 1), (1, 2), (8, 1), (8, 2)
    ]  # fmt: skip
    for p in seeded:  # trained by SLURM jobs, not here
        rdir = root / "runs" / p["signature"]
        assert read_submission(rdir)["job_id"] and read_status(rdir)["state"] == "completed"
    assert len(state["rounds"]) >= 2 and state["finished_because"]
    code, out = cfh("--root", str(root), "status", "four_decide")
    assert "until-decided: round" in out, out
