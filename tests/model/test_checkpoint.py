"""Checksummed checkpoints: damage is named and the previous good one used, never a silent
restart; metrics.jsonl is cut back on resume so every step appears once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.io import read_jsonl
from harness.cli.main import main
from harness.config.compose import load_config
from model.evaluation.run_io import resolve_checkpoint
from model.training.checkpoint import (
    DamagedCheckpoints,
    checkpoint_path,
    checkpoint_paths,
    damage,
    load_latest_checkpoint,
    read_checkpoint,
)
from model.training.trainer import train

TINY = [
    "model=T",
    "data=digits",
    "train.batch_size=16",
    "train.log_every=1",
    "train.lr=1e-3",
    "train.ema_decay=0.99",
]


def _train(run: Path, steps: int, every: int = 5) -> None:
    args = [f"run_dir={run}", f"train.steps={steps}", f"train.ckpt_every={every}"]
    train(load_config([*TINY, *args]))


def flip(path: Path, offset_from_end: int = 4096, count: int = 64) -> None:
    """Invert `count` bytes inside the file (a silent media error, not a truncation)."""
    data = bytearray(path.read_bytes())
    at = len(data) - offset_from_end
    data[at : at + count] = bytes(b ^ 0xFF for b in data[at : at + count])
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ckpt") / "straight"
    _train(run, 15)
    return run


def _same(a: Path, b: Path, step: int = 15) -> None:
    sa, sb = read_checkpoint(checkpoint_path(a, step)), read_checkpoint(checkpoint_path(b, step))
    for part in ("model", "ema"):
        assert all(torch.equal(v, sb[part][k]) for k, v in sa[part].items()), part
    assert [(r["step"], r["loss"]) for r in read_jsonl(a / "metrics.jsonl")] == [
        (r["step"], r["loss"]) for r in read_jsonl(b / "metrics.jsonl")
    ]


def test_every_checkpoint_has_a_matching_sha256(straight):
    for path in checkpoint_paths(straight):
        side = path.with_name(path.name + ".sha256")
        assert side.read_text().split()[1] == path.name
        assert damage(path) is None


def test_flipped_bytes_are_named_and_the_previous_checkpoint_resumes_exactly(
    straight, tmp_path, caplog
):
    run = tmp_path / "run"
    _train(run, 10)  # checkpoints at 5 and 10
    flip(checkpoint_path(run, 10))  # torch.load alone would not notice: only a tensor changes
    assert "does not match" in damage(checkpoint_path(run, 10))
    assert resolve_checkpoint(run, "latest") == checkpoint_path(run, 5)
    _train(run, 15)
    err = caplog.text
    assert "ckpt_00000010.pt is damaged" in err and "using the previous" in err
    _same(run, straight)  # resumed from step 5: steps 6..15 once each, same numbers


def test_no_good_checkpoint_fails_with_their_names(tmp_path, capsys):
    run = tmp_path / "run"
    _train(run, 10)
    for path in checkpoint_paths(run):
        flip(path)
    with pytest.raises(DamagedCheckpoints, match="no good checkpoint among ckpt_00000005.pt, "):
        load_latest_checkpoint(run)
    code = main(["train", *TINY, f"run_dir={run}", "train.steps=15", "train.ckpt_every=5"])
    err = capsys.readouterr().err
    assert code == 2 and "ckpt_00000010.pt" in err and "Traceback" not in err, err
    assert max(r["step"] for r in read_jsonl(run / "metrics.jsonl")) == 10  # no restart at 0


def test_a_truncated_checkpoint_is_damaged(tmp_path):
    run = tmp_path / "run"
    _train(run, 5)
    path = checkpoint_path(run, 5)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DamagedCheckpoints, match="ckpt_00000005.pt is damaged"):
        read_checkpoint(path)


def test_a_checkpoint_without_checksum_still_loads_with_a_warning(tmp_path, caplog):
    run = tmp_path / "run"
    _train(run, 5)
    path = checkpoint_path(run, 5)
    path.with_name(path.name + ".sha256").unlink()
    assert read_checkpoint(path)["step"] == 5
    assert "its checksum file ckpt_00000005.pt.sha256 is missing" in caplog.text


def test_resume_cuts_metrics_back_to_the_checkpoint(straight, tmp_path):
    run = tmp_path / "run"
    _train(run, 13)  # checkpoints at 5, 10, 13
    for path in checkpoint_paths(run)[-1:]:  # lose step 13: as if killed after logging 11..13
        path.unlink()
    assert max(r["step"] for r in read_jsonl(run / "metrics.jsonl")) == 13
    _train(run, 15)  # resumes at 10, logs 11..15 again
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl")]
    assert steps == list(range(1, 16))
    _same(run, straight)


def test_a_usr2_handled_inside_the_sigterm_handler_still_requeues():
    """SLURM sends SIGTERM then USR2 ms apart; the trainer's catcher must keep USR2 (requeue)
    wherever in its SIGTERM handler USR2's handler runs (tests/nested_signals.py)."""
    script = Path(__file__).parents[1] / "nested_signals.py"
    out = subprocess.run(
        [sys.executable, str(script), "trainer"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("nested at "), out.stdout


def test_signal_at_a_periodic_checkpoint_step_saves_once(tmp_path: Path, monkeypatch, caplog):
    """A preemption signal caught right after the periodic save at step 4 writes no second
    checkpoint at step 4; the caller's on_preempt hook gets the step."""
    import logging

    import model.training.trainer as trainer
    from model.training.signals import Preempted, SignalCatcher

    class SignalAfterStep4(SignalCatcher):
        calls = 0

        def code(self) -> int:
            SignalAfterStep4.calls += 1  # one call per loop top: call 5 is step 4's
            return self.CODES[self.SIGNALS[0]] if SignalAfterStep4.calls == 5 else 0

    monkeypatch.setattr(trainer, "SignalCatcher", SignalAfterStep4)
    seen = []
    run = tmp_path / "run"
    cfg = load_config([*TINY, f"run_dir={run}", "train.steps=8", "train.ckpt_every=4"])
    with caplog.at_level(logging.INFO, logger="cfh.train"), pytest.raises(Preempted):
        train(cfg, on_preempt=lambda rdir, step: seen.append((rdir, step)))
    assert seen == [(run, 4)]
    saves = [r.getMessage() for r in caplog.records if "checkpoint at step" in r.getMessage()]
    assert saves == ["checkpoint at step 4"], saves
    assert [p.name for p in checkpoint_paths(run)] == ["ckpt_00000004.pt"]
