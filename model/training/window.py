"""The numbers of one metrics.jsonl row: per-step values accumulated between two log steps."""

from __future__ import annotations

import time

import torch

from model.training.distributed import DistInfo, reduce_mean
from model.training.perf import mfu, peak_memory_mb


class Window:
    """Accumulates per-step numbers between two log lines."""

    def __init__(self) -> None:
        self.nonfinite = 0
        self._reset()

    def _reset(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.parts: dict[str, list[torch.Tensor]] = {}  # loss per part (joint models)
        self.grad_norms: list[torch.Tensor] = []
        self.images = 0
        self.tokens = 0
        self.seconds = 0.0

    def add(
        self,
        loss: torch.Tensor,
        gn: torch.Tensor,
        images: int,
        seq: int,
        sec: float,
        parts: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """One step's loss, grad norm, images (all ranks), sequence length and seconds."""
        for name, value in (parts or {}).items():
            self.parts.setdefault(name, []).append(value)
        self.losses.append(loss)
        self.grad_norms.append(gn.detach())
        self.images += images
        self.tokens += images * seq
        self.seconds += sec

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
    ) -> dict:
        """The window's metrics.jsonl row (losses averaged over ranks); starts a new window."""
        loss = reduce_mean(torch.stack(self.losses).float().mean(), info)
        img_s = self.images / max(self.seconds, 1e-9)
        row = {
            "step": step,
            "loss": loss.item(),
            **{
                name: reduce_mean(torch.stack(v).float().mean(), info).item()
                for name, v in sorted(self.parts.items())
            },
            "lr": lr,
            "grad_norm": torch.stack(self.grad_norms).float().mean().item(),
            "img_per_s": img_s,
            "tokens_per_s": self.tokens / max(self.seconds, 1e-9),
            "mfu": mfu(flops_per_image, img_s / info.world, peak),
            "peak_mem_mb": peak_memory_mb(device),
            "wall_s": time.perf_counter() - t_start,
        }
        self._reset()
        return row
