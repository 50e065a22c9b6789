"""Class-conditional loss and samples of a tiny seeded model, as digests (golden-file check).

`python tests/model/classcond_golden.py` prints them; tests/model/test_joint.py compares the
current code with the digests this script printed before text tokens were added to the network.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def classcond_digests() -> dict[str, str]:
    """{'loss': float.hex of one training loss, 'samples': sha256 of sampled tensors' bytes}."""
    from tiny_models import tiny_model

    from model import Diffusion, causalfusion_loss, make_sampler, sample
    from model.ar import ar_token_weights, token_order
    from model.noise import SampleNoise

    torch.set_num_threads(1)
    model = tiny_model(2, seed=3).train()
    torch.manual_seed(7)
    x0 = torch.randn(5, 2, 4, 4)
    y = torch.tensor([0, 1, 2, 3, 1])  # 3 is the null class
    order = token_order("random", 5, 4, torch.Generator().manual_seed(1))
    sizes = [5, 3, 8]
    loss, _ = causalfusion_loss(
        model, Diffusion(), x0, y, order, sizes, ar_token_weights(sizes, 16, 2.0, 0.5)
    )
    model.eval()
    sampler = make_sampler(Diffusion(), "ddpm", 4)
    images = [
        sample(model, sampler, y, s, generator=SampleNoise.for_indices(0, range(5)), cfg_scale=c)
        for s, c in ((1, 1.0), (4, 2.0))
    ]
    digest = hashlib.sha256(b"".join(im.numpy().tobytes() for im in images)).hexdigest()
    return {"loss": loss.item().hex(), "samples": digest}


if __name__ == "__main__":
    print(classcond_digests())
