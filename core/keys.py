"""Dotted config keys: the one `flatten` that every package uses."""

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
