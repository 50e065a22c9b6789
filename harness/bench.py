"""`cfh bench`: training and sampling throughput of cfh, against the release-style reference.

Per model size and attention backend it times, in one process and interleaved where timing noise
matters (the CPU):

- train: the trainer's step (loss forward, backward, grad clip, AdamW, EMA; autocast bf16 where
  the trainer uses it) for cfh and for `harness/reference.py` on the same AR splits: those the
  trainer draws at steps 0..bench.splits-1 (model.ar with the run's seed and rank 0). Reports
  img/s, tokens/s (mean sequence length over those splits), MFU against a matmul peak measured
  in the training precision between repeats, and peak memory.
- sample: img/s of cfh's KV-cached sampler, of the same network recomputing the whole prefix
  every denoising step, and of the reference recomputing, at each bench.s_eval.
- extract: milliseconds per image of each FID feature extractor (model/evaluate.py).

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
import contextlib
import copy
import functools
import importlib
import math
import os
import shlex
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from core.errors import UserError
from harness.config import load_config
from harness.schema import ATTENTIONS, BENCH_MEASURES

MEASURES = BENCH_MEASURES
BACKENDS = ATTENTIONS
EXTRACT_FEATURE = {"classifier": "feat", "inception": "2048"}  # the FID features


# ---------------------------------------------------------------- command line


def register(sub: argparse._SubParsersAction) -> None:
    """Add `cfh bench` to the cfh parser."""
    text = "training/sampling throughput of cfh vs the release-style reference"
    from harness.cli import print_config_job

    p = sub.add_parser(
        "bench",
        help=text,
        description=__doc__.split("\n\n")[0],
        epilog="examples:\n  cfh bench --sizes T,XS --repeats 5 --measures train,sample\n"
        "  cfh bench --sizes S data=mnist data.patch_size=2 train.batch_size=8 --measures train"
        "\n\nConfig keys (bench.*): harness/configs/config.yaml; figures: benchmarks/RESULTS.md.",
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
        from reports.results import check_name

        check_name(args.grid)
    command = "cfh bench " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else [])
    doc = run_bench(cfg, sizes, overrides + extra, command=command.strip(), grid=args.grid)
    out = Path(args.out) if args.out else default_path(args.root)
    write_bench(doc, out)
    print(format_table(doc))
    print(f"wrote {len(doc['rows'])} rows to {out}")
    return 0


def default_path(root: str | os.PathLike) -> Path:
    """`<root>/bench/<UTC time>-<random id>.json`: where `cfh report` finds standalone benches."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return Path(root) / "bench" / f"{stamp}-{uuid.uuid4().hex[:6]}.json"


def write_bench(doc: dict, path: Path) -> None:
    """Write a bench document atomically (the results loader may be reading the folder)."""
    from core.io import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, doc)


def run_bench_point(run_dir: str | os.PathLike, cfg: dict, main: bool = True) -> dict:
    """A sweep point with bench.enabled: bench its model size into `<run_dir>/bench/bench.json`.

    Called by harness/jobs.py instead of train + eval; only rank 0 measures.
    """
    from core.io import update_status

    rdir = Path(run_dir)
    if not main:
        return {"run_dir": str(rdir), "bench": None}
    update_status(rdir, state="running", phase="bench")
    cfg = copy.deepcopy(cfg)
    slurm_cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if not cfg["bench"]["threads"] and slurm_cpus:  # as the trainer: one thread per allotted CPU
        cfg["bench"]["threads"] = int(slurm_cpus)
    dcfg = OmegaConf.create(cfg)
    OmegaConf.set_struct(dcfg, True)
    doc = run_bench(dcfg, [dcfg.model.name], [], command=f"bench point {rdir.name}")
    path = rdir / "bench" / "bench.json"
    write_bench(doc, path)
    print(format_table(doc))
    status = update_status(rdir, state="completed", phase="done", error=None)
    return {"run_dir": str(rdir), "bench": str(path), "attempts": status.get("attempts")}


# ---------------------------------------------------------------- settings


def reference_module() -> ModuleType:
    """harness/reference.py, the release-style implementation (imported on first use only)."""
    return importlib.import_module("harness.reference")


# ---------------------------------------------------------------- timing helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock_fn(clock: str) -> Callable[[], float]:
    """The timer: wall time, or (bench.clock=cpu) this thread's CPU time.

    On a CPU shared with other jobs, wall time also counts the time the scheduler gives them;
    with one torch thread all compute runs on the calling thread, so its CPU time is what the
    work costs. Throughput from it is labelled (row key "clock") and is not wall-clock speed.
    """
    return time.thread_time if clock == "cpu" else time.perf_counter


def timed(fn: Callable[[], Any], device: torch.device, clock: str = "wall") -> float:
    """Seconds of fn() on `clock`, device work included."""
    now = clock_fn(clock)
    _sync(device)
    t0 = now()
    fn()
    _sync(device)
    return now() - t0


def median(values: Sequence[float]) -> float:
    """Median, NaN for no values."""
    return statistics.median(values) if values else float("nan")


def rotations(items: list, r: int) -> list:
    """items rotated left by r: each repeat starts with another implementation."""
    k = r % len(items) if items else 0
    return items[k:] + items[:k]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory of a region: the CUDA allocator's peak, or (CPU) polled RSS above its start.

    On the CPU the transient peak is max RSS during the region minus RSS at its start, polled
    every 2 ms: an estimate (the allocator may reuse freed pages), not an allocator statistic.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif os.path.exists("/proc/self/statm"):
            self._start = _rss_bytes()
            self._max = self._start
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.002):
            self._max = max(self._max, _rss_bytes())

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self._max = max(self._max, _rss_bytes())
            self.peak_bytes = self._max - self._start


def state_bytes(*modules: torch.nn.Module, opt: torch.optim.Optimizer | None = None) -> int:
    """Bytes of parameters, gradients, buffers and optimizer state (what a step keeps alive)."""
    total = 0
    for m in modules:
        for t in (*m.parameters(), *m.buffers()):
            total += t.numel() * t.element_size()
            if t.grad is not None:
                total += t.grad.numel() * t.grad.element_size()
    if opt is not None:
        for state in opt.state.values():
            total += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
    return total


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Run with n CPU threads (0 = leave torch's default), then restore."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def machine_info(device: torch.device) -> dict:
    """CPU model, cores, GPU, torch version and load: what a bench number depends on."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": gpu,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_start": round(os.getloadavg()[0], 2),
    }


# ---------------------------------------------------------------- the bench


def pick_device(cfg: DictConfig) -> torch.device:
    """train.device, as the trainer reads it (auto = CUDA when present)."""
    from model.training.distributed import DistInfo
    from model.training.trainer import pick_device as trainer_device

    return trainer_device(cfg, DistInfo())


def run_bench(
    cfg: DictConfig,
    sizes: list[str],
    overrides: list[str],
    command: str = "cfh bench",
    grid: str | None = None,
) -> dict:
    """Measure every size (cfg with model=<size>) and backend; the bench document (not written)."""
    from core.io import now_iso
    from model.training.perf import matmul_peak_flops

    device = pick_device(cfg)  # cfg passed harness.schema.validate_config (load_config)
    if device.type == "cuda" and cfg.bench.clock == "cpu":
        raise UserError("bench.clock=cpu is for CPU runs; GPU work is timed on the wall clock")
    bench = cfg.bench
    with threads(int(bench.threads)):
        machine = machine_info(device)
        if device.type == "cuda":  # what the trainer enables
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        dtype = torch.bfloat16 if _use_bf16(cfg, device) else torch.float32
        machine["peak_flops"] = matmul_peak_flops(str(device), dtype)
        rows: list[dict] = []
        for size in sizes:
            scfg = cfg if size == cfg.model.name else load_config([*overrides, f"model={size}"])
            if "train" in bench.measures:
                rows += bench_train(scfg, device)
            if "sample" in bench.measures:
                rows += bench_sample(scfg, device)
        if "extract" in bench.measures:
            rows += bench_extract(cfg, device)
        machine["load_end"] = round(os.getloadavg()[0], 2)
    for row in rows:
        row["clock"] = str(bench.clock)
    return {
        "kind": "bench",
        "created": now_iso(),
        "grid": grid,
        "command": command,
        "machine": machine,
        "settings": OmegaConf.to_container(cfg.bench, resolve=True),
        "rows": rows,
    }


def _use_bf16(cfg: DictConfig, device: torch.device) -> bool:
    p = cfg.train.precision
    return p == "bf16" or (p == "auto" and device.type == "cuda")


def _common(cfg: DictConfig, net: torch.nn.Module) -> dict:
    """Columns every row of one model shares."""
    from model.method.network import count_params

    return {
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "resolution": int(cfg.data.resolution),
        "patch_size": int(cfg.data.patch_size),
        "num_tokens": net.num_tokens,
        "params": count_params(net),
    }


# ---------------------------------------------------------------- training step


@dataclass
class Split:
    """One AR split as the trainer draws it at a step: group sizes, order, AR weights."""

    sizes: list[int]
    order: torch.Tensor
    weights: torch.Tensor
    seq_len: int


def trainer_splits(cfg: DictConfig, count: int, batch: int, device: torch.device) -> list[Split]:
    """The splits model/train.py draws at steps 0..count-1 on rank 0 (same sampler, same seeds)."""
    from model.method import ar

    t = cfg.train
    grid = int(cfg.data.resolution) // int(cfg.data.patch_size)
    L, C = grid * grid, int(cfg.model.num_cond_tokens)
    out = []
    for step in range(count):
        gen = ar.ar_generator(int(cfg.seed), step, 0)
        S = ar.sample_num_steps(
            t.ar.mode, L, gen, fixed_steps=int(t.ar.steps), decay=float(t.ar.decay)
        )
        sizes = ar.sample_group_sizes(L, S, gen)
        order = ar.token_order(t.order, batch, grid, gen, block=int(t.order_block))
        aw = t.loss.ar_weight
        weights = ar.ar_token_weights(sizes, L, float(aw.max), float(aw.min), aw.schedule)
        out.append(Split(sizes, order.to(device), weights.to(device), C + 2 * L - sizes[-1]))
    return out


@dataclass
class Trainee:
    """One implementation under the training bench: network, EMA, optimizer, its timings."""

    impl: str
    attention: str
    net: torch.nn.Module
    step_net: torch.nn.Module
    ema: torch.nn.Module
    opt: torch.optim.Optimizer
    times: list[float] = field(default_factory=list)  # seconds per repeat (all splits)
    peaks: list[float] = field(default_factory=list)  # FLOP/s measured right after each repeat
    transient: int = 0
    steps: int = 0
    error: str | None = None


def make_trainee(impl: str, attention: str, net: torch.nn.Module, cfg: DictConfig) -> Trainee:
    """The trainer's optimizer, EMA copy and (train.compile) compiled module around `net`."""
    t = cfg.train
    opt = torch.optim.AdamW(
        net.parameters(), lr=float(t.lr), betas=tuple(t.betas), weight_decay=float(t.weight_decay)
    )
    ema = copy.deepcopy(net).requires_grad_(False).eval()
    step_net = torch.compile(net) if t.compile and impl == "cfh" else net
    return Trainee(impl, attention, net, step_net, ema, opt)


def train_step(
    tr: Trainee,
    split: Split,
    x: torch.Tensor,
    y: torch.Tensor,
    diffusion: Any,
    cfg: DictConfig,
    bf16: bool,
) -> None:
    """One step exactly as model/train.py runs it (minus data loading and logging)."""
    from model.method.diffusion import causalfusion_loss

    t = cfg.train
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss, _ = causalfusion_loss(
            tr.step_net,
            diffusion,
            x,
            y,
            split.order,
            split.sizes,
            split.weights,
            noise_weighting=t.loss.noise_weighting,
            min_snr_gamma=float(t.loss.min_snr_gamma),
        )
    bool(torch.isfinite(loss.detach()).item())  # the trainer's finiteness check syncs too
    tr.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(tr.net.parameters(), float(t.grad_clip) or math.inf)
    tr.opt.step()
    tr.steps += 1
    decay = min(float(t.ema_decay), (1 + tr.steps) / (10 + tr.steps))
    with torch.no_grad():
        torch._foreach_lerp_(list(tr.ema.parameters()), list(tr.net.parameters()), 1.0 - decay)


def _fake_batch(cfg: DictConfig, batch: int, device: torch.device):
    """Seeded random images in [-1, 1] and labels: a step's cost does not depend on pixels."""
    g = torch.Generator().manual_seed(int(cfg.seed))
    d = cfg.data
    x = torch.rand(batch, int(d.channels), int(d.resolution), int(d.resolution), generator=g)
    y = torch.randint(0, int(d.num_classes), (batch,), generator=g)
    return (x * 2 - 1).to(device), y.to(device)


def _build_net(cfg: DictConfig, attention: str, device: torch.device) -> torch.nn.Module:
    """cfh's network for `cfg` with the given backend, seeded (every backend gets equal weights)."""
    from model.training.trainer import model_from_config

    c = copy.deepcopy(cfg)
    c.model.attention = attention
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # leave the caller's RNG as it was
        torch.manual_seed(int(cfg.seed))
        return model_from_config(c).to(device).train()


def bench_train(cfg: DictConfig, device: torch.device) -> list[dict]:
    """Training-step rows for cfh (each backend) and the reference, interleaved on equal splits."""
    from model.method.diffusion import Diffusion
    from model.method.network import train_flops_per_image
    from model.training.perf import matmul_peak_flops

    bench = cfg.bench
    batch = int(cfg.train.batch_size)
    bf16 = _use_bf16(cfg, device)
    dtype = torch.bfloat16 if bf16 else torch.float32
    splits = trainer_splits(cfg, int(bench.splits), batch, device)
    x, y = _fake_batch(cfg, batch, device)
    diffusion = Diffusion().to(device)
    trainees = []
    for backend in bench.backends:
        trainees.append(make_trainee("cfh", backend, _build_net(cfg, backend, device), cfg))
    first = trainees[0].net
    if bench.reference:
        ref = reference_module().ReferenceCausalFusion.from_cfh(first)
        trainees.append(make_trainee("reference", "explicit", ref, cfg))
    # on CUDA every new shape may compile (flex, train.compile): warm up on every split there
    warm = splits if device.type == "cuda" else splits[:1]
    for tr in trainees:
        try:
            for sp in warm:
                train_step(tr, sp, x, y, diffusion, cfg, bf16)
        except (RuntimeError, NotImplementedError) as e:  # flex has no CPU backward, for one
            tr.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
    live = [tr for tr in trainees if tr.error is None]
    clock = str(bench.clock)
    for r in range(int(bench.repeats)):
        seconds = {id(tr): 0.0 for tr in live}
        peaks = []
        for j, sp in enumerate(splits):
            # interleave per step, in rotating order: both see the same stretch of machine load
            for tr in rotations(live, r + j):
                step = functools.partial(train_step, tr, sp, x, y, diffusion, cfg, bf16)
                with PeakMemory(device) as mem:
                    seconds[id(tr)] += timed(step, device, clock)
                tr.transient = max(tr.transient, mem.peak_bytes)
            # the peak, measured alongside (uncached) on the same clock
            peaks.append(matmul_peak_flops.__wrapped__(str(device), dtype, clock=clock))
        for tr in live:
            tr.times.append(seconds[id(tr)])
            tr.peaks.append(median(peaks))
    mean_len = sum(sp.seq_len for sp in splits) / len(splits)
    flops = train_flops_per_image(first.cfg, mean_len)
    ref_times = next((tr.times for tr in live if tr.impl == "reference"), None)
    rows = []
    for tr in trainees:
        row = {
            "measure": "train",
            "impl": tr.impl,
            "attention": tr.attention,
            "dtype": "bf16" if bf16 else "fp32",
            "compiled": bool(cfg.train.compile) and tr.impl == "cfh",
            **_common(cfg, first),
            "batch_size": batch,
            "splits": len(splits),
            "ar_steps_mean": sum(len(sp.sizes) for sp in splits) / len(splits),
            "seq_len": mean_len,
            "repeats": len(tr.times),
            "flops": flops,
        }
        if tr.error is not None:
            rows.append({**row, "error": tr.error})
            continue
        img_s = [batch * len(splits) / s for s in tr.times]
        # CUDA's allocator peak covers the whole step; the CPU estimate is transient + state
        extra = 0 if device.type == "cuda" else state_bytes(tr.net, tr.ema, opt=tr.opt)
        row.update(
            step_s=median(tr.times) / len(splits),
            train_img_per_s=median(img_s),
            train_tokens_per_s=median(img_s) * mean_len,
            mfu=median([flops * i / p for i, p in zip(img_s, tr.peaks, strict=True)]),
            peak_flops=median(tr.peaks),
            peak_mem_mb=(tr.transient + extra) / 2**20,
        )
        if ref_times and tr.impl == "cfh":
            row["speedup_vs_reference"] = median(
                [a / b for a, b in zip(ref_times, tr.times, strict=True)]
            )
        rows.append(row)
    return rows


# ---------------------------------------------------------------- sampling


def bench_sample(cfg: DictConfig, device: torch.device) -> list[dict]:
    """Sampling rows: cfh with the KV cache, cfh recomputing the prefix, the reference recomputing.

    fp32 and no guidance, like model/inference.py; the same labels, orders and noise for all.
    """
    from model.method import ar
    from model.method.diffusion import Diffusion, make_sampler
    from model.method.sampling import generate

    bench = cfg.bench
    refmod = reference_module()
    net = _build_net(cfg, "sdpa", device).eval()  # cached sampling never uses the mask backend
    L = net.num_tokens
    B = int(bench.sample_batch)
    sampler = make_sampler(Diffusion().to(device), cfg.sample.sampler, int(bench.sample_steps))
    g = torch.Generator().manual_seed(int(cfg.sample.seed))
    y = torch.randint(0, int(cfg.data.num_classes), (B,), generator=g).to(device)
    positions = ar.token_order(cfg.sample.order, B, net.cfg.grid, g).to(device)
    ref = refmod.ReferenceCausalFusion.from_cfh(net) if bench.reference else None

    def gen() -> torch.Generator:
        return torch.Generator(device).manual_seed(int(cfg.sample.seed))

    def recompute(model: torch.nn.Module, sizes: list[int]) -> Callable[..., Any]:
        return functools.partial(refmod.recompute_generate, model, sampler, y, positions, sizes)

    rows = []
    for s_eval in sorted({min(int(s), L) for s in bench.s_eval}):
        sizes = ar.equal_group_sizes(L, s_eval)
        cached = functools.partial(generate, net, sampler, y, positions, sizes)
        variants = [("cfh", True, cached), ("cfh", False, recompute(net, sizes))]
        if ref is not None:
            variants.append(("reference", False, recompute(ref, sizes)))
        times: dict[int, list[float]] = {i: [] for i in range(len(variants))}
        for _, _, fn in variants:
            fn(generator=gen())  # warm-up
        order = list(range(len(variants)))
        for r in range(int(bench.repeats)):
            for i in rotations(order, r):
                fn = functools.partial(variants[i][2], generator=gen())
                times[i].append(timed(fn, device, str(bench.clock)))
        for i, (impl, kv, _) in enumerate(variants):
            row = {
                "measure": "sample",
                "impl": impl,
                "attention": "sdpa" if impl == "cfh" else "explicit",
                "dtype": "fp32",
                **_common(cfg, net),
                "s_eval": s_eval,
                "kv_cache": kv,
                "sampler": cfg.sample.sampler,
                "sampler_steps": len(sampler),
                "batch_size": B,
                "repeats": len(times[i]),
                "sample_img_per_s": median([B / t for t in times[i]]),
            }
            if kv:
                row["speedup_vs_recompute"] = median(
                    [a / b for a, b in zip(times[1], times[i], strict=True)]
                )
            if impl == "cfh" and ref is not None:
                row["speedup_vs_reference"] = median(
                    [a / b for a, b in zip(times[2], times[i], strict=True)]
                )
            rows.append(row)
    return rows


# ---------------------------------------------------------------- feature extraction


def bench_extract(cfg: DictConfig, device: torch.device) -> list[dict]:
    """Milliseconds per image of each FID feature extractor, run as model/evaluate.py runs it."""
    from model.evaluation.extractors import extractor_weights, single_thread

    bench = cfg.bench
    rows = []
    B = int(bench.extract_batch)
    for name in bench.extractors:
        row = {"measure": "extract", "impl": "cfh", "extractor": name, "dataset": cfg.data.name}
        try:
            fe_name, path, _ = extractor_weights(name, cfg.data, cfg.eval.weights_path)
        except UserError as e:  # e.g. no inception weights on this machine: say so in the row
            rows.append({**row, "error": str(e)})
            continue
        from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

        feature = EXTRACT_FEATURE[name]
        fe = FEATURE_EXTRACTORS_REGISTRY[fe_name](
            fe_name, [feature], feature_extractor_weights_path=str(path)
        )
        fe = fe.to(device).eval()
        d = cfg.data
        channels = 3 if name == "inception" else int(d.channels)  # evaluate.py's input layout
        g = torch.Generator().manual_seed(0)
        shape = (B, channels, int(d.resolution), int(d.resolution))
        images = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).to(device)
        # evaluate.py runs the tiny classifier on one thread (two were 25x slower when loaded)
        ctx = single_thread() if name == "classifier" else contextlib.nullcontext()
        with ctx, torch.no_grad():
            fe(images)  # warm-up
            run = functools.partial(fe, images)
            times = [timed(run, device, str(bench.clock)) for _ in range(bench.repeats)]
        ms = 1e3 * median(times) / B
        rows.append({**row, "batch_size": B, "repeats": len(times), "extract_ms_per_img": ms})
    return rows


# ---------------------------------------------------------------- printing


def format_table(doc: dict) -> str:
    """The bench rows as a plain-text table, plus the machine line."""
    from tabulate import tabulate

    m = doc["machine"]
    head = (
        f"{m['cpu']}, {m['cores']} cores, {m['threads']} threads, GPU {m['gpu']}, "
        f"torch {m['torch']}, load {m['load_start']} -> {m.get('load_end')}, "
        f"matmul peak {m['peak_flops'] / 1e9:.1f} GFLOP/s"
    )
    out = [head]
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
        cols += ["sample_img_per_s", "speedup_vs_recompute", "speedup_vs_reference"]
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
