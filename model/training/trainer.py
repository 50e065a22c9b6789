"""The trainer: one process, or DDP over ranks (gloo on CPU, nccl on GPUs); exact resume.

`train(cfg)` trains into cfg.run_dir. Running it again on the same folder resumes from the
latest readable checkpoint and continues bit-for-bit (every rank's RNG states and data position
are saved); a raised `train.steps` continues training. SIGUSR2/SIGTERM reaching any rank make
every rank save one checkpoint at the same step boundary (the caught-signal flag is reduced over
ranks each step), then hand over to the handler installed before (the harness's, which requeues
the job), or exit with code 124. A resume needs the world size the checkpoint was written with.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from core.errors import UserError
from core.io import (
    atomic_write_text,
    cut_jsonl,
    record_failure,
    update_status,
)
from model.data.sources import BatchStream, build_dataset
from model.method import ar
from model.method.diffusion import Diffusion, causalfusion_loss
from model.method.network import CausalFusion, build_model, count_params, train_flops_per_image
from model.training.checkpoint import (
    checkpoint_path,
    checkpoint_paths,
    load_latest_checkpoint,
    rank_states,
    remove_checkpoint,
    remove_stale_temps,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from model.training.distributed import (
    DistInfo,
    barrier,
    gather_to_all,
    init_distributed,
    reduce_max,
    reduce_mean,
)
from model.training.loggers import TrainLoggers
from model.training.perf import matmul_peak_flops, mfu, peak_memory_mb
from model.training.progress import Progress, run_log

log = logging.getLogger("cfh.train")

# Keys that may differ between a run folder's config and a resumed run's config.
RESUMABLE_KEYS = (
    "run_dir",
    "train.steps",
    "train.ckpt_every",
    "train.keep_checkpoints",
    "train.log_every",
    "train.num_workers",
    "train.device",
    "train.dist_timeout_s",
    "train.compile",
    "train.grad_checkpointing",
    "train.loggers",
    "sample",
    "eval",
    "cluster",
)


class TrainingFailed(RuntimeError):
    """Training cannot go on (non-finite loss); the run is marked failed."""


class Preempted(SystemExit):
    """Raised after the checkpoint on SIGUSR2/SIGTERM when no other handler takes over."""


def pick_device(cfg: DictConfig, info: DistInfo) -> torch.device:
    """The device named by train.device (auto = CUDA when present)."""
    want = cfg.train.device
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("train.device=cuda but no CUDA device is visible; use cpu or auto")
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


def model_from_config(cfg: DictConfig, text_vocab: int = 0) -> CausalFusion:
    """Build the network that `cfg` describes (size from model=, geometry from data=); a joint
    image-text model with `text_vocab` token ids (its tokenizer's vocabulary size)."""
    text = {}
    if text_vocab:
        from model.data.joint_pairs import max_text_len

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


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def identity_diff(old: dict, new: dict) -> list[str]:
    """Keys (dotted) whose values differ between two configs, ignoring resumable keys."""

    def keep(key: str) -> bool:
        return not any(key == r or key.startswith(r + ".") for r in RESUMABLE_KEYS)

    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b) if keep(k) and a.get(k) != b.get(k))


def check_run_dir(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse a config that would change what an existing run folder trains."""
    path = run_dir / "config.yaml"
    if not path.exists():
        return
    old = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    new = OmegaConf.to_container(cfg, resolve=True)
    diff = identity_diff(old, new)  # type: ignore[arg-type]
    if diff:
        shown = ", ".join(f"{k}: {_get(old, k)!r} -> {_get(new, k)!r}" for k in diff[:6])
        raise UserError(
            f"run_dir={run_dir} holds a run with a different config ({shown}); "
            "use a new run_dir, or only change train.steps and other resumable keys"
        )


def _get(d: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


# ---------------------------------------------------------------- the loop


class _SignalCatcher:
    """Turns SIGUSR2/SIGTERM into a flag the loop checks (reduced over ranks) at step boundaries."""

    SIGNALS = (signal.SIGUSR2, signal.SIGTERM)
    # flag values, reduced with MAX over ranks: a requeue warning (USR2) outranks a stop (TERM)
    CODES = {signal.SIGTERM: 1, signal.SIGUSR2: 2}

    def __init__(self) -> None:
        self.caught: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _SignalCatcher:
        if hasattr(signal, "pthread_kill") and _is_main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.caught is None or self.CODES[signum] > self.CODES[self.caught]:
            self.caught = signum

    def code(self) -> int:
        """This rank's flag: 0 (no signal), else the CODES value of the signal caught."""
        return 0 if self.caught is None else self.CODES[self.caught]

    @classmethod
    def signal_of(cls, code: int) -> int:
        return next(sig for sig, c in cls.CODES.items() if c == code)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def hand_over(self, signum: int) -> None:
        """After the checkpoint: let the previous handler act on `signum` (the harness requeues;
        on a rank the signal never reached, too), else exit with 124."""
        previous = self.previous.get(signum)
        self.__exit__()
        if callable(previous):
            previous(signum, None)
        raise Preempted(124)


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def lr_at(step: int, cfg: DictConfig) -> float:
    """Learning rate: linear warm-up, then constant (so raising train.steps changes nothing)."""
    lr = float(cfg.train.lr)
    if cfg.train.lr_ref_batch:
        lr *= cfg.train.batch_size / float(cfg.train.lr_ref_batch)
    warm = int(cfg.train.warmup_steps)
    return lr * min(1.0, (step + 1) / warm) if warm > 0 else lr


def train(cfg: DictConfig) -> dict:
    """Train (or resume) the run in cfg.run_dir; return the final summary."""
    if not cfg.run_dir:
        raise UserError("run_dir is required: cfh train run_dir=PATH ...")
    run_dir = Path(str(cfg.run_dir))
    info = init_distributed(float(cfg.train.dist_timeout_s))
    if cfg.train.batch_size % info.world:
        raise UserError(
            f"train.batch_size={cfg.train.batch_size} is not divisible by the world size "
            f"{info.world}; use a multiple of {info.world}"
        )
    device = pick_device(cfg, info)
    if device.type == "cpu" and os.environ.get("SLURM_CPUS_PER_TASK"):
        # SLURM packs array tasks side by side: one thread per allotted CPU, not per core.
        torch.set_num_threads(int(os.environ["SLURM_CPUS_PER_TASK"]))
    check_run_dir(cfg, run_dir)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    with run_log(run_dir / "log.txt", enabled=info.is_main):  # rank 0 writes the run's log
        if info.is_main:
            update_status(run_dir, state="running", phase="train", error=None)
        barrier(info)  # the folder exists and an earlier failure is cleared before any rank works
        try:
            return _train(cfg, run_dir, info, device)
        except Exception as e:
            # the first rank to fail names the cause; the others then fail on its missing
            # collectives
            record_failure(run_dir, e, info.rank, info.world)
            if isinstance(e, TrainingFailed):
                log.error("%s", e)
            raise


def _train(cfg: DictConfig, run_dir: Path, info: DistInfo, device: torch.device) -> dict:
    t_cfg = cfg.train
    torch.manual_seed(cfg.seed * 1000 + info.rank)
    np.random.seed(cfg.seed * 1000 + info.rank)
    random.seed(cfg.seed * 1000 + info.rank)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    from model.data.joint_pairs import is_caption_data

    joint = is_caption_data(cfg.data)
    tokenizer = None
    if joint:
        from model.data.joint_pairs import run_tokenizer

        # every rank builds the same vocabulary; rank 0 writes it (before its first checkpoint)
        tokenizer = run_tokenizer(cfg.data, run_dir, write=info.is_main)
    net = model_from_config(cfg, tokenizer.vocab_size if tokenizer else 0).to(device)
    ema = copy.deepcopy(net).requires_grad_(False).eval()
    opt = torch.optim.AdamW(
        net.parameters(),
        lr=lr_at(0, cfg),
        betas=tuple(t_cfg.betas),
        eps=float(t_cfg.eps),
        weight_decay=t_cfg.weight_decay,
    )
    diffusion = Diffusion()
    if tokenizer is not None:
        from model.data.captions import load_caption_data
        from model.data.joint_pairs import CaptionPairs, max_text_len

        data = load_caption_data(cfg.data, "train")
        dataset = CaptionPairs(data, tokenizer, max_text_len(cfg.data))
    else:
        dataset = build_dataset(cfg.data, split="train")
    per_rank = t_cfg.batch_size // info.world
    stream = BatchStream(
        dataset,
        per_rank,
        seed=int(cfg.seed),
        rank=info.rank,
        world=info.world,
        num_workers=int(t_cfg.num_workers),
        pin_memory=device.type == "cuda",
    )

    step = 0
    if info.is_main and remove_stale_temps(run_dir):
        log.info("removed the temp files of an interrupted checkpoint write")
    barrier(info)
    ckpt = load_latest_checkpoint(run_dir)
    if ckpt is not None:
        per_rank = rank_states(ckpt, info.world, run_dir)
        net.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        stream.load_state_dict(per_rank["data"][info.rank])
        set_rng_state(per_rank["rng"][info.rank])
        step = int(ckpt["step"])
        log.info("resumed from step %d", step)
    if info.is_main:
        dropped = cut_jsonl(run_dir / "metrics.jsonl", step)  # steps after it are logged again
        if dropped:
            log.info("metrics.jsonl: dropped %d rows after step %d", dropped, step)
    if info.is_main:
        update_status(
            run_dir, state="running", phase="train", step=step, total_steps=int(t_cfg.steps)
        )
        log.info("params=%d device=%s world=%d", count_params(net), device, info.world)

    train_net: torch.nn.Module = net
    if joint:
        from model.method.joint import JointObjective

        train_net = JointObjective(net)  # both losses in one forward, as DDP needs
    if info.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        train_net = torch.nn.parallel.DistributedDataParallel(train_net, device_ids=ids)
    if t_cfg.compile:
        train_net = torch.compile(train_net)
    precision = t_cfg.precision
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    peak = matmul_peak_flops(str(device), torch.bfloat16 if use_bf16 else torch.float32)
    L = net.num_tokens
    C = int(cfg.model.num_cond_tokens)
    grid = int(cfg.data.resolution) // int(cfg.data.patch_size)
    aw = t_cfg.loss.ar_weight
    jt = t_cfg.joint

    def save(at_step: int) -> None:
        # every rank sends its RNG states and data position (a collective), rank 0 writes
        per_rank = gather_to_all({"rng": rng_state(device), "data": stream.state_dict()}, info)
        if info.is_main:
            _save_checkpoint(run_dir, cfg, net, ema, opt, per_rank, at_step)
        barrier(info)

    window = _Window()
    bar = Progress(int(t_cfg.steps), "train", log, unit="step", initial=step, enabled=info.is_main)
    sinks = TrainLoggers(run_dir, t_cfg.loggers, resume_step=step, enabled=info.is_main)
    t_start = time.perf_counter()
    with _SignalCatcher() as signals, contextlib.closing(sinks), contextlib.closing(bar):
        while step < t_cfg.steps:
            caught = reduce_max(signals.code(), info, device)  # the same answer on every rank
            if caught:
                save(step)
                sinks.close()  # the events so far are on disk before the job goes
                if info.is_main:
                    update_status(run_dir, state="requeued", step=step)
                signals.hand_over(signals.signal_of(caught))
            t0 = time.perf_counter()
            x, y = stream.next_batch()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            gen = ar.ar_generator(int(cfg.seed), step, info.rank)
            S = ar.sample_num_steps(
                t_cfg.ar.mode, L, gen, fixed_steps=int(t_cfg.ar.steps), decay=float(t_cfg.ar.decay)
            )
            sizes = ar.sample_group_sizes(L, S, gen)
            order = ar.token_order(t_cfg.order, x.shape[0], grid, gen, block=int(t_cfg.order_block))
            weights = ar.ar_token_weights(sizes, L, float(aw.max), float(aw.min), aw.schedule)
            lr = lr_at(step, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            parts: dict[str, torch.Tensor] = {}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                if joint:  # y holds caption ids; per sample: image-to-text or text-to-image
                    captioning = torch.rand(x.shape[0], generator=gen) < float(jt.caption_prob)
                    drop = torch.rand(x.shape[0], generator=gen) < float(jt.text_dropout)
                    loss_d, loss_t = train_net(
                        diffusion,
                        x,
                        y,
                        captioning.to(device),
                        drop.to(device),
                        order.to(device),
                        sizes,
                        weights.to(device),
                        t_cfg.loss.noise_weighting,
                        float(t_cfg.loss.min_snr_gamma),
                    )
                    loss = loss_d + float(jt.text_weight) * loss_t
                    parts = {"loss_diffusion": loss_d.detach(), "loss_text": loss_t.detach()}
                else:
                    loss, _ = causalfusion_loss(
                        train_net,
                        diffusion,
                        x,
                        y,
                        order.to(device),
                        sizes,
                        weights.to(device),
                        noise_weighting=t_cfg.loss.noise_weighting,
                        min_snr_gamma=float(t_cfg.loss.min_snr_gamma),
                    )
            if not _all_finite(loss, info):
                window.nonfinite += 1
                if window.nonfinite > t_cfg.max_nonfinite:
                    raise TrainingFailed(
                        f"non-finite loss ({loss.item()}) at step {step}; lower train.lr "
                        f"(now {t_cfg.lr}) or raise train.grad_clip; "
                        f"train.max_nonfinite={t_cfg.max_nonfinite} tolerated"
                    )
                opt.zero_grad(set_to_none=True)
                step += 1
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(net.parameters(), t_cfg.grad_clip or math.inf)
            opt.step()
            step += 1
            _ema_update(ema, net, min(float(t_cfg.ema_decay), (1 + step) / (10 + step)))
            seq_len = C + (L - sizes[-1]) + L + (y.shape[1] if joint else 0)
            window.add(
                loss.detach(), gn, x.shape[0] * info.world, seq_len, time.perf_counter() - t0,
                parts,
            )  # fmt: skip
            if step % t_cfg.log_every == 0 or step == t_cfg.steps:
                flops = train_flops_per_image(net.cfg, window.mean_seq_len())
                row = window.flush(step, lr, info, flops, peak, device, t_start)
                sinks.log(row)
                if info.is_main:
                    update_status(run_dir, step=step, loss=row["loss"])
                    bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['img_per_s']:.0f}")
            bar.update(1)
            if step % t_cfg.ckpt_every == 0 and step < t_cfg.steps:
                save(step)
                sinks.flush()
    save(step)
    summary = {"step": step, "params": count_params(net), "wall_s": time.perf_counter() - t_start}
    if info.is_main:
        update_status(run_dir, state="completed", phase="train", step=step)
        log.info("finished at step %d", step)
    return summary


def _all_finite(loss: torch.Tensor, info: DistInfo) -> bool:
    bad = int(not torch.isfinite(loss.detach()).item())
    return reduce_max(bad, info, loss.device) == 0


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    ema_p = list(ema.parameters())
    net_p = list(net.parameters())
    torch._foreach_lerp_(ema_p, net_p, 1.0 - decay)


def _save_checkpoint(
    run_dir: Path,
    cfg: DictConfig,
    net: torch.nn.Module,
    ema: torch.nn.Module,
    opt: torch.optim.Optimizer,
    per_rank: list[dict],
    step: int,
) -> None:
    state = {
        "model": net.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": opt.state_dict(),
        "step": step,
        "world_size": len(per_rank),
        "rng": [r["rng"] for r in per_rank],  # index = rank
        "data": [r["data"] for r in per_rank],
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    save_checkpoint(checkpoint_path(run_dir, step), state)
    for old in checkpoint_paths(run_dir)[: -int(cfg.train.keep_checkpoints)]:
        remove_checkpoint(old)
    log.info("checkpoint at step %d", step)


class _Window:
    """Accumulates per-step numbers between two log lines."""

    def __init__(self) -> None:
        self.nonfinite = 0
        self._reset()

    def _reset(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.parts: dict[str, list[torch.Tensor]] = {}  # loss per part (joint models)
        self.grad_norms: list[torch.Tensor] = []
        self.images = 0
        self.tokens = 0
        self.seconds = 0.0

    def add(
        self,
        loss: torch.Tensor,
        gn: torch.Tensor,
        images: int,
        seq: int,
        sec: float,
        parts: dict[str, torch.Tensor] | None = None,
    ) -> None:
        for name, value in (parts or {}).items():
            self.parts.setdefault(name, []).append(value)
        self.losses.append(loss)
        self.grad_norms.append(gn.detach())
        self.images += images
        self.tokens += images * seq
        self.seconds += sec

    def mean_seq_len(self) -> float:
        return self.tokens / max(self.images, 1)

    def flush(
        self,
        step: int,
        lr: float,
        info: DistInfo,
        flops_per_image: float,
        peak: float,
        device: torch.device,
        t_start: float,
    ) -> dict:
        loss = reduce_mean(torch.stack(self.losses).float().mean(), info)
        img_s = self.images / max(self.seconds, 1e-9)
        row = {
            "step": step,
            "loss": loss.item(),
            **{
                name: reduce_mean(torch.stack(v).float().mean(), info).item()
                for name, v in sorted(self.parts.items())
            },
            "lr": lr,
            "grad_norm": torch.stack(self.grad_norms).float().mean().item(),
            "img_per_s": img_s,
            "tokens_per_s": self.tokens / max(self.seconds, 1e-9),
            "mfu": mfu(flops_per_image, img_s / info.world, peak),
            "peak_mem_mb": peak_memory_mb(device),
            "wall_s": time.perf_counter() - t_start,
        }
        self._reset()
        return row
