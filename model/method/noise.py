"""Per-sample random streams: sample i's noise depends on (seed, i) alone.

Every sampling path (generation, editing, evaluation tasks) draws each sample's token order and
diffusion noise from that sample's own stream, `sample_stream(sample.seed, i)`, so a sample is
the same whatever batch, chunk or rank computes it. `normal` and `uniform` also take a
plain torch.Generator (one stream for the whole batch) or None (torch's global RNG), which the
trainer and the low-level tests use.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch


def sample_stream(seed: int, index: int) -> np.random.Generator:
    """Sample `index`'s stream under sampling seed `seed`: PCG64 from SeedSequence([seed, index]).

    numpy's seed sequence hashes the pair to the full generator state, so no two (seed, index)
    pairs share a stream (a torch.Generator keeps only 32 bits of its seed).
    """
    if seed < 0 or index < 0:
        raise ValueError(f"seed {seed} and sample index {index} must be >= 0")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(index)])))


class SampleNoise:
    """One random stream per sample of a batch; draws are stacked along a leading batch axis.

    The streams live on the CPU whatever the device, so a sample's noise is the same on CPU and
    on CUDA.
    """

    def __init__(self, streams: Sequence[np.random.Generator]):
        self.streams = list(streams)

    @classmethod
    def for_indices(cls, seed: int, indices: Iterable[int]) -> SampleNoise:
        """Streams of the samples `indices` under sampling seed `seed`."""
        return cls([sample_stream(seed, int(i)) for i in indices])

    def __len__(self) -> int:
        return len(self.streams)

    def padded(self, total: int) -> SampleNoise:
        """These streams plus throwaway ones up to `total` (rows whose results are discarded)."""
        extra = [np.random.default_rng(0) for _ in range(total - len(self))]
        return SampleNoise(self.streams + extra)

    def normal(self, shape: Sequence[int], device: torch.device, dtype: torch.dtype):
        """(B, *shape) standard normal noise, row b from sample b's stream."""
        rows = [g.standard_normal(tuple(shape), dtype=np.float32) for g in self.streams]
        return torch.from_numpy(np.stack(rows)).to(device, dtype)

    def uniform(self, shape: Sequence[int], device: torch.device | None = None):
        """(B, *shape) uniform [0, 1) draws, row b from sample b's stream."""
        rows = [g.random(tuple(shape), dtype=np.float32) for g in self.streams]
        return torch.from_numpy(np.stack(rows)).to(device)


NoiseSource = SampleNoise | torch.Generator | None


def normal(
    source: NoiseSource,
    shape: Sequence[int],
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise of `shape` (batch first) from `source`, on `device`."""
    if isinstance(source, SampleNoise):
        _check_batch(source, shape)
        return source.normal(shape[1:], device, dtype)
    draw_on = source.device if source is not None else device
    return torch.randn(tuple(shape), generator=source, device=draw_on, dtype=dtype).to(device)


def uniform(
    source: NoiseSource, shape: Sequence[int], device: torch.device | None = None
) -> torch.Tensor:
    """Uniform [0, 1) draws of `shape` (batch first) from `source`, on `device`."""
    if isinstance(source, SampleNoise):
        _check_batch(source, shape)
        return source.uniform(shape[1:], device)
    draw_on = source.device if source is not None else device
    return torch.rand(tuple(shape), generator=source, device=draw_on).to(device)


def _check_batch(source: SampleNoise, shape: Sequence[int]) -> None:
    if shape[0] != len(source):
        raise ValueError(f"a batch of {shape[0]} rows but {len(source)} per-sample streams")
