"""Run by test_executors: a second warning signal delivered inside PointJob's handler of the
first, at each line that handler runs, as SLURM's SIGTERM and USR2 (ms apart) can land.

Prints `nested at N lines` and exits 0; a handler that takes a lock hangs here instead (the
test's timeout then kills it: the handler also catches SIGTERM, so only SIGKILL ends it).
"""

from __future__ import annotations

import signal
import sys

from harness.launch import point_job as pj

HANDLER = pj.PointJob._on_signal.__code__


def in_handler(frame) -> bool:
    while frame is not None:
        if frame.f_code is HANDLER:
            return True
        frame = frame.f_back
    return False


def deliver(second_at: int | None) -> int:
    """SIGTERM; USR2 raised at the `second_at`-th line run inside its handler. Lines counted."""
    pj._SEEN.clear()
    lines = 0

    def tracer(frame, event, arg):
        nonlocal lines
        if event == "line" and in_handler(frame):
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


def main() -> None:
    pj.PointJob(print, grace_s=30)._install_handlers()
    total = deliver(None)
    assert total > 0, "the tracer saw no line of the handler"
    for n in range(1, total + 1):
        deliver(n)
        assert pj.preemption_requested(), n
        assert sorted(pj._SEEN) == sorted([signal.SIGTERM, signal.SIGUSR2]), (n, pj._SEEN)
    print(f"nested at {total} lines", flush=True)


if __name__ == "__main__":
    main()
