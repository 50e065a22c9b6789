"""Typed config values: as hydra override text, read from a config, composed into a config.

A grid's points carry typed values (from YAML); their overrides are written as text that
hydra's parser reads back to the same value (format_value), and their configs are composed
without parsing any text (resolve_values), which a 1,000-point grid needs to be fast.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.errors import UserError
from harness.config.compose import (
    CONFIG_GROUPS,
    default_config,
    parse_override,
    resolve_overrides,
    set_key,
)
from harness.config.search import config_dirs


@functools.cache
def _parses_as_itself(text: str) -> bool:
    try:
        return parse_override(f"k={text}")[1] == text
    except UserError:
        return False


def format_value(value: Any) -> str:
    """A typed value as hydra override text that parses back to the same value."""
    if isinstance(value, str | int | float) or value is None:
        return _format_scalar(value, type(value))
    return _format(value)


@functools.lru_cache(maxsize=8192)
def _format_scalar(value: Any, kind: type) -> str:  # kind: True and 1 are equal keys
    return _format(value)


def _format(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        if value and _parses_as_itself(value):
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list | tuple):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    return format_value(str(value))  # a YAML date or other scalar: its text


def override(key: str, value: Any) -> str:
    """`key=value` override text."""
    return f"{key}={format_value(value)}"


def get_value(cfg: dict, key: str) -> Any:
    """A dotted key's value in a resolved config; a group name (`model`) gives its name."""
    if key in CONFIG_GROUPS:
        return cfg[key]["name"]
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def resolve_values(pairs: Sequence[tuple[str, Any]]) -> dict:
    """config.resolve_overrides for already-typed values: the same composition, no parsing.

    Config groups (model=, data=, cluster=) are composed once per combination (through
    resolve_overrides); values are then set in order with config.set_key, as resolve_overrides
    does after parsing `key=value` text. Hydra's override parser costs milliseconds per
    override, which a 1,000-point grid cannot afford.
    """
    groups = dict(_default_groups())
    values = []
    for key, value in pairs:
        if key in CONFIG_GROUPS:
            groups[key] = str(value)
        else:
            values.append((key, value))
    cfg = plain_copy(_composed(tuple(groups[g] for g in CONFIG_GROUPS)))
    for key, value in values:
        set_key(cfg, key, plain_copy(value))
    return cfg


def plain_copy(value: Any) -> Any:
    """Deep copy of plain dicts and lists (several times faster than copy.deepcopy)."""
    if isinstance(value, dict):
        return {k: plain_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_copy(v) for v in value]
    return value


def _default_groups() -> dict[str, str]:
    return _default_groups_for(config_dirs())


@functools.cache
def _default_groups_for(dirs: tuple[Path, ...]) -> dict[str, str]:
    cfg = default_config()
    return {g: cfg[g]["name"] for g in CONFIG_GROUPS}


def _composed(names: tuple[str, ...]) -> dict:
    return _composed_for(config_dirs(), names)


@functools.lru_cache(maxsize=64)
def _composed_for(dirs: tuple[Path, ...], names: tuple[str, ...]) -> dict:
    return resolve_overrides([f"{g}={n}" for g, n in zip(CONFIG_GROUPS, names, strict=True)])


def dedupe(ovs: list[str]) -> list[str]:
    """Keep the last override of each key (a later one wins anyway), in order."""
    last = {o.split("=", 1)[0]: i for i, o in enumerate(ovs)}
    return [o for i, o in enumerate(ovs) if last[o.split("=", 1)[0]] == i]


def show(values: dict[str, Any]) -> str:
    """`{key=value, ...}`: a point's values as messages name the point."""
    return "{" + ", ".join(f"{k}={format_value(v)}" for k, v in values.items()) + "}"
