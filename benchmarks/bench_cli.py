"""CPU seconds of `cfh --help`, `cfh status smoke` and `cfh sweep smoke --dry-run`.

Each command runs 5 times as a fresh subprocess (`python -m harness.cli`, this checkout first on
PYTHONPATH) against an empty root; the figure is the median of the children's user + system CPU
time (resource.getrusage(RUSAGE_CHILDREN) before and after each run). Target: --help under
0.5 s. CPU time, not wall time, because a loaded 2-core machine stretches wall time.

    .venv/bin/python benchmarks/bench_cli.py [--repeats 5] [--code DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = (
    ("cfh --help", ["--help"]),
    ("cfh status smoke", ["status", "smoke"]),
    ("cfh sweep smoke --dry-run", ["sweep", "smoke", "--dry-run"]),
)


def child_cpu_s(argv: list[str], env: dict[str, str]) -> float:
    """User + system CPU seconds of one subprocess run (it must exit 0)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, env=env, cwd=env["PYTHONPATH"], check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    """Print the median CPU seconds of each command."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--code", default=str(REPO), help="checkout whose harness.cli.main to run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as root:
        env = {**os.environ, "PYTHONPATH": args.code, "CFH_ROOT": root}
        print(f"{'command':<28} {'CPU s (median of ' + str(args.repeats) + ')':>22}  runs")
        for label, cmd in COMMANDS:
            argv = [sys.executable, "-m", "harness.cli", *cmd]
            times = [child_cpu_s(argv, env) for _ in range(args.repeats)]
            runs = " ".join(f"{t:.2f}" for t in times)
            print(f"{label:<28} {statistics.median(times):>22.2f}  {runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
