"""`cfh bench`: training and sampling throughput of cfh, against the release-style reference.

Per model size and attention backend it times, in one process and interleaved where timing noise
matters (the CPU):

- train: the trainer's step (loss forward, backward, grad clip, AdamW, EMA; autocast bf16 where
  the trainer uses it) for cfh and for `harness/bench/reference.py` on the same AR splits: those the
  trainer draws at steps 0..bench.splits-1 (model.ar with the run's seed and rank 0). Reports
  img/s, tokens/s (mean sequence length over those splits), MFU against a matmul peak measured
  in the training precision between repeats, and peak memory.
- sample: img/s of cfh's KV-cached sampler, of the same network recomputing the whole prefix
  every denoising step, and of the reference recomputing, at each bench.s_eval.
- extract: milliseconds per image of each FID feature extractor (as `cfh evaluate` runs them).

The measures live in harness/bench/train.py (the trainer's own step, optimizer and EMA, from
model/training/step.py), harness/bench/sample.py and harness/bench/timing.py. Rows are printed
and the JSON rewritten as each measure finishes (a bench cut short keeps what it measured);
progress lines go to stderr.

A repeat runs every split (or sampling call) once per implementation, the implementations in
rotating order; one warm-up step per implementation (a full pass on CUDA, where each new shape
may compile) is excluded; numbers are medians over repeats, and cfh/reference ratios are medians
of per-repeat ratios, which cancels most of a shared machine's load drift. Rows land in
`<root>/bench/<time>-<id>.json` (or `<run_dir>/bench/bench.json` for a sweep point), the format
reports/results.py reads, so `cfh report` plots them with the runs.

    cfh bench                                   # T on digits, sdpa, defaults of bench.*
    cfh bench --sizes T,XS,S --repeats 5
    cfh bench --sizes S data=mnist data.patch_size=2 train.batch_size=32   # L = 256
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import shlex
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from core.choices import ATTENTIONS, BENCH_MEASURES
from core.config import RunConfig
from core.errors import UserError
from core.names import check_name
from harness.config.compose import load_config, print_config_job

MEASURES = BENCH_MEASURES
BACKENDS = ATTENTIONS


# ---------------------------------------------------------------- command line


def register(sub: argparse._SubParsersAction) -> None:
    """Add `cfh bench` to the cfh parser."""
    text = "training/sampling throughput of cfh vs the release-style reference"
    p = sub.add_parser(
        "bench",
        help=text,
        description=__doc__.split("\n\n")[0],
        epilog="examples:\n  cfh bench --sizes T,XS --repeats 5 --measures train,sample\n"
        "  cfh bench --sizes S data=mnist data.patch_size=2 train.batch_size=8 --measures train"
        "\n\nConfig keys (bench.*): experiments/config.yaml; figures: benchmarks/RESULTS.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", help="hydra-style key=value config overrides")
    p.add_argument("--sizes", help="comma-separated model sizes (default: the config's model)")
    p.add_argument("--backends", help="comma-separated attention backends: sdpa, flex")
    p.add_argument("--repeats", type=int, help="timed repeats (default: bench.repeats)")
    p.add_argument("--measures", help="comma-separated subset of train,sample,extract")
    p.add_argument("--threads", type=int, help="CPU threads (default: bench.threads)")
    p.add_argument("--no-reference", action="store_true", help="time cfh only")
    p.add_argument("--grid", help="tag the file with a grid name (cfh report GRID shows it)")
    p.add_argument("--out", help="output json (default: <root>/bench/<time>-<id>.json)")
    p.set_defaults(func=cmd_bench, cfg_job=print_config_job)


def _csv(text: str | None, allowed: Sequence[str] | None, what: str) -> list[str] | None:
    """'a,b' -> ['a', 'b'], each checked against `allowed`."""
    if text is None:
        return None
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if allowed is not None and s not in allowed]
    if not items or bad:
        raise UserError(f"--{what}={text!r}: give a comma-separated subset of {', '.join(allowed)}")
    return items


def cmd_bench(args: argparse.Namespace) -> int:
    """cfh bench [key=value ...] [--sizes T,XS] [--backends sdpa,flex] [--repeats N]"""
    from model.method.network import SIZES

    overrides = list(args.overrides)
    extra = []
    if args.backends is not None:
        extra.append(f"bench.backends=[{','.join(_csv(args.backends, BACKENDS, 'backends'))}]")
    if args.repeats is not None:
        extra.append(f"bench.repeats={args.repeats}")
    if args.measures is not None:
        extra.append(f"bench.measures=[{','.join(_csv(args.measures, MEASURES, 'measures'))}]")
    if args.threads is not None:
        extra.append(f"bench.threads={args.threads}")
    if args.no_reference:
        extra.append("bench.reference=false")
    cfg = load_config(overrides + extra)
    sizes = _csv(args.sizes, list(SIZES), "sizes") or [cfg.model.name]
    if args.grid is not None:
        check_name(args.grid)
    command = "cfh bench " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else [])
    out = Path(args.out) if args.out else default_path(args.root)
    doc = run_bench(
        cfg, sizes, overrides + extra, command=command.strip(), grid=args.grid,
        emit=reporter(out),
    )  # fmt: skip
    write_bench(doc, out)
    print(format_table(doc))
    print(f"wrote {len(doc['rows'])} rows to {out}")
    return 0


def reporter(path: Path) -> Callable[[dict, list[dict]], None]:
    """After each measure: print its new rows and rewrite `path` with every row so far."""

    def emit(doc: dict, new: list[dict]) -> None:
        write_bench(doc, path)
        print(format_table({**doc, "rows": new}, machine=False), flush=True)

    return emit


def progress_line(text: str) -> None:
    """A progress line on stderr (the table goes to stdout)."""
    print(f"bench: {text}", file=sys.stderr, flush=True)


def default_path(root: str | os.PathLike) -> Path:
    """`<root>/bench/<UTC time>-<random id>.json`: where `cfh report` finds standalone benches."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return Path(root) / "bench" / f"{stamp}-{uuid.uuid4().hex[:6]}.json"


def write_bench(doc: dict, path: Path) -> None:
    """Write a bench document atomically (the results loader may be reading the folder)."""
    from core.io import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, doc)


def run_bench_point(
    run_dir: str | os.PathLike, cfg: RunConfig, main: bool = True, threads: int | None = None
) -> dict:
    """A sweep point with bench.enabled: bench its model size into `<run_dir>/bench/bench.json`.

    Called by harness/launch/jobs.py instead of train + eval; only rank 0 measures. `threads`: the
    CPUs the scheduler allotted, used when bench.threads is 0 (as the trainer does).
    """
    from core.io import update_status

    rdir = Path(run_dir)
    if not main:
        return {"run_dir": str(rdir), "bench": None}
    update_status(rdir, state="running", phase="bench")
    cfg = copy.deepcopy(cfg)
    if not cfg.bench.threads and threads:
        cfg.bench.threads = int(threads)
    path = rdir / "bench" / "bench.json"
    doc = run_bench(cfg, [cfg.model.name], [], command=f"bench point {rdir.name}",
                    emit=reporter(path))  # fmt: skip
    write_bench(doc, path)
    print(format_table(doc))
    status = update_status(rdir, state="completed", phase="done", error=None)
    return {"run_dir": str(rdir), "bench": str(path), "attempts": status.get("attempts")}


def reference_module() -> ModuleType:
    """harness/bench/reference.py, the release-style implementation (imported on first use only)."""
    return importlib.import_module("harness.bench.reference")


# ---------------------------------------------------------------- the bench


def run_bench(
    cfg: RunConfig,
    sizes: list[str],
    overrides: list[str],
    command: str = "cfh bench",
    grid: str | None = None,
    emit: Callable[[dict, list[dict]], None] | None = None,
) -> dict:
    """Measure every size (cfg with model=<size>) and backend; the bench document (not written).

    `emit(doc, new_rows)` is called after each measure with the document so far.
    """
    import torch

    from core.io import now_iso
    from harness.bench.sample import bench_extract, bench_sample
    from harness.bench.timing import threads
    from harness.bench.train import bench_train
    from model.training.build import pick_device, use_bf16
    from model.training.distributed import DistInfo
    from model.training.perf import machine_info, matmul_peak_flops

    device = pick_device(cfg, DistInfo())  # cfg passed core.config.validate_config
    if device.type == "cuda" and cfg.bench.clock == "cpu":
        raise UserError("bench.clock=cpu is for CPU runs; GPU work is timed on the wall clock")
    bench = cfg.bench
    with threads(int(bench.threads)):
        machine = machine_info(device)
        if device.type == "cuda":  # what the trainer enables
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        dtype = torch.bfloat16 if use_bf16(cfg, device) else torch.float32
        machine["peak_flops"] = matmul_peak_flops(str(device), dtype)
        doc = {
            "kind": "bench",
            "created": now_iso(),
            "grid": grid,
            "command": command,
            "machine": machine,
            "settings": cfg.to_dict()["bench"],
            "rows": [],
        }

        def add(new: list[dict]) -> None:
            for row in new:
                row["clock"] = str(bench.clock)
            doc["rows"] += new
            machine["load_end"] = round(os.getloadavg()[0], 2)
            if emit is not None and new:
                emit(doc, new)

        for size in sizes:
            scfg = cfg if size == cfg.model.name else load_config([*overrides, f"model={size}"])
            if "train" in bench.measures:
                add(bench_train(scfg, device, progress_line))
            if "sample" in bench.measures:
                bench_sample(scfg, device, progress_line, emit=add)
        if "extract" in bench.measures:
            progress_line("extract: FID feature extractors")
            add(bench_extract(cfg, device))
        machine["load_end"] = round(os.getloadavg()[0], 2)
    return doc


# ---------------------------------------------------------------- printing


def format_table(doc: dict, machine: bool = True) -> str:
    """The bench rows as a plain-text table, after the machine line (unless machine=False)."""
    from tabulate import tabulate

    m = doc["machine"]
    head = (
        f"{m['cpu']}, {m['cores']} cores, {m['threads']} threads, GPU {m['gpu']}, "
        f"torch {m['torch']}, load {m['load_start']} -> {m.get('load_end')}, "
        f"matmul peak {m['peak_flops'] / 1e9:.1f} GFLOP/s"
    )
    out = [head] if machine else []
    train = [r for r in doc["rows"] if r["measure"] == "train"]
    if train:
        cols = ["model", "impl", "attention", "dtype", "batch_size", "seq_len"]
        cols += ["step_s", "train_img_per_s", "train_tokens_per_s", "mfu", "peak_mem_mb"]
        cols += ["speedup_vs_reference", "error"]
        out.append("\ntraining step (median of repeats)")
        out.append(_tab(train, cols, tabulate))
    sample = [r for r in doc["rows"] if r["measure"] == "sample"]
    if sample:
        cols = ["model", "impl", "s_eval", "kv_cache", "batch_size", "sampler_steps"]
        cols += ["sample_img_per_s", "speedup_vs_recompute", "speedup_vs_reference", "reduced"]
        out.append("\nsampling (median of repeats)")
        out.append(_tab(sample, cols, tabulate))
    extract = [r for r in doc["rows"] if r["measure"] == "extract"]
    if extract:
        out.append("\nFID feature extraction")
        out.append(
            _tab(extract, ["extractor", "batch_size", "extract_ms_per_img", "error"], tabulate)
        )
    return "\n".join(out)


def _tab(rows: list[dict], cols: list[str], tabulate: Callable) -> str:
    cols = [c for c in cols if any(c in r for r in rows)]
    body = [[_fmt(r.get(c)) for c in cols] for r in rows]
    return tabulate(body, headers=cols, tablefmt="simple")


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)
