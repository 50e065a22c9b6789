"""A root written by the code before the restructuring (9716d23) is found, resumed and reported.

tests/fixtures/old_runs/ holds what that code wrote for `cfh --root root --config-dir conf sweep
old_tiny cluster=local` (two tiny points, model T on digits, 4 steps; see its README.md), so that
the current code must read the same run folders, status files, plan and checkpoints (`cfh status`,
the results loader of `cfh report`, `cfh train`), and compute the same run signatures (`cfh sweep`).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shutil
from pathlib import Path

import pytest

from harness.cli.main import main
from reports.results import load_results

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "old_runs"
SIGNATURES = ("3b681abe0b", "a43e999d00")  # the run folders the old code named
pytestmark = pytest.mark.slow


def cfh(*argv: str) -> tuple[int, str]:
    """Run `cfh` in this process; (exit code, stdout + stderr)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(argv))
    return code, out.getvalue()


@pytest.fixture
def old(tmp_path, monkeypatch) -> dict[str, Path]:
    """A copy of the old root (checkpoints unpacked) and of its config dir, in tmp_path."""
    monkeypatch.setenv("CFH_CACHE", os.environ.get("CFH_CACHE", str(REPO / ".cache" / "cfh")))
    monkeypatch.delenv("CFH_CONFIG_DIR", raising=False)  # main() sets it; restored afterwards
    monkeypatch.delenv("CFH_ROOT", raising=False)
    root, conf = tmp_path / "root", tmp_path / "conf"
    shutil.copytree(FIXTURE / "root", root, symlinks=True)  # grids/<name>/runs links
    shutil.copytree(FIXTURE / "conf", conf)
    for packed in root.glob("runs/*/checkpoints/*.pt.gz"):
        packed.with_suffix("").write_bytes(gzip.decompress(packed.read_bytes()))
        packed.unlink()
    return {"root": root, "conf": conf}


def old_evals() -> dict[tuple[str, int], float]:
    """(signature, S_eval) -> FID, as the old code recorded them in status.json."""
    fids = {}
    for sig in SIGNATURES:
        status = json.loads((FIXTURE / "root" / "runs" / sig / "status.json").read_text())
        for entry in status["evals"].values():
            fids[(sig, entry["s_eval"])] = entry["fid"]
    return fids


def test_status_reads_the_old_root(old):
    code, out = cfh("--root", str(old["root"]), "status", "old_tiny")
    assert code == 0, out
    assert "old_tiny: 2 completed" in out, out
    for sig in SIGNATURES:
        assert sig in out, out
    assert "308.54" in out and "432.10" in out, out


def test_sweep_sees_the_old_points_done(old):
    """The same grid file gives the same signatures: nothing to submit, and nothing trained."""
    argv = ("--root", str(old["root"]), "--config-dir", str(old["conf"]), "sweep", "old_tiny")
    code, out = cfh(*argv, "--dry-run")
    assert code == 0, out
    assert "plan: 0 to submit, 2 to skip" in out, out
    for sig in SIGNATURES:
        assert f"{sig}  fixed" in out, out
    code, out = cfh(*argv)
    assert code == 0, out
    assert "old_tiny: 2 completed" in out, out
    runs = sorted(p.name for p in (old["root"] / "runs").iterdir())
    assert runs == sorted(SIGNATURES)


def test_results_loader_reads_the_old_root(old):
    """What `cfh report` tables and plots (the whole report takes 30-70 s here: plots, sizes)."""
    results = load_results(old["root"], "old_tiny")
    got = {(r.signature, int(r.s_eval)): r.fid for r in results.itertuples()}
    assert got == pytest.approx(old_evals())
    assert set(results["state"]) == {"completed"}


def test_train_resumes_an_old_checkpoint(old):
    run = old["root"] / "runs" / "a43e999d00"
    point = json.loads((run / "point.json").read_text())
    overrides = [o for o in point["overrides"] if not o.startswith("train.steps=")]
    code, out = cfh("train", f"run_dir={run}", *overrides, "train.steps=6")
    assert code == 0, out
    log = (run / "log.txt").read_text()
    assert "resumed from step 4" in log, log[-3000:]
    assert [p.name for p in (run / "checkpoints").glob("*.pt")] == ["ckpt_00000006.pt"]
    steps = [
        json.loads(line).get("step") for line in (run / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps[:2] == [2, 4] and steps[-1] == 6  # the old rows kept, the new ones appended
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "completed" and status["step"] == 6
