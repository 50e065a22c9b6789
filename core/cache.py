"""The cfh cache folder: what is costly to derive and the same for every run on a machine
(extractor weights, classifiers, reference features, the digits arrays)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cfh cache folder: `cache_dir`, else $CFH_CACHE, else ~/.cache/cfh."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("CFH_CACHE") or Path.home() / ".cache" / "cfh").expanduser()
