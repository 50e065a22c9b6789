"""What one config key accepts (Spec) and the few shapes keys come in: integers, numbers, choices.

The run config's dataclasses (core/config/sections.py) carry one Spec per key; the schema that
error messages quote is read from them. A refused value gets one line naming the key, the value
and what is allowed, with a "did you mean" when a choice is one typo away.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

INT64_MAX = 2**63 - 1  # what a torch or numpy int64 holds: the cap of every integer key
PATH_MAX, NAME_MAX = 4096, 255  # Linux: bytes in a path (with its NUL), in one path component
QUOTE_MAX = 80  # characters of a refused value or key quoted in an error line


def quote(value: Any) -> str:
    """repr(value), cut short with its length when it is long (an error line stays one line)."""
    text = repr(value)
    if len(text) <= QUOTE_MAX:
        return text
    if isinstance(value, str):
        size = f"{len(value):,} characters"
    elif isinstance(value, list | dict | tuple):
        size = f"{len(value):,} items"
    else:
        size = f"{len(text):,} characters as written"
    return f"{text[: QUOTE_MAX - 20]}... ({size})"


@dataclass(frozen=True)
class Spec:
    """What one key accepts: `test` on a non-null value; null only when `null`."""

    what: str
    test: Callable[[Any], bool]
    null: bool = False
    options: tuple[str, ...] = ()  # a choice's values: the "did you mean" candidates
    bounds: tuple[float, float] | None = None  # integer() and number(): the range
    open_ends: tuple[bool, bool] = (False, False)  # number(): whether lo, hi are left out

    def accepts(self, value: Any) -> bool:
        return self.null if value is None else bool(self.test(value))

    def describe(self) -> str:
        return f"{self.what} or null" if self.null else self.what

    def refusal(self, key: str, value: Any) -> str:
        """The one line that refuses `key=value`."""
        hint = did_you_mean(value, self.options) if isinstance(value, str) and value else ""
        return f"{quote_key(key)}={quote(value)} is not allowed; expected {self.describe()}{hint}"


def did_you_mean(name: str, options: Sequence[str]) -> str:
    """ " (did you mean 'raster'?)" when `name` is close to one of `options`, else ""."""
    close = difflib.get_close_matches(name, [str(o) for o in options], n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def quote_key(key: str) -> str:
    """A dotted key as typed, cut short with its length when it is long."""
    return key if len(key) <= QUOTE_MAX else quote(key)


def integer(lo: int, hi: int = INT64_MAX, null: bool = False) -> Spec:
    """An integer in lo..hi; every integer key is capped at INT64_MAX at most, since torch and
    numpy hold it as an int64."""
    span = f"an integer >= {lo} (up to 2^63-1)" if hi == INT64_MAX else f"an integer in {lo}..{hi}"
    return Spec(span, lambda v: is_int(v) and lo <= v <= hi, null, bounds=(lo, hi))


def number(
    lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False, null=False
) -> Spec:
    left, right = "(" if lo_open else "[", ")" if hi_open or hi == math.inf else "]"
    above = (lambda v: v > lo) if lo_open else (lambda v: v >= lo)
    below = (lambda v: v < hi) if hi_open else (lambda v: v <= hi)
    what = f"a number in {left}{lo}, {hi}{right}"  # finite: inf and nan are refused (is_num)
    ends = (lo_open, hi_open or hi == math.inf)
    test = lambda v: is_num(v) and above(v) and below(v)  # noqa: E731
    return Spec(what, test, null, bounds=(lo, hi), open_ends=ends)


def boolean() -> Spec:
    return Spec("true or false", lambda v: isinstance(v, bool))


def choice(*options: str, null: bool = False) -> Spec:
    return Spec(f"one of {', '.join(options)}", lambda v: v in options, null, tuple(options))


def text(null: bool = False) -> Spec:
    return Spec("a non-empty string", lambda v: isinstance(v, str) and v.strip() != "", null)


def path_text(null: bool = False, room: int = 0) -> Spec:
    """A file or folder path the filesystem can hold: at most PATH_MAX - 1 - `room` bytes (room:
    what cfh appends below it, e.g. a run folder's own files) and NAME_MAX bytes a component."""

    def ok(v: Any) -> bool:
        if not isinstance(v, str) or v.strip() == "" or "\0" in v:
            return False
        raw = v.encode("utf-8", "surrogateescape")
        return len(raw) <= PATH_MAX - 1 - room and all(len(p) <= NAME_MAX for p in raw.split(b"/"))

    limit = PATH_MAX - 1 - room
    return Spec(f"a path of at most {limit} bytes, {NAME_MAX} a component", ok, null)


def subset(options: tuple[str, ...], min_len: int = 1) -> Spec:
    some = "a non-empty list" if min_len else "a list"
    return Spec(
        f"{some} of {', '.join(options)}",
        lambda v: isinstance(v, list) and len(v) >= min_len and all(x in options for x in v),
        options=options,
    )


def int_list(lo: int, hi: int = INT64_MAX) -> Spec:
    return Spec(
        f"a non-empty list of integers >= {lo}",
        lambda v: isinstance(v, list) and bool(v) and all(is_int(x) and lo <= x <= hi for x in v),
    )


def pair(lo: float, hi: float, null: bool = False) -> Spec:
    return Spec(
        f"[low, high] with {lo} <= low <= high <= {hi}",
        lambda v: (
            isinstance(v, list)
            and len(v) == 2
            and all(is_num(x) for x in v)
            and lo <= v[0] <= v[1] <= hi
        ),
        null,
    )


def inputs() -> Spec:
    """edit.input / caption.input: split indices and image paths, one or a list."""

    def ok(v: Any) -> bool:
        items = v if isinstance(v, list) else [v]
        ok_item = [
            (is_int(x) and 0 <= x <= INT64_MAX) or (isinstance(x, str) and bool(x)) for x in items
        ]
        return bool(items) and all(ok_item)

    return Spec("a split index (int >= 0), an image path, or a list of them", ok)


def anything() -> Spec:
    """An open section's value (cluster.*): its own validator checks it."""
    return Spec("a value", lambda v: True, null=True)
