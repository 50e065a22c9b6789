"""Signatures, run/grid folders, point.json and submission.json, and state derivation."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from core.errors import UserError
from core.names import SIGNATURE_RE
from harness.config.compose import resolve_overrides
from harness.grid import signatures
from harness.grid.files import load_grid
from harness.launch import runs
from harness.launch.status import derive_state


def sig(*overrides: str) -> str:
    return signatures.signature(resolve_overrides(list(overrides)))


def test_signature_is_short_hex_and_stable_across_processes():
    s = sig("model=S", "train.ar.steps=4", "train.ar.mode=fixed")
    assert SIGNATURE_RE.match(s)
    code = (
        "from harness.grid.signatures import signature; "
        "from harness.config.compose import resolve_overrides; "
        "print(signature(resolve_overrides(['train.ar.mode=fixed', 'model=S', "
        "'train.ar.steps=4'])))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == s  # override order and process do not matter


def test_default_config_has_an_empty_delta():
    assert signatures.config_delta(resolve_overrides([])) == {}
    assert sig() == sig("train.log_every=10")


@pytest.mark.parametrize(
    "override",
    [
        "train.log_every=1",
        "train.num_workers=4",
        "train.ckpt_every=7",
        "train.keep_checkpoints=9",
        "train.device=cpu",
        "train.compile=true",
        "train.max_nonfinite=3",
        "sample.num=5",
        "sample.ar_steps=4",
        "eval.extractor=inception",
        "cluster=slurm",
        "cluster.cpus_per_task=7",
        "run_dir=/somewhere",
    ],
)
def test_non_result_keys_do_not_change_the_signature(override):
    assert sig(override) == sig()


@pytest.mark.parametrize(
    "override",
    [
        "seed=1",
        "model=S",
        "data=mnist",
        "train.steps=10",
        "train.lr=0.002",
        "train.order=raster",
        "data.train_split=all",
        "train.ema_warmup=false",
    ],
)
def test_result_keys_change_the_signature(override):
    assert sig(override) != sig()


def test_the_official_recipe_keys_enter_the_signature_only_when_not_default():
    assert sig("data.train_split=train", "train.ema_warmup=true") == sig()
    delta = signatures.config_delta(resolve_overrides(["data.train_split=all"]))
    assert delta == {"data.train_split": "all"}


def test_the_number_of_ranks_is_in_the_signature():
    # one rank keeps the signatures of before; 2 ranks train with other random streams
    assert sig("cluster.tasks_per_node=1") == sig()
    two = sig("cluster.tasks_per_node=2")
    assert two != sig()
    assert sig("cluster=slurm", "cluster.nodes=2") == two
    assert sig("cluster=slurm_gpu", "cluster.gpus_per_node=2", "cluster.tasks_per_node=2") == two


def test_unused_keys_and_number_types_are_normalised():
    # train.ar.steps only matters when mode=fixed; train.ar.decay only when mode=decay
    assert sig("train.ar.mode=uniform", "train.ar.steps=4") == sig("train.ar.mode=uniform")
    assert sig("train.ar.mode=fixed", "train.ar.steps=4") != sig("train.ar.mode=fixed")
    assert sig("train.ar.mode=fixed", "train.ar.decay=0.5") == sig("train.ar.mode=fixed")
    assert sig("train.ar.decay=1") == sig("train.ar.decay=1.0")
    # bench.* settings only matter for bench points
    if "bench" in resolve_overrides([]):
        assert sig("bench.repeats=9") == sig()
        assert sig("bench.enabled=true") != sig()
    # the weighting schedule only shapes a ramp: irrelevant when max == min
    assert sig("train.loss.ar_weight.schedule=cosine") == sig()
    assert sig("train.loss.ar_weight.max=2.0", "train.loss.ar_weight.schedule=cosine") != sig(
        "train.loss.ar_weight.max=2.0"
    )


def test_names_cannot_escape_the_root(tmp_path):
    for bad in ("../x", "a/b", "", "a b", ".."):
        with pytest.raises(UserError, match="may only use letters"):
            runs.grid_dir(tmp_path, bad)
    with pytest.raises(UserError, match="10 lowercase hex"):
        runs.run_dir(tmp_path, "../../etc")
    assert runs.grid_dir(tmp_path, "ok_name-1") == tmp_path / "grids" / "ok_name-1"


def _grid(tmp_path, evals: str, name: str):
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            base: {{model: T, train.steps: 5}}
            eval:
              axes:
                sample.ar_steps: {evals}
            """
        )
    )
    return load_grid(str(path))


def test_write_run_folder_point_json_and_links(tmp_path):
    root = tmp_path / "out"
    g1 = _grid(tmp_path, "[1, 2]", "one")
    (p1,) = g1.expand()
    rdir = runs.write_run(root, g1.name, p1)
    assert rdir == root / "runs" / p1.signature
    cfg = (rdir / "config.yaml").read_text()
    assert f"run_dir: {rdir.resolve()}" in cfg and "steps: 5" in cfg
    point = json.loads((rdir / "point.json").read_text())
    assert point["signature"] == p1.signature and point["grids"] == ["one"]
    assert [e["values"] for e in point["evals"]] == [{"sample.ar_steps": 1}, {"sample.ar_steps": 2}]
    link = root / "grids" / "one" / "runs" / p1.signature
    assert link.is_symlink() and link.resolve() == rdir.resolve()

    # a second grid with the same training shares the folder and adds its eval points
    g2 = _grid(tmp_path, "[2, 4]", "two")
    (p2,) = g2.expand()
    assert p2.signature == p1.signature
    runs.write_run(root, g2.name, p2)
    point = json.loads((rdir / "point.json").read_text())
    assert point["grids"] == ["one", "two"]
    assert sorted(e["values"]["sample.ar_steps"] for e in point["evals"]) == [1, 2, 4]


def test_submission_history(tmp_path):
    runs.write_submission(tmp_path, job_id="1", backend="slurm", grid="g")
    runs.write_submission(tmp_path, cancelled=True)
    sub = runs.write_submission(tmp_path, job_id="2", backend="slurm", grid="g", cancelled=False)
    assert sub["job_id"] == "2" and sub["cancelled"] is False
    assert [h["job_id"] for h in sub["history"]] == ["1"]


@pytest.mark.parametrize(
    ("status", "submission", "sched", "expected"),
    [
        ({}, {}, None, "missing"),
        ({}, {"job_id": "7"}, "pending", "pending"),
        ({}, {"job_id": "7"}, "running", "running"),
        ({}, {"job_id": "7"}, None, "missing"),  # the scheduler forgot a job that never ran
        ({"state": "running", "job_id": "7"}, {"job_id": "7"}, "running", "running"),
        ({"state": "requeued", "job_id": "7"}, {"job_id": "7"}, "requeued", "requeued"),
        ({"state": "running", "job_id": "7"}, {"job_id": "7"}, "pending", "requeued"),
        ({"state": "running", "job_id": "7"}, {"job_id": "7"}, "failed", "failed"),
        ({"state": "running", "job_id": "7"}, {"job_id": "7"}, "cancelled", "cancelled"),
        ({"state": "failed", "job_id": "7"}, {"job_id": "7"}, "failed", "failed"),
        ({"state": "interrupted", "job_id": "7"}, {"job_id": "7"}, "failed", "interrupted"),
        # stopped by the scheduler's requeue (scontrol requeue: SIGTERM), the same job waits
        ({"state": "interrupted", "job_id": "7"}, {"job_id": "7"}, "requeued", "requeued"),
        ({"state": "interrupted", "job_id": "7"}, {"job_id": "7"}, "pending", "requeued"),
        ({"state": "interrupted", "job_id": "7"}, {"job_id": "7"}, "running", "running"),
        ({"state": "interrupted", "job_id": "7"}, {"job_id": "8"}, "pending", "pending"),
        ({"state": "failed", "job_id": "7"}, {"job_id": "8"}, "pending", "pending"),  # retried
        (
            {"state": "running", "job_id": "7"},
            {"job_id": "7", "cancelled": True},
            None,
            "cancelled",
        ),
        ({"state": "completed", "phase": "done", "evals": {"a": {}}}, {}, None, "completed"),
        ({"state": "completed", "phase": "done", "evals": {}}, {}, None, "pending"),
    ],
)
def test_state_derivation(status, submission, sched, expected):
    assert derive_state(status, submission, sched, ["a"]) == expected
