"""Errors the user can fix: cfh prints them without a traceback."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from contextvars import ContextVar

# OSErrors that say a place cannot be used (permissions, read-only, a file where a folder must
# be, a full disk): the user can fix them; any other OSError is a bug and keeps its traceback
_PLACE_ERRNOS = {
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.ENOSPC,
    errno.EDQUOT,
}


class UserError(ValueError):
    """Bad input from the user (config value, argument, missing file); the message says what."""


def place_error(e: OSError, what: str = "") -> UserError | None:
    """One line naming the path of an OSError from a place that cannot be used ("what: " first
    when given); None for other OSErrors."""
    if e.errno not in _PLACE_ERRNOS or not e.filename:
        return None
    hint = "; a file is where a folder must be" if e.errno in (errno.ENOTDIR, errno.EEXIST) else ""
    verb = "access" if e.errno in (errno.EACCES, errno.EPERM) else "write"  # a read, perhaps
    head = f"{what}: " if what else ""
    return UserError(
        f"{head}cannot {verb} {e.filename}: {e.strerror}{hint}; use a path cfh can write"
    )


class DataMissing(UserError):
    """The data a config names is not on disk yet (data.root unset or absent, latents not
    encoded): a dry run plans without it (defer_missing_data); anything else refuses."""


_DEFERRED: ContextVar[dict[str, str] | None] = ContextVar("cfh_deferred_data", default=None)


@contextlib.contextmanager
def defer_missing_data() -> Iterator[list[str]]:
    """Within: a DataMissing raised in a `data_check` block is noted, not raised; yields the
    notes (`cfh sweep --dry-run` prints them as warnings), filled when the block ends."""
    found: dict[str, str] = {}
    notes: list[str] = []
    token = _DEFERRED.set(found)
    try:
        yield notes
    finally:
        _DEFERRED.reset(token)
        notes += list(dict.fromkeys(found.values()))


@contextlib.contextmanager
def data_check(root: object = None) -> Iterator[None]:
    """A block of checks that read the data at `root` (data.root): its DataMissing is noted
    while deferring, the first per root (the rest of the block is skipped), else raised."""
    try:
        yield
    except DataMissing as e:
        found = _DEFERRED.get()
        if found is None:
            raise
        found.setdefault(str(root), str(e))
