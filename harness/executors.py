"""Local and SLURM execution through submitit: executors, job arrays, requeue, job states.

The sweep builds one executor per cluster profile and resource shape and submits one array:

    profile = validate_profile(cfg.cluster)              # UserError on a bad profile
    executor = make_executor(profile, root / "submitit")
    jobs = submit_array(executor, PointJob.for_profile(profile), [str(d) for d in run_dirs])
    job_states([j.job_id for j in jobs], profile.backend, folder=root / "submitit")
    cancel(job_ids, profile.backend, folder=root / "submitit")

What a job runs is `PointJob(fn)(run_dir)`: `fn` (default `harness.jobs.run_point`) called as
`fn(run_dir)` in the job's process.

Preemption and time limits (SLURM sends USR2 `signal_delay_s` before the time limit, and on
preemption; `job._interrupt()` sends SIGTERM then USR2):

- `PointJob` sets a process-wide flag when USR2 or SIGTERM arrives: `preemption_requested()`
  returns True from then on. Work functions poll it (or, like `model.train`, install their own
  SIGUSR2/SIGTERM handler and call the previously installed handler, ours, after saving).
- On that signal the work function saves its state and leaves by raising anything (the
  trainer raises `model.train.Preempted`, a SystemExit). `PointJob` then requeues the job:
  `checkpoint()` returns a `DelayedSubmission` of the same `PointJob` and `run_dir`, so the
  requeued job calls `fn(run_dir)` again, and `fn` resumes from what it saved in `run_dir`.
  A work function that returns normally has finished: the job completes, no requeue.
- A work function that does not leave within `grace_s` of USR2 is interrupted (SIGALRM) and
  the job is requeued anyway; whatever it had not saved is lost.
- SIGTERM alone (scancel, `cfh cancel`) never requeues: the function may save and exit.
- Requeues after preemption are unlimited; requeues after a time-out (USR2 within
  `signal_delay_s` plus a margin of the time limit) are limited to the profile's
  `max_num_timeout`, after which the job fails with "timed out too many times".

Local backend: submitit's local executor, where each job first waits for one of `parallelism`
slots (file locks in `<folder>/.slots`) before its controller starts, so at most `parallelism`
points run at once across every submission that uses the same folder. Waiting jobs show as
pending; the time limit counts from the start.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import DelayedSubmission, UncompletedJobError, temporary_save_path

from core.errors import UserError
from harness.profiles import (  # noqa: F401 - the profile API, re-exported where it was
    BACKENDS,
    MAX_ARRAY_SIZE,
    ClusterProfile,
    validate_profile,
    world_size,
)

STATES = ("pending", "running", "completed", "failed", "cancelled", "requeued")

# SLURM job states (squeue %T / sacct State, first word) -> cfh states.
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
    with tempfile.TemporaryDirectory() as scratch:  # the executor makes its folder
        ex = slurm.SlurmExecutor(folder=scratch, max_num_timeout=p.max_num_timeout)
        generic = {k: v for k, v in params.items() if not k.startswith("slurm_")}
        ex.update_parameters(**ex._convert_parameters(generic), **specific)
        parameters = dict(ex.parameters)
    text = slurm._make_sbatch_string(
        command="cfh-point", folder=str(Path(folder).absolute()), map_count=count, **parameters
    )
    lines = text.splitlines()
    return [line.removeprefix("#SBATCH ") for line in lines if line.startswith("#SBATCH")]


_SLOT_SHIM = """# cfh-wait-slot: take one of N lock files in DIR, then exec COMMAND (same pid)
import fcntl, os, sys, time
slots, n, cmd = sys.argv[1], int(sys.argv[2]), sys.argv[4:]
try:
    while True:
        for i in range(n):
            fd = os.open(os.path.join(slots, f"slot-{i}"), os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            os.set_inheritable(fd, True)
            os.execv(cmd[0], cmd)
        time.sleep(0.25)
except KeyboardInterrupt:  # cancelled while waiting
    sys.exit(130)
"""


class PooledLocalExecutor(submitit.LocalExecutor):
    """submitit's LocalExecutor where each job waits for one of `parallelism` slots to start.

    The job's process first runs `_SLOT_SHIM` (python -c), which takes a free lock file in
    `<folder>/.slots` and then execs submitit's local controller (same pid; the lock stays held
    until the controller exits).
    """

    def __init__(self, folder: Path, parallelism: int = 1, max_num_timeout: int = 3) -> None:
        super().__init__(folder, max_num_timeout=max_num_timeout)
        self.parallelism = int(parallelism)

    def _submit_command(self, command: str) -> submitit.LocalJob:
        import shlex

        from submitit.local.local import LocalJob

        ntasks = self.parameters.get("tasks_per_node", 1)
        gpus = self.parameters.get("gpus_per_node", 0)
        setup = list(self.parameters.get("setup", ()))
        env = dict(os.environ)
        env.update(  # what submitit.local.local.start_controller sets
            SUBMITIT_LOCAL_NTASKS=str(ntasks),
            SUBMITIT_LOCAL_COMMAND=command,
            SUBMITIT_LOCAL_TIMEOUT_S=str(int(60 * self.parameters.get("timeout_min", 2.0))),
            SUBMITIT_LOCAL_SIGNAL_DELAY_S=str(int(self.parameters.get("signal_delay_s", 30))),
            SUBMITIT_LOCAL_NODEID="0",
            SUBMITIT_LOCAL_JOB_NUM_NODES="1",
            SUBMITIT_STDERR_TO_STDOUT="1" if self.parameters.get("stderr_to_stdout") else "",
            SUBMITIT_EXECUTOR="local",
            CUDA_VISIBLE_DEVICES=",".join(str(k) for k in range(gpus)),
            SUBMITIT_LOCAL_WITH_SHELL="",  # the controller runs as the submitted pid itself
        )
        cpus = self.parameters.get("cpus_per_task")
        if cpus and not gpus:
            # like SLURM's allotment: each point's torch uses cpus_per_task threads, whatever the
            # caller's environment says, so that a local grid computes the same numbers anywhere
            env["OMP_NUM_THREADS"] = str(int(cpus))
        slots = self.folder / ".slots"
        slots.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-c", _SLOT_SHIM, str(slots), str(self.parallelism), "--"]
        cmd += [sys.executable, "-m", "submitit.local._local"]
        cmd += [str(self.folder)]
        # The controller's own output (a traceback when cancelled) goes to a log, not our tty.
        # SIGINT (how cancel stops a local job) gets its default action back: a shell starts
        # background jobs with it ignored, and the controller would inherit that and run on.
        with open(self.folder / "local-controllers.log", "ab") as log:
            if setup:  # shell lines first, then exec: the pid stays the job id
                shell_cmd = " && ".join([*setup, "exec " + shlex.join(cmd)])
                proc = subprocess.Popen(
                    shell_cmd, shell=True, env=env, stdout=log, stderr=log,
                    preexec_fn=_default_sigint,
                )  # fmt: skip
            else:
                proc = subprocess.Popen(
                    cmd, env=env, stdout=log, stderr=log, preexec_fn=_default_sigint
                )
        return LocalJob(folder=self.folder, job_id=str(proc.pid), process=proc, tasks=range(ntasks))


def _default_sigint() -> None:
    """In the child before exec: SIGINT back to its default action (kills, or KeyboardInterrupt
    in Python), whatever the parent inherited."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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


# ---------------------------------------------------------------- the job wrapper

_PREEMPTION = threading.Event()
_SEEN: list[int] = []  # warning signals received by this process, in order


def preemption_requested() -> bool:
    """True once this job got its preemption or time-limit warning (USR2) or SIGTERM.

    Work functions check it between steps: when True, save, then raise (any exception or
    SystemExit); the job is requeued and the function is called again on the same run_dir.
    """
    return _PREEMPTION.is_set()


class _GraceExpired(BaseException):
    """The work function did not leave within grace_s of the warning signal."""


class PointJob(submitit.helpers.Checkpointable):
    """Runs `fn(run_dir, *args)` in a job; requeued on preemption/time-out (see module doc).

    fn: a callable or its dotted name ("harness.jobs.run_point"), imported in the job.
    grace_s: seconds the function gets, after USR2, to save and leave before the requeue.
    signal_delay_s: the profile's warning delay, to tell time-outs from preemptions
    (None: submitit's rule, a signal after 80% of the time limit is a time-out).
    """

    def __init__(
        self,
        fn: Callable[..., Any] | str = "harness.jobs.run_point",
        grace_s: float = 30.0,
        signal_delay_s: int | None = None,
    ) -> None:
        self.fn = fn
        self.grace_s = float(grace_s)
        self.signal_delay_s = signal_delay_s
        self._start = 0.0  # set when the job starts

    @classmethod
    def for_profile(
        cls, cluster_cfg: Any, fn: Callable[..., Any] | str = "harness.jobs.run_point"
    ) -> PointJob:
        """A PointJob whose grace period fits the profile: half the warning delay, 5 to 120 s."""
        p = validate_profile(cluster_cfg)
        grace = min(120.0, max(5.0, p.signal_delay_s / 2))
        return cls(fn, grace_s=grace, signal_delay_s=p.signal_delay_s)

    def __call__(self, run_dir: str, *args: Any, **kwargs: Any) -> Any:
        fn = _resolve(self.fn)
        self._start = time.monotonic() - _process_age_s()  # the time limit counts from here
        _PREEMPTION.clear()
        _SEEN.clear()
        previous = self._install_handlers()
        try:
            result = fn(run_dir, *args, **kwargs)
            signal.setitimer(signal.ITIMER_REAL, 0)
            return result
        except BaseException as e:
            signal.setitimer(signal.ITIMER_REAL, 0)
            if isinstance(e, KeyboardInterrupt) or not self._warned():
                raise
            self._requeue(run_dir, args, kwargs)  # exits the process or raises
            raise  # pragma: no cover - _requeue never returns
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def checkpoint(self, run_dir: str, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Resubmit the same point: the work function resumes from run_dir."""
        return DelayedSubmission(self, run_dir, *args, **kwargs)

    # -- signals

    def _install_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}
        for sig in (signal.SIGUSR2, signal.SIGTERM):
            previous[sig] = signal.signal(sig, self._on_signal)
        previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._on_alarm)
        return previous

    def _on_signal(self, signum: int, frame: Any) -> None:
        first_usr2 = signum == signal.SIGUSR2 and signal.SIGUSR2 not in _SEEN
        _SEEN.append(signum)
        _PREEMPTION.set()
        _log(f"got {signal.Signals(signum).name}: preemption requested")
        if first_usr2:
            signal.setitimer(signal.ITIMER_REAL, self.grace_s)

    def _on_alarm(self, signum: int, frame: Any) -> None:
        _log(f"the work function did not leave within {self.grace_s:.0f}s of the warning")
        raise _GraceExpired

    def _warned(self, term_wait_s: float = 3.0) -> bool:
        """Whether to requeue: USR2 arrived (after SIGTERM, USR2 may follow within seconds)."""
        if signal.SIGUSR2 in _SEEN:
            return True
        if not _SEEN:
            return False
        deadline = time.monotonic() + term_wait_s
        while time.monotonic() < deadline and signal.SIGUSR2 not in _SEEN:
            time.sleep(0.05)
        signal.setitimer(signal.ITIMER_REAL, 0)
        return signal.SIGUSR2 in _SEEN

    def _timed_out(self, timeout_min: float) -> bool:
        """Whether the warning was the time limit's (else a preemption)."""
        limit = 60.0 * timeout_min
        elapsed = time.monotonic() - self._start
        if self.signal_delay_s is None:
            return elapsed >= min(0.8 * limit, limit - 600)
        delay = float(self.signal_delay_s)
        margin = min(60.0, max(0.0, limit - delay) / 2)
        return limit - elapsed <= delay + margin

    def _requeue(self, run_dir: str, args: tuple, kwargs: dict) -> None:
        env = submitit.JobEnvironment()
        if env.global_rank != 0:  # rank 0 requeues the whole job
            sys.exit(-1)
        paths = env.paths
        delayed = DelayedSubmission.load(paths.submitted_pickle)
        timeout_min = delayed._timeout_min  # noqa: SLF001 - submitit keeps it there
        timed_out = self._timed_out(timeout_min)
        countdown = delayed._timeout_countdown - int(timed_out)  # noqa: SLF001
        if countdown < 0:
            raise UncompletedJobError("timed out too many times (max_num_timeout); not requeued")
        resubmit = self.checkpoint(run_dir, *args, **kwargs)
        resubmit.set_timeout(timeout_min, countdown)
        with temporary_save_path(paths.submitted_pickle) as tmp:
            resubmit.dump(tmp)
        kind = "time-out" if timed_out else "preemption"
        _log(f"requeueing job {env.job_id} after {kind} ({countdown} time-out requeues left)")
        env._requeue(countdown)  # noqa: SLF001 - scontrol requeue (slurm), exit 144 (local)
        sys.exit(-1)


def _process_age_s() -> float:
    """Seconds since this process started (0 where /proc cannot tell)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def _resolve(fn: Callable[..., Any] | str) -> Callable[..., Any]:
    if callable(fn):
        return fn
    import importlib

    module, _, attr = fn.replace(":", ".").rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _log(msg: str) -> None:
    print(f"[cfh.executors {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


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
