"""Short stable hashes of JSON-able values: run signatures, eval keys, settings file names."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(obj: Any, *, compact: bool = True) -> str:
    """Sorted-key JSON (non-JSON values as str); `compact` drops the spaces after , and :."""
    separators = (",", ":") if compact else (", ", ": ")
    return json.dumps(obj, sort_keys=True, separators=separators, default=str)


def json_hash(obj: Any, n: int = 10, *, compact: bool = True) -> str:
    """First n hex digits of the sha1 of obj's canonical JSON.

    Both spellings stay because names already on disk were made with them: run signatures and
    eval keys with `compact=True` (n=10), sample/record settings with `compact=False` (n=12).
    """
    return hashlib.sha1(canonical_json(obj, compact=compact).encode()).hexdigest()[:n]
