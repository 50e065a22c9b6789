"""Images with English captions, for joint image generation and captioning.

`load_caption_data(data_cfg, split)` gives a `CaptionData`: uint8 images (N, C, H, W), int64
labels (-1 where there is no class), one or more captions per image, and a name per image.

- `digits_captions`, `mnist_captions`: the images, labels and splits of data=digits and
  data=mnist (model/data/arrays.py), captioned from fixed templates
  (model/data/caption_templates.py, filled in by model/data/digit_captions.py) that name the
  digit as a word or a numeral ("a handwritten seven", "the digit 7, written thickly"). Each
  image gets `captions_per_image` distinct templates, drawn with a generator seeded by
  (CAPTION_SEED, dataset, image index), so its captions depend on nothing else. Templates with a
  property word
  are used only for the images whose measurements back it. Ink is a pixel >= 128 (of 255), and
  the thresholds are the 1/3 and 2/3 quantiles over the training split, strict (a value equal to
  a threshold gets no word):
  - size: the height in pixels of the ink's bounding box: `small` below the lower third, `large`
    above the upper third. Both datasets are size-normalised (digits: 1,792 of 1,797 are 8 rows
    high; MNIST: 20 of 28 rows, the most a 20x20 box gives), so `small` is rare (digits: under
    8 rows, 5 images; MNIST: under 20 rows, 13% of the training images) and `large` never
    appears.
  - thickness: the ink fraction (ink pixels / all pixels), against the terciles of the image's
    own class (a 1 has less ink than an 8 at any stroke width): `thin`/`thinly` below the lower
    third, `thick`/`thickly` above the upper third (e.g. digits' 7: below 19/64 or above 21/64;
    MNIST's 1: below 0.065 or above 0.084, its 8: below 0.134 or above 0.167).
  - slant: s = -cov(x, row) / var(row) over the ink pixels, the horizontal shift per row going
    up (s > 0: the top leans right). `slanted right` / `slanted left` (and `slanted`) when |s| is
    above the upper third of |s| and s > 0 / s < 0; `upright` when |s| is below the lower third
    (digits: |s| > 0.133 / < 0.055; MNIST: > 0.285 / < 0.123). Ink on one row: no slant word.
- `stamps`: the Debian package tuxpaint-stamps-default: every PNG cut-out under
  /usr/share/tuxpaint/stamps with a .txt beside it (785; the 11 `_mirror.png` variants have none
  and SVG-only stamps are not read), captioned with the .txt's first line (English; the other
  lines are `<locale>.utf8=` translations), lowercased, whitespace collapsed. The image is cropped
  to its visible pixels (a few stamps have wide transparent margins), padded to a square and
  composited on white, and LANCZOS-resized to the resolution (RGB). Split: a seeded permutation of
  the sorted paths, 10% test. `data.root` may point at another folder of that layout.
- `captions`: `data.root/captions.jsonl`, lines `{"image": path, "caption": text}` (a path
  relative to the jsonl's folder, or absolute; several lines per image give several captions),
  images composited on white when they have alpha, converted to L or RGB and center-cropped to the
  resolution as data=imagefolder does. Split: `root/<split>/captions.jsonl` when it exists, else a
  seeded by-image split of `root/captions.jsonl` (train / test, 10% test).
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.config.datasets import SPLITS, captions_root, loader_config, stamps_folder
from core.config.sections import DataConfig
from core.errors import UserError
from core.io import atomic_write_bytes, atomic_write_text
from model.data.arrays import center_crop_arr, digits_arrays, digits_split_indices, mnist_arrays
from model.data.digit_captions import (
    digit_captions,
    digits_thresholds,
    measure_digits,
    mnist_thresholds,
    property_words,
)

STAMPS_SPLIT_SEED = 0
STAMPS_TEST_FRACTION = 0.1
JSONL_SPLIT_SEED = 0
JSONL_TEST_FRACTION = 0.1
MNIST_OFFSETS = {"train": 0, "valid": 50_000, "test": 60_000}  # image index for the seed


@dataclass
class CaptionData:
    """Images with their captions: uint8 (N, C, H, W), int64 labels (-1: none), names."""

    images: torch.Tensor
    labels: torch.Tensor
    captions: list[list[str]]
    names: list[str]

    def __post_init__(self):
        n = len(self.images)
        assert self.images.dtype == torch.uint8 and self.images.ndim == 4
        assert len(self.labels) == len(self.captions) == len(self.names) == n
        assert all(self.captions), "every image needs a caption"

    def __len__(self) -> int:
        return len(self.images)

    def all_captions(self) -> list[str]:
        """Every caption, image by image (what a tokenizer is built from)."""
        return [c for caps in self.captions for c in caps]


def load_caption_data(data_cfg: DataConfig | Mapping, split: str = "train") -> CaptionData:
    """The images and captions of one split of the caption dataset `data_cfg` names."""
    d = loader_config(data_cfg, split)
    name, per_image = d.name, d.captions_per_image
    if name == "digits_captions":
        return _digits_captions(split, per_image)
    if name == "mnist_captions":
        return _mnist_captions(split, d.resolution, per_image)
    if name == "stamps":
        cached = _stamps(stamps_folder(d), d.resolution)[split]
        return CaptionData(  # a copy: callers may change what they get
            cached.images.clone(), cached.labels.clone(), [list(c) for c in cached.captions],
            list(cached.names),
        )  # fmt: skip
    return _jsonl_split(
        captions_root(d),
        split,
        d.resolution,
        d.channels,
    )


def _digits_captions(split: str, per_image: int) -> CaptionData:
    """data=digits' images and split, with templated captions."""
    images, labels = digits_arrays()
    idx = digits_split_indices()[split]
    words = property_words(measure_digits(images[idx]), labels[idx], digits_thresholds())
    seeds = np.stack([np.zeros_like(idx), idx], 1)  # (dataset 0, index among all 1,797)
    return CaptionData(
        images=torch.from_numpy(images[idx]),
        labels=torch.from_numpy(labels[idx]),
        captions=digit_captions(labels[idx], words, seeds, per_image),
        names=[f"digits/{i:04d}" for i in idx],
    )


def _mnist_captions(split: str, resolution: int, per_image: int) -> CaptionData:
    """data=mnist's images (zero-padded to 32 as there) and splits, with templated captions."""
    images, labels = mnist_arrays(split)
    words = property_words(measure_digits(images), labels, mnist_thresholds())
    index = MNIST_OFFSETS[split] + np.arange(len(labels))
    seeds = np.stack([np.ones_like(index), index], 1)  # (dataset 1, index among all 70,000)
    pad = (resolution - 28) // 2
    padded = torch.nn.functional.pad(torch.from_numpy(images), (pad, pad, pad, pad))
    return CaptionData(
        images=padded,
        labels=torch.from_numpy(labels.copy()),  # not the cached array: callers may change it
        captions=digit_captions(labels, words, seeds, per_image),
        names=[f"mnist/{split}/{i:05d}" for i in range(len(labels))],
    )


# --------------------------------------------------------------------------------------------
# Tux Paint stamps


def _english_line(txt: Path) -> str | None:
    """The first line of a stamp's .txt that is not a `<locale>.utf8=` translation."""
    for line in txt.read_text(encoding="utf-8", errors="replace").splitlines():
        head = line.split("=", 1)[0]
        if line.strip() and not ("=" in line and ".utf8" in head.lower()):
            return " ".join(line.split()).lower()
    return None


def _square_on_white(img: Image.Image, resolution: int) -> np.ndarray:
    """A cut-out cropped to its visible pixels, padded square on white, resized: uint8 (3, R, R)."""
    rgba = img.convert("RGBA")
    box = rgba.getchannel("A").getbbox()
    if box:
        rgba = rgba.crop(box)
    side = max(rgba.size)
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.alpha_composite(rgba, ((side - rgba.width) // 2, (side - rgba.height) // 2))
    small = canvas.convert("RGB").resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(small).transpose(2, 0, 1)


@functools.lru_cache(maxsize=4)
def _stamps(root: Path, resolution: int) -> dict[str, CaptionData]:
    """Both splits of the stamps under `root` (read once per process and resolution)."""
    items = []
    for png in sorted(root.rglob("*.png")):
        txt = png.with_suffix(".txt")
        caption = _english_line(txt) if txt.is_file() else None
        if caption:
            items.append((png, caption))
    if len(items) < 2:
        raise UserError(f"data.root={str(root)!r} has no Tux Paint stamps (PNG + .txt)")
    n_test = max(1, round(STAMPS_TEST_FRACTION * len(items)))
    test = set(np.random.default_rng(STAMPS_SPLIT_SEED).permutation(len(items))[:n_test].tolist())
    out = {}
    for split in ("train", "test"):
        chosen = [it for i, it in enumerate(items) if (i in test) == (split == "test")]
        images = []
        for png, _ in chosen:
            with Image.open(png) as img:
                images.append(_square_on_white(img, resolution))
        out[split] = CaptionData(
            images=torch.from_numpy(np.stack(images)),
            labels=torch.full((len(chosen),), -1, dtype=torch.int64),
            captions=[[c] for _, c in chosen],
            names=[png.relative_to(root).with_suffix("").as_posix() for png, _ in chosen],
        )
    return out


# --------------------------------------------------------------------------------------------
# a captions.jsonl folder


def _read_jsonl(path: Path) -> dict[str, list[str]]:
    """captions.jsonl as {image as written: captions}, in file order (UserError: file:line)."""
    captions: dict[str, list[str]] = {}
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{no}: not a JSON object ({e.msg})") from None
        image = row.get("image") if isinstance(row, dict) else None
        caption = row.get("caption") if isinstance(row, dict) else None
        if not isinstance(image, str) or not image or not isinstance(caption, str):
            raise UserError(
                f'{path}:{no}: needs {{"image": path, "caption": text}} (strings), got {line[:80]}'
            )
        if not caption.strip():
            raise UserError(f"{path}:{no}: the caption of {image!r} is empty")
        resolved = Path(image) if Path(image).is_absolute() else path.parent / image
        if not resolved.is_file():
            raise UserError(f"{path}:{no}: image {image!r} does not exist ({resolved})")
        captions.setdefault(image, []).append(caption.strip())
    if not captions:
        raise UserError(f"{path} has no captions")
    return captions


def _load_image(path: Path, resolution: int, channels: int) -> np.ndarray:
    """An image on white (when it has alpha), in L or RGB, center-cropped: uint8 (C, R, R)."""
    with Image.open(path) as img:
        if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255,) * 4), rgba)
        arr = center_crop_arr(img.convert("RGB" if channels == 3 else "L"), resolution)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _jsonl_split(root: Path, split: str, resolution: int, channels: int) -> CaptionData:
    """One split of a captions.jsonl folder."""
    own = root / split / "captions.jsonl"
    if own.is_file():
        path, keys = own, None
    else:
        path = root / "captions.jsonl"
        if not path.is_file():
            raise UserError(f"data.root={str(root)!r} has no captions.jsonl (nor {own})")
        if split not in SPLITS["captions"]:
            raise UserError(
                f"split {split!r} does not exist for data=captions: {own} is missing, and "
                f"{path} splits into {', '.join(SPLITS['captions'])}"
            )
        keys = split
    captions = _read_jsonl(path)
    images = list(captions)
    if keys is not None:
        images = _seeded_split(images)[keys]
        if not images:
            raise UserError(f"{path} has too few images ({len(captions)}) for a {split} split")
    arrays = [
        _load_image(Path(i) if Path(i).is_absolute() else path.parent / i, resolution, channels)
        for i in images
    ]
    return CaptionData(
        images=torch.from_numpy(np.stack(arrays)),
        labels=torch.full((len(images),), -1, dtype=torch.int64),
        captions=[captions[i] for i in images],
        names=images,
    )


def _seeded_split(images: list[str]) -> dict[str, list[str]]:
    """A seeded by-image train/test split (10% test, at least one when there are two images)."""
    n = len(images)
    n_test = max(1, round(JSONL_TEST_FRACTION * n)) if n >= 2 else 0
    test = set(np.random.default_rng(JSONL_SPLIT_SEED).permutation(n)[:n_test].tolist())
    return {
        "train": [im for i, im in enumerate(images) if i not in test],
        "test": [im for i, im in enumerate(images) if i in test],
    }


def write_captions_jsonl(data: CaptionData, out_dir: str | Path) -> Path:
    """Write `data` as out_dir/images/NNNNN.png plus out_dir/captions.jsonl; return the jsonl."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (image, caps) in enumerate(zip(data.images, data.captions, strict=True)):
        rel = f"images/{i:05d}.png"
        arr = image.numpy()
        png = io.BytesIO()  # through core.io: a full disk names the file, nothing half-written
        Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)).save(png, "PNG")
        atomic_write_bytes(out / rel, png.getvalue())
        lines += [json.dumps({"image": rel, "caption": c}, ensure_ascii=False) for c in caps]
    path = out / "captions.jsonl"
    atomic_write_text(path, "".join(f"{line}\n" for line in lines))
    return path
