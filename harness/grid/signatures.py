"""Run signatures: which run a resolved config trains, as 10 hex digits.

A run's signature is a short hash of its resolved config's delta from the default config,
restricted to keys that change results (dora's idea), plus the number of ranks when it is not
1: the same training in two grids is one run folder, `<root>/runs/<signature>/`, trained once.
Signatures name folders already on disk: the keys below and the hash's spelling
(core.hashing.json_hash, compact JSON) must not change.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from core.config.cluster import world_size
from core.hashing import json_hash
from core.keys import CONDITIONAL_KEYS, flatten
from core.names import SIGNATURE_LEN
from harness.config.compose import default_config
from harness.config.search import config_dirs

# Keys (and key prefixes) that decide how or where a run executes, not what it learns.
NON_RESULT_KEYS = (
    "run_dir",
    "sample",
    "eval",
    "cluster",
    "train.log_every",
    "train.loggers",  # where metrics go, not what they are
    "train.num_workers",
    "train.ckpt_every",
    "train.keep_checkpoints",
    "train.device",
    "train.dist_timeout_s",
    "train.compile",
    "train.grad_checkpointing",
    "train.max_nonfinite",
    "model.attention",  # sdpa and flex compute the same attention
    "data.on_device",  # the same batches, gathered on the training device
)
# A conditional key (core.keys.CONDITIONAL_KEYS) is ignored by the trainer where its condition
# does not hold, so it is left out of the signature (uniform S_train does not use train.ar.steps).


def _default_flat() -> dict[str, Any]:
    """The default config, flat, for the config dirs in effect (they may change in-process)."""
    return _default_flat_for(config_dirs())


@functools.cache
def _default_flat_for(dirs: tuple[Path, ...]) -> dict[str, Any]:
    return flatten(default_config())


@functools.cache
def _is_result_key(key: str) -> bool:
    return not any(key == k or key.startswith(f"{k}.") for k in NON_RESULT_KEYS)


def _canonical(value: Any, default: Any) -> Any:
    """Compare 1 and 1.0 as equal where the default is a float (the config's type)."""
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def config_delta(cfg: dict) -> dict[str, Any]:
    """{dotted key: value} where the resolved config differs from the default, result keys only."""
    flat = flatten(cfg)
    default = _default_flat()
    for key, (cond, values) in CONDITIONAL_KEYS.items():
        if key in flat and flat.get(cond) not in values:
            flat[key] = default.get(key)
    if not flat.get("bench.enabled"):  # bench.* settings only shape bench points
        for key in [k for k in flat if k.startswith("bench.") and k != "bench.enabled"]:
            flat[key] = default.get(key)
    aw = "train.loss.ar_weight."
    if flat.get(f"{aw}max") == flat.get(f"{aw}min"):  # the schedule only shapes a ramp
        flat[f"{aw}schedule"] = default.get(f"{aw}schedule")
    delta = {}
    for key in sorted(set(flat) | set(default)):
        if not _is_result_key(key):
            continue
        value = _canonical(flat.get(key), default.get(key))
        if value != _canonical(default.get(key), default.get(key)) or key not in default:
            delta[key] = value
    ranks = world_size(cfg.get("cluster") or {})
    if ranks != 1:  # each rank has its own random streams: another rank count, another run
        delta["world_size"] = ranks
    return delta


def signature(cfg: dict) -> str:
    """Short hash (10 hex of sha1) of the resolved config's result-relevant delta."""
    return json_hash(config_delta(cfg), SIGNATURE_LEN)
