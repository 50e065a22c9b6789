"""The one schema of cfh's config: every key's type, range or choices, then the cross-key rules.

`validate_config` is what `cfh train|sample|evaluate|edit|bench`, `cfh sweep` (and --dry-run)
and grid expansion all call before anything is written or submitted. Every key of
experiments/config.yaml and of its groups has an entry in SCHEMA (a test walks them all);
`cluster.*` is checked by the cluster profile's own table (config.profiles.validate_profile),
and the dataset-specific rules by model.data.checks.check_data_config. The lists of choices come
from core.choices. A bad value raises one UserError line: `key=value is not allowed; expected ...`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from core.choices import (
    ATTENTIONS,
    BENCH_CLOCKS,
    BENCH_MEASURES,
    CAPTION_DATASETS,
    DATASETS,
    DECODERS,
    DEVICES,
    EDIT_ORDERS,
    EDIT_TASKS,
    EVAL_TASKS,
    EXTRACTORS,
    JOINT_TASKS,
    LOGGERS,
    NOISE_WEIGHTINGS,
    NUM_DIFFUSION_STEPS,
    ORDERS,
    POS_EMBEDS,
    PRECISIONS,
    SAMPLERS,
    SIZE_NAMES,
    STEP_MODES,
    TOKENIZERS,
    TRAIN_SPLITS,
    WEIGHT_SCHEDULES,
)
from core.errors import DataMissing, UserError, data_check
from core.keys import flatten
from harness.config.profiles import validate_profile
from harness.config.search import group_options
from model.data.checks import check_data_config, train_size  # torch-free, as this module must stay


@dataclass(frozen=True)
class Spec:
    """What one key accepts: `test` on a non-null value; null only when `null`."""

    what: str
    test: Callable[[Any], bool]
    null: bool = False

    def accepts(self, value: Any) -> bool:
        return self.null if value is None else bool(self.test(value))

    def describe(self) -> str:
        return f"{self.what} or null" if self.null else self.what


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def integer(lo: int, hi: float = math.inf, null: bool = False) -> Spec:
    span = f"an integer >= {lo}" if hi == math.inf else f"an integer in {lo}..{int(hi)}"
    return Spec(span, lambda v: _int(v) and lo <= v <= hi, null)


def number(
    lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False, null=False
) -> Spec:
    left, right = "(" if lo_open else "[", ")" if hi_open or hi == math.inf else "]"
    above = (lambda v: v > lo) if lo_open else (lambda v: v >= lo)
    below = (lambda v: v < hi) if hi_open else (lambda v: v <= hi)
    what = f"a number in {left}{lo}, {hi}{right}"
    return Spec(what, lambda v: _num(v) and above(v) and below(v), null)


def boolean() -> Spec:
    return Spec("true or false", lambda v: isinstance(v, bool))


def choice(*options: str, null: bool = False) -> Spec:
    return Spec(f"one of {', '.join(options)}", lambda v: v in options, null)


def text(null: bool = False) -> Spec:
    return Spec("a non-empty string", lambda v: isinstance(v, str) and v.strip() != "", null)


def subset(options: tuple[str, ...], min_len: int = 1) -> Spec:
    some = "a non-empty list" if min_len else "a list"
    return Spec(
        f"{some} of {', '.join(options)}",
        lambda v: isinstance(v, list) and len(v) >= min_len and all(x in options for x in v),
    )


def int_list(lo: int) -> Spec:
    return Spec(
        f"a non-empty list of integers >= {lo}",
        lambda v: isinstance(v, list) and bool(v) and all(_int(x) and x >= lo for x in v),
    )


def pair(lo: float, hi: float, null: bool = False) -> Spec:
    return Spec(
        f"[low, high] with {lo} <= low <= high <= {hi}",
        lambda v: (
            isinstance(v, list)
            and len(v) == 2
            and all(_num(x) for x in v)
            and lo <= v[0] <= v[1] <= hi
        ),
        null,
    )


def _edit_input(v: Any) -> bool:
    items = v if isinstance(v, list) else [v]
    return bool(items) and all((_int(x) and x >= 0) or (isinstance(x, str) and x) for x in items)


SCHEMA: dict[str, Spec] = {
    "seed": integer(0),
    "run_dir": text(null=True),
    # model (experiments/model/*.yaml); model.name is checked against the size registry
    "model.name": text(),
    "model.num_cond_tokens": integer(1),
    "model.pos_embed": choice(*POS_EMBEDS),
    "model.attention": choice(*ATTENTIONS),
    # data (experiments/data/*.yaml); the dataset's own rules: model.data.check_data_config
    "data.name": choice(*DATASETS),
    "data.root": text(null=True),
    "data.resolution": integer(1),
    "data.channels": integer(1),
    "data.num_classes": integer(1),
    "data.patch_size": integer(1),
    "data.flip": boolean(),
    "data.train_split": choice(*TRAIN_SPLITS),  # image datasets
    "data.on_device": boolean(),
    "data.latent_scale": number(0, lo_open=True),
    "data.captions_per_image": integer(1),  # caption datasets (joint runs)
    "data.tokenizer": choice(*TOKENIZERS),
    "data.max_text_len": integer(3),
    # train
    "train.steps": integer(1),
    "train.batch_size": integer(1),
    "train.lr": number(0, 1, lo_open=True),
    "train.lr_ref_batch": integer(1, null=True),
    "train.warmup_steps": integer(0),
    "train.betas": Spec(
        "[beta1, beta2] with each in [0, 1)",
        lambda v: isinstance(v, list) and len(v) == 2 and all(_num(b) and 0 <= b < 1 for b in v),
    ),
    "train.weight_decay": number(0),
    "train.eps": number(0, 1, lo_open=True),
    "train.grad_clip": number(0),
    "train.ema_decay": number(0, 1),
    "train.ema_warmup": boolean(),
    "train.label_dropout": number(0, 1, hi_open=True),
    "train.ar.mode": choice(*STEP_MODES),
    "train.ar.steps": integer(1),
    "train.ar.decay": number(0, 1, lo_open=True),
    "train.order": choice(*ORDERS),
    "train.order_block": integer(1),
    "train.loss.ar_weight.max": number(0),
    "train.loss.ar_weight.min": number(0),
    "train.loss.ar_weight.schedule": choice(*WEIGHT_SCHEDULES),
    "train.loss.noise_weighting": choice(*NOISE_WEIGHTINGS),
    "train.loss.min_snr_gamma": number(0, lo_open=True),
    "train.precision": choice(*PRECISIONS),
    "train.compile": boolean(),
    "train.grad_checkpointing": boolean(),
    "train.ckpt_every": integer(1),
    "train.keep_checkpoints": integer(1),
    "train.log_every": integer(1),
    "train.loggers": subset(LOGGERS),  # jsonl must be one of them (_cross_checks)
    "train.num_workers": integer(0),
    "train.device": choice(*DEVICES),
    "train.dist_timeout_s": number(0, lo_open=True),
    "train.max_nonfinite": integer(0),
    "train.joint.caption_prob": number(0, 1),
    "train.joint.text_weight": number(0),
    "train.joint.text_dropout": number(0, 1, hi_open=True),
    # sample
    "sample.num": integer(1),
    "sample.ar_steps": integer(1),
    "sample.order": choice(*ORDERS),
    "sample.cfg": number(0),
    "sample.cfg_interval": pair(0, NUM_DIFFUSION_STEPS, null=True),  # [low, high): t < high
    "sample.steps": integer(1, NUM_DIFFUSION_STEPS),
    "sample.sampler": choice(*SAMPLERS),
    "sample.batch_size": integer(1),
    "sample.seed": integer(0),
    "sample.ema": boolean(),
    "sample.adm_npz": boolean(),
    "sample.prompt": text(null=True),
    "sample.prompts": text(null=True),
    "sample.ckpt": Spec(
        "latest or a step (an integer >= 0)", lambda v: v == "latest" or (_int(v) and v >= 0)
    ),
    # eval; eval.split is checked against the dataset's splits
    "eval.extractor": choice(*EXTRACTORS),
    "eval.split": text(),
    "eval.weights_path": text(null=True),
    "eval.kid_subset_size": integer(2),
    "eval.ref_num": integer(2, null=True),
    "eval.reference": text(null=True),
    "eval.bootstrap": Spec("0 (none) or an integer >= 2", lambda v: _int(v) and (v == 0 or v >= 2)),
    "eval.fid_inf": boolean(),
    "eval.fid_inf_sizes": Spec(
        "a list of at least two distinct integers >= 4",
        lambda v: isinstance(v, list) and all(_int(x) and x >= 4 for x in v) and len(set(v)) >= 2,
        null=True,
    ),
    "eval.task": choice(*EVAL_TASKS),
    # bench (harness.bench.command)
    "bench.enabled": boolean(),
    "bench.backends": subset(ATTENTIONS),
    "bench.reference": boolean(),
    "bench.measures": subset(BENCH_MEASURES),
    "bench.repeats": integer(1),
    "bench.splits": integer(1),
    "bench.threads": integer(0),
    "bench.clock": choice(*BENCH_CLOCKS),
    "bench.s_eval": int_list(1),
    "bench.sample_batch": integer(1),
    "bench.sample_steps": integer(1),
    "bench.extractors": subset(EXTRACTORS, min_len=0),
    "bench.extract_batch": integer(1),
    # edit (model.editing); regions and classes are checked against the run being edited
    "edit.task": choice(*EDIT_TASKS),
    "edit.region": text(null=True),
    "edit.class": integer(0, null=True),
    "edit.input": Spec("a split index (int >= 0), an image path, or a list of them", _edit_input),
    "edit.order": choice(*EDIT_ORDERS),
    "edit.samples": integer(1),
    "edit.out": Spec(
        "a .png path", lambda v: isinstance(v, str) and v.lower().endswith(".png"), null=True
    ),
    # caption (model.joint); inputs are checked against the run being captioned
    "caption.input": Spec(
        "a split index (int >= 0), an image path, or a list of them", _edit_input
    ),
    "caption.method": choice(*DECODERS),
    "caption.beams": integer(1),
    "caption.top_p": number(0, 1, lo_open=True),
    "caption.max_len": integer(3, null=True),
    "caption.seed": integer(0),
    "caption.out": text(null=True),
}
SCHEMA_SECTIONS = ("cluster",)  # checked as a whole by their own validators


def num_tokens(cfg: Any) -> int:
    """L: tokens per image for the configured data resolution and patch size."""
    return (int(cfg.data.resolution) // int(cfg.data.patch_size)) ** 2


class ConfigView(dict):
    """Read-only attribute access over a nested plain config dict (`cfg.data.resolution`)."""

    def __getattr__(self, name: str) -> Any:
        value = self[name]
        return ConfigView(value) if isinstance(value, dict) else value


def validate_config(cfg: DictConfig | dict) -> None:
    """Check every value a job will use; raise UserError naming key, value and what is allowed."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    assert isinstance(cfg, dict)
    for key, value in flatten(cfg, keep=SCHEMA_SECTIONS).items():
        if key in SCHEMA_SECTIONS:
            continue
        spec = SCHEMA.get(key)
        if spec is None:
            raise UserError(f"unknown config key {key!r} (no schema entry)")
        if not spec.accepts(value):
            raise UserError(f"{key}={value!r} is not allowed; expected {spec.describe()}")
    _cross_checks(ConfigView(cfg))


def _cross_checks(cfg: ConfigView) -> None:
    if cfg.model.name not in SIZE_NAMES:
        allowed = ", ".join(SIZE_NAMES)
        raise UserError(f"model={cfg.model.name!r} is not allowed; choose one of: {allowed}")
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
    with data_check(d.root):  # checks that need the data on disk: a dry run warns, plans on
        if d.root == "???":
            raise DataMissing(  # as model.data.checks.data_root says it: one note per cause
                f"data={d.name} needs data.root (a folder), e.g. data.root=/path/to/{d.name}"
            )
        if d.root is not None and not Path(str(d.root)).expanduser().exists():
            raise DataMissing(f"data.root={d.root!r}: no such file or folder")
        check_data_config(d, (str(cfg.eval.split),))
    L, grid = num_tokens(cfg), d.resolution // d.patch_size
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
    for key in ("weights_path", "reference"):
        value = cfg.eval[key]
        if value is not None and not Path(str(value)).expanduser().is_file():
            raise UserError(f"eval.{key}={value!r}: no such file")
    run_dir = cfg.run_dir
    if run_dir is not None and Path(str(run_dir)).exists() and not Path(str(run_dir)).is_dir():
        raise UserError(f"run_dir={run_dir} is a file; expected a folder (or a new path)")
    profiles = group_options("cluster")
    if cfg.cluster.get("name") not in profiles:
        raise UserError(
            f"cluster.name={cfg.cluster.get('name')!r} is not allowed; expected the name of a "
            f"profile in cluster/ of a config dir: {', '.join(profiles)}"
        )
    validate_profile(cfg.cluster)


def check_train_batch(cfg: Any, world: int = 1) -> None:
    """A training plan's global batch: it splits over the `world` ranks and is no larger than
    one epoch of the train split (model.data.checks.train_size). Called where a run is trained
    (cfh train, grid points), not by validate_config: sampling does not use train.batch_size."""
    batch = int(cfg["train"]["batch_size"])
    if batch % world:
        raise UserError(
            f"train.batch_size={batch} does not split over the {world} ranks (WORLD_SIZE); "
            f"use a multiple of {world}"
        )
    data = cfg["data"]
    n = None
    with data_check(data["root"]):  # a dry run before the data exists cannot count it
        n = train_size(data, batch + 1)  # counting to batch + 1 tells whether the batch fits
    if n is None or batch <= n:
        return
    per_rank = f" ({batch // world} per rank x {world} ranks)" if world > 1 else ""
    most = n - n % world
    allowed = f"1..{n}" if world == 1 else f"a multiple of {world} up to {most}"
    items = "image-caption pairs" if data["name"] in CAPTION_DATASETS else "images"
    split = data.get("train_split") or "train"
    where = "the train split" if split == "train" else f"data.train_split={split}"
    raise UserError(
        f"train.batch_size={batch}{per_rank} is larger than {where} of data={data['name']} "
        f"({n:,} {items}); allowed: {allowed}"
    )


def check_kid_subset(cfg: Any) -> None:
    """An evaluation's KID and FID_inf subsets are drawn from its samples: eval.kid_subset_size
    and (eval.fid_inf=true) every eval.fid_inf_sizes at most sample.num, and the default sizes
    (n/4..n, at least 4) two distinct ones (caption evaluations compute neither)."""
    ev, num = cfg["eval"], cfg["sample"]["num"]
    if ev["task"] == "caption":
        return
    kid = ev["kid_subset_size"]
    if kid > num:
        raise UserError(
            f"eval.kid_subset_size={kid} is above sample.num={num} (KID subsets are drawn from "
            f"the samples); allowed: 2..{num}, or raise sample.num"
        )
    if not ev["fid_inf"]:
        return
    sizes = None if ev["fid_inf_sizes"] is None else [int(s) for s in ev["fid_inf_sizes"]]
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


def _joint_checks(cfg: ConfigView) -> None:
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
        for key in ("prompt", "prompts"):
            if cfg.sample[key] is not None:
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


def _run_data(cfg: ConfigView) -> ConfigView:
    """The data a command works on: a trained run's (run_dir/config.yaml), else cfg.data."""
    if cfg.run_dir is not None:
        path = Path(str(cfg.run_dir)) / "config.yaml"
        if path.is_file():
            data = OmegaConf.to_container(OmegaConf.load(path).data, resolve=True)
            return ConfigView({**cfg.data, **data})  # type: ignore[dict-item]
    return cfg.data
