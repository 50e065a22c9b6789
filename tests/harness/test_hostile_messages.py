"""The messages of issue 32, point 5: a long key or value is quoted cut short with its length,
a grid that is a directory or a broken link says so, and a command without its required
argument names only that."""

from __future__ import annotations

import pytest

from harness.cli.main import main as cfh


def error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[-1]


@pytest.mark.parametrize(
    "override, shown",
    [
        ("train." + "y" * 5000 + "=1", "(5,006 characters)"),
        ("train.order=" + "q" * 5000, "(5,000 characters)"),
        ("model=" + "z" * 5000, "(5,000 characters)"),
    ],
)
def test_a_long_key_or_value_is_quoted_cut_short(tmp_path, capsys, override, shown):
    assert cfh(["train", f"run_dir={tmp_path / 'r'}", override]) == 2
    line = error_line(capsys)
    assert shown in line and len(line) < 1000 and "y" * 100 not in line and "q" * 100 not in line
    assert not (tmp_path / "r").exists()


def test_a_grid_that_is_a_directory_or_a_broken_link_says_so(tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "cfg" / "grids"
    (cfg / "folder.yaml").mkdir(parents=True)
    (cfg / "gone.yaml").symlink_to(tmp_path / "nowhere.yaml")
    (tmp_path / "dir.yaml").mkdir()
    (tmp_path / "link.yaml").symlink_to(tmp_path / "nothing.yaml")
    monkeypatch.chdir(tmp_path)
    root = ["--root", str(tmp_path / "out"), "--config-dir", str(tmp_path / "cfg")]
    cases = {
        "folder": "folder.yaml is a directory, not a grid file",
        "gone": "gone.yaml is a broken symbolic link (to ",
        "dir.yaml": "grid file 'dir.yaml' is a directory, not a grid file",
        "link.yaml": "grid file 'link.yaml' is a broken symbolic link",
    }
    for grid, message in cases.items():
        assert cfh([*root, "sweep", grid, "--dry-run"]) == 2
        assert message in error_line(capsys), grid
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["sweep", "cancel", "status"])
def test_a_missing_grid_names_only_the_grid(capsys, command):
    with pytest.raises(SystemExit) as e:
        cfh([command])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().endswith("the following arguments are required: grid")
