"""Run by tests: a second signal delivered inside a handler of the first, at each line that
handler runs, as SLURM's SIGTERM and USR2 (sent ms apart) can land.

`python nested_signals.py point_job`: PointJob's handler; `... trainer`: the trainer's
SignalCatcher. Prints `nested at N lines` and exits 0; a handler that takes a lock hangs here
instead (the caller's timeout must use SIGKILL: the handler catches SIGTERM itself).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

from harness.launch import point_job as pj
from model.training.signals import SignalCatcher


def in_frames(frame, code) -> bool:
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


def deliver(handler_code, second_at: int | None) -> int:
    """SIGTERM; USR2 raised at the `second_at`-th line run inside its handler. Lines counted."""
    lines = 0

    def tracer(frame, event, arg):
        nonlocal lines
        if event == "line" and in_frames(frame, handler_code):
            lines += 1
            if lines == second_at:
                signal.raise_signal(signal.SIGUSR2)  # its handler runs here, nested
        return tracer

    sys.settrace(tracer)
    try:
        signal.raise_signal(signal.SIGTERM)
    finally:
        sys.settrace(None)
        signal.setitimer(signal.ITIMER_REAL, 0)
    return lines


def every_line(handler_code, reset: Callable[[], None], check: Callable[[], None]) -> None:
    reset()
    total = deliver(handler_code, None)
    assert total > 0, "the tracer saw no line of the handler"
    for n in range(1, total + 1):
        reset()
        deliver(handler_code, n)
        check()
    print(f"nested at {total} lines", flush=True)


def point_job() -> None:
    def check() -> None:
        assert pj.preemption_requested()
        assert sorted(pj._SEEN) == sorted([signal.SIGTERM, signal.SIGUSR2]), pj._SEEN

    pj.PointJob(print, grace_s=30)._install_handlers()
    every_line(pj.PointJob._on_signal.__code__, pj._SEEN.clear, check)


def trainer() -> None:
    with SignalCatcher() as catcher:

        def check() -> None:  # USR2 (requeue) outranks TERM, whichever handler ran last
            assert catcher.caught == signal.SIGUSR2, catcher.caught

        every_line(SignalCatcher._handle.__code__, catcher.seen.clear, check)


if __name__ == "__main__":
    {"point_job": point_job, "trainer": trainer}[sys.argv[1]]()
