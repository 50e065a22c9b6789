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
import subprocess
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


def export_distributed_env() -> None:
    """In a multi-task submitit or SLURM job, export torchrun's variables for this task.

    RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT (submitit's
    TorchDistributedEnvironment: the first node's host, a port drawn from the job id), so the
    trainer and the sampler read one convention whatever launched them. Under torchrun, or in a
    one-task job, this does nothing.
    """
    if "RANK" in os.environ:
        return
    try:
        env = submitit.JobEnvironment()
    except RuntimeError:  # not in a job
        return
    if env.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


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
