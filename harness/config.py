"""Compose cfh's hydra config from experiments/ and validate it (harness.schema) before any work."""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from harness.schema import validate_config
from model.errors import UserError

EXPERIMENTS_DIR = Path(__file__).resolve().parents[1] / "experiments"
CONFIG_GROUPS = ("model", "data", "cluster")
# Mappings whose keys are open (sbatch option names): set_key may add a key there.
OPEN_SECTIONS = ("cluster.slurm_additional_parameters",)


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
        raise UserError(
            f"{text!r} is a sweep; give it to `cfh sweep GRID` (one more axis) or a grid file"
        )
    value = ov.value()
    return ov.key_or_group, value


def parse_sweep(text: str) -> tuple[str, list] | None:
    """(key, values) of a hydra sweep override (`a,b`, `range(...)`, `choice(...)`, a `glob(...)`
    of a config group's options); None for a plain `key=value`. Hydra's parser does the parsing."""
    if "=" not in text:
        raise UserError(f"expected key=value, got {text!r}")
    try:
        ov = _parser().parse_override(text)
    except HydraException as e:
        raise UserError(f"cannot parse override {text!r}: {e}") from None
    if not ov.is_sweep_override():
        return None
    key = ov.key_or_group
    value = ov.value()
    if isinstance(value, Glob):
        if key not in CONFIG_GROUPS:
            raise UserError(f"{text!r}: glob() sweeps the options of a config group only")
        return key, value.filter(group_options(key))
    if not ov.is_discrete_sweep():
        raise UserError(f"{text!r}: an interval() has no list of values to sweep; list them")
    values = list(ov.sweep_iterator())
    if not values:
        raise UserError(f"{text!r}: the sweep has no values")
    return key, values


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
        if ".".join(parts[:i]) in OPEN_SECTIONS and isinstance(node, dict) and i == len(parts) - 1:
            break  # a new option name is allowed here; its validator checks it
        if not isinstance(node, dict) or part not in node:
            parent = ".".join(parts[:i])
            raise UserError(f"unknown config key {key!r}; {_nearby_keys(cfg, parent)}")
        if i < len(parts) - 1:
            node = node[part]
    leaf = parts[-1]
    if isinstance(node.get(leaf), dict) and not isinstance(value, dict):
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


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML text."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_container(cfg: DictConfig) -> dict:
    """The resolved config as plain Python containers."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
