"""The reference to beat: cfh's CausalFusion function, computed the way the official release does.

Attention is an explicit `q @ k^T`, plus a dense (n, n) float mask holding 0 / -inf, softmax,
then `@ v`: no fused kernel, no skipped blocks, float32. Parameter names and shapes equal cfh's
(`model.network.CausalFusion`), so `ReferenceCausalFusion.from_cfh(net)` loads cfh's state dict
and computes the same outputs (tests/harness/test_bench.py checks both within tolerance).

Sampling: `recompute_generate` denoises each AR group without a KV cache, re-running the whole
prefix [condition tokens, clean tokens of the earlier groups, the noisy group] through every block
at every denoising step. It draws its noise in the same order as `model.sampling.generate`, so a
fixed generator gives the same images as cfh's cached sampler. It also runs cfh's own network
(boolean mask, cfh's attention), which is the "no KV cache" path of `cfh bench`.

Nothing here imports cfh's network: a change to model/network.py never changes the reference.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def reference_mask(cond_len: int, group_sizes: list[int], device=None) -> torch.Tensor:
    """(n, n) float mask (0 = may attend, -inf = not) of the training sequence, section 3.

    Layout [C condition][clean groups 1..S-1][noisy groups 1..S]; built block by block, as the
    release builds it, independently of model/masks.py.
    """
    sizes = list(group_sizes)
    n_clean = sum(sizes[:-1])
    n = cond_len + n_clean + sum(sizes)
    allowed = torch.zeros(n, n, dtype=torch.bool)
    allowed[:, :cond_len] = True  # everyone sees the condition
    clean_start = cond_len
    noisy_start = cond_len + n_clean
    c0, z0 = clean_start, noisy_start
    for s, g in enumerate(sizes):
        if s < len(sizes) - 1:
            allowed[c0 : c0 + g, clean_start : c0 + g] = True  # clean: earlier and own clean
        allowed[z0 : z0 + g, clean_start:c0] = True  # noisy: strictly earlier clean groups
        allowed[z0 : z0 + g, z0 : z0 + g] = True  # noisy: its own group
        c0, z0 = c0 + g, z0 + g
    mask = torch.zeros(n, n).masked_fill_(~allowed, float("-inf"))
    return mask.to(device)


def prefix_mask(cond_len: int, done_sizes: list[int], group: int, device=None) -> torch.Tensor:
    """(n, n) bool mask of a sampling prefix [C][clean groups done][noisy group]: True = attend."""
    n_clean = sum(done_sizes)
    n = cond_len + n_clean + group
    allowed = torch.zeros(n, n, dtype=torch.bool)
    allowed[:, :cond_len] = True
    c0 = cond_len
    for g in done_sizes:
        allowed[c0 : c0 + g, cond_len : c0 + g] = True
        c0 += g
    allowed[c0:, :] = True  # the noisy group sees the condition, every clean token and itself
    return allowed.to(device)


def additive(mask: torch.Tensor) -> torch.Tensor:
    """Boolean mask -> float 0 / -inf additive mask."""
    return torch.zeros(mask.shape, device=mask.device).masked_fill_(~mask, float("-inf"))


class RefAttention(nn.Module):
    """timm-style attention with per-head q/k LayerNorm; explicit matmul + softmax."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (width // heads) ** -0.5
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width)
        self.q_norm = nn.LayerNorm(width // heads)
        self.k_norm = nn.LayerNorm(width // heads)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # 3 x (B, h, N, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, h, N, N)
        attn = (attn + mask).softmax(dim=-1)  # dense float mask, -inf where forbidden
        x = (attn @ v).transpose(1, 2).reshape(B, N, D)
        return self.proj(x)


class RefBlock(nn.Module):
    """Pre-LN block: attention and a tanh-GELU MLP, both residual."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.norm1 = nn.LayerNorm(width)
        self.attn = RefAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class RefTimestepEmbedder(nn.Module):
    """DiT's timestep embedder: 256 sinusoidal frequencies -> MLP."""

    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs.to(t.device)[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class ReferenceCausalFusion(nn.Module):
    """The release-style network; `cfg` is cfh's ModelConfig (any object with its fields)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        D, C = cfg.width, cfg.num_cond_tokens
        L = (cfg.input_size // cfg.patch_size) ** 2
        P = cfg.patch_size**2 * cfg.in_channels
        self.x_embed = nn.Linear(P, D)
        self.t_embed = RefTimestepEmbedder(D)
        self.y_embed = nn.Embedding(cfg.num_classes + 1, C * D)
        self.cond_pos = nn.Parameter(torch.zeros(C, D))
        if cfg.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(L, D))
        else:
            self.register_buffer("pos_embed", torch.zeros(L, D), persistent=False)
        self.blocks = nn.ModuleList(
            [RefBlock(D, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)]
        )
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, P)

    @classmethod
    def from_cfh(cls, net: nn.Module) -> ReferenceCausalFusion:
        """A reference network holding a copy of cfh network `net`'s weights (and buffers)."""
        ref = cls(net.cfg).to(next(net.parameters()).device)
        ref.load_state_dict(net.state_dict())
        with torch.no_grad():
            ref.pos_embed.copy_(net.pos_embed)  # the sin-cos table is a non-persistent buffer
        return ref.train(net.training)

    @property
    def num_tokens(self) -> int:
        return self.pos_embed.shape[0]

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, p*p*C) in raster order."""
        p = self.cfg.patch_size
        B, c, H, _ = x.shape
        g = H // p
        x = x.reshape(B, c, g, p, g, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(B, g * g, p * p * c)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, p*p*C) -> (B, C, H, W)."""
        cfg, p = self.cfg, self.cfg.patch_size
        B, c, g = tokens.shape[0], cfg.in_channels, cfg.input_size // cfg.patch_size
        x = tokens.reshape(B, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(B, c, g * p, g * p)

    def embed_cond(self, y: torch.Tensor, force_drop_ids: torch.Tensor | None = None):
        """Labels -> (B, C, D) condition tokens, with label dropout in training (global RNG)."""
        cfg = self.cfg
        if force_drop_ids is not None:
            y = torch.where(force_drop_ids.bool(), cfg.num_classes, y)
        elif self.training and cfg.class_dropout > 0:
            drop = torch.rand(y.shape[0], device=y.device) < cfg.class_dropout
            y = torch.where(drop, cfg.num_classes, y)
        cond = self.y_embed(y).view(y.shape[0], cfg.num_cond_tokens, cfg.width)
        return cond + self.cond_pos

    def embed_clean(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Clean tokens (B, n, P) at positions (B, n) -> (B, n, D)."""
        return self.x_embed(tokens) + self.pos_embed[positions]

    def embed_noisy(self, tokens: torch.Tensor, positions: torch.Tensor, t: torch.Tensor):
        """Noisy tokens (B, n, P) at positions (B, n), timesteps (B,) -> (B, n, D)."""
        return self.embed_clean(tokens, positions) + self.t_embed(t)[:, None]

    def final(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states -> eps predictions."""
        return self.head(self.norm(h))

    def run_masked(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Every block over h (B, n, D) under an (n, n) mask (bool or additive float)."""
        if mask.dtype == torch.bool:
            mask = additive(mask)
        for block in self.blocks:
            h = block(h, mask)
        return h

    def forward(self, x0, xt, t, y, order, group_sizes, force_drop_ids=None) -> torch.Tensor:
        """Training pass: eps_hat (B, C, H, W), the same function as cfh's CausalFusion."""
        L, P = self.num_tokens, self.cfg.patch_size**2 * self.cfg.in_channels
        sizes = list(group_sizes)
        n_clean = L - sizes[-1]
        idx = order.unsqueeze(-1).expand(-1, -1, P)
        clean = self.patchify(x0).gather(1, idx[:, :n_clean])
        noisy = self.patchify(xt).gather(1, idx)
        h = torch.cat(
            [
                self.embed_cond(y, force_drop_ids),
                self.embed_clean(clean, order[:, :n_clean]),
                self.embed_noisy(noisy, order, t),
            ],
            dim=1,
        )
        mask = reference_mask(self.cfg.num_cond_tokens, sizes, h.device)  # rebuilt every step
        h = self.run_masked(h, mask)
        out = self.final(h[:, -L:])
        eps = torch.empty_like(out).scatter_(1, idx, out)
        return self.unpatchify(eps)


def _run_blocks(net: nn.Module, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The blocks of a reference or a cfh network over h under a boolean (n, n) mask."""
    if hasattr(net, "run_masked"):
        return net.run_masked(h, mask)
    for block in net.blocks:  # cfh: its own attention backend with a boolean mask
        h = block(h, mask)
    return h


@torch.no_grad()
def recompute_generate(
    net: nn.Module,
    sampler,
    y: torch.Tensor,
    positions: torch.Tensor,
    group_sizes: list[int],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample (B, C, H, W) like model.sampling.generate (no CFG, no context), without a KV cache.

    Every denoising step of group s runs [C cond][clean groups < s][noisy group s] through all
    blocks; noise is drawn in generate's order, so outputs match cfh's cached sampler.
    """
    was_training = net.training
    net.eval()
    try:
        B = y.shape[0]
        cfg = net.cfg
        P = cfg.patch_size**2 * cfg.in_channels
        L = net.num_tokens
        device = y.device
        tokens = torch.zeros(B, L, P, device=device)
        cond = net.embed_cond(y)
        clean: list[torch.Tensor] = []
        done: list[int] = []
        start = 0
        for g in group_sizes:
            pos = positions[:, start : start + g]
            start += g
            mask = prefix_mask(cfg.num_cond_tokens, done, g, device)
            noise_device = generator.device if generator is not None else device
            x = torch.randn((B, g, P), generator=generator, device=noise_device).to(device)
            for i, t in enumerate(sampler.timesteps):
                tt = torch.full((B,), t, dtype=torch.long, device=device)
                h = torch.cat([cond, *clean, net.embed_noisy(x, pos, tt)], dim=1)
                eps = net.final(_run_blocks(net, h, mask)[:, -g:])
                x = sampler.step(i, x, eps, generator)
            tokens.scatter_(1, pos.unsqueeze(-1).expand(-1, -1, P), x)
            clean.append(net.embed_clean(x, pos))
            done.append(g)
        return net.unpatchify(tokens)
    finally:
        net.train(was_training)
