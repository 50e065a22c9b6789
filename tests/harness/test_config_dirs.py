"""User config dirs (--config-dir, $CFH_CONFIG_DIR): their grids, cluster profiles, model and data
configs are found beside the shipped ones (experiments/), and their files win on a name clash.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest

from core.errors import UserError
from harness.cli.main import main
from harness.config import compose as config
from harness.config import search as config_search
from harness.grid.files import grid_path, list_grids, load_grid

GRID = """
base: {model: T, data: digits, train.steps: 2}
axes:
  train.lr: [1e-3, 2e-3]
resources:
  cluster: mybox
"""


def user_dir(root: Path) -> Path:
    """A config dir with its own grid and profile, and a data/digits.yaml overriding the shipped."""
    (root / "grids").mkdir(parents=True)
    (root / "cluster").mkdir()
    (root / "data").mkdir()
    (root / "grids" / "mine.yaml").write_text(GRID)
    local = (config_search.SHIPPED_CONFIG_DIR / "cluster" / "local.yaml").read_text()
    (root / "cluster" / "mybox.yaml").write_text(
        local.replace("name: local", "name: mybox").replace("cpus_per_task: 2", "cpus_per_task: 1")
    )
    digits = (config_search.SHIPPED_CONFIG_DIR / "data" / "digits.yaml").read_text()
    assert "flip: false" in digits
    (root / "data" / "digits.yaml").write_text(digits.replace("flip: false", "flip: true"))
    return root


def cfh(*argv: str) -> tuple[int, str]:
    """Run `cfh` in this process; (exit code, stdout + stderr)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(argv))
    return code, out.getvalue()


@pytest.fixture
def no_user_dirs(monkeypatch):
    """No $CFH_CONFIG_DIR from the caller; restored afterwards (cli.main sets it)."""
    monkeypatch.delenv(config_search.CONFIG_DIR_ENV, raising=False)


def test_user_files_are_found_and_win(tmp_path, monkeypatch, no_user_dirs):
    assert config.load_config(["data=digits"]).data.flip is False
    assert "mybox" not in config_search.group_options("cluster")
    mine = user_dir(tmp_path / "conf")
    monkeypatch.setenv(config_search.CONFIG_DIR_ENV, str(mine))
    assert config.load_config(["data=digits"]).data.flip is True  # the user's file won
    assert config.load_config(["data=mnist"]).data.name == "mnist"  # shipped ones still there
    assert {"local", "slurm", "mybox"} <= set(config_search.group_options("cluster"))
    assert {"mine", "smoke"} <= set(list_grids())
    assert grid_path("mine") == mine / "grids" / "mine.yaml"
    points = load_grid("mine").expand()
    assert len(points) == 2
    assert points[0].config["cluster"]["name"] == "mybox"
    assert points[0].config["cluster"]["cpus_per_task"] == 1
    assert points[0].config["data"]["flip"] is True


def test_earlier_dirs_win_and_a_user_grid_shadows_a_shipped_one(
    tmp_path, monkeypatch, no_user_dirs
):
    first, second = tmp_path / "a", tmp_path / "b"
    for d, steps in ((first, 3), (second, 5)):
        (d / "grids").mkdir(parents=True)
        grid = f"base: {{model: T, train.steps: {steps}}}\nseeds: [0]\n"
        (d / "grids" / "smoke.yaml").write_text(grid)
    monkeypatch.setenv(config_search.CONFIG_DIR_ENV, os.pathsep.join([str(first), str(second)]))
    assert grid_path("smoke") == first / "grids" / "smoke.yaml"
    assert [p.config["train"]["steps"] for p in load_grid("smoke").expand()] == [3]


def test_cli_config_dir_option(tmp_path, monkeypatch, no_user_dirs):
    code, out = cfh("--root", str(tmp_path / "out"), "sweep", "mine", "--dry-run")
    assert code == 2 and "unknown grid 'mine'" in out
    mine = user_dir(tmp_path / "conf")
    monkeypatch.chdir(tmp_path)  # a relative --config-dir is made absolute for the jobs
    code, out = cfh("--config-dir", "conf", "--root", "out", "sweep", "mine", "--dry-run")
    assert code == 0, out
    assert os.environ[config_search.CONFIG_DIR_ENV] == str(mine)
    assert not (tmp_path / "out" / "runs").exists()  # a dry run writes no runs


def test_a_missing_config_dir_is_a_user_error(tmp_path, monkeypatch, no_user_dirs):
    monkeypatch.setenv(config_search.CONFIG_DIR_ENV, str(tmp_path / "nope"))
    with pytest.raises(UserError, match="no such folder"):
        config.load_config([])
    code, out = cfh("--root", str(tmp_path / "out"), "sweep", "smoke", "--dry-run")
    assert code == 2 and "nope" in out
