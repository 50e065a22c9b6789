"""The resumable, sharded data order: endless seeded batches whose position a checkpoint saves.

Horizontal flips are not done by the datasets: `BatchStream` flips the items whose seeded
per-(epoch, index) bit is set, so that a resumed run sees exactly the same augmented batches.
With `prefetch=k` a thread makes the next k batches while the caller trains on the current one
(model/data/prefetch.py): the same batches in the same order, and `state_dict()` is still the
position of the next batch handed out, not of the thread's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping

import torch
from torch.utils.data import DataLoader, Dataset

from core.errors import UserError
from model.data.prefetch import Ahead, to_device


def _stream_seed(seed: int, epoch: int, stream: str) -> int:
    """A 63-bit seed for one (seed, epoch, purpose), independent across purposes."""
    digest = hashlib.sha256(f"cfh-data/{seed}/{epoch}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class ShardedEpochSampler:
    """Global batches cut from an endless chain of seeded per-epoch permutations of range(n).

    Each step takes the next `batch_size_per_rank * world` indices of the chain (a batch may span
    two epochs, so any n works and nothing is dropped); rank r takes slice r of it. The state is
    (epoch, position): the chain offset of the next batch, counted in samples, so a resume with a
    different world size but the same global batch continues the same stream.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size_per_rank: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        flip: bool = False,
    ):
        if num_samples < 1:
            raise UserError("the dataset is empty (0 samples); data.root or data= needs images")
        if batch_size_per_rank < 1:
            raise UserError(f"train.batch_size per rank is {batch_size_per_rank}; must be >= 1")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world size {world}")
        self.num_samples = num_samples
        self.batch_size = batch_size_per_rank
        self.seed = seed
        self.rank = rank
        self.world = world
        self.flip = flip
        self.epoch = 0
        self.position = 0
        self._cache: dict[tuple[str, int], torch.Tensor] = {}

    def _epoch_tensor(self, kind: str, epoch: int) -> torch.Tensor:
        """The permutation ("perm") or flip bits ("flip") of one epoch, cached for two epochs."""
        key = (kind, epoch)
        if key not in self._cache:
            g = torch.Generator().manual_seed(_stream_seed(self.seed, epoch, kind))
            n = self.num_samples
            if kind == "perm":
                value = torch.randperm(n, generator=g)
            else:
                value = torch.randint(0, 2, (n,), generator=g, dtype=torch.uint8).bool()
            for old in [k for k in self._cache if k[0] == kind and k[1] < epoch - 1]:
                del self._cache[old]
            self._cache[key] = value
        return self._cache[key]

    def _take(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next `count` (index, flip) pairs of the chain; advances the state."""
        idx, flips = [], []
        while count > 0:
            n = min(count, self.num_samples - self.position)
            sl = slice(self.position, self.position + n)
            perm = self._epoch_tensor("perm", self.epoch)[sl]
            idx.append(perm)
            if self.flip:
                flips.append(self._epoch_tensor("flip", self.epoch)[perm])
            else:
                flips.append(torch.zeros(n, dtype=torch.bool))
            self.position += n
            count -= n
            if self.position == self.num_samples:
                self.epoch, self.position = self.epoch + 1, 0
        return torch.cat(idx), torch.cat(flips)

    def next_indices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's indices (int64) and flip flags (bool) of the next global batch."""
        idx, flips = self._take(self.batch_size * self.world)
        sl = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        return idx[sl], flips[sl]

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        """Endless per-rank batches as lists of (index, flip) pairs (a DataLoader batch_sampler)."""
        while True:
            idx, flips = self.next_indices()
            yield list(zip(idx.tolist(), flips.tolist(), strict=True))

    def state_dict(self) -> dict:
        """The position of the next batch, plus what it is only valid for."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "flip": self.flip,
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Continue from a saved position (refused when the data or seed differ)."""
        for key in ("seed", "num_samples", "flip"):
            if key in state and state[key] != getattr(self, key):
                raise UserError(
                    f"the checkpoint's data position was saved with {key}={state[key]!r}, "
                    f"but this run has {key}={getattr(self, key)!r}; use the same data and seed"
                )
        if not 0 <= int(state["position"]) < self.num_samples:
            raise UserError(f"checkpoint data position {state['position']} is out of range")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class _FlipItems(Dataset):
    """Items addressed by (index, flip) pairs: the DataLoader path of BatchStream."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, bool]) -> tuple[torch.Tensor, torch.Tensor]:
        i, flip = item
        x, y = self.dataset[i]
        return (x.flip(-1) if flip else x), y


class BatchStream:
    """Endless (x, y) batches for one rank; `state_dict()` is the data position of the next batch.

    Datasets with `get_batch` (digits, mnist, latents) are gathered in this process; others
    (imagefolder) go through a DataLoader with `num_workers` workers. Either way the batches are
    a function of (seed, epoch, position) only, so the trainer saves `state_dict()` in its
    checkpoint and a resumed run gets bitwise the same batches. `device`: where batches are
    handed out (None: where the dataset makes them); `prefetch`: batches made ahead in a thread
    (0: none). `close()` stops that thread.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size_per_rank: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        num_workers: int = 0,
        start_state: Mapping | None = None,
        pin_memory: bool = False,
        device: torch.device | None = None,
        prefetch: int = 0,
    ):
        self.dataset = dataset
        flip = bool(getattr(dataset, "flip", False))
        args = (len(dataset), batch_size_per_rank, seed, rank, world, flip)
        self.sampler = ShardedEpochSampler(*args)
        self._prefetch = ShardedEpochSampler(*args)  # drives the DataLoader, may run ahead
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.device = device
        self.prefetch = int(prefetch)
        self._loader_iter: Iterator | None = None
        self._ahead: Ahead | None = None
        self._position: dict = {}  # with a prefetching thread: the position of the next batch
        if start_state is not None:
            self.load_state_dict(start_state)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y) batch of this rank."""
        if not self.prefetch:
            x, y = self._make()
            return to_device(x, self.device), to_device(y, self.device)
        if self._ahead is None:
            self._position = self.sampler.state_dict()
            self._start_loader()  # DataLoader workers start in this thread, not in the prefetcher
            self._ahead = Ahead(self._make_ahead, self.prefetch, self.device)
        x, y, self._position = self._ahead.get()
        return x, y

    def _make_ahead(self) -> tuple[torch.Tensor, torch.Tensor, dict]:
        x, y = self._make()
        return x, y, self.sampler.state_dict()

    def _make(self) -> tuple[torch.Tensor, torch.Tensor]:
        if hasattr(self.dataset, "get_batch"):
            idx, flips = self.sampler.next_indices()
            return self.dataset.get_batch(idx, flips)
        self._start_loader()
        self.sampler.next_indices()  # the consumed position advances with each batch handed out
        return next(self._loader_iter)  # type: ignore[arg-type]

    def _start_loader(self) -> None:
        """A DataLoader from the current position (datasets without `get_batch`)."""
        if self._loader_iter is not None or hasattr(self.dataset, "get_batch"):
            return
        self._prefetch.load_state_dict(self.sampler.state_dict())
        loader = DataLoader(
            _FlipItems(self.dataset),
            batch_sampler=self._prefetch,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=False,
        )
        self._loader_iter = iter(loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        """The data position of the next batch (save it in the checkpoint)."""
        if self._ahead is not None:
            return dict(self._position)
        return self.sampler.state_dict()

    def load_state_dict(self, state: Mapping) -> None:
        """Continue from a saved data position."""
        self.close()
        self.sampler.load_state_dict(state)
        self._loader_iter = None  # a fresh DataLoader starts at the restored position

    def close(self) -> None:
        """Stop the prefetching thread; the stream goes on from the last batch handed out."""
        if self._ahead is None:
            return
        self._ahead.close()
        self._ahead = None
        self.sampler.load_state_dict(self._position)  # forget what the thread made ahead
        self._loader_iter = None

    def steps_per_epoch(self) -> float:
        """Global batches per pass over the data (may be fractional)."""
        return self.sampler.num_samples / (self.sampler.batch_size * self.sampler.world)
