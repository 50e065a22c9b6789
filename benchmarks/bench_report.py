"""Benchmark: load 10,000 result rows from run folders and write the full report.

Generates synthetic run folders once (250 training settings x 5 seeds = 1,250 runs, each
evaluated at S_eval 1/2/4/8 on 2 checkpoints = 10,000 rows) under --root, then times
`load_results` and `write_report` separately and together. Target: under 10 s on the 2-core
dev machine. A benchmark that prints, not a timed test.

    .venv/bin/python benchmarks/bench_report.py [--root /tmp/cfh-bench-report] [--regen]
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

# The synthetic run folders are a test fixture (tests/reports/synthetic.py), not product code.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reports"))

import synthetic as sy  # noqa: E402

from reports.results import ResultsWarning  # noqa: E402

S_TRAIN = [("fixed", s, 0.9) for s in (1, 2, 4, 8, 64)] + [("uniform", 1, 0.9)]
S_TRAIN += [("decay", 1, d) for d in (0.8, 0.85, 0.9, 0.95)]
WEIGHTS = (1.0, 1.5, 2.0, 2.5, 3.0)
ORDERS = ("random", "raster", "block_raster", "dilated", "random")
SEEDS = range(5)


def generate(root: Path) -> int:
    """Write the synthetic grid 'bench' under root; return the number of runs."""
    runs = []
    for (mode, steps, decay), w, (i, order), seed in itertools.product(
        S_TRAIN, WEIGHTS, enumerate(ORDERS), SEEDS
    ):
        runs.append(
            sy.write_run(
                root,
                ar_mode=mode,
                ar_steps=steps,
                ar_decay=decay,
                w_max=w,
                order=order,
                noise="uniform" if i < 4 else "min_snr",  # 5th 'order' slot: a noise weighting
                seed=seed,
                s_evals=(1, 2, 4, 8),
                ckpt_steps=(150, 300),
                log_every=20,
            )
        )
    sy.write_grid(root, "bench", runs)
    (root / "READY").write_text(str(len(runs)))
    return len(runs)


def main() -> None:
    """Generate once, then time load and report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="/tmp/cfh-bench-report")
    parser.add_argument("--regen", action="store_true", help="rewrite the synthetic runs")
    args = parser.parse_args()
    root = Path(args.root)
    if args.regen and root.exists():
        shutil.rmtree(root)
    if not (root / "READY").exists():
        t = time.perf_counter()
        n = generate(root)
        print(f"generated {n} runs in {time.perf_counter() - t:.1f} s (not timed below)")

    warnings.simplefilter("ignore", ResultsWarning)
    t0 = time.perf_counter()
    from reports import load_results
    from reports.report import write_report
    from reports.sizes import set_size_cache

    set_size_cache(root / ".cache" / "reports" / "model_sizes.json")
    c1, t1 = time.process_time(), time.perf_counter()
    df = load_results(root, "bench")
    c2, t2 = time.process_time(), time.perf_counter()
    path = write_report(root, "bench")
    c3, t3 = time.process_time(), time.perf_counter()
    print(f"rows: {len(df)} ({df['fid'].notna().sum()} with FID, {df['signature'].nunique()} runs)")
    print(f"import reports:          {t1 - t0:5.2f} s wall")
    print(f"load_results alone:      {t2 - t1:5.2f} s wall, {c2 - c1:5.2f} s CPU")
    print(
        f"write_report (load + parquet/csv + tables + plots + md/html): "
        f"{t3 - t2:5.2f} s wall, {c3 - c2:5.2f} s CPU   (target < 10 s)"
    )
    print(f"load average now: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores  -> {path}")


if __name__ == "__main__":
    main()
