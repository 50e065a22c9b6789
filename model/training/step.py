"""One training step, as the trainer runs it and `cfh bench` times it.

`draw_split` draws a step's AR split (group sizes, token order, AR weights) from the seeded
per-(step, rank) generator; `train_step` runs the loss forward (bf16 autocast where the run uses
it), backward, gradient clip, AdamW and EMA update on a `Learner` that `make_learner` builds from
the factories in model/training/build.py. The trainer and harness/bench_train.py call these same
functions, so the bench times what the trainer runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig

from model.method import ar
from model.method.diffusion import Diffusion, causalfusion_loss
from model.training.build import (
    ema_decay,
    grad_clip,
    lr_at,
    make_ema,
    make_optimizer,
    use_bf16,
)


@dataclass
class Split:
    """One AR split as the trainer draws it at a step: group sizes, order, AR weights."""

    sizes: list[int]
    order: torch.Tensor  # (batch, L) token order, on the device
    weights: torch.Tensor  # (L,) AR weight per token, on the device
    seq_len: int  # condition + clean prefix + noisy tokens (image part)
    gen: torch.Generator = field(repr=False)  # the step's generator, for the step's other draws


def draw_split(cfg: DictConfig, step: int, rank: int, batch: int, device: torch.device) -> Split:
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
    return Split(sizes, order.to(device), weights.to(device), C + 2 * L - sizes[-1], gen)


@dataclass
class Learner:
    """What a training step updates, and how: network, loss module, EMA copy, optimizer."""

    cfg: DictConfig
    net: torch.nn.Module  # its parameters are clipped, averaged and saved
    forward: torch.nn.Module  # what the loss calls: net, or a JointObjective/DDP/compiled wrap
    ema: torch.nn.Module
    opt: torch.optim.Optimizer
    diffusion: Diffusion
    bf16: bool
    clip: float  # gradient-norm clip (inf = none)
    ema_target: float  # the EMA decay after warm-up (train.ema_decay)
    joint: bool = False


def make_learner(
    cfg: DictConfig,
    net: torch.nn.Module,
    device: torch.device,
    wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    joint: bool = False,
) -> Learner:
    """A Learner around `net` with the run's optimizer and EMA; `wrap(net)` is the loss module."""
    return Learner(
        cfg=cfg,
        net=net,
        forward=wrap(net) if wrap is not None else net,
        ema=make_ema(net),
        opt=make_optimizer(cfg, net.parameters()),
        diffusion=Diffusion().to(device),
        bf16=use_bf16(cfg, device),
        clip=grad_clip(cfg),
        ema_target=float(cfg.train.ema_decay),
        joint=joint,
    )


@dataclass
class StepOut:
    """A step's results: the loss (detached), grad norm (None when skipped), parts, lr."""

    loss: torch.Tensor
    grad_norm: torch.Tensor | None
    parts: dict[str, torch.Tensor]
    lr: float
    finite: bool


def local_finite(loss: torch.Tensor) -> bool:
    """This process's finiteness check (the trainer reduces it over ranks)."""
    return bool(torch.isfinite(loss.detach()).item())


def train_step(
    learner: Learner,
    x: torch.Tensor,
    y: torch.Tensor,
    split: Split,
    step: int,
    all_finite: Callable[[torch.Tensor], bool] = local_finite,
) -> StepOut:
    """Step `step` (0-based): loss, and unless it is non-finite, backward, clip, AdamW, EMA."""
    cfg, t = learner.cfg, learner.cfg.train
    lr = lr_at(step, cfg)
    for group in learner.opt.param_groups:
        group["lr"] = lr
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
                captioning.to(x.device),
                drop.to(x.device),
                split.order,
                split.sizes,
                split.weights,
                t.loss.noise_weighting,
                float(t.loss.min_snr_gamma),
            )
            loss = loss_d + float(jt.text_weight) * loss_t
            parts = {"loss_diffusion": loss_d.detach(), "loss_text": loss_t.detach()}
        else:
            loss, _ = causalfusion_loss(
                learner.forward,
                learner.diffusion,
                x,
                y,
                split.order,
                split.sizes,
                split.weights,
                noise_weighting=t.loss.noise_weighting,
                min_snr_gamma=float(t.loss.min_snr_gamma),
            )
    if not all_finite(loss):
        learner.opt.zero_grad(set_to_none=True)
        return StepOut(loss.detach(), None, parts, lr, False)
    learner.opt.zero_grad(set_to_none=True)
    loss.backward()
    gn = torch.nn.utils.clip_grad_norm_(learner.net.parameters(), learner.clip)
    learner.opt.step()
    ema_update(learner.ema, learner.net, ema_decay(learner.ema_target, step + 1))
    return StepOut(loss.detach(), gn.detach(), parts, lr, True)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * net, parameter by parameter."""
    torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1.0 - decay)
