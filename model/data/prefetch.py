"""Batches made ahead in a thread, in order, so that the trainer's next batch is ready (and on
CUDA already copied) while the current step runs.

`Ahead(make, depth, device)` calls `make()` again and again in one thread and hands out what it
returned in that order, at most `depth` calls ahead: the results are those of calling `make()`
in the consumer, so a seeded data order is kept. `make()` returns (x, y, extra); x and y go to
`device`; on CUDA from pinned memory with non_blocking copies on a side stream that the
consumer's stream then waits for (an event, no host synchronization). An exception raised in the
thread is raised again by the `get()` that would have returned its batch.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any

import torch


def to_device(t: torch.Tensor, device: torch.device | None) -> torch.Tensor:
    """`t` on `device` (None: where it is); to CUDA from pinned memory, without waiting."""
    if device is None or t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class Ahead:
    """A thread that runs `make()` up to `depth` calls ahead of `get()`, in order."""

    def __init__(
        self, make: Callable[[], tuple[torch.Tensor, torch.Tensor, Any]], depth: int, device=None
    ):
        self._make = make
        self.device = device
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cfh-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        side = None
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            side = torch.cuda.Stream(self.device)
        while not self._stop.is_set():
            try:
                with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                    x, y, extra = self._make()
                    x, y = to_device(x, self.device), to_device(y, self.device)
                    ready = None
                    if side is not None:
                        ready = torch.cuda.Event()
                        ready.record(side)
                item = (x, y, extra, ready, None)
            except BaseException as e:  # handed to the consumer, which raises it
                item = (None, None, None, None, e)
            if not self._put(item) or item[4] is not None:
                return

    def _put(self, item: tuple) -> bool:
        """Queue `item`, unless close() is called while the queue is full."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def get(self) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """The next (x, y, extra), in the order made; raises what `make()` raised."""
        x, y, extra, ready, error = self._queue.get()
        if error is not None:
            raise error
        if ready is not None:  # the copy ran on the side stream: order it before the step
            current = torch.cuda.current_stream(self.device)
            current.wait_event(ready)
            x.record_stream(current)
            y.record_stream(current)
        return x, y, extra

    def close(self) -> None:
        """Stop the thread (after its current call of `make()`) and drop what it made."""
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        self._thread.join()
