"""Class-conditional loss and samples of a tiny seeded model (golden-file check).

`python tests/model/classcond_golden.py` prints the digests of this machine and
`python tests/model/classcond_golden.py --write` rewrites tests/model/golden/classcond.json.
The stored values were written by this script on 2026-12-04 with the code at 9716d23, whose
samples are bitwise those of 05b6f77 (the commit before text tokens existed) on the same machine
(checked by running 05b6f77's own tree there). tests/model/test_joint.py compares the current code
with them within a stated tolerance: a sha256 of floats after many kernel calls depends on the
CPU's instruction set (MKL picks AVX2 or AVX-512 paths), so digests are compared only within one
process.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

GOLDEN_FILE = Path(__file__).resolve().parent / "golden" / "classcond.json"


def classcond_outputs() -> tuple[torch.Tensor, torch.Tensor]:
    """(one training loss, the samples at (S=1, cfg 1) and (S=4, cfg 2) stacked)."""
    from tiny_models import tiny_model

    from model import Diffusion, causalfusion_loss, make_sampler, sample
    from model.method.ar import ar_token_weights, token_order
    from model.method.noise import SampleNoise

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
    return loss.detach(), torch.stack(images)


def digests(loss: torch.Tensor, samples: torch.Tensor) -> dict[str, str]:
    """{'loss': float.hex of the loss, 'samples': sha256 of the samples' bytes}."""
    return {
        "loss": loss.item().hex(),
        "samples": hashlib.sha256(b"".join(im.numpy().tobytes() for im in samples)).hexdigest(),
    }


def classcond_digests() -> dict[str, str]:
    """This machine's digests (bitwise: compare only within one process or machine)."""
    return digests(*classcond_outputs())


def load_golden() -> tuple[float, torch.Tensor]:
    """The stored loss and samples."""
    data = json.loads(GOLDEN_FILE.read_text())
    values = [float.fromhex(v) for v in data["samples"]]
    return float.fromhex(data["loss"]), torch.tensor(values, dtype=torch.float32).view(
        data["shape"]
    )


def write_golden() -> None:
    loss, samples = classcond_outputs()
    data = {
        "loss": loss.item().hex(),
        "samples": [float(v).hex() for v in samples.flatten()],
        "shape": list(samples.shape),
    }
    GOLDEN_FILE.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN_FILE.write_text(json.dumps(data, indent=0) + "\n")


if __name__ == "__main__":
    if "--write" in sys.argv:
        write_golden()
    print(classcond_digests())
