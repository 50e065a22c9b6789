"""One training step, as the trainer runs it and `cfh bench` times it.

`draw_split` draws a step's AR split (group sizes, token order, AR weights) from the seeded
per-(step, rank) generator; `train_step` runs the loss forward (bf16 autocast where the run uses
it), backward, gradient clip, AdamW and EMA update on a `Learner` that `make_learner` builds from
the factories in model/training/build.py. The trainer and harness/bench/train.py call these same
functions, so the bench times what the trainer runs.

A step never waits for the device: its finiteness check stays there (a non-finite loss or
gradient norm makes fused AdamW skip its update and the EMA weight 0), and the loss, grad norm
and flag come back as device tensors that the trainer reads at log steps.

Shapes that compile: the training sequence C + (L - g_S) + L changes with every split. With
`train.compile` (sdpa, class-conditional), `draw_split` pads the clean part to one of at most
PAD_BUCKETS lengths (`clean_bucket`) and builds the padded mask; pad tokens see only the
condition and each other and no real token sees them, so the loss and gradients are those of
the unpadded step within rounding (tests/model/test_step.py), and `compile_forward` compiles
each transformer block with static shapes: two graphs per bucket (inner and last block), shared
by every block. `Learner.graphs` records each bucket's first step (compile included), which the
trainer logs.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from core.config import RunConfig
from model.data.joint_pairs import is_caption_data
from model.method import ar
from model.method.diffusion import Diffusion, causalfusion_loss
from model.method.layers import Block
from model.method.masks import generalized_causal_mask
from model.training.build import (
    ema_decay,
    grad_clip,
    lr_at,
    make_ema,
    make_optimizer,
    use_bf16,
)

log = logging.getLogger("cfh.train")

PAD_BUCKETS = 8  # padded clean lengths (so compiled graphs) per run at most, S = 1 included


@dataclass
class Split:
    """One AR split as the trainer draws it at a step: group sizes, order, AR weights."""

    sizes: list[int]
    order: torch.Tensor  # (batch, L) token order, on the device
    weights: torch.Tensor  # (L,) AR weight per token, on the device
    seq_len: int  # condition + clean prefix + noisy tokens (image part), unpadded
    gen: torch.Generator = field(repr=False)  # the step's generator, for the step's other draws
    # with train.compile: the (n, n) mask of the sequence with its clean part padded to a bucket
    mask: torch.Tensor | None = field(default=None, repr=False)


def clean_bucket(n_clean: int, L: int) -> int:
    """The padded length of a clean part of n_clean tokens (0..L-1): 0 stays 0 (S = 1), others
    round up to a multiple of ceil((L - 1) / (PAD_BUCKETS - 1)), at most L."""
    if n_clean <= 0:
        return 0
    q = max(1, math.ceil((L - 1) / (PAD_BUCKETS - 1)))
    return min(math.ceil(n_clean / q) * q, L)


def bucketed(cfg: RunConfig) -> bool:
    """Whether steps pad their split to a bucket (train.compile, sdpa, class-conditional)."""
    compiled = bool(cfg.train.compile) and cfg.model.attention == "sdpa"
    return compiled and not is_caption_data(cfg.data)


def compile_forward(
    module: torch.nn.Module, cfg: RunConfig, backend: str = "inductor"
) -> torch.nn.Module:
    """train.compile's wrap: every transformer block of `module` compiled in place, with static
    shapes where splits are bucketed; returns `module` itself (its state dict is unchanged).

    Regional compilation, as torchtitan compiles each TransformerBlock: the blocks share one
    graph per shape, so tracing and lowering do not grow with depth (on this project's CPU, 5
    buckets compiled in 53 s against 91 s for the whole network at T, 58 s against 68 s at XS,
    at the same step time; benchmarks/RESULTS.md). A bucket gives two graphs, the inner blocks'
    and the last block's (it computes the noisy rows only), hence a recompile limit of 2 per
    bucket and a spare.
    """
    dyn = torch._dynamo.config
    name = "recompile_limit" if hasattr(dyn, "recompile_limit") else "cache_size_limit"  # < 2.6
    setattr(dyn, name, max(getattr(dyn, name), 2 * PAD_BUCKETS + 2))
    dynamic = False if bucketed(cfg) else None
    for block in module.modules():
        if isinstance(block, Block):
            block.compile(dynamic=dynamic, backend=backend)
    return module


def draw_split(cfg: RunConfig, step: int, rank: int, batch: int, device: torch.device) -> Split:
    """The split the trainer draws at `step` on `rank` for a per-rank batch of `batch`."""
    t = cfg.train
    grid = int(cfg.data.resolution) // int(cfg.data.patch_size)
    L, C = grid * grid, int(cfg.model.num_cond_tokens)
    gen = ar.ar_generator(int(cfg.seed), step, rank)
    S = ar.sample_num_steps(t.ar.mode, L, gen, fixed_steps=int(t.ar.steps), decay=float(t.ar.decay))
    sizes = ar.sample_group_sizes(L, S, gen)
    order = ar.token_order(t.order, batch, grid, gen, block=int(t.order_block))
    aw = t.loss.ar_weight
    weights = ar.ar_token_weights(sizes, L, float(aw.max), float(aw.min), aw.schedule)
    mask = None
    if bucketed(cfg):
        mask = generalized_causal_mask(C, sizes, device, clean_len=clean_bucket(L - sizes[-1], L))
    # non_blocking: a blocking host-to-device copy would wait for the queued steps
    order, weights = order.to(device, non_blocking=True), weights.to(device, non_blocking=True)
    return Split(sizes, order, weights, C + 2 * L - sizes[-1], gen, mask)


@dataclass
class Learner:
    """What a training step updates, and how: network, loss module, EMA copy, optimizer."""

    cfg: RunConfig
    net: torch.nn.Module  # its parameters are clipped, averaged and saved
    forward: torch.nn.Module  # what the loss calls: net, or a JointObjective/DDP/compiled wrap
    ema: torch.nn.Module
    opt: torch.optim.Optimizer
    diffusion: Diffusion
    bf16: bool
    clip: float  # gradient-norm clip (inf = none)
    ema_target: float  # the EMA decay after warm-up (train.ema_decay)
    ema_warmup: bool  # train.ema_warmup: warm up to ema_target, or use it from step 0
    joint: bool = False
    graphs: dict[int, float] = field(default_factory=dict)  # padded length -> first step's s


def make_learner(
    cfg: RunConfig,
    net: torch.nn.Module,
    device: torch.device,
    wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    joint: bool = False,
) -> Learner:
    """A Learner around `net` with the run's optimizer and EMA; `wrap(net)` is the loss module."""
    ema = make_ema(net)  # before `wrap`, which may compile net's blocks in place
    return Learner(
        cfg=cfg,
        net=net,
        forward=wrap(net) if wrap is not None else net,
        ema=ema,
        opt=make_optimizer(cfg, net.parameters()),
        diffusion=Diffusion().to(device),
        bf16=use_bf16(cfg, device),
        clip=grad_clip(cfg),
        ema_target=float(cfg.train.ema_decay),
        ema_warmup=bool(cfg.train.ema_warmup),
        joint=joint,
    )


@dataclass
class StepOut:
    """A step's results, on the device: loss, grad norm, parts, whether it was applied; lr."""

    loss: torch.Tensor
    grad_norm: torch.Tensor
    parts: dict[str, torch.Tensor]
    lr: float
    ok: torch.Tensor  # bool: finite loss and gradients, the update was applied


def train_step(
    learner: Learner,
    x: torch.Tensor,
    y: torch.Tensor,
    split: Split,
    step: int,
    reduce_flag: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> StepOut:
    """Step `step` (0-based): loss, backward, clip, AdamW and EMA, skipped where non-finite.

    The skip happens on the device: a non-finite loss or gradient norm sets fused AdamW's
    found_inf (no update, no step count) and a zero EMA weight, so weights, optimizer state and
    EMA stay exactly as they were. `reduce_flag` makes that flag the same on every rank (the
    trainer's all-reduce; under DDP the gradient norm is already the same).
    """
    cfg, t = learner.cfg, learner.cfg.train
    lr = lr_at(step, cfg)
    for group in learner.opt.param_groups:
        group["lr"] = lr
    new_shape = split.mask is not None and split.mask.shape[-1] not in learner.graphs
    t0 = time.perf_counter()
    parts: dict[str, torch.Tensor] = {}
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=learner.bf16):
        if learner.joint:  # y holds caption ids; per sample: image-to-text or text-to-image
            jt = t.joint
            captioning = torch.rand(x.shape[0], generator=split.gen) < float(jt.caption_prob)
            drop = torch.rand(x.shape[0], generator=split.gen) < float(jt.text_dropout)
            loss_d, loss_t = learner.forward(
                learner.diffusion,
                x,
                y,
                captioning.to(x.device, non_blocking=True),
                drop.to(x.device, non_blocking=True),
                split.order,
                split.sizes,
                split.weights,
                t.loss.noise_weighting,
                float(t.loss.min_snr_gamma),
            )
            loss = loss_d + float(jt.text_weight) * loss_t
            parts = {"loss_diffusion": loss_d.detach(), "loss_text": loss_t.detach()}
        else:
            padded = split.mask is not None  # the model reads the split from the padded mask
            loss, _ = causalfusion_loss(
                learner.forward,
                learner.diffusion,
                x,
                y,
                split.order,
                None if padded else split.sizes,
                split.weights,
                noise_weighting=t.loss.noise_weighting,
                min_snr_gamma=float(t.loss.min_snr_gamma),
                model_kwargs={"mask": split.mask} if padded else None,
            )
    learner.opt.zero_grad(set_to_none=True)
    loss.backward()
    gn = torch.nn.utils.clip_grad_norm_(learner.net.parameters(), learner.clip)
    bad = (~torch.isfinite(loss.detach()) | ~torch.isfinite(gn)).float()  # () on the device
    if reduce_flag is not None:
        bad = reduce_flag(bad)
    learner.opt.found_inf = bad  # fused AdamW (build.make_optimizer) skips its update where 1
    learner.opt.step()
    ema_update(
        learner.ema,
        learner.net,
        ema_decay(learner.ema_target, step + 1, learner.ema_warmup),
        1.0 - bad,
    )
    if new_shape:  # a new bucket compiled a graph: once per bucket, so a sync is affordable
        _sync(x.device)
        n = int(split.mask.shape[-1])
        learner.graphs[n] = time.perf_counter() - t0
        log.info(
            "train.compile: graph %d (sequence length %d) took %.1f s at step %d, compile "
            "included", len(learner.graphs), n, learner.graphs[n], step
        )  # fmt: skip
    return StepOut(loss.detach(), gn.detach(), parts, lr, bad == 0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def ema_update(
    ema: torch.nn.Module, net: torch.nn.Module, decay: float, keep: torch.Tensor | None = None
) -> None:
    """ema <- decay * ema + (1 - decay) * net, parameter by parameter; `keep` (a 0/1 device
    scalar) scales the step, so that 0 leaves the EMA exactly as it is without a host read."""
    params, new = list(ema.parameters()), list(net.parameters())
    if keep is None:
        torch._foreach_lerp_(params, new, 1.0 - decay)
        return
    weight = keep.to(params[0].dtype) * (1.0 - decay)
    torch._foreach_lerp_(params, new, [weight] * len(params))
