"""Eval points validated on their own: the sample/eval settings against the point's data.

Many train points share their data and eval base, so each combination of (data, block size,
sample/eval base, eval overrides) is validated once per process and its key computed once.
"""

from __future__ import annotations

import functools
import json

from core.config import check_kid_subset, validate_config
from core.config.datasets import check_eval_extractor  # torch-free (model.evaluation is not)
from core.errors import UserError
from harness.config.compose import default_config, parse_override, set_key
from harness.config.search import group_options
from harness.config.values import plain_copy
from harness.grid.points import eval_key


def eval_base_key(cfg: dict) -> str:
    """What eval validation depends on besides the eval overrides: the data (its tokens and
    splits), the block size of block_raster orders, and the sample/eval base."""
    block = cfg["train"]["order_block"]
    return json.dumps([cfg["data"], block, cfg["sample"], cfg["eval"]], sort_keys=True)


# eval keys added after eval points were first keyed, and their defaults: left out of a point's
# key at that value, so the points of grids swept before keep theirs (keys name what is on disk)
LATER_EVAL_DEFAULTS = {"fid_inf": False, "fid_inf_sizes": None}


def point_key(sub: dict) -> str:
    """The eval key of resolved sample/eval settings (LATER_EVAL_DEFAULTS left out)."""
    later = LATER_EVAL_DEFAULTS
    kept = {k: v for k, v in sub["eval"].items() if k not in later or v != later[k]}
    return eval_key({**sub, "eval": kept})


@functools.lru_cache(maxsize=4096)
def checked_eval_settings(
    base_key: str, items: tuple[tuple[str, str], ...]
) -> tuple[dict | None, str | None]:
    """(settings, eval key) of an eval point, or (None, why it is refused); cached per process,
    so callers share the settings dict and must not change it."""
    data, block, sample, evaluation = json.loads(base_key)
    sub = {"sample": sample, "eval": evaluation}
    for key, text in items:
        _, value = parse_override(f"{key}={text}")
        set_key(sub, key, value)
    # validate_config needs a whole config: check the sample/eval part against a minimal one.
    probe = plain_copy(default_config())
    probe["data"], probe["sample"], probe["eval"] = data, sub["sample"], sub["eval"]
    probe["train"]["order_block"] = block
    try:
        cfg = validate_config(probe, group_options("cluster"))
        check_kid_subset(cfg)
        check_eval_extractor(cfg.data, cfg.eval)
    except UserError as e:
        return None, str(e)
    return sub, point_key(sub)
