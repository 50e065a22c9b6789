"""`cfh bench`'s training measure: the trainer's own step for cfh and for the reference.

Every implementation is a `Learner` from model/training/step.py's `make_learner` (the
trainer's AdamW and EMA factories) stepped by the trainer's `train_step` on the splits the
trainer draws at steps 0..bench.splits-1 on rank 0 (`draw_split`): the bench times what
`cfh train` runs, minus data loading and logging. With train.compile, cfh's forward is the
trainer's compiled one (`compile_forward`, padded splits: graphs per bucket), warmed up on every
split before timing; the reference runs the unpadded splits eagerly.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from core.config import RunConfig
from harness.bench.reference import ReferenceCausalFusion
from harness.bench.timing import PeakMemory, median, rotations, state_bytes, timed
from model.method.network import count_params, train_flops_per_image
from model.training.build import model_from_config, use_bf16
from model.training.perf import matmul_peak_flops
from model.training.step import (
    Learner,
    Split,
    compile_forward,
    draw_split,
    make_learner,
    train_step,
)


@dataclass
class Trainee:
    """One implementation under the training bench: its Learner and timings."""

    impl: str
    attention: str
    learner: Learner
    times: list[float] = field(default_factory=list)  # seconds per repeat (all splits)
    peaks: list[float] = field(default_factory=list)  # FLOP/s measured right after each repeat
    transient: int = 0
    steps: int = 0
    error: str | None = None

    @property
    def net(self) -> torch.nn.Module:
        """The network whose parameters the step updates."""
        return self.learner.net


def make_trainee(impl: str, attention: str, net: torch.nn.Module, cfg: RunConfig) -> Trainee:
    """The trainer's Learner around `net` (its optimizer, EMA; train.compile for cfh)."""
    wrap = (
        functools.partial(compile_forward, cfg=cfg) if cfg.train.compile and impl == "cfh" else None
    )
    device = next(net.parameters()).device
    return Trainee(impl, attention, make_learner(cfg, net, device, wrap=wrap))


def bench_step(tr: Trainee, split: Split, x: torch.Tensor, y: torch.Tensor) -> None:
    """One trainer step of `tr` (model/training/step.py's train_step), counting its steps."""
    if tr.impl != "cfh":
        split = dataclasses.replace(split, mask=None)  # the reference pads nothing
    train_step(tr.learner, x, y, split, tr.steps)
    tr.steps += 1


def fake_batch(cfg: RunConfig, batch: int, device: torch.device):
    """Seeded random images in [-1, 1] and labels: a step's cost does not depend on pixels."""
    g = torch.Generator().manual_seed(int(cfg.seed))
    d = cfg.data
    x = torch.rand(batch, int(d.channels), int(d.resolution), int(d.resolution), generator=g)
    y = torch.randint(0, int(d.num_classes), (batch,), generator=g)
    return (x * 2 - 1).to(device), y.to(device)


def build_net(cfg: RunConfig, attention: str, device: torch.device) -> torch.nn.Module:
    """cfh's network for `cfg` with the given backend, seeded (every backend gets equal weights)."""
    c = copy.deepcopy(cfg)
    c.model.attention = attention
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # leave the caller's RNG as it was
        torch.manual_seed(int(cfg.seed))
        return model_from_config(c).to(device).train()


def common_columns(cfg: RunConfig, net: torch.nn.Module) -> dict:
    """Columns every row of one model shares."""
    return {
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "resolution": int(cfg.data.resolution),
        "patch_size": int(cfg.data.patch_size),
        "num_tokens": net.num_tokens,
        "params": count_params(net),
    }


def bench_train(
    cfg: RunConfig, device: torch.device, progress: Callable[[str], None] | None = None
) -> list[dict]:
    """Training-step rows for cfh (each backend) and the reference, interleaved on equal splits."""
    bench = cfg.bench
    say = progress or (lambda _: None)
    batch = int(cfg.train.batch_size)
    bf16 = use_bf16(cfg, device)
    dtype = torch.bfloat16 if bf16 else torch.float32
    splits = [draw_split(cfg, s, 0, batch, device) for s in range(int(bench.splits))]
    x, y = fake_batch(cfg, batch, device)
    trainees = []
    for backend in bench.backends:
        trainees.append(make_trainee("cfh", backend, build_net(cfg, backend, device), cfg))
    first = trainees[0].net
    if bench.reference:
        ref = ReferenceCausalFusion.from_cfh(first)
        trainees.append(make_trainee("reference", "explicit", ref, cfg))
    # every new shape may compile (flex on CUDA, train.compile): warm up on every split there
    warm = splits if device.type == "cuda" or cfg.train.compile else splits[:1]
    for tr in trainees:
        say(f"train {cfg.model.name} {tr.impl}/{tr.attention}: warm-up ({len(warm)} steps)")
        try:
            for sp in warm:
                bench_step(tr, sp, x, y)
        except (RuntimeError, NotImplementedError) as e:  # flex has no CPU backward, for one
            tr.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
    live = [tr for tr in trainees if tr.error is None]
    clock = str(bench.clock)
    for r in range(int(bench.repeats)):
        say(f"train {cfg.model.name}: repeat {r + 1}/{bench.repeats} ({len(splits)} splits)")
        seconds = {id(tr): 0.0 for tr in live}
        peaks = []
        for j, sp in enumerate(splits):
            # interleave per step, in rotating order: both see the same stretch of machine load
            for tr in rotations(live, r + j):
                step = functools.partial(bench_step, tr, sp, x, y)
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
            **common_columns(cfg, first),
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
        lrn = tr.learner
        extra = 0 if device.type == "cuda" else state_bytes(lrn.net, lrn.ema, opt=lrn.opt)
        row.update(
            step_s=median(tr.times) / len(splits),
            train_img_per_s=median(img_s),
            train_tokens_per_s=median(img_s) * mean_len,
            mfu=median([flops * i / p for i, p in zip(img_s, tr.peaks, strict=True)]),
            peak_flops=median(tr.peaks),
            peak_mem_mb=(tr.transient + extra) / 2**20,
        )
        if lrn.graphs:
            row.update(compiled_graphs=len(lrn.graphs), compile_s=sum(lrn.graphs.values()))
        if ref_times and tr.impl == "cfh":
            row["speedup_vs_reference"] = median(
                [a / b for a, b in zip(ref_times, tr.times, strict=True)]
            )
        rows.append(row)
    return rows
