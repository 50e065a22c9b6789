"""Per-sample random streams: sample i's noise depends on (seed, i) alone.

Every sampling path (generation, editing, evaluation tasks) draws each sample's token order and
diffusion noise from that sample's own generator, seeded by `sample_seed(sample.seed, i)`, so a
sample is the same whatever batch, chunk or rank computes it. `normal` and `uniform` also take a
plain torch.Generator (one stream for the whole batch) or None (torch's global RNG), which the
trainer and the low-level tests use.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

INDEX_BITS = 32  # sample indices below 2**32; seeds below 2**31 keep the product in 63 bits


def sample_seed(seed: int, index: int) -> int:
    """The generator seed of sample `index` under sampling seed `seed` (distinct for each pair)."""
    if not 0 <= index < 2**INDEX_BITS:
        raise ValueError(f"sample index {index} outside 0..2**{INDEX_BITS}-1")
    return (int(seed) << INDEX_BITS) + int(index)


class SampleNoise:
    """One CPU generator per sample of a batch; draws are stacked along a leading batch axis.

    CPU generators on every device make a sample's noise the same on CPU and on CUDA.
    """

    def __init__(self, seeds: Sequence[int]):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    @classmethod
    def for_indices(cls, seed: int, indices: Iterable[int]) -> SampleNoise:
        """Streams of the samples `indices` under sampling seed `seed`."""
        return cls([sample_seed(seed, int(i)) for i in indices])

    def __len__(self) -> int:
        return len(self.generators)

    def padded(self, total: int) -> SampleNoise:
        """These streams plus throwaway ones up to `total` (rows whose results are discarded)."""
        out = SampleNoise([])
        out.generators = list(self.generators)
        out.generators += [torch.Generator().manual_seed(0) for _ in range(total - len(self))]
        return out

    def normal(self, shape: Sequence[int], device: torch.device, dtype: torch.dtype):
        """(B, *shape) standard normal noise, row b from sample b's stream."""
        rows = [torch.randn(tuple(shape), generator=g) for g in self.generators]
        return torch.stack(rows).to(device, dtype)

    def uniform(self, shape: Sequence[int], device: torch.device | None = None):
        """(B, *shape) uniform [0, 1) draws, row b from sample b's stream."""
        rows = [torch.rand(tuple(shape), generator=g) for g in self.generators]
        return torch.stack(rows).to(device)


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
