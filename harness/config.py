"""Compose cfh's hydra config from experiments/ and validate it before any work starts."""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from model.errors import UserError

EXPERIMENTS_DIR = Path(__file__).resolve().parents[1] / "experiments"
CONFIG_GROUPS = ("model", "data", "cluster")

AR_MODES = ("fixed", "uniform", "decay")
ORDERS = ("random", "raster", "block_raster", "dilated")
AR_SCHEDULES = ("linear", "cosine")
NOISE_WEIGHTINGS = ("uniform", "high_noise", "min_snr")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
SAMPLERS = ("ddpm", "ddim")
EXTRACTORS = ("classifier", "inception")
TASKS = ("generate", "inpaint", "outpaint", "swap")
DATASETS = ("digits", "mnist", "imagefolder", "latents")
ATTENTIONS = ("sdpa", "flex")
POS_EMBEDS = ("sincos", "learned")
NUM_DIFFUSION_STEPS = 1000


def group_options(group: str) -> list[str]:
    """The names a config group offers (the yaml files in experiments/<group>/)."""
    return sorted(p.stem for p in (EXPERIMENTS_DIR / group).glob("*.yaml"))


@functools.cache
def _compose_groups(choices: tuple[tuple[str, str], ...]) -> DictConfig:
    """Hydra-compose the base config for one choice of config groups (cached)."""
    overrides = [f"{k}={v}" for k, v in choices]
    for group, name in choices:
        if name not in group_options(group):
            raise UserError(f"unknown {group}={name!r}; allowed: {', '.join(group_options(group))}")
    try:
        with initialize_config_dir(str(EXPERIMENTS_DIR), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
    except HydraException as e:
        raise UserError(f"config composition failed for {overrides}: {e}") from None
    OmegaConf.set_struct(cfg, True)
    return cfg


@functools.cache
def _parser() -> OverridesParser:
    return OverridesParser.create()


def parse_override(text: str) -> tuple[str, Any]:
    """Split a hydra-style `key=value` override into (key, typed value)."""
    if "=" not in text:
        raise UserError(f"expected key=value, got {text!r}")
    try:
        ov = _parser().parse_override(text)
    except HydraException as e:
        raise UserError(f"cannot parse override {text!r}: {e}") from None
    if ov.is_sweep_override():
        raise UserError(f"{text!r} is a sweep; put several values in a grid file instead")
    value = ov.value()
    return ov.key_or_group, value


def resolve_overrides(overrides: Sequence[str] = ()) -> dict:
    """Compose experiments/config.yaml with `key=value` overrides into a plain nested dict.

    The fast path for grids: hydra composes each choice of config groups once; value overrides
    are applied to a copy of that plain dict, refusing keys the config does not have.
    """
    choices = dict(_default_choices())
    values: list[tuple[str, Any]] = []
    for key, value in map(parse_override, overrides):
        if key in CONFIG_GROUPS:
            choices[key] = str(value)
        else:
            values.append((key, value))
    cfg = copy.deepcopy(_base_dict(tuple((g, choices[g]) for g in CONFIG_GROUPS)))
    for key, value in values:
        set_key(cfg, key, value)
    return cfg


def load_config(overrides: Sequence[str] = (), validate: bool = True) -> DictConfig:
    """Compose experiments/config.yaml with `key=value` overrides; raise UserError if invalid."""
    cfg = resolve_overrides(overrides)
    if validate:
        validate_config(cfg)
    out = OmegaConf.create(cfg)
    OmegaConf.set_struct(out, True)
    return out


@functools.cache
def _base_dict(choices: tuple[tuple[str, str], ...]) -> dict:
    return OmegaConf.to_container(_compose_groups(choices), resolve=False)  # type: ignore


@functools.cache
def _default_choices() -> dict[str, str]:
    """The config groups chosen by experiments/config.yaml's defaults list."""
    raw = OmegaConf.load(EXPERIMENTS_DIR / "config.yaml")
    out = {}
    for item in raw.defaults:
        if isinstance(item, DictConfig):
            out.update({str(k): str(v) for k, v in item.items()})
    return out


def set_key(cfg: dict, key: str, value: Any) -> None:
    """Set a dotted key that must already exist in the plain config dict."""
    node: Any = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            parent = ".".join(parts[:i])
            raise UserError(f"unknown config key {key!r}; {_nearby_keys(cfg, parent)}")
        if i < len(parts) - 1:
            node = node[part]
    leaf = parts[-1]
    if isinstance(node[leaf], dict) and not isinstance(value, dict):
        raise UserError(f"{key} is a section, not a value; {_nearby_keys(cfg, key)}")
    node[leaf] = value


def _nearby_keys(cfg: dict, parent_key: str) -> str:
    node: Any = cfg
    for part in parent_key.split(".") if parent_key else []:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        prefix = f"{parent_key}." if parent_key else ""
        return "allowed keys here: " + ", ".join(prefix + str(k) for k in node)
    return f"{parent_key!r} has no sub-keys"


class _Attr(dict):
    """Read-only attribute access over a nested plain dict, for validation."""

    def __getattr__(self, name: str) -> Any:
        value = self[name]
        return _Attr(value) if isinstance(value, dict) else value


def num_tokens(cfg: Any) -> int:
    """L: tokens per image for the configured data resolution and patch size."""
    return (int(cfg.data.resolution) // int(cfg.data.patch_size)) ** 2


def _check_choice(key: str, value: Any, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise UserError(f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def _check_int(key: str, value: Any, lo: int, hi: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        span = f"{lo}..{hi}" if hi != math.inf else f">= {lo}"
        raise UserError(f"{key}={value!r} must be an integer in {span}")


def _check_float(
    key: str, value: Any, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False
) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok:
        above = lo < value if lo_open else lo <= value
        ok = above and (value < hi if hi_open else value <= hi)
    if not ok:
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        raise UserError(f"{key}={value!r} must be a number in {left}{lo}, {hi}{right}")


def validate_config(cfg: DictConfig | dict) -> None:
    """Check every value a job will use; raise UserError naming key, value and what is allowed."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    cfg = _Attr(cfg)
    from model.network import SIZES  # the model package owns the size registry

    _check_choice("model", cfg.model.name, SIZES)
    _check_choice("model.pos_embed", cfg.model.pos_embed, POS_EMBEDS)
    _check_choice("model.attention", cfg.model.attention, ATTENTIONS)
    _check_int("model.num_cond_tokens", cfg.model.num_cond_tokens, 1)
    d = cfg.data
    _check_choice("data", d.name, DATASETS)
    if d.root == "???":
        raise UserError(f"data.root is required for data={d.name} (a folder path)")
    if d.root is not None and not Path(str(d.root)).exists():
        raise UserError(f"data.root={d.root!r}: no such file or folder")
    _check_int("data.resolution", d.resolution, 1)
    _check_int("data.channels", d.channels, 1)
    _check_int("data.num_classes", d.num_classes, 1)
    _check_int("data.patch_size", d.patch_size, 1, d.resolution)
    if d.resolution % d.patch_size:
        raise UserError(
            f"data.patch_size={d.patch_size} must divide data.resolution={d.resolution}"
        )
    L = num_tokens(cfg)
    t = cfg.train
    _check_int("train.steps", t.steps, 1)
    _check_int("train.batch_size", t.batch_size, 1)
    _check_float("train.lr", t.lr, 0.0, 1.0, lo_open=True)
    _check_int("train.warmup_steps", t.warmup_steps, 0)
    if not isinstance(t.betas, list) or len(t.betas) != 2:
        raise UserError(f"train.betas={t.betas!r} must be a pair [beta1, beta2]")
    for i, b in enumerate(t.betas):
        _check_float(f"train.betas[{i}]", b, 0.0, 1.0)
    _check_float("train.weight_decay", t.weight_decay, 0.0, math.inf)
    _check_float("train.grad_clip", t.grad_clip, 0.0, math.inf)
    _check_float("train.ema_decay", t.ema_decay, 0.0, 1.0)
    _check_float("train.label_dropout", t.label_dropout, 0.0, 1.0, hi_open=True)
    _check_choice("train.ar.mode", t.ar.mode, AR_MODES)
    _check_int("train.ar.steps", t.ar.steps, 1, L)
    _check_float("train.ar.decay", t.ar.decay, 0.0, 1.0, lo_open=True)
    _check_choice("train.order", t.order, ORDERS)
    grid = d.resolution // d.patch_size
    if "block_raster" in (t.order, cfg.sample.order):  # the block size matters for that order only
        _check_int("train.order_block", t.order_block, 1, grid)
        if grid % t.order_block:
            raise UserError(
                f"train.order_block={t.order_block} must divide the {grid}x{grid} token grid "
                f"(block_raster tiles it); allowed: "
                + ", ".join(str(k) for k in range(1, grid + 1) if grid % k == 0)
            )
    aw = t.loss.ar_weight
    _check_float("train.loss.ar_weight.max", aw.max, 0.0, math.inf)
    _check_float("train.loss.ar_weight.min", aw.min, 0.0, math.inf)
    _check_choice("train.loss.ar_weight.schedule", aw.schedule, AR_SCHEDULES)
    _check_choice("train.loss.noise_weighting", t.loss.noise_weighting, NOISE_WEIGHTINGS)
    _check_float("train.loss.min_snr_gamma", t.loss.min_snr_gamma, 0.0, math.inf, lo_open=True)
    _check_choice("train.precision", t.precision, PRECISIONS)
    _check_choice("train.device", t.device, DEVICES)
    _check_float("train.dist_timeout_s", t.dist_timeout_s, 0.0, math.inf, lo_open=True)
    _check_int("train.ckpt_every", t.ckpt_every, 1)
    _check_int("train.keep_checkpoints", t.keep_checkpoints, 1)
    _check_int("train.log_every", t.log_every, 1)
    _check_int("train.num_workers", t.num_workers, 0)
    _check_int("train.max_nonfinite", t.max_nonfinite, 0)
    s = cfg.sample
    _check_int("sample.num", s.num, 1)
    _check_int("sample.ar_steps", s.ar_steps, 1, L)
    _check_choice("sample.order", s.order, ORDERS)
    _check_float("sample.cfg", s.cfg, 0.0, math.inf)
    if s.cfg_interval is not None:
        ci = s.cfg_interval
        ok = isinstance(ci, list) and len(ci) == 2
        ok = ok and all(isinstance(v, int | float) for v in ci) and 0 <= ci[0] <= ci[1]
        if not ok:
            raise UserError(
                f"sample.cfg_interval={ci!r} must be null or [t_low, t_high] with "
                f"0 <= t_low <= t_high <= {NUM_DIFFUSION_STEPS - 1}"
            )
    _check_int("sample.steps", s.steps, 1, NUM_DIFFUSION_STEPS)
    _check_choice("sample.sampler", s.sampler, SAMPLERS)
    _check_int("sample.batch_size", s.batch_size, 1)
    _check_int("sample.seed", s.seed, 0)
    if s.ckpt != "latest":
        _check_int("sample.ckpt", s.ckpt, 0)
    e = cfg.eval
    _check_choice("eval.extractor", e.extractor, EXTRACTORS)
    _check_choice("eval.task", e.task, TASKS)
    _check_int("eval.kid_subset_size", e.kid_subset_size, 2)
    if e.ref_num is not None:
        _check_int("eval.ref_num", e.ref_num, 2)
    if e.weights_path is not None and not Path(str(e.weights_path)).is_file():
        raise UserError(f"eval.weights_path={e.weights_path!r}: no such file")
    _check_int("seed", cfg.seed, 0)


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML text."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_container(cfg: DictConfig) -> dict:
    """The resolved config as plain Python containers."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
