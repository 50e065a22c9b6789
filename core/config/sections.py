"""The run config: one dataclass per section of experiments/config.yaml, built once, read as
attributes (`cfg.train.ar.steps`), never by key strings.

Each field carries its key's Spec (core/config/spec.py); SCHEMA, the table of dotted keys that
error messages and the grid's key checks use, is read from these fields. The defaults equal
experiments/config.yaml's (a test compares them): they fill the keys that a run folder written
before a key existed lacks. `data` holds the union of every dataset's keys and remembers which
ones the config gave, and `cluster` is the profile's mapping as given (core/config/cluster.py
checks it), so `to_dict` gives back exactly the dict the config was built from: config.yaml and
run signatures stay what they were.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from core.choices import (
    ATTENTIONS,
    BENCH_CLOCKS,
    BENCH_MEASURES,
    DATASETS,
    DECODERS,
    DEVICES,
    EDIT_ORDERS,
    EDIT_TASKS,
    EVAL_TASKS,
    EXTRACTORS,
    LOGGERS,
    NOISE_WEIGHTINGS,
    NUM_DIFFUSION_STEPS,
    ORDERS,
    POS_EMBEDS,
    PRECISIONS,
    SAMPLERS,
    STEP_MODES,
    TOKENIZERS,
    TRAIN_SPLITS,
    WEIGHT_SCHEDULES,
)
from core.config.spec import (
    INT64_MAX,
    Spec,
    anything,
    boolean,
    choice,
    inputs,
    int_list,
    integer,
    is_int,
    is_num,
    number,
    pair,
    path_text,
    quote,
    subset,
    text,
)
from core.errors import UserError


def key(default: Any, spec: Spec, name: str | None = None) -> Any:
    """A config key: its default, its Spec and (where it is a Python keyword) its YAML name."""
    meta = {"spec": spec, "key": name}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


# The trainer seeds rank r's torch, numpy and Python generators with seed x MAX_RANKS + r, and
# numpy's legacy seed must be below 2^32: so at most MAX_RANKS ranks (core/config/cluster.py)
# and a seed of at most SEED_MAX.
MAX_RANKS = 1000
SEED_MAX = (2**32 - 1 - (MAX_RANKS - 1)) // MAX_RANKS
# torch.distributed holds its timeout in int64 nanoseconds: past this many seconds it wraps
# (a 9.3e9 s timeout times out at once).
DIST_TIMEOUT_MAX_S = (2**63 - 1) // 10**9
# Bytes left below run_dir for the files cfh writes inside a run folder (the longest, wandb's
# and TensorBoard's event files with a host name in them, stay under 200).
RUN_FOLDER_ROOM = 256


@dataclass
class ModelConfig:
    """model=<size> (experiments/model/*.yaml); the name is checked against the size registry."""

    name: str = key("T", text())
    num_cond_tokens: int = key(4, integer(1))
    pos_embed: str = key("sincos", choice(*POS_EMBEDS))
    attention: str = key("sdpa", choice(*ATTENTIONS))


@dataclass
class DataConfig:
    """data=<name> (experiments/data/*.yaml): every dataset's keys; the dataset's own rules are
    core/config/datasets.py's."""

    name: str = key("digits", choice(*DATASETS))
    root: str | None = key(None, path_text(null=True))  # "???": required, not given yet
    resolution: int | None = key(None, integer(1))
    channels: int | None = key(None, integer(1))
    num_classes: int | None = key(None, integer(1))
    patch_size: int = key(1, integer(1))
    flip: bool = key(False, boolean())
    train_split: str = key("train", choice(*TRAIN_SPLITS))  # image datasets
    on_device: bool = key(False, boolean())
    latent_scale: float | None = key(None, number(0, lo_open=True))
    captions_per_image: int = key(2, integer(1))  # caption datasets (joint runs)
    tokenizer: str = key("word", choice(*TOKENIZERS))
    max_text_len: int = key(16, integer(3))
    given: tuple[str, ...] = field(default=(), repr=False, compare=False)  # keys the config set

    def to_dict(self) -> dict[str, Any]:
        """The keys the config gave, as a plain dict."""
        return _to_dict(self)

    def replaced(self, **changes: Any) -> DataConfig:
        """A copy with `changes` (unchecked: for the loaders' own variants, e.g. flip off)."""
        out = copy.deepcopy(self)
        for name, value in changes.items():
            setattr(out, name, value)
        out.given = (*out.given, *(k for k in changes if k not in out.given))
        return out


@dataclass
class ARConfig:
    """train.ar: how many AR steps S_train a training sample is split into."""

    mode: str = key("decay", choice(*STEP_MODES))
    steps: int = key(1, integer(1))
    decay: float = key(0.9, number(0, 1, lo_open=True))


@dataclass
class ARWeightConfig:
    """train.loss.ar_weight: the loss weight along the AR axis."""

    max: float = key(1.0, number(0))
    min: float = key(1.0, number(0))
    schedule: str = key("linear", choice(*WEIGHT_SCHEDULES))


@dataclass
class LossConfig:
    """train.loss."""

    ar_weight: ARWeightConfig = field(default_factory=ARWeightConfig)
    noise_weighting: str = key("uniform", choice(*NOISE_WEIGHTINGS))
    min_snr_gamma: float = key(5.0, number(0, lo_open=True))


@dataclass
class JointConfig:
    """train.joint: joint image-text runs."""

    caption_prob: float = key(0.5, number(0, 1))
    text_weight: float = key(0.2, number(0))
    text_dropout: float = key(0.1, number(0, 1, hi_open=True))


BETAS = Spec(
    "[beta1, beta2] with each in [0, 1)",
    lambda v: isinstance(v, list) and len(v) == 2 and all(is_num(b) and 0 <= b < 1 for b in v),
)


@dataclass
class TrainConfig:
    """train."""

    steps: int = key(2000, integer(1))
    batch_size: int = key(64, integer(1))
    lr: float = key(1.0e-4, number(0, 1, lo_open=True))
    lr_ref_batch: int | None = key(None, integer(1, null=True))
    warmup_steps: int = key(0, integer(0))
    betas: list[float] = key([0.9, 0.95], BETAS)
    weight_decay: float = key(0.0, number(0))
    eps: float = key(1.0e-8, number(0, 1, lo_open=True))
    grad_clip: float = key(1.0, number(0))
    ema_decay: float = key(0.9999, number(0, 1))
    ema_warmup: bool = key(True, boolean())
    label_dropout: float = key(0.1, number(0, 1, hi_open=True))
    ar: ARConfig = field(default_factory=ARConfig)
    order: str = key("random", choice(*ORDERS))
    order_block: int = key(4, integer(1))
    loss: LossConfig = field(default_factory=LossConfig)
    precision: str = key("auto", choice(*PRECISIONS))
    compile: bool = key(False, boolean())
    grad_checkpointing: bool = key(False, boolean())
    ckpt_every: int = key(500, integer(1))
    keep_checkpoints: int = key(3, integer(1))
    log_every: int = key(10, integer(1))
    loggers: list[str] = key(["jsonl"], subset(LOGGERS))  # jsonl must be one (rules.py)
    num_workers: int = key(0, integer(0))
    device: str = key("auto", choice(*DEVICES))
    dist_timeout_s: float = key(600, number(0, DIST_TIMEOUT_MAX_S, lo_open=True))
    max_nonfinite: int = key(0, integer(0))
    joint: JointConfig = field(default_factory=JointConfig)


CKPT = Spec(
    "latest or a step (an integer >= 0)",
    lambda v: v == "latest" or (is_int(v) and 0 <= v <= INT64_MAX),
)


@dataclass
class SampleConfig:
    """sample."""

    num: int = key(1000, integer(1))
    ar_steps: int = key(1, integer(1))
    order: str = key("random", choice(*ORDERS))
    cfg: float = key(1.0, number(0))
    cfg_interval: list[float] | None = key(None, pair(0, NUM_DIFFUSION_STEPS, null=True))
    steps: int = key(100, integer(1, NUM_DIFFUSION_STEPS))
    sampler: str = key("ddpm", choice(*SAMPLERS))
    batch_size: int = key(250, integer(1))
    seed: int = key(0, integer(0))
    ema: bool = key(True, boolean())
    ckpt: str | int = key("latest", CKPT)
    adm_npz: bool = key(False, boolean())
    prompt: str | None = key(None, text(null=True))
    prompts: str | None = key(None, path_text(null=True))


BOOTSTRAP = Spec(
    "0 (none) or an integer >= 2", lambda v: is_int(v) and (v == 0 or 2 <= v <= INT64_MAX)
)
FID_INF_SIZES = Spec(
    "a list of at least two distinct integers >= 4",
    lambda v: (
        isinstance(v, list)
        and all(is_int(x) and 4 <= x <= INT64_MAX for x in v)
        and len(set(v)) >= 2
    ),
    null=True,
)


@dataclass
class EvalConfig:
    """eval.; eval.split is checked against the dataset's splits."""

    extractor: str = key("classifier", choice(*EXTRACTORS))
    split: str = key("test", text())
    weights_path: str | None = key(None, path_text(null=True))
    kid_subset_size: int = key(100, integer(2))
    ref_num: int | None = key(None, integer(2, null=True))
    reference: str | None = key(None, path_text(null=True))
    bootstrap: int = key(20, BOOTSTRAP)
    fid_inf: bool = key(False, boolean())
    fid_inf_sizes: list[int] | None = key(None, FID_INF_SIZES)
    task: str = key("generate", choice(*EVAL_TASKS))


@dataclass
class BenchConfig:
    """bench. (`cfh bench`, harness/bench/)."""

    enabled: bool = key(False, boolean())
    backends: list[str] = key(["sdpa"], subset(ATTENTIONS))
    reference: bool = key(True, boolean())
    measures: list[str] = key(["train", "sample", "extract"], subset(BENCH_MEASURES))
    repeats: int = key(3, integer(1))
    splits: int = key(4, integer(1))
    threads: int = key(0, integer(0))
    clock: str = key("wall", choice(*BENCH_CLOCKS))
    s_eval: list[int] = key([1, 4, 16], int_list(1))
    sample_batch: int = key(16, integer(1))
    sample_steps: int = key(10, integer(1))
    extractors: list[str] = key(["classifier", "inception"], subset(EXTRACTORS, min_len=0))
    extract_batch: int = key(16, integer(1))


PNG = Spec("a .png path", lambda v: isinstance(v, str) and v.lower().endswith(".png"), null=True)


@dataclass
class EditConfig:
    """edit. (`cfh edit`); regions and classes are checked against the run being edited."""

    task: str = key("inpaint", choice(*EDIT_TASKS))
    region: str | None = key(None, text(null=True))
    class_: int | None = key(None, integer(0, null=True), name="class")
    input: Any = key([0, 1, 2, 3], inputs())
    order: str = key("nearest", choice(*EDIT_ORDERS))
    samples: int = key(4, integer(1))
    out: str | None = key(None, PNG)


@dataclass
class CaptionConfig:
    """caption. (`cfh caption`, eval.task=caption); inputs are checked against the run."""

    input: Any = key([0, 1, 2, 3, 4, 5, 6, 7], inputs())
    method: str = key("greedy", choice(*DECODERS))
    beams: int = key(4, integer(1))
    top_p: float = key(0.9, number(0, 1, lo_open=True))
    max_len: int | None = key(None, integer(3, null=True))
    seed: int = key(0, integer(0))
    out: str | None = key(None, path_text(null=True))


@dataclass
class RunConfig:
    """One run's whole config: what `cfh train|sample|evaluate|...` and a grid point run."""

    seed: int = key(0, integer(0, SEED_MAX))
    run_dir: str | None = key(None, path_text(null=True, room=RUN_FOLDER_ROOM))
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    edit: EditConfig = field(default_factory=EditConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    cluster: dict[str, Any] = key({"name": "local", "backend": "local"}, anything())

    @property
    def num_tokens(self) -> int:
        """L: tokens per image for the data's resolution and patch size."""
        return (int(self.data.resolution) // int(self.data.patch_size)) ** 2

    def to_dict(self) -> dict[str, Any]:
        """The plain nested dict this config was built from (config.yaml, signatures)."""
        return _to_dict(self)


# ---------------------------------------------------------------- the schema, read from above


def _key_name(f: dataclasses.Field) -> str:
    return f.metadata.get("key") or f.name


def _leaves(cls: type, prefix: str = "") -> dict[str, Spec]:
    out: dict[str, Spec] = {}
    for f in dataclasses.fields(cls):
        if "spec" in f.metadata:
            out[prefix + _key_name(f)] = f.metadata["spec"]
        elif dataclasses.is_dataclass(f.default_factory):  # type: ignore[arg-type]
            out.update(_leaves(f.default_factory, f"{prefix}{f.name}."))  # type: ignore[arg-type]
    return out


SCHEMA: dict[str, Spec] = {k: v for k, v in _leaves(RunConfig).items() if k != "cluster"}
OPEN_SECTIONS = ("cluster",)  # checked as a whole by its own validator (core/config/cluster.py)


# ---------------------------------------------------------------- dict <-> config


def from_dict(d: Any) -> RunConfig:
    """The typed config of a resolved plain dict: every key checked against its Spec (unknown
    keys and refused values raise one UserError line). Missing keys take their defaults."""
    return _build(RunConfig, d, "")


def data_config(d: Any, check: bool = False) -> DataConfig:
    """A data section (a mapping or an OmegaConf node, e.g. a stored run's) as a DataConfig.
    Its values are checked where the whole config is (validate_config), or here with `check`;
    unchecked, a value the dataset's own rules refuse reaches them as it was given."""
    if isinstance(d, DataConfig):
        return d
    if hasattr(d, "_metadata"):  # an OmegaConf node: its plain containers, `???` kept as text
        from omegaconf import OmegaConf

        d = OmegaConf.to_container(d, resolve=True)
    if check:
        return _build(DataConfig, dict(d), "data.")
    names = {f.name for f in dataclasses.fields(DataConfig)} - {"given"}
    given = {k: v for k, v in dict(d).items() if k in names}
    out = DataConfig(**given, given=tuple(given))
    out._order = tuple(given)  # type: ignore[attr-defined]
    return out


def _build(cls: type, d: Any, prefix: str) -> Any:
    if not isinstance(d, dict):
        raise UserError(f"{prefix.rstrip('.') or 'the config'} must be a mapping, not {d!r}")
    fields = {_key_name(f): f for f in dataclasses.fields(cls) if f.name != "given"}
    kwargs: dict[str, Any] = {}
    for name, value in d.items():
        f = fields.get(name)
        if f is None:
            raise UserError(f"unknown config key {quote(prefix + str(name))} (no schema entry)")
        if "spec" not in f.metadata:  # a sub-section
            kwargs[f.name] = _build(f.default_factory, value, f"{prefix}{name}.")  # type: ignore
            continue
        spec: Spec = f.metadata["spec"]
        if not spec.accepts(value):
            raise UserError(spec.refusal(prefix + name, value))
        kwargs[f.name] = value
    if cls is DataConfig:
        kwargs["given"] = tuple(d)
    out = cls(**kwargs)
    # the given key order, which to_dict keeps: config.yaml reads as it was written
    out._order = tuple(d)  # type: ignore[attr-defined]
    return out


def _to_dict(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    given = getattr(obj, "given", None)
    rank = {name: i for i, name in enumerate(getattr(obj, "_order", ()))}
    fields = sorted(dataclasses.fields(obj), key=lambda f: rank.get(_key_name(f), len(rank)))
    for f in fields:
        if f.name == "given" or (given is not None and _key_name(f) not in given):
            continue
        value = getattr(obj, f.name)
        plain = dataclasses.is_dataclass(value)
        out[_key_name(f)] = _to_dict(value) if plain else copy.deepcopy(value)
    return out
