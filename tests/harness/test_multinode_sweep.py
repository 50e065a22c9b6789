"""`cfh sweep` across two SLURM nodes (tests/conftest.py: slurm_two_nodes, issue 31).

Each node is a slurmd in its own network namespace with its own hostname (cfh-node1, cfh-node2)
and address; a point with `cluster.nodes=2` runs one gloo rank (or two) on each, meeting at the
first node of the job's node list. Tiny real runs: model T on digits, 40 steps, 20 samples.

- the 2-node points (1 and 2 tasks per node) train across both nodes, write their metrics,
  checkpoints and result once, record their nodes, and show them in `cfh status` and the report;
  `comm_frac` measures the gradient all-reduces between the nodes;
- exactness: the 2-node run of 2 ranks equals the 1-node run of 2 ranks bitwise (weights, EMA,
  optimizer), and its FID equals the 1-node value and that of one process;
- `torchrun --nnodes 2` started by srun trains the 4-rank point to the same weights;
- faults: USR2 (the time limit's warning) and then `scontrol requeue` of the whole job resume
  bitwise, the requeued attempts with the ranks placed cyclically over the nodes; a rank's
  process killed on node 2 fails the job at once, naming that rank and node, and
  `cfh sweep --retry` resumes it; a node taken down leaves a new job pending and `cfh status`
  says why, and the job runs once the node is back.

It reconfigures the cluster that the slurm_cluster fixture starts, so it is one of conftest's
SLURM_MODULES. Every wait is bounded (wait_for, subprocess timeouts, the module's timeout mark).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from sweep_procs import cfh, plan_sigs, wait_for

from core.io import read_jsonl, read_status
from harness.launch.executors import job_port
from harness.launch.runs import read_submission

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.multinode, pytest.mark.slurm, pytest.mark.timeout(420)]

STEPS = 40
BASE = {
    "model": "T",
    "data": "digits",
    "train.batch_size": 16,
    "train.steps": STEPS,
    "train.ckpt_every": 4,
    "train.log_every": 2,
    "train.dist_timeout_s": 30,
    "sample.num": 20,
    "sample.steps": 4,
    "sample.batch_size": 20,
    "eval.extractor": "classifier",
    "eval.kid_subset_size": 10,
}
TRAIN_ARGS = [f"{k}={v}" for k, v in BASE.items() if k.split(".")[0] not in ("sample", "eval")]
FINAL = f"checkpoints/ckpt_{STEPS:08d}.pt"


def slurm_resources(nodes, **over) -> dict:
    """The grid's resources on the two-node cluster (one CPU per rank)."""
    return {
        "cluster": "slurm",
        "partition": nodes.partition,
        "nodes": 2,
        "tasks_per_node": 1,
        "cpus_per_task": 1,
        "mem_gb": 1,
        "timeout_min": 10,
        "signal_delay_s": 30,
        "max_num_timeout": 3,
        **over,
    }


def write_grid(path: Path, resources: dict, body: str = "", **base) -> Path:
    merged = {**BASE, **{k.replace("__", "."): v for k, v in base.items()}}
    body = body or "eval:\n  axes:\n    sample.ar_steps: [1]\n"
    text = f"base: {json.dumps(merged)}\nresources: {json.dumps(resources)}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + textwrap.dedent(body))
    return path


def status_of(rdir: Path) -> dict:
    return read_status(rdir) if (rdir / "status.json").exists() else {}


def at_step(rdir: Path, step: int):
    """A wait_for predicate: the run logged `step`; fails at once when the run failed."""

    def check() -> bool:
        status = status_of(rdir)
        assert status.get("state") != "failed", status.get("error")
        return status.get("step", 0) >= step

    return check


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def max_weight_diff(a: dict, b: dict) -> float:
    """The largest |difference| over model, EMA and optimizer state (0.0: bitwise equal)."""
    worst = 0.0
    for part in ("model", "ema"):
        for name, t in a[part].items():
            worst = max(worst, (t.double() - b[part][name].double()).abs().max().item())
    for key, state in a["optimizer"]["state"].items():
        for name, t in state.items():
            other = torch.as_tensor(b["optimizer"]["state"][key][name])
            worst = max(worst, (torch.as_tensor(t).double() - other.double()).abs().max().item())
    return worst


def assert_bitwise(a: dict, b: dict, what: str) -> None:
    assert a["step"] == b["step"] and a["world_size"] == b["world_size"], what
    for part in ("model", "ema"):
        for name, t in a[part].items():
            assert torch.equal(t, b[part][name]), f"{what}: {part}.{name} differs"
    for key, state in a["optimizer"]["state"].items():
        for name, t in state.items():
            other = b["optimizer"]["state"][key][name]
            assert torch.equal(torch.as_tensor(t), torch.as_tensor(other)), (what, key, name)


def rank_lines(root: Path, job: str) -> list[str]:
    """The `[cfh] rank R/W ... on HOST; rendezvous ADDR:PORT` lines of a job's task logs."""
    lines = []
    for log in sorted((root / "submitit").glob(f"{job}_*_log.err")):
        lines += [ln for ln in log.read_text().splitlines() if ln.startswith("[cfh] rank ")]
    return lines


def raw_job_id(job: str) -> str:
    """The SLURM_JOB_ID of a job or array task (sacct's JobIDRaw)."""
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", job, "-o", "JobIDRaw"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    ids = out.stdout.split()
    return ids[0] if ids else job.split("_")[0]


@pytest.fixture(scope="module")
def cache():
    os.environ.setdefault("CFH_CACHE", str(REPO / ".cache" / "cfh"))  # the cached classifier


@pytest.fixture(scope="module")
def swept(slurm_two_nodes, cache, tmp_path_factory):
    """The 2-node grid (1 and 2 tasks per node: 2 and 4 ranks) swept to completion."""
    nodes = slurm_two_nodes
    tmp = tmp_path_factory.mktemp("two_nodes")
    grid = write_grid(
        tmp / "two_nodes.yaml",
        slurm_resources(nodes),
        "axes:\n  cluster.tasks_per_node: [1, 2]\neval:\n  axes:\n    sample.ar_steps: [1]\n",
    )
    root = tmp / "out"
    t0 = time.perf_counter()
    code, out = cfh("--root", str(root), "sweep", str(grid), "--wait", "--every", "60")
    seconds = time.perf_counter() - t0
    print(f"2-node grid (2 and 4 ranks) on SLURM: {seconds:.1f} s")
    world = {}
    for sig in plan_sigs(root, "two_nodes"):
        world[load(root / "runs" / sig / FINAL)["world_size"]] = root / "runs" / sig
    return {"nodes": nodes, "root": root, "code": code, "out": out, "world": world, "tmp": tmp}


def test_two_node_points_train_across_both_nodes_and_write_once(swept):
    nodes, root = swept["nodes"], swept["root"]
    assert swept["code"] == 0 and "two_nodes: 2 completed" in swept["out"], swept["out"]
    assert sorted(swept["world"]) == [2, 4]
    for world, rdir in swept["world"].items():
        status = read_status(rdir)
        assert status["nodes"] == nodes.names and status["num_nodes"] == 2, status
        assert status["state"] == "completed" and status["attempts"] == 1
        rows = read_jsonl(rdir / "metrics.jsonl")
        assert [r["step"] for r in rows] == list(range(2, STEPS + 1, 2))  # once, by rank 0
        assert all(0.0 < r["comm_frac"] < 1.0 for r in rows), rows[-1]
        log = (rdir / "log.txt").read_text()
        assert log.count("finished at step 40") == 1 and f"world={world}" in log
        assert len(list((rdir / "eval").glob("*.json"))) == 1
        job = read_submission(rdir)["job_id"]
        port = job_port(raw_job_id(job))
        per_node = world // 2
        expect = sorted(
            f"[cfh] rank {r}/{world} (local rank {r % per_node}, node {r // per_node}) on "
            f"{nodes.names[r // per_node]}; rendezvous {nodes.names[0]}:{port}"
            for r in range(world)
        )
        assert sorted(rank_lines(root, job)) == expect
        print(f"{world} ranks on 2 nodes: comm_frac {rows[-1]['comm_frac']:.3f} at step 40")
    code, out = cfh("--root", str(root), "status", "two_nodes")
    header, *rows = out.splitlines()
    assert header.split()[-2:] == ["nodes", "hosts"], out
    assert sum(r.split()[-2:] == ["2", "cfh-node[1-2]"] for r in rows) == 2, out
    code, out = cfh("--root", str(root), "report", "two_nodes")
    assert code == 0, out
    report = root / "grids" / "two_nodes" / "report"
    assert "Nodes: 2 nodes cfh-node[1-2] (2 runs)." in (report / "report.md").read_text()
    import pandas as pd

    table = pd.read_csv(report / "results.csv")
    assert set(table["num_nodes"]) == {2} and set(table["nodes"]) == {"cfh-node[1-2]"}
    assert (table["comm_frac"] > 0).all()


def test_two_nodes_equal_one_node_bitwise_and_score_the_same(swept, tmp_path):
    """2 ranks on 2 nodes against 2 ranks on 1 node (the local executor's tasks) with the same
    global batch: the project's bar for rank layouts is bitwise (as test_distributed.py's)."""
    two = swept["world"][2]
    ranks = {"cluster": "local", "tasks_per_node": 2, "cpus_per_task": 1}  # 1 thread, as there
    local = write_grid(tmp_path / "two_nodes.yaml", ranks)
    t0 = time.perf_counter()
    code, out = cfh("--root", str(tmp_path / "out"), "sweep", str(local), "--wait")
    print(f"1-node 2-rank reference (local executor): {time.perf_counter() - t0:.1f} s")
    one = tmp_path / "out" / "runs" / two.name
    assert code == 0 and read_status(one)["state"] == "completed", out
    a, b = load(two / FINAL), load(one / FINAL)
    print(f"max |2-node - 1-node| over weights, EMA, optimizer: {max_weight_diff(a, b)}")
    assert_bitwise(a, b, "2 nodes vs 1 node")
    fid_two = next(iter(read_status(two)["evals"].values()))["fid"]
    fid_one = next(iter(read_status(one)["evals"].values()))["fid"]
    # and one process scoring the 2-node run's weights afresh (1 rank draws all 20 samples)
    alone = tmp_path / "alone"
    shutil.copytree(two, alone, ignore=shutil.ignore_patterns("samples", "eval", ".r*"))
    args = [f"{k}={v}" for k, v in BASE.items() if k.split(".")[0] in ("sample", "eval")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "SLURM_JOB_ID"):
        env.pop(key, None)
    done = subprocess.run(
        [sys.executable, "-m", "harness.cli", "evaluate", f"run_dir={alone}", *args,
         "sample.ar_steps=1"],
        capture_output=True, text=True, timeout=180, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    fid_alone = json.loads(done.stdout.strip().splitlines()[-1])["fid"]
    print(f"FID 2 nodes {fid_two!r}, 1 node {fid_one!r}, 1 process {fid_alone!r}")
    assert fid_two == fid_one == fid_alone


def test_torchrun_started_by_srun_on_two_nodes_trains_the_same_weights(swept, tmp_path):
    """The README's torchrun-under-srun recipe (one agent per node, c10d rendezvous on the first
    node of the job's node list): the 4-rank weights of the sweep's 2x2 point, bitwise."""
    nodes = swept["nodes"]
    run = tmp_path / "torchrun"
    launch = (
        f"exec {sys.executable} -m torch.distributed.run --nnodes=$SLURM_NNODES "
        "--nproc_per_node=2 --rdzv_backend=c10d --rdzv_id=$SLURM_JOB_ID "
        "--rdzv_endpoint=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1):29533 "
        f"-m harness.cli train {' '.join(TRAIN_ARGS)} run_dir={run}"
    )
    cmd = ["srun", "-p", nodes.partition, "-N2", "--ntasks-per-node=1", "-c", "2", "-t", "5"]
    t0 = time.perf_counter()
    done = subprocess.run([*cmd, "bash", "-c", launch], capture_output=True, text=True, timeout=300)
    print(f"srun + torchrun --nnodes 2 --nproc_per_node 2: {time.perf_counter() - t0:.1f} s")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert done.stdout.count('"step": 40') == 1  # rank 0 prints the summary
    assert_bitwise(load(run / FINAL), load(swept["world"][4] / FINAL), "torchrun vs sweep")
    assert read_status(run)["state"] == "completed"


# a requeued attempt (SLURM_RESTART_COUNT > 0) places the ranks cyclically: 0,2 on node 1, 1,3
# on node 2 (the first attempt: block, 0,1 and 2,3). No `${...}` in a setup line: the run's
# config.yaml stores the profile, and OmegaConf would read it as an interpolation.
CYCLIC_ON_RESTART = (
    'export SLURM_DISTRIBUTION=$([ "0$SLURM_RESTART_COUNT" -gt 0 ] && echo cyclic || echo block)'
)


def test_usr2_then_scontrol_requeue_resume_bitwise_in_another_rank_order(swept, tmp_path):
    nodes = swept["nodes"]
    resources = slurm_resources(nodes, tasks_per_node=2, setup=[CYCLIC_ON_RESTART])
    grid = write_grid(tmp_path / "requeue.yaml", resources, "seeds: [0]\neval: false\n")
    root = tmp_path / "out"
    t0 = time.perf_counter()
    code, out = cfh("--root", str(root), "sweep", str(grid))
    assert code == 0 and "submitted" in out, out
    (sig,) = plan_sigs(root, "requeue")
    rdir = root / "runs" / sig
    assert sig == swept["world"][4].name
    job = read_submission(rdir)["job_id"]
    wait_for(at_step(rdir, 6), 180, "step 6 of attempt 1", poll_s=0.1)
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
    seen = set()

    def restarted(n: int):
        def check():
            _, text = cfh("--root", str(root), "status", "requeue")
            seen.update(w for w in ("requeued", "interrupted") if f" {w} " in text)
            s = status_of(rdir)
            return s.get("attempts", 0) >= n and s.get("state") == "running"

        return check

    wait_for(restarted(2), 180, "the job requeued after USR2 to run again")
    at = status_of(rdir).get("step", 0)
    wait_for(at_step(rdir, at + 6), 120, "attempt 2 to train", poll_s=0.1)
    seen.clear()
    subprocess.run(["scontrol", "requeue", raw_job_id(job)], check=True, timeout=30)
    wait_for(restarted(3), 180, "the job requeued by scontrol to run again")
    code, out = cfh("--root", str(root), "sweep", str(grid), "--wait", "--every", "60")
    print(f"USR2 + scontrol requeue of a 2-node job, to the end: {time.perf_counter() - t0:.1f} s")
    assert "requeue: 1 completed" in out, out
    status = read_status(rdir)
    assert status["attempts"] == 3 and read_submission(rdir)["job_id"] == job, status
    assert "requeued" in seen, seen  # `cfh status` said so while SLURM held it (SIGTERM'd)
    log = (rdir / "log.txt").read_text()
    assert log.count("resumed from step") == 2, log
    lines = rank_lines(root, job)
    block = "[cfh] rank 1/4 (local rank 1, node 0) on cfh-node1"
    cyclic = "[cfh] rank 1/4 (local rank 0, node 1) on cfh-node2"
    assert sum(ln.startswith(block) for ln in lines) == 1, lines  # attempt 1
    assert sum(ln.startswith(cyclic) for ln in lines) == 2, lines  # attempts 2 and 3
    assert_bitwise(load(rdir / FINAL), load(swept["world"][4] / FINAL), "after two requeues")


def _task_pid(job: str, rank: int, node: str) -> int | None:
    """The pid of the job's task `rank` on `node` (its SLURM environment), seen from the host:
    the nodes share the host's process namespace."""
    raw = raw_job_id(job)
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if b"submitit.core._submit" not in (proc / "cmdline").read_bytes():
                continue
            env = dict(
                item.split(b"=", 1) for item in (proc / "environ").read_bytes().split(b"\0")
                if b"=" in item
            )  # fmt: skip
        except OSError:
            continue
        if (
            env.get(b"SLURM_JOB_ID") == raw.encode()
            and env.get(b"SLURM_PROCID") == str(rank).encode()
            and env.get(b"SLURMD_NODENAME") == node.encode()
        ):
            return int(proc.name)
    return None


def test_a_rank_killed_on_node2_fails_the_job_naming_it_and_retry_resumes(swept, tmp_path):
    nodes = swept["nodes"]
    grid = write_grid(tmp_path / "killed.yaml", slurm_resources(nodes))
    root = tmp_path / "out"
    code, out = cfh("--root", str(root), "sweep", str(grid))
    assert code == 0, out
    (sig,) = plan_sigs(root, "killed")
    rdir = root / "runs" / sig
    assert sig == swept["world"][2].name
    job = read_submission(rdir)["job_id"]
    wait_for(at_step(rdir, 6), 180, "step 6", poll_s=0.1)
    pid = wait_for(
        lambda: _task_pid(job, 1, nodes.names[1]), 30, "rank 1's process on node 2", poll_s=0.1
    )
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: status_of(rdir).get("state") == "failed", 60, "the run to be failed", poll_s=0.1
    )
    named_s = time.monotonic() - t0
    status = read_status(rdir)
    print(f"rank 1 killed on cfh-node2: failed, named, after {named_s:.2f} s: {status['error']}")
    assert named_s < BASE["train.dist_timeout_s"]
    assert status["error"].startswith(f"rank 1/2 on cfh-node2 (pid {pid}) lost"), status
    assert status["failed_rank"] == 1 and status["failed_host"] == "cfh-node2"

    def gone() -> bool:
        q = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True, timeout=30)
        return q.stdout.strip() == ""

    wait_for(gone, 60, "the job to leave the queue")
    code, out = cfh("--root", str(root), "status", "killed")
    assert code == 1 and "killed: 1 failed" in out and "rank 1/2 on cfh-node2" in out, out
    code, out = cfh("--root", str(root), "sweep", str(grid), "--retry", "--wait", "--every", "60")
    assert "killed: 1 completed" in out, out
    assert read_status(rdir)["attempts"] == 2
    assert "resumed from step" in (rdir / "log.txt").read_text()
    assert_bitwise(load(rdir / FINAL), load(swept["world"][2] / FINAL), "after the kill")


def test_a_node_down_leaves_a_two_node_job_pending_and_status_says_why(swept, tmp_path):
    nodes = swept["nodes"]
    down = nodes.names[1]
    grid = write_grid(tmp_path / "down.yaml", slurm_resources(nodes), "seeds: [7]\neval: false\n")
    root = tmp_path / "out"
    # The last test's job may still be ending on the nodes (`--wait` returns once the run is
    # completed, before SLURM lets go of the job). A node set down under a job has that job
    # requeued, and the step-complete message that follows at once counts as the node answering:
    # with ReturnToService=2 slurmctld puts it back in service within 40 ms (seen in CI).
    wait_for(lambda: set(nodes.states().values()) == {"idle"}, 60, "both nodes idle", poll_s=0.2)
    update = ["scontrol", "update", f"nodename={down}"]
    subprocess.run([*update, "state=down", "reason=cfh multinode test"], check=True, timeout=30)
    try:
        code, out = cfh("--root", str(root), "sweep", str(grid), "train.steps=8")
        assert code == 0 and "submitted" in out, out

        def says_why() -> str:
            _, text = cfh("--root", str(root), "status", "down")
            return text if "down: 1 pending" in text and "cfh multinode test" in text else ""

        text = wait_for(says_why, 60, "`cfh status` to say why it waits", poll_s=1)
        print(text)
        assert f"(in partition {nodes.partition}: {down} down: cfh multinode test)" in text
        assert "  ^ pending: " in text  # squeue's reason: ReqNodeNotAvail or "Nodes required..."
    finally:  # only a node still down can be resumed; anything else is the test's own failure
        if nodes.states().get(down, "").startswith(("down", "drain")):
            subprocess.run([*update, "state=resume"], check=True, timeout=30)
    code, out = cfh("--root", str(root), "sweep", str(grid), "train.steps=8", "--wait")
    assert "down: 1 completed" in out, out
    (sig,) = plan_sigs(root, "down")
    assert read_status(root / "runs" / sig)["nodes"] == nodes.names
