"""A trained run as sampling and evaluation read it: its folder, checkpoint, network and pixels.

Shared by the samples and eval records (model/evaluation/inference.py) and by the tasks above
them (model/tasks/: editing, captioning, the eval-task dispatch), so none of those needs another.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.config import RunConfig, read_run_config
from core.errors import UserError
from core.hashing import json_hash
from core.progress import Progress
from model.data.encode import decode_latents
from model.data.joint_pairs import is_caption_data, saved_tokenizer
from model.data.sources import to_uint8 as pixels_to_uint8
from model.method.diffusion import Diffusion, Sampler, make_sampler
from model.method.network import CausalFusion
from model.training.build import model_from_config
from model.training.checkpoint import (
    DamagedCheckpoints,
    checkpoint_path,
    checkpoint_paths,
    good_checkpoints,
    read_checkpoint,
    skipped_for,
    step_of,
    warn_once,
)
from model.training.distributed import DistInfo, dist_info
from model.training.identity import check_run_folder


def settings_hash(settings: dict) -> str:
    """Short stable hash of a settings dict (folder and file names)."""
    return json_hash(settings, 12, compact=False)


def run_dir(cfg: RunConfig) -> Path:
    """cfg.run_dir as an existing folder (UserError when unset or missing)."""
    if not cfg.run_dir:
        raise UserError("run_dir is required: point it at a trained run folder")
    path = Path(str(cfg.run_dir))
    if not path.is_dir():
        raise UserError(f"run_dir={path}: no such folder")
    check_run_folder(path)  # config.yaml edited by hand: what was trained is not known
    return path


def resolve_checkpoint(run_dir: Path, ckpt: Any) -> Path:
    """The checkpoint file for sample.ckpt: the newest good one for latest, or that step's.

    Each newer checkpoint skipped as damaged is named in one warning (once per process) with
    the one used instead; `skipped_for` lists them for the eval record.
    """
    paths = checkpoint_paths(run_dir)
    if not paths:
        raise UserError(f"run_dir={run_dir} has no checkpoint; train it first (cfh train)")
    if ckpt == "latest":
        good = good_checkpoints(run_dir)
        if not good:
            raise DamagedCheckpoints(
                f"run_dir={run_dir}: every checkpoint is damaged "
                f"({', '.join(p.name for p in paths)}); train again (cfh train) to rewrite them"
            )
        for skip in skipped_for(run_dir, good[-1]):
            warn_once(
                f"checkpoint {skip['path']} is damaged: {skip['reason']}; sampling from the "
                f"previous good checkpoint {good[-1].name} (step {step_of(good[-1])}) instead"
            )
        return good[-1]
    wanted = checkpoint_path(run_dir, int(ckpt))
    if wanted not in paths:
        steps = ", ".join(str(step_of(p)) for p in paths)
        raise UserError(f"sample.ckpt={ckpt}: no checkpoint at that step; available: {steps}")
    return wanted


def load_trained(cfg: RunConfig, device: torch.device) -> tuple[CausalFusion, int, RunConfig]:
    """The run's network (EMA weights unless sample.ema=false), its step and its train config."""
    folder = run_dir(cfg)
    train_cfg = read_run_config(folder / "config.yaml")
    path = resolve_checkpoint(folder, cfg.sample.ckpt)
    state = read_checkpoint(path)
    vocab = 0
    if is_caption_data(train_cfg.data):
        vocab = saved_tokenizer(folder).vocab_size
    net = model_from_config(train_cfg, vocab)
    net.load_state_dict(state["ema" if cfg.sample.ema else "model"])
    return net.to(device).eval(), int(state["step"]), train_cfg


def default_device(info: DistInfo | None = None) -> torch.device:
    """This rank's GPU when there is one, else the CPU."""
    info = info or dist_info()
    return (
        torch.device("cuda", info.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    )


def sample_progress(count: int) -> Progress:
    """Progress of this rank's samples (rank 0 reports; the shares are equal to within one)."""
    return Progress(count, "sample", "cfh.sample", unit="img", enabled=dist_info().is_main)


def run_sampler(cfg: RunConfig, train_cfg: RunConfig) -> Sampler:
    """sample.sampler over sample.steps; x0 clipped to [-1, 1] for pixels (latents unbounded)."""
    pixels = train_cfg.data.name != "latents"
    return make_sampler(Diffusion(), str(cfg.sample.sampler), int(cfg.sample.steps), clip_x0=pixels)


def guidance_interval(cfg: RunConfig) -> tuple[float, float] | None:
    """sample.cfg_interval as a tuple (None: guidance at every step)."""
    ci = cfg.sample.cfg_interval
    return tuple(ci) if ci is not None else None  # type: ignore[return-value]


def decode_to_pixels(x: torch.Tensor, train_cfg: RunConfig) -> torch.Tensor:
    """Model outputs -> pixels in [-1, 1] (VAE-decoded for latent data)."""
    if train_cfg.data.name != "latents":
        return x
    return decode_latents(x, train_cfg.data)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) floats in [-1, 1] -> (N, H, W, C) uint8."""
    return pixels_to_uint8(images.float()).permute(0, 2, 3, 1).cpu().numpy()


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


def load_samples(sample_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 NHWC images and int64 labels of a samples folder."""
    with np.load(Path(sample_dir) / "samples.npz") as f:
        return f["images"], f["labels"]
