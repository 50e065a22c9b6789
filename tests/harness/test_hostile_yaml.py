"""Issue 32 point 2: every YAML reader of cfh refuses a file past core.yaml_bounds (an alias
bomb, deep nesting, a huge file) in one line naming the file, exit 2 from the CLI, nothing
written: grid files, config dirs (hydra's files, cluster profiles), a run's config.yaml (train,
evaluate, the point job's reader, `cfh sweep --extend`) and the run-folder reader of reports."""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

import pytest

from core import yaml_bounds as yb
from core.config import read_config_dict
from core.errors import UserError
from core.runfolder import read_run_folder
from harness.cli.main import main
from harness.config import search as config_search
from harness.grid.files import load_grid

NEEDLES = {
    "bomb": f"YAML expands to more than {yb.MAX_NODES} nodes",
    "deep": f"YAML nests deeper than {yb.MAX_DEPTH} levels",
    "big": f"over the {yb.MAX_BYTES}-byte limit",
}


def hostile(kind: str) -> str:
    """The text of an alias bomb (9 levels x 10 aliases), a 100,000-deep nesting or a 10 MB
    file."""
    if kind == "bomb":
        lines = ["a0: &a0 [" + ", ".join(['"lol"'] * 10) + "]"]
        lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
        return "\n".join(lines) + "\n"
    if kind == "deep":
        return "base: " + "[" * 100_000 + "]" * 100_000 + "\n"
    return "description: " + "x" * 10_000_000 + "\n"


def cfh(*argv: str) -> tuple[int, str, float]:
    """`cfh` in this process: (exit code, stderr, seconds)."""
    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, err.getvalue(), time.perf_counter() - t0


def refused(code: int, err: str, path: Path, kind: str, seconds: float, what: str = "") -> None:
    print(f"{what or path.name} ({kind}): exit {code} in {seconds * 1000:.0f} ms: {err.strip()}")
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert str(path) in err and NEEDLES[kind] in err, err


def tree(folder: Path) -> dict[str, int]:
    """Every file under `folder` with its mtime: what a refusal must leave as it was."""
    return {str(p): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


@pytest.fixture
def no_user_dirs(monkeypatch):
    """No $CFH_CONFIG_DIR from the caller; restored afterwards (cli.main sets it)."""
    monkeypatch.delenv(config_search.CONFIG_DIR_ENV, raising=False)


@pytest.fixture(autouse=True)
def fresh_checks():
    yb._checked.clear()


# ---------------------------------------------------------------- grid files


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", list(NEEDLES))
def test_a_hostile_grid_file_is_refused_by_every_command_that_reads_it(
    tmp_path, kind, no_user_dirs
):
    conf = tmp_path / "conf"
    grid = conf / "grids" / f"{kind}.yaml"
    grid.parent.mkdir(parents=True)
    grid.write_text(hostile(kind))
    with pytest.raises(UserError, match=f"^grid file {grid}: .*{NEEDLES[kind]}"):
        load_grid(str(grid))
    root = tmp_path / "root"
    by_name = ("--config-dir", str(conf))
    for argv in (
        ("sweep", str(grid)),  # by its path, no --dry-run
        ("sweep", str(grid), "--dry-run"),
        (*by_name, "sweep", kind),
        (*by_name, "status", kind),
    ):
        code, err, seconds = cfh("--root", str(root), *argv)
        refused(
            code, err, grid, kind, seconds, f"cfh {' '.join(a for a in argv if a != str(conf))}"
        )
    assert not root.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf"]


def test_a_grid_with_plain_anchors_reads_as_before(tmp_path, no_user_dirs):
    """Aliases within the bounds still work; `1e-4` is still a float; a duplicate key is still
    refused by the grid's own loader."""
    grid = tmp_path / "anchors.yaml"
    grid.write_text(
        "base: {model: T, data: digits, train.steps: &n 2}\n"
        "include: [{train.lr: 3e-4, train.steps: *n}]\n"
        "axes: {train.lr: [1e-4, 2e-4]}\n"
    )
    points = load_grid(str(grid)).expand()
    assert sorted(p.config["train"]["lr"] for p in points) == [1e-4, 2e-4, 3e-4]
    assert {p.config["train"]["steps"] for p in points} == {2}
    grid.write_text("base: {seed: 1}\nbase: {seed: 2}\n")
    with pytest.raises(UserError, match="does not parse.*duplicate key 'base'"):
        load_grid(str(grid))


# ---------------------------------------------------------------- config dirs (hydra's files)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", list(NEEDLES))
@pytest.mark.parametrize("file", ["model/T.yaml", "config.yaml", "cluster/local.yaml"])
def test_a_hostile_file_in_a_config_dir_is_refused_before_hydra_reads_it(
    tmp_path, kind, file, no_user_dirs
):
    conf = tmp_path / "conf"
    (conf / file).parent.mkdir(parents=True)
    (conf / file).write_text(hostile(kind))
    root = tmp_path / "root"
    for argv in (
        ("train", "--cfg", "job"),
        ("train", f"run_dir={tmp_path / 'run'}", "train.steps=1"),
        ("sweep", "smoke"),
        ("sweep", "smoke", "--dry-run"),
    ):
        code, err, seconds = cfh("--config-dir", str(conf), "--root", str(root), *argv)
        refused(code, err, conf / file, kind, seconds, f"{file} cfh {' '.join(argv)}")
        assert err.startswith(f"error: config file {conf / file}: ")
    assert not root.exists() and not (tmp_path / "run").exists()


def test_a_cluster_profile_past_the_bounds_is_refused(tmp_path):
    from harness.config.profiles import _load_profile

    path = tmp_path / "mine.yaml"
    path.write_text(hostile("bomb"))
    with pytest.raises(UserError, match=f"^cluster profile {path}: .*more than"):
        _load_profile(path)


def test_the_shipped_config_dirs_pass_the_check():
    t0 = time.perf_counter()
    config_search.check_config_files()
    print(f"check_config_files (shipped dir, cold): {(time.perf_counter() - t0) * 1000:.1f} ms")


# ---------------------------------------------------------------- a run's config.yaml


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", list(NEEDLES))
def test_a_hostile_run_config_is_refused_by_train_and_evaluate(tmp_path, kind, no_user_dirs):
    run = tmp_path / "run"
    run.mkdir()
    stored = run / "config.yaml"
    stored.write_text(hostile(kind))
    before = tree(tmp_path)
    for argv in (
        ("train", f"run_dir={run}", "train.steps=3"),
        ("evaluate", f"run_dir={run}"),
        ("sample", f"run_dir={run}"),
    ):
        code, err, seconds = cfh(*argv)
        refused(code, err, stored, kind, seconds, f"run config cfh {argv[0]}")
        assert "restore it, or use a new run_dir" in err
    assert tree(tmp_path) == before
    with pytest.raises(UserError, match=f"^{stored}: .*{NEEDLES[kind]}"):
        read_config_dict(stored)  # the point job's and the trainer's reader


@pytest.mark.timeout(30)
def test_sweep_extend_refuses_a_hostile_run_config(tmp_path):
    from harness.launch import runs
    from harness.sweep.reconcile import Decision, extend_runs

    path = runs.run_dir(str(tmp_path), "abc123def0") / "config.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(hostile("bomb"))
    decision = Decision("abc123def0", {}, "completed", "skip", point=object())  # type: ignore[arg-type]
    with pytest.raises(UserError, match=f"^{path}: YAML expands to more than"):
        extend_runs(str(tmp_path), [decision], 10)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", list(NEEDLES))
def test_the_run_folder_reader_notes_a_hostile_config_as_damaged(tmp_path, kind):
    (tmp_path / "status.json").write_text(json.dumps({"state": "completed"}))
    (tmp_path / "config.yaml").write_text(hostile(kind))
    folder = read_run_folder(tmp_path, full=True)
    assert folder.config == {}
    assert len(folder.problems) == 1 and folder.problems[0].startswith("damaged: config.yaml: ")
    assert NEEDLES[kind] in folder.problems[0]
