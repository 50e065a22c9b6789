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
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.config.sections import OPEN_SECTIONS as SCHEMA_SECTIONS
from core.config.sections import SCHEMA
from core.keys import flatten
from harness.cli.main import main
from harness.config.compose import parse_override, resolve_overrides

REPO = Path(__file__).resolve().parents[2]

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
    from core.config import validate_config
    from core.errors import UserError
    from harness.config.search import group_options

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
                validate_config(cfg, group_options("cluster"))
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


# ---------------------------------------------------------------- plans that cannot run


def test_split_sizes_are_the_arrays_sizes():
    import gzip
    import pickle

    from core.config.datasets import SPLIT_SIZES
    from model.data.arrays import digits_split_indices, mnist_path

    digits = {split: len(idx) for split, idx in digits_split_indices().items()}
    assert SPLIT_SIZES["digits"] == digits
    with gzip.open(mnist_path(), "rb") as f:
        parts = dict(
            zip(("train", "valid", "test"), pickle.load(f, encoding="latin1"), strict=True)
        )
    mnist = {split: len(y) for split, (_, y) in parts.items()}
    mnist["all"] = sum(mnist.values())
    assert {k: v for k, v in SPLIT_SIZES["mnist"].items() if k in mnist} == mnist


PLANS = [  # (environment, argv, what the one-line error says)
    ({}, ["train", "train.batch_size=5000"], "train.batch_size=5000 is larger than the train "
     "split of data=digits (1,437 images); allowed: 1..1437"),
    ({}, ["train", "data=mnist", "train.batch_size=50001"], "(50,000 images); allowed: 1..50000"),
    ({}, ["train", "data=digits_captions", "train.batch_size=3000"], "(2,874 image-caption"),
    ({"WORLD_SIZE": "4"}, ["train", "train.batch_size=6"], "does not split over the 4 ranks"),
    ({"WORLD_SIZE": "4"}, ["train", "train.batch_size=1440"],
     "1440 (360 per rank x 4 ranks) is larger than the train split of data=digits"),
    ({}, ["evaluate", "sample.num=50"], "eval.kid_subset_size=100 is above sample.num=50"),
    ({}, ["evaluate", "sample.num=300", "eval.kid_subset_size=400"], "allowed: 2..300"),
    ({}, ["train", "train.steps=3", "train.steps=4"],
     "train.steps is given twice with different values ('train.steps=3' and 'train.steps=4')"),
    ({}, ["evaluate", "sample.num=300", "sample.num=200"], "sample.num is given twice"),
    ({}, ["train", "cluster.nodes=2"], "nodes=2 is not allowed on the local backend (one "
     "machine); expected 1 (several nodes: a slurm profile"),
]  # fmt: skip


def test_plans_that_cannot_run_are_refused_before_torch_and_write_nothing(tmp_path):
    """Each plan: exit 2, one line naming the value and what is allowed, no torch, no files."""
    code = (
        "import contextlib, io, json, os, sys\n"
        "from harness.cli.main import main\n"
        "out = []\n"
        f"for env, argv in {[(e, a) for e, a, _ in PLANS]!r}:\n"
        "    os.environ.pop('WORLD_SIZE', None)\n"
        "    os.environ.update(env)\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        f"        rc = main([*argv, 'run_dir={tmp_path / 'run'}'])\n"
        "    out.append([rc, err.getvalue()])\n"
        "print(json.dumps({'results': out, 'torch': 'torch' in sys.modules}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "WORLD_SIZE"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert not result["torch"], "torch was imported"
    for (_, argv, needle), (rc, err) in zip(PLANS, result["results"], strict=True):
        assert rc == 2 and err.count("\n") == 1 and err.startswith("error: "), (argv, err)
        assert needle in err, (argv, err)
    assert not list(tmp_path.iterdir()), "something was written"


def test_the_same_value_twice_and_a_caption_evaluation_pass():
    from core.config import check_kid_subset

    assert refused("train", "train.steps=3", "train.steps=3", "--cfg", "job")[0] == 0
    assert refused("train", "train.lr=1e-4", "train.lr=0.0001", "--cfg", "job")[0] == 0
    cfg = resolve_overrides(["sample.num=30", "eval.task=caption"])
    check_kid_subset(cfg)  # captions: no KID, so no limit


def test_an_image_folder_and_latents_are_counted_up_to_the_batch(tmp_path):
    from core.config import check_train_batch
    from core.errors import UserError

    folder = tmp_path / "images"
    for i in range(5):
        (folder / f"c{i % 2}" / "deep").mkdir(parents=True, exist_ok=True)
        (folder / f"c{i % 2}" / "deep" / f"{i}.PNG").write_bytes(b"")  # counted by name only
    (folder / "c0" / "notes.txt").write_text("not an image")
    data = [f"data.root={folder}", "data.num_classes=2", "data.resolution=8", "data.patch_size=1"]
    cfg = resolve_overrides(["data=imagefolder", *data, "train.batch_size=5"])
    check_train_batch(cfg)
    cfg["train"]["batch_size"] = 6
    with pytest.raises(UserError, match=r"batch_size=6 is larger .*imagefolder \(5 images\)"):
        check_train_batch(cfg)
    latents = tmp_path / "latents"
    latents.mkdir()
    for name in ("latents.npy", "labels.npy"):
        (latents / name).write_bytes(b"")
    meta = {"channels": 4, "resolution": 32, "num_classes": 1000, "scale_factor": 0.18215,
            "flips": False, "count": 7}  # fmt: skip
    (latents / "meta.json").write_text(json.dumps(meta))
    cfg = resolve_overrides(["data=latents", f"data.root={latents}", "train.batch_size=8"])
    with pytest.raises(UserError, match=r"data=latents \(7 images\); allowed: 1..7"):
        check_train_batch(cfg)
    del meta["count"]  # written before cfh encode recorded it: not counted, not refused
    (latents / "meta.json").write_text(json.dumps(meta))
    check_train_batch(cfg)


def test_the_whole_set_is_the_limit_when_training_on_all_of_it():
    from core.config import check_train_batch
    from core.errors import UserError

    cfg = resolve_overrides(["data.train_split=all", "train.batch_size=1797"])
    check_train_batch(cfg)  # 1,797 digits in all, 1,437 in the train split
    cfg["train"]["batch_size"] = 1798
    with pytest.raises(
        UserError,
        match=r"than data.train_split=all of data=digits \(1,797 images\); allowed: 1..1797",
    ):
        check_train_batch(cfg)
