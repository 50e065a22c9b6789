"""End to end on CPU: a tiny CausalFusion memorises 16 sklearn digits and samples them back."""

import math

import pytest
import torch

from model import (
    CausalFusion,
    Diffusion,
    ModelConfig,
    ar_generator,
    causalfusion_loss,
    make_sampler,
    sample,
    sample_group_sizes,
    sample_num_steps,
    token_order,
)

STEPS = 800  # about 40 s on an idle core; a few hundred would reach 10x on the loss alone
WARMUP = 20


def digits16():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images[:16], dtype=torch.float32)[:, None] / 16 * 2 - 1  # [-1, 1]
    return x, torch.tensor(d.target[:16])


def nearest_mse(images, train):
    """Per image, the MSE to its nearest training image."""
    return ((images[:, None] - train[None]) ** 2).mean((2, 3, 4)).min(1).values


@pytest.mark.slow
def test_tiny_model_memorises_16_digits():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is as fast and shares the CPU better
    try:
        _run()
    finally:
        torch.set_num_threads(threads)


def _run():
    torch.manual_seed(0)
    x, y = digits16()
    cfg = ModelConfig(
        input_size=8,
        in_channels=1,
        patch_size=2,  # L = 16 tokens, so S_eval = 4 means groups of 4
        width=64,
        depth=4,
        heads=4,
        num_classes=10,
        class_dropout=0.0,
    )
    model = CausalFusion(cfg)
    diffusion = Diffusion()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.0)

    def lr_factor(step):  # short warmup, then cosine decay to 0 (sharpens the memorisation)
        return min(1.0, (step + 1) / WARMUP) * 0.5 * (1 + math.cos(math.pi * step / STEPS))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    L = model.num_tokens
    losses = []
    for step in range(STEPS):
        g = ar_generator(0, step, 0)
        S = sample_num_steps("decay", L, g, decay=0.9)
        sizes = sample_group_sizes(L, S, g)
        order = token_order("random", len(x), cfg.grid, g)
        loss, _ = causalfusion_loss(
            model, diffusion, x, y, order, sizes, noise_weighting="min_snr", min_snr_gamma=5.0
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())

    first, last = losses[0], sum(losses[-50:]) / 50
    assert first / last >= 10, (first, last)

    sampler = make_sampler(diffusion, "ddpm", 50)
    noise = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    noise_mse = nearest_mse(noise, x).mean().item()  # about 0.88
    for S_eval in (1, 4):
        out = sample(model, sampler, y, S_eval, generator=torch.Generator().manual_seed(0))
        mse = nearest_mse(out, x).mean().item()
        print(f"loss {first:.3f} -> {last:.4f}; S_eval={S_eval}: nearest-MSE {mse:.3f}", end="")
        print(f" (noise images: {noise_mse:.3f})")
        assert mse < 0.25 * noise_mse, (S_eval, mse, noise_mse)
