"""Grid files -> train points x eval points, validated before anything is submitted.

A grid (`grids/<name>.yaml` of a config dir: a user's --config-dir first, then the shipped
harness/configs/; or any path) describes a set of training runs and the evaluations to run on
each of them. Keys are the dotted config keys of `harness/configs/config.yaml` (`train.ar.steps`,
`model`, `data.root`, ...); a nested mapping is read as dotted keys too.

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

Values are typed YAML (`1e-4` is a float). The symbol `L` (tokens per image of the point's data)
is accepted for train.ar.steps and sample.ar_steps, so S_train = L reads the same on every
dataset; `sample.order: train` samples each point in its own train.order (and block size).
Command-line overrides (`cfh sweep GRID key=value`) extend `base`; they may not set an axis key.
A hydra sweep on the command line (`train.lr=1e-4,3e-4`, `train.steps=range(100,301,100)`,
`choice(...)`, `model=glob(*)`; parsed by hydra's override parser) is one more axis instead: an
eval axis for sample.*/eval.* keys, else a train axis, crossed with the file's axes.
Checkpoint-step eval points (`sample.ckpt: [500, 1000]`) must be multiples of train.ckpt_every
(or train.steps); train.keep_checkpoints is raised to keep them.

Every point is validated (schema.validate_config plus cluster checks) while expanding; any
problem is a UserError naming the grid file, the key and what is allowed.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import math
import re
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from core.errors import UserError
from harness.config import (
    CONFIG_GROUPS,
    config_dirs,
    find_config,
    group_options,
    parse_override,
    parse_sweep,
    resolve_overrides,
    set_key,
)
from harness.profiles import validate_profile, world_size
from harness.schema import num_tokens, validate_config

NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
TOP_KEYS = ("description", "base", "axes", "zip", "include", "exclude", "seeds", "eval")
TOP_KEYS += ("resources",)
EVAL_KEYS = ("base", "axes", "zip", "include", "exclude")
EVAL_PREFIXES = ("sample.", "eval.")
TOKEN_KEYS = ("train.ar.steps", "sample.ar_steps")  # accept the symbol L
ORDER_SYMBOL = "train"  # sample.order: train = each point's train.order
CLUSTER_BACKENDS = ("local", "slurm")
# Sample keys that change how fast, not what, is sampled: left out of an eval point's key.
EVAL_KEY_EXCLUDE = ("sample.batch_size", "sample.adm_npz")


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


# ---------------------------------------------------------------- values and override text


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


def short_hash(obj: Any, n: int = 10) -> str:
    """First n hex digits of the sha1 of obj's canonical JSON."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:n]


# ---------------------------------------------------------------- points


@dataclass(frozen=True)
class EvalPoint:
    """One evaluation of a trained run: sample.*/eval.* overrides and what they resolve to."""

    overrides: tuple[str, ...]
    values: dict[str, Any]  # the eval axis values that tell this point apart
    key: str  # short hash of the resolved sample/eval settings (see EVAL_KEY_EXCLUDE)
    settings: dict = field(compare=False, repr=False, default_factory=dict)  # sample/eval

    def to_json(self) -> dict:
        """Plain dict for plan.json / point.json."""
        return {"key": self.key, "overrides": list(self.overrides), "values": self.values}


@dataclass
class TrainPoint:
    """One training run of a grid and the evaluations to run on it."""

    signature: str
    overrides: list[str]  # train + cluster overrides (what `cfh train` would be given)
    axes: dict[str, Any]  # the axis values this point sets (train axes, include keys, seed)
    config: dict  # resolved config; sample/eval sections hold the grid's eval base
    evals: list[EvalPoint]

    @property
    def shape(self) -> str:
        """The resource shape: points with equal shapes share one job array."""
        return json.dumps(self.config["cluster"], sort_keys=True)

    def to_json(self) -> dict:
        """Plain dict for plan.json."""
        return {
            "signature": self.signature,
            "axes": self.axes,
            "overrides": self.overrides,
            "evals": [e.to_json() for e in self.evals],
            "cluster": self.config["cluster"],
        }


# ---------------------------------------------------------------- spaces


@dataclass
class Space:
    """A product space: base values, cartesian axes, zipped groups, include/exclude lists."""

    base: dict[str, Any] = field(default_factory=dict)
    axes: dict[str, list] = field(default_factory=dict)
    zips: list[dict[str, list]] = field(default_factory=list)
    include: list[dict[str, Any]] = field(default_factory=list)
    exclude: list[dict[str, Any]] = field(default_factory=list)

    def axis_keys(self) -> list[str]:
        """Every key that varies between points, in file order."""
        keys = list(self.axes)
        for group in self.zips:
            keys += [k for k in group if k not in keys]
        for entry in self.include:
            keys += [k for k in entry if k not in keys]
        return keys

    def product(self) -> Iterator[dict[str, Any]]:
        """The cartesian product of the axes and zip groups, one dict of values per point.

        With no axes and no zip groups the product is the base point alone, unless include
        entries are given: then they are the points.
        """
        if not self.axes and not self.zips and self.include:
            return
        factors: list[list[dict[str, Any]]] = [[{k: v} for v in vs] for k, vs in self.axes.items()]
        for group in self.zips:
            keys = list(group)
            factors.append(
                [dict(zip(keys, vals, strict=True)) for vals in zip(*group.values(), strict=True)]
            )
        for combo in itertools.product(*factors):
            merged: dict[str, Any] = {}
            for part in combo:
                merged.update(part)
            yield merged


# ---------------------------------------------------------------- the grid


@dataclass
class Grid:
    """A parsed, checked grid file; `expand()` gives its validated train points."""

    name: str
    path: Path
    description: str
    train: Space
    eval: Space | None  # None: train only
    seeds: list[int] | None
    cluster: str
    resources: dict[str, Any]
    cli_overrides: list[str] = field(default_factory=list)
    # command-line sweeps: extra axes crossed with every train (eval) point, include entries too
    cli_axes: dict[str, list] = field(default_factory=dict)
    cli_eval_axes: dict[str, list] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # harmless surprises, printed by sweep

    def error(self, where: str, message: str) -> UserError:
        """A UserError that names the grid file and the key."""
        return UserError(f"grid {self.path}: {where}: {message}")

    def axis_keys(self) -> list[str]:
        """Train axis keys (seed last when seeds are given)."""
        keys = self.train.axis_keys() + list(self.cli_axes)
        return keys + ["seed"] if self.seeds is not None and "seed" not in keys else keys

    def eval_axis_keys(self) -> list[str]:
        """Eval axis keys."""
        return self.eval.axis_keys() + list(self.cli_eval_axes) if self.eval else []

    # ------------------------------------------------------------ expansion

    def train_values(self) -> Iterator[tuple[dict[str, Any], bool]]:
        """(axis values, from include) for every train point before seeds, exclusions applied."""
        for combo in _cross(list(self.train.product()), self.cli_axes):
            yield combo, False
        for entry in _cross([dict(e) for e in self.train.include], self.cli_axes):
            yield entry, True

    def expand(self) -> list[TrainPoint]:
        """Every train point with its resolved config, signature and eval points; validated."""
        from harness.runs import signature

        self.notes = []
        base: list[tuple[str, Any]] = [("cluster", self.cluster)]
        base += [(f"cluster.{k}", v) for k, v in self.resources.items()]
        base += [(k, v) for k, v in self.train.base.items() if not _is_token_symbol(k, v)]
        eval_spaces = self._eval_combos()
        points: dict[str, TrainPoint] = {}
        used_excludes: set[int] = set()
        for values, included in self.train_values():
            for seed in self.seeds if self.seeds is not None else [None]:
                axes = dict(values) if seed is None else {**values, "seed": seed}
                cfg, ovs = self._resolve(base, axes)
                if not included:
                    hit = self._excluded_by(cfg, used_excludes)
                    if hit:
                        continue
                evals = self._eval_points(cfg, axes, eval_spaces)
                ovs = self._keep_checkpoints(cfg, ovs, evals, axes)
                sig = signature(cfg)
                if sig in points:
                    self._merge_duplicate(points[sig], axes, evals)
                    continue
                points[sig] = TrainPoint(sig, ovs, axes, cfg, evals)
        for i, entry in enumerate(self.train.exclude):
            if i not in used_excludes:
                self.notes.append(f"exclude entry {i} ({entry}) matches no point")
        if not points:
            raise self.error("axes", "the grid has no points (everything excluded?)")
        return list(points.values())

    def _resolve(self, base: list[tuple[str, Any]], axes: dict[str, Any]) -> tuple[dict, list[str]]:
        """Resolve base + axis values into a validated config (the symbol L resolved)."""
        values = {**self.train.base, **axes}
        symbols = [k for k, v in values.items() if _is_token_symbol(k, v)]
        pairs = base + [(k, v) for k, v in axes.items() if k not in symbols]
        try:
            cfg = resolve_values(pairs)
        except UserError as e:
            raise self.error(f"point {_show(axes)}", str(e)) from None
        if symbols:
            L = num_tokens(_Dot(cfg))
            for key in symbols:
                set_key(cfg, key, L)
            pairs += [(key, L) for key in symbols]
        self._validate(cfg, axes)
        return cfg, _dedupe([override(k, v) for k, v in pairs])

    def _validate(self, cfg: dict, axes: dict[str, Any]) -> None:
        """validate_config plus the cluster checks, with the grid file and point in the message."""
        where = f"point {_show(axes)}" if axes else "base/resources"
        try:
            validate_config(cfg)
        except UserError as e:
            raise self.error(where, str(e)) from None
        check_cluster(cfg, lambda msg: self.error(where, msg))

    def _excluded_by(self, cfg: dict, used: set[int]) -> bool:
        """True when an exclude entry matches the point; records which entries matched."""
        for i, entry in enumerate(self.train.exclude):
            if all(_matches(cfg, k, v) for k, v in entry.items()):
                used.add(i)
                return True
        return False

    def _eval_combos(self) -> list[dict[str, Any]]:
        """The eval space's points as dicts of values (before per-run resolution)."""
        if self.eval is None:
            return []
        combos = _cross(list(self.eval.product()), self.cli_eval_axes)
        return combos + _cross([dict(e) for e in self.eval.include], self.cli_eval_axes)

    def _eval_points(
        self, cfg: dict, axes: dict[str, Any], combos: list[dict[str, Any]]
    ) -> list[EvalPoint]:
        """The eval points of one train point (the symbol L resolved for its data)."""
        if self.eval is None:
            return []
        L = num_tokens(_Dot(cfg))
        n_include = len(self.eval.include) * math.prod(map(len, self.cli_eval_axes.values()))
        n_product = len(combos) - n_include
        base_key = _eval_base_key(cfg)
        out: dict[str, EvalPoint] = {}
        for i, combo in enumerate(combos):
            merged = {**self.eval.base, **combo}
            merged = {k: (L if _is_token_symbol(k, v) else v) for k, v in merged.items()}
            if merged.get("sample.order") == ORDER_SYMBOL:  # the run's own training order
                merged["sample.order"] = cfg["train"]["order"]
            items = tuple((k, format_value(v)) for k, v in merged.items())
            settings, key = _checked_eval_settings(self, base_key, items, combo)
            if i < n_product and any(
                all(_matches(settings, k, v) for k, v in entry.items())
                for entry in self.eval.exclude
            ):
                continue
            point = EvalPoint(
                overrides=tuple(f"{k}={text}" for k, text in items),
                values={k: merged[k] for k in combo},
                key=key,
                settings=settings,
            )
            out.setdefault(point.key, point)
        if not out:
            raise self.error(f"point {_show(axes)}", "eval: every eval point is excluded")
        return list(out.values())

    def _keep_checkpoints(
        self, cfg: dict, ovs: list[str], evals: list[EvalPoint], axes: dict[str, Any]
    ) -> list[str]:
        """Check checkpoint-step eval points and raise train.keep_checkpoints to keep them."""
        steps = [e.settings["sample"]["ckpt"] for e in evals]
        steps = [s for s in steps if s != "latest"]
        if not steps:
            return ovs
        t = cfg["train"]
        total, every = int(t["steps"]), int(t["ckpt_every"])
        for s in steps:
            if s > total or (s % every and s != total):
                raise self.error(
                    f"point {_show(axes)}: eval sample.ckpt={s}",
                    f"no checkpoint is saved at step {s}; allowed: latest, {total}, or a "
                    f"multiple of train.ckpt_every={every} below train.steps={total}",
                )
        first = min(steps)
        needed = len(range(-(-first // every) * every, total, every)) + 1
        if needed > int(t["keep_checkpoints"]):
            t["keep_checkpoints"] = needed
            ovs = _dedupe(ovs + [override("train.keep_checkpoints", needed)])
        return ovs

    def _merge_duplicate(self, kept: TrainPoint, axes: dict[str, Any], evals: list) -> None:
        """Two points with one signature train the same run: keep one, merge eval points."""
        known = {e.key for e in kept.evals}
        kept.evals.extend(e for e in evals if e.key not in known)
        self.notes.append(
            f"point {_show(axes)} trains the same run as {_show(kept.axes)} "
            f"(signature {kept.signature}); kept once"
        )


class _Dot(dict):
    """Attribute access over a nested dict (num_tokens reads cfg.data.resolution)."""

    def __getattr__(self, name: str) -> Any:
        value = self[name]
        return _Dot(value) if isinstance(value, dict) else value


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
    cfg = resolve_overrides([])
    return {g: cfg[g]["name"] for g in CONFIG_GROUPS}


def _composed(names: tuple[str, ...]) -> dict:
    return _composed_for(config_dirs(), names)


@functools.lru_cache(maxsize=64)
def _composed_for(dirs: tuple[Path, ...], names: tuple[str, ...]) -> dict:
    return resolve_overrides([f"{g}={n}" for g, n in zip(CONFIG_GROUPS, names, strict=True)])


def _is_token_symbol(key: str, value: Any) -> bool:
    return key in TOKEN_KEYS and value == "L"


def _matches(cfg: dict, key: str, value: Any) -> bool:
    """The resolved config has `value` at `key` (True never equals 1 here)."""
    try:
        got = get_value(cfg, key)
    except (KeyError, TypeError):
        return False
    if isinstance(got, bool) or isinstance(value, bool):
        return got is value
    return got == value


def _dedupe(ovs: list[str]) -> list[str]:
    """Keep the last override of each key (a later one wins anyway), in order."""
    last = {o.split("=", 1)[0]: i for i, o in enumerate(ovs)}
    return [o for i, o in enumerate(ovs) if last[o.split("=", 1)[0]] == i]


def _show(values: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={format_value(v)}" for k, v in values.items()) + "}"


def _eval_base_key(cfg: dict) -> str:
    """What eval validation depends on besides the eval overrides: the data (its tokens and
    splits), the block size of block_raster orders, and the sample/eval base."""
    block = cfg["train"]["order_block"]
    return json.dumps([cfg["data"], block, cfg["sample"], cfg["eval"]], sort_keys=True)


@functools.lru_cache(maxsize=4096)
def _checked_eval_settings_cached(
    base_key: str, items: tuple[tuple[str, str], ...]
) -> tuple[dict | None, str | None]:
    data, block, sample, evaluation = json.loads(base_key)
    sub = {"sample": sample, "eval": evaluation}
    for key, text in items:
        _, value = parse_override(f"{key}={text}")
        set_key(sub, key, value)
    # validate_config needs a whole config: check the sample/eval part against a minimal one.
    probe = plain_copy(_default_config())
    probe["data"], probe["sample"], probe["eval"] = data, sub["sample"], sub["eval"]
    probe["train"]["order_block"] = block
    from model.data.checks import (
        check_eval_extractor,  # torch-free (model.evaluation.extractors imports torch)
    )

    try:
        validate_config(probe)
        check_eval_extractor(data, sub["eval"])
    except UserError as e:
        return None, str(e)
    return sub, eval_key(sub)


def _checked_eval_settings(
    grid: Grid, base_key: str, items: tuple, combo: dict
) -> tuple[dict, str]:
    """The validated sample/eval settings of an eval point and its key (cached: validated once)."""
    try:
        settings, result = _checked_eval_settings_cached(base_key, items)
    except UserError as e:
        settings, result = None, str(e)
    if settings is None:
        raise grid.error(f"eval point {_show(combo)}", str(result))
    assert result is not None
    return settings, result


def _default_config() -> dict:
    """The default config, to validate eval settings (with the point's data) on their own."""
    return _default_config_for(config_dirs())


@functools.cache
def _default_config_for(dirs: tuple[Path, ...]) -> dict:
    """_default_config for one set of config dirs (they may change within a process)."""
    return resolve_overrides([])


def eval_key(settings: dict) -> str:
    """Short hash of an eval point's resolved sample/eval settings (speed-only keys left out)."""
    kept = {s: dict(v) for s, v in settings.items()}
    for key in EVAL_KEY_EXCLUDE:
        section, leaf = key.split(".", 1)
        kept[section].pop(leaf, None)
    return short_hash(kept)


# ---------------------------------------------------------------- cluster checks


def _profile(name: str) -> dict:
    """The cluster profile file that wins for a name (user config dirs first)."""
    path = find_config(f"cluster/{name}.yaml")
    if path is None:
        raise UserError(f"unknown cluster profile {name!r}; allowed: {group_options('cluster')}")
    return _load_profile(path)


@functools.cache
def _load_profile(path: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(path))  # type: ignore[return-value]


def check_cluster(cfg: dict, error: Any) -> None:
    """Resource sanity: known backend, a valid profile, no GPUs on a CPU profile, and a global
    batch that splits evenly over the point's ranks."""
    cluster_json = json.dumps(cfg["cluster"], sort_keys=True)
    problem = _cluster_problem(cluster_json, cfg["train"]["device"], config_dirs())
    if problem:
        raise error(problem)
    ranks, batch = world_size(cfg["cluster"]), cfg["train"]["batch_size"]
    if batch % ranks:
        raise error(
            f"train.batch_size={batch} does not split over the point's {ranks} ranks "
            f"(cluster.nodes x tasks per node); use a multiple of {ranks}"
        )


@functools.lru_cache(maxsize=256)
def _cluster_problem(cluster_json: str, device: str, dirs: tuple[Path, ...]) -> str | None:
    """What is wrong with one resource shape, or None (cached: grids repeat shapes; `dirs`, the
    config search path, is in the key because the profile files come from it)."""
    c = json.loads(cluster_json)
    if c.get("backend") not in CLUSTER_BACKENDS:
        return f"cluster.backend={c.get('backend')!r}; allowed: {', '.join(CLUSTER_BACKENDS)}"
    gpus = c.get("gpus_per_node", 0)
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        return f"cluster.gpus_per_node={gpus!r} must be an integer >= 0"
    if not _profile(c["name"]).get("gpus_per_node", 0) and (gpus or device == "cuda"):
        cpu_only = f"cluster profile {c['name']!r} is a CPU profile (gpus_per_node: 0)"
        gpu_profiles = [p for p in group_options("cluster") if _profile(p).get("gpus_per_node")]
        hint = f"; GPU profiles: {', '.join(gpu_profiles)}" if gpu_profiles else ""
        if gpus:
            return f"cluster.gpus_per_node={gpus}: {cpu_only}{hint}"
        return f"train.device=cuda: {cpu_only}; use train.device=auto or cpu{hint}"
    try:
        validate_profile(c)
    except UserError as e:
        return str(e)
    return None


# ---------------------------------------------------------------- loading


def grid_path(name_or_path: str) -> Path:
    """The grid file for a name (grids/<name>.yaml, user config dirs first) or a .yaml path."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or "/" in text:
        path = Path(text)
        if not path.is_file():
            raise UserError(f"grid file {text!r} does not exist")
        return path
    if not NAME_RE.match(text):
        raise UserError(f"grid name {text!r} may only use letters, digits, _ and -")
    path = find_config(f"grids/{text}.yaml")
    if path is None:
        known = ", ".join(list_grids()) or "(none)"
        where = ", ".join(str(d / "grids") for d in config_dirs())
        raise UserError(f"unknown grid {text!r}; grids in {where}: {known}")
    return path


def list_grids() -> list[str]:
    """Names of the grids of every config dir (user dirs and the shipped ones)."""
    return group_options("grids")


def load_grid(name_or_path: str, overrides: Sequence[str] = ()) -> Grid:
    """Read and check a grid file; command-line `key=value` overrides extend its base."""
    path = grid_path(name_or_path)
    name = path.stem
    if not NAME_RE.match(name):
        raise UserError(f"grid file {path}: its name {name!r} may only use letters, digits, _, -")
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise UserError(f"grid file {path} does not parse: {e}") from None
    return parse_grid(raw if raw is not None else {}, path, overrides)


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
    return grid


def _cross(combos: list[dict[str, Any]], axes: dict[str, list]) -> list[dict[str, Any]]:
    """Every combo crossed with the cartesian product of `axes` (the combos alone without)."""
    extra = [dict(zip(axes, vals, strict=True)) for vals in itertools.product(*axes.values())]
    return [{**c, **e} for c in combos for e in extra]


def _err(path: Path, where: str, message: str) -> UserError:
    return UserError(f"grid {path}: {where}: {message}")


def _is_nat(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _flatten(mapping: dict, prefix: str, where: str, err: Any) -> dict[str, Any]:
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
