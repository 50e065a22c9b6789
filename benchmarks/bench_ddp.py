"""Training and sampling throughput of 1 rank vs 2 gloo ranks on this CPU, measured in one run.

The same run (model, data, global batch) three times each, interleaved: `cfh train` as one
process with 2 threads, and under `torchrun --nproc_per_node=2` with 1 thread per rank; then
`cfh sample` the same way. Training img/s is the median over the log windows after the first
(metrics.jsonl: all ranks together, data loading included); sampling img/s is what samples.npz's
settings.json records (sum over ranks). A benchmark, not a test: it prints ratios.

    .venv/bin/python benchmarks/bench_ddp.py [--model T] [--steps 60] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env.setdefault("CFH_CACHE", str(REPO / ".cache" / "cfh"))
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=1800, cwd=REPO)


def launcher(ranks: int) -> list[str]:
    if ranks == 1:
        return [sys.executable, "-m", "harness.cli"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*torchrun, f"--nproc_per_node={ranks}", "-m", "harness.cli"]


def train_img_s(run_dir: Path) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["img_per_s"] for r in rows[1:])


def sample_img_s(run_dir: Path) -> float:
    (meta,) = run_dir.glob("samples/*/settings.json")
    return float(json.loads(meta.read_text())["sample_img_per_s"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="T")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    common = [f"model={args.model}", "data=digits", "train.device=cpu", "train.log_every=10"]
    train = [*common, f"train.batch_size={args.batch}", f"train.steps={args.steps}"]
    sample = ["sample.num=" + str(args.samples), "sample.steps=20", "sample.ar_steps=4"]
    results: dict[str, dict[int, list[float]]] = {"train": {1: [], 2: []}, "sample": {1: [], 2: []}}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for ranks in (1, 2):  # interleaved, so drift in machine load hits both alike
                rdir = Path(tmp) / f"r{rep}-{ranks}"
                threads = 2 // ranks
                run([*launcher(ranks), "train", *train, f"run_dir={rdir}"], threads)
                results["train"][ranks].append(train_img_s(rdir))
                run([*launcher(ranks), "sample", *common, *sample, f"run_dir={rdir}"], threads)
                results["sample"][ranks].append(sample_img_s(rdir))
    print(f"model {args.model}, digits, global batch {args.batch}, {args.repeats} repeats")
    for phase, by_ranks in results.items():
        one, two = (statistics.median(by_ranks[r]) for r in (1, 2))
        print(
            f"{phase:6s}  1 rank x 2 threads {one:8.1f} img/s   2 ranks x 1 thread {two:8.1f} "
            f"img/s   ratio 2/1 {two / one:.2f}   (all: 1={by_ranks[1]}, 2={by_ranks[2]})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
