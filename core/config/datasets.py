"""The datasets' torch-free facts (splits, sizes, geometry) and the data config's checks.

core.config.validate runs them for every config (grid points, `cfh status`, `cfh sweep
--dry-run`: no torch import); the data loaders (model/data/sources.py, captions.py) read the
facts and the folders from here. Caption datasets' checks are here too (`check_caption_config`).
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.choices import CAPTION_DATASETS, DATASETS, TOKENIZERS
from core.config.sections import DataConfig, EvalConfig, data_config
from core.config.spec import quote
from core.errors import DataMissing, UserError

SPLITS = {  # "all": every image of the dataset (data.train_split=all; an eval split too)
    "digits": ("train", "test", "all"),
    "mnist": ("train", "valid", "test", "all"),
    "digits_captions": ("train", "test"),
    "mnist_captions": ("train", "valid", "test"),
    "stamps": ("train", "test"),
    "captions": ("train", "test"),
}
CAPTIONED_IMAGES = {"digits_captions": "digits", "mnist_captions": "mnist"}  # same images
# Images per split of the built-in datasets, as model/data/arrays.py cuts them (a test checks
# these against the arrays): the one home of these numbers for checks that must not load data.
SPLIT_SIZES = {
    "digits": {"train": 1437, "test": 360, "all": 1797},
    "mnist": {"train": 50_000, "valid": 10_000, "test": 10_000, "all": 70_000},
}
# What torchvision's ImageFolder reads as an image (data=imagefolder), compared lower-case.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
MNIST_RESOLUTIONS = (28, 32)
ON_DEVICE_DATASETS = ("digits", "mnist", "latents")  # data.on_device=true: held on the device
REFERENCE_SUBSET_SEED = 0
MISSING = "???"  # OmegaConf's mark of a required value
# The plain caption templates of model/data/caption_templates.py (a test checks the count).
NUM_PLAIN_TEMPLATES = 6
STAMPS_ROOT = Path("/usr/share/tuxpaint/stamps")  # the tuxpaint-stamps-default package


def given_root(data_cfg: DataConfig) -> str | None:
    """data.root, or None where it is not set (null, or `???`: required, not given yet)."""
    root = data_cfg.root
    return None if root is None or root == MISSING else root


def dataset_name(data_cfg: DataConfig) -> str:
    """The dataset name, validated."""
    name = data_cfg.name
    if name not in DATASETS:
        raise UserError(f"unknown data={quote(name)}; allowed: {', '.join(DATASETS)}")
    return name


def data_root(data_cfg: DataConfig) -> Path:
    """data.root as an existing folder (imagefolder, latents)."""
    name = data_cfg.name
    root = given_root(data_cfg)
    if root is None:
        raise DataMissing(f"data={name} needs data.root (a folder), e.g. data.root=/path/to/{name}")
    path = Path(str(root)).expanduser()
    if not path.is_dir():
        raise DataMissing(
            f"data.root={root!r} is not a folder (data={name} needs an existing folder)"
        )
    return path


def train_split(data_cfg: DataConfig) -> str:
    """The split a run trains on: data.train_split (train, or all: every image, as the release)."""
    return str(data_cfg.train_split)


def loader_config(data_cfg: DataConfig | Mapping, split: str) -> DataConfig:
    """The data section a loader reads. A DataConfig (a RunConfig's, which validate_config
    checked, or one cfh built itself) is trusted: only `split`, the loader's own argument, is
    checked. A mapping (a caller's own) gets the dataset's checks first."""
    if isinstance(data_cfg, DataConfig):
        if data_cfg.name != "captions":  # a captions folder may have more splits (root/<split>/)
            check_split(dataset_name(data_cfg), split)
        return data_cfg
    d = data_config(data_cfg)
    if dataset_name(d) in CAPTION_DATASETS:
        check_caption_config(d, (split,))
    else:
        check_data_config(d, (split,))
    return d


def check_split(name: str, split: str) -> None:
    """Raise a UserError for a split the dataset does not have."""
    allowed = SPLITS.get(name)
    if allowed is not None and split not in allowed:
        raise UserError(f"eval.split={split!r} does not exist for data={name}; allowed: {allowed}")


def expect_choice(data_cfg: DataConfig, key: str, allowed: tuple) -> Any:
    """Check data.<key> against the values the dataset supports."""
    value = getattr(data_cfg, key)  # the config room: keys by name are its own business
    if value not in allowed:
        raise UserError(
            f"data.{key}={value!r} is not supported for data={data_cfg.name}; "
            f"allowed: {', '.join(map(str, allowed))}"
        )
    return value


def check_data_config(data_cfg: DataConfig, splits: tuple[str, ...] = ()) -> None:
    """The dataset checks that need no data: geometry, classes, folder layout, splits.

    Run before anything is written or submitted (core.config.validate), and by loader_config
    for a data section that did not come through it; UserError names the key, the value and
    what the dataset allows.
    """
    name = dataset_name(data_cfg)
    for split in splits:
        check_split(name, split)
    if data_cfg.on_device and name not in ON_DEVICE_DATASETS:
        raise UserError(
            f"data.on_device=true is not allowed for data={name}; allowed for "
            f"{', '.join(ON_DEVICE_DATASETS)} (one array, gathered per batch)"
        )
    if name in CAPTION_DATASETS:
        check_caption_config(data_cfg)
    elif name == "digits":
        for key, allowed in (("resolution", (8,)), ("channels", (1,)), ("num_classes", (10,))):
            expect_choice(data_cfg, key, allowed)
    elif name == "mnist":
        expect_choice(data_cfg, "resolution", MNIST_RESOLUTIONS)
        expect_choice(data_cfg, "channels", (1,))
        expect_choice(data_cfg, "num_classes", (10,))
    elif name == "imagefolder":
        expect_choice(data_cfg, "channels", (1, 3))
        root = data_root(data_cfg)
        classes = _class_folders(str(root))
        if not classes:
            raise UserError(
                f"data.root={str(root)!r} is not an image folder (root/<class>/<img>): "
                "it has no class folders"
            )
        num_classes = data_cfg.num_classes
        if classes != num_classes:
            raise UserError(
                f"data.num_classes={num_classes!r} but data.root={str(root)!r} has {classes} "
                f"class folders; set data.num_classes={classes}"
            )
    else:
        check_latents(data_cfg)


def train_size(data_cfg: DataConfig, enough: int) -> int | None:
    """Items in one epoch of the train split (images; image-caption pairs for the captioned
    twins), or None where only reading the data would tell (stamps, a captions folder, a
    latents folder whose meta.json has no count). An image folder is counted only up to
    `enough` files: a result of `enough` means "at least that many"."""
    name = dataset_name(data_cfg)
    if name in SPLIT_SIZES:
        return SPLIT_SIZES[name][train_split(data_cfg)]
    if name in CAPTIONED_IMAGES:
        per_image = data_cfg.captions_per_image
        return SPLIT_SIZES[CAPTIONED_IMAGES[name]]["train"] * int(per_image)
    if name == "imagefolder":
        return _count_images(str(data_root(data_cfg)), int(enough))
    if name == "latents":
        count = read_latent_meta(data_root(data_cfg)).get("count")
        return count if isinstance(count, int) and not isinstance(count, bool) else None
    return None


@functools.lru_cache(maxsize=64)
def _count_images(root: str, enough: int) -> int:
    """Image files under root/<class>/ as torchvision's ImageFolder finds them, counted until
    `enough` (an ImageNet folder is not walked whole to check a batch of 256)."""
    count = 0
    with os.scandir(root) as entries:
        classes = sorted(e.path for e in entries if e.is_dir() and not e.name.startswith("."))
    for folder in classes:
        for _, _, files in os.walk(folder, followlinks=True):
            count += sum(f.lower().endswith(IMAGE_EXTENSIONS) for f in files)
            if count >= enough:
                return enough
    return count


@functools.lru_cache(maxsize=64)
def _class_folders(root: str) -> int:
    """How many class folders an image folder has (listed once per process)."""
    with os.scandir(root) as entries:
        return sum(1 for e in entries if e.is_dir() and not e.name.startswith("."))


def check_latents(data_cfg: DataConfig) -> dict:
    """A latents folder against the config: meta.json's geometry, scale, flipped latents."""
    root = data_root(data_cfg)
    meta = read_latent_meta(root)
    if data_cfg.flip and not meta.get("flips"):
        raise UserError(
            f"data.flip=true needs the latents of the mirrored images too, and {root} has none "
            "(encoded before cfh encode wrote both flips): re-run cfh encode, or set "
            "data.flip=false"
        )
    for key in ("channels", "resolution", "num_classes"):
        if getattr(data_cfg, key) != meta[key]:
            raise UserError(
                f"data.{key}={getattr(data_cfg, key)!r} does not match {root / 'meta.json'} "
                f"({key}={meta[key]}); set data.{key}={meta[key]}"
            )
    scale = data_cfg.latent_scale
    if scale is None or not math.isclose(float(scale), meta["scale_factor"], rel_tol=1e-6):
        raise UserError(
            f"data.latent_scale={scale!r} does not match meta.json's scale_factor="
            f"{meta['scale_factor']}; set data.latent_scale={meta['scale_factor']}"
        )
    return meta


def read_latent_meta(root: Path) -> dict:
    """meta.json of a latents folder (UserError when absent or unreadable)."""
    for name in ("latents.npy", "labels.npy", "meta.json"):
        if not (root / name).is_file():
            raise DataMissing(
                f"data.root={str(root)!r} has no {name}; write latents with `cfh encode` first"
            )
    try:
        return json.loads((root / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"data.root={str(root)!r}: meta.json is unreadable ({e})") from None


CLASSLESS_DATASETS = ("stamps", "captions")  # images with captions, no class labels


def check_eval_extractor(data: DataConfig, evaluation: EvalConfig) -> None:
    """An image evaluation of classless data (stamps, captions folders) needs Inception: the
    classifier extractor is trained on the classes. Checked where an evaluation is planned
    (grid eval points, `cfh evaluate`), not for training alone."""
    task, extractor = evaluation.task, evaluation.extractor
    classless = data.name in CLASSLESS_DATASETS  # an image folder with 1 class still has one
    if task != "caption" and extractor == "classifier" and classless:
        raise UserError(
            f"eval.extractor=classifier needs classes and data={data.name} has none; "
            "use eval.extractor=inception"
        )


# --------------------------------------------------------------------------------------------
# caption datasets (model/data/captions.py)


def _positive_int(data_cfg: DataConfig, key: str) -> int:
    """data.<key> as a positive integer (UserError naming the value otherwise)."""
    value = getattr(data_cfg, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"data.{key}={value!r} must be a positive integer")
    return value


def check_caption_config(data_cfg: DataConfig | Mapping, splits: tuple[str, ...] = ()) -> None:
    """The caption-dataset checks that need no images; UserError names the key and the value."""
    data_cfg = data_config(data_cfg)
    name = data_cfg.name
    if name not in CAPTION_DATASETS:
        raise UserError(f"unknown data={quote(name)}; allowed: {', '.join(CAPTION_DATASETS)}")
    if name == "digits_captions":
        for key, allowed in (("resolution", (8,)), ("channels", (1,)), ("num_classes", (10,))):
            expect_choice(data_cfg, key, allowed)
    elif name == "mnist_captions":
        expect_choice(data_cfg, "resolution", MNIST_RESOLUTIONS)
        expect_choice(data_cfg, "channels", (1,))
        expect_choice(data_cfg, "num_classes", (10,))
    else:
        _positive_int(data_cfg, "resolution")
        expect_choice(data_cfg, "channels", (3,) if name == "stamps" else (1, 3))
        expect_choice(data_cfg, "num_classes", (1,))
    res = data_cfg.resolution
    patch = _positive_int(data_cfg, "patch_size")
    if res % patch:
        raise UserError(f"data.patch_size={patch} does not divide data.resolution={res}")
    per_image = _positive_int(data_cfg, "captions_per_image")
    if name in ("digits_captions", "mnist_captions") and per_image > NUM_PLAIN_TEMPLATES:
        raise UserError(
            f"data.captions_per_image={per_image} is more than the {NUM_PLAIN_TEMPLATES} "
            f"templates every image can have for data={name}; allowed: 1..{NUM_PLAIN_TEMPLATES}"
        )
    if name != "captions" and data_cfg.flip:
        raise UserError(
            f"data.flip=true is not allowed for data={name}: the captions describe the image as "
            "drawn (slant direction, letters, signs), so a mirrored image would not match them"
        )
    _check_text_keys(data_cfg)
    if name == "captions":
        captions_root(data_cfg)
    if name == "stamps":
        stamps_folder(data_cfg)
    if name != "captions":  # a captions folder may have more splits (root/<split>/)
        for split in splits:
            check_split(name, split)


def _check_text_keys(data_cfg: DataConfig) -> None:
    """data.tokenizer and data.max_text_len, where set."""
    kind = data_cfg.tokenizer
    if kind not in TOKENIZERS:
        raise UserError(f"data.tokenizer={kind!r} is not a tokenizer; allowed: {TOKENIZERS}")
    max_len = data_cfg.max_text_len
    if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 2:
        raise UserError(f"data.max_text_len={max_len!r} must be an integer >= 2 (BOS and EOS)")


def stamps_root() -> Path:
    """The folder of the tuxpaint-stamps-default package (UserError when not installed)."""
    if not STAMPS_ROOT.is_dir():
        raise UserError(
            f"data=stamps needs the Tux Paint stamps in {STAMPS_ROOT}: "
            "apt-get install tuxpaint-stamps-default (or run scripts/install-stamps.sh)"
        )
    return STAMPS_ROOT


def stamps_folder(data_cfg: DataConfig) -> Path:
    """data.root when set (a folder of the package's layout), else the package's folder."""
    root = given_root(data_cfg)
    if root is None:
        return stamps_root()
    path = Path(str(root)).expanduser()
    if not path.is_dir():
        raise UserError(f"data.root={str(root)!r} is not a folder (data=stamps needs one)")
    return path


def captions_root(data_cfg: DataConfig) -> Path:
    """data.root of data=captions as an existing folder."""
    root = given_root(data_cfg)
    if root is None:
        raise UserError(
            "data=captions needs data.root: a folder with captions.jsonl "
            '(lines {"image": path, "caption": text})'
        )
    path = Path(str(root)).expanduser()
    if not path.is_dir():
        raise UserError(f"data.root={str(root)!r} is not a folder (data=captions needs one)")
    return path
