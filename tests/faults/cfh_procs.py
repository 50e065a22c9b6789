"""What the fault tests share: `cfh` in this process, the environment of a `cfh` child process,
and waiting for a condition while that process may die."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path

from harness.cli.main import main

REPO = Path(__file__).resolve().parents[2]
CFH = [sys.executable, "-m", "harness.cli"]  # a `cfh` child process
TINY = ["model=T", "data=digits", "train.batch_size=8", "train.log_every=1", "train.device=cpu"]


def child_env() -> dict:
    """One torch thread, unbuffered output, the checkout's data cache unless one is set."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.setdefault("CFH_CACHE", str(REPO / ".cache" / "cfh"))
    return env


def cfh(*argv: str) -> tuple[int, str]:
    """`cfh ARGV` in this process: (exit code, stdout + stderr)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(argv))
    return code, out.getvalue()


def wait_for(cond, timeout: float, what: str, proc: subprocess.Popen | None = None):
    """cond()'s first true value within `timeout` s; fails early if `proc` ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended ({proc.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
