"""Grid files: expansion (cartesian, zip, include/exclude, seeds, eval axes), validation errors."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from core.errors import UserError
from harness.grid.files import list_grids, load_grid

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
        eval__kid_subset_size=50,
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
    path = grid_file(tmp_path, "seeds: [0]\neval: false\n")
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
    overrides = ["train.steps=7", "sample.num=9", "eval.kid_subset_size=9", "cluster.parallelism=2"]
    grid = load_grid(str(path), overrides)
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
        with pytest.raises(UserError, match="data=latents needs data.root"):
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


# ---------------------------------------------------------------- plans that cannot run


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n", "{}\n"])
def test_an_empty_grid_file_is_refused(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=f"grid file {path} is empty; a grid lists its runs"):
        load_grid(str(path))


def test_a_grid_that_varies_nothing_is_refused(tmp_path):
    for body in ("", "eval: false\n", "eval:\n  base: {sample.num: 200}\n"):
        path = grid_file(tmp_path, body)
        with pytest.raises(UserError, match=f"grid {path}: axes: the grid has no axis, zip, "):
            load_grid(str(path)).expand()
    path = grid_file(tmp_path, "")
    assert len(load_grid(str(path), ["train.lr=1e-4,2e-4"]).expand()) == 2  # a sweep is an axis
    path = grid_file(tmp_path, "seeds: [0]\n")  # a single run
    assert [p.axes for p in load_grid(str(path)).expand()] == [{"seed": 0}]
    path = grid_file(tmp_path, "eval:\n  axes:\n    sample.ar_steps: [1, 2]\n")  # one run, 2 evals
    assert [len(p.evals) for p in load_grid(str(path)).expand()] == [2]


def test_a_huge_grid_is_refused_by_counting_before_expanding(tmp_path):
    axes = "".join(f"  {k}: {list(range(1, 11))}\n" for k in (
        "train.warmup_steps", "train.ckpt_every", "train.log_every", "train.keep_checkpoints",
        "train.order_block", "train.max_nonfinite", "seed"))  # fmt: skip
    path = grid_file(tmp_path, f"axes:\n{axes}")
    t0 = time.perf_counter()
    message = r"10,000,000 train points \(train.warmup_steps 10 x .* x seed 10, before exclu"
    with pytest.raises(UserError, match=message + r"sions\); the limit is 10,000"):
        load_grid(str(path)).expand()
    assert time.perf_counter() - t0 < 1.0  # counted, not expanded (expanding would take days)
    path = grid_file(tmp_path, "include: [{seed: 1}, {seed: 2}]\n", "two")
    with pytest.raises(UserError, match=r"10,002 train points \(2 include entries x train.steps "):
        load_grid(str(path), ["train.steps=range(1,5002)"]).expand()
    evals = "eval:\n  axes:\n    sample.seed: " + str(list(range(1001))) + "\n"
    path = grid_file(tmp_path, "axes:\n  seed: " + str(list(range(100))) + "\n" + evals, "ev")
    with pytest.raises(UserError, match=r"eval: the grid has 100,100 eval points \(100 train "):
        load_grid(str(path)).expand()


def test_plans_that_cannot_run_are_refused_in_every_point(tmp_path):
    path = grid_file(tmp_path, "axes:\n  train.batch_size: [64, 2000]\n")
    with pytest.raises(
        UserError,
        match=r"point \{train.batch_size=2000\}: train.batch_size=2000 "
        r"is larger than the train split of data=digits \(1,437 images\)",
    ):
        load_grid(str(path)).expand()  # fmt: skip
    body = "seeds: [0]\nresources: {tasks_per_node: 2}\n"
    path = grid_file(tmp_path, body, "ranks", train__batch_size=1438)
    with pytest.raises(
        UserError,
        match=r"1438 \(719 per rank x 2 ranks\) is larger .* allowed: "
        "a multiple of 2 up to 1436",
    ):
        load_grid(str(path)).expand()  # fmt: skip
    body = "seeds: [0]\neval:\n  axes:\n    sample.num: [200, 50]\n"
    path = grid_file(tmp_path, body, "kid", eval__kid_subset_size=100)
    with pytest.raises(
        UserError,
        match=r"eval point \{sample.num=50\}: eval.kid_subset_size=100 "
        r"is above sample.num=50 .*allowed: 2..50",
    ):
        load_grid(str(path)).expand()  # fmt: skip
    with pytest.raises(UserError, match=r"kid_subset_size=100 is above sample.num=20"):
        load_grid(str(grid_file(tmp_path, "seeds: [0]\n")), ["sample.num=20"]).expand()


def test_a_grid_name_is_not_a_path(tmp_path, monkeypatch):
    (tmp_path / "x").write_text("axes: {seed: [1]}\n")  # a file, but not a .yaml one
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    for name in ("../x", "sub/../../x", "/etc/passwd"):
        with pytest.raises(
            UserError,
            match=f"grid '{name}' is neither a grid name nor a .yaml "
            "file: a name is looked up in .*pass the folder with `cfh --config-dir",
        ):
            load_grid(name)  # fmt: skip
    (tmp_path / "x.yaml").write_text("axes: {seed: [1]}\n")  # named by its .yaml path: read
    assert len(load_grid("../x.yaml").expand()) == 1
