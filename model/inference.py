"""Run-level sampling and evaluation: checkpoint -> samples.npz/grid.png -> eval/<hash>.json.

Samples are keyed by their sampling settings, so `cfh evaluate` with another extractor reuses
them; an eval record is keyed by sampling settings + extractor, so a finished evaluation is
never recomputed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from model.diffusion import Diffusion, make_sampler
from model.errors import UserError
from model.io import atomic_write_bytes, atomic_write_json, now_iso
from model.network import CausalFusion
from model.sampling import sample as sample_images
from model.train import checkpoint_paths, model_from_config

log = logging.getLogger("cfh.inference")


def settings_hash(settings: dict) -> str:
    """Short stable hash of a settings dict (folder and file names)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _run_dir(cfg: DictConfig) -> Path:
    if not cfg.run_dir:
        raise UserError("run_dir is required: point it at a trained run folder")
    run_dir = Path(str(cfg.run_dir))
    if not run_dir.is_dir():
        raise UserError(f"run_dir={run_dir}: no such folder")
    return run_dir


def resolve_checkpoint(run_dir: Path, ckpt: Any) -> Path:
    """The checkpoint file for sample.ckpt (latest or a step number)."""
    paths = checkpoint_paths(run_dir)
    if not paths:
        raise UserError(f"run_dir={run_dir} has no checkpoint; train it first (cfh train)")
    if ckpt == "latest":
        return paths[-1]
    wanted = run_dir / "checkpoints" / f"ckpt_{int(ckpt):08d}.pt"
    if wanted not in paths:
        steps = ", ".join(str(int(p.stem.split("_")[1])) for p in paths)
        raise UserError(f"sample.ckpt={ckpt}: no checkpoint at that step; available: {steps}")
    return wanted


def load_trained(cfg: DictConfig, device: torch.device) -> tuple[CausalFusion, int, DictConfig]:
    """The run's network (EMA weights unless sample.ema=false), its step and its train config."""
    run_dir = _run_dir(cfg)
    train_cfg = OmegaConf.load(run_dir / "config.yaml")
    path = resolve_checkpoint(run_dir, cfg.sample.ckpt)
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = model_from_config(train_cfg)  # type: ignore[arg-type]
    net.load_state_dict(state["ema" if cfg.sample.ema else "model"])
    return net.to(device).eval(), int(state["step"]), train_cfg  # type: ignore[return-value]


def sample_settings(cfg: DictConfig, ckpt_step: int) -> dict:
    """Everything that decides the samples."""
    s = cfg.sample
    interval = list(s.cfg_interval) if s.cfg_interval is not None else None
    settings = {
        "s_eval": int(s.ar_steps),
        "order": str(s.order),
        "cfg": float(s.cfg),
        "cfg_interval": interval,
        "steps": int(s.steps),
        "sampler": str(s.sampler),
        "num_samples": int(s.num),
        "seed": int(s.seed),
        "ema": bool(s.ema),
        "ckpt_step": ckpt_step,
        "task": str(cfg.eval.task),
    }
    if settings["task"] != "generate":  # edits start from real images of the eval split
        settings["split"] = str(cfg.eval.split)
    return settings


def eval_settings(cfg: DictConfig, ckpt_step: int, weights_hash: str | None = None) -> dict:
    """Sampling settings plus the feature extractor that scores them."""
    return {
        **sample_settings(cfg, ckpt_step),
        "extractor": str(cfg.eval.extractor),
        "extractor_weights_hash": weights_hash,
        "split": str(cfg.eval.split),
        "ref_num": cfg.eval.ref_num,
    }


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) floats in [-1, 1] -> (N, H, W, C) uint8."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def image_grid_png(images: np.ndarray, ncol: int = 10, scale: int = 0) -> bytes:
    """A PNG of up to 100 uint8 NHWC images laid out in rows of `ncol`."""
    from PIL import Image
    from torchvision.utils import make_grid

    x = torch.from_numpy(images[:100]).permute(0, 3, 1, 2)
    grid = make_grid(x, nrow=ncol, padding=1, pad_value=255).permute(1, 2, 0).numpy()
    img = Image.fromarray(grid.squeeze(-1) if grid.shape[-1] == 1 else grid)
    scale = scale or max(1, 256 // max(images.shape[1], 1))
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def balanced_labels(num: int, num_classes: int) -> torch.Tensor:
    """0, 1, ..., K-1, 0, 1, ...: every class equally often (to within one)."""
    return torch.arange(num) % num_classes


def sample_run(cfg: DictConfig, device: torch.device | None = None) -> dict:
    """Draw cfg.sample.num class-balanced samples (reused if already drawn with these settings)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    run_dir = _run_dir(cfg)
    net, step, train_cfg = load_trained(cfg, device)
    settings = sample_settings(cfg, step)
    out_dir = run_dir / "samples" / settings_hash(settings)
    npz = out_dir / "samples.npz"
    if npz.exists():
        meta = json.loads((out_dir / "settings.json").read_text())
        return {**meta, "dir": str(out_dir), "grid": str(out_dir / "grid.png"), "reused": True}
    if int(cfg.sample.ar_steps) > net.num_tokens:
        raise UserError(
            f"sample.ar_steps={cfg.sample.ar_steps} must be in 1..L={net.num_tokens} "
            "(the tokens per image)"
        )
    if settings["task"] == "generate":
        images, labels, seconds, details = _generate_samples(net, train_cfg, cfg, device)
    else:  # inpaint / outpaint / swap: real images of eval.split edited in context
        from model.editing import task_samples

        images, labels, seconds, details = task_samples(net, train_cfg, cfg, device)
    meta = {
        "settings": settings,
        "num_samples": len(images),
        "sample_img_per_s": len(images) / seconds,
        "seconds": seconds,
        "created": now_iso(),
        **details,
    }
    buf = io.BytesIO()
    np.savez(buf, images=images, labels=labels)
    atomic_write_bytes(npz, buf.getvalue())
    atomic_write_bytes(out_dir / "grid.png", image_grid_png(images))
    atomic_write_json(out_dir / "settings.json", meta)
    log.info(
        "sampled %d images at %.1f img/s into %s", len(images), meta["sample_img_per_s"], out_dir
    )
    return {**meta, "dir": str(out_dir), "grid": str(out_dir / "grid.png"), "reused": False}


def _generate_samples(
    net: CausalFusion, train_cfg: Any, cfg: DictConfig, device: torch.device
) -> tuple[np.ndarray, np.ndarray, float, dict]:
    """sample.num class-balanced samples: (uint8 NHWC images, int64 labels, seconds, {})."""
    pixels = train_cfg.data.name != "latents"  # pixels live in [-1, 1]; latents are unbounded
    sampler = make_sampler(
        Diffusion(), str(cfg.sample.sampler), int(cfg.sample.steps), clip_x0=pixels
    )
    labels = balanced_labels(int(cfg.sample.num), int(train_cfg.data.num_classes))
    interval = tuple(cfg.sample.cfg_interval) if cfg.sample.cfg_interval is not None else None
    chunks = []
    bs = int(cfg.sample.batch_size)
    t0 = time.perf_counter()
    for i, start in enumerate(range(0, len(labels), bs)):
        gen = torch.Generator(device).manual_seed(int(cfg.sample.seed) * 100_003 + i)
        y = labels[start : start + bs].to(device)
        x = sample_images(
            net,
            sampler,
            y,
            int(cfg.sample.ar_steps),
            order=str(cfg.sample.order),
            cfg_scale=float(cfg.sample.cfg),
            cfg_interval=interval,
            generator=gen,
            block=int(train_cfg.train.order_block),
        )
        chunks.append(decode_to_pixels(x, train_cfg))
    seconds = time.perf_counter() - t0
    return to_uint8(torch.cat(chunks)), labels.numpy(), seconds, {}


def decode_to_pixels(x: torch.Tensor, train_cfg: Any) -> torch.Tensor:
    """Model outputs -> pixels in [-1, 1] (VAE-decoded for latent data)."""
    if train_cfg.data.name != "latents":
        return x
    from model.encode import decode_latents

    return decode_latents(x, train_cfg.data)


def load_samples(sample_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 NHWC images and int64 labels of a samples folder."""
    with np.load(Path(sample_dir) / "samples.npz") as f:
        return f["images"], f["labels"]


def evaluate_run(cfg: DictConfig, device: torch.device | None = None) -> dict:
    """Sample (or reuse samples) and score them; write and return run_dir/eval/<hash>.json."""
    from model.evaluate import compute_metrics

    run_dir = _run_dir(cfg)
    step = int(resolve_checkpoint(run_dir, cfg.sample.ckpt).stem.split("_")[1])
    settings = eval_settings(cfg, step)
    path = run_dir / "eval" / f"{settings_hash(settings)}.json"
    if path.exists():
        record = json.loads(path.read_text())
        return {**record, "path": str(path)}
    drawn = sample_run(cfg, device)
    images, labels = load_samples(drawn["dir"])
    train_cfg = OmegaConf.load(run_dir / "config.yaml")
    kid_subset = min(int(cfg.eval.kid_subset_size), len(images))
    metrics = compute_metrics(
        images,
        labels,
        train_cfg.data,
        str(cfg.eval.extractor),
        split=str(cfg.eval.split),
        kid_subset_size=kid_subset,
        weights_path=cfg.eval.weights_path,
        ref_max_n=cfg.eval.ref_num,
    )
    settings["extractor_weights_hash"] = metrics.get("extractor_weights_hash")
    record = {
        "settings": settings,
        "metrics": {**metrics, "sample_img_per_s": drawn["sample_img_per_s"]},
        "ckpt_step": step,
        "samples": drawn["dir"],
        "created": now_iso(),
    }
    atomic_write_json(path, record)
    return {**record, "path": str(path)}
