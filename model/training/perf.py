"""Throughput helpers: measured matmul peak, MFU, peak memory."""

from __future__ import annotations

import functools
import os
import resource
import time

import torch

from core.provenance import host_info


@functools.cache
def matmul_peak_flops(
    device: str = "cpu", dtype: torch.dtype = torch.float32, n: int = 0, clock: str = "wall"
) -> float:
    """Measured FLOP/s of a large square matmul in `dtype` on `device` (median of repeats).

    clock="cpu" times this thread's CPU time instead of the wall clock (one torch thread, CPU).
    """
    dev = torch.device(device)
    now = time.thread_time if clock == "cpu" else time.perf_counter
    n = n or (8192 if dev.type == "cuda" else 1024)
    gen = torch.Generator(dev).manual_seed(0)  # never touch the global RNG a trainer relies on
    a = torch.randn(n, n, device=dev, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=dev, dtype=dtype, generator=gen)
    times = []
    for i in range(6 if dev.type == "cuda" else 4):
        _sync(dev)
        t0 = now()
        a @ b
        _sync(dev)
        if i:  # the first call warms up kernels and caches
            times.append(now() - t0)
    times.sort()
    return 2 * n**3 / times[len(times) // 2]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def mfu(flops_per_image: float, images_per_s: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved training FLOP/s over the measured peak."""
    return flops_per_image * images_per_s / peak_flops if peak_flops > 0 else float("nan")


def machine_info(device: torch.device) -> dict:
    """Host, CPU model, cores, GPU, torch version, threads and load: what a timing depends on."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        **host_info(),
        "gpu": gpu,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_start": round(os.getloadavg()[0], 2),
    }
