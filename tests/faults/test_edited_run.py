"""A run folder's config.yaml edited behind cfh's back (issue 32, point 4): a resume, an
evaluation and a sweep refuse it in one line (or, with --new-run, set the old files aside and
train it again), and the report marks the folder damaged instead of reading its results."""

from __future__ import annotations

import json

import pytest
import yaml
from cfh_procs import TINY, cfh

from core.config.identity import IDENTITY_FIELD, config_identity, stored_config_problem
from core.io import read_status
from core.runfolder import read_run_folder
from harness.config.compose import resolve_overrides
from model.training.checkpoint import checkpoint_paths
from reports.rows import read_run

pytestmark = pytest.mark.timeout(600)
STEPS = ["train.steps=2", "train.ckpt_every=1", "train.lr=1e-3"]
EDITED = "config.yaml was changed after cfh wrote it"


def edit_lr(run, lr: float) -> None:
    """What a user does by hand: a new train.lr in the run's config.yaml."""
    path = run / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["train"]["lr"] = lr
    path.write_text(yaml.safe_dump(cfg))


def assert_refused(run, *said: str) -> None:
    """A resume and an evaluation of `run` each refused in one line that holds `said` and
    offers --new-run, with nothing in the folder written."""
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    for argv in (
        ["train", f"run_dir={run}", "train.steps=9"],
        ["evaluate", f"run_dir={run}", "sample.num=10", "eval.kid_subset_size=5"],
    ):
        code, out = cfh(*argv)
        lines = out.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "--new-run" in lines[0], out
        assert all(s in lines[0] for s in said), out
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before  # nothing written


def test_the_identity_ignores_resumable_keys_only():
    base = resolve_overrides([])
    same = resolve_overrides(["train.steps=9", "train.log_every=3", "sample.num=7"])
    other = resolve_overrides(["train.lr=3e-4"])
    assert config_identity(base) == config_identity(same) != config_identity(other)
    old = json.loads(json.dumps(base))
    del old["data"]["train_split"]  # a folder written before the key existed
    assert config_identity(old) == config_identity(base)


def test_an_edited_run_is_refused_then_trained_again_with_new_run(tmp_path):
    run = tmp_path / "run"
    code, out = cfh("train", f"run_dir={run}", *TINY, *STEPS)
    assert code == 0, out
    recorded = read_status(run)[IDENTITY_FIELD]
    assert stored_config_problem(run) is None
    edit_lr(run, 3e-3)
    assert_refused(run, EDITED, recorded)
    folder = read_run_folder(run)
    assert folder.edited and any(EDITED in p for p in folder.problems)
    rows, _ = read_run(run)
    assert rows[0]["state"] == "damaged" and EDITED in rows[0]["problems"]

    code, out = cfh("train", f"run_dir={run}", "train.steps=3", "--new-run")
    assert code == 0, out
    aside = [p for p in run.iterdir() if p.name.startswith("replaced-")]
    assert len(aside) == 1 and len(checkpoint_paths(aside[0])) == 2
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == 3e-3
    assert len(checkpoint_paths(run)) == 3  # trained again from step 0
    assert read_status(run)[IDENTITY_FIELD] != recorded
    assert stored_config_problem(run) is None


def test_an_edited_folder_from_before_the_record_is_caught_by_its_checkpoint(tmp_path):
    """A folder cfh wrote before it recorded config identities (status.json without one) has
    only its checkpoints to say what it trained: a resume and an evaluation compare config.yaml
    with the newest checkpoint's config; --new-run sets the files aside."""
    run = tmp_path / "run"
    code, out = cfh("train", f"run_dir={run}", *TINY, *STEPS)
    assert code == 0, out
    status = json.loads((run / "status.json").read_text())
    del status[IDENTITY_FIELD]  # as cfh wrote it before the record existed
    (run / "status.json").write_text(json.dumps(status))
    code, out = cfh("train", f"run_dir={run}", "train.steps=3")  # unedited: resumes
    assert code == 0 and "resumed from step 2" in (run / "log.txt").read_text(), out
    status = json.loads((run / "status.json").read_text())
    del status[IDENTITY_FIELD]
    (run / "status.json").write_text(json.dumps(status))
    edit_lr(run, 3e-3)
    assert_refused(
        run,
        "config.yaml differs from the config ckpt_00000003.pt was trained with",
        "(train.lr: 0.001 -> 0.003)",
    )

    code, out = cfh("train", f"run_dir={run}", "train.steps=2", "--new-run")
    assert code == 0 and "new run: " in out, out
    assert len([p for p in run.iterdir() if p.name.startswith("replaced-")]) == 1
    assert len(checkpoint_paths(run)) == 2  # trained again from step 0


def test_a_sweep_refuses_an_edited_run_folder(tmp_path):
    grid = tmp_path / "one.yaml"
    grid.write_text(
        "description: one tiny point\n"
        "base: {model: T, data: digits, train.batch_size: 8, train.steps: 2, "
        "train.log_every: 1, train.device: cpu}\n"
        "seeds: [0]\neval: false\nresources: {cluster: local}\n"
    )
    root = ["--root", str(tmp_path / "out")]
    code, out = cfh(*root, "sweep", str(grid))
    assert code == 0, out
    (run,) = (tmp_path / "out" / "runs").iterdir()
    edit_lr(run, 5e-4)
    for extra in (["--dry-run"], []):
        code, out = cfh(*root, "sweep", str(grid), *extra)
        lines = out.strip().splitlines()
        assert code == 2 and len(lines) == 1, out
        assert f"run folder {run}:" in lines[0] and "train.lr: 0.0001 -> 0.0005" in lines[0]
    code, out = cfh(*root, "sweep", str(grid), "--new-run")
    assert code == 0, out
    assert any(p.name.startswith("replaced-") for p in run.iterdir())
    assert read_status(run)["state"] == "completed"
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == 1e-4
