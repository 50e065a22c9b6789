"""The job wrapper every point runs in: `PointJob(fn)(run_dir)`, requeued on preemption.

`fn` (default `harness.launch.jobs.run_point`) is called as `fn(run_dir)` in the job's process.

Preemption and time limits (SLURM sends USR2 `signal_delay_s` before the time limit, and on
preemption; `job._interrupt()` sends SIGTERM then USR2):

- `PointJob` sets a process-wide flag when USR2 or SIGTERM arrives: `preemption_requested()`
  returns True from then on. Work functions poll it (or, like `model.train`, install their own
  SIGUSR2/SIGTERM handler and call the previously installed handler, ours, after saving).
- On that signal the work function saves its state and leaves by raising anything (the
  trainer raises `model.train.Preempted`, a SystemExit). `PointJob` then requeues the job:
  `checkpoint()` returns a `DelayedSubmission` of the same `PointJob` and `run_dir`, so the
  requeued job calls `fn(run_dir)` again, and `fn` resumes from what it saved in `run_dir`.
  Just before, a run folder's status.json is marked `requeued` (here, the one place that knows
  a requeue follows; the work function said `interrupted`). A work function that returns
  normally has finished: the job completes, no requeue.
- A work function that does not leave within `grace_s` of USR2 is interrupted (SIGALRM) and
  the job is requeued anyway; whatever it had not saved is lost.
- SIGTERM alone (scancel, `cfh cancel`) never requeues: the function may save and exit.
- Requeues after preemption are unlimited; requeues after a time-out (USR2 within
  `signal_delay_s` plus a margin of the time limit) are limited to the profile's
  `max_num_timeout`, after which the job fails with "timed out too many times".
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import DelayedSubmission, UncompletedJobError, temporary_save_path

from core.config.cluster import validate_profile
from core.io import update_status

# Warning signals received by this process, in order. A plain list, never a lock: SLURM sends
# SIGTERM and USR2 milliseconds apart, so the second handler can run inside the first one, and
# a lock the first holds (threading.Event.set takes one) would hang the job for good.
_SEEN: list[int] = []


def preemption_requested() -> bool:
    """True once this job got its preemption or time-limit warning (USR2) or SIGTERM.

    Work functions check it between steps: when True, save, then raise (any exception or
    SystemExit); the job is requeued and the function is called again on the same run_dir.
    """
    return bool(_SEEN)


class _GraceExpired(BaseException):
    """The work function did not leave within grace_s of the warning signal."""


class PointJob(submitit.helpers.Checkpointable):
    """Runs `fn(run_dir, *args)` in a job; requeued on preemption/time-out (see module doc).

    fn: a callable or its dotted name ("harness.launch.jobs.run_point"), imported in the job.
    grace_s: seconds the function gets, after USR2, to save and leave before the requeue.
    signal_delay_s: the profile's warning delay, to tell time-outs from preemptions
    (None: submitit's rule, a signal after 80% of the time limit is a time-out).
    """

    def __init__(
        self,
        fn: Callable[..., Any] | str = "harness.launch.jobs.run_point",
        grace_s: float = 30.0,
        signal_delay_s: int | None = None,
    ) -> None:
        self.fn = fn
        self.grace_s = float(grace_s)
        self.signal_delay_s = signal_delay_s
        self._start = 0.0  # set when the job starts

    @classmethod
    def for_profile(
        cls, cluster_cfg: Any, fn: Callable[..., Any] | str = "harness.launch.jobs.run_point"
    ) -> PointJob:
        """A PointJob whose grace period fits the profile: half the warning delay, 5 to 120 s."""
        p = validate_profile(cluster_cfg)
        grace = min(120.0, max(5.0, p.signal_delay_s / 2))
        return cls(fn, grace_s=grace, signal_delay_s=p.signal_delay_s)

    def __call__(self, run_dir: str, *args: Any, **kwargs: Any) -> Any:
        fn = _resolve(self.fn)
        self._start = time.monotonic() - _process_age_s()  # the time limit counts from here
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
        if (Path(run_dir) / "status.json").is_file():  # a run folder: say it waits for the requeue
            update_status(run_dir, state="requeued")
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
    module, _, attr = fn.replace(":", ".").rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _log(msg: str) -> None:
    """One line on stderr, written straight to the file descriptor: safe inside a signal
    handler, where a second signal may interrupt this one (a buffered print would raise
    'reentrant call' there)."""
    line = f"[cfh.executors {time.strftime('%H:%M:%S')}] {msg}\n".encode()
    try:
        os.write(sys.stderr.fileno(), line)
    except (AttributeError, OSError, ValueError):  # stderr replaced by an object without a fd
        print(line.decode(), end="", file=sys.stderr, flush=True)
