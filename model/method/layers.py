"""The network's layers: 2D sin-cos positions, timestep embedder, attention, block."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.method.kv_cache import KVCache

TIME_FREQ_DIM = 256


def sincos_2d(width: int, grid: int) -> torch.Tensor:
    """(grid*grid, width) fixed 2D sin-cos table: half the channels encode the row, half the col."""
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    r, c = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")

    def encode(pos):
        angles = pos.flatten().double()[:, None] * omega[None]  # (L, width/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (L, width/2)

    return torch.cat([encode(r), encode(c)], dim=1).float()


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of t (256 frequencies) -> MLP -> width."""

    def __init__(self, width: int, freq_dim: int = TIME_FREQ_DIM):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        k = torch.arange(half, device=t.device, dtype=torch.float32)
        freqs = torch.exp(-math.log(10000.0) * k / half)  # (half,)
        angles = t.float()[:, None] * freqs[None]  # (B, half)
        feats = torch.cat([angles.cos(), angles.sin()], dim=-1)  # (B, freq_dim)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))  # (B, width)


_compiled_flex = None


def _flex_attention(q, k, v, block_mask):
    from torch.nn.attention.flex_attention import flex_attention

    global _compiled_flex
    if torch.compiler.is_compiling():  # inside a compiled block (train.compile): inductor lowers it
        return flex_attention(q, k, v, block_mask=block_mask)
    if q.is_cuda:  # eager flex is an unfused reference implementation: compile it on GPU
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention, dynamic=False)
        return _compiled_flex(q, k, v, block_mask=block_mask)
    return flex_attention(q, k, v, block_mask=block_mask)


class Attention(nn.Module):
    """Multi-head self-attention: no qkv bias, LayerNorm on each head's queries and keys."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width)
        self.q_norm = nn.LayerNorm(width // heads)
        self.k_norm = nn.LayerNorm(width // heads)

    def forward(
        self, x, mask=None, cache: KVCache | None = None, layer=0, append=False, rows_from=0
    ):
        """Attention output (B, N - rows_from, D) for the queries x[:, rows_from:].

        Every row still provides keys and values; rows before `rows_from` only do that (the last
        block of a training pass needs outputs for the noisy tokens alone).
        """
        B, N, D = x.shape
        h, hd, Nq = self.heads, D // self.heads, N - rows_from
        # three projections from the one (3D, D) weight (the state dict is unchanged): q only for
        # the rows that need outputs, and contiguous (B, N, h, hd) q and k for their LayerNorms
        wq, wk, wv = self.qkv.weight.chunk(3)
        q = self.q_norm(F.linear(x[:, rows_from:], wq).view(B, Nq, h, hd)).transpose(1, 2)
        k = self.k_norm(F.linear(x, wk).view(B, N, h, hd)).transpose(1, 2)  # (B, h, N, hd)
        v = F.linear(x, wv).view(B, N, h, hd).transpose(1, 2)  # (B, h, N, hd)
        if cache is not None:
            mask = cache.key_mask(N, mask)  # before attend: visible covers the older tokens
            k, v = cache.attend(layer, k, v, append)  # (B, h, T + N, hd)
        if mask is None or isinstance(mask, torch.Tensor):
            sub = mask[..., rows_from:, :] if mask is not None else None  # (n,n) or (B,1,n,n)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=sub)  # (B, h, Nq, hd)
        else:
            q = F.pad(q, (0, 0, rows_from, 0))  # flex's block mask is square: pad, drop after
            o = _flex_attention(q, k, v, block_mask=mask)[:, :, rows_from:]  # (B, h, Nq, hd)
        return self.proj(o.transpose(1, 2).reshape(B, Nq, D))  # (B, Nq, D)


class Block(nn.Module):
    """Pre-LN transformer block: attention, then a tanh-GELU MLP, both residual."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width)
        )

    def forward(
        self, x, mask=None, cache: KVCache | None = None, layer=0, append=False, rows_from=0
    ):
        """(B, N, D) -> (B, N - rows_from, D): the outputs of rows rows_from.. only."""
        a = self.attn(self.norm1(x), mask, cache, layer, append, rows_from)  # (B, Nq, D)
        x = x[:, rows_from:] + a  # (B, Nq, D)
        return x + self.mlp(self.norm2(x))  # (B, Nq, D)
