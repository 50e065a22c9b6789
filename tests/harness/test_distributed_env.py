"""Where a rank of a multi-node job finds its rendezvous and its place, without a cluster.

harness.launch.executors.distributed_env reads SLURM's task variables (as srun sets them in a
job step, and as submitit's SLURM jobs have them); the two-node runs themselves are in
tests/harness/test_multinode_sweep.py. Also: the rank roll call that names a rank that died
(model.training.distributed.RankPresence, with a real process killed), the gradient
all-reduce timer's span arithmetic, and the node columns of `cfh status` and the report.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from core.io import read_status, record_failure, update_status
from core.runfolder import compact_hosts
from harness.launch.executors import distributed_env, expand_nodelist, job_port
from harness.launch.jobs import job_nodes
from harness.launch.status import Row, render

# What srun sets for task 3 of `sbatch -N2 --ntasks-per-node=2` (measured on the local cluster).
STEP_TASK_3 = {
    "SLURM_JOB_ID": "276",
    "SLURM_JOB_NODELIST": "cfh-node[1-2]",
    "SLURM_STEP_NODELIST": "cfh-node[1-2]",
    "SLURM_STEP_NUM_TASKS": "4",
    "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
    "SLURM_NTASKS": "4",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_STEP_ID": "0",
}


def test_a_slurm_task_gets_rank_world_local_rank_and_the_first_node_as_rendezvous():
    env = distributed_env(STEP_TASK_3)
    assert env == {
        "MASTER_ADDR": "cfh-node1",
        "MASTER_PORT": str(20000 + 276),
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "GROUP_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
    }


def test_the_batch_step_torchrun_and_one_task_export_nothing():
    batch = {k: v for k, v in STEP_TASK_3.items() if not k.startswith("SLURM_STEP")}
    assert distributed_env(batch) == {}  # the batch script itself: not one of the tasks
    assert distributed_env({**STEP_TASK_3, "RANK": "0"}) == {}  # torchrun set them
    assert distributed_env({**STEP_TASK_3, "SLURM_STEP_NUM_TASKS": "1"}) == {}
    assert distributed_env({}) == {}


def test_the_step_node_list_wins_and_uneven_tasks_per_node_are_read():
    env = distributed_env(
        {
            **STEP_TASK_3,
            "SLURM_JOB_NODELIST": "gpu[07-09]",
            "SLURM_STEP_NODELIST": "gpu[08-09]",
            "SLURM_STEP_TASKS_PER_NODE": "3,1",
        }
    )
    assert env["MASTER_ADDR"] == "gpu08" and env["LOCAL_WORLD_SIZE"] == "1"


def test_ports_come_from_the_job_id_so_neighbouring_jobs_differ():
    ports = {job_port(j) for j in range(1000, 1100)}
    assert len(ports) == 100 and all(20000 <= p < 60000 for p in ports)
    assert job_port("1234") == job_port(1234) == job_port("1234_5")  # an array task's raw id
    assert job_port(1234) != job_port(1235)
    assert 20000 <= job_port("local-job") < 60000


def test_node_lists_expand_in_slurm_order_and_compact_back():
    names = expand_nodelist("cfh-node[1-2],gpu[07,09-10],login")
    assert names == ["cfh-node1", "cfh-node2", "gpu07", "gpu09", "gpu10", "login"]
    assert compact_hosts(["cfh-node1", "cfh-node2"]) == "cfh-node[1-2]"
    assert compact_hosts(["gpu07", "gpu09", "gpu10"]) == "gpu[07,09-10]"
    assert compact_hosts(["node1"]) == "node1"
    assert job_nodes({"SLURM_JOB_NODELIST": "cfh-node[1-2]"}) == {
        "nodes": ["cfh-node1", "cfh-node2"],
        "num_nodes": 2,
    }
    assert job_nodes({}) == {}


def test_status_shows_node_count_and_hosts_only_where_a_job_recorded_them():
    plain = Row(signature="a" * 10, axes={}, state="completed")
    assert "nodes" not in render([plain], []).splitlines()[0].split()
    two = Row(signature="b" * 10, axes={}, state="running", nodes=["cfh-node1", "cfh-node2"])
    header, first, second = render([plain, two], []).splitlines()
    assert header.split()[-2:] == ["nodes", "hosts"]
    assert first.split()[-2:] == ["-", "-"] and second.split()[-2:] == ["2", "cfh-node[1-2]"]
    waiting = Row(signature="c" * 10, axes={}, state="pending", waiting="ReqNodeNotAvail")
    assert render([waiting], []).splitlines()[-1] == "  ^ pending: ReqNodeNotAvail"


def test_record_failure_names_a_lost_rank_as_the_cause(tmp_path: Path):
    update_status(tmp_path, state="running")
    lost = [{"rank": 1, "host": "cfh-node2", "pid": 77}]
    record_failure(tmp_path, RuntimeError("Connection closed by peer"), 0, 2, lost)
    status = read_status(tmp_path)
    assert status["error"].startswith("rank 1/2 on cfh-node2 (pid 77) lost: ")
    assert status["error"].endswith("then rank 0/2: RuntimeError: Connection closed by peer")
    assert status["failed_rank"] == 1 and status["failed_host"] == "cfh-node2"
    assert status["lost_ranks"] == [1]
    record_failure(tmp_path, RuntimeError("later"), 1, 2)  # the first to fail keeps the word
    assert read_status(tmp_path)["failed_rank"] == 1


HOLDER = textwrap.dedent(
    """
    import sys, time
    from core.io import owner_lock
    with owner_lock(sys.argv[1], "run", "rank 1/2"):
        print("held", flush=True)
        time.sleep(120)
    """
)


@pytest.mark.timeout(60)
def test_rank_presence_tells_a_killed_member_from_a_live_one(tmp_path: Path):
    from model.training.distributed import DistInfo, RankPresence

    presence = RankPresence(tmp_path, DistInfo(rank=0, world=2))
    path = presence.path(1)
    path.parent.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        import socket

        presence.members = [
            {"rank": 0, "host": socket.gethostname(), "pid": os.getpid()},
            {"rank": 1, "host": socket.gethostname(), "pid": proc.pid},
        ]
        assert presence.gone() == []  # alive (hung or busy): not lost
        t0 = time.monotonic()
        assert presence.lost(RuntimeError("Timed out"), wait_s=0.5) == []
        assert time.monotonic() - t0 >= 0.5  # a communication error waits for the lock
        assert presence.lost(ValueError("own bug"), wait_s=5) == []  # no wait for its own
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert presence.lost(RuntimeError("Connection closed by peer")) == [presence.members[1]]
        presence.members[1] = {**presence.members[1], "pid": proc.pid + 100000}
        assert presence.gone() == []  # the file names another process: an older attempt's
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_comm_timer_counts_overlapping_spans_once():
    from model.training.distributed import CommTimer

    timer = CommTimer(world=2)
    timer._spans = [(0.0, 1.0), (0.5, 1.5), (3.0, 4.0), (3.2, 3.5)]
    assert timer.take() == pytest.approx(2.5)
    assert timer.take() == 0.0
