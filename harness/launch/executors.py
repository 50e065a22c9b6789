"""Local and SLURM execution through submitit: executors, job arrays, requeue, job states.

The sweep builds one executor per cluster profile and resource shape and submits one array:

    profile = validate_profile(cfg.cluster)              # UserError on a bad profile
    executor = make_executor(profile, root / "submitit")
    jobs = submit_array(executor, PointJob.for_profile(profile), [str(d) for d in run_dirs])
    job_states([j.job_id for j in jobs], profile.backend, folder=root / "submitit")
    cancel(job_ids, profile.backend, folder=root / "submitit")

What a job runs is `PointJob(fn)(run_dir)`: `fn` (default `harness.launch.jobs.run_point`) called as
`fn(run_dir)` in the job's process.

The job wrapper that requeues on preemption: harness.launch.point_job; the local executor with its
parallelism slots: harness.launch.local_pool.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import submitit

from core.config.cluster import BACKENDS, MAX_ARRAY_SIZE, ClusterProfile, validate_profile
from core.errors import UserError
from harness.launch.local_pool import PooledLocalExecutor

# SLURM job states (squeue %T / sacct State, first word) -> cfh states (core.records.STATUS_STATES).
SLURM_STATES = {
    "PENDING": "pending",
    "CONFIGURING": "pending",
    "REQUEUE_HOLD": "pending",
    "RESV_DEL_HOLD": "pending",
    "RUNNING": "running",
    "COMPLETING": "running",
    "SIGNALING": "running",
    "STAGE_OUT": "running",
    "RESIZING": "running",
    "SUSPENDED": "running",
    "STOPPED": "running",
    "COMPLETED": "completed",
    "FAILED": "failed",
    "TIMEOUT": "failed",
    "NODE_FAIL": "failed",
    "OUT_OF_MEMORY": "failed",
    "BOOT_FAIL": "failed",
    "DEADLINE": "failed",
    "SPECIAL_EXIT": "failed",
    "CANCELLED": "cancelled",
    "REVOKED": "cancelled",
    "REQUEUED": "requeued",
    "REQUEUE_FED": "requeued",
    "PREEMPTED": "requeued",
}


# ---------------------------------------------------------------- executors


def make_executor(cluster_cfg: Any, folder: Path, job_name: str = "cfh") -> submitit.Executor:
    """A submitit executor for the profile, writing its pickles and logs under `folder`.

    local: submitit's LocalExecutor with the profile's `parallelism` limit (see module doc).
    slurm: `submitit.AutoExecutor(cluster="slurm")` with partition, account, qos, constraint,
    nodes, tasks_per_node (one per GPU, or the profile's CPU ranks), gpus_per_node, cpus_per_task,
    mem_gb, timeout_min, array_parallelism, signal_delay_s, max_num_timeout, the setup lines and
    slurm_additional_parameters (any other sbatch option, e.g. gres, reservation, exclude).
    """
    p = validate_profile(cluster_cfg)
    folder = Path(folder).absolute()
    if p.backend == "local":
        ex = PooledLocalExecutor(
            folder, parallelism=p.parallelism, max_num_timeout=p.max_num_timeout
        )
        ex.update_parameters(
            timeout_min=p.timeout_min,
            tasks_per_node=p.tasks_per_node,
            gpus_per_node=p.gpus_per_node,
            cpus_per_task=p.cpus_per_task,
            signal_delay_s=p.signal_delay_s,
            setup=list(p.setup),
        )
        return ex
    if shutil.which("sbatch") is None:
        raise UserError(
            f"cluster profile '{p.name}' uses SLURM but sbatch is not on PATH; run on a SLURM "
            "login node, start the local cluster (scripts/slurm-local.sh start), or use "
            "cluster=local"
        )
    ex = submitit.AutoExecutor(
        folder=folder, cluster="slurm", slurm_max_num_timeout=p.max_num_timeout
    )
    params = slurm_parameters(p, job_name)
    ex.update_parameters(**params)
    return ex


def slurm_parameters(profile: ClusterProfile, job_name: str = "cfh") -> dict[str, Any]:
    """What make_executor passes to submitit's AutoExecutor.update_parameters for a profile."""
    p = profile
    params: dict[str, Any] = {
        "name": job_name,
        "timeout_min": p.timeout_min,
        "nodes": p.nodes,
        "tasks_per_node": p.tasks_per_node,
        "cpus_per_task": p.cpus_per_task,
        "slurm_array_parallelism": p.array_parallelism,
        "slurm_signal_delay_s": p.signal_delay_s,
        "slurm_setup": list(p.setup),
    }
    if p.gpus_per_node:
        params["gpus_per_node"] = p.gpus_per_node
    if p.mem_gb is not None:
        params["mem_gb"] = p.mem_gb
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(p, key) is not None:
            params[f"slurm_{key}"] = getattr(p, key)
    if p.slurm_additional_parameters:
        params["slurm_additional_parameters"] = p.sbatch_extra()
    return params


def sbatch_options(
    cluster_cfg: Any, folder: Path, job_name: str = "cfh", count: int = 1
) -> list[str]:
    """The #SBATCH options submitit would write for an array of `count` points of a SLURM
    profile (its own sbatch script builder; needs no sbatch, writes nothing under `folder`)."""
    import tempfile

    from submitit.slurm import slurm

    p = validate_profile(cluster_cfg)
    params = slurm_parameters(p, job_name)
    specific = {k.removeprefix("slurm_"): v for k, v in params.items() if k.startswith("slurm_")}

    class PlanningExecutor(slurm.SlurmExecutor):
        """submitit's SlurmExecutor for converting parameters only: a dry run plans a SLURM
        grid on a machine without srun (a laptop), where the plain executor refuses to start."""

        @classmethod
        def affinity(cls) -> int:
            return 2

    with tempfile.TemporaryDirectory() as scratch:  # the executor makes its folder
        ex = PlanningExecutor(folder=scratch, max_num_timeout=p.max_num_timeout)
        generic = {k: v for k, v in params.items() if not k.startswith("slurm_")}
        ex.update_parameters(**ex._convert_parameters(generic), **specific)
        parameters = dict(ex.parameters)
    text = slurm._make_sbatch_string(
        command="cfh-point", folder=str(Path(folder).absolute()), map_count=count, **parameters
    )
    lines = text.splitlines()
    return [line.removeprefix("#SBATCH ") for line in lines if line.startswith("#SBATCH")]


def submit_array(
    executor: submitit.Executor, fn: Callable[..., Any], args_list: Sequence[Any]
) -> list[submitit.Job]:
    """Submit `fn(*args)` for every entry of `args_list` as one job array (`map_array`).

    An entry that is a tuple is the positional arguments of one call; anything else is the
    single argument. All entries must have the same number of arguments. Lists longer than
    MAX_ARRAY_SIZE go in several arrays. Returns the jobs in the order of `args_list`.
    """
    calls = [a if isinstance(a, tuple) else (a,) for a in args_list]
    if not calls:
        return []
    if len({len(c) for c in calls}) != 1:
        raise ValueError("submit_array: every entry needs the same number of arguments")
    jobs: list[submitit.Job] = []
    for start in range(0, len(calls), MAX_ARRAY_SIZE):
        chunk = calls[start : start + MAX_ARRAY_SIZE]
        jobs.extend(executor.map_array(fn, *zip(*chunk, strict=True)))
    return jobs


MIN_PORT, PORT_SPAN = 20000, 40000  # rendezvous ports: 20000-59999, one per job id modulo


def job_port(job_id: str | int) -> int:
    """The rendezvous port of a job: MIN_PORT + job id modulo PORT_SPAN.

    SLURM job ids grow by one per job (an array task has its own SLURM_JOB_ID), so two jobs
    share a port only when their ids differ by a multiple of PORT_SPAN; a requeued job keeps its
    id and its port. A non-numeric id (a local job "pid_0") uses its digits, else its CRC32.
    """
    text = str(job_id).split("_")[0]
    number = int(text) if text.isdigit() else zlib.crc32(str(job_id).encode())
    return MIN_PORT + number % PORT_SPAN


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compact node list ("cfh-node[1-2],gpu07") as host names, in SLURM's order
    (what `scontrol show hostnames` prints; submitit's parser, without a subprocess)."""
    from submitit.slurm.slurm import _parse_node_list

    return _parse_node_list(nodelist) if nodelist else []


def _tasks_on_node(spec: str, node: int) -> int | None:
    """Tasks on node `node` from SLURM_STEP_TASKS_PER_NODE ("2(x2)", "3,1", "2(x3),1")."""
    counts: list[int] = []
    for part in spec.split(","):
        count, _, rep = part.partition("(x")
        if not count.isdigit():
            return None
        counts += [int(count)] * (int(rep.rstrip(")")) if rep else 1)
    return counts[node] if 0 <= node < len(counts) else None


def distributed_env(environ: Any = None) -> dict[str, str]:
    """torchrun's variables for this task of a multi-task job; {} under torchrun (RANK is set),
    outside a job, in a job's batch step, or with one task.

    A SLURM job step's task (srun, also under submitit: SLURM_STEP_NUM_TASKS is set): RANK =
    SLURM_PROCID, WORLD_SIZE = SLURM_STEP_NUM_TASKS, LOCAL_RANK = SLURM_LOCALID, GROUP_RANK =
    SLURM_NODEID, LOCAL_WORLD_SIZE from SLURM_STEP_TASKS_PER_NODE, MASTER_ADDR = the first host
    of the step's node list (SLURM_STEP_NODELIST, else SLURM_JOB_NODELIST): the node SLURM
    starts task 0 on (node id 0) whatever the distribution, MASTER_PORT = job_port(SLURM_JOB_ID).
    A submitit local job's task: submitit's JobEnvironment (this host), the port of its id.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env:
        return {}
    if "SLURM_STEP_NUM_TASKS" in env and "SLURM_PROCID" in env:
        world = int(env["SLURM_STEP_NUM_TASKS"])
        if world <= 1:
            return {}
        hosts = expand_nodelist(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", ""))
        node = int(env.get("SLURM_NODEID", "0"))
        per_node = _tasks_on_node(env.get("SLURM_STEP_TASKS_PER_NODE", ""), node)
        out = {
            "MASTER_ADDR": hosts[0] if hosts else socket.gethostname(),
            "MASTER_PORT": str(job_port(env.get("SLURM_JOB_ID", "0"))),
            "RANK": str(int(env["SLURM_PROCID"])),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(int(env.get("SLURM_LOCALID", "0"))),
            "GROUP_RANK": str(node),
        }
        if per_node:
            out["LOCAL_WORLD_SIZE"] = str(per_node)
        return out
    if env.get("SUBMITIT_EXECUTOR") != "local":
        return {}
    try:
        job = submitit.JobEnvironment()
    except RuntimeError:  # not in a job
        return {}
    if job.num_tasks <= 1:
        return {}
    return {
        "MASTER_ADDR": job.hostnames[0],
        "MASTER_PORT": str(job_port(job.job_id)),
        "RANK": str(job.global_rank),
        "WORLD_SIZE": str(job.num_tasks),
        "LOCAL_RANK": str(job.local_rank),
        "GROUP_RANK": "0",
        "LOCAL_WORLD_SIZE": str(job.num_tasks),
    }


def export_distributed_env() -> dict[str, str]:
    """In a multi-task SLURM step or submitit job, export torchrun's variables for this task
    (distributed_env: rank, world and local rank from SLURM, the rendezvous on the first node of
    the job's node list at a port of its job id), so the trainer and the sampler read one
    convention whatever launched them; a MASTER_ADDR/MASTER_PORT already set (a login shell's)
    is replaced by the job's own. Under torchrun, or in a one-task job, this does nothing.
    Returns what it exported, and says it on stderr (the task's job log): which rank runs where."""
    out = distributed_env()
    if out:
        os.environ.update(out)
        print(
            f"[cfh] rank {out['RANK']}/{out['WORLD_SIZE']} (local rank {out['LOCAL_RANK']}, "
            f"node {out['GROUP_RANK']}) on {socket.gethostname()}; rendezvous "
            f"{out['MASTER_ADDR']}:{out['MASTER_PORT']}",
            file=sys.stderr,
            flush=True,
        )
    return out


# ---------------------------------------------------------------- states and cancel


def job_states(job_ids: Iterable[str], backend: str, folder: Path | None = None) -> dict[str, str]:
    """Each job id's cfh state: pending, running, completed, failed, cancelled, requeued.

    slurm: squeue for jobs in the queue, sacct for the rest; a pending job that ran before
    (sacct has an earlier REQUEUED/PREEMPTED record) is "requeued". Ids neither knows: "unknown".
    local: job ids are pids; a live job is pending (waiting for a slot) or running; a finished
    one is completed or failed from its result file in `folder` (needed for that; else
    "unknown"), cancelled when `cancel` stopped it.
    """
    ids = [str(j) for j in job_ids]
    if backend == "slurm":
        return _slurm_states(ids)
    if backend == "local":
        return {j: _local_state(j, folder) for j in ids}
    raise UserError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")


def _run(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout


def _slurm_states(ids: list[str]) -> dict[str, str]:
    if not ids:
        return {}
    history: dict[str, list[str]] = {}
    out = _run(["sacct", "-n", "-P", "-X", "-D", "-j", ",".join(ids), "-o", "JobID,State"])
    for line in out.splitlines():
        jid, _, state = line.partition("|")
        if jid in ids:
            history.setdefault(jid, []).append(state.split()[0] if state.strip() else "")
    queue: dict[str, str] = {}
    for line in _run(["squeue", "-h", "-r", "-o", "%i|%T"]).splitlines():
        jid, _, state = line.partition("|")
        queue[jid.strip()] = state.strip()
    states = {}
    for j in ids:
        raw = queue.get(j) or (history.get(j) or [""])[-1]
        state = SLURM_STATES.get(raw, "unknown" if not raw else "failed")
        earlier = history.get(j, [])[:-1] if j not in queue else history.get(j, [])
        if state == "pending" and any(SLURM_STATES.get(s) == "requeued" for s in earlier):
            state = "requeued"
        states[j] = state
    return states


# squeue reasons of a pending job that say nothing beyond "it waits its turn"
ORDINARY_REASONS = ("None", "Priority", "Resources", "BeginTime", "JobArrayTaskLimit", "")


def pending_reasons(job_ids: Iterable[str]) -> dict[str, str]:
    """{job id: why SLURM keeps it pending} for the given jobs that wait for another reason
    than their turn (squeue's reason, e.g. "Nodes required for job are DOWN, DRAINED or
    reserved ..."), with the partition's nodes that are down or drained and why
    ("cfh-node2 down: maintenance"). Jobs that are not pending, or wait their turn, are left
    out."""
    ids = {str(j) for j in job_ids}
    if not ids:
        return {}
    out: dict[str, str] = {}
    parts: dict[str, str] = {}
    for line in _run(["squeue", "-h", "-r", "-o", "%i|%T|%P|%r"]).splitlines():
        jid, state, part, reason = (line.split("|", 3) + ["", "", ""])[:4]
        jid, reason = jid.strip(), reason.strip()
        if jid in ids and state.strip() == "PENDING" and reason not in ORDINARY_REASONS:
            out[jid] = reason
            parts[jid] = part.strip()
    for jid, part in parts.items():
        cmd = ["sinfo", "-h", "-N", "-t", "down,drain,fail,no_respond", "-o", "%N|%T|%E"]
        down = _run([*cmd, "-p", part] if part else cmd).splitlines()
        nodes = sorted({tuple(x.strip() for x in (ln.split("|", 2) + ["", ""])[:3]) for ln in down})
        if nodes:
            listed = ", ".join(f"{n} {st}" + (f": {why}" if why and why != "none" else "")
                               for n, st, why in nodes)  # fmt: skip
            out[jid] += f" (in partition {part}: {listed})" if part else f" ({listed})"
    return out


def _cmdline(pid: str) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return ""
    if any(line.split()[1:2] == ["Z"] for line in status.splitlines() if line.startswith("State")):
        return ""  # a zombie has finished
    return raw.replace(b"\0", b" ").decode(errors="replace")


def _local_state(job_id: str, folder: Path | None) -> str:
    cmd = _cmdline(job_id)
    folder = None if folder is None else Path(folder).absolute()
    if folder is None or str(folder) in cmd:
        if "cfh-wait-slot" in cmd:
            return "pending"
        if "submitit.local._local" in cmd:
            return "running"
    if folder is None:
        return "unknown"
    result = folder / f"{job_id}_0_result.pkl"
    if result.exists():
        head = result.read_bytes()[:64]
        return "completed" if b"success" in head else "failed"
    if (folder / f"{job_id}.cancelled").exists():
        return "cancelled"
    if (folder / f"{job_id}_submitted.pkl").exists():
        return "failed"  # ended without a result: killed, timed out
    return "unknown"


def cancel(job_ids: Iterable[str], backend: str, folder: Path | None = None) -> None:
    """Cancel jobs: scancel on slurm; on local, SIGINT to the job's process (controller or a
    job still waiting for a slot) and a `<id>.cancelled` marker in `folder`."""
    ids = [str(j) for j in job_ids]
    if not ids:
        return
    if backend == "slurm":
        subprocess.run(["scancel", *ids], capture_output=True, text=True, timeout=60, check=False)
        return
    if backend != "local":
        raise UserError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    folder = None if folder is None else Path(folder).absolute()
    for j in ids:
        cmd = _cmdline(j)
        ours = "cfh-wait-slot" in cmd or "submitit.local._local" in cmd
        if not ours or (folder is not None and str(folder) not in cmd):
            continue
        if folder is not None:
            Path(folder, f"{j}.cancelled").touch()
        try:
            os.kill(int(j), signal.SIGINT)
        except ProcessLookupError:
            pass
