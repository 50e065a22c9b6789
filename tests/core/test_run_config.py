"""Issue 30, point 1: the typed run config is the schema, and it gives back the dict it was
built from (so config.yaml and signatures are unchanged)."""

from __future__ import annotations

import dataclasses

import pytest

from core.config import SCHEMA, RunConfig, from_dict
from core.config.datasets import NUM_PLAIN_TEMPLATES
from core.config.sections import DataConfig
from core.errors import UserError
from harness.config.compose import default_config, resolve_overrides
from harness.config.search import group_options
from model.data.caption_templates import PLAIN_TEMPLATES


def test_the_dataclass_defaults_are_config_yaml_s():
    shipped, built = default_config(), RunConfig().to_dict()
    for section in ("seed", "run_dir", "model", "train", "sample", "eval", "bench", "edit",
                    "caption"):  # fmt: skip
        assert built[section] == shipped[section], section


@pytest.mark.parametrize("group", ["data", "model", "cluster"])
def test_every_group_option_round_trips(group):
    for option in group_options(group):
        d = resolve_overrides([f"{group}={option}"])
        cfg = from_dict(d)
        assert cfg.to_dict() == d, option
        assert isinstance(cfg.data, DataConfig) and cfg.train.ar.mode == d["train"]["ar"]["mode"]


def test_the_schema_is_read_from_the_fields():
    assert (
        SCHEMA["train.ar.steps"].describe() == "an integer >= 1 (up to 2^63-1)"
    )  # issue 32: the int64 cap
    assert SCHEMA["edit.class"].null  # a Python keyword as a field: class_
    leaves = sum(1 for f in dataclasses.fields(RunConfig) if f.name not in ("cluster",))
    assert leaves and len(SCHEMA) > 100


def test_a_bad_value_or_key_is_one_line():
    d = resolve_overrides([])
    d["train"]["ar"]["steps"] = 0
    with pytest.raises(UserError, match=r"^train.ar.steps=0 is not allowed; expected an integer"):
        from_dict(d)
    d = resolve_overrides([])
    d["sample"]["nmu"] = 3
    with pytest.raises(UserError, match="unknown config key 'sample.nmu'"):
        from_dict(d)


def test_the_template_count_the_checks_use_is_the_templates():
    assert NUM_PLAIN_TEMPLATES == len(PLAIN_TEMPLATES)
