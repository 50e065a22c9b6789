"""What the SLURM sweep tests share (test_sweep_slurm.py, test_multinode_sweep.py): `cfh` run in
this process, a swept grid's signatures, and a bounded wait."""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

import pytest

from harness.cli.main import main


def cfh(*argv: str) -> tuple[int, str]:
    """Run `cfh` in this process; (exit code, stdout + stderr)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(argv))
    return code, out.getvalue()


def plan_sigs(root: Path, name: str) -> list[str]:
    """The signatures of grid `name`'s points, in its plan's order."""
    plan = json.loads((root / "grids" / name / "plan.json").read_text())
    return [p["signature"] for p in plan["points"]]


def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.5):
    """predicate()'s first true value within `timeout_s`, asked every `poll_s` seconds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
