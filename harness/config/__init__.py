"""A run's config: composed from the config dirs, validated, cluster profiles."""

from harness.config.compose import default_config, load_config, load_train_config
from harness.config.search import SHIPPED_CONFIG_DIR

__all__ = ["SHIPPED_CONFIG_DIR", "default_config", "load_config", "load_train_config"]
