"""Sampling with S_eval AR steps and a KV cache (reference section 8), CFG, in-context prefixes.

1. The condition tokens run once and their keys/values go into the cache; so do the clean tokens
   of a given context (inpainting/outpainting), if any.
2. Each group starts from noise and is denoised over the sampler's timesteps; every step attends
   to the cache and to the group itself, and leaves the cache unchanged.
3. The group's final clean tokens run once more, appending their keys/values to the cache.
Because clean tokens never attend to noisy ones, this computes exactly what one forward pass with
the generalized causal mask computes for the same tokens (tests/model/test_sampling.py).

With per-sample noise (model.noise.SampleNoise) a sample does not depend on the batch it is
computed in. On the CPU that also needs batch-invariant matmuls: MKL's small-matrix kernels
round differently for fewer than about 12 rows (measured: 1-3, 5-7, 9-11 rows differ from the
same rows inside a large matmul), so a batch below MIN_CPU_BATCH samples is padded to it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from core.errors import UserError
from model.method.ar import equal_group_sizes, token_order
from model.method.diffusion import Sampler
from model.method.kv_cache import KVCache
from model.method.masks import check_group_sizes
from model.method.network import CausalFusion
from model.method.noise import NoiseSource, SampleNoise, normal

MIN_CPU_BATCH = 16  # every matmul then has >= 16 rows: batch-invariant rounding on CPU

# callback(group, step, t, x_t, eps): x_t and the (guided) eps of a group's tokens, (B, g, P)
StepCallback = Callable[[int, int, int, torch.Tensor, torch.Tensor], None]


def _unwrap(model) -> CausalFusion:
    return getattr(model, "module", model)  # DDP / compiled wrappers keep the model in .module


def _check_positions(name: str, pos: torch.Tensor, batch: int, L: int) -> None:
    if pos.dim() != 2 or pos.shape[0] != batch:
        raise UserError(f"{name} shape {tuple(pos.shape)} must be (B={batch}, n)")
    if pos.numel() and (pos.min() < 0 or pos.max() >= L):
        raise UserError(f"{name} must hold image positions in 0..L-1={L - 1}")


@torch.no_grad()
def generate(
    model: CausalFusion,
    sampler: Sampler,
    y: torch.Tensor,
    positions: torch.Tensor,
    group_sizes: list[int],
    cfg_scale: float = 1.0,
    cfg_interval: tuple[float, float] | None = None,
    generator: NoiseSource = None,
    context: torch.Tensor | None = None,
    context_positions: torch.Tensor | None = None,
    callback: StepCallback | None = None,
    text: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generate the tokens at `positions` (B, M) in AR order, split into `group_sizes` (sum M).

    y: (B,) labels (num_classes = the null class). context: (B, C, H, W) images whose tokens at
    context_positions (B, K) are given clean and cached first; they are copied to the output
    bitwise, and positions neither given nor generated stay zero. cfg_scale != 1 batch-doubles
    with null labels: eps = eps_u + s (eps_c - eps_u), only for t in the half-open interval
    t_low <= t < t_high of cfg_interval = (t_low, t_high) when given, as the official code
    (plain conditional eps elsewhere). Noise comes from `generator`: a SampleNoise (one stream
    per sample, so a sample is the same in any batch), a torch.Generator (one stream for the
    batch) or None (the global RNG). text: (B, T) prompt token ids (BOS .. EOS, no padding) of
    a joint model, cached causally after the condition tokens; with guidance the unconditional
    half hides them (as text dropout in training). Returns (B, C, H, W).
    """
    B = y.shape[0]
    if isinstance(generator, SampleNoise) and y.device.type == "cpu" and B < MIN_CPU_BATCH:
        pad = MIN_CPU_BATCH - B

        def rows(a: torch.Tensor | None) -> torch.Tensor | None:
            return None if a is None else torch.cat([a, a[:1].expand(pad, *a.shape[1:])])

        def real_rows(group: int, step: int, t: int, x: torch.Tensor, eps: torch.Tensor) -> None:
            assert callback is not None
            callback(group, step, t, x[:B], eps[:B])

        padded = generate(
            model,
            sampler,
            rows(y),  # type: ignore[arg-type]
            rows(positions),  # type: ignore[arg-type]
            group_sizes,
            cfg_scale,
            cfg_interval,
            generator.padded(MIN_CPU_BATCH),
            rows(context),
            rows(context_positions),
            None if callback is None else real_rows,
            rows(text),
        )
        return padded[:B]
    net = _unwrap(model)
    cfg = net.cfg
    B, L, P = y.shape[0], net.num_tokens, cfg.token_dim
    device = y.device
    _check_positions("positions", positions, B, L)
    sizes = check_group_sizes(group_sizes, positions.shape[1], total_name="M (positions)")
    guided = cfg_scale != 1.0

    tokens = torch.zeros(B, L, P, device=device, dtype=net.x_embed.weight.dtype)  # raster order
    given = torch.zeros(B, L, dtype=torch.bool, device=device)
    if context is not None:
        if context_positions is None:
            raise UserError("context_positions is required with context")
        _check_positions("context_positions", context_positions, B, L)
        tokens = net.patchify(context).clone()  # (B, L, P)
        given.scatter_(1, context_positions, True)
    else:
        context_positions = None
    generated = torch.zeros_like(given).scatter_(1, positions, True)
    if int(generated.sum()) != positions.numel():
        raise UserError("positions must not repeat a position within a sample")
    if (generated & given).any():
        raise UserError("positions and context_positions must not overlap")

    was_training = net.training
    net.eval()
    try:
        double = (lambda a: torch.cat([a, a])) if guided else (lambda a: a)
        labels = torch.cat([y, torch.full_like(y, cfg.num_classes)]) if guided else y
        cache = KVCache(cfg.depth)
        net.run_cached(net.embed_cond(labels), cache, append=True)  # (2B or B, C, D)
        if text is not None:
            T, C = text.shape[1], len(cache)
            causal = torch.ones(T, C + T, dtype=torch.bool, device=device).tril(diagonal=C)
            hide = None
            if guided:
                hide = torch.ones(2 * B, T, dtype=torch.bool, device=device)
                hide[B:] = False  # the unconditional half: no text to see
            h = net.embed_text(double(text))  # (2B or B, T, D)
            net.run_cached(h, cache, append=True, mask=causal, visible=hide)
        if context_positions is not None and context_positions.shape[1] > 0:
            idx = context_positions.unsqueeze(-1).expand(-1, -1, P)
            clean = net.embed_clean(tokens.gather(1, idx), context_positions)  # (B, K, D)
            net.run_cached(double(clean), cache, append=True)
        cond_cache = cache.batch_slice(0, B) if guided else cache

        start = 0
        for s, g in enumerate(sizes):
            pos = positions[:, start : start + g]  # (B, g)
            start += g
            shape = (B, g, P)
            x = normal(generator, shape, device).to(tokens.dtype)
            for i, t in enumerate(sampler.timesteps):
                tt = torch.full((B,), t, dtype=torch.long, device=device)
                use_cfg = guided and (
                    cfg_interval is None or cfg_interval[0] <= t < cfg_interval[1]
                )
                if use_cfg:
                    h = net.embed_noisy(double(x), double(pos), double(tt))  # (2B, g, D)
                    out = net.final(net.run_cached(h, cache, append=False))  # (2B, g, P)
                    eps_c, eps_u = out[:B], out[B:]
                    eps = eps_u + cfg_scale * (eps_c - eps_u)
                else:
                    h = net.embed_noisy(x, pos, tt)  # (B, g, D)
                    eps = net.final(net.run_cached(h, cond_cache, append=False))  # (B, g, P)
                if callback is not None:
                    callback(s, i, t, x, eps)
                x = sampler.step(i, x, eps, generator)
            tokens.scatter_(1, pos.unsqueeze(-1).expand(-1, -1, P), x)
            if s < len(sizes) - 1:  # the last group's clean tokens are never attended to
                net.run_cached(double(net.embed_clean(x, pos)), cache, append=True)
                cond_cache = cache.batch_slice(0, B) if guided else cache
    finally:
        net.train(was_training)
    return net.unpatchify(tokens)


@torch.no_grad()
def sample(
    model: CausalFusion,
    sampler: Sampler,
    y: torch.Tensor,
    ar_steps: int,
    order: str = "random",
    cfg_scale: float = 1.0,
    cfg_interval: tuple[float, float] | None = None,
    generator: NoiseSource = None,
    block: int = 4,
    text: torch.Tensor | None = None,
) -> torch.Tensor:
    """Class-conditional (or, with `text` (B, T) prompts, text-to-image) samples (B, C, H, W)
    with `ar_steps` near-equal AR groups in `order`."""
    net = _unwrap(model)
    L = net.num_tokens
    if isinstance(ar_steps, bool) or not isinstance(ar_steps, int) or not 1 <= ar_steps <= L:
        raise UserError(f"sample.ar_steps={ar_steps!r} must be in 1..L={L}")
    positions = token_order(order, y.shape[0], net.cfg.grid, generator, block).to(y.device)
    return generate(
        model,
        sampler,
        y,
        positions,
        equal_group_sizes(L, ar_steps),
        cfg_scale=cfg_scale,
        cfg_interval=cfg_interval,
        generator=generator,
        text=text,
    )
