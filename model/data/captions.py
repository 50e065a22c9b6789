"""Images with English captions, for joint image generation and captioning.

`load_caption_data(data_cfg, split)` gives a `CaptionData`: uint8 images (N, C, H, W), int64
labels (-1 where there is no class), one or more captions per image, and a name per image.

- `digits_captions`, `mnist_captions`: the images, labels and splits of data=digits and
  data=mnist (model/data.py), captioned from fixed templates that name the digit as a word or a
  numeral ("a handwritten seven", "the digit 7, written thickly"). Each image gets
  `captions_per_image` distinct templates, drawn with a generator seeded by (CAPTION_SEED,
  dataset, image index), so its captions depend on nothing else. Templates with a property word
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
import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from core.errors import UserError
from core.io import atomic_write_text
from model.data.sources import (
    _digits_arrays,
    _digits_split_indices,
    _expect,
    _mnist_arrays,
    center_crop_arr,
    cfg_get,
)
from model.data.tokenizers import TOKENIZERS

CAPTION_DATASETS = ("digits_captions", "mnist_captions", "stamps", "captions")
SPLITS = {
    "digits_captions": ("train", "test"),
    "mnist_captions": ("train", "valid", "test"),
    "stamps": ("train", "test"),
    "captions": ("train", "test"),
}
CAPTION_SEED = 20241202
STAMPS_ROOT = Path("/usr/share/tuxpaint/stamps")
STAMPS_SPLIT_SEED = 0
STAMPS_TEST_FRACTION = 0.1
JSONL_SPLIT_SEED = 0
JSONL_TEST_FRACTION = 0.1
INK_LEVEL = 128
MNIST_OFFSETS = {"train": 0, "valid": 50_000, "test": 60_000}  # image index for the seed
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Fields: word (seven), a_word (a seven / an eight), num (7), size (small | large), thick (thin |
# thick), thickly (thinly | thickly), slant (slanted left | slanted right | upright), slanted
# (slanted | upright). Every template names the digit; the plain ones need no measurement.
PLAIN_TEMPLATES = (
    "a handwritten {word}",
    "the digit {num}",
    "{a_word}, written by hand",
    "a handwritten digit {num}",
    "the number {word}",
    "an image of the digit {word}",
)
PROPERTY_TEMPLATES = (
    "a {size} {word}",
    "a {size} handwritten {num}",
    "a {thick} {word}",
    "the digit {num}, written {thickly}",
    "a handwritten {num}, {slant}",
    "{a_word}, drawn {slant}",
    "a {size}, {slanted} {num}",
    "a {thick}, {slanted} {word}",
    "a {size}, {thick} {num}",
)
TEMPLATES = PLAIN_TEMPLATES + PROPERTY_TEMPLATES
_DIGIT_FIELDS = frozenset({"word", "a_word", "num"})


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


# --------------------------------------------------------------------------------------------
# config checks


def _positive_int(data_cfg: Any, key: str, default: Any = None) -> int:
    """data.<key> as a positive integer (UserError naming the value otherwise)."""
    value = cfg_get(data_cfg, key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"data.{key}={value!r} must be a positive integer")
    return value


def _check_split(name: str, split: str) -> None:
    """UserError for a split the dataset does not have."""
    if split not in SPLITS[name]:
        raise UserError(
            f"split {split!r} does not exist for data={name}; allowed: {', '.join(SPLITS[name])}"
        )


def check_caption_config(data_cfg: Any, splits: tuple[str, ...] = ()) -> None:
    """The caption-dataset checks that need no images; UserError names the key and the value."""
    name = cfg_get(data_cfg, "name")
    if name not in CAPTION_DATASETS:
        raise UserError(f"unknown data={name!r}; allowed: {', '.join(CAPTION_DATASETS)}")
    if name == "digits_captions":
        for key, allowed in (("resolution", (8,)), ("channels", (1,)), ("num_classes", (10,))):
            _expect(data_cfg, key, allowed)
    elif name == "mnist_captions":
        _expect(data_cfg, "resolution", (28, 32))
        _expect(data_cfg, "channels", (1,))
        _expect(data_cfg, "num_classes", (10,))
    else:
        _positive_int(data_cfg, "resolution")
        _expect(data_cfg, "channels", (3,) if name == "stamps" else (1, 3))
        _expect(data_cfg, "num_classes", (1,))
    res = cfg_get(data_cfg, "resolution")
    patch = _positive_int(data_cfg, "patch_size", 1)
    if res % patch:
        raise UserError(f"data.patch_size={patch} does not divide data.resolution={res}")
    per_image = _positive_int(data_cfg, "captions_per_image", 2)
    if name in ("digits_captions", "mnist_captions") and per_image > len(PLAIN_TEMPLATES):
        raise UserError(
            f"data.captions_per_image={per_image} is more than the {len(PLAIN_TEMPLATES)} "
            f"templates every image can have for data={name}; allowed: 1..{len(PLAIN_TEMPLATES)}"
        )
    if name != "captions" and cfg_get(data_cfg, "flip", False):
        raise UserError(
            f"data.flip=true is not allowed for data={name}: the captions describe the image as "
            "drawn (slant direction, letters, signs), so a mirrored image would not match them"
        )
    _check_text_keys(data_cfg)
    if name == "captions":
        _captions_root(data_cfg)
    if name == "stamps":
        _stamps_folder(data_cfg)
    if name != "captions":  # a captions folder may have more splits (root/<split>/)
        for split in splits:
            _check_split(name, split)


def _check_text_keys(data_cfg: Any) -> None:
    """data.tokenizer and data.max_text_len, where set."""
    kind = cfg_get(data_cfg, "tokenizer", "word")
    if kind not in TOKENIZERS:
        raise UserError(f"data.tokenizer={kind!r} is not a tokenizer; allowed: {TOKENIZERS}")
    max_len = cfg_get(data_cfg, "max_text_len", 16)
    if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 2:
        raise UserError(f"data.max_text_len={max_len!r} must be an integer >= 2 (BOS and EOS)")


def load_caption_data(data_cfg: Any, split: str = "train") -> CaptionData:
    """The images and captions of one split of the caption dataset `data_cfg` names."""
    check_caption_config(data_cfg, (split,))
    name = cfg_get(data_cfg, "name")
    per_image = cfg_get(data_cfg, "captions_per_image", 2)
    if name == "digits_captions":
        return _digits_captions(split, per_image)
    if name == "mnist_captions":
        return _mnist_captions(split, cfg_get(data_cfg, "resolution"), per_image)
    if name == "stamps":
        cached = _stamps(_stamps_folder(data_cfg), cfg_get(data_cfg, "resolution"))[split]
        return CaptionData(  # a copy: callers may change what they get
            cached.images.clone(), cached.labels.clone(), [list(c) for c in cached.captions],
            list(cached.names),
        )  # fmt: skip
    return _jsonl_split(
        _captions_root(data_cfg),
        split,
        cfg_get(data_cfg, "resolution"),
        cfg_get(data_cfg, "channels"),
    )


# --------------------------------------------------------------------------------------------
# digits and MNIST: measured properties and templated captions


def measure_digits(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per image of uint8 (N, 1, H, W): ink box height (px), ink fraction, slant (nan: none)."""
    out: dict[str, list[np.ndarray]] = {"height": [], "ink": [], "slant": []}
    for start in range(0, len(images), 8192):  # chunks: MNIST as float64 at once is 300 MB
        ink = (images[start : start + 8192, 0] >= INK_LEVEL).astype(np.float64)
        _, h, w = ink.shape
        rows = np.arange(h, dtype=np.float64)
        cols = np.arange(w, dtype=np.float64)
        per_row = ink.sum(2)
        has = per_row > 0
        top = has.argmax(1)
        bottom = h - 1 - has[:, ::-1].argmax(1)
        n = per_row.sum(1)
        out["height"].append(np.where(n > 0, bottom - top + 1, 0))
        out["ink"].append(n / (h * w))
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_r = per_row @ rows / n
            mean_c = ink.sum(1) @ cols / n
            var_r = per_row @ rows**2 / n - mean_r**2
            cov = np.einsum("nrc,r,c->n", ink, rows, cols) / n - mean_r * mean_c
            slant = np.where(var_r > 1e-9, -cov / var_r, np.nan)
        out["slant"].append(slant)
    return {k: np.concatenate(v) for k, v in out.items()}


@dataclass(frozen=True)
class DigitThresholds:
    """Tercile thresholds: height (px), ink fraction per class, |slant|."""

    height: tuple[float, float]
    ink: dict[int, tuple[float, float]]
    slant: tuple[float, float]


def _terciles(values: np.ndarray) -> tuple[float, float]:
    """The 1/3 and 2/3 quantiles of the finite values."""
    lo, hi = np.quantile(values[np.isfinite(values)], [1 / 3, 2 / 3])
    return float(lo), float(hi)


def digit_thresholds(props: dict[str, np.ndarray], labels: np.ndarray) -> DigitThresholds:
    """The thresholds of the property words, from the training images' measurements."""
    return DigitThresholds(
        height=_terciles(props["height"].astype(np.float64)),
        ink={int(c): _terciles(props["ink"][labels == c]) for c in np.unique(labels)},
        slant=_terciles(np.abs(props["slant"])),
    )


def property_words(
    props: dict[str, np.ndarray], labels: np.ndarray, th: DigitThresholds
) -> list[dict[str, str]]:
    """Per image, the template fields its measurements back (size, thick, slant, ...)."""
    out = []
    for height, ink, slant, label in zip(
        props["height"], props["ink"], props["slant"], labels, strict=True
    ):
        words: dict[str, str] = {}
        if height < th.height[0]:
            words["size"] = "small"
        elif height > th.height[1]:
            words["size"] = "large"
        lo, hi = th.ink[int(label)]
        if ink < lo:
            words.update(thick="thin", thickly="thinly")
        elif ink > hi:
            words.update(thick="thick", thickly="thickly")
        if np.isfinite(slant) and abs(slant) < th.slant[0]:
            words.update(slant="upright", slanted="upright")
        elif np.isfinite(slant) and abs(slant) > th.slant[1]:
            side = "right" if slant > 0 else "left"
            words.update(slant=f"slanted {side}", slanted="slanted")
        out.append(words)
    return out


@functools.cache
def _template_fields() -> tuple[frozenset[str], ...]:
    """The fields each template uses (every one names the digit)."""
    fields = []
    for t in TEMPLATES:
        names = frozenset(f for _, f, _, _ in string.Formatter().parse(t) if f)
        assert names & _DIGIT_FIELDS, f"template {t!r} does not name the digit"
        fields.append(names - _DIGIT_FIELDS)
    return tuple(fields)


def digit_captions(
    labels: np.ndarray, words: list[dict[str, str]], seeds: np.ndarray, per_image: int
) -> list[list[str]]:
    """`per_image` distinct captions per image from the templates its words allow, seeded."""
    fields = _template_fields()
    out = []
    for label, have, seed in zip(labels, words, seeds, strict=True):
        label = int(label)
        usable = [i for i, need in enumerate(fields) if need <= have.keys()]
        rng = np.random.default_rng([CAPTION_SEED, *map(int, seed)])
        picked = rng.choice(len(usable), size=per_image, replace=False)
        word = DIGIT_WORDS[label]
        values = {**have, "word": word, "num": str(label)}
        values["a_word"] = f"{'an' if word[0] in 'aeiou' else 'a'} {word}"
        out.append([TEMPLATES[usable[int(j)]].format(**values) for j in picked])
    return out


@functools.cache
def _digits_thresholds() -> DigitThresholds:
    """Property thresholds from the digits' training split."""
    images, labels = _digits_arrays()
    idx = _digits_split_indices()["train"]
    return digit_thresholds(measure_digits(images[idx]), labels[idx])


def _digits_captions(split: str, per_image: int) -> CaptionData:
    """data=digits' images and split, with templated captions."""
    images, labels = _digits_arrays()
    idx = _digits_split_indices()[split]
    words = property_words(measure_digits(images[idx]), labels[idx], _digits_thresholds())
    seeds = np.stack([np.zeros_like(idx), idx], 1)  # (dataset 0, index among all 1,797)
    return CaptionData(
        images=torch.from_numpy(images[idx]),
        labels=torch.from_numpy(labels[idx]),
        captions=digit_captions(labels[idx], words, seeds, per_image),
        names=[f"digits/{i:04d}" for i in idx],
    )


@functools.cache
def _mnist_thresholds() -> DigitThresholds:
    """Property thresholds from MNIST's training split."""
    images, labels = _mnist_arrays("train")
    return digit_thresholds(measure_digits(images), labels)


def _mnist_captions(split: str, resolution: int, per_image: int) -> CaptionData:
    """data=mnist's images (zero-padded to 32 as there) and splits, with templated captions."""
    images, labels = _mnist_arrays(split)
    words = property_words(measure_digits(images), labels, _mnist_thresholds())
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


def stamps_root() -> Path:
    """The folder of the tuxpaint-stamps-default package (UserError when not installed)."""
    if not STAMPS_ROOT.is_dir():
        raise UserError(
            f"data=stamps needs the Tux Paint stamps in {STAMPS_ROOT}: "
            "apt-get install tuxpaint-stamps-default (or run scripts/install-stamps.sh)"
        )
    return STAMPS_ROOT


def _stamps_folder(data_cfg: Any) -> Path:
    """data.root when set (a folder of the package's layout), else the package's folder."""
    root = cfg_get(data_cfg, "root")
    if root is None:
        return stamps_root()
    path = Path(str(root)).expanduser()
    if not path.is_dir():
        raise UserError(f"data.root={str(root)!r} is not a folder (data=stamps needs one)")
    return path


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


def _captions_root(data_cfg: Any) -> Path:
    """data.root of data=captions as an existing folder."""
    root = cfg_get(data_cfg, "root")
    if root is None:
        raise UserError(
            "data=captions needs data.root: a folder with captions.jsonl "
            '(lines {"image": path, "caption": text})'
        )
    path = Path(str(root)).expanduser()
    if not path.is_dir():
        raise UserError(f"data.root={str(root)!r} is not a folder (data=captions needs one)")
    return path


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
        Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)).save(out / rel)
        lines += [json.dumps({"image": rel, "caption": c}, ensure_ascii=False) for c in caps]
    path = out / "captions.jsonl"
    atomic_write_text(path, "".join(f"{line}\n" for line in lines))
    return path
