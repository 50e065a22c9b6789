"""The KV cache of sampling and caption decoding: keys and values of generated tokens."""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer keys and values of already generated tokens (condition + clean groups).

    A batch doubled for classifier-free guidance ([conditional; unconditional]) is cached as one
    batch; `batch_slice` gives a read-only view of one half for steps that skip guidance.
    `visible` ((B, len) bool, or None = all) hides cached tokens from later queries per sample:
    the unconditional half of a text-guided batch hides its text, as text dropout does in
    training.
    """

    def __init__(self, depth: int):
        self.keys: list[torch.Tensor | None] = [None] * depth
        self.values: list[torch.Tensor | None] = [None] * depth
        self.visible: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    def attend(self, layer: int, k: torch.Tensor, v: torch.Tensor, append: bool):
        """Keys/values to attend to: the cache followed by (k, v); stores them if `append`."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)  # (B, h, T + N, hd)
            v = torch.cat([self.values[layer], v], dim=2)
        if append:
            self.keys[layer], self.values[layer] = k, v
        return k, v

    def batch_slice(self, start: int, stop: int) -> KVCache:
        """A view of samples start..stop-1 (shares memory; do not append to it)."""
        view = KVCache(len(self.keys))
        view.keys = [None if k is None else k[start:stop] for k in self.keys]
        view.values = [None if v is None else v[start:stop] for v in self.values]
        view.visible = None if self.visible is None else self.visible[start:stop]
        return view

    def select(self, rows: torch.Tensor) -> None:
        """Keep the samples `rows` (B',) long, in that order (beam search reorders beams)."""
        self.keys = [None if k is None else k[rows] for k in self.keys]
        self.values = [None if v is None else v[rows] for v in self.values]
        self.visible = None if self.visible is None else self.visible[rows]

    def extend_visible(self, batch: int, new: int, visible: torch.Tensor | None) -> None:
        """Record the visibility of `new` tokens just appended ((B, new) bool; None = all)."""
        if visible is None and self.visible is None:
            return
        before = len(self) - new
        old = self.visible
        if old is None:
            old = torch.ones(batch, before, dtype=torch.bool, device=self.keys[0].device)
        if visible is None:
            visible = torch.ones(batch, new, dtype=torch.bool, device=old.device)
        self.visible = torch.cat([old, visible.to(old.device)], dim=1)

    def key_mask(self, new: int, mask: torch.Tensor | None) -> torch.Tensor | None:
        """The mask of `new` query tokens over cache + themselves: `mask` and `visible` joined."""
        if self.visible is None:
            return mask
        B = self.visible.shape[0]
        keys = torch.cat(
            [self.visible, torch.ones(B, new, dtype=torch.bool, device=self.visible.device)], 1
        )  # (B, T + new)
        keys = keys[:, None, None, :]  # (B, 1, 1, T + new)
        return keys if mask is None else keys & mask
