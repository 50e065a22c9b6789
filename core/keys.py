"""Dotted config keys: the one `flatten` that every package uses, and the keys used only under
another key's value (CONDITIONAL_KEYS)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any


def flatten(d: Any, prefix: str = "", *, keep: Collection[str] = ()) -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are values, and so are the dotted keys in `keep`.

    A non-dict `d` is a single value under `prefix` (nothing when `prefix` is empty); an empty
    dict contributes no key.
    """
    if not isinstance(d, dict):
        return {prefix: d} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and key not in keep:
            out.update(flatten(v, key, keep=keep))
        else:
            out[key] = v
    return out


# key -> (key, values) under which the trainer uses it; elsewhere it is ignored (uniform S_train
# does not read train.ar.steps). Run signatures leave such a key out (harness.grid.signatures), and
# reports blank it (reports.rows), so that a run is never shown with a setting it did not use.
CONDITIONAL_KEYS: dict[str, tuple[str, tuple[str, ...]]] = {
    "train.ar.steps": ("train.ar.mode", ("fixed",)),
    "train.ar.decay": ("train.ar.mode", ("decay",)),
    "train.order_block": ("train.order", ("block_raster",)),
    "train.loss.min_snr_gamma": ("train.loss.noise_weighting", ("min_snr",)),
}


def unused_keys(flat: dict[str, Any]) -> list[str]:
    """The conditional keys of a flat config whose condition key is set to another value
    (a condition key absent or None says nothing: its keys are kept)."""
    return [
        key
        for key, (cond, values) in CONDITIONAL_KEYS.items()
        if flat.get(cond) is not None and flat[cond] not in values
    ]
