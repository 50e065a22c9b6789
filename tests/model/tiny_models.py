"""Small random models shared by the model tests: nothing is trained or downloaded."""

from __future__ import annotations

import torch

from model import CausalFusion, ModelConfig


def tiny_model(in_channels: int, seed: int = 0, **config) -> CausalFusion:
    """A 2-layer model on 4x4 inputs (patch 1, L=16), weights perturbed off the zero output;
    `config` overrides ModelConfig fields (num_classes 3 by default, text_vocab, ...)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(
        input_size=4, in_channels=in_channels, patch_size=1, width=32, depth=2, heads=2,
        **{"num_classes": 3, **config},
    )  # fmt: skip
    model = CausalFusion(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


def tiny_vae(in_channels: int = 3):
    """A 2-level diffusers AutoencoderKL (downsamples by 2) with random weights."""
    import diffusers

    torch.manual_seed(0)
    return diffusers.AutoencoderKL(
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
    ).eval()
