"""cfh's model core: the CausalFusion network, its mask, AR axis, diffusion and sampling.

Names are imported on first use (PEP 562), so `from model.errors import UserError` in a job
controller or `cfh status` does not pay for importing torch.
"""

import importlib
from typing import Any

_EXPORTS = {
    "ar_generator": "model.method.ar",
    "ar_token_weights": "model.method.ar",
    "equal_group_sizes": "model.method.ar",
    "sample_group_sizes": "model.method.ar",
    "sample_num_steps": "model.method.ar",
    "token_order": "model.method.ar",
    "Diffusion": "model.method.diffusion",
    "Sampler": "model.method.diffusion",
    "causalfusion_loss": "model.method.diffusion",
    "make_sampler": "model.method.diffusion",
    "UserError": "core.errors",
    "flex_block_mask": "model.method.masks",
    "generalized_causal_mask": "model.method.masks",
    "SIZES": "model.method.network",
    "CausalFusion": "model.method.network",
    "KVCache": "model.method.kv_cache",
    "ModelConfig": "model.method.network",
    "build_model": "model.method.network",
    "count_params": "model.method.network",
    "sequence_length": "model.method.network",
    "train_flops_per_image": "model.method.network",
    "SampleNoise": "model.method.noise",
    "sample_stream": "model.method.noise",
    "generate": "model.method.sampling",
    "sample": "model.method.sampling",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
