"""Where a process sits in a multi-process job, and the few collectives the trainer needs.

Ranks come from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT). A
job launched another way (SLURM tasks, submitit's local tasks) has those variables exported by
the harness before the trainer starts (harness.launch.executors.export_distributed_env), so nothing
here knows about schedulers. Every collective here is called by every rank, in the same order.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from core.io import lock_state, owner_lock, read_status


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """This process's rank, world size and local rank from the environment (no process group)."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(int(env["RANK"]), world, int(env.get("LOCAL_RANK", "0")))


def init_distributed(timeout_s: float) -> DistInfo:
    """Join the process group (gloo on CPU, nccl on CUDA) when the job has several ranks.

    `timeout_s` bounds every collective: a rank that died leaves the others an error after at
    most that long, never a hang.
    """
    info = dist_info()
    if info.world > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(
            backend="nccl" if cuda else "gloo",
            timeout=datetime.timedelta(seconds=float(timeout_s)),
        )
    return info


def reduce_max(value: int, info: DistInfo, device: torch.device) -> int:
    """The largest `value` over all ranks (the value itself on one rank)."""
    if info.world <= 1:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def reduce_max_(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """`value` replaced in place by its max over ranks, never read on the host (with NCCL the
    host does not wait for it; the device orders it before later uses)."""
    if info.world > 1:
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value


def reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of a tensor over ranks (SUM / world: gloo has no AVG)."""
    if info.world <= 1:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / info.world


def gather_to_all(obj: Any, info: DistInfo) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable, small objects)."""
    if info.world <= 1:
        return [obj]
    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    """Wait until every rank gets here."""
    if info.world > 1:
        dist.barrier()


def shard_range(num: int, info: DistInfo) -> range:
    """This rank's contiguous share of range(num): sizes differ by at most one."""
    start = num * info.rank // info.world
    stop = num * (info.rank + 1) // info.world
    return range(start, stop)


# ---------------------------------------------------------------- communication time


class CommTimer:
    """The gradient sum of DDP over gloo, timed, in one order: a DDP communication hook.

    Each bucket is scaled by 1 / world (the reciprocal rounded to the bucket's dtype, as DDP's
    own scaling does it), then summed over ranks. With 2 ranks that is gloo's all-reduce, bitwise
    plain DDP. With more, gloo's ring adds each element's terms in an order set by where the
    element sits in its bucket, and DDP lays its buckets out anew after a process's first step,
    so a resumed run (whose first step is a later step) would drift from the uninterrupted one
    by rounding (2.6e-6 after 40 steps of 4 ranks, measured); so the buckets are all-gathered and
    every rank adds them in rank order (0 + 1 + 2 + ...): the same sum whatever the layout, the
    hosts or the process's history, for world x bucket memory.

    Each bucket's span from its launch (in the backward pass, once its gradients are ready) to
    its sum is recorded; `take()` gives the seconds covered by at least one span since the last
    call: time spent sending, receiving and waiting for the slowest rank. Host clocks: on gloo
    (CPU) the span is the collective itself; the trainer does not install it on CUDA, where
    NCCL's futures complete on the host before the device has run them.
    """

    def __init__(self, world: int) -> None:
        self.world = world
        self._spans: list[tuple[float, float]] = []

    def hook(self, state, bucket):  # unannotated: DDP checks the annotations' objects
        """DDP's communication hook (register_comm_hook(None, timer.hook))."""
        start = time.perf_counter()
        tensor = bucket.buffer()
        tensor.mul_(1.0 / self.world)
        if self.world <= 2:  # a + b == b + a: gloo's all-reduce is already order-free
            fut = dist.all_reduce(tensor, group=state, async_op=True).get_future()

            def summed(f: torch.futures.Future) -> torch.Tensor:
                return f.value()[0]

        else:
            parts = [torch.empty_like(tensor) for _ in range(self.world)]
            fut = dist.all_gather(parts, tensor, group=state, async_op=True).get_future()

            def summed(f: torch.futures.Future) -> torch.Tensor:
                f.wait()
                total = parts[0].clone()
                for part in parts[1:]:
                    total.add_(part)
                return total

        def done(f: torch.futures.Future) -> torch.Tensor:
            out = summed(f)
            self._spans.append((start, time.perf_counter()))  # list.append: atomic
            return out

        return fut.then(done)

    def take(self) -> float:
        """Seconds covered by the spans completed since the last call (overlaps once)."""
        spans, self._spans = self._spans, []
        total, end = 0.0, float("-inf")
        for a, b in sorted(spans):
            if b > end:
                total += b - max(a, end)
                end = b
        return total


# ---------------------------------------------------------------- which rank is gone

RANKS_DIR = ".ranks"  # in a run folder: one lock file per rank of a multi-rank attempt
_COMM_ERRORS = ("gloo", "nccl", "connection closed", "timed out", "timeout", "broken pipe")


def is_comm_error(e: BaseException) -> bool:
    """Whether e is a collective that failed (a peer gone, a timeout), not this rank's own bug."""
    if isinstance(e, dist.DistError):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(w in text for w in _COMM_ERRORS)


class RankPresence:
    """Every rank of a multi-rank run holds `run_dir/.ranks/<rank>.lock` while it works.

    core.io.owner_lock: a POSIX lock the kernel drops when the process dies, with the holder's
    pid and host written in the file, which a clean release empties. Entering is a collective
    (every rank learns each member's pid and host), so a rank whose collective failed can tell
    a member that died (its file still names it, and nobody holds it: killed, out of memory,
    its node gone) from one that is alive (hung, or failing on its own and saying so). Across
    nodes this needs a shared run folder with POSIX locks that all nodes see (NFS does; a
    filesystem with node-local locks makes a rank elsewhere look gone only once it is).
    """

    def __init__(self, run_dir: str | os.PathLike, info: DistInfo) -> None:
        self.run_dir = Path(run_dir)
        self.info = info
        self.members: list[dict] = []
        self._stack = contextlib.ExitStack()

    def path(self, rank: int) -> Path:
        return self.run_dir / RANKS_DIR / f"{rank}.lock"

    def __enter__(self) -> RankPresence:
        if self.info.world > 1:
            what = f"rank {self.info.rank}/{self.info.world}"
            owner = f"run_dir={self.run_dir}"
            self._stack.enter_context(owner_lock(self.path(self.info.rank), owner, what))
            me = {"rank": self.info.rank, "host": socket.gethostname(), "pid": os.getpid()}
            self.members = gather_to_all(me, self.info)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def gone(self) -> list[dict]:
        """Members whose lock is free while their file still names them: died holding it."""
        out = []
        for m in self.members:
            if m["rank"] == self.info.rank:
                continue
            held, holder = lock_state(self.path(m["rank"]))
            if held is False and holder.get("pid") == m["pid"] and holder.get("host") == m["host"]:
                out.append(m)
        return out

    def lost(self, e: BaseException, wait_s: float = 3.0) -> list[dict]:
        """The members that died, as seen after this rank's error `e` ({rank, host, pid}).

        After a failed collective, polls for up to `wait_s` (a killed peer's lock is dropped as
        its process exits, which may come just after the closed connection that raised `e`),
        stopping once one is found or the run is marked failed by a rank that said why.
        """
        if self.info.world <= 1 or not self.members:
            return []
        deadline = time.monotonic() + (wait_s if is_comm_error(e) else 0.0)
        while True:
            found = self.gone()
            if found or time.monotonic() >= deadline:
                return found
            if read_status(self.run_dir).get("state") == "failed":
                return []
            time.sleep(0.1)
