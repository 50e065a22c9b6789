"""Trainer: exact resume, corrupt checkpoints, refused configs, non-finite losses, signals."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from core.errors import UserError
from core.io import read_jsonl, read_status
from core.records import metrics_row_problem
from harness.config.compose import load_config
from model.training.checkpoint import checkpoint_paths
from model.training.trainer import TrainingFailed, train
from reports.results import train_stats

TINY = [
    "model=T",
    "data=digits",
    "train.batch_size=16",
    "train.log_every=10",
    "train.lr=1e-3",
    "train.ema_decay=0.99",
    "train.ar.mode=decay",
]


def _cfg(run_dir: Path, *extra: str):
    return load_config([*TINY, f"run_dir={run_dir}", *extra])


def _final_state(run_dir: Path) -> dict:
    path = checkpoint_paths(run_dir)[-1]
    return torch.load(path, map_location="cpu", weights_only=True)


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_jsonl(run_dir / "metrics.jsonl")]


def test_resume_is_bitwise_exact(tmp_path: Path) -> None:
    """60 steps in one go == 30 steps, then resume to 60 (weights, EMA, optimizer, metrics)."""
    one = tmp_path / "one"
    train(_cfg(one, "train.steps=60", "train.ckpt_every=1000"))
    two = tmp_path / "two"
    train(_cfg(two, "train.steps=30", "train.ckpt_every=1000"))
    status = read_status(two)
    assert status["state"] == "completed"
    assert set(status["code"]) == {"cfh", "commit"}  # what a report names behind the numbers
    assert status["machine"]["cores"] >= 1 and status["machine"]["gpu"] is None
    train(_cfg(two, "train.steps=60", "train.ckpt_every=1000"))  # raised steps continue
    a, b = _final_state(one), _final_state(two)
    assert a["step"] == b["step"] == 60
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    assert _losses(one) == _losses(two)
    assert a["data"] == b["data"]


def test_corrupt_latest_checkpoint_falls_back(tmp_path: Path, caplog) -> None:
    run = tmp_path / "run"
    train(_cfg(run, "train.steps=20", "train.ckpt_every=10"))
    paths = checkpoint_paths(run)
    assert [p.name for p in paths] == ["ckpt_00000010.pt", "ckpt_00000020.pt"]
    paths[-1].write_bytes(paths[-1].read_bytes()[:1000])  # truncated, as by a crash mid-copy
    train(_cfg(run, "train.steps=25", "train.ckpt_every=10"))
    err = caplog.text
    assert "ckpt_00000020.pt is damaged: sha256" in err and "using the previous" in err
    assert _final_state(run)["step"] == 25


def test_changed_model_or_data_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_cfg(run, "train.steps=2"))
    with pytest.raises(UserError, match="different config.*model.name"):
        train(_cfg(run, "train.steps=4", "model=XS"))
    with pytest.raises(UserError, match="train.ar.mode"):
        train(_cfg(run, "train.steps=4", "train.ar.mode=fixed"))


def test_nonfinite_loss_fails_the_run(tmp_path: Path, monkeypatch) -> None:
    import model.training.step as trainer_step

    real = trainer_step.causalfusion_loss

    def poisoned(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        return loss * float("nan"), stats

    monkeypatch.setattr(trainer_step, "causalfusion_loss", poisoned)
    run = tmp_path / "run"
    with pytest.raises(TrainingFailed, match="non-finite loss"):
        train(_cfg(run, "train.steps=5"))
    status = read_status(run)
    assert status["state"] == "failed" and "non-finite" in status["error"]


def _poison_calls(monkeypatch, calls: set[int]) -> None:
    """The loss of the given calls (0-based: one per step) becomes NaN."""
    import model.training.step as trainer_step

    real, count = trainer_step.causalfusion_loss, [0]

    def poisoned(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        count[0] += 1
        return (loss * float("nan") if count[0] - 1 in calls else loss), stats

    monkeypatch.setattr(trainer_step, "causalfusion_loss", poisoned)


def test_a_nonfinite_step_is_noticed_at_the_next_log_step(tmp_path: Path, monkeypatch) -> None:
    """The step skips itself on the device; the trainer reads the flag at its log step (at most
    train.log_every steps later) and fails there, naming the step."""
    _poison_calls(monkeypatch, {2})
    run = tmp_path / "run"
    with pytest.raises(TrainingFailed, match=r"non-finite loss .* at step 2, 1 such steps"):
        train(_cfg(run, "train.steps=20"))  # train.log_every=10
    (row,) = read_jsonl(run / "metrics.jsonl")
    assert row["step"] == 10 and row["nonfinite_steps"] == 1 and row["loss"] > 0
    assert read_status(run)["state"] == "failed" and not checkpoint_paths(run)


def test_tolerated_nonfinite_steps_and_the_time_shares(tmp_path: Path, monkeypatch) -> None:
    """train.max_nonfinite=1: one skipped step, the run goes on; rows say where time went."""
    _poison_calls(monkeypatch, {3})
    run = tmp_path / "run"
    train(_cfg(run, "train.steps=20", "train.max_nonfinite=1"))  # train.log_every=10
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r.get("nonfinite_steps") for r in rows] == [1, None]
    for r in rows:
        assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"])
        assert 0 <= r["data_wait_frac"] <= 1 and 0 < r["step_frac"] <= 1
        assert r["data_wait_frac"] + r["step_frac"] <= 1 + 1e-9
        assert metrics_row_problem(r) is None
    assert metrics_row_problem({**rows[0], "step_frac": 1.5}) is not None
    assert read_status(run)["state"] == "completed"
    curves = pd.DataFrame([{**r, "signature": "s", "_order": i} for i, r in enumerate(rows)])
    assert train_stats(curves).loc["s", "data_wait_frac"] == rows[1]["data_wait_frac"]


def test_data_on_device_trains_the_same_run(tmp_path: Path) -> None:
    """data.on_device=true (here: the CPU) gathers the same batches: bitwise the same weights."""
    train(_cfg(tmp_path / "host", "train.steps=6"))
    train(_cfg(tmp_path / "dev", "train.steps=6", "data.on_device=true"))
    a, b = _final_state(tmp_path / "host"), _final_state(tmp_path / "dev")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["data"] == b["data"]


def test_missing_run_dir_is_a_user_error() -> None:
    with pytest.raises(UserError, match="run_dir is required"):
        train(load_config(TINY))


def test_sigusr2_checkpoints_then_resume_matches(tmp_path: Path) -> None:
    """A signalled `cfh train` saves at the next step boundary; the resumed run equals one run."""
    tiny = [a for a in TINY if not a.startswith("train.log_every=")]  # a key is given once
    args = [*tiny, "train.steps=80", "train.ckpt_every=1000", "train.log_every=5"]
    cfh = [sys.executable, "-m", "harness.cli", "train"]
    run = tmp_path / "sig"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*cfh, *args, f"run_dir={run}"], env=env, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGUSR2)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 124, err.decode()[-2000:]
    stopped = _final_state(run)["step"]
    assert 0 < stopped < 80
    assert read_status(run)["state"] == "interrupted"  # nothing requeues a plain `cfh train`
    done = subprocess.run([*cfh, *args, f"run_dir={run}"], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    ref = tmp_path / "ref"
    subprocess.run([*cfh, *args, f"run_dir={ref}"], env=env, check=True, capture_output=True)
    a, b = _final_state(run), _final_state(ref)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    summary = json.loads((run / "status.json").read_text())
    assert summary["state"] == "completed" and summary["step"] == 80
