"""Which code and which machine produced a result: cfh's version, its git commit, the host.

The trainer stores both in status.json when a run starts and `cfh bench` in its JSON, so that a
report names the commit and the machine behind its numbers. Torch-free: the GPU and the torch
version are added by model.training.perf.machine_info.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import os
import socket
import subprocess
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the checkout (or site-packages) holding cfh


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" where there is none)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def host_info() -> dict:
    """Host name, CPU model and core count."""
    return {"host": socket.gethostname(), "cpu": cpu_model(), "cores": os.cpu_count()}


@functools.cache
def source_commit(root: Path = SOURCE_ROOT) -> str | None:
    """The git commit of the checkout cfh runs from, "+dirty" when tracked files differ from it;
    None for an installed wheel (a .git beside the packages is required, so a wheel inside some
    other repository's virtualenv does not report that repository's commit)."""
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head[:12]}+dirty" if dirty else head[:12]


def code_version() -> dict:
    """{"cfh": installed version or None, "commit": source_commit()}."""
    try:
        version = importlib.metadata.version("causalfusion-harness")
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {"cfh": version, "commit": source_commit()}
