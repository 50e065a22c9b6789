"""Where a process sits in a multi-process job, and the few collectives the trainer needs.

Ranks come from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT). A
job launched another way (SLURM tasks, submitit's local tasks) has those variables exported by
the harness before the trainer starts (harness.launch.executors.export_distributed_env), so nothing
here knows about schedulers. Every collective here is called by every rank, in the same order.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


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
