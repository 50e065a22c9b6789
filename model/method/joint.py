"""Joint image generation and captioning in one causal model (reference section 11).

A joint model is a CausalFusion network with text tokens (ModelConfig.text_vocab > 0). Each
training sample is one of two sequences, drawn per sample (train.joint.caption_prob):

  text-to-image  [null condition] [BOS caption EOS] [clean groups] [noisy groups]
                 the caption is the condition (hidden with probability train.joint.text_dropout,
                 which classifier-free guidance needs); the diffusion loss, AR splits, orders and
                 weightings are the class-conditional ones.
  image-to-text  [null condition] [the whole image, clean] [BOS caption EOS]
                 next-token cross-entropy on the caption, which sees all of the image.

The loss is loss_diffusion + train.joint.text_weight * loss_text (each a mean over its part of
the batch). Captions decode with a KV cache: greedy (deterministic), beam search, or nucleus
sampling from per-sample streams.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.choices import DECODERS
from core.errors import UserError
from model.method.diffusion import Diffusion, causalfusion_loss
from model.method.kv_cache import KVCache
from model.method.network import CausalFusion
from model.method.noise import NoiseSource, uniform
from model.method.text_tokens import BOS, EOS, PAD


def trim_text(text: torch.Tensor) -> torch.Tensor:
    """(B, T) padded ids -> (B, T') with T' the longest row (fewer tokens to run)."""
    lengths = (text != PAD).sum(1)
    return text[:, : max(int(lengths.max()), 2)] if text.numel() else text


class JointObjective(nn.Module):
    """Both losses of one joint batch in one forward (so DDP can wrap this module)."""

    def __init__(self, net: CausalFusion):
        super().__init__()
        self.net = net

    def forward(
        self,
        diffusion: Diffusion,
        x0: torch.Tensor,
        text: torch.Tensor,
        captioning: torch.Tensor,
        drop_text: torch.Tensor,
        order: torch.Tensor,
        group_sizes: list[int],
        ar_weights: torch.Tensor,
        noise_weighting: str,
        min_snr_gamma: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss_diffusion, loss_text); a part with no samples in this batch contributes 0.

        x0: (B, C, H, W); text: (B, T) BOS .. EOS PAD..; captioning, drop_text: (B,) bool.
        """
        net = self.net
        zero = x0.new_zeros(())
        gen = ~captioning
        loss_d = loss_t = zero
        if bool(gen.any()):
            tg = trim_text(text[gen])  # (Bg, T)
            visible = (tg != PAD) & ~drop_text[gen, None]  # (Bg, T)
            null = torch.full((tg.shape[0],), net.cfg.num_classes, device=x0.device)
            loss_d, _ = causalfusion_loss(
                net,
                diffusion,
                x0[gen],
                null,
                order[gen],
                group_sizes,
                ar_weights,
                noise_weighting=noise_weighting,
                min_snr_gamma=min_snr_gamma,
                model_kwargs={"text": tg, "text_visible": visible},
            )
        if bool(captioning.any()):
            tc = trim_text(text[captioning])  # (Bc, T)
            logits = net.caption_logits(x0[captioning], tc[:, :-1])  # (Bc, T-1, V)
            loss_t = F.cross_entropy(
                logits.flatten(0, 1).float(), tc[:, 1:].flatten(), ignore_index=PAD
            )
        # parameters of an empty part still join the graph (DDP expects every gradient)
        if bool(gen.all()) or bool(captioning.all()):  # only then is a part empty
            loss_d = loss_d + sum(p.sum() for p in net.parameters()) * 0.0
        return loss_d, loss_t


def image_cache(net: CausalFusion, x0: torch.Tensor) -> KVCache:
    """A cache holding the null condition and the whole clean image (B, C, H, W)."""
    B, L = x0.shape[0], net.num_tokens
    cache = KVCache(net.cfg.depth)
    drop = torch.ones(B, dtype=torch.bool, device=x0.device)
    net.run_cached(
        net.embed_cond(torch.zeros(B, dtype=torch.long, device=x0.device), drop), cache, True
    )
    positions = torch.arange(L, device=x0.device).expand(B, L)
    net.run_cached(net.embed_clean(net.patchify(x0), positions), cache, append=True)
    return cache


def _step_logits(net: CausalFusion, cache: KVCache, tokens: torch.Tensor, at: int):
    """Append text tokens (B, 1) at text position `at`; their next-token log-probs (B, V)."""
    h = net.run_cached(net.embed_text(tokens, start=at), cache, append=True)  # (B, 1, D)
    logits = net.text_logits(h)[:, -1].float()  # (B, V)
    logits[:, PAD] = logits[:, BOS] = -torch.inf  # never generated
    return logits.log_softmax(-1)


@torch.no_grad()
def caption_images(
    net: CausalFusion,
    x0: torch.Tensor,
    max_len: int | None = None,
    method: str = "greedy",
    beams: int = 4,
    top_p: float = 0.9,
    generator: NoiseSource = None,
) -> list[list[int]]:
    """Caption ids (without BOS/EOS) of each image (B, C, H, W), at most max_len tokens with them.

    greedy: the most likely next token; beam: the best of `beams` hypotheses by mean log-prob;
    nucleus: a sample from the smallest set of tokens with probability >= top_p, drawn from
    `generator` (per-sample streams give each image the same caption in any batch).
    """
    if method not in DECODERS:
        raise UserError(f"caption.method={method!r} must be one of {', '.join(DECODERS)}")
    if not net.cfg.text_vocab:
        raise UserError(
            "this run was trained without captions (no text tokens); train a joint model"
        )
    max_len = min(max_len or net.cfg.max_text_len, net.cfg.max_text_len)
    was_training = net.training
    net.eval()
    try:
        if method == "beam":
            return _beam(net, x0, max_len, beams)
        return _sample_tokens(net, x0, max_len, method, top_p, generator)
    finally:
        net.train(was_training)


def _sample_tokens(net, x0, max_len, method, top_p, generator) -> list[list[int]]:
    B, device = x0.shape[0], x0.device
    cache = image_cache(net, x0)
    token = torch.full((B, 1), BOS, dtype=torch.long, device=device)
    out = torch.full((B, max_len - 1), EOS, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for i in range(max_len - 1):
        logp = _step_logits(net, cache, token, i)  # (B, V)
        if i == max_len - 2:  # the last position must close the caption
            nxt = torch.full((B,), EOS, dtype=torch.long, device=device)
        elif method == "greedy":
            nxt = logp.argmax(-1)
        else:
            nxt = _nucleus(logp, top_p, uniform(generator, (B,), device))
        nxt = torch.where(done, EOS, nxt)
        out[:, i] = nxt
        done |= nxt == EOS
        if bool(done.all()):
            break
        token = nxt[:, None]
    return [_strip(row) for row in out.tolist()]


def _nucleus(logp: torch.Tensor, top_p: float, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw (u (B,) in [0, 1)) from the top-p part of each row of log-probs."""
    probs, ids = logp.exp().sort(-1, descending=True)  # (B, V)
    keep = probs.cumsum(-1) - probs < top_p  # the tokens before the mass reaches top_p, + 1
    probs = probs * keep
    cdf = probs.cumsum(-1) / probs.sum(-1, keepdim=True)
    pick = (cdf < u[:, None]).sum(-1).clamp(max=probs.shape[1] - 1)  # (B,)
    return ids.gather(1, pick[:, None])[:, 0]


def _beam(net: CausalFusion, x0: torch.Tensor, max_len: int, beams: int) -> list[list[int]]:
    B, K, device = x0.shape[0], beams, x0.device
    cache = image_cache(net, x0.repeat_interleave(K, 0))  # (B*K, ...)
    seqs = torch.full((B * K, 0), EOS, dtype=torch.long, device=device)
    score = torch.zeros(B, K, device=device)
    score[:, 1:] = -torch.inf  # the beams start identical: expand the first one only
    length = torch.zeros(B, K, device=device)
    done = torch.zeros(B * K, dtype=torch.bool, device=device)
    token = torch.full((B * K, 1), BOS, dtype=torch.long, device=device)
    for i in range(max_len - 1):
        logp = _step_logits(net, cache, token, i)  # (B*K, V)
        V = logp.shape[1]
        if i == max_len - 2:  # the last position must close the caption
            eos_only = torch.full_like(logp, -torch.inf)
            eos_only[:, EOS] = logp[:, EOS]
            logp = eos_only
        # a finished beam stays as it is: one continuation (EOS) at no cost
        finished = torch.full_like(logp, -torch.inf)
        finished[:, EOS] = 0.0
        logp = torch.where(done[:, None], finished, logp)
        total = (score.view(-1, 1) + logp).view(B, K * V)  # (B, K*V)
        best, flat = total.topk(K, dim=1)  # (B, K)
        parent = flat // V + torch.arange(B, device=device)[:, None] * K  # (B, K) rows
        nxt = (flat % V).view(-1)  # (B*K,)
        rows = parent.view(-1)
        was_done = done[rows]
        cache.select(rows)
        seqs = torch.cat([seqs[rows], nxt[:, None]], 1)
        length = length.view(-1)[rows].view(B, K) + (~was_done).view(B, K).float()
        score = best
        done = was_done | (nxt == EOS)
        if bool(done.all()):
            break
        token = nxt[:, None]
    mean = score / length.clamp(min=1)  # mean log-prob per generated token, EOS included
    pick = mean.argmax(1) + torch.arange(B, device=device) * K
    return [_strip(row) for row in seqs[pick].tolist()]


def _strip(ids: list[int]) -> list[int]:
    """Ids up to (without) the first EOS."""
    return ids[: ids.index(EOS)] if EOS in ids else ids
