"""The images an edit or a caption starts from: split indices and image files, in model space.

`edit.input` and `caption.input` name them alike: an int is an index into eval.split, a string
an image file (center-cropped as data=imagefolder; VAE-encoded for latent runs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from core.config.datasets import read_latent_meta
from core.errors import UserError
from model.data.arrays import center_crop_arr
from model.data.encode import load_vae
from model.data.reference import image_source_cfg
from model.data.sources import build_dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def input_list(value: Any) -> list[Any]:
    """edit.input / caption.input (checked by the config schema) as a list of indices and paths."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def pixel_resolution(train_cfg: Any) -> int:
    """Side in pixels of the images a run shows (latent runs: the encoded source images)."""
    data = train_cfg.data
    if data.name != "latents":
        return int(data.resolution)
    return int(image_source_cfg(data).resolution)


def eval_dataset(train_cfg: Any, split: str):
    """The run's dataset (model space: pixels or scaled latents) of `split`, unflipped."""
    return build_dataset(train_cfg.data.replaced(flip=False), split)


def gather(ds: Any, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch (x, y) by index from an in-memory or a file-backed dataset."""
    if hasattr(ds, "get_batch"):
        return ds.get_batch(idx)
    items = [ds[int(i)] for i in idx]
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


def _read_image(path: Path, channels: int, resolution: int) -> torch.Tensor:
    """An image file as (C, H, W) floats in [-1, 1], center-cropped/resized (ADM crop)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            arr = center_crop_arr(img.convert("L" if channels == 1 else "RGB"), resolution)
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"edit.input={str(path)!r} is not a readable image: {e}") from None
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.transpose(2, 0, 1).copy()).float() / 127.5 - 1.0  # PIL: read-only


def _vae_for(train_cfg: Any, path: Path):
    """The VAE of a latent run (meta.json's vae.path), or a UserError saying why there is none."""
    root = Path(str(train_cfg.data.root)).expanduser()
    meta = read_latent_meta(root)
    vae_path = Path(meta.get("vae", {}).get("path", ""))
    vae_path = vae_path if vae_path.is_absolute() else root / vae_path
    why = None
    if not vae_path.is_dir():
        why = f"its VAE folder {str(vae_path)!r} (meta.json vae.path) is missing"
    else:
        try:
            import diffusers  # noqa: F401
        except ImportError:
            why = "diffusers is not installed (pip install -e '.[vae]')"
    if why:
        raise UserError(
            f"edit.input={str(path)!r} is an image file, but this run trains on VAE latents and "
            f"{why}; give a dataset index instead"
        )
    return load_vae(str(vae_path)), float(meta["scale_factor"])


@torch.no_grad()
def _encode(pixels: torch.Tensor, train_cfg: Any, path: Path) -> torch.Tensor:
    """Pixels in [-1, 1] -> the run's model space (scaled VAE latents for latent runs)."""
    if train_cfg.data.name != "latents":
        return pixels
    vae, scale = _vae_for(train_cfg, path)
    want = int(vae.config.in_channels)
    x = pixels.expand(-1, want, -1, -1) if pixels.shape[1] == 1 else pixels
    return vae.encode(x).latent_dist.mode().float() * scale  # the posterior mean, as cfh encode


def load_inputs(
    inputs: list[Any], train_cfg: Any, split: str
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(x in model space (N, C, H, W), labels (N,) with -1 for files, names) of edit.input."""
    ds = None
    xs, ys, names = [], [], []
    data = train_cfg.data
    for item in inputs:
        if isinstance(item, int):
            ds = ds if ds is not None else eval_dataset(train_cfg, split)
            if not 0 <= item < len(ds):
                raise UserError(
                    f"edit.input={item} is not an index of the {split} split "
                    f"({len(ds)} images); allowed: 0..{len(ds) - 1} or an image file"
                )
            x, y = gather(ds, torch.tensor([item]))
            xs.append(x[0])
            ys.append(int(y[0]))
            names.append(f"{split}[{item}]")
            continue
        path = Path(item).expanduser()
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            raise UserError(
                f"edit.input={item!r} is neither a dataset index nor an existing image file; "
                f"allowed: an int (index into eval.split={split}) or a {'/'.join(IMAGE_SUFFIXES)}"
            )
        if data.name == "latents":
            source = image_source_cfg(data)
            channels, res = int(source.channels), int(source.resolution)
        else:
            channels, res = int(data.channels), int(data.resolution)
        pixels = _read_image(path, channels, res)[None]
        xs.append(_encode(pixels, train_cfg, path)[0])
        ys.append(-1)
        names.append(str(path))
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64), names
