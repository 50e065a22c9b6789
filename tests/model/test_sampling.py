"""KV-cached multi-step sampling equals one masked forward pass; CFG, context, determinism."""

import pytest
import torch
from tiny_models import tiny_model

from model import (
    CausalFusion,
    Diffusion,
    KVCache,
    ModelConfig,
    equal_group_sizes,
    generate,
    make_sampler,
    sample,
)


def record(trace):
    def callback(group, step, t, x, eps):
        trace[(group, step)] = (t, x.clone(), eps.clone())

    return callback


def full_pass_eps(model, images, trace, y, positions, sizes, step, cfg_scale=1.0):
    """eps of every group at denoising `step`, from one masked forward over the whole sequence.

    Every group is denoised over the same timesteps, so at a given step all groups share t; the
    clean tokens are the final generated ones, the noisy ones each group's x at that step.
    """
    B, P = y.shape[0], model.cfg.token_dim
    xt = torch.zeros(B, model.num_tokens, P)
    start = 0
    for s, g in enumerate(sizes):
        t, x, _ = trace[(s, step)]
        xt.scatter_(1, positions[:, start : start + g, None].expand(-1, -1, P), x)
        start += g
    tt = torch.full((B,), t, dtype=torch.long)
    args = (images, model.unpatchify(xt), tt, y, positions, sizes)
    eps = model(*args)
    if cfg_scale != 1.0:
        eps_u = model(*args, force_drop_ids=torch.ones_like(y))
        eps = eps_u + cfg_scale * (eps - eps_u)
    return model.patchify(eps).gather(1, positions[..., None].expand(-1, -1, P))  # AR order


@pytest.mark.parametrize("S", [1, 2, 4, 16])
def test_kv_cached_sampling_equals_full_masked_forward(S):
    model = tiny_model(2)
    sampler = make_sampler(Diffusion(), "ddpm", 3)
    B, L = 3, model.num_tokens
    y = torch.tensor([0, 1, 2])
    positions = torch.rand(B, L, generator=torch.Generator().manual_seed(S)).argsort(1)
    sizes = equal_group_sizes(L, S)
    trace = {}
    gen = torch.Generator().manual_seed(0)
    images = generate(model, sampler, y, positions, sizes, generator=gen, callback=record(trace))
    bounds = torch.tensor([0, *sizes]).cumsum(0).tolist()
    for step in range(len(sampler)):
        full = full_pass_eps(model, images, trace, y, positions, sizes, step)
        for s in range(S):
            cached = trace[(s, step)][2]
            diff = (full[:, bounds[s] : bounds[s + 1]] - cached).abs().max().item()
            assert diff <= 1e-5, (S, step, s, diff)


def test_kv_cache_equivalence_with_cfg_and_context():
    model = tiny_model(2, seed=1)
    sampler = make_sampler(Diffusion(), "ddim", 2)
    B, L, K = 2, model.num_tokens, 5
    y = torch.tensor([2, 0])
    perm = torch.rand(B, L, generator=torch.Generator().manual_seed(9)).argsort(1)
    ctx_pos, positions = perm[:, :K], perm[:, K:]
    context = torch.randn(B, 2, 4, 4)
    sizes = [4, 3, 4]
    trace = {}
    images = generate(
        model,
        sampler,
        y,
        positions,
        sizes,
        cfg_scale=3.0,
        generator=torch.Generator().manual_seed(0),
        context=context,
        context_positions=ctx_pos,
        callback=record(trace),
    )
    # context tokens come through bitwise; the full pass sees the context as AR group 0
    tok_in, tok_out = model.patchify(context), model.patchify(images)
    idx = ctx_pos[..., None].expand(-1, -1, 2)
    assert torch.equal(tok_out.gather(1, idx), tok_in.gather(1, idx))
    trace_full = {(s + 1, i): v for (s, i), v in trace.items()}
    for i in range(len(sampler)):
        _, x, _ = trace[(0, i)]
        trace_full[(0, i)] = (trace[(0, i)][0], tok_in.gather(1, idx), None)
        full = full_pass_eps(model, images, trace_full, y, perm, [K, *sizes], i, cfg_scale=3.0)
        start = K
        for s, g in enumerate(sizes):
            diff = (full[:, start : start + g] - trace[(s, i)][2]).abs().max().item()
            assert diff <= 1e-5, (i, s, diff)
            start += g


def test_deterministic_per_seed():
    model = tiny_model(2)
    sampler = make_sampler(Diffusion(), "ddpm", 3)
    y = torch.tensor([0, 1])

    def run(seed, **kw):
        return sample(model, sampler, y, 4, generator=torch.Generator().manual_seed(seed), **kw)

    assert torch.equal(run(0), run(0))
    assert not torch.allclose(run(0), run(1))
    assert torch.equal(run(0, order="dilated"), run(0, order="dilated"))
    assert torch.equal(run(0, cfg_scale=2.0), run(0, cfg_scale=2.0))
    assert not torch.allclose(run(0, cfg_scale=2.0), run(0))


def test_cfg_interval_outside_every_step_is_unguided():
    model = tiny_model(2)
    sampler = make_sampler(Diffusion(), "ddim", 4)
    y = torch.tensor([0, 2])
    kw = dict(order="raster", generator=None)
    torch.manual_seed(0)
    plain = sample(model, sampler, y, 2, **kw)
    torch.manual_seed(0)
    never = sample(model, sampler, y, 2, cfg_scale=4.0, cfg_interval=(1000, 2000), **kw)
    torch.manual_seed(0)
    always = sample(model, sampler, y, 2, cfg_scale=4.0, cfg_interval=(0, 999), **kw)
    assert torch.allclose(plain, never, atol=1e-5)
    assert not torch.allclose(plain, always, atol=1e-3)
    # half-open, as the official code: t_low <= t < t_high; DDIM 4 keeps t = 999, 666, 333, 0
    torch.manual_seed(0)
    every = sample(model, sampler, y, 2, cfg_scale=4.0, cfg_interval=(0, 1000), **kw)
    torch.manual_seed(0)
    top = sample(model, sampler, y, 2, cfg_scale=4.0, cfg_interval=(999, 1000), **kw)
    assert not torch.allclose(always, every, atol=1e-3)  # (0, 999) leaves t = 999 unguided
    assert not torch.allclose(plain, top, atol=1e-3)  # (999, 1000) guides t = 999 alone


def test_kv_cache_lengths_and_mode_restored():
    model = tiny_model(2).train()
    cache = KVCache(model.cfg.depth)
    assert len(cache) == 0
    model.run_cached(model.embed_cond(torch.tensor([0, 1])), cache, append=True)
    assert len(cache) == model.cfg.num_cond_tokens
    h = model.embed_noisy(torch.randn(2, 3, 2), torch.tensor([[0, 1, 2]] * 2), torch.tensor([5, 5]))
    model.run_cached(h, cache, append=False)
    assert len(cache) == model.cfg.num_cond_tokens  # query passes leave the cache alone
    assert len(cache.batch_slice(0, 1)) == 4 and cache.batch_slice(0, 1).keys[0].shape[0] == 1
    sample(model, make_sampler(Diffusion(), "ddpm", 2), torch.tensor([0]), 1)
    assert model.training  # sampling switches to eval and back


def test_bad_arguments():
    model = tiny_model(2)
    sampler = make_sampler(Diffusion(), "ddpm", 2)
    y = torch.tensor([0])
    with pytest.raises(ValueError, match=r"sample.ar_steps=17 must be in 1..L=16"):
        sample(model, sampler, y, 17)
    with pytest.raises(ValueError, match=r"sample.ar_steps=0 must be in 1..L=16"):
        sample(model, sampler, y, 0)
    with pytest.raises(ValueError, match="order='zigzag'.*random, raster, block_raster, dilated"):
        sample(model, sampler, y, 2, order="zigzag")
    pos = torch.arange(16)[None]
    with pytest.raises(ValueError, match=r"sums to 8, must sum to M \(positions\)=16"):
        generate(model, sampler, y, pos, [4, 4])
    with pytest.raises(ValueError, match="repeat"):
        generate(model, sampler, y, torch.zeros(1, 2, dtype=torch.long), [2])
    with pytest.raises(ValueError, match="overlap"):
        ctx = torch.zeros(1, 2, 4, 4)
        generate(model, sampler, y, pos[:, :4], [4], context=ctx, context_positions=pos[:, 2:6])


@pytest.mark.parametrize("order,cfg_scale,S", [("random", 1.0, 16), ("dilated", 2.0, 3)])
def test_per_sample_noise_makes_samples_independent_of_the_batch(order, cfg_scale, S):
    """Sample i is bitwise the same alone, in batches of 7, or in one batch of 40 (on CPU)."""
    from model import SampleNoise

    model = CausalFusion(ModelConfig(input_size=8, in_channels=1, patch_size=1, width=64,
                                     depth=2, heads=2, num_classes=10)).eval()  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    sampler = make_sampler(Diffusion(), "ddpm", 3)
    y = torch.arange(40) % 10

    def batched(size: int) -> torch.Tensor:
        parts = []
        for start in range(0, 40, size):
            idx = range(start, min(start + size, 40))
            noise = SampleNoise.for_indices(5, idx)
            parts.append(sample(model, sampler, y[start : idx.stop], S, order, cfg_scale, None,
                                noise))  # fmt: skip
        return torch.cat(parts)

    whole = batched(40)
    assert torch.equal(whole, batched(7))
    assert torch.equal(whole[:3], batched(1)[:3])
    other_seed = sample(model, sampler, y, S, order, cfg_scale, None,
                        SampleNoise.for_indices(6, range(40)))  # fmt: skip
    assert not torch.allclose(whole, other_seed)
