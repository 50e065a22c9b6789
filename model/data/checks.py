"""Config checks that need no torch, numpy or data: datasets, splits, sizes, extractors.

harness.schema runs them for every grid point, `cfh status` and `cfh sweep --dry-run`, which
must not pay for importing torch; model.data, model.network and model.evaluate re-export them.
Caption datasets' own checks live in model.captions (imported only for caption data).
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.errors import UserError

# model.network.SIZES has these keys, in this order (tests/model/test_network.py checks it).
SIZE_NAMES = ("T", "XS", "S", "B", "L", "XL", "H", "ablation")

IMAGE_DATASETS = ("digits", "mnist", "imagefolder", "latents")
CAPTION_DATASETS = ("digits_captions", "mnist_captions", "stamps", "captions")  # model.captions
DATASETS = IMAGE_DATASETS + CAPTION_DATASETS
SPLITS = {
    "digits": ("train", "test"),
    "mnist": ("train", "valid", "test"),
    "digits_captions": ("train", "test"),
    "mnist_captions": ("train", "valid", "test"),
    "stamps": ("train", "test"),
    "captions": ("train", "test"),
}
CAPTIONED_IMAGES = {"digits_captions": "digits", "mnist_captions": "mnist"}  # same images
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2
MNIST_RESOLUTIONS = (28, 32)
REFERENCE_SUBSET_SEED = 0


# --------------------------------------------------------------------------------------------
# config access


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """`cfg[key]` for a dict or an OmegaConf DictConfig; `default` when absent, null or `???`."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            if key not in cfg or OmegaConf.is_missing(cfg, key):
                return default
            value = cfg[key]
            return default if value is None else value
    except ImportError:  # omegaconf comes with hydra-core; plain dicts work without it
        pass
    value = cfg.get(key, default) if isinstance(cfg, Mapping) else getattr(cfg, key, default)
    return default if value is None or value == "???" else value


def _name(data_cfg: Any) -> str:
    """The dataset name, validated."""
    name = cfg_get(data_cfg, "name")
    if name not in DATASETS:
        raise UserError(f"unknown data={name!r}; allowed: {', '.join(DATASETS)}")
    return name


def _root(data_cfg: Any) -> Path:
    """data.root as an existing folder (imagefolder, latents)."""
    name = cfg_get(data_cfg, "name")
    root = cfg_get(data_cfg, "root")
    if root is None:
        raise UserError(f"data={name} needs data.root (a folder), e.g. data.root=/path/to/{name}")
    path = Path(str(root)).expanduser()
    if not path.is_dir():
        raise UserError(
            f"data.root={root!r} is not a folder (data={name} needs an existing folder)"
        )
    return path


def _check_split(name: str, split: str) -> None:
    """Raise a UserError for a split the dataset does not have."""
    allowed = SPLITS.get(name)
    if allowed is not None and split not in allowed:
        raise UserError(f"eval.split={split!r} does not exist for data={name}; allowed: {allowed}")


def _expect(data_cfg: Any, key: str, allowed: tuple) -> Any:
    """Check data.<key> against the values the dataset supports."""
    value = cfg_get(data_cfg, key)
    if value not in allowed:
        raise UserError(
            f"data.{key}={value!r} is not supported for data={cfg_get(data_cfg, 'name')}; "
            f"allowed: {', '.join(map(str, allowed))}"
        )
    return value


def check_data_config(data_cfg: Any, splits: tuple[str, ...] = ()) -> None:
    """The dataset checks that need no data: geometry, classes, folder layout, splits.

    Run before anything is written or submitted (harness.schema.validate_config) and again by
    build_dataset; UserError names the key, the value and what the dataset allows.
    """
    name = _name(data_cfg)
    for split in splits:
        _check_split(name, split)
    if name in CAPTION_DATASETS:
        from model.data.captions import check_caption_config

        check_caption_config(data_cfg)
    elif name == "digits":
        for key, allowed in (("resolution", (8,)), ("channels", (1,)), ("num_classes", (10,))):
            _expect(data_cfg, key, allowed)
    elif name == "mnist":
        _expect(data_cfg, "resolution", MNIST_RESOLUTIONS)
        _expect(data_cfg, "channels", (1,))
        _expect(data_cfg, "num_classes", (10,))
    elif name == "imagefolder":
        _expect(data_cfg, "channels", (1, 3))
        root = _root(data_cfg)
        classes = _class_folders(str(root))
        if not classes:
            raise UserError(
                f"data.root={str(root)!r} is not an image folder (root/<class>/<img>): "
                "it has no class folders"
            )
        num_classes = cfg_get(data_cfg, "num_classes")
        if classes != num_classes:
            raise UserError(
                f"data.num_classes={num_classes!r} but data.root={str(root)!r} has {classes} "
                f"class folders; set data.num_classes={classes}"
            )
    else:
        _check_latents(data_cfg)


@functools.lru_cache(maxsize=64)
def _class_folders(root: str) -> int:
    """How many class folders an image folder has (listed once per process)."""
    with os.scandir(root) as entries:
        return sum(1 for e in entries if e.is_dir() and not e.name.startswith("."))


def _check_latents(data_cfg: Any) -> dict:
    """A latents folder against the config: meta.json's geometry, scale, flipped latents."""
    root = _root(data_cfg)
    meta = read_latent_meta(root)
    if cfg_get(data_cfg, "flip", False) and not meta.get("flips"):
        raise UserError(
            f"data.flip=true needs the latents of the mirrored images too, and {root} has none "
            "(encoded before cfh encode wrote both flips): re-run cfh encode, or set "
            "data.flip=false"
        )
    for key in ("channels", "resolution", "num_classes"):
        if cfg_get(data_cfg, key) != meta[key]:
            raise UserError(
                f"data.{key}={cfg_get(data_cfg, key)!r} does not match {root / 'meta.json'} "
                f"({key}={meta[key]}); set data.{key}={meta[key]}"
            )
    scale = cfg_get(data_cfg, "latent_scale")
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
            raise UserError(
                f"data.root={str(root)!r} has no {name}; write latents with `cfh encode` first"
            )
    try:
        return json.loads((root / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"data.root={str(root)!r}: meta.json is unreadable ({e})") from None


CLASSLESS_DATASETS = ("stamps", "captions")  # images with captions, no class labels


def check_eval_extractor(data: Any, evaluation: Any) -> None:
    """An image evaluation of classless data (stamps, captions folders) needs Inception: the
    classifier extractor is trained on the classes. Checked where an evaluation is planned
    (grid eval points, `cfh evaluate`), not for training alone."""
    task, extractor = evaluation["task"], evaluation["extractor"]
    classless = data["name"] in CLASSLESS_DATASETS  # an image folder with 1 class still has one
    if task != "caption" and extractor == "classifier" and classless:
        raise UserError(
            f"eval.extractor=classifier needs classes and data={data['name']} has none; "
            "use eval.extractor=inception"
        )
