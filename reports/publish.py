"""`cfh report --publish` writes no machine paths (issue 29): what a repository holds must not
name the folders of the machine that wrote it.

Before writing, the published view of the results (publish_view) holds every path relative to
the results root: run_dir `runs/<signature>`, log `runs/<signature>/log.txt`, messages that
quote a path under the root likewise; a path under the repository (the current folder's git
top-level, or the current folder) relative to it; the home folder as `~`. A path outside all of
them keeps only its tail from its run folder (`runs/...`) or grid folder (`experiments/...`),
else its file name. After writing, check_published reads every text file written back and fails
with PublishLeak, removing the file, where the root, home, current or repository folder remains.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from reports.results import Results

# Columns whose values are paths (results rows from reports.rows); any other cell holding one
# absolute path is treated as one too.
PATH_COLUMNS = ("run_dir", "log", "eval_file", "samples")
# Folders a path outside every known place keeps its tail from (the last one it holds).
ANCHORS = ("runs", "bench", "experiments")
_BEFORE = r"(?<![\w.~/-])"  # a path starts here: not inside another name or path
_AFTER = r"(/|(?![\w-]|\.\w))"  # a path name ends here: a "/" follows, or no name character


class PublishLeak(RuntimeError):
    """Internal error: a file `cfh report --publish` wrote still names a machine folder."""


def repo_top() -> Path:
    """The repository a published report goes into: the current folder's git top-level, else
    the current folder."""
    cwd = Path.cwd()
    try:
        top = subprocess.run(
            ["git", "-C", str(cwd), "rev-parse", "--show-toplevel"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return cwd
    return Path(top) if top else cwd


def root_phrase(root: str | os.PathLike, publish: bool) -> str:
    """How report.md's "Generated ..." line names the results root: the absolute path locally;
    published, the root relative to the repository when it lies inside it, else no path."""
    if not publish:
        return f" from {Path(root).absolute()}"
    rel = _relative_to(Path(root), repo_top())
    if rel is None:
        return " from the results root given to cfh report"
    return " from the repository's top folder" if rel == "." else f" from {rel}"


def _forms(path: str | os.PathLike) -> list[str]:
    """A folder's absolute spellings: as written made absolute, and with links resolved (never
    the bare "/", which every path starts with)."""
    forms = {os.path.abspath(path), os.path.realpath(path)}
    return sorted((f for f in forms if f not in ("/", "")), key=len, reverse=True)


def _relative_to(path: Path, base: Path) -> str | None:
    """`path` relative to `base` ("." for base itself), in either's absolute spellings; None when
    it lies outside."""
    for p in _forms(path) or [os.path.abspath(path)]:
        for b in _forms(base):
            if p == b or p.startswith(b.rstrip("/") + "/"):
                return Path(os.path.relpath(p, b)).as_posix()
    return None


class Scrubber:
    """Turns the machine paths in text into portable ones (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, repo: Path | None = None):
        self.root = Path(root)
        self.repo = repo_top() if repo is None else repo
        home = Path.home()
        subs: dict[str, str] = {}
        for base, short in ((home, "~"), (Path.cwd(), ""), (self.repo, ""), (self.root, "")):
            for form in _forms(base):  # the root last: it wins where it is the repo or home
                subs[form] = short
        self.subs = subs
        self.pattern = _prefix_pattern(tuple(subs))
        self.forbidden = [
            *_forms(self.root),
            *_forms(home),
            *_forms(Path.cwd()),
            *_forms(self.repo),
        ]

    def text(self, value: str) -> str:
        """Every path in a message relative to the root, the repository or home."""

        def sub(m: re.Match) -> str:
            short = self.subs[m.group(1)]
            if m.group(2) == "/":
                return f"{short}/" if short else ""
            return short or "."

        return self.pattern.sub(sub, value) if self.pattern else value

    def path(self, value: str, relative_to_root: bool = True) -> str:
        """One path value: relative to the root (a relative one starting with the root as
        written, as reports.rows builds them), else scrubbed, else its tail (portable_tail);
        a relative path not under the root (an eval file's name) stays as it is."""
        if relative_to_root:
            p = Path(value)
            if not p.is_absolute():
                written = self.root.as_posix()
                if (
                    self.root.is_absolute()
                    or written == "."
                    or not (value == written or value.startswith(written + "/"))
                ):
                    return value
                p = Path.cwd() / p
            rel = _relative_to(p, self.root)
            if rel is not None:
                return rel
        out = self.text(value)
        return portable_tail(out) if out.startswith("/") else out

    def frame(self, df: pd.DataFrame) -> pd.DataFrame:
        """A results table with every path cell relative (PATH_COLUMNS and any cell holding one
        absolute path) and every message scrubbed."""
        out = df.copy()
        for col in out.columns:
            if not (out[col].dtype == object or pd.api.types.is_string_dtype(out[col])):
                continue
            cell = self._path_cell if col in PATH_COLUMNS else self._cell
            out[col] = out[col].map(cell).astype(out[col].dtype)  # the dtype as it was
        return out

    def _path_cell(self, v: Any) -> Any:
        return self.path(v) if isinstance(v, str) else v

    def _cell(self, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        return self.path(v) if _one_path(v) else self.text(v)

    def tree(self, value: Any, key: str = "") -> Any:
        """A plan (dicts, lists, strings) scrubbed; its grid "file" a path, relative to the
        repository."""
        if isinstance(value, dict):
            return {k: self.tree(v, str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.tree(v) for v in value]
        if not isinstance(value, str):
            return value
        if key == "file" or _one_path(value):
            return self.path(value, relative_to_root=False)
        return self.text(value)

    def leaks(self, text: str) -> list[tuple[int, str]]:
        """(line number, folder) of each machine folder (the root, home, the current folder,
        the repository) a text still names."""
        pattern = _prefix_pattern(tuple(self.forbidden))
        if pattern is None:
            return []
        found = []
        for n, line in enumerate(text.splitlines(), 1):
            found += [(n, m.group(1)) for m in pattern.finditer(line)]
        return found


@functools.cache
def _prefix_pattern(names: tuple[str, ...]) -> re.Pattern | None:
    """A regex finding any of the folders `names` where a path starts (group 1) and what ends
    its name (group 2: "/" or nothing); the longest first. None for no names."""
    names = tuple(sorted(set(names), key=len, reverse=True))
    if not names:
        return None
    return re.compile(_BEFORE + "(" + "|".join(map(re.escape, names)) + ")" + _AFTER)


def _one_path(v: str) -> bool:
    """Whether a cell is one absolute path (not a message quoting one)."""
    return len(v) > 1 and v.startswith("/") and not any(c.isspace() for c in v)


def portable_tail(path: str) -> str:
    """An absolute path outside every known folder: from its last run folder, else bench or
    grid folder (`runs/<signature>/log.txt`: a run whose root moved), else its file name."""
    parts = Path(path).parts
    for anchor in ANCHORS:
        at = [i for i, part in enumerate(parts[1:-1], 1) if part == anchor]
        if at:
            return Path(*parts[at[-1] :]).as_posix()
    return parts[-1] if len(parts) > 1 else "."


def publish_view(
    results: Results, notes: Iterable[str], scrub: Scrubber
) -> tuple[Results, list[str]]:
    """What a published report shows: the results with its table and plan scrubbed, and the
    notes (results.root, and the curves the plots read, stay as they are)."""
    shown = dataclasses.replace(
        results, table=scrub.frame(results.table), plan=scrub.tree(results.plan)
    )
    return shown, [scrub.text(n) for n in notes]


def check_published(files: Iterable[Path], scrub: Scrubber) -> None:
    """Raise PublishLeak naming the first written text file that still names a machine folder
    (and remove every such file: a repository must not get them)."""
    bad = []
    for path in files:
        found = scrub.leaks(Path(path).read_text(encoding="utf-8", errors="replace"))
        if found:
            bad.append((Path(path), found))
    if not bad:
        return
    for path, _ in bad:
        path.unlink(missing_ok=True)
    path, found = bad[0]
    line, folder = found[0]
    others = f" ({len(bad) - 1} more files too, all removed)" if len(bad) > 1 else " (removed)"
    raise PublishLeak(
        f"internal error: cfh report --publish wrote a machine path into {path}{others}: line "
        f"{line} names {folder}; nothing with machine paths may be published (a bug in cfh "
        "report: please report it)"
    )
