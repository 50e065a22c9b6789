"""What a training run is built from: its device, network, optimizer and EMA copy.

One home for these factories: the trainer and `cfh bench` (harness/bench/train.py) both call
them, so the bench times the optimizer the trainer runs (same eps, betas, weight decay).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch

from core.config import RunConfig
from core.errors import UserError
from model.data.joint_pairs import max_text_len
from model.method.network import CausalFusion, build_model
from model.training.distributed import DistInfo


def pick_device(cfg: RunConfig, info: DistInfo) -> torch.device:
    """The device named by train.device (auto = CUDA when present)."""
    want = cfg.train.device
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("train.device=cuda but no CUDA device is visible; use cpu or auto")
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


def use_bf16(cfg: RunConfig, device: torch.device) -> bool:
    """Whether the step runs under bf16 autocast (train.precision; auto = bf16 on CUDA)."""
    p = cfg.train.precision
    return p == "bf16" or (p == "auto" and device.type == "cuda")


def model_from_config(cfg: RunConfig, text_vocab: int = 0) -> CausalFusion:
    """Build the network that `cfg` describes (size from model=, geometry from data=); a joint
    image-text model with `text_vocab` token ids (its tokenizer's vocabulary size)."""
    text = {}
    if text_vocab:
        text = {"text_vocab": text_vocab, "max_text_len": max_text_len(cfg.data)}
    return build_model(
        cfg.model.name,
        input_size=cfg.data.resolution,
        in_channels=cfg.data.channels,
        patch_size=cfg.data.patch_size,
        num_classes=cfg.data.num_classes,
        num_cond_tokens=cfg.model.num_cond_tokens,
        pos_embed=cfg.model.pos_embed,
        attention=cfg.model.attention,
        class_dropout=cfg.train.label_dropout,
        grad_checkpointing=bool(cfg.train.grad_checkpointing),
        **text,
    )


def lr_at(step: int, cfg: RunConfig) -> float:
    """Learning rate: linear warm-up, then constant (so raising train.steps changes nothing)."""
    lr = float(cfg.train.lr)
    if cfg.train.lr_ref_batch:
        lr *= cfg.train.batch_size / float(cfg.train.lr_ref_batch)
    warm = int(cfg.train.warmup_steps)
    return lr * min(1.0, (step + 1) / warm) if warm > 0 else lr


def make_optimizer(cfg: RunConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.AdamW:
    """The trainer's AdamW (train.betas, train.eps, train.weight_decay; lr of step 0).

    Fused (CPU and CUDA): one kernel per step, and it takes a device-side `found_inf` flag that
    skips the update, which is how a non-finite step is skipped without a host sync.
    """
    t = cfg.train
    return torch.optim.AdamW(
        params,
        lr=lr_at(0, cfg),
        betas=(float(t.betas[0]), float(t.betas[1])),
        eps=float(t.eps),
        weight_decay=float(t.weight_decay),
        fused=True,
    )


def load_optimizer(opt: torch.optim.AdamW, state: dict) -> None:
    """Load an optimizer state saved by any cfh version, keeping this build's fused kernel.

    load_state_dict copies every group setting from the file, `fused` included, and
    checkpoints written before the fused optimizer hold fused=None; the device-side skip
    (step.train_step sets found_inf) needs the fused kernel, so it is put back.
    """
    fused = [group.get("fused") for group in opt.param_groups]
    opt.load_state_dict(state)
    for group, was in zip(opt.param_groups, fused, strict=True):
        group["fused"] = was
        if was:
            group["foreach"] = None  # AdamW refuses fused and foreach together


def make_ema(net: torch.nn.Module) -> torch.nn.Module:
    """The EMA copy of `net`: frozen, in eval mode, starting from `net`'s weights."""
    return copy.deepcopy(net).requires_grad_(False).eval()


def ema_decay(target: float, steps_done: int, warmup: bool = True) -> float:
    """EMA decay after `steps_done` optimizer steps: warms up to `target` (train.ema_decay) as
    min(target, (1 + n) / (10 + n)), or `target` from the first step (the release's constant
    decay) when not `warmup` (train.ema_warmup=false)."""
    if not warmup:
        return float(target)
    return min(float(target), (1 + steps_done) / (10 + steps_done))


def grad_clip(cfg: RunConfig) -> float:
    """The gradient-norm clip (train.grad_clip; 0 = none, clipped at infinity)."""
    return float(cfg.train.grad_clip) or float("inf")
