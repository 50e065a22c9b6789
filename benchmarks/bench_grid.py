"""Expand and reconcile a 1,000-point grid against synthetic run folders; print the times.

Target: expand + reconcile under 2 s on the development machine (a benchmark, not a test).
The grid: 10 S_train x 5 learning rates x 20 seeds = 1,000 train points, each with 4 eval points
(S_eval 1, 2, 4, 8). The synthetic root holds a run folder for 90% of the points: completed
(with eval records), failed, and running under a local job id that no longer exists.

    .venv/bin/python benchmarks/bench_grid.py [--points-only]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.io import atomic_write_json  # noqa: E402
from harness.grid.files import load_grid  # noqa: E402
from harness.launch import runs  # noqa: E402
from harness.sweep.reconcile import reconcile  # noqa: E402

GRID = """
description: 1,000-point benchmark grid
base:
  model: T
  data: digits
  train.steps: 100
  train.ar.mode: fixed
  sample.num: 100
axes:
  train.ar.steps: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
  train.lr: [1.0e-4, 2.0e-4, 5.0e-4, 1.0e-3, 2.0e-3]
seeds: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
eval:
  axes:
    sample.ar_steps: [1, 2, 4, 8]
"""


def synthesize(root: Path, grid, points) -> None:
    """Run folders in a mix of states, as a grid swept a while ago would leave them."""
    for i, p in enumerate(points):
        kind = i % 10
        if kind == 9:
            continue  # never swept: missing
        rdir = runs.write_run(root, grid.name, p)
        job = str(4_000_000 + i)  # a local job id (pid) that is not alive
        runs.write_submission(rdir, job_id=job, backend="local", grid=grid.name)
        if kind < 7:
            evals = {e.key: {"file": f"eval/{e.key}.json", "fid": 10.0 + i} for e in p.evals}
            status = {"state": "completed", "phase": "done", "evals": evals, "job_id": job}
        elif kind == 7:
            status = {
                "state": "failed",
                "phase": "train",
                "error": "RuntimeError: x",
                "job_id": job,
            }
        else:
            status = {"state": "running", "phase": "train", "step": 50, "job_id": job}
        atomic_write_json(rdir / "status.json", {**status, "total_steps": 100, "attempts": 1})
    runs.write_plan(root, grid, points)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions (best shown)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench1000.yaml"
        path.write_text(textwrap.dedent(GRID))
        root = Path(tmp) / "out"
        load_grid(str(path)).expand()  # warm: hydra composes each config group once
        t0 = time.perf_counter()
        grid = load_grid(str(path))
        points = grid.expand()
        t_expand = time.perf_counter() - t0
        assert len(points) == 1000, len(points)
        t0 = time.perf_counter()
        synthesize(root, grid, points)
        t_write = time.perf_counter() - t0
        best = None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            grid = load_grid(str(path))
            points = grid.expand()
            t1 = time.perf_counter()
            decisions = reconcile(grid, points, str(root))
            t2 = time.perf_counter()
            if best is None or t2 - t0 < best[0]:
                best = (t2 - t0, t1 - t0, t2 - t1)
        assert best is not None
        counts: dict[str, int] = {}
        for d in decisions:
            counts[f"{d.state}->{d.action}"] = counts.get(f"{d.state}->{d.action}", 0) + 1
    total, expand, rec = best
    print(f"points: {len(points)} train x {len(points[0].evals)} eval")
    print(
        f"first expand (cold caches): {t_expand:.3f} s; writing synthetic folders: {t_write:.2f} s"
    )
    print(f"expand: {expand:.3f} s  reconcile: {rec:.3f} s  total: {total:.3f} s (target < 2 s)")
    print("decisions: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0 if total < 2.0 else 1


if __name__ == "__main__":
    sys.exit(main())
