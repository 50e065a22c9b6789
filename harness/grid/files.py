"""Grid files -> train points x eval points, validated before anything is submitted.

A grid (`grids/<name>.yaml` of a config dir: a user's --config-dir first, then the shipped
experiments/; or a file given by its .yaml path) describes a set of training runs and the
evaluations to run on each of them. Anything else (`../x`, a name with a `/`) is refused: a
name is looked up in the config dirs only. Keys are the dotted config keys of
`experiments/config.yaml` (`train.ar.steps`, `model`, `data.root`, ...); a nested mapping is
read as dotted keys too.

    description: text shown by `cfh sweep`             (optional)
    base:        {key: value}  every point; sample.*/eval.* keys go to every eval point and
                               cluster.* keys to the resources
    axes:        {key: [v1, v2, ...]}   train axes, cartesian product
    zip:         [{key_a: [...], key_b: [...]}, ...]  each group varies its keys together
                               (lists of equal length); each group is one more product factor
    include:     [{key: value, ...}, ...]  extra train points (base + the entry), added as-is
    exclude:     [{key: value, ...}, ...]  drop product points whose resolved config matches
                               every key of an entry (include entries are never dropped)
    seeds:       [0, 1, 2]     crossed with every train point, include entries too (sets `seed`)
    eval:                      the eval space, crossed with every train point; keys are
      base:      {...}         sample.* / eval.* only: S_eval = sample.ar_steps, sample.order,
      axes:      {...}         sample.cfg, sample.steps, checkpoint step = sample.ckpt
      zip / include / exclude  (latest or a step), eval.extractor, ...
                               `eval: false` trains only; no `eval` key = one default eval point
    resources:
      cluster:   local         a profile in cluster/ of a config dir (default: local)
      <key>:     value         cluster.<key> overrides (gpus_per_node, timeout_min, ...)
    findings:    [{claim: text, better: {key: value}, worse: {key: value}}, ...]  the claims
                               the grid tests, judged by `cfh report` (harness.grid.findings)
    decide_on:   fid               the metric they are judged on: fid | fid_inf (needs
                                   eval.fid_inf: true) | kid; `cfh sweep --until-decided`

Values are typed YAML (`1e-4` is a float). The symbol `L` (tokens per image of the point's data)
is accepted for train.ar.steps and sample.ar_steps, so S_train = L reads the same on every
dataset; `sample.order: train` samples each point in its own train.order (and block size).
Command-line overrides (`cfh sweep GRID key=value`) extend `base`; they may not set an axis key.
A hydra sweep on the command line (`train.lr=1e-4,3e-4`, `train.steps=range(100,301,100)`,
`choice(...)`, `model=glob(*)`; parsed by hydra's override parser) is one more axis instead: an
eval axis for sample.*/eval.* keys, else a train axis, crossed with the file's axes.
Checkpoint-step eval points (`sample.ckpt: [500, 1000]`) must be multiples of train.ckpt_every
(or train.steps); train.keep_checkpoints is raised to keep them.

A grid must list runs: an empty file is refused, and so is a grid without any axis, zip,
include, seeds or eval axis (a single run: `seeds: [0]`). It may have at most 10,000 train
points and 100,000 eval points in all (harness.grid.expansion.MAX_TRAIN_POINTS, MAX_EVAL_POINTS),
counted before expanding. A command-line override may be given once (or twice with the same
value). The file itself is read within core.yaml_bounds' limits (size, nodes with aliases
expanded, nesting depth, alias count): an alias bomb is refused in one line, not expanded.

This module reads and checks the file (keys and shapes) into a harness.grid.expansion.Grid; every
point is validated (schema.validate_config plus cluster checks) while expanding. Any problem is
a UserError naming the grid file, the key and what is allowed.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import yaml

from core.choices import DECIDE_ON
from core.config.spec import did_you_mean, quote
from core.errors import UserError
from core.names import check_name
from core.yaml_bounds import check_yaml_file
from harness.config.compose import (
    CONFIG_GROUPS,
    parse_override,
    parse_sweep,
    resolve_overrides,
    set_key,
)
from harness.config.search import config_dirs, find_config, group_options
from harness.grid.expansion import Grid, Space
from harness.grid.findings import parse_findings

TOP_KEYS = ("description", "base", "axes", "zip", "include", "exclude", "seeds", "eval")
TOP_KEYS += ("resources", "findings", "decide_on")
EVAL_KEYS = ("base", "axes", "zip", "include", "exclude")
EVAL_PREFIXES = ("sample.", "eval.")


class _Loader(yaml.SafeLoader):
    """YAML SafeLoader that reads `1e-4` as a float (as OmegaConf does) and refuses duplicate
    keys (plain YAML keeps the last one silently: a second `base:` would drop the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def grid_path(name_or_path: str) -> Path:
    """The grid file for a name (grids/<name>.yaml, user config dirs first) or a .yaml path."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")):
        path = Path(text)
        if not path.is_file():
            raise UserError(f"grid file {quote(text)} {_why_not_a_file(path)}")
        return path
    if "/" in text:
        where = ", ".join(str(d / "grids") for d in config_dirs())
        raise UserError(
            f"grid {text!r} is neither a grid name nor a .yaml file: a name is looked up in "
            f"{where}; for a grid in a folder of your own, pass the folder with "
            "`cfh --config-dir DIR` and give the grid's name, or give the file's .yaml path"
        )
    check_name(text)
    path = find_config(f"grids/{text}.yaml")
    if path is None:
        for root in config_dirs():  # there, but not a file: say what it is
            odd = root / "grids" / f"{text}.yaml"
            if odd.is_symlink() or odd.exists():
                raise UserError(f"grid {text!r}: {odd} {_why_not_a_file(odd)}")
        known = ", ".join(list_grids()) or "(none)"
        where = ", ".join(str(d / "grids") for d in config_dirs())
        raise UserError(
            f"unknown grid {text!r}{did_you_mean(text, list_grids())}; searched {where}, which "
            f"hold: {known}. To add one, write "
            f"grids/{text}.yaml in a folder of your own and pass it with `cfh --config-dir DIR` "
            "(or list it in $CFH_CONFIG_DIR)"
        )
    return path


def _why_not_a_file(path: Path) -> str:
    """What a grid path that is not a readable file is, in words."""
    if path.is_symlink() and not path.exists():
        return f"is a broken symbolic link (to {str(path.readlink())!r}); fix or remove the link"
    if path.is_dir():
        return "is a directory, not a grid file (a grid is one .yaml file)"
    if path.exists():
        return "is not a regular file (a grid is a .yaml file)"
    return "does not exist"


def list_grids() -> list[str]:
    """Names of the grids of every config dir (user dirs and the shipped ones)."""
    return group_options("grids")


def load_grid(name_or_path: str, overrides: Sequence[str] = ()) -> Grid:
    """Read and check a grid file; command-line `key=value` overrides extend its base."""
    path = grid_path(name_or_path)
    name = path.stem
    check_name(name, f"grid file {path}: its name")
    check_yaml_file(path, "grid file")  # alias bombs, deep nesting, a huge file: one line
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise UserError(f"grid file {path} does not parse: {e}") from None
    if raw is None or raw == {}:
        raise UserError(
            f"grid file {path} is empty; a grid lists its runs (axes, zip, include, seeds, "
            "eval axes: see experiments/grids/smoke.yaml)"
        )
    return parse_grid(raw, path, overrides)


def parse_grid(raw: Any, path: Path, overrides: Sequence[str] = ()) -> Grid:
    """Build a Grid from a parsed YAML document (keys and shapes checked, values not yet)."""
    where = f"grid {path}"
    if not isinstance(raw, dict):
        raise UserError(f"{where}: the file must be a mapping with keys {', '.join(TOP_KEYS)}")
    unknown = [str(k) for k in raw if k not in TOP_KEYS]
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(TOP_KEYS)}")
    err = functools.partial(_err, path)
    description = str(raw.get("description") or "")
    base = _flat_mapping(raw.get("base"), "base", err)
    cluster = "local"
    resources: dict[str, Any] = {}
    for key, value in _flat_mapping(raw.get("resources"), "resources", err).items():
        if key == "cluster":
            cluster = value
        else:
            resources[key.removeprefix("cluster.")] = value
    train_base: dict[str, Any] = {}
    eval_base: dict[str, Any] = {}
    for key, value in base.items():
        if key == "cluster":
            cluster = value
        elif key.startswith("cluster."):
            resources[key.removeprefix("cluster.")] = value
        else:
            (eval_base if key.startswith(EVAL_PREFIXES) else train_base)[key] = value
    train = _space(raw, "", err, eval_space=False)
    train.base = train_base
    seeds = raw.get("seeds")
    if seeds is not None:
        if not isinstance(seeds, list) or not seeds or not all(_is_nat(s) for s in seeds):
            raise err("seeds", f"must be a non-empty list of integers >= 0, got {seeds!r}")
        if "seed" in train.axis_keys() or "seed" in train_base:
            raise err("seeds", "seed is also set in base/axes/zip/include; set it in one place")
    ev = raw.get("eval", {})
    evalspace: Space | None
    if ev is False:
        evalspace = None
    else:
        if ev is None:
            ev = {}
        if not isinstance(ev, dict):
            raise err("eval", f"must be a mapping with keys {', '.join(EVAL_KEYS)}, or false")
        bad = [str(k) for k in ev if k not in EVAL_KEYS]
        if bad:
            raise err(f"eval.{bad[0]}", f"unknown key; allowed: {', '.join(EVAL_KEYS)}")
        evalspace = _space(ev, "eval.", err, eval_space=True)
        evalspace.base = {**eval_base, **_flat_mapping(ev.get("base"), "eval.base", err)}
    grid = Grid(
        name=path.stem,
        path=path,
        description=description,
        train=train,
        eval=evalspace,
        seeds=seeds,
        cluster=str(cluster),
        resources=resources,
    )
    _check_keys(grid, err)
    _apply_cli(grid, overrides)
    grid.findings = parse_findings(raw.get("findings"), grid, err)  # after the command-line axes
    grid.decide_on = _decide_on(raw.get("decide_on", "fid"), grid, err)
    return grid


def _decide_on(value: Any, grid: Grid, err: Any) -> str:
    """The metric the findings are judged on: fid (default), fid_inf (needs eval.fid_inf) or
    kid."""
    if value not in DECIDE_ON:
        raise err("decide_on", f"{value!r} is not allowed; allowed: {', '.join(DECIDE_ON)}")
    if value == "fid_inf":
        bases = [grid.train.base, grid.eval.base if grid.eval else {}]
        axes = [grid.eval.axes if grid.eval else {}, grid.cli_eval_axes]
        on = any(b.get("eval.fid_inf") is True for b in bases) or any(
            True in a.get("eval.fid_inf", []) for a in axes
        )
        if not on:
            raise err("decide_on", "fid_inf needs eval.fid_inf: true in the grid's base or eval")
    return str(value)


def _err(path: Path, where: str, message: str) -> UserError:
    return UserError(f"grid {path}: {where}: {message}")


def _is_nat(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _flatten(mapping: dict, prefix: str, where: str, err: Any) -> dict[str, Any]:
    """core.keys.flatten that refuses keys which are no config key names.

    A separate walk because core.keys.flatten turns any YAML key (1, null, true) into text;
    here such a key is the user's mistake, refused with the grid file and section it is in.
    """
    out: dict[str, Any] = {}
    for k, v in mapping.items():
        if not isinstance(k, str) or not k:
            raise err(where, f"key {k!r} must be a config key such as train.steps")
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}.", where, err))
        else:
            out[key] = v
    return out


def _flat_mapping(value: Any, where: str, err: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise err(where, f"must be a mapping of key: value, got {type(value).__name__}")
    return _flatten(value, "", where, err)


def _axis_lists(value: Any, where: str, err: Any) -> dict[str, list]:
    out = _flat_mapping(value, where, err)
    for k, v in out.items():
        if not isinstance(v, list) or not v:
            raise err(f"{where}.{k}", f"an axis must be a non-empty list of values, got {v!r}")
    return out


def _space(raw: dict, prefix: str, err: Any, eval_space: bool) -> Space:
    """The axes/zip/include/exclude part of the train or eval section."""
    axes = _axis_lists(raw.get("axes"), f"{prefix}axes", err)
    zips = []
    groups = raw.get("zip") or []
    if not isinstance(groups, list):
        raise err(f"{prefix}zip", "must be a list of groups ({key: [values], ...})")
    for i, group in enumerate(groups):
        where = f"{prefix}zip[{i}]"
        lists = _axis_lists(group, where, err)
        lengths = {len(v) for v in lists.values()}
        if len(lengths) > 1:
            shown = ", ".join(f"{k}: {len(v)}" for k, v in lists.items())
            raise err(where, f"zipped lists must have equal lengths, got {shown}")
        zips.append(lists)
    entries = {}
    for part in ("include", "exclude"):
        items = raw.get(part) or []
        if not isinstance(items, list):
            raise err(f"{prefix}{part}", "must be a list of mappings ({key: value, ...})")
        entries[part] = [_flat_mapping(e, f"{prefix}{part}[{i}]", err) for i, e in enumerate(items)]
    seen: dict[str, str] = {}
    for where, keys in [(f"{prefix}axes", list(axes))] + [
        (f"{prefix}zip[{i}]", list(g)) for i, g in enumerate(zips)
    ]:
        for k in keys:
            if k in seen:
                raise err(f"{where}.{k}", f"already an axis in {seen[k]}; vary a key in one place")
            seen[k] = where
    return Space({}, axes, zips, entries["include"], entries["exclude"])


def _check_keys(grid: Grid, err: Any) -> None:
    """Every key names a config key of the right section (checked once per key, not per point)."""
    if grid.cluster not in group_options("cluster"):
        raise err(
            "resources.cluster",
            f"unknown cluster profile {grid.cluster!r}; allowed: "
            + ", ".join(group_options("cluster")),
        )
    defaults = resolve_overrides([f"cluster={grid.cluster}"])
    sections: list[tuple[str, dict[str, Any], bool]] = [("base", grid.train.base, False)]
    sections += [("axes", {k: v[0] for k, v in grid.train.axes.items()}, False)]
    sections += [
        (f"zip[{i}]", {k: v[0] for k, v in g.items()}, False) for i, g in enumerate(grid.train.zips)
    ]
    sections += [(f"include[{i}]", e, False) for i, e in enumerate(grid.train.include)]
    sections += [(f"exclude[{i}]", e, False) for i, e in enumerate(grid.train.exclude)]
    sections += [("resources", {f"cluster.{k}": v for k, v in grid.resources.items()}, False)]
    if grid.eval is not None:
        ev = grid.eval
        sections += [("eval.base", ev.base, True)]
        sections += [("eval.axes", {k: v[0] for k, v in ev.axes.items()}, True)]
        sections += [
            (f"eval.zip[{i}]", {k: v[0] for k, v in g.items()}, True) for i, g in enumerate(ev.zips)
        ]
        sections += [(f"eval.include[{i}]", e, True) for i, e in enumerate(ev.include)]
        sections += [(f"eval.exclude[{i}]", e, True) for i, e in enumerate(ev.exclude)]
    for where, values, is_eval in sections:
        for key in values:
            _check_key(defaults, where, key, is_eval, err)


def _check_key(defaults: dict, where: str, key: str, is_eval: bool, err: Any) -> None:
    if key == "run_dir":
        raise err(f"{where}.run_dir", "the harness sets run_dir (one folder per signature)")
    if is_eval and not key.startswith(EVAL_PREFIXES):
        raise err(
            f"{where}.{key}",
            "eval points may only set sample.* and eval.* keys (train keys go in axes)",
        )
    if not is_eval and key.startswith(EVAL_PREFIXES):
        raise err(f"{where}.{key}", "sample.* and eval.* keys belong in eval.axes / eval.base")
    if key in CONFIG_GROUPS:
        return
    try:
        set_key(copy.deepcopy(defaults), key, None)
    except UserError as e:
        raise err(f"{where}.{key}", str(e)) from None


def _apply_cli(grid: Grid, overrides: Sequence[str]) -> None:
    """Command-line overrides: a plain key=value extends the grid's base, a hydra sweep
    (`a,b`, `range(...)`, `choice(...)`) is one more axis: an eval axis for sample.*/eval.*
    keys, else a train axis."""
    axis_keys = set(grid.train.axis_keys()) | set(grid.eval_axis_keys())
    if grid.seeds is not None:
        axis_keys.add("seed")
    err = functools.partial(_err, grid.path)
    sweeps = {text: parse_sweep(text) for text in overrides}
    parsed = [(text, *parse_override(text)) for text in overrides if sweeps[text] is None]
    for text, key, value in parsed:  # the profile first: cluster.* keys are checked against it
        if key == "cluster":
            if str(value) not in group_options("cluster"):
                raise UserError(
                    f"{text!r}: unknown cluster profile; allowed: "
                    + ", ".join(group_options("cluster"))
                )
            grid.cluster = str(value)
    defaults = resolve_overrides([f"cluster={grid.cluster}"])
    for text, key, value in parsed:
        if key in axis_keys:
            raise UserError(
                f"{text!r}: {key} is an axis of grid {grid.name} ({grid.path}); edit the grid "
                "file, or use `cfh cancel` filters to stop some points"
            )
        if key == "cluster":
            pass
        elif key.startswith("cluster."):
            _check_key(defaults, "command line", key, False, err)
            grid.resources[key.removeprefix("cluster.")] = value
        elif key.startswith(EVAL_PREFIXES):
            if grid.eval is None:
                raise UserError(f"{text!r}: grid {grid.name} has no eval points (eval: false)")
            _check_key(defaults, "command line", key, True, err)
            grid.eval.base[key] = value
        else:
            _check_key(defaults, "command line", key, False, err)
            grid.train.base[key] = value
        grid.cli_overrides.append(text)
    for text, sweep in sweeps.items():
        if sweep is not None:
            _add_cli_axis(grid, text, *sweep, axis_keys, defaults)


def _add_cli_axis(
    grid: Grid, text: str, key: str, values: list, axis_keys: set[str], defaults: dict
) -> None:
    """One command-line sweep as an extra axis, crossed with the grid's axes."""
    err = functools.partial(_err, grid.path)
    if key in axis_keys:
        raise UserError(
            f"{text!r}: {key} is already an axis of grid {grid.name} ({grid.path}); "
            "edit the grid file to change its values"
        )
    if key == "cluster" or key.startswith("cluster."):
        raise UserError(f"{text!r}: cluster keys set resources, not axes; give one value")
    is_eval = key.startswith(EVAL_PREFIXES)
    space = grid.eval if is_eval else grid.train
    if space is None:
        raise UserError(f"{text!r}: grid {grid.name} has no eval points (eval: false)")
    space.base.pop(key, None)  # the sweep replaces the grid's single value
    _check_key(defaults, "command line", key, is_eval, err)
    (grid.cli_eval_axes if is_eval else grid.cli_axes)[key] = list(values)
    axis_keys.add(key)
    grid.cli_overrides.append(text)
