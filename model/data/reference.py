"""FID reference images: the real images a run's samples are compared with.

Latent runs compare with the images their latents were encoded from (meta.json's `source`),
digit-caption runs with the digits or MNIST images they describe (`image_source_cfg`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from core.config.datasets import (
    CAPTIONED_IMAGES,
    REFERENCE_SUBSET_SEED,
    check_split,
    data_root,
    dataset_name,
    read_latent_meta,
)
from core.config.sections import DataConfig, data_config
from core.errors import UserError
from model.data.sources import ImageTensorDataset, build_dataset


class Uint8View(Dataset):
    """A dataset's items as uint8 (C, H, W) tensors (what torch-fidelity reads)."""

    def __init__(self, dataset: Dataset, indices: np.ndarray | None = None):
        self.dataset = dataset
        self.indices = np.arange(len(dataset)) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.dataset.uint8(int(self.indices[i]))

    def label(self, i: int) -> int:
        """Class index of item i."""
        inner = self.dataset
        j = int(self.indices[i])
        return int(inner.labels[j]) if hasattr(inner, "labels") else int(inner.samples[j][1])


def image_source_cfg(data_cfg: DataConfig | Any) -> DataConfig:
    """The config of the image dataset behind `data_cfg` (latents: meta.json's `source`; digit
    captions: the digits or MNIST images they describe)."""
    data_cfg = data_config(data_cfg)  # the reference's entry: a caller's mapping too
    name = dataset_name(data_cfg)
    if name in CAPTIONED_IMAGES:
        return data_config({"name": CAPTIONED_IMAGES[name], "root": None, "flip": False,
                            "latent_scale": 1.0, **_geometry(data_cfg)})  # fmt: skip
    if name != "latents":
        return data_cfg
    meta = read_latent_meta(data_root(data_cfg))
    source = meta.get("source")
    if not source or source.get("name") not in ("digits", "mnist", "imagefolder"):
        raise UserError(
            f"data=latents: meta.json in data.root has no usable image source ({source!r}); "
            "FID needs the images the latents were encoded from (an image folder)"
        )
    if source["name"] == "imagefolder" and not Path(source.get("root") or "").is_dir():
        raise UserError(
            f"data=latents: the image folder the latents came from ({source.get('root')!r}, "
            "meta.json source.root) is not available; FID needs it as the reference"
        )
    return data_config(source)


def reference_dataset(data_cfg: Any, split: str = "test", max_n: int | None = None) -> Uint8View:
    """The FID reference images of `split` as a lazy Dataset of uint8 (C, H, W) tensors.

    With `max_n`, a fixed seeded subset of max_n images (image folders are sorted by class, so
    the first max_n would be few classes).
    """
    source = image_source_cfg(data_cfg)
    name = dataset_name(source)
    check_split(name, split)
    ds = build_dataset(source.replaced(flip=False), split)
    n = len(ds)
    indices = np.arange(n)
    if max_n is not None and max_n < n:
        rng = np.random.default_rng(REFERENCE_SUBSET_SEED)
        indices = np.sort(rng.permutation(n)[:max_n])
    return Uint8View(ds, indices)


def reference_images(
    data_cfg: Any, split: str = "test", max_n: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """FID reference images as (uint8 (N, H, W, C) -- the samples.npz layout, int64 labels)."""
    view = reference_dataset(data_cfg, split, max_n)
    inner = view.dataset
    if isinstance(inner, ImageTensorDataset):
        idx = torch.from_numpy(view.indices)
        return inner.images[idx].permute(0, 2, 3, 1).contiguous(), inner.labels[idx]
    images = torch.stack([view[i] for i in range(len(view))]).permute(0, 2, 3, 1).contiguous()
    labels = torch.tensor([view.label(i) for i in range(len(view))], dtype=torch.int64)
    return images, labels


def _geometry(d: DataConfig) -> dict:
    """The image geometry keys of a data config, as a plain dict."""
    return {"resolution": d.resolution, "channels": d.channels, "num_classes": d.num_classes,
            "patch_size": d.patch_size}  # fmt: skip


def dataset_key(data_cfg: Any) -> str:
    """A short name for the image data behind `data_cfg`, usable in file names (cache keys)."""
    source = image_source_cfg(data_cfg)
    name = dataset_name(source)
    key = f"{name}{source.resolution}c{source.channels}"
    if name == "imagefolder":
        root = str(data_root(source).resolve())
        key += "-" + hashlib.sha256(root.encode()).hexdigest()[:10]
    return key
