"""Damaged files under a real local sweep: a flipped final checkpoint is redone from the previous
good one, a torn status.json shows as damaged and --retry repairs it, and a run whose every
checkpoint is damaged fails with their names instead of starting over."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from cfh_procs import REPO, cfh

from core.io import read_jsonl, read_status
from model.training.checkpoint import checkpoint_path, checkpoint_paths, read_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

BASE = {
    "model": "T",
    "data": "digits",
    "train.steps": 8,
    "train.batch_size": 16,
    "train.ckpt_every": 4,
    "train.log_every": 1,
    "sample.num": 20,
    "sample.steps": 4,
    "eval.extractor": "classifier",
    "eval.kid_subset_size": 10,
}


def grid(folder: Path, name: str, evals: bool) -> Path:
    evaluation = {"axes": {"sample.ar_steps": [2]}} if evals else False
    body = {"base": BASE, "seeds": [0], "eval": evaluation}  # one run (a grid lists its runs)
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(body))
    return path


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) - 4096
    data[at : at + 64] = bytes(b ^ 0xFF for b in data[at : at + 64])
    path.write_bytes(bytes(data))


@pytest.fixture
def trained(tmp_path) -> tuple[Path, Path]:
    """(root, run folder) of one point trained by a local sweep without eval points."""
    os.environ.setdefault("CFH_CACHE", str(REPO / ".cache" / "cfh"))
    root = tmp_path / "out"
    code, out = cfh("--root", str(root), "sweep", str(grid(tmp_path, "train_only", False)))
    assert code == 0 and "1 completed" in out, out
    (run,) = (root / "runs").iterdir()
    return root, run


def test_a_damaged_final_checkpoint_is_redone_from_the_previous(trained, tmp_path):
    root, run = trained
    final = checkpoint_path(run, 8)
    before = read_checkpoint(final)
    flip(final)
    code, out = cfh("--root", str(root), "sweep", str(grid(tmp_path, "with_eval", True)))
    assert code == 0 and "1 completed" in out, out  # evaluated, not failed forever
    assert "ckpt_00000008.pt is damaged" in (run / "log.txt").read_text()
    after = read_checkpoint(final)  # verified: rewritten, and equal to the original
    for part in ("model", "ema"):
        assert all(torch.equal(v, after[part][k]) for k, v in before[part].items())
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == list(range(1, 9))


def test_a_torn_status_json_is_damaged_until_retried(trained, tmp_path):
    root, run = trained
    with_eval = grid(tmp_path, "with_eval", True)
    code, out = cfh("--root", str(root), "sweep", str(with_eval))
    fid = read_status(run)["evals"]
    status = run / "status.json"
    status.write_text(status.read_text()[: len(status.read_text()) // 2])  # torn by hand
    code, out = cfh("--root", str(root), "status", "with_eval")
    assert code == 1 and " damaged " in out and "^ damaged: status.json: not JSON" in out, out
    code, out = cfh("--root", str(root), "sweep", str(with_eval), "--retry")
    assert code == 0 and "with_eval: 1 completed" in out, out
    assert read_status(run)["evals"].keys() == fid.keys()
    assert [e["fid"] for e in read_status(run)["evals"].values()] == [
        e["fid"] for e in fid.values()
    ]  # the eval record was reused, the checkpoint too: nothing retrained


def test_every_checkpoint_damaged_fails_with_their_names(trained, tmp_path):
    root, run = trained
    for path in checkpoint_paths(run):
        flip(path)
    code, out = cfh("--root", str(root), "sweep", str(grid(tmp_path, "with_eval", True)))
    assert code == 1 and "1 failed" in out, out
    assert "^ DamagedCheckpoints: run_dir=" in out and "ckpt_00000004.pt, ckpt_00000008.pt" in out
    assert max(r["step"] for r in read_jsonl(run / "metrics.jsonl")) == 8  # no restart at step 0
