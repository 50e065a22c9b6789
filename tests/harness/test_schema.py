"""The config schema refuses, for every key, a value of the wrong type and one out of range.

Walks every key of experiments/config.yaml (with the default groups, cluster profile included).
For each it finds, among a fixed list of candidates, the values the key's type excludes and the
values of the right type outside what it allows, then shows that `cfh train` refuses each with
exit 2 and one line naming the key, and writes nothing. A sample also goes through
`cfh sweep --dry-run` and grid expansion, which use the same schema.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from core.keys import flatten
from harness.cli import main
from harness.config import parse_override, resolve_overrides
from harness.schema import SCHEMA, SCHEMA_SECTIONS

# Override texts tried on every key; each parses (hydra) to a value of some type.
CANDIDATES = [
    "abc",
    "12",
    "-1",
    "0",
    "1",
    "2.5",
    "-0.5",
    "1e9",
    "true",
    "maybe",
    "[]",
    "[nope]",
    "[0]",
    "[5,1]",
    "[0.5,2]",
    "{a: 1}",
    "x.jpg",
    "null",
]


def _kind(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if value is None:
        return "none"
    return type(value).__name__


# keys that only a non-default group has, walked with that group chosen
GROUP_OF_KEY = {"data.captions_per_image": "data=digits_captions",
                "data.tokenizer": "data=digits_captions",
                "data.max_text_len": "data=digits_captions"}  # fmt: skip


def all_keys() -> dict[str, object]:
    """Every leaf key of the default config, cluster profile keys included, with defaults (and
    the keys of GROUP_OF_KEY with their group's defaults)."""
    cfg = resolve_overrides([])
    keys = flatten(cfg, keep=SCHEMA_SECTIONS)
    cluster = keys.pop("cluster")
    keys.update({f"cluster.{k}": v for k, v in cluster.items()})
    for key, group in GROUP_OF_KEY.items():
        keys[key] = flatten(resolve_overrides([group]), keep=SCHEMA_SECTIONS)[key]
    return keys


def groups(key: str) -> list[str]:
    """The group override a key needs ([] for keys of the default config)."""
    return [GROUP_OF_KEY[key]] if key in GROUP_OF_KEY else []


def refused(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, err.getvalue()


def bad_inputs() -> list[tuple[str, str, str]]:
    """(key, override text, 'type' | 'range') for every refused candidate of every key."""
    from core.errors import UserError
    from harness.schema import validate_config

    cases = []
    for key, default in all_keys().items():
        base = resolve_overrides(groups(key))
        for text in CANDIDATES:
            _, value = parse_override(f"{key}={text}")
            if value == default:
                continue
            cfg = json.loads(json.dumps(base))
            node = cfg
            *parents, leaf = key.split(".")
            for part in parents:
                node = node[part]
            node[leaf] = value
            try:
                validate_config(cfg)
            except UserError:
                if default is None:  # a nullable key: its type is the schema's, not the default's
                    kind = "null-default"
                else:
                    kind = "range" if _kind(value) == _kind(default) else "type"
                cases.append((key, text, kind))
    return cases


CASES = bad_inputs()


def test_every_key_has_a_schema_entry():
    missing = [k for k in all_keys() if not k.startswith("cluster.") and k not in SCHEMA]
    assert not missing
    assert not [k for k in SCHEMA if k not in all_keys()]  # and no stale entries


def test_every_key_refuses_a_wrong_type_and_an_out_of_range_value():
    kinds: dict[str, set[str]] = {}
    for key, _, kind in CASES:
        kinds.setdefault(key, set()).add(kind)
    typed = {k: v for k, v in all_keys().items() if v is not None}
    no_type = [k for k in typed if "type" not in kinds.get(k, set())]
    assert not no_type, f"keys that accept every wrongly typed candidate: {no_type}"
    # keys whose type has a range (numbers, lists, names): one value of that type outside it
    ranged = [k for k, v in typed.items() if _kind(v) in ("number", "list", "str")]
    no_range = [k for k in ranged if "range" not in kinds.get(k, set())]
    assert not no_range, f"keys with no refused value of their own type: {no_range}"
    nullable = [k for k, v in all_keys().items() if v is None]
    few = [k for k in nullable if sum(c[0] == k for c in CASES) < 2]
    assert not few, f"nullable keys with fewer than two refused candidates: {few}"
    print(f"{len(CASES)} bad inputs over {len(all_keys())} keys")


@pytest.mark.parametrize("key,text,kind", CASES, ids=[f"{k}={t}" for k, t, _ in CASES])
def test_cfh_train_refuses_with_one_line_and_writes_nothing(tmp_path, key, text, kind):
    run = tmp_path / "run"
    root = str(tmp_path / "root")
    code, err = refused("--root", root, "train", f"run_dir={run}", *groups(key), f"{key}={text}")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    leaf = key.split(".")[-1]
    assert leaf in lines[0] or key.split(".")[0] in lines[0], err  # it names the key
    assert not list(tmp_path.iterdir()), "something was written"


SAMPLE = CASES[::14]  # every 14th: the dry run shares the schema with cfh train


@pytest.mark.parametrize("key,text,kind", SAMPLE, ids=[f"{k}={t}" for k, t, _ in SAMPLE])
def test_sweep_dry_run_refuses_the_same_values(tmp_path, key, text, kind):
    grid = tmp_path / "g.yaml"
    section = "resources" if key.startswith("cluster.") else "base"
    extra = "".join(f"\n  {g.split('=')[0]}: {g.split('=')[1]}" for g in groups(key))
    grid.write_text(f"{section}:{extra}\n  {json.dumps(key)}: {text}\n")
    code, err = refused("--root", str(tmp_path / "root"), "sweep", str(grid), "--dry-run")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "root").exists()


def test_the_bad_inputs_of_the_issue(tmp_path):
    for override in (
        "train.lr_ref_batch=-5",
        "train.compile=maybe",
        "sample.ema=maybe",
        "sample.cfg_interval=[0,5000]",
        "eval.split=validation",
        "data.num_classes=5",
        "bench.repeats=0",
        f"run_dir={Path(__file__)}",
    ):
        code, err = refused("train", f"run_dir={tmp_path / 'r'}", override)
        assert code == 2 and err.startswith("error: "), (override, err)
        assert not (tmp_path / "r").exists(), override
