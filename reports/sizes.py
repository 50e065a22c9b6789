"""Model size columns: parameters and train FLOPs per image, from model.method.network.

Sizes are cached per (model, data geometry): in memory, and on disk at the path set by
`set_size_cache` (keyed by network.py's size and mtime) so that later reports skip the torch
import.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.io import atomic_write_json
from core.runfolder import read_json

_GEOMETRY = ("model", "resolution", "channels", "patch_size", "num_classes", "num_cond_tokens")


def add_model_size(df: pd.DataFrame) -> pd.DataFrame:
    """Fill params and train FLOPs per image (NaN when model.network cannot say)."""
    train = df["kind"] == "train"
    if not train.any() or df.loc[train, "model"].isna().all():
        return df
    cols = [*_GEOMETRY, "ar_mode", "ar_steps", "ar_decay", "tokens"]
    combos = df.loc[train, cols].drop_duplicates().reset_index(drop=True)
    sizes = [
        model_size(*geo) if pd.notna(list(geo)).all() else None
        for geo in combos[list(_GEOMETRY)].itertuples(index=False, name=None)
    ]
    combos["params_"] = [s["params"] if s else np.nan for s in sizes]
    inv_s = [_expected_inverse_s(*r) for r in combos[cols[-4:]].itertuples(index=False, name=None)]
    combos["flops_"] = [_flops(s, n) if s else np.nan for s, n in zip(sizes, inv_s, strict=True)]
    found = df.loc[train, cols].merge(combos, how="left", on=cols)  # merge matches NaN keys too
    found.index = df.index[train]
    for col in ("params", "flops"):
        df.loc[train, col] = df.loc[train, col].fillna(found[f"{col}_"])
    return df


def _expected_inverse_s(mode: Any, steps: Any, decay: Any, tokens: Any) -> float:
    """E[1/S] of a run's AR-step distribution (the last group has L/S tokens on average)."""
    if not np.isfinite(tokens) or tokens < 1:
        return np.nan
    k = np.arange(1, int(tokens) + 1, dtype=float)
    if mode == "fixed":
        return 1.0 / steps if steps and np.isfinite(steps) else np.nan
    if mode == "uniform" or (mode == "decay" and decay == 1.0):
        return float(np.mean(1.0 / k))
    if mode == "decay" and np.isfinite(decay) and 0 < decay < 1:
        w = decay ** (k - 1)
        return float(np.sum(w / k) / np.sum(w))
    return np.nan


def _flops(info: dict, inv_s: float) -> float:
    """Train FLOPs per image at the expected sequence length C + 2L - L E[1/S]."""
    if not np.isfinite(inv_s) or info.get("flops_fn") is None:
        return np.nan
    c, tokens = info["num_cond_tokens"], info["tokens"]
    return float(info["flops_fn"](c + 2 * tokens - tokens * inv_s))


@functools.cache
def model_size(
    model: str, resolution: float, channels: float, patch: float, classes: float, cond: float
) -> dict | None:
    """{params, tokens, num_cond_tokens, flops_fn} of one model on one data geometry, or None.

    Builds the network on the meta device (no memory, no weights) through model.network; a
    small on-disk cache keyed by network.py's size and mtime spares later reports the torch import.
    """
    geometry = dict(
        input_size=int(resolution),
        in_channels=int(channels),
        patch_size=int(patch),
        num_classes=int(classes),
        num_cond_tokens=int(cond),
    )
    cache_key = json.dumps([model, geometry, _network_stamp()])
    cached = _size_cache().get(cache_key)
    if cached is not None:
        return _with_flops_fn(cached)
    try:
        import torch

        from model.method.network import build_model, count_params
    except ImportError:
        return None
    try:
        with torch.device("meta"):
            net = build_model(str(model), **geometry)
        cfg = net.cfg
    except Exception:  # an unknown size or a network still being written: NaN, not a crash
        return None
    entry = {"params": count_params(net), "model_cfg": _cfg_dict(cfg)}
    _size_cache()[cache_key] = entry
    _save_size_cache()
    return _with_flops_fn(entry)


def _cfg_dict(cfg: Any) -> dict:
    """A dataclass ModelConfig as a plain dict for the JSON cache."""
    import dataclasses

    return dataclasses.asdict(cfg)


def _with_flops_fn(entry: dict) -> dict:
    """Attach a FLOPs function of the mean sequence length (imports model.network lazily)."""
    mc = entry["model_cfg"]
    grid = mc["input_size"] // mc["patch_size"]

    def flops_fn(seq_len: float) -> float:
        try:
            from model.method.network import ModelConfig, train_flops_per_image

            return float(train_flops_per_image(ModelConfig(**mc), seq_len))
        except Exception:
            return np.nan

    return {
        "params": entry["params"],
        "tokens": grid * grid,
        "num_cond_tokens": mc["num_cond_tokens"],
        "flops_fn": functools.cache(flops_fn),
    }


_SIZE_CACHE_PATH: Path | None = None


def set_size_cache(path: str | os.PathLike | None) -> None:
    """Where the model-size cache lives (None: in memory only)."""
    global _SIZE_CACHE_PATH
    _SIZE_CACHE_PATH = Path(path) if path is not None else None
    _size_cache.cache_clear()


@functools.cache
def _size_cache() -> dict:
    """The on-disk model-size cache, read once per process."""
    if _SIZE_CACHE_PATH is None:
        return {}
    data, _ = read_json(_SIZE_CACHE_PATH)
    return data if isinstance(data, dict) else {}


def _save_size_cache() -> None:
    """Write the model-size cache (atomically; concurrent reports each write a whole file)."""
    if _SIZE_CACHE_PATH is not None:
        try:
            atomic_write_json(_SIZE_CACHE_PATH, _size_cache())
        except OSError:
            pass  # a read-only root only costs the next report an import


@functools.cache
def _network_stamp() -> str:
    """Sizes and mtimes of the network's files: a changed network invalidates cached sizes."""
    try:
        import model.method  # docstring-only packages: no torch import

        here = Path(model.method.__file__).parent
        stats = [(here / f).stat() for f in ("network.py", "layers.py")]
        text = ";".join(f"{st.st_size}:{st.st_mtime_ns}" for st in stats)
        return hashlib.sha1(text.encode()).hexdigest()[:12]
    except (ImportError, OSError, TypeError):
        return "none"
