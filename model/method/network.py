"""CausalFusion: a decoder-only diffusion transformer with dual (AR x noise) factorization.

One training forward runs the sequence [C condition tokens] + [clean tokens of AR groups 1..S-1]
+ [noisy tokens of groups 1..S] under the generalized causal mask (reference sections 2-3), so
every group is denoised given the clean groups before it. Sampling reuses the same blocks with a
KV cache (model/sampling.py). DiT-style, but conditioned in context: no adaLN.

With `text_vocab > 0` the same network is a joint image-text model (reference section 11): text
tokens are one more kind of token in the sequence, a condition before the image
(text-to-image), or a caption after the clean image predicted by a language-model head
(image-to-text); model/masks.py has the rules, model/joint.py the losses and decoding.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from core.choices import ATTENTIONS, POS_EMBEDS
from core.errors import UserError
from model.method.kv_cache import KVCache
from model.method.layers import TIME_FREQ_DIM, Block, TimestepEmbedder, sincos_2d
from model.method.masks import (
    check_group_sizes,
    flex_block_mask,
    generalized_causal_mask,
    joint_mask,
)

FLEX_BLOCK = 128  # flex pads the sequence to a multiple of this: few distinct compiled shapes


@dataclass
class ModelConfig:
    """Shape of a CausalFusion model; validated on construction (UserError on bad values)."""

    input_size: int  # H = W of the pixel or latent grid
    in_channels: int
    patch_size: int
    width: int
    depth: int
    heads: int
    num_classes: int
    num_cond_tokens: int = 4
    pos_embed: str = "sincos"  # sincos (fixed) | learned (initialised to sincos)
    mlp_ratio: float = 4.0
    class_dropout: float = 0.1
    attention: str = "sdpa"  # sdpa | flex
    grad_checkpointing: bool = False
    text_vocab: int = 0  # > 0: a joint image-text model with this many text token ids
    max_text_len: int = 0  # text positions (BOS and EOS included)

    def __post_init__(self):
        positive = ("input_size", "in_channels", "patch_size", "width", "depth", "heads")
        for name in (*positive, "num_classes", "num_cond_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"{name}={v!r} must be an int >= 1")
        if self.input_size % self.patch_size:
            raise UserError(
                f"patch_size={self.patch_size} must divide input_size={self.input_size}"
            )
        if self.width % self.heads:
            raise UserError(f"heads={self.heads} must divide width={self.width}")
        if self.pos_embed not in POS_EMBEDS:
            raise UserError(f"pos_embed={self.pos_embed!r} must be one of {', '.join(POS_EMBEDS)}")
        if self.width % 4:
            raise UserError(f"width={self.width} must be a multiple of 4 (2D sin-cos embedding)")
        if self.attention not in ATTENTIONS:
            raise UserError(f"attention={self.attention!r} must be one of {', '.join(ATTENTIONS)}")
        if not 0.0 <= self.class_dropout < 1.0:
            raise UserError(f"class_dropout={self.class_dropout!r} must be in [0, 1)")
        if not self.mlp_ratio > 0:
            raise UserError(f"mlp_ratio={self.mlp_ratio!r} must be > 0")
        for name in ("text_vocab", "max_text_len"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise UserError(f"{name}={v!r} must be an int >= 0")
        if self.text_vocab and self.max_text_len < 2:
            raise UserError(f"max_text_len={self.max_text_len} must be >= 2 (BOS, EOS) with text")
        if self.text_vocab and self.attention != "sdpa":
            raise UserError("joint image-text models need model.attention=sdpa (per-sample masks)")

    @property
    def grid(self) -> int:
        return self.input_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid**2

    @property
    def token_dim(self) -> int:
        return self.patch_size**2 * self.in_channels


def sequence_length(cfg: ModelConfig, group_sizes: list[int]) -> int:
    """Training sequence length n = C + (L - g_S) + L for a split."""
    return cfg.num_cond_tokens + 2 * cfg.num_tokens - group_sizes[-1]


class CausalFusion(nn.Module):
    """Decoder-only transformer over [condition, clean groups, noisy groups] (reference 2-3)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        D, P, C, L = cfg.width, cfg.token_dim, cfg.num_cond_tokens, cfg.num_tokens
        self.x_embed = nn.Linear(P, D)  # shared by clean and noisy tokens
        self.t_embed = TimestepEmbedder(D)
        self.y_embed = nn.Embedding(cfg.num_classes + 1, C * D)  # id num_classes = null class
        self.cond_pos = nn.Parameter(torch.zeros(C, D))
        if cfg.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(L, D))
        else:
            self.register_buffer("pos_embed", torch.zeros(L, D), persistent=False)
        self.blocks = nn.ModuleList([Block(D, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, P)
        if cfg.text_vocab:
            self.text_embed = nn.Embedding(cfg.text_vocab, D)
            self.text_pos = nn.Parameter(torch.zeros(cfg.max_text_len, D))
            self.lm_head = nn.Linear(D, cfg.text_vocab)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's init: xavier linears, N(0, 0.02) embeddings, sin-cos positions, zero output."""

        def _basic(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

        self.apply(_basic)
        nn.init.normal_(self.y_embed.weight, std=0.02)
        nn.init.normal_(self.cond_pos, std=0.02)
        nn.init.normal_(self.t_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[2].weight, std=0.02)
        with torch.no_grad():
            self.pos_embed.copy_(sincos_2d(self.cfg.width, self.cfg.grid))
        # a zero output layer makes the untrained model predict eps = 0 (loss starts at 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        if self.cfg.text_vocab:
            nn.init.normal_(self.text_embed.weight, std=0.02)
            nn.init.normal_(self.text_pos, std=0.02)
            nn.init.zeros_(self.lm_head.weight)  # uniform next-token guess (loss log V) at start
            nn.init.zeros_(self.lm_head.bias)

    @property
    def num_tokens(self) -> int:
        return self.cfg.num_tokens

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, p*p*C), tokens in raster order."""
        cfg, p = self.cfg, self.cfg.patch_size
        if tuple(x.shape[1:]) != (cfg.in_channels, cfg.input_size, cfg.input_size):
            raise UserError(
                f"image shape {tuple(x.shape[1:])} must be "
                f"{(cfg.in_channels, cfg.input_size, cfg.input_size)} (C, H, W)"
            )
        return rearrange(x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p)  # (B, L, P)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, p*p*C) in raster order -> (B, C, H, W)."""
        p, g = self.cfg.patch_size, self.cfg.grid
        return rearrange(tokens, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=g, p1=p, p2=p)

    def embed_cond(self, y: torch.Tensor, force_drop_ids: torch.Tensor | None = None):
        """Labels (B,) -> (B, C, D) condition tokens; label dropout to the null class in training.

        `force_drop_ids` (B,) bool replaces the random dropout (for CFG); labels equal to
        num_classes are the null class already.
        """
        cfg = self.cfg
        if force_drop_ids is not None:
            y = torch.where(force_drop_ids.bool(), cfg.num_classes, y)
        elif self.training and cfg.class_dropout > 0:
            drop = torch.rand(y.shape[0], device=y.device) < cfg.class_dropout  # global RNG
            y = torch.where(drop, cfg.num_classes, y)
        cond = self.y_embed(y).view(y.shape[0], cfg.num_cond_tokens, cfg.width)  # (B, C, D)
        return cond + self.cond_pos  # (B, C, D)

    def embed_clean(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Clean tokens (B, n, P) at image positions (B, n) -> (B, n, D)."""
        return self.x_embed(tokens) + self.pos_embed[positions]

    def embed_noisy(self, tokens: torch.Tensor, positions: torch.Tensor, t: torch.Tensor):
        """Noisy tokens (B, n, P) at positions (B, n), timesteps (B,) -> (B, n, D)."""
        return self.embed_clean(tokens, positions) + self.t_embed(t)[:, None]

    def final(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, n, D) -> eps predictions (B, n, P)."""
        return self.head(self.norm(h))

    def embed_text(self, tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Text token ids (B, T) at text positions start..start+T-1 -> (B, T, D)."""
        if not self.cfg.text_vocab:
            raise UserError("this model has no text tokens (trained without captions)")
        T = tokens.shape[1]
        if start + T > self.cfg.max_text_len:
            raise UserError(
                f"text of {start + T} tokens exceeds max_text_len={self.cfg.max_text_len}"
            )
        return self.text_embed(tokens) + self.text_pos[start : start + T]

    def text_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, T, D) of text tokens -> next-token logits (B, T, V)."""
        return self.lm_head(self.norm(h))

    def run_blocks(
        self,
        h: torch.Tensor,
        group_sizes: list[int] | None,
        out_from: int = 0,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """All blocks over a full training sequence (B, n, D) under the generalized causal mask.

        Returns the final hidden states of tokens out_from..n-1, (B, n - out_from, D). The last
        block computes only those rows: earlier rows serve it as keys and values alone. `mask`
        ((n, n) or per-sample (B, 1, n, n) bool) replaces the class-conditional mask (joint
        image-text sequences).
        """
        C, n = self.cfg.num_cond_tokens, h.shape[1]
        if mask is not None:
            pass
        elif self.cfg.attention == "flex":
            total = -(-n // FLEX_BLOCK) * FLEX_BLOCK
            mask = flex_block_mask(C, group_sizes, h.device, total)
            h = F.pad(h, (0, 0, 0, total - n))  # (B, total, D); padding sees only padding
        else:
            mask = generalized_causal_mask(C, group_sizes, h.device)  # (n, n)
        ckpt = self.cfg.grad_checkpointing and self.training and torch.is_grad_enabled()
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            rows_from = out_from if i == last else 0
            if ckpt:
                h = checkpoint(block, h, mask, None, 0, False, rows_from, use_reentrant=False)
            else:
                h = block(h, mask, rows_from=rows_from)
        return h[:, : n - out_from]  # (B, n - out_from, D)

    def run_cached(
        self,
        h: torch.Tensor,
        cache: KVCache,
        append: bool,
        mask: torch.Tensor | None = None,
        visible: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """All blocks over new tokens (B, N, D) attending to the cache and to each other.

        append=True stores the tokens' keys/values (condition or clean tokens); append=False is a
        query pass (noisy tokens) that leaves the cache unchanged. `mask` (N, len(cache) + N)
        bool restricts the new tokens (causal text); None lets them see everything. `visible`
        (B, N) bool: which appended tokens later queries may see (None = all).
        """
        for i, block in enumerate(self.blocks):
            h = block(h, mask, cache, i, append)  # (B, N, D)
        if append:
            cache.extend_visible(h.shape[0], h.shape[1], visible)
        return h

    def forward(
        self,
        x0: torch.Tensor,
        xt: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        order: torch.Tensor,
        group_sizes: list[int],
        force_drop_ids: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        text_visible: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Training pass: eps_hat (B, C, H, W) for every token of xt, in image layout.

        x0, xt: (B, C, H, W) clean and noised inputs; t: (B,) long; y: (B,) long labels;
        order: (B, L) long, AR token k is image position order[:, k]; group_sizes sum to L.
        text: (B, T) token ids conditioning the image (text-to-image), with text_visible (B, T)
        bool: which of them the image may see (False for padding and dropped captions).
        mask: instead of group_sizes, the (n, n) mask of a split whose clean part is padded to
        n - C - L tokens (masks.token_layout's clean_len): the clean part holds the first of
        them in AR order, the mask hides the pads; a compiled step then sees only the shape.
        """
        L, P = self.num_tokens, self.cfg.token_dim
        if mask is None:
            sizes = check_group_sizes(group_sizes, L)
            n_clean = L - sizes[-1]
        elif text is not None:
            raise ValueError("a padded mask and text cannot be combined")
        else:
            sizes, n_clean = None, mask.shape[-1] - self.cfg.num_cond_tokens - L
        if order.shape != (x0.shape[0], L):
            raise UserError(f"order shape {tuple(order.shape)} must be {(x0.shape[0], L)}")
        idx = order.unsqueeze(-1).expand(-1, -1, P)  # (B, L, P)
        clean = self.patchify(x0).gather(1, idx[:, :n_clean])  # (B, L - g_S, P), AR order
        noisy = self.patchify(xt).gather(1, idx)  # (B, L, P), AR order
        parts = [self.embed_cond(y, force_drop_ids)]  # (B, C, D)
        if text is not None:
            parts.append(self.embed_text(text))  # (B, T, D)
            mask = self._text_first_mask(sizes, text_visible)  # (B, 1, n, n)
        parts += [
            self.embed_clean(clean, order[:, :n_clean]),  # (B, L - g_S, D)
            self.embed_noisy(noisy, order, t),  # (B, L, D)
        ]
        h = torch.cat(parts, dim=1)  # (B, n, D)
        h = self.run_blocks(h, sizes, out_from=h.shape[1] - L, mask=mask)  # (B, L, D): noisy
        out = self.final(h)  # (B, L, P), AR order
        eps = torch.empty_like(out).scatter_(1, idx, out)  # (B, L, P), raster order
        return self.unpatchify(eps)  # (B, C, H, W)

    def _text_first_mask(self, sizes: list[int], text_visible: torch.Tensor) -> torch.Tensor:
        """(B, 1, n, n) mask of [cond, text, clean, noisy]: padding and dropped text unseen."""
        B, T = text_visible.shape
        C, device = self.cfg.num_cond_tokens, text_visible.device
        base = joint_mask(C, sizes, T, text_first=True, device=device)  # (n, n)
        keys = torch.ones(B, base.shape[0], dtype=torch.bool, device=device)
        keys[:, C : C + T] = text_visible
        return (base[None] & keys[:, None, :])[:, None]  # (B, 1, n, n)

    def caption_logits(self, x0: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Image-to-text pass: next-token logits (B, T, V) for text (B, T) after the clean x0.

        The sequence is [null-class condition, the whole image clean (raster order), text]; each
        text token sees the condition, every image token and the text up to itself.
        """
        B, L, C, T = x0.shape[0], self.num_tokens, self.cfg.num_cond_tokens, text.shape[1]
        positions = torch.arange(L, device=x0.device).expand(B, L)
        null = torch.full((B,), self.cfg.num_classes, dtype=torch.long, device=x0.device)
        h = torch.cat(
            [
                self.embed_cond(null),  # (B, C, D)
                self.embed_clean(self.patchify(x0), positions),  # (B, L, D)
                self.embed_text(text),  # (B, T, D)
            ],
            dim=1,
        )  # (B, C + L + T, D)
        mask = joint_mask(C, [L], T, text_first=False, device=x0.device)  # (n, n)
        h = self.run_blocks(h, [L], out_from=C + L, mask=mask)  # (B, T, D)
        return self.text_logits(h)  # (B, T, V)


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; the fixed sin-cos table is a buffer, not counted)."""
    return sum(p.numel() for p in model.parameters())


def train_flops_per_image(cfg: ModelConfig, mean_seq_len: float) -> float:
    """Matmul FLOPs of one training image (forward + backward = 3 x forward).

    Forward, with n = sequence length, D = width, F = MLP hidden, P = token dim, C = cond tokens:
      blocks:     depth * [2 n (4 D^2 + 2 D F)  +  4 n^2 D]   (qkv, proj, MLP; QK^T and AV, dense)
      embeddings: 2 (n - C) P D  (patch embedding of clean + noisy tokens)
                  + 2 L D P      (output layer on the L noisy tokens)
                  + 2 (256 D + D^2)  (timestep MLP)
    The last block's outputs are needed for the L noisy tokens only, so for its r = n - L other
    rows it computes keys and values alone: no query projection, attention, output projection
    or MLP, i.e. r (4 D^2 + 4 D F + 4 n D) fewer FLOPs.
    Attention is counted dense over the whole sequence (what SDPA computes with a boolean mask).
    With a varying split, n^2 uses mean_seq_len^2, which slightly undercounts E[n^2].
    """
    n, D, P, C, L = mean_seq_len, cfg.width, cfg.token_dim, cfg.num_cond_tokens, cfg.num_tokens
    F_ = int(D * cfg.mlp_ratio)
    blocks = cfg.depth * (2 * n * (4 * D * D + 2 * D * F_) + 4 * n * n * D)
    blocks -= (n - L) * (4 * D * D + 4 * D * F_ + 4 * n * D)  # the last block's unused rows
    embed = 2 * (n - C) * P * D + 2 * L * D * P + 2 * (TIME_FREQ_DIM * D + D * D)
    return 3.0 * (blocks + embed)


def CausalFusion_T(**kw) -> CausalFusion:
    return CausalFusion(ModelConfig(width=128, depth=4, heads=4, **kw))


def CausalFusion_XS(**kw) -> CausalFusion:
    return CausalFusion(ModelConfig(width=256, depth=6, heads=4, **kw))


def CausalFusion_S(**kw) -> CausalFusion:
    return CausalFusion(ModelConfig(width=384, depth=12, heads=6, **kw))


def CausalFusion_B(**kw) -> CausalFusion:
    return CausalFusion(ModelConfig(width=768, depth=12, heads=12, **kw))


def CausalFusion_L(**kw) -> CausalFusion:
    return CausalFusion(ModelConfig(width=1024, depth=24, heads=16, **kw))


def CausalFusion_XL(**kw) -> CausalFusion:
    return CausalFusion(ModelConfig(width=1280, depth=32, heads=20, **kw))


def CausalFusion_H(**kw) -> CausalFusion:
    return CausalFusion(ModelConfig(width=1408, depth=40, heads=22, **kw))


def CausalFusion_ablation(**kw) -> CausalFusion:
    kw = {"num_cond_tokens": 4, "pos_embed": "sincos", **kw}  # paper Table 9
    return CausalFusion(ModelConfig(width=1024, depth=24, heads=16, **kw))


SIZES = {
    "T": CausalFusion_T,
    "XS": CausalFusion_XS,
    "S": CausalFusion_S,
    "B": CausalFusion_B,
    "L": CausalFusion_L,
    "XL": CausalFusion_XL,
    "H": CausalFusion_H,
    "ablation": CausalFusion_ablation,
}


def build_model(size: str, **kwargs) -> CausalFusion:
    """Build a registered size; kwargs are the other ModelConfig fields (input_size, ...)."""
    if size not in SIZES:
        raise UserError(f"model size {size!r} is unknown; allowed: {', '.join(SIZES)}")
    fixed_names = {"width", "depth", "heads"}
    fixed = sorted(fixed_names & kwargs.keys())
    if fixed:
        raise UserError(f"{', '.join(fixed)} are fixed by model size {size!r}; do not pass them")
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(kwargs.keys() - fields.keys())
    if unknown:
        raise UserError(
            f"unknown model option(s) {', '.join(unknown)}; allowed: {', '.join(fields)}"
        )
    missing = [
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING and name not in kwargs and name not in fixed_names
    ]
    if missing:
        raise UserError(f"build_model({size!r}) needs {', '.join(missing)}")
    return SIZES[size](**kwargs)
