"""Compose cfh's hydra config from the config dirs (harness.config.search); validate it.

Hydra composes config.yaml once per choice of config groups (model, data, cluster) over a search
path with the user dirs before the shipped one; `key=value` overrides are then applied to a plain
copy, refusing keys the config does not have.
"""

from __future__ import annotations

import copy
import difflib
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, version
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_config_search_path
from hydra.core.config_search_path import SearchPathQuery
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob
from hydra.errors import HydraException
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from omegaconf import DictConfig, OmegaConf

from core.config import RunConfig, config_yaml, read_config_dict, validate_config
from core.config.spec import did_you_mean, quote
from core.errors import UserError
from core.keys import flatten
from harness.config.search import check_config_files, config_dirs, find_config, group_options

CONFIG_GROUPS = ("model", "data", "cluster")
# Mappings whose keys are open (sbatch option names): set_key may add a key there.
OPEN_SECTIONS = ("cluster.slurm_additional_parameters",)


def _compose(dirs: tuple[Path, ...], overrides: list[str]) -> DictConfig:
    """Hydra compose of config.yaml over a search path with the user dirs before the shipped one.

    initialize_config_dir takes one dir and hydra.searchpath entries go after it (shipped files
    would win), so this builds the search path the way it does, user dirs first: hydra takes a
    config from the first source that has it.
    """
    *user, shipped = dirs
    search_path = create_config_search_path(str(shipped))  # provider "main": the shipped dir
    for i, d in enumerate(user):  # each goes just before "main", so user dirs keep their order
        search_path.prepend(f"cfh-user-{i}", f"file://{d}", anchor=SearchPathQuery(provider="main"))
    backup = get_gh_backup()
    version.setbase("1.3")
    try:
        Hydra.create_main_hydra2(task_name="app", config_search_path=search_path)
        return compose("config", overrides=overrides)
    finally:
        restore_gh_from_backup(backup)


@functools.cache
def _compose_groups(dirs: tuple[Path, ...], choices: tuple[tuple[str, str], ...]) -> DictConfig:
    """Hydra-compose the base config for one choice of config groups (cached per search path)."""
    overrides = [f"{k}={v}" for k, v in choices]
    for group, name in choices:
        options = group_options(group, dirs)
        if name not in options:
            hint = did_you_mean(str(name), options)
            raise UserError(f"unknown {group}={quote(name)}{hint}; allowed: {', '.join(options)}")
    check_config_files(dirs)  # hydra reads the files without a bound on aliases or nesting
    try:
        cfg = _compose(dirs, overrides)
    except HydraException as e:
        raise UserError(f"config composition failed for {overrides}: {e}") from None
    OmegaConf.set_struct(cfg, True)
    return cfg


@functools.cache
def _parser() -> OverridesParser:
    return OverridesParser.create()


def _parsed(text: str) -> Any:
    """Hydra's Override for `key=value` text; UserError when it does not parse."""
    if "=" not in text:
        raise UserError(f"expected key=value, got {text!r}")
    try:
        return _parser().parse_override(text)
    except HydraException as e:
        raise UserError(f"cannot parse override {text!r}: {e}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """Split a hydra-style `key=value` override into (key, typed value)."""
    ov = _parsed(text)
    if ov.is_sweep_override():
        raise UserError(
            f"{text!r} is a sweep; give it to `cfh sweep GRID` (one more axis) or a grid file"
        )
    value = ov.value()
    return ov.key_or_group, value


def check_repeated(overrides: Sequence[str]) -> None:
    """A key given twice must say one thing: `train.steps=3 train.steps=4` is refused (hydra
    would keep the last silently); the same value twice is fine."""
    seen: dict[str, tuple[str, Any]] = {}
    for text in overrides:
        ov = _parsed(text)
        key, value = ov.key_or_group, ov.value()
        if key in seen and seen[key][1] != value:
            raise UserError(
                f"{key} is given twice with different values ({seen[key][0]!r} and {text!r}); "
                "give it once"
            )
        seen.setdefault(key, (text, value))


def parse_sweep(text: str) -> tuple[str, list] | None:
    """(key, values) of a hydra sweep override (`a,b`, `range(...)`, `choice(...)`, a `glob(...)`
    of a config group's options); None for a plain `key=value`. Hydra's parser does the parsing."""
    ov = _parsed(text)
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
    """Compose config.yaml (see config_dirs) with `key=value` overrides into a plain dict.

    The fast path for grids: hydra composes each choice of config groups once; value overrides
    are applied to a copy of that plain dict, refusing keys the config does not have.
    """
    dirs = config_dirs()
    choices = dict(_default_choices(dirs))
    values: list[tuple[str, Any]] = []
    for key, value in map(parse_override, overrides):
        if key in CONFIG_GROUPS:
            choices[key] = str(value)
        else:
            values.append((key, value))
    cfg = copy.deepcopy(_base_dict(dirs, tuple((g, choices[g]) for g in CONFIG_GROUPS)))
    for key, value in values:
        set_key(cfg, key, value)
    return cfg


def default_config() -> dict:
    """The default config (no overrides) for the config dirs in effect; shared: do not change it."""
    return _default_config_for(config_dirs())


@functools.cache
def _default_config_for(dirs: tuple[Path, ...]) -> dict:
    """default_config per search path (the config dirs may change within a process)."""
    return resolve_overrides([])


def load_config(overrides: Sequence[str] = ()) -> RunConfig:
    """Compose config.yaml with `key=value` overrides into the typed run config, validated once
    (validate_config); raise UserError if invalid."""
    return validate_config(resolve_overrides(overrides), group_options("cluster"))


def stored_config(run_dir: Path) -> dict:
    """A run folder's config.yaml as a plain dict; keys added to cfh after the folder was
    written get their defaults (a new key's default keeps the behaviour from before it)."""
    cfg = read_config_dict(Path(run_dir) / "config.yaml")
    fill_missing(cfg, default_config())
    return cfg


def fill_missing(cfg: dict, defaults: dict) -> None:
    """Add (copies of) the keys of `defaults` that `cfg` lacks, at every level."""
    for key, value in defaults.items():
        if key not in cfg:
            cfg[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(cfg[key], dict):
            fill_missing(cfg[key], value)


def apply_overrides(cfg: dict, overrides: Sequence[str]) -> dict:
    """A copy of a full config with `key=value` overrides applied. A config group given
    (`model=S`) replaces its section with that option's only when it names another option
    than the section's `name`; the same name keeps the section as it is."""
    out = copy.deepcopy(cfg)
    values = []
    for key, value in map(parse_override, overrides):
        if key not in CONFIG_GROUPS:
            values.append((key, value))
        elif not isinstance(out.get(key), dict) or out[key].get("name") != str(value):
            out[key] = copy.deepcopy(resolve_overrides([f"{key}={value}"])[key])
    for key, value in values:
        set_key(out, key, value)
    return out


def load_train_config(overrides: Sequence[str] = ()) -> RunConfig:
    """`cfh train`'s config: for a run_dir that already holds config.yaml, that file (the run's
    own config) with only the overrides given, so `cfh train run_dir=R train.steps=N` resumes
    R as it was trained; otherwise config.yaml composed with them (load_config). Overrides that
    change what R trains are then refused by the trainer (model/training/identity.py)."""
    given = dict(map(parse_override, overrides))
    run_dir = given.get("run_dir")
    if not run_dir or not (Path(str(run_dir)) / "config.yaml").is_file():
        return load_config(overrides)
    cfg = apply_overrides(stored_config(Path(str(run_dir))), overrides)
    return validate_config(cfg, group_options("cluster"))


@functools.cache
def _base_dict(dirs: tuple[Path, ...], choices: tuple[tuple[str, str], ...]) -> dict:
    return OmegaConf.to_container(_compose_groups(dirs, choices), resolve=False)  # type: ignore


@functools.cache
def _default_choices(dirs: tuple[Path, ...]) -> dict[str, str]:
    """The config groups chosen by the winning config.yaml's defaults list."""
    path = find_config("config.yaml", dirs)
    assert path is not None  # the shipped dir has one
    check_config_files(dirs)
    raw = OmegaConf.load(path)
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
            raise UserError(
                f"unknown config key {quote(key)}; {_did_you_mean(cfg, key)}"
                f"{_nearby_keys(cfg, parent)}"
            )
        if i < len(parts) - 1:
            node = node[part]
    leaf = parts[-1]
    if isinstance(node.get(leaf), dict) and not isinstance(value, dict):
        raise UserError(f"{key} is a section, not a value; {_nearby_keys(cfg, key)}")
    node[leaf] = value


def _did_you_mean(cfg: dict, key: str) -> str:
    """ "did you mean 'train.steps'? " for a key one typo away from an existing one, else ""."""
    close = difflib.get_close_matches(key, flatten(cfg), n=3, cutoff=0.8)
    return f"did you mean {' or '.join(repr(k) for k in close)}? " if close else ""


def _nearby_keys(cfg: dict, parent_key: str) -> str:
    node: Any = cfg
    for part in parent_key.split(".") if parent_key else []:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        prefix = f"{parent_key}." if parent_key else ""
        return "allowed keys here: " + ", ".join(prefix + str(k) for k in node)
    return f"{parent_key!r} has no sub-keys"


def print_config_job(args: Any) -> int:
    """`--cfg job` of a single-run command: its composed, validated config as YAML."""
    print(config_yaml(load_config(args.overrides)), end="")
    return 0
