"""Preemption signals: SIGUSR2/SIGTERM become a flag the trainer checks at step boundaries.

The trainer reduces the flag over ranks (MAX) so that every rank saves at the same step, then
hands the signal to the handler installed before it (the caller's: the harness requeues the
job), or raises `Preempted` (exit code 124) when there is none. With one rank it looks at every
step; with several, the reduction is a collective that waits for the device, so every rank
asks at the same steps, every SIGNAL_EVERY-th: a signal is acted on at most that many steps late.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

SIGNAL_EVERY = 10  # steps between two reductions of the flag over several ranks


class Preempted(SystemExit):
    """Raised after the checkpoint on SIGUSR2/SIGTERM when no other handler takes over."""


class SignalCatcher:
    """Turns SIGUSR2/SIGTERM into a flag the loop checks (reduced over ranks) at step boundaries."""

    SIGNALS = (signal.SIGUSR2, signal.SIGTERM)
    # flag values, reduced with MAX over ranks: a requeue warning (USR2) outranks a stop (TERM)
    CODES = {signal.SIGTERM: 1, signal.SIGUSR2: 2}

    def __init__(self) -> None:
        self.seen: list[int] = []  # signals caught, in order
        self.previous: dict[int, Any] = {}
        self.handed = False  # the caught signal went to the previous handler

    def __enter__(self) -> SignalCatcher:
        main = threading.current_thread() is threading.main_thread()
        if hasattr(signal, "pthread_kill") and main:
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        # An append, not a read-compare-store: SLURM sends SIGTERM and USR2 ms apart, and a
        # USR2 handled inside SIGTERM's handler must not be overwritten when the outer resumes.
        self.seen.append(signum)

    @property
    def caught(self) -> int | None:
        """The signal that outranks the others caught (USR2 over TERM), or None."""
        return max(self.seen, key=self.CODES.__getitem__, default=None)

    def code(self) -> int:
        """This rank's flag: 0 (no signal), else the CODES value of the signal caught."""
        return 0 if self.caught is None else self.CODES[self.caught]

    @classmethod
    def signal_of(cls, code: int) -> int:
        """The signal whose CODES value is `code`."""
        return next(sig for sig, c in cls.CODES.items() if c == code)

    def __exit__(self, *exc: Any) -> None:
        """Restore the previous handlers; a signal caught but never acted on (it came after the
        last step boundary) still reaches a previous Python handler (the harness's)."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        previous = self.previous.get(self.caught) if self.caught is not None else None
        if not self.handed and callable(previous):
            self.handed = True
            previous(self.caught, None)

    def hand_over(self, signum: int) -> None:
        """After the checkpoint: let the previous handler act on `signum` (the harness requeues;
        on a rank the signal never reached, too), else exit with 124."""
        previous = self.previous.get(signum)
        self.handed = True
        self.__exit__()
        if callable(previous):
            previous(signum, None)
        raise Preempted(124)
