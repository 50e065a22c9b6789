"""cfh's model core: the CausalFusion network, its mask, AR axis, diffusion and sampling."""

from model.ar import (
    ar_generator,
    ar_token_weights,
    equal_group_sizes,
    sample_group_sizes,
    sample_num_steps,
    token_order,
)
from model.diffusion import Diffusion, Sampler, causalfusion_loss, make_sampler
from model.errors import UserError
from model.masks import flex_block_mask, generalized_causal_mask
from model.network import (
    SIZES,
    CausalFusion,
    KVCache,
    ModelConfig,
    build_model,
    count_params,
    sequence_length,
    train_flops_per_image,
)
from model.sampling import generate, sample

__all__ = [
    "SIZES",
    "CausalFusion",
    "Diffusion",
    "KVCache",
    "ModelConfig",
    "Sampler",
    "UserError",
    "ar_generator",
    "ar_token_weights",
    "build_model",
    "causalfusion_loss",
    "count_params",
    "equal_group_sizes",
    "flex_block_mask",
    "generalized_causal_mask",
    "generate",
    "make_sampler",
    "sample",
    "sample_group_sizes",
    "sample_num_steps",
    "sequence_length",
    "token_order",
    "train_flops_per_image",
]
