"""Atomic file writes (temp file + rename), the run folder's status file, and owner locks.

status.json is read-modified-written under an exclusive lock on `.status.lock` beside it, so
ranks and the harness writing at once never lose each other's fields. An owner lock
(`owner_lock`, `run_lock`: `R/.run.lock`) makes one process at a time the writer of a run, a
samples folder or an eval record; a second one is refused at once, naming the holder.

A full disk (ENOSPC, EDQUOT) is raised by every writer here as core.errors.DiskFull naming the
file it was writing, and leaves nothing partial: a temp file is removed, an appended line that
did not fit is cut off again.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import io
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from core.errors import DiskFull, UserError, disk_full, place_error
from core.records import status_problem


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def raise_if_full(e: OSError, path: str | os.PathLike) -> None:
    """Raise DiskFull naming `path` (from e) when e says the disk is full; else return."""
    full = disk_full(e, path)
    if full is not None and full is not e:
        raise full from e
    if full is not None:
        raise full


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never half.

    No room for it: DiskFull naming `path`, the temp file removed and the old file untouched.
    """
    path = Path(path)
    try:
        _write_replacing(path, data)
    except OSError as e:
        raise_if_full(e, path)
        raise


def _write_replacing(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write a text file (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def json_text(obj: Any) -> str:
    """`obj` as the indented, key-sorted JSON text atomic_write_json writes."""
    return json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write `obj` as indented JSON."""
    atomic_write_text(path, json_text(obj))


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    """Atomically torch.save a plain dict (loadable with weights_only=True)."""
    import torch  # here, not at the top: cfh status and grid expansion use this module

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def append_jsonl(path: str | os.PathLike, obj: dict) -> None:
    """Append one JSON line; a torn last line is skipped by read_jsonl.

    A line the disk has no room for is cut off again (the file keeps its earlier lines only):
    DiskFull naming `path`. One writer per file (rank 0 appends a run's metrics).
    """
    append_line(path, json.dumps(obj, default=float) + "\n")


def append_line(path: str | os.PathLike, text: str) -> None:
    """Append `text` (one or more whole lines) with one write and an fsync, or not at all: a
    write that fails for want of space is cut back off (DiskFull naming `path`)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as e:
        raise_if_full(e, path)
        raise
    try:
        end = os.fstat(fd).st_size
        try:
            write_all(fd, text.encode("utf-8"))
            os.fsync(fd)
        except OSError as e:
            if disk_full(e) is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, end)  # no torn line left behind
            raise_if_full(e, path)
            raise
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a short write is continued, an error raised)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines file, skipping a torn or corrupt line instead of failing."""
    rows = []
    p = Path(path)
    if not p.exists():
        return rows
    for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def cut_jsonl(path: str | os.PathLike, max_step: int) -> int:
    """Drop the rows whose "step" is above max_step (atomically); return how many were dropped.

    A resumed run cuts metrics.jsonl back to its checkpoint's step, so that the steps it logs
    again appear once.
    """
    p = Path(path)
    if not p.exists():
        return 0
    lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn line
        step = row.get("step") if isinstance(row, dict) else None
        if isinstance(step, int) and step <= max_step:
            kept.append(line)
    if len(kept) != len(lines):
        atomic_write_text(p, "".join(f"{line}\n" for line in kept))
    return len(lines) - len(kept)


def now_iso() -> str:
    """Current UTC time as ISO-8601 text."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def load_status(run_dir: str | os.PathLike) -> tuple[dict, str | None]:
    """(status.json as a dict, None), or ({}, why it is damaged); ({}, None) when absent."""
    try:
        text = (Path(run_dir) / "status.json").read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, None
    except (OSError, UnicodeDecodeError) as e:
        return {}, f"unreadable ({type(e).__name__})"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        return {}, f"not JSON ({e.msg} at line {e.lineno})"
    problem = status_problem(data)
    return ({}, problem) if problem else (data, None)


def read_status(run_dir: str | os.PathLike) -> dict:
    """The run's status.json as a dict ({} when absent or damaged: writers then replace it)."""
    return load_status(run_dir)[0]


@contextlib.contextmanager
def status_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the run folder's status lock (an OS lock: it dies with the process)."""
    path = Path(run_dir) / ".status.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666 & ~_UMASK)
    except OSError as e:  # no inode left for the lock file
        raise_if_full(e, path)
        raise
    try:
        with contextlib.suppress(OSError):  # a filesystem without locks: best effort
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def update_status(run_dir: str | os.PathLike, **fields: Any) -> dict:
    """Merge `fields` into the run's status.json atomically and return the new status."""
    with status_lock(run_dir):
        status = read_status(run_dir)
        status.update(fields)
        status["updated"] = now_iso()
        atomic_write_json(Path(run_dir) / "status.json", status)
    return status


def error_line(e: BaseException) -> str:
    """`Type: first line of the message` (what `cfh status` shows for a failed run)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def record_failure(
    run_dir: str | os.PathLike,
    e: BaseException,
    rank: int = 0,
    world: int = 1,
    lost: Sequence[Mapping[str, Any]] = (),
    **fields: Any,
) -> None:
    """Mark the run failed with e's first line, unless a rank already did in this attempt.

    The first rank to fail names the cause; the errors the others then get (a peer closed the
    connection, a collective timed out) do not overwrite it. A new attempt resets the state.
    `lost`: the ranks that died without a word ({rank, host, pid}: killed, out of memory, their
    node gone; model.training.distributed.RankPresence), as seen by this rank: they are the
    cause (failed_rank, failed_host, lost_ranks), and e what this rank got from their absence.
    """
    text = error_line(e) if world == 1 else f"rank {rank}/{world}: {error_line(e)}"
    if lost:
        gone = ", ".join(
            f"rank {m['rank']}/{world} on {m.get('host', '?')} (pid {m.get('pid', '?')})"
            for m in lost
        )
        text = f"{gone} lost: ended without an error of its own (killed?); then {text}"
        first = lost[0]
        fields.update(
            failed_rank=first["rank"],
            failed_host=first.get("host"),
            lost_ranks=[m["rank"] for m in lost],
        )
    with status_lock(run_dir):
        status = read_status(run_dir)
        if status.get("state") == "failed" and status.get("error"):
            return
        status.update({"failed_rank": rank, **fields}, state="failed", error=text)
        status["updated"] = now_iso()
        _write_failure(Path(run_dir) / "status.json", status, e)


def _write_failure(path: Path, status: dict, e: BaseException) -> None:
    """Write the failed status: atomically; on a full disk over the old file in place (its blocks
    are already there), since a run whose status still says `running` after it failed misleads
    more than the short window of a rewrite in place; when that fails too, a note on `e` says so
    (cfh prints it on e's line)."""
    data = json_text(status).encode("utf-8")
    try:
        atomic_write_bytes(path, data)
    except DiskFull:
        if not _overwrite_in_place(path, data):
            e.add_note(f"{path} could not be marked failed either: the disk is full")


def _overwrite_in_place(path: Path, data: bytes) -> bool:
    """Overwrite `path` with `data` in its own allocated blocks (no new space needed); False
    where it has fewer blocks than `data` needs, is missing, or the write fails."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError:
        return False
    try:
        if len(data) > os.fstat(fd).st_blocks * 512:
            return False
        if os.pwrite(fd, data, 0) != len(data):
            return False
        os.ftruncate(fd, len(data))
        os.fsync(fd)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


# ---------------------------------------------------------------- owner locks

RUN_LOCK = ".run.lock"  # in a run folder: held by the one process that trains it


class Busy(UserError):
    """Another process holds the lock: it owns what this command would write."""


_HELD: dict[str, int] = {}  # lock path -> fd, for the owner locks this process holds


def _holder(fd: int, patience_s: float = 0.5) -> dict:
    """What the holder wrote into its lock file ({} when nothing readable); a holder writes just
    after it takes the lock, so an empty file is read again for up to `patience_s`."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            raw = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        except OSError:
            return {}
        if raw or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    try:
        info = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def holder_text(info: dict) -> str:
    """`pid 12 on host h (cfh train, since T)`, or "another process" when the file says nothing."""
    if "pid" not in info:
        return "another process"
    return (
        f"pid {info['pid']} on host {info.get('host', '?')} "
        f"({info.get('what', '?')}, since {info.get('since', '?')})"
    )


@contextlib.contextmanager
def owner_lock(
    path: str | os.PathLike, owner: str, what: str, *, enabled: bool = True, wait: bool = False
) -> Iterator[None]:
    """Hold the lock file `path` while the body writes what it guards.

    A POSIX lock (fcntl.lockf): the kernel releases it when the process dies (a SLURM requeue or
    a rerun after a kill takes it again), and forked data-loader workers do not inherit it.
    Another process holding it: Busy at once, naming its pid and host (`wait`: block until it
    is free instead, saying who holds it). `owner` names what is guarded in messages
    ("run_dir=R"); `what` is written into the file for the next one to read ("cfh train").
    Re-entrant within a process (a job holds its run, then trains it); `enabled=False` holds
    nothing (ranks other than 0). A place that cannot be written: UserError naming it.
    """
    key = os.path.abspath(path)
    if not enabled or key in _HELD:
        yield
        return
    try:
        Path(key).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    except OSError as e:
        raise place_error(e, owner) or UserError(f"{owner}: cannot write {key}: {e}") from None
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: held elsewhere
            holder = holder_text(_holder(fd))
            if not wait:
                raise Busy(
                    f"{owner} is in use by {holder}, which holds {key}; wait for it to end, "
                    "or stop that process"
                ) from None
            print(f"waiting for {key}: held by {holder}", file=sys.stderr, flush=True)
            fcntl.lockf(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # a filesystem without locks: best effort, as status_lock
        info = {"pid": os.getpid(), "host": socket.gethostname(), "what": what, "since": now_iso()}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except OSError as e:  # no room for the holder's line: the command cannot write anyway
            raise_if_full(e, key)
            raise
        _HELD[key] = fd
        try:
            yield
        finally:
            del _HELD[key]
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # released cleanly: no holder for the next reader to name
    finally:
        os.close(fd)  # releases the lock


def run_lock(
    run_dir: str | os.PathLike, what: str, *, enabled: bool = True
) -> contextlib.AbstractContextManager[None]:
    """owner_lock on `run_dir/.run.lock`: the one process that trains (and evaluates in a job)
    the run."""
    return owner_lock(Path(run_dir) / RUN_LOCK, f"run_dir={run_dir}", what, enabled=enabled)


def lock_state(path: str | os.PathLike) -> tuple[bool | None, dict]:
    """(held, what its last holder wrote): held is True when a process holds `path`, False when
    none does, None when this filesystem cannot tell. Never takes the lock for longer than a
    probe."""
    key = os.path.abspath(path)
    if key in _HELD:  # opening and closing it here would drop this process's own POSIX lock
        return True, {"pid": os.getpid(), "host": socket.gethostname()}
    try:
        fd = os.open(key, os.O_RDONLY)
    except FileNotFoundError:
        return False, {}
    except OSError:
        return None, {}
    try:
        info = _holder(fd, patience_s=0)
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            return True, _holder(fd) or info
        except OSError:
            return None, info
        return False, info
    finally:
        os.close(fd)
