"""Bounds on the YAML that cfh reads: grids, config dirs, a run's config.yaml, cluster profiles.

A YAML file's size is not its length: anchors and aliases (`&a [*b, *b, ...]`, the "billion
laughs") expand a few hundred bytes into billions of nodes, and deep nesting (`[[[[...]]]]`)
runs a recursive loader out of stack. The loaders cfh uses (PyYAML, OmegaConf, hydra) read
both without a bound, so each reader calls `check_yaml_file` first. The check streams the
file's parse events (libyaml's parser where it is installed; no Python objects are built) and
stops at the first limit passed: the file's bytes, its nodes with aliases expanded, its nesting
depth (aliases included) and its alias count. Past one, a UserError of one line names the file,
the limit and its value. A file that does not parse is left to its reader, whose message says
where (the events up to the error are still bounded, and the reader fails at that same error
before it builds anything).

Torch-free; imports only yaml, the standard library and core.errors.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceStartEvent,
)

from core.errors import UserError

# The limits are far above anything cfh writes or ships and far below what hangs a reader:
# experiments/config.yaml (every key, comments included) is ~8 KiB, ~240 nodes, 4 levels deep,
# and no shipped config or grid uses an alias. A file just within them is slow but bounded:
# for 99,000 nodes ~5 s in PyYAML's pure-Python loader (grids) and ~10 s in OmegaConf (measured
# on a busy 2-core machine).
MAX_BYTES = 1 << 20  # 1 MiB: a 10 MB file is refused from its size, without reading it
MAX_NODES = 100_000  # scalars, sequences and mappings, each alias counted as what it expands to
MAX_DEPTH = 64  # nested sequences/mappings; PyYAML's composer recurses ~3 frames per level
MAX_ALIASES = 1_000  # `*name` uses; configs use a handful at most

_COLLECTION_START = (MappingStartEvent, SequenceStartEvent)
_checked: dict[tuple[str, int, int], None] = {}  # files that passed: (path, mtime_ns, size)


def check_yaml_file(path: str | os.PathLike, what: str = "", hint: str = "") -> None:
    """Refuse (UserError, one line) a YAML file past the bounds above. `what` is put before the
    path in the message (`grid file`), `hint` after it (what to do). An OSError (a missing
    file, a folder) is raised as it is, for the caller's own message."""
    problem = yaml_file_problem(path)
    if problem:
        where = f"{what} {path}" if what else str(path)
        raise UserError(f"{where}: {problem}; refused{hint}")


def check_yaml_text(text: str | bytes, where: str, hint: str = "") -> None:
    """Refuse (UserError, one line naming `where`) YAML text past the bounds above."""
    problem = yaml_text_problem(text)
    if problem:
        raise UserError(f"{where}: {problem}; refused{hint}")


def yaml_file_problem(path: str | os.PathLike) -> str:
    """Which bound the YAML file at `path` passes, in a few words ('' when none); an OSError is
    raised as it is. A file that passed is not read again while its path, mtime and size stay
    the same (a config dir's files are checked once per process)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key in _checked:
        return ""
    if st.st_size > MAX_BYTES:  # refused from its size alone: a 10 MB file is not read
        return f"the file is {st.st_size} bytes, over the {MAX_BYTES}-byte limit for YAML"
    with path.open("rb") as f:
        data = f.read(MAX_BYTES + 1)
    problem = yaml_text_problem(data)  # it grew since the stat, or is not a regular file
    if not problem:
        _checked[key] = None
    return problem


def yaml_text_problem(text: str | bytes) -> str:
    """Which bound YAML text passes, in a few words ('' when none)."""
    if len(text) > MAX_BYTES:
        return f"the file is over the {MAX_BYTES}-byte limit for YAML"
    loaders = [yaml.SafeLoader]
    if getattr(yaml, "CSafeLoader", None) is not None:
        loaders.insert(0, yaml.CSafeLoader)  # libyaml: ~20x faster
    for loader in loaders:
        try:
            return _walk(yaml.parse(text, Loader=loader))  # noqa: S506 - events only
        except yaml.YAMLError as e:
            if "maximum nesting depth" in str(getattr(e, "problem", "")):  # libyaml's (1000)
                return f"YAML nests deeper than {MAX_DEPTH} levels"
            # else the other parser; past both, the caller's loader says where it fails
        except RecursionError:  # not expected (the parsers do not recurse); refuse, not crash
            return f"YAML nests deeper than {MAX_DEPTH} levels"
    return ""


def _walk(events) -> str:  # noqa: C901 - one pass over the event kinds
    """What bound the event stream passes ('' when none), stopping at the first one."""
    nodes = aliases = 0
    anchored: dict[str, tuple[int, int]] = {}  # anchor -> (expanded nodes, levels it spans)
    open_anchors: set[str] = set()
    # per open collection: [anchor, nodes before it, its level, the deepest level within it]
    stack: list[list] = []
    for ev in events:
        if isinstance(ev, _COLLECTION_START):
            nodes += 1
            level = len(stack) + 1
            if level > MAX_DEPTH:
                return f"YAML nests deeper than {MAX_DEPTH} levels"
            stack.append([ev.anchor, nodes - 1, level, level])
            if ev.anchor is not None:
                open_anchors.add(ev.anchor)
        elif isinstance(ev, CollectionEndEvent):
            anchor, before, level, deepest = stack.pop()
            if anchor is not None:
                anchored[anchor] = (nodes - before, deepest - level + 1)
                open_anchors.discard(anchor)
            if stack:
                stack[-1][3] = max(stack[-1][3], deepest)
        elif isinstance(ev, ScalarEvent):
            nodes += 1
            if ev.anchor is not None:
                anchored[ev.anchor] = (1, 0)
        elif isinstance(ev, AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                return f"YAML uses more than {MAX_ALIASES} aliases (*name)"
            if ev.anchor in open_anchors:
                return f"YAML alias *{ev.anchor} is inside the node it names (a recursive alias)"
            size, span = anchored.get(ev.anchor, (1, 0))  # an unknown one: the loader says so
            nodes += size
            if stack:
                if len(stack) + span > MAX_DEPTH:
                    return f"YAML nests deeper than {MAX_DEPTH} levels (aliases expanded)"
                stack[-1][3] = max(stack[-1][3], len(stack) + span)
        else:
            continue
        if nodes > MAX_NODES:
            return f"YAML expands to more than {MAX_NODES} nodes (aliases expanded)"
    return ""
