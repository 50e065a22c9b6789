"""Errors the user can fix: cfh prints them without a traceback."""

from __future__ import annotations

import contextlib
import errno
import os
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


# OSErrors that say the disk (or the user's quota on it) is full
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class UserError(ValueError):
    """Bad input from the user (config value, argument, missing file); the message says what."""


class DiskFull(OSError, UserError):
    """Writing `filename` failed for want of space (ENOSPC, EDQUOT): one line that names the path.

    Raised by core.io's writers in place of the bare OSError (whose `filename` is unset for a
    failed write or fsync), so no caller needs code of its own. An OSError still (a best-effort
    write that catches OSError keeps doing so) and a UserError (no traceback); `cfh` prints it
    as `error: disk full writing PATH (No space left on device); free space and run again` and
    exits 1. Notes added to it (`add_note`: what else could not be written) join that line.
    """

    def __init__(self, path: str | os.PathLike, code: int = errno.ENOSPC) -> None:
        super().__init__(code, os.strerror(code), os.fspath(path))

    def __str__(self) -> str:
        return f"disk full writing {self.filename} ({self.strerror}); free space and run again"

    def __reduce__(self) -> tuple:  # picklable (handed between processes) with its path
        return type(self), (self.filename, self.errno), self.__dict__


def disk_full(e: BaseException, path: str | os.PathLike | None = None) -> DiskFull | None:
    """e as a DiskFull naming `path` (else e's own filename) when e says the disk is full; None
    for any other error. A DiskFull already is one: returned as it is."""
    if isinstance(e, DiskFull):
        return e
    if not isinstance(e, OSError) or e.errno not in DISK_FULL_ERRNOS:
        return None
    where = path if path is not None else e.filename
    full = DiskFull("an unnamed file" if where is None else where, e.errno)
    for note in getattr(e, "__notes__", ()):
        full.add_note(note)
    return full


def one_line(e: BaseException) -> str:
    """str(e) and the notes added to it (BaseException.add_note), on one line."""
    notes = [str(n).strip() for n in getattr(e, "__notes__", ()) if str(n).strip()]
    return "; ".join([str(e), *notes])


def place_error(e: OSError, what: str = "") -> UserError | None:
    """One line naming the path of an OSError from a place that cannot be used ("what: " first
    when given); None for other OSErrors. A full disk: DiskFull."""
    if e.errno not in _PLACE_ERRNOS or not e.filename:
        return None
    full = disk_full(e)
    if full is not None:
        return full
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
