"""A parsed grid and its expansion: train points x eval points, each validated.

harness.grid.files reads a grid file into a `Grid` (its spaces of values, seeds, resources and
command-line axes); `Grid.expand()` resolves every point's config, validates it (the schema and
the cluster checks), computes its signature and its eval points, and merges points that train
the same run.

A grid is counted before it is expanded: more than MAX_TRAIN_POINTS train points, or more than
MAX_EVAL_POINTS eval points in all (train points x eval points each), is refused with the count
(before exclusions; a grid that large is a typo or a job for several grids). A grid that varies
nothing (no axis, zip, include, seeds, eval axis or command-line sweep) is refused too.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import check_train_batch, num_tokens, validate_config
from core.config.cluster import world_size
from core.errors import UserError
from harness.config.compose import set_key
from harness.config.profiles import check_cluster
from harness.config.search import group_options
from harness.config.values import dedupe, format_value, get_value, override, resolve_values, show
from harness.grid.eval_checks import checked_eval_settings, eval_base_key
from harness.grid.points import EvalPoint, TrainPoint
from harness.grid.signatures import signature

TOKEN_KEYS = ("train.ar.steps", "sample.ar_steps")  # accept the symbol L
ORDER_SYMBOL = "train"  # sample.order: train = each point's train.order
MAX_TRAIN_POINTS = 10_000  # expanding 10^4 points takes about 20 s; 10^7 would never end
MAX_EVAL_POINTS = 100_000  # train points x eval points


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

    def count(self) -> int:
        """How many points product() and the include entries give, without building them."""
        if not self.axes and not self.zips and self.include:
            return len(self.include)
        sizes = [len(v) for v in self.axes.values()]
        sizes += [len(next(iter(g.values()), [])) for g in self.zips]  # equal lengths per group
        return math.prod(sizes) + len(self.include)

    def varies(self) -> bool:
        """Whether the space has more than its base: an axis, a zip group or an include entry."""
        return bool(self.axes or self.zips or self.include)

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
    findings: list[dict] = field(default_factory=list)  # the claims it tests (grid.findings)
    decide_on: str = "fid"  # the metric the findings are judged on (fid | fid_inf | kid)

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

    def size(self) -> tuple[int, int]:
        """(train points, eval points per train point), counted before exclusions and merges."""
        cli = math.prod(len(v) for v in self.cli_axes.values())
        seeds = len(self.seeds) if self.seeds is not None else 1
        train = self.train.count() * cli * seeds
        if self.eval is None:
            return train, 0
        return train, self.eval.count() * math.prod(len(v) for v in self.cli_eval_axes.values())

    def check_size(self) -> None:
        """Refuse a grid above MAX_TRAIN_POINTS / MAX_EVAL_POINTS, by counting, not expanding."""
        train, per_run = self.size()
        if train > MAX_TRAIN_POINTS:
            raise self.error(
                "axes",
                f"the grid has {train:,} train points ({self._factors()}, before exclusions); "
                f"the limit is {MAX_TRAIN_POINTS:,}: split it into smaller grids",
            )
        if train * per_run > MAX_EVAL_POINTS:
            raise self.error(
                "eval",
                f"the grid has {train * per_run:,} eval points ({train:,} train points x "
                f"{per_run:,} eval points each, before exclusions); the limit is "
                f"{MAX_EVAL_POINTS:,}: split it into smaller grids",
            )

    def _factors(self) -> str:
        """The train point count as a sum and product: 'train.lr 10 x train.steps 10 x seeds 3'."""
        sp = self.train
        product = [f"{k} {len(v)}" for k, v in sp.axes.items()]
        product += [f"zip[{i}] {len(next(iter(g.values()), []))}" for i, g in enumerate(sp.zips)]
        text = " x ".join(product)
        outer = [f"{k} {len(v)}" for k, v in self.cli_axes.items()]
        outer += [f"seeds {len(self.seeds)}"] if self.seeds is not None else []
        if sp.include:
            entries = f"{len(sp.include)} include entries"
            text = f"{text} + {entries}" if text else entries
            text = f"({text})" if outer and product else text
        return " x ".join(t for t in [text, *outer] if t) or "the base point"

    def check_varies(self) -> None:
        """Refuse a grid that varies nothing: it would plan one run at its base values."""
        if self.train.varies() or self.cli_axes or self.seeds is not None:
            return
        if self.eval is not None and (self.eval.varies() or self.cli_eval_axes):
            return
        raise self.error(
            "axes",
            "the grid has no axis, zip, include, seeds or eval axis, so it lists no runs; "
            "add one (a single run: `seeds: [0]`)",
        )

    def expand(self) -> list[TrainPoint]:
        """Every train point with its resolved config, signature and eval points; validated."""
        self.check_size()
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
        self.check_varies()  # after the values: a bad value is the first thing to fix
        return list(points.values())

    def _resolve(self, base: list[tuple[str, Any]], axes: dict[str, Any]) -> tuple[dict, list[str]]:
        """Resolve base + axis values into a validated config (the symbol L resolved)."""
        values = {**self.train.base, **axes}
        symbols = [k for k, v in values.items() if _is_token_symbol(k, v)]
        pairs = base + [(k, v) for k, v in axes.items() if k not in symbols]
        try:
            cfg = resolve_values(pairs)
        except UserError as e:
            raise self.error(f"point {show(axes)}", str(e)) from None
        if symbols:
            L = num_tokens(cfg)
            for key in symbols:
                set_key(cfg, key, L)
            pairs += [(key, L) for key in symbols]
        self._validate(cfg, axes)
        return cfg, dedupe([override(k, v) for k, v in pairs])

    def _validate(self, cfg: dict, axes: dict[str, Any]) -> None:
        """validate_config plus the cluster checks, with the grid file and point in the message."""
        where = f"point {show(axes)}" if axes else "base/resources"
        try:
            run = validate_config(cfg, group_options("cluster"))
        except UserError as e:
            raise self.error(where, str(e)) from None
        check_cluster(run, lambda msg: self.error(where, msg))
        try:
            check_train_batch(run, world_size(run.cluster))
        except UserError as e:
            raise self.error(where, str(e)) from None

    def _excluded_by(self, cfg: dict, used: set[int]) -> bool:
        """True when an exclude entry matches the point; records which entries matched."""
        for i, entry in enumerate(self.train.exclude):
            if all(config_matches(cfg, k, v) for k, v in entry.items()):
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
        L = num_tokens(cfg)
        n_include = len(self.eval.include) * math.prod(map(len, self.cli_eval_axes.values()))
        n_product = len(combos) - n_include
        base_key = eval_base_key(cfg)
        out: dict[str, EvalPoint] = {}
        for i, combo in enumerate(combos):
            merged = {**self.eval.base, **combo}
            merged = {k: (L if _is_token_symbol(k, v) else v) for k, v in merged.items()}
            if merged.get("sample.order") == ORDER_SYMBOL:  # the run's own training order
                merged["sample.order"] = cfg["train"]["order"]
            items = tuple((k, format_value(v)) for k, v in merged.items())
            settings, key = _checked_eval_settings(self, base_key, items, combo)
            if i < n_product and any(
                all(config_matches(settings, k, v) for k, v in entry.items())
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
            raise self.error(f"point {show(axes)}", "eval: every eval point is excluded")
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
                    f"point {show(axes)}: eval sample.ckpt={s}",
                    f"no checkpoint is saved at step {s}; allowed: latest, {total}, or a "
                    f"multiple of train.ckpt_every={every} below train.steps={total}",
                )
        first = min(steps)
        needed = len(range(-(-first // every) * every, total, every)) + 1
        if needed > int(t["keep_checkpoints"]):
            t["keep_checkpoints"] = needed
            ovs = dedupe(ovs + [override("train.keep_checkpoints", needed)])
        return ovs

    def _merge_duplicate(self, kept: TrainPoint, axes: dict[str, Any], evals: list) -> None:
        """Two points with one signature train the same run: keep one, merge eval points."""
        known = {e.key for e in kept.evals}
        kept.evals.extend(e for e in evals if e.key not in known)
        self.notes.append(
            f"point {show(axes)} trains the same run as {show(kept.axes)} "
            f"(signature {kept.signature}); kept once"
        )


def _is_token_symbol(key: str, value: Any) -> bool:
    return key in TOKEN_KEYS and value == "L"


def config_matches(cfg: dict, key: str, value: Any) -> bool:
    """The resolved config has `value` at `key` (True never equals 1 here)."""
    try:
        got = get_value(cfg, key)
    except (KeyError, TypeError):
        return False
    if isinstance(got, bool) or isinstance(value, bool):
        return got is value
    return got == value


def _checked_eval_settings(
    grid: Grid, base_key: str, items: tuple, combo: dict
) -> tuple[dict, str]:
    """The validated sample/eval settings of an eval point and its key (cached: validated once)."""
    try:
        settings, result = checked_eval_settings(base_key, items)
    except UserError as e:
        settings, result = None, str(e)
    if settings is None:
        raise grid.error(f"eval point {show(combo)}", str(result))
    assert result is not None
    return settings, result


def _cross(combos: list[dict[str, Any]], axes: dict[str, list]) -> list[dict[str, Any]]:
    """Every combo crossed with the cartesian product of `axes` (the combos alone without)."""
    extra = [dict(zip(axes, vals, strict=True)) for vals in itertools.product(*axes.values())]
    return [{**c, **e} for c in combos for e in extra]
