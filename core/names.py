"""Names that become folder names: grids (`<root>/grids/<name>/`) and run signatures.

One rule for every name a user gives or a file holds: letters, digits, `_`, `-` and `.`, not
starting with `.` (so never `.`, `..` or a hidden folder), at most 255 characters (a file
name's limit). It accepts every grid name cfh has written (grid file stems: letters, digits,
`_`, `-`) and every grid tag `cfh bench --grid` has written (those allowed `.`).
"""

from __future__ import annotations

import re

from core.errors import UserError

NAME_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,254}\Z")  # \Z: no trailing newline
SIGNATURE_LEN = 10
SIGNATURE_RE = re.compile(r"^[0-9a-f]{10}\Z")  # SIGNATURE_LEN lowercase hex digits


def is_name(text: object) -> bool:
    """Whether `text` is a safe folder name (see the module doc)."""
    return isinstance(text, str) and NAME_RE.match(text) is not None


def check_name(name: object, what: str = "grid name") -> str:
    """`name` when it is a safe folder name, else UserError saying what is allowed."""
    if not is_name(name):
        raise UserError(
            f"{what} {name!r} may only use letters, digits, _, - and . (not starting with .)"
        )
    return name  # type: ignore[return-value]


def check_signature(sig: object) -> str:
    """A signature read from disk or typed by the user: exactly 10 lowercase hex digits."""
    if not isinstance(sig, str) or not SIGNATURE_RE.match(sig):
        raise UserError(f"signature {sig!r} must be {SIGNATURE_LEN} lowercase hex digits")
    return sig
