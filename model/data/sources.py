"""Datasets (digits, mnist, imagefolder, latents, and the images of caption data).

Every dataset yields `(x, y)`: x a float32 tensor (C, H, W), pixels in [-1, 1] or scaled latents,
y an int64 class index. Splits:

- `digits`, `mnist`: the arrays of model/data/arrays.py; MNIST is zero-padded from 28x28 to
  32x32 when `data.resolution=32` (or used as is with `data.resolution=28`).
- `imagefolder`: root/<class>/<image> with class indices from the sorted folder names; ADM's
  center crop to the resolution. An image folder has one split: every split name reads the whole
  folder (for ImageNet the FID reference is the training set, as in ADM's reference batches).
- `latents`: `cfh encode`'s output (model/data/encode.py): latents.npy (N, C, h, w) float16/32,
  opened as a memmap, labels.npy, meta.json; one split, like imagefolder.

Flips: a dataset mirrors the rows the batch stream asks for (model/data/stream.py).
`data.on_device=true` (digits, mnist, latents): `on_device` holds the whole dataset on the
training device and gathers batches there (ImageNet-256 KL-16 latents: about 10.5 GB in float16,
21 GB with flips); the batches are bitwise those of the host copy.
FID reference images: model/data/reference.py. Config checks without torch: core/config/datasets.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from core.config.datasets import CAPTION_DATASETS, check_latents, data_root, loader_config
from core.config.sections import DataConfig
from core.errors import UserError
from model.data.arrays import center_crop_arr, digits_arrays, digits_split_indices, mnist_arrays
from model.data.captions import load_caption_data

# --------------------------------------------------------------------------------------------
# datasets


class ImageTensorDataset(Dataset):
    """In-memory uint8 images (N, C, H, W) and int64 labels; items are floats in [-1, 1]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, flip: bool = False):
        assert images.dtype == torch.uint8 and images.ndim == 4 and len(images) == len(labels)
        self.images = images
        self.labels = labels.to(torch.int64)
        self.flip = flip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return to_float(self.images[i]), self.labels[i]

    def get_batch(
        self, idx: torch.Tensor, flips: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather a batch directly (no DataLoader: tiny images are faster in one indexing op);
        rows whose `flips` flag is set are mirrored."""
        idx = _index_on(idx, self.images.device)
        x = to_float(self.images[idx])
        return (x if flips is None else _flip_rows(x, flips)), self.labels[idx]

    def uint8(self, i: int) -> torch.Tensor:
        """Item i as uint8 (C, H, W)."""
        return self.images[i]

    def to_device(self, device: torch.device) -> ImageTensorDataset:
        """The same dataset held on `device` (batches are gathered there)."""
        return ImageTensorDataset(self.images.to(device), self.labels.to(device), self.flip)


class ImageFolderDataset(Dataset):
    """root/<class>/<image>, ADM center crop to `resolution`, 1 (L) or 3 (RGB) channels."""

    def __init__(self, root: Path, resolution: int, channels: int, flip: bool = False):
        from torchvision.datasets import ImageFolder

        # ImageFolder gives class indices from the sorted folder names; we only use its file list
        self.folder = ImageFolder(str(root))
        self.samples = self.folder.samples
        self.classes = self.folder.classes
        self.resolution = resolution
        self.mode = "RGB" if channels == 3 else "L"
        self.flip = flip

    def __len__(self) -> int:
        return len(self.samples)

    def uint8(self, i: int) -> torch.Tensor:
        """Item i as uint8 (C, H, W), center-cropped."""
        path, _ = self.samples[i]
        with Image.open(path) as img:
            arr = center_crop_arr(img.convert(self.mode), self.resolution)
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return to_float(self.uint8(i)), torch.tensor(self.samples[i][1], dtype=torch.int64)


class LatentDataset(Dataset):
    """Pre-encoded latents (memmap) times the scale factor, with their labels.

    With `flip`, a row whose flip flag is set is read from latents_flip.npy: the latent of the
    mirrored image, which `cfh encode` writes beside latents.npy (a mirrored latent is not it).
    """

    def __init__(self, root: Path, scale: float, flip: bool = False):
        self.root = root
        self.latents = np.load(root / "latents.npy", mmap_mode="r")
        self.labels = torch.from_numpy(np.load(root / "labels.npy").astype(np.int64))
        self.scale = scale
        self.flip = flip
        self.flipped = np.load(root / "latents_flip.npy", mmap_mode="r") if flip else None
        if len(self.latents) != len(self.labels):
            raise UserError(
                f"data.root={str(root)!r}: latents.npy has {len(self.latents)} rows but "
                f"labels.npy {len(self.labels)}; re-run `cfh encode`"
            )

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.array(self.latents[i], dtype=np.float32))  # copy: memmap is r/o
        return x * self.scale, self.labels[i]

    def get_batch(
        self, idx: torch.Tensor, flips: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather a batch with one fancy-indexed memmap read (two when some rows flip)."""
        rows = idx.numpy()
        x = torch.from_numpy(np.asarray(self.latents[rows], dtype=np.float32))
        if flips is not None and bool(flips.any()):
            if self.flipped is None:
                raise UserError("flipped latents were asked for, but data.flip=false")
            sel = flips.numpy()
            x[torch.from_numpy(sel)] = torch.from_numpy(
                np.asarray(self.flipped[rows[sel]], dtype=np.float32)
            )
        return x * self.scale, self.labels[idx]

    def to_device(self, device: torch.device) -> DeviceLatents:
        """The latents (and mirrored latents) read whole onto `device`, in their own dtype."""
        flipped = _load_to(self.flipped, device) if self.flipped is not None else None
        return DeviceLatents(
            _load_to(self.latents, device), flipped, self.labels.to(device), self.scale, self.flip
        )


class DeviceLatents(Dataset):
    """LatentDataset held on a device: the same batches, gathered there."""

    def __init__(
        self,
        latents: torch.Tensor,
        flipped: torch.Tensor | None,
        labels: torch.Tensor,
        scale: float,
        flip: bool,
    ):
        self.latents, self.flipped, self.labels = latents, flipped, labels
        self.scale, self.flip = scale, flip

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.latents[i].float() * self.scale, self.labels[i]

    def get_batch(
        self, idx: torch.Tensor, flips: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather a batch on the device; rows whose flag is set come from the mirrored latents."""
        rows = _index_on(idx, self.latents.device)
        x = self.latents[rows].float()
        if flips is not None and bool(flips.any()):
            if self.flipped is None:
                raise UserError("flipped latents were asked for, but data.flip=false")
            sel = _index_on(flips, x.device).view(-1, *([1] * (x.ndim - 1)))
            x = torch.where(sel, self.flipped[rows].float(), x)
        return x * self.scale, self.labels[rows]


def on_device(dataset: Dataset, device: torch.device) -> Dataset:
    """`dataset` held whole on `device` (data.on_device); UserError where it cannot be."""
    if not hasattr(dataset, "to_device"):
        raise UserError(
            "data.on_device=true needs data=digits, mnist or latents (one array gathered per "
            f"batch), not {type(dataset).__name__}; use data.on_device=false"
        )
    return dataset.to_device(device)


def _load_to(array: np.ndarray, device: torch.device, chunk_bytes: int = 1 << 26) -> torch.Tensor:
    """A (memmapped) array copied onto `device` in chunks: the host never holds all of it."""
    dtype = torch.from_numpy(np.empty(0, dtype=array.dtype)).dtype
    out = torch.empty(array.shape, dtype=dtype, device=device)
    rows = max(1, chunk_bytes // max(1, array[:1].nbytes))
    for start in range(0, len(array), rows):  # a writable copy of each chunk: memmaps are r/o
        out[start : start + rows] = torch.from_numpy(np.array(array[start : start + rows]))
    return out


def _index_on(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host indices or flags on `device`; to a GPU from pinned memory, without waiting."""
    if t.device == device:
        return t
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels 0..255 -> float32 in [-1, 1]."""
    return images.to(torch.float32) / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float pixels in [-1, 1] -> uint8 0..255 (rounded, clamped)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _digits(split: str, flip: bool) -> ImageTensorDataset:
    """sklearn digits, 8x8, 1 channel."""
    images, labels = digits_arrays()
    idx = digits_split_indices()[split]
    return ImageTensorDataset(torch.from_numpy(images[idx]), torch.from_numpy(labels[idx]), flip)


def _mnist(res: int, split: str, flip: bool) -> ImageTensorDataset:
    """MNIST, 28x28 or zero-padded to 32x32, 1 channel."""
    images, labels = mnist_arrays(split)
    pad = (res - 28) // 2
    images = torch.nn.functional.pad(torch.from_numpy(images), (pad, pad, pad, pad))
    return ImageTensorDataset(images, torch.from_numpy(labels), flip)


def _imagefolder(d: DataConfig, flip: bool) -> ImageFolderDataset:
    """An ImageNet-style folder, center-cropped."""
    root = data_root(d)
    try:
        ds = ImageFolderDataset(root, int(d.resolution), int(d.channels), flip)
    except (FileNotFoundError, RuntimeError) as e:
        raise UserError(
            f"data.root={str(root)!r} is not an image folder (root/<class>/<img>): {e}"
        ) from None
    num_classes = d.num_classes  # the folder read now, against the config checked before
    if len(ds.classes) != num_classes:
        raise UserError(
            f"data.num_classes={num_classes!r} but data.root={str(root)!r} has "
            f"{len(ds.classes)} class folders; set data.num_classes={len(ds.classes)}"
        )
    return ds


def _latents(d: DataConfig, flip: bool) -> LatentDataset:
    """Pre-encoded latents; meta.json against the config (the folder may have been written
    again since the config was checked)."""
    root = data_root(d)
    meta = check_latents(d)
    ds = LatentDataset(root, float(meta["scale_factor"]), flip)
    shape = tuple(ds.latents.shape[1:])
    if shape != (meta["channels"], meta["resolution"], meta["resolution"]):
        raise UserError(f"data.root={str(root)!r}: latents.npy has shape {shape}, not meta.json's")
    return ds


def build_dataset(data_cfg: DataConfig | Mapping, split: str = "train") -> Dataset:
    """The dataset `data_cfg` names, one split, yielding (x float (C, H, W), y int64).

    The result's `flip` attribute says whether BatchStream should flip items (data.flip on the
    train split): BatchStream's seeded flags pick the rows, the dataset mirrors them (images)
    or reads the mirrored image's latents (latents).
    """
    d = loader_config(data_cfg, split)
    flip = bool(d.flip) and split == "train"
    if d.name == "digits":
        return _digits(split, flip)
    if d.name == "mnist":
        return _mnist(int(d.resolution), split, flip)
    if d.name == "imagefolder":
        return _imagefolder(d, flip)
    if d.name in CAPTION_DATASETS:  # the images alone (captions: model.data.joint_pairs)
        data = load_caption_data(d, split)
        return ImageTensorDataset(data.images, data.labels.clamp(min=0))
    return _latents(d, flip)


def _flip_rows(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Mirror the rows of a batch whose flag is set."""
    if not bool(flips.any()):
        return x
    flips = _index_on(flips, x.device)
    return torch.where(flips.view(-1, *([1] * (x.ndim - 1))), x.flip(-1), x)
