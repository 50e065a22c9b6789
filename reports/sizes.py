"""Model size columns: parameters and train FLOPs per image, from model.method.network, and
the analytic sampling FLOPs per image (sample_flops: a cost that does not move with the
machine's load, unlike a measured img/s).

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
        "model_cfg": mc,
        "tokens": grid * grid,
        "num_cond_tokens": mc["num_cond_tokens"],
        "flops_fn": functools.cache(flops_fn),
    }


_SAMPLE_KEYS = ("s_eval", "sampler_steps", "guided")


def add_sample_flops(df: pd.DataFrame) -> pd.DataFrame:
    """Fill `sample_flops` (matmul FLOPs per sampled image, sample_flops_per_image) of the rows
    with an S_eval and a step count; NaN elsewhere."""
    df["sample_flops"] = np.nan
    rows = (df["kind"] == "train") & df["s_eval"].notna() & df["sampler_steps"].notna()
    if not rows.any() or df.loc[rows, "model"].isna().all():
        return df
    keys = df.loc[rows, list(_GEOMETRY)].assign(
        s_eval=df.loc[rows, "s_eval"],
        sampler_steps=df.loc[rows, "sampler_steps"],
        guided=df.loc[rows, "cfg"].fillna(1.0) > 1.0,
    )
    combos = keys.drop_duplicates().reset_index(drop=True)
    flops = []
    for combo in combos.itertuples(index=False, name=None):
        geo, (s_eval, steps, guided) = combo[: len(_GEOMETRY)], combo[len(_GEOMETRY) :]
        size = model_size(*geo) if pd.notna(list(geo)).all() else None
        mc = size.get("model_cfg") if size else None
        flops.append(sample_flops_per_image(mc, int(s_eval), int(steps), guided) if mc else np.nan)
    combos["sample_flops_"] = flops
    found = keys.merge(combos, how="left", on=[*_GEOMETRY, *_SAMPLE_KEYS])
    df.loc[rows, "sample_flops"] = found["sample_flops_"].to_numpy()
    return df


def sample_flops_per_image(mc: dict, s_eval: int, steps: int, guided: bool = False) -> float:
    """Matmul FLOPs of sampling one image with the KV cache (model.method.sampling): the C
    condition tokens once; then per group of m tokens (L split into S_eval near-equal groups,
    as ar.equal_group_sizes) `steps` denoising passes of its m noisy tokens and one pass of its
    m clean tokens, each attending to the c tokens before it and to itself. Per pass and
    layer: 2 m (4 D^2 + 2 D F) (qkv, proj, MLP) + 4 m (c + m) D (QK^T, AV); per denoising pass
    also the patch embedding and output layer (2 x 2 m P D) and the timestep MLP
    (2 (256 D + D^2)). CFG (scale > 1) counts every pass twice. Model size x steps x L, with
    S_eval moving only the attention term: the measured img/s also moves with the machine."""
    width, depth = mc["width"], mc["depth"]
    ffn = int(width * mc["mlp_ratio"])
    token_dim = mc["patch_size"] ** 2 * mc["in_channels"]
    cond, tokens = mc["num_cond_tokens"], (mc["input_size"] // mc["patch_size"]) ** 2
    if not 1 <= s_eval <= tokens or steps < 1:
        return np.nan

    def blocks(m: int, before: int) -> float:
        return depth * (2 * m * (4 * width**2 + 2 * width * ffn) + 4 * m * (before + m) * width)

    base, extra = divmod(tokens, s_eval)
    total, before = blocks(cond, 0), cond
    for m in [base + 1] * extra + [base] * (s_eval - extra):
        denoise = blocks(m, before) + 4 * m * token_dim * width + 2 * (256 * width + width**2)
        total += steps * denoise + blocks(m, before) + 2 * m * token_dim * width
        before += m
    return float(total * (2 if guided else 1))


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
