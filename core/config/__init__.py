"""A run's config, typed: the dataclass tree (sections), its schema, its one validation."""

from core.config.sections import SCHEMA, RunConfig, data_config, from_dict
from core.config.stored import config_yaml, read_config_dict, read_run_config
from core.config.validate import (
    check_kid_subset,
    check_train_batch,
    num_tokens,
    typed,
    validate_config,
)

__all__ = [
    "SCHEMA",
    "RunConfig",
    "check_kid_subset",
    "check_train_batch",
    "config_yaml",
    "data_config",
    "from_dict",
    "num_tokens",
    "read_config_dict",
    "read_run_config",
    "typed",
    "validate_config",
]
