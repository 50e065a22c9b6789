"""`cfh encode`: images -> VAE latents on disk (the `data=latents` format), and decoding back.

A latents folder holds:
- `latents.npy`: (N, C, h, w) float16 (default) or float32, the VAE posterior *mean* of each
  image (deterministic; `posterior="sample"` draws one sample per image from its own seeded
  stream instead), unscaled; `data=latents` multiplies by `scale_factor` when reading.
- `latents_flip.npy`: the same for the horizontally mirrored images (unless `flips=False`), so
  that `data.flip=true` trains on flips as the official recipe does (a mirrored latent is not
  the latent of the mirrored image).
- `labels.npy`: (N,) int64 class indices.
- `meta.json`: scale_factor, channels, resolution, num_classes, count, dtype, the image `source`
  (its data config, used for the FID reference images), and `vae.path` (for decoding samples).
- `vae/`: the VAE itself (save_pretrained) when it was given as a model object, not a folder.

Each file is written to a temporary name and renamed into place; meta.json comes last, so a
folder without it is an unfinished encode.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from core.config.datasets import read_latent_meta
from core.config.sections import data_config
from core.errors import UserError
from core.io import atomic_write_bytes, atomic_write_json, now_iso
from core.progress import Progress
from model.data.sources import build_dataset
from model.method.noise import SampleNoise

log = logging.getLogger("cfh.encode")

IMAGE_SOURCES = ("digits", "mnist", "imagefolder")
DTYPES = ("float16", "float32")
POSTERIORS = ("mean", "sample")


def _autoencoder_class() -> type:
    """diffusers' AutoencoderKL (the optional `vae` extra), imported lazily."""
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise UserError(
            "cfh encode needs diffusers (the optional extra): pip install -e '.[vae]'"
        ) from None
    return AutoencoderKL


def load_vae(vae: Any, device: str | torch.device = "cpu") -> torch.nn.Module:
    """An AutoencoderKL from a local folder (save_pretrained layout) or as given, in eval mode."""
    if isinstance(vae, (str, os.PathLike)):
        path = Path(vae).expanduser()
        if not path.is_dir():
            raise UserError(
                f"--vae {str(vae)!r} is not a folder; give a local diffusers AutoencoderKL folder "
                "(config.json + weights; nothing can be downloaded)"
            )
        vae = _autoencoder_class().from_pretrained(str(path))
    return vae.to(device).eval().requires_grad_(False)


def _to_vae_input(x: torch.Tensor, vae: torch.nn.Module) -> torch.Tensor:
    """Images in [-1, 1] -> the VAE's channel count (gray repeated to RGB)."""
    want = int(vae.config.in_channels)
    if x.shape[1] == want:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, want, -1, -1)
    raise UserError(f"data.channels={x.shape[1]} images cannot feed a VAE with {want} channels")


def _batches(ds: Any, batch_size: int, num_workers: int):
    """The dataset's (x, y) batches in index order."""
    if hasattr(ds, "get_batch"):
        for start in range(0, len(ds), batch_size):
            yield ds.get_batch(torch.arange(start, min(start + batch_size, len(ds))))
    else:
        yield from DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def _save_vae(vae: torch.nn.Module, target: Path) -> None:
    """save_pretrained into a temporary folder, then move it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=".vae.", dir=target.parent))
    try:
        vae.save_pretrained(str(tmp))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@torch.no_grad()
def encode_dataset(
    data_cfg: Any,
    vae_path_or_model: Any,
    out_dir: str | os.PathLike,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    split: str = "train",
    dtype: str = "float16",
    scale_factor: float | None = None,
    num_workers: int = 0,
    flips: bool = True,
    posterior: str = "mean",
    seed: int = 0,
) -> Path:
    """Encode the images of `data_cfg` (split `split`) into a latents folder; returns its path.

    `scale_factor` defaults to the VAE's `config.scaling_factor` (0.18215 for SD's VAE).
    """
    if posterior not in POSTERIORS:
        raise UserError(f"--posterior {posterior!r} is not allowed; choose one of {POSTERIORS}")
    data_cfg = data_config(data_cfg)  # `cfh encode`'s data section, or a caller's mapping
    name = data_cfg.name
    if name not in IMAGE_SOURCES:
        raise UserError(f"cfh encode reads images: data={name!r}; allowed: {IMAGE_SOURCES}")
    if dtype not in DTYPES:
        raise UserError(f"latent dtype {dtype!r} is not supported; allowed: {DTYPES}")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size} must be >= 1")
    source = data_cfg.replaced(flip=False)  # latents: encoded from unflipped images
    if name == "imagefolder":
        source = source.replaced(root=str(Path(str(source.root)).expanduser().resolve()))
    ds = build_dataset(source, split)
    vae = load_vae(vae_path_or_model, device)
    scale = float(scale_factor if scale_factor is not None else vae.config.scaling_factor)
    if not scale > 0:
        raise UserError(f"scale_factor={scale} must be > 0")
    if len(ds) == 0:
        raise UserError(f"data={name} split {split!r} has no images to encode")
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # until the new meta lands, the folder is partial

    names = ["latents.npy", "latents_flip.npy"] if flips else ["latents.npy"]
    (out / "latents_flip.npy").unlink(missing_ok=True)
    tmps = []
    for name_ in names:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name_}.", suffix=".tmp", dir=out)
        os.close(fd)
        tmps.append(Path(tmp_name))
    labels, written, maps = [], 0, []
    bar = Progress(len(ds), f"encode ({split})", log, unit="img")
    try:
        for x, y in _batches(ds, batch_size, num_workers):
            x = _to_vae_input(x.to(device, torch.float32), vae)
            rows = range(written, written + len(x))
            for k, view in enumerate([x, x.flip(-1)][: len(names)]):  # the image, mirrored
                z = _encode(vae, view, posterior, seed, [2 * i + k for i in rows])
                if len(maps) <= k:  # the latent shape is known after the first batch
                    shape = (len(ds), *z.shape[1:])
                    maps.append(np.lib.format.open_memmap(tmps[k], "w+", np.dtype(dtype), shape))
                maps[k][written : written + len(z)] = z
            written += len(x)
            labels.append(y.cpu().numpy().astype(np.int64))
            bar.update(len(x))
        bar.close()
        shape = maps[0].shape
        for mm in maps:
            mm.flush()
        del maps, mm
        for tmp, name_ in zip(tmps, names, strict=True):
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, out / name_)
    except BaseException:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        raise

    buf = io.BytesIO()
    np.save(buf, np.concatenate(labels))
    atomic_write_bytes(out / "labels.npy", buf.getvalue())
    if isinstance(vae_path_or_model, (str, os.PathLike)):
        vae_ref = str(Path(vae_path_or_model).expanduser().resolve())
    else:  # a model object: keep a copy beside the latents so samples can be decoded
        _save_vae(vae, out / "vae")
        vae_ref = "vae"
    meta = {
        "format": "cfh-latents-1",
        "scale_factor": scale,
        "channels": int(shape[1]),
        "resolution": int(shape[2]),
        "num_classes": int(data_cfg.num_classes),
        "count": int(shape[0]),
        "dtype": dtype,
        "posterior": posterior,
        "posterior_seed": seed if posterior == "sample" else None,
        "flips": bool(flips),
        "source": {**source.to_dict(), "split": split},
        "vae": {"path": vae_ref, "class": type(vae).__name__},
        "created": now_iso(),
    }
    atomic_write_json(out / "meta.json", meta)
    return out


def _encode(
    vae: torch.nn.Module, x: torch.Tensor, posterior: str, seed: int, streams: list[int]
) -> np.ndarray:
    """Latents of a batch: the posterior mean, or mean + std * noise from per-image streams."""
    dist = vae.encode(x).latent_dist
    if posterior == "mean":
        return dist.mode().float().cpu().numpy()
    noise = SampleNoise.for_indices(seed, streams).normal(
        dist.mean.shape[1:], x.device, torch.float32
    )
    return (dist.mean + dist.std * noise).float().cpu().numpy()


@functools.lru_cache(maxsize=2)
def _cached_vae(path: str, device: str) -> torch.nn.Module:
    """A VAE loaded from a folder, kept for repeated decodes."""
    return load_vae(path, device)


@torch.no_grad()
def decode_latents(
    latents: torch.Tensor, data_cfg: Any, vae: Any = None, batch_size: int = 64
) -> torch.Tensor:
    """Scaled latents (as `data=latents` yields them) -> pixels in [-1, 1], source channels.

    The VAE is `vae` when given, else the one meta.json names.
    """
    root = Path(str(data_config(data_cfg).root)).expanduser()
    meta = read_latent_meta(root)
    if vae is None:
        path = Path(meta["vae"]["path"])
        path = path if path.is_absolute() else root / path
        if not path.is_dir():  # decoding samples of a run whose VAE folder moved or was deleted
            raise UserError(
                f"cannot decode latents to pixels: data.root={str(root)!r} names the VAE folder "
                f"{str(path)!r} (meta.json vae.path), which is missing; restore it there or "
                f"edit vae.path in {str(root / 'meta.json')!r}"
            )
        vae = _cached_vae(str(path), str(latents.device))
    else:
        vae = load_vae(vae, latents.device)
    outs = []
    for z in latents.split(batch_size):
        outs.append(vae.decode(z.float() / meta["scale_factor"]).sample.clamp(-1, 1))
    x = torch.cat(outs)
    if int(meta["source"]["channels"]) == 1 and x.shape[1] != 1:
        x = x.mean(1, keepdim=True)  # gray images went in as repeated RGB
    return x
