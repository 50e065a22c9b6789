"""core.provenance: the commit of a real git checkout, none for a folder that is not one."""

from __future__ import annotations

import subprocess
from pathlib import Path

from core.provenance import code_version, host_info, source_commit


def _git(root: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_the_commit_of_a_checkout_and_dirty_when_a_tracked_file_changed(tmp_path: Path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert source_commit.__wrapped__(tmp_path) == head[:12]
    (tmp_path / "untracked.txt").write_text("not part of the code")
    assert source_commit.__wrapped__(tmp_path) == head[:12]
    (tmp_path / "a.py").write_text("x = 2\n")
    assert source_commit.__wrapped__(tmp_path) == head[:12] + "+dirty"


def test_no_commit_outside_a_checkout(tmp_path: Path):
    assert source_commit.__wrapped__(tmp_path) is None


def test_version_and_host_are_plain_json_values():
    code, host = code_version(), host_info()
    assert set(code) == {"cfh", "commit"} and isinstance(code["cfh"], str)
    assert host["cores"] >= 1 and host["cpu"] and host["host"]
