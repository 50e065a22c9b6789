"""The numbers of one metrics.jsonl row: per-step values accumulated between two log steps.

A step's loss, grad norm and finiteness flag stay on the device until the log step reads them
(`flush`): the one host-device synchronization of a window. Non-finite steps were skipped by the
step itself; they are counted when read (`count_nonfinite`) and left out of the loss and
grad-norm means. Time: the window's wall clock from the previous log step to this one (minus the
checkpoint writes the trainer reports with `exclude`), of which `data_wait_frac` went to waiting
for the next batch and `step_frac` to the training steps (on a GPU: issuing them, and waiting
while the device's queue is full); the rest is logging and waiting for the device at the log step.
With several ranks on gloo, `comm_frac` is the share during which a gradient all-reduce was in
flight (inside the steps: sending, receiving, waiting for the slowest rank), mean over ranks.
"""

from __future__ import annotations

import time

import torch

from model.training.distributed import DistInfo, reduce_mean
from model.training.perf import mfu, peak_memory_mb


class Window:
    """Accumulates per-step numbers between two log lines."""

    def __init__(self) -> None:
        self.nonfinite = 0  # non-finite (skipped) steps of this process found so far
        self.first_nonfinite: tuple[int, float] | None = None  # (step, loss) of the first
        self._unread: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (step, ok, loss)
        self._reset()

    def _reset(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.parts: dict[str, list[torch.Tensor]] = {}  # loss per part (joint models)
        self.grad_norms: list[torch.Tensor] = []
        self.oks: list[torch.Tensor] = []
        self.images = 0
        self.tokens = 0
        self.wait_s = 0.0
        self.step_s = 0.0
        self.excluded_s = 0.0
        self.t_begin = time.perf_counter()

    def add(
        self,
        step: int,
        loss: torch.Tensor,
        gn: torch.Tensor,
        ok: torch.Tensor,
        images: int,
        seq: int,
        wait_s: float,
        step_s: float,
        parts: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Step `step`'s device values, its images (all ranks), sequence length and seconds
        spent waiting for its batch and in the step."""
        for name, value in (parts or {}).items():
            self.parts.setdefault(name, []).append(value)
        self.losses.append(loss)
        self.grad_norms.append(gn.detach())
        self.oks.append(ok)
        self._unread.append((step, ok, loss))
        self.images += images
        self.tokens += images * seq
        self.wait_s += wait_s
        self.step_s += step_s

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` (a checkpoint write) out of the window's throughput."""
        self.excluded_s += seconds

    def count_nonfinite(self) -> int:
        """Non-finite steps so far, reading the flags not read yet (a device sync)."""
        if self._unread:
            oks = torch.stack([ok for _, ok, _ in self._unread]).cpu()
            for (step, _, loss), ok in zip(self._unread, oks.tolist(), strict=True):
                if not ok:
                    self.nonfinite += 1
                    if self.first_nonfinite is None:
                        self.first_nonfinite = (step, float(loss))
            self._unread = []
        return self.nonfinite

    def mean_seq_len(self) -> float:
        """Mean sequence length per image over the window."""
        return self.tokens / max(self.images, 1)

    def flush(
        self,
        step: int,
        lr: float,
        info: DistInfo,
        flops_per_image: float,
        peak: float,
        device: torch.device,
        t_start: float,
        comm_s: float | None = None,
    ) -> dict:
        """The window's metrics.jsonl row (losses averaged over ranks); starts a new window.

        loss and grad_norm are means over the window's finite steps (None when it has none);
        `nonfinite_steps` appears when some were skipped. `comm_s`: this rank's seconds of
        gradient all-reduce in the window (model.training.distributed.CommTimer; every rank
        passes one or none): `comm_frac` is its share of the window's time, the mean over ranks.
        """
        before = self.nonfinite
        self.count_nonfinite()  # waits for the window's steps
        wall = max(time.perf_counter() - self.t_begin - self.excluded_s, 1e-9)
        ok = torch.stack(self.oks)
        n_ok = len(self.oks) - (self.nonfinite - before)

        def finite_mean(values: list[torch.Tensor]) -> torch.Tensor:
            v = torch.stack(values).float()
            return torch.where(ok, v, torch.zeros_like(v)).sum() / max(n_ok, 1)

        def read(value: torch.Tensor) -> float | None:
            return value.item() if n_ok else None

        img_s = self.images / wall
        row = {
            "step": step,
            "loss": read(reduce_mean(finite_mean(self.losses), info)),
            **{
                name: read(reduce_mean(finite_mean(v), info))
                for name, v in sorted(self.parts.items())
            },
            "lr": lr,
            "grad_norm": read(finite_mean(self.grad_norms)),
            "img_per_s": img_s,
            "tokens_per_s": self.tokens / wall,
            "mfu": mfu(flops_per_image, img_s / info.world, peak),
            "peak_mem_mb": peak_memory_mb(device),
            "data_wait_frac": min(self.wait_s / wall, 1.0),
            "step_frac": min(self.step_s / wall, 1.0),
            "wall_s": time.perf_counter() - t_start,
        }
        if comm_s is not None:
            share = torch.tensor([min(comm_s / wall, 1.0)], dtype=torch.float64)
            row["comm_frac"] = float(reduce_mean(share.to(device), info).item())
        if n_ok < len(self.oks):
            row["nonfinite_steps"] = len(self.oks) - n_ok
        self._reset()
        return row
