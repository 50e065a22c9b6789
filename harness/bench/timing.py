"""Timing tools of `cfh bench`: clocks, medians, rotating order, peak memory, machine info.

On a CPU shared with other jobs the bench interleaves implementations in rotating order and
takes medians; `bench.clock=cpu` times this thread's CPU time instead of the wall clock.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock_fn(clock: str) -> Callable[[], float]:
    """The timer: wall time, or (bench.clock=cpu) this thread's CPU time.

    On a CPU shared with other jobs, wall time also counts the time the scheduler gives them;
    with one torch thread all compute runs on the calling thread, so its CPU time is what the
    work costs. Throughput from it is labelled (row key "clock") and is not wall-clock speed.
    """
    return time.thread_time if clock == "cpu" else time.perf_counter


def timed(fn: Callable[[], Any], device: torch.device, clock: str = "wall") -> float:
    """Seconds of fn() on `clock`, device work included."""
    now = clock_fn(clock)
    sync(device)
    t0 = now()
    fn()
    sync(device)
    return now() - t0


def median(values: Sequence[float]) -> float:
    """Median, NaN for no values."""
    return statistics.median(values) if values else float("nan")


def rotations(items: list, r: int) -> list:
    """items rotated left by r: each repeat starts with another implementation."""
    k = r % len(items) if items else 0
    return items[k:] + items[:k]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory of a region: the CUDA allocator's peak, or (CPU) polled RSS above its start.

    On the CPU the transient peak is max RSS during the region minus RSS at its start, polled
    every 2 ms: an estimate (the allocator may reuse freed pages), not an allocator statistic.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif os.path.exists("/proc/self/statm"):
            self._start = _rss_bytes()
            self._max = self._start
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.002):
            self._max = max(self._max, _rss_bytes())

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self._max = max(self._max, _rss_bytes())
            self.peak_bytes = self._max - self._start


def state_bytes(*modules: torch.nn.Module, opt: torch.optim.Optimizer | None = None) -> int:
    """Bytes of parameters, gradients, buffers and optimizer state (what a step keeps alive)."""
    total = 0
    for m in modules:
        for t in (*m.parameters(), *m.buffers()):
            total += t.numel() * t.element_size()
            if t.grad is not None:
                total += t.grad.numel() * t.grad.element_size()
    if opt is not None:
        for state in opt.state.values():
            total += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
    return total


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Run with n CPU threads (0 = leave torch's default), then restore."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
