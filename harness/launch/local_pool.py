"""submitit's local executor with a limit on the points that run at once.

Local backend: submitit's local executor, where each job first waits for one of `parallelism`
slots (file locks in `<folder>/.slots`) before its controller starts, so at most `parallelism`
points run at once across every submission that uses the same folder. Waiting jobs show as
pending; the time limit counts from the start.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import submitit
from submitit.local.local import LocalJob

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
