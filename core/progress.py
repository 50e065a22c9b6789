"""Progress of the long phases (training, sampling, feature extraction, encoding) and run logs.

`Progress` is a tqdm bar when stderr is a terminal; otherwise (SLURM and local jobs, pipes) it
writes one plain line through `logging` every `interval` seconds (default 30, env
CFH_PROGRESS_S): done/total, percentage, rate, elapsed time and ETA, formatted by tqdm's own
`format_meter`, so log files and `cfh status` readers get the same numbers a terminal shows.
Loggers are named cfh.<phase> (cfh.train, cfh.sample, cfh.extract, cfh.encode).

`run_log(path)` sends every cfh.* logger to a run folder's log.txt while a phase runs, so the
training, sampling and evaluation lines of one run land in one file (status.json's `log`).
A line the disk has no room for is left out of the file whole (it still goes to stderr); the
write that fails next for the same full disk is the error the command reports.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from core.errors import DISK_FULL_ERRNOS

DEFAULT_INTERVAL_S = 30.0
# tqdm's own fields without the bar: a log line, not a terminal redraw
LINE_FORMAT = (
    "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%), {rate_fmt}, "
    "elapsed {elapsed}, ETA {remaining}{postfix}"
)


def interval_s(default: float = DEFAULT_INTERVAL_S) -> float:
    """Seconds between plain progress lines: $CFH_PROGRESS_S, else `default`."""
    text = os.environ.get("CFH_PROGRESS_S")
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        return default
    return value if value >= 0 else default


class Progress:
    """One long phase's progress: a tqdm bar on a terminal, else periodic log lines."""

    def __init__(
        self,
        total: int,
        desc: str,
        logger: logging.Logger | str,
        unit: str = "it",
        initial: int = 0,
        interval: float | None = None,
        enabled: bool = True,
        tty: bool | None = None,
    ) -> None:
        self.total = int(total)
        self.desc = desc
        self.unit = unit
        self.initial = int(initial)
        self.n = int(initial)
        self.log = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.interval = interval_s() if interval is None else float(interval)
        self.enabled = enabled
        tty = sys.stderr.isatty() if tty is None else tty
        self.bar = None
        if enabled and tty:
            self.bar = tqdm(
                total=self.total, initial=self.initial, desc=desc, unit=unit, dynamic_ncols=True
            )
        self.postfix: dict[str, Any] = {}
        self.start = time.monotonic()
        self.last_line = self.start
        self.closed = False

    def update(self, n: int = 1) -> None:
        """`n` more units done; a log line when `interval` seconds passed since the last one."""
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if self.enabled and now - self.last_line >= self.interval and self.n < self.total:
            self.last_line = now
            self.log.info("%s", self.line(now))

    def set_postfix(self, **values: Any) -> None:
        """Extra fields shown after the rate (loss=..., img_s=...)."""
        self.postfix = values
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def line(self, now: float | None = None) -> str:
        """The plain progress line at `now` (time.monotonic), as the log gets it."""
        elapsed = (time.monotonic() if now is None else now) - self.start
        postfix = ", ".join(f"{k}={v}" for k, v in self.postfix.items())
        text = tqdm.format_meter(
            self.n,
            self.total,
            elapsed,
            prefix=self.desc,
            unit=self.unit,
            initial=self.initial,  # the rate counts only this process's work (a resume)
            postfix=postfix or None,
            bar_format=LINE_FORMAT,
        )
        return " ".join(text.split())  # tqdm pads the rate to a fixed width for its bar

    def close(self) -> None:
        """Close the bar, or log the final line (when anything was done)."""
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.n > self.initial:
            self.log.info("%s", self.line())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RunLogHandler(logging.Handler):
    """Appends each record to `path` as one whole line: one os.write on an O_APPEND descriptor,
    no buffer to flush later. A line the disk has no room for (ENOSPC, EDQUOT) is cut back off
    and counted, not raised, and Python's "--- Logging error ---" traceback is not printed: the
    line is on stderr too, and the command's next write fails with the error it reports. On
    close, when lines were left out and there is room again, one line says how many."""

    terminator = "\n"

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.baseFilename = os.path.abspath(path)  # as logging.FileHandler: run_log looks for it
        self.fd: int | None = os.open(
            self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666
        )
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._append(self.format(record) + self.terminator)
        except OSError as e:
            if e.errno not in DISK_FULL_ERRNOS:
                self.handleError(record)
                return
            self.dropped += 1
        except Exception:  # noqa: BLE001 - a formatting error: logging's own report
            self.handleError(record)

    def _append(self, text: str) -> None:
        if self.fd is None:
            return
        end = os.fstat(self.fd).st_size
        view = memoryview(text.encode("utf-8", "replace"))
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, end)  # no torn line left behind
            raise

    def close(self) -> None:
        with self.lock:
            if self.fd is not None:
                if self.dropped:
                    when = time.strftime("%Y-%m-%d %H:%M:%S")
                    with contextlib.suppress(OSError):
                        self._append(
                            f"{when} WARNING cfh: {self.dropped} log line(s) left out of this "
                            "file: the disk was full\n"
                        )
                os.close(self.fd)
                self.fd = None
        super().close()


@contextlib.contextmanager
def run_log(path: str | os.PathLike, enabled: bool = True) -> Iterator[None]:
    """While inside, every cfh.* logger's INFO lines are appended to `path` (a run's log.txt).

    Nested uses for the same file (evaluate -> sample) attach one handler; the handler is
    removed on exit, so one process running several runs writes each run's lines to its own
    file only.
    """
    root = logging.getLogger("cfh")
    target = str(Path(path).resolve())
    if not enabled or any(getattr(h, "baseFilename", None) == target for h in root.handlers):
        yield
        return
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    handler = RunLogHandler(target)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.INFO)
    root.addHandler(handler)
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
