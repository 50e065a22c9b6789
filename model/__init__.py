"""cfh's model core: the CausalFusion network, its mask, AR axis, diffusion and sampling.

Names are imported on first use (PEP 562), so `from model.errors import UserError` in a job
controller or `cfh status` does not pay for importing torch.
"""

import importlib
from typing import Any

_EXPORTS = {
    "ar_generator": "model.ar",
    "ar_token_weights": "model.ar",
    "equal_group_sizes": "model.ar",
    "sample_group_sizes": "model.ar",
    "sample_num_steps": "model.ar",
    "token_order": "model.ar",
    "Diffusion": "model.diffusion",
    "Sampler": "model.diffusion",
    "causalfusion_loss": "model.diffusion",
    "make_sampler": "model.diffusion",
    "UserError": "model.errors",
    "flex_block_mask": "model.masks",
    "generalized_causal_mask": "model.masks",
    "SIZES": "model.network",
    "CausalFusion": "model.network",
    "KVCache": "model.network",
    "ModelConfig": "model.network",
    "build_model": "model.network",
    "count_params": "model.network",
    "sequence_length": "model.network",
    "train_flops_per_image": "model.network",
    "SampleNoise": "model.noise",
    "sample_stream": "model.noise",
    "generate": "model.sampling",
    "sample": "model.sampling",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
