"""DDPM schedule, noise-axis weights, the CausalFusion loss, and the DDPM/DDIM samplers."""

import math

import pytest
import torch

from model import Diffusion, ar_token_weights, causalfusion_loss, make_sampler


def test_schedule():
    d = Diffusion()
    assert d.betas.dtype == torch.float64 and d.betas.shape == (1000,)
    assert d.betas[0].item() == pytest.approx(1e-4) and d.betas[-1].item() == pytest.approx(0.02)
    assert d.alphas_cumprod[-1].item() == pytest.approx(math.prod(1 - b for b in d.betas.tolist()))
    x0, noise = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    t = torch.tensor([0, 999])
    xt = d.q_sample(x0, t, noise)
    for i in range(2):
        a = d.alphas_cumprod[t[i]].item()
        assert torch.allclose(xt[i], math.sqrt(a) * x0[i] + math.sqrt(1 - a) * noise[i])


def test_noise_weights():
    d = Diffusion()
    t = torch.arange(1000)
    assert torch.equal(d.noise_weights(t, "uniform"), torch.ones(1000))
    high = d.noise_weights(t, "high_noise")
    assert high.mean().item() == pytest.approx(1.0, abs=1e-6)
    assert (high.diff() > 0).all()
    w = d.noise_weights(t, "min_snr", gamma=5.0)
    snr = d.alphas_cumprod / (1 - d.alphas_cumprod)
    assert torch.allclose(w.double(), snr.clamp(max=5.0) / snr, atol=1e-7)
    assert w[-1] == 1 and w[0] < 1e-3  # low noise (high snr) is down-weighted
    with pytest.raises(ValueError, match="noise_weighting='snr'.*uniform, high_noise, min_snr"):
        d.noise_weights(t, "snr")


class ZeroModel(torch.nn.Module):
    """Predicts eps = 0, and records what it was called with."""

    def forward(self, x0, xt, t, y, order, group_sizes):
        self.seen = (xt, t)
        return torch.zeros_like(xt)


def test_loss_weights_noisy_tokens_by_ar_and_noise_axes():
    d = Diffusion()
    model = ZeroModel()
    B, L = 4, 16
    x0 = torch.randn(B, 2, 4, 4)
    order = torch.rand(B, L).argsort(1)
    sizes = [3, 5, 8]
    ar_w = ar_token_weights(sizes, L, 2.0, 1.0, "linear")
    torch.manual_seed(0)
    loss, stats = causalfusion_loss(
        model, d, x0, None, order, sizes, ar_w, noise_weighting="min_snr", min_snr_gamma=5.0
    )
    torch.manual_seed(0)  # replay the draws: t, then the noise
    t = torch.randint(0, 1000, (B,))
    noise = torch.randn_like(x0)
    assert torch.equal(model.seen[1], t)
    per_pos = noise.square().mean(1).reshape(B, L)  # patch 1: token = pixel, mean over channels
    per_ar = per_pos.gather(1, order)
    w_noise = d.noise_weights(t, "min_snr", 5.0)
    expected = (ar_w[None] * w_noise[:, None] * per_ar).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert stats["mse"].item() == pytest.approx(per_ar.mean().item(), rel=1e-6)


def test_loss_patch_tokens():
    d = Diffusion()

    class Half(torch.nn.Module):
        def forward(self, x0, xt, t, y, order, group_sizes):
            out = torch.zeros_like(xt)
            out[:, :, :2, :2] = 1.0  # only the top-left 2x2 patch (token 0) predicts 1
            return out

    x0 = torch.zeros(1, 1, 4, 4)
    order = torch.tensor([[3, 2, 1, 0]])  # patch 2: L = 4; token 0 is last in AR order
    w = torch.tensor([1.0, 1.0, 1.0, 5.0])
    torch.manual_seed(1)
    loss, _ = causalfusion_loss(Half(), d, x0, None, order, [4], w)
    torch.manual_seed(1)
    torch.randint(0, 1000, (1,))
    noise = torch.randn_like(x0)
    err = noise.clone()
    err[:, :, :2, :2] -= 1
    per_patch = err.square().reshape(1, 2, 2, 2, 2).permute(0, 1, 3, 2, 4).reshape(4, 4).mean(1)
    expected = (per_patch[[3, 2, 1, 0]] * w).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_respaced_timesteps():
    d = Diffusion()
    full = make_sampler(d, "ddpm", 1000)
    assert full.timesteps == list(range(999, -1, -1))
    s = make_sampler(d, "ddpm", 250)
    assert len(s) == 250 and s.timesteps[0] == 999 and s.timesteps[-1] == 0
    assert all(a > b for a, b in zip(s.timesteps[:-1], s.timesteps[1:], strict=True))
    assert make_sampler(d, "ddim", 1).timesteps == [999]
    # the respaced betas keep the cumulative products of the kept timesteps
    prod = torch.tensor([1 - b for b in reversed(s._betas)], dtype=torch.float64).cumprod(0)
    assert torch.allclose(prod, d.alphas_cumprod[list(reversed(s.timesteps))])


def test_ddpm_full_schedule_matches_posterior():
    d = Diffusion()
    s = make_sampler(d, "ddpm", 1000)
    x0, eps = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    i = 1000 - 501  # t = 500
    t = s.timesteps[i]
    a, ap, b = (d.alphas_cumprod[t], d.alphas_cumprod[t - 1], d.betas[t])
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    out = s.step(i, xt, eps, g1)
    mean = b * ap.sqrt() / (1 - a) * x0 + (1 - ap) * (1 - b).sqrt() / (1 - a) * xt
    expected = mean + b.sqrt() * torch.randn(3, 5, generator=g2, dtype=torch.float64)
    assert torch.allclose(out, expected)


@pytest.mark.parametrize("kind, steps", [("ddpm", 50), ("ddpm", 1000), ("ddim", 20)])
def test_samplers_reach_the_data_with_an_exact_denoiser(kind, steps):
    """For data that is one point x*, eps(x_t, t) = (x_t - sqrt(abar) x*) / sqrt(1 - abar)."""
    d = Diffusion()
    s = make_sampler(d, kind, steps)
    target = torch.linspace(-1, 1, 8, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, generator=g, dtype=torch.float64)
    for i, t in enumerate(s.timesteps):
        a = d.alphas_cumprod[t]
        eps = (x - a.sqrt() * target) / (1 - a).sqrt()
        x = s.step(i, x, eps, g)
    assert (x - target).abs().max() < 1e-6


@pytest.mark.parametrize("kind, steps", [("ddpm", 100), ("ddpm", 1000), ("ddim", 200)])
def test_samplers_reproduce_a_gaussian(kind, steps):
    """Data N(m, v): the exact eps is sqrt(1-a) (x_t - sqrt(a) m) / (a v + 1 - a)."""
    d = Diffusion()
    s = make_sampler(d, kind, steps)
    m, v = 0.5, 0.25
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, generator=g, dtype=torch.float64)
    for i, t in enumerate(s.timesteps):
        a = d.alphas_cumprod[t]
        eps = (1 - a).sqrt() * (x - a.sqrt() * m) / (a * v + 1 - a)
        x = s.step(i, x, eps, g)
    assert x.mean().item() == pytest.approx(m, abs=0.02)
    assert x.std().item() == pytest.approx(math.sqrt(v), rel=0.04)


def test_sampler_determinism_and_errors():
    d = Diffusion()
    s = make_sampler(d, "ddpm", 10)
    x, eps = torch.randn(2, 3), torch.randn(2, 3)
    a = s.step(0, x, eps, torch.Generator().manual_seed(4))
    b = s.step(0, x, eps, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="steps=0.*1..1000"):
        make_sampler(d, "ddpm", 0)
    with pytest.raises(ValueError, match="steps=1001.*1..1000"):
        make_sampler(d, "ddpm", 1001)
    with pytest.raises(ValueError, match="sampler='euler'.*ddpm, ddim"):
        make_sampler(d, "euler", 10)


def test_clip_x0_bounds_the_final_sample():
    d = Diffusion()
    s = make_sampler(d, "ddim", 5, clip_x0=True)
    x = torch.full((1, 4), 50.0)
    for i in range(len(s)):
        x = s.step(i, x, torch.zeros_like(x))
    assert x.abs().max() <= 1.0 + 1e-6
