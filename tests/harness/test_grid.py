"""Grid files: expansion (cartesian, zip, include/exclude, seeds, eval axes), validation errors."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from core.errors import UserError
from harness.grid import list_grids, load_grid

BASE = {"model": "T", "data": "digits", "train.steps": 10}


def grid_file(tmp_path: Path, body: str, name: str = "g", **base) -> Path:
    """Write a grid file (BASE, updated with `base`, then body) and return its path."""
    path = tmp_path / f"{name}.yaml"
    merged = {**BASE, **{k.replace("__", "."): v for k, v in base.items()}}
    path.write_text(f"base: {json.dumps(merged)}\n" + textwrap.dedent(body))
    return path


def axes_of(points) -> list[dict]:
    return [p.axes for p in points]


def test_cartesian_axes_and_seeds(tmp_path):
    path = grid_file(
        tmp_path,
        """
        axes:
          train.ar.mode: [fixed]
          train.ar.steps: [1, 2, 4]
          train.lr: [1e-4, 2e-4]
        seeds: [0, 1]
        """,
    )
    points = load_grid(str(path)).expand()
    assert len(points) == 3 * 2 * 2
    assert len({p.signature for p in points}) == 12
    first = points[0]
    assert first.axes == {
        "train.ar.mode": "fixed",
        "train.ar.steps": 1,
        "train.lr": 1e-4,
        "seed": 0,
    }
    assert first.config["train"]["lr"] == 1e-4  # "1e-4" in YAML is a float
    assert "train.ar.steps=1" in first.overrides and "seed=0" in first.overrides


def test_zip_include_exclude(tmp_path):
    path = grid_file(
        tmp_path,
        """
        axes:
          train.order: [random, raster]
        zip:
          - train.ar.mode: [fixed, fixed, fixed]
            train.ar.steps: [1, 2, 8]
        exclude:
          - {train.order: raster, train.ar.steps: 8}
        include:
          - {train.ar.mode: uniform, train.order: raster}
        """,
    )
    grid = load_grid(str(path))
    values = axes_of(grid.expand())
    assert len(values) == 2 * 3 - 1 + 1
    assert {"train.order": "raster", "train.ar.mode": "fixed", "train.ar.steps": 8} not in values
    assert {"train.order": "random", "train.ar.mode": "fixed", "train.ar.steps": 8} in values
    assert values[-1] == {"train.ar.mode": "uniform", "train.order": "raster"}
    assert grid.axis_keys() == ["train.order", "train.ar.mode", "train.ar.steps"]


def test_include_only_and_token_symbol(tmp_path):
    path = grid_file(
        tmp_path,
        """
        include:
          - {train.ar.mode: fixed, train.ar.steps: L}
          - {train.ar.mode: uniform}
        eval:
          axes:
            sample.ar_steps: [1, L]
        """,
    )
    points = load_grid(str(path)).expand()
    assert len(points) == 2  # no base point when only include entries are given
    assert points[0].config["train"]["ar"]["steps"] == 64  # digits: 8x8, patch 1
    assert [e.values for e in points[0].evals] == [
        {"sample.ar_steps": 1},
        {"sample.ar_steps": 64},
    ]


def test_eval_axes_cross_every_run(tmp_path):
    path = grid_file(
        tmp_path,
        """
        axes:
          train.ar.decay: [0.9, 0.8]
        eval:
          base: {eval.extractor: classifier}
          axes:
            sample.ar_steps: [1, 2, 4]
            sample.cfg: [1.0, 1.5]
          exclude:
            - {sample.ar_steps: 4, sample.cfg: 1.5}
        """,
        sample__num=50,
    )
    points = load_grid(str(path)).expand()
    assert len(points) == 2
    for p in points:
        assert len(p.evals) == 3 * 2 - 1
        assert all("sample.num=50" in e.overrides for e in p.evals)
        assert all("eval.extractor=classifier" in e.overrides for e in p.evals)
        assert len({e.key for e in p.evals}) == 5
        assert "sample.num=50" not in p.overrides  # eval keys never reach the train config
    # same eval settings on another run: same key (it names settings, not runs)
    assert [e.key for e in points[0].evals] == [e.key for e in points[1].evals]


def test_eval_false_trains_only(tmp_path):
    path = grid_file(tmp_path, "eval: false\n")
    (point,) = load_grid(str(path)).expand()
    assert point.evals == []


def test_checkpoint_eval_points_keep_their_checkpoints(tmp_path):
    path = grid_file(
        tmp_path,
        """
        eval:
          axes:
            sample.ckpt: [20, 50, latest]
        """,
        train__steps=100,
        train__ckpt_every=10,
        train__keep_checkpoints=2,
    )
    (point,) = load_grid(str(path)).expand()
    assert len(point.evals) == 3
    assert point.config["train"]["keep_checkpoints"] == 9  # 20, 30, ..., 90, 100
    assert "train.keep_checkpoints=9" in point.overrides
    bad = grid_file(tmp_path, "eval:\n  axes:\n    sample.ckpt: [15]\n", "bad", train__steps=100)
    with pytest.raises(UserError, match=r"sample.ckpt=15.*multiple of train.ckpt_every=500"):
        load_grid(str(bad)).expand()


def test_duplicate_signatures_are_merged(tmp_path):
    # train.ar.steps is unused when mode=uniform: both points train the same run
    path = grid_file(
        tmp_path,
        """
        axes:
          train.ar.steps: [1, 2]
        """,
        train__ar__mode="uniform",
    )
    grid = load_grid(str(path))
    points = grid.expand()
    assert len(points) == 1
    assert any("same run" in n for n in grid.notes)


def test_command_line_overrides(tmp_path):
    path = grid_file(tmp_path, "axes:\n  train.ar.decay: [0.9]\n")
    grid = load_grid(str(path), ["train.steps=7", "sample.num=9", "cluster.parallelism=2"])
    (point,) = grid.expand()
    assert point.config["train"]["steps"] == 7
    assert point.config["cluster"]["parallelism"] == 2
    assert "sample.num=9" in point.evals[0].overrides
    with pytest.raises(UserError, match="train.ar.decay is an axis"):
        load_grid(str(path), ["train.ar.decay=0.5"])


def test_shipped_grids_expand():
    small = {"smoke", "ar_steps", "ar_decay", "ar_weighting", "token_order", "model_size"}
    assert small <= set(list_grids())
    sizes = {}
    for name in sorted(small):
        points = load_grid(name).expand()
        sizes[name] = len(points)
        assert all(p.config["data"]["name"] in ("digits", "mnist") for p in points), name
        assert all(p.config["cluster"]["backend"] == "local" for p in points), name
    assert sizes["smoke"] == 3
    assert sizes["ar_steps"] == 6
    assert sizes["ar_decay"] == 5


def test_imagenet_grids_need_a_data_root(tmp_path):
    for name in ("imagenet256_ablation", "imagenet256_system"):
        with pytest.raises(UserError, match="data.root is required"):
            load_grid(name).expand()
    root = tmp_path / "latents"
    root.mkdir()
    with pytest.raises(UserError, match="has no latents.npy; write latents with `cfh encode`"):
        load_grid("imagenet256_ablation", [f"data.root={root}"]).expand()  # checked up front
    np.save(root / "latents.npy", np.zeros((2, 4, 32, 32), np.float16))
    np.save(root / "latents_flip.npy", np.zeros((2, 4, 32, 32), np.float16))
    np.save(root / "labels.npy", np.zeros(2, np.int64))
    meta = {"channels": 4, "resolution": 32, "num_classes": 1000, "scale_factor": 0.18215,
            "flips": True}  # fmt: skip
    (root / "meta.json").write_text(json.dumps(meta))
    points = load_grid("imagenet256_ablation", [f"data.root={root}"]).expand()
    assert all(p.config["cluster"]["gpus_per_node"] > 0 for p in points)
    assert all(e.settings["eval"]["extractor"] == "inception" for e in points[0].evals)


# ---------------------------------------------------------------- validation errors


@pytest.mark.parametrize(
    ("body", "pattern"),
    [
        ("axes:\n  train.foo: [1]\n", r"axes.train.foo: unknown config key 'train.foo'"),
        (
            "axes:\n  train.steps: [ten]\n",
            r"train.steps='ten' is not allowed; expected an int",
        ),
        (
            "axes:\n  train.ar.steps: [128]\n",
            r"train.ar.steps=128 .*expected 1..L=64",
        ),
        (
            "axes:\n  train.ar.decay: [1.5]\n",
            r"train.ar.decay=1.5 .*a number in \(0, 1\]",
        ),
        (
            "axes:\n  train.ar.decay: [0]\n",
            r"train.ar.decay=0 .*a number in \(0, 1\]",
        ),
        ("axes:\n  model: [T, Q]\n", r"unknown model='Q'; allowed: .*XL"),
        ("axes:\n  data: [svhn]\n", r"unknown data='svhn'; allowed: captions, digits"),
        ("axes:\n  train.ar.steps: 4\n", r"axes.train.ar.steps: an axis must be a non-empty list"),
        (
            "eval:\n  axes:\n    sample.ar_steps: [100]\n",
            r"sample.ar_steps=100 .*1..L=64",
        ),
        ("eval:\n  axes:\n    train.steps: [1]\n", r"eval.axes.train.steps: eval points may"),
        ("axes:\n  sample.cfg: [1.0]\n", r"axes.sample.cfg: sample.\* and eval.\* keys belong"),
        ("zip:\n  - {train.lr: [1, 2], seed: [1]}\n", r"zip\[0\]: zipped lists must have equal"),
        ("resources:\n  cluster: moon\n", r"resources.cluster: unknown cluster profile 'moon'"),
        (
            "resources:\n  cluster: slurm\n  gpus_per_node: 2\n",
            r"cluster.gpus_per_node=2: cluster profile 'slurm' is a CPU profile.*slurm_gpu",
        ),
        ("resources: {nodes: 0}\n", r"cluster profile .local.*nodes=0 is not allowed"),
        ("axes:\n  run_dir: [a]\n", r"run_dir: the harness sets run_dir"),
        ("seeds: [a]\n", r"seeds: must be a non-empty list of integers"),
        ("axes: {seed: [1]}\nseeds: [0]\n", r"seeds: seed is also set"),
        ("axis:\n  seed: [1]\n", r"unknown key 'axis'; allowed: description, base, axes"),
        ("axes: [1, 2\n", r"does not parse"),
        ("base: {seed: 1}\n", r"does not parse.*duplicate key 'base'"),
    ],
)
def test_validation_errors_name_file_and_key(tmp_path, body, pattern):
    path = grid_file(tmp_path, body)
    with pytest.raises(UserError, match=pattern) as info:
        load_grid(str(path)).expand()
    assert str(path) in str(info.value)


def test_grid_names_are_checked(tmp_path):
    with pytest.raises(UserError, match="may only use letters"):
        load_grid("smoke;rm")
    with pytest.raises(UserError, match="unknown grid 'nope'; searched .*To add one"):
        load_grid("nope")
    bad = tmp_path / "a b.yaml"
    bad.write_text("base: {}\n")
    with pytest.raises(UserError, match="may only use letters"):
        load_grid(str(bad))


def test_cuda_on_a_cpu_profile_is_refused(tmp_path):
    path = grid_file(tmp_path, "", train__device="cuda")
    with pytest.raises(UserError, match="train.device=cuda: cluster profile 'local' is a CPU"):
        load_grid(str(path)).expand()


def test_the_token_order_grid_samples_each_model_in_its_own_order_and_in_random():
    points = load_grid("token_order").expand()
    for p in points:
        own = p.config["train"]["order"]
        orders = {(e.settings["sample"]["ar_steps"], e.settings["sample"]["order"])
                  for e in p.evals}  # fmt: skip
        assert {(1, own), (4, own), (4, "random")} == orders, (own, orders)
