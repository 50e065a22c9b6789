"""A run folder's config.yaml as a RunConfig, and a RunConfig as that file's text.

config.yaml is written by OmegaConf's YAML emitter and read back by its loader, so a float such
as `1.0e-04` and the `???` of a required key read as they were written. Keys added to cfh after
a folder was written take their defaults (a new key's default keeps the behaviour from before
it).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from core.config.sections import RunConfig, from_dict
from core.errors import UserError
from core.yaml_bounds import check_yaml_file


def read_run_config(path: Path | str) -> RunConfig:
    """The config stored at `path` (a run folder's config.yaml), typed; one UserError line where
    it cannot be read or is not a config."""
    return from_dict(read_config_dict(path))


def read_config_dict(path: Path | str) -> dict:
    """The config stored at `path` as a plain resolved dict, not checked yet (its YAML read
    within core.yaml_bounds' limits first)."""
    path = Path(path)
    hint = "; restore it, or use a new run_dir"
    try:
        check_yaml_file(path, hint=hint)
        plain = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - unreadable YAML, a directory, bad interpolation
        raise UserError(f"{path} cannot be read as a config ({type(e).__name__}){hint}") from None
    if not isinstance(plain, dict):
        raise UserError(f"{path} is not a config (a mapping); restore it, or use a new run_dir")
    return plain


def config_yaml(cfg: RunConfig) -> str:
    """The text of config.yaml for `cfg`: the keys as given, in their given order."""
    return OmegaConf.to_yaml(OmegaConf.create(cfg.to_dict()))
