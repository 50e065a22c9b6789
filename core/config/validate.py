"""The one validation of a run config, in one place: `validate_config` checks each key against its
Spec (core/config/sections.py), then the cross-key rules, the dataset's rules
(core/config/datasets.py) and the cluster profile (core/config/cluster.py), and returns the typed
RunConfig. `cfh train|sample|evaluate|edit|bench`, `cfh sweep` (and --dry-run) and grid expansion
call it before anything is written or submitted. `check_train_batch` and `check_kid_subset` are
the two checks that depend on what a command does (training; scoring). Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.choices import CAPTION_DATASETS, JOINT_TASKS, SIZE_NAMES
from core.config.cluster import validate_profile
from core.config.datasets import MISSING, check_data_config, train_size
from core.config.sections import DataConfig, RunConfig, data_config, from_dict
from core.config.spec import did_you_mean, quote
from core.config.stored import read_config_dict
from core.errors import DataMissing, UserError, data_check


def validate_config(cfg: Any, profiles: Sequence[str] | None = None) -> RunConfig:
    """Every check of a run config, in one pass, before anything is written: each key against
    its Spec (building the typed config), then the cross-key rules, the dataset's rules and the
    cluster profile; the checks that need the filesystem (data.root, weight files) are the one
    call `_on_disk`. `profiles`: the cluster profile names of the config dirs, where known.
    Raises one UserError line naming key, value and what is allowed; returns the typed config."""
    plain = _plain(cfg)
    typed = from_dict(plain)
    _cross_checks(typed, profiles)
    return typed


def num_tokens(cfg: RunConfig | dict) -> int:
    """L, tokens per image, of a typed config or of a plain one not checked yet (grid points)."""
    if isinstance(cfg, RunConfig):
        return cfg.num_tokens
    return (int(cfg["data"]["resolution"]) // int(cfg["data"]["patch_size"])) ** 2


def typed(cfg: Any) -> RunConfig:
    """`cfg` as a RunConfig (built from a dict or DictConfig where it is not one yet)."""
    return cfg if isinstance(cfg, RunConfig) else from_dict(_plain(cfg))


def _plain(cfg: Any) -> dict:
    """A resolved plain dict of a DictConfig, a RunConfig or a mapping."""
    if isinstance(cfg, RunConfig):
        return cfg.to_dict()
    if not isinstance(cfg, dict):
        from omegaconf import OmegaConf  # only where a DictConfig is given: not on the fast path

        cfg = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(cfg, dict)
    return cfg


def _cross_checks(cfg: RunConfig, profiles: Sequence[str] | None) -> None:
    if cfg.model.name not in SIZE_NAMES:
        allowed = ", ".join(SIZE_NAMES)
        raise UserError(f"model={quote(cfg.model.name)} is not allowed; choose one of: {allowed}")
    if "jsonl" not in cfg.train.loggers:  # metrics.jsonl is what resume, status, reports read
        raise UserError(
            f"train.loggers={list(cfg.train.loggers)!r} is not allowed; it must hold jsonl "
            "(e.g. [jsonl,tensorboard])"
        )
    d = cfg.data
    if d.patch_size > d.resolution or d.resolution % d.patch_size:
        raise UserError(
            f"data.patch_size={d.patch_size} must divide data.resolution={d.resolution}"
        )
    _on_disk(cfg)
    L, grid = cfg.num_tokens, d.resolution // d.patch_size
    for key, value in (
        ("train.ar.steps", cfg.train.ar.steps),
        ("sample.ar_steps", cfg.sample.ar_steps),
    ):
        if value > L:
            raise UserError(f"{key}={value} is not allowed; expected 1..L={L} (tokens per image)")
    t = cfg.train
    if "block_raster" in (t.order, cfg.sample.order):  # the block size matters for that order only
        if t.order_block > grid or grid % t.order_block:
            raise UserError(
                f"train.order_block={t.order_block} must divide the {grid}x{grid} token grid "
                f"(block_raster tiles it); allowed: "
                + ", ".join(str(k) for k in range(1, grid + 1) if grid % k == 0)
            )
    _joint_checks(cfg)
    b = cfg.bench
    if b.clock == "cpu" and b.threads != 1:
        raise UserError(
            f"bench.clock=cpu times one thread's CPU time: it needs bench.threads=1, "
            f"not {b.threads}"
        )
    if profiles is not None and cfg.cluster.get("name") not in profiles:
        raise UserError(
            f"cluster.name={cfg.cluster.get('name')!r} is not allowed; expected the name of a "
            f"profile in cluster/ of a config dir: {', '.join(profiles)}"
            + did_you_mean(str(cfg.cluster.get("name")), profiles)
        )
    validate_profile(cfg.cluster)


def _on_disk(cfg: RunConfig) -> None:
    """The checks that read the filesystem: data.root and the dataset's folder, weight and
    reference files, run_dir. Missing data is a DataMissing (a dry run notes it, plans on)."""
    d = cfg.data
    with data_check(d.root):
        if d.root == MISSING:
            raise DataMissing(  # as datasets.data_root says it: one note per cause
                f"data={d.name} needs data.root (a folder), e.g. data.root=/path/to/{d.name}"
            )
        if d.root is not None and not Path(str(d.root)).expanduser().exists():
            raise DataMissing(f"data.root={d.root!r}: no such file or folder")
        check_data_config(d, (str(cfg.eval.split),))
    for name, value in (("weights_path", cfg.eval.weights_path), ("reference", cfg.eval.reference)):
        if value is not None and not Path(str(value)).expanduser().is_file():
            raise UserError(f"eval.{name}={value!r}: no such file")
    run_dir = cfg.run_dir
    if run_dir is not None and Path(str(run_dir)).exists() and not Path(str(run_dir)).is_dir():
        raise UserError(f"run_dir={run_dir} is a file; expected a folder (or a new path)")


def check_train_batch(cfg: Any, world: int = 1) -> None:
    """A training plan's global batch: it splits over the `world` ranks and is no larger than
    one epoch of the train split (datasets.train_size). Called where a run is trained
    (cfh train, grid points), not by validate_config: sampling does not use train.batch_size."""
    cfg = typed(cfg)
    batch = int(cfg.train.batch_size)
    if batch % world:
        raise UserError(
            f"train.batch_size={batch} does not split over the {world} ranks (WORLD_SIZE); "
            f"use a multiple of {world}"
        )
    data = cfg.data
    n = None
    with data_check(data.root):  # a dry run before the data exists cannot count it
        n = train_size(data, batch + 1)  # counting to batch + 1 tells whether the batch fits
    if n is None or batch <= n:
        return
    per_rank = f" ({batch // world} per rank x {world} ranks)" if world > 1 else ""
    most = n - n % world
    allowed = f"1..{n}" if world == 1 else f"a multiple of {world} up to {most}"
    items = "image-caption pairs" if data.name in CAPTION_DATASETS else "images"
    split = data.train_split
    where = "the train split" if split == "train" else f"data.train_split={split}"
    raise UserError(
        f"train.batch_size={batch}{per_rank} is larger than {where} of data={data.name} "
        f"({n:,} {items}); allowed: {allowed}"
    )


def check_kid_subset(cfg: Any) -> None:
    """An evaluation's KID and FID_inf subsets are drawn from its samples: eval.kid_subset_size
    and (eval.fid_inf=true) every eval.fid_inf_sizes at most sample.num, and the default sizes
    (n/4..n, at least 4) two distinct ones (caption evaluations compute neither)."""
    cfg = typed(cfg)
    ev, num = cfg.eval, cfg.sample.num
    if ev.task == "caption":
        return
    kid = ev.kid_subset_size
    if kid > num:
        raise UserError(
            f"eval.kid_subset_size={kid} is above sample.num={num} (KID subsets are drawn from "
            f"the samples); allowed: 2..{num}, or raise sample.num"
        )
    if not ev.fid_inf:
        return
    sizes = None if ev.fid_inf_sizes is None else [int(s) for s in ev.fid_inf_sizes]
    if sizes is not None and max(sizes) > num:
        raise UserError(
            f"eval.fid_inf_sizes={sizes} has sizes above sample.num={num} (FID_inf subsets are "
            f"drawn from the samples); allowed: sizes 4..{num}, or raise sample.num"
        )
    if sizes is None and num < 5:
        raise UserError(
            f"eval.fid_inf=true needs sample.num >= 5 (subsets of two sizes in 4..sample.num), "
            f"not {num}"
        )


def _joint_checks(cfg: RunConfig) -> None:
    """Keys of joint image-text runs against the data: captions or not."""
    d = _run_data(cfg)
    joint = d.name in CAPTION_DATASETS
    names = ", ".join(CAPTION_DATASETS)
    if not joint:
        if cfg.eval.task in JOINT_TASKS:
            raise UserError(
                f"eval.task={cfg.eval.task} needs a joint run (data with captions: {names}); "
                f"data={d.name} has no captions"
            )
        for key, value in (("prompt", cfg.sample.prompt), ("prompts", cfg.sample.prompts)):
            if value is not None:
                raise UserError(
                    f"sample.{key} needs a joint run (data with captions: {names}); "
                    f"data={d.name} has no captions"
                )
        return
    if cfg.model.attention != "sdpa":
        raise UserError(
            f"model.attention={cfg.model.attention} is not allowed for joint runs "
            "(per-sample text masks); expected sdpa"
        )
    if cfg.sample.prompt is not None and cfg.sample.prompts is not None:
        raise UserError("set sample.prompt or sample.prompts, not both")
    max_len = cfg.caption.max_len
    if max_len is not None and max_len > d.max_text_len:
        raise UserError(
            f"caption.max_len={max_len} is not allowed; expected 3..data.max_text_len="
            f"{d.max_text_len} (the model's text positions)"
        )


def _run_data(cfg: RunConfig) -> DataConfig:
    """The data a command works on: a trained run's (run_dir/config.yaml), else cfg.data."""
    if cfg.run_dir is not None:
        path = Path(str(cfg.run_dir)) / "config.yaml"
        if path.is_file():  # read within the YAML bounds, interpolations resolved
            data = read_config_dict(path).get("data") or {}
            return data_config({**cfg.data.to_dict(), **data}, check=True)
    return cfg.data
