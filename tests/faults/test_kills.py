"""SIGKILL at random moments, inside a checkpoint write too: the resumed run is bitwise equal
to an uninterrupted one, with every metrics step logged once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cfh_procs import CFH, child_env

from core.io import read_jsonl
from model.training.checkpoint import checkpoint_path, checkpoint_paths, read_checkpoint

HERE = Path(__file__).resolve().parent
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TINY = [
    "model=T",
    "data=digits",
    "train.batch_size=16",
    "train.lr=1e-3",
    "train.ema_decay=0.99",
    "train.log_every=1",
    "train.device=cpu",
]
STEPS = 30


def train_args(run: Path, every: int) -> list[str]:
    return ["train", *TINY, f"train.steps={STEPS}", f"train.ckpt_every={every}", f"run_dir={run}"]


def run_to_end(run: Path, every: int) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [*CFH, *train_args(run, every)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def kill_after(cmd: list[str], seconds: float) -> int | None:
    """Start cmd, SIGKILL it after `seconds` unless it ended first; its exit code if it did."""
    proc = subprocess.Popen(
        cmd, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("kills") / "straight"
    run_to_end(run, every=3)
    return run


def assert_same(run: Path, ref: Path) -> None:
    a = read_checkpoint(checkpoint_path(run, STEPS))
    b = read_checkpoint(checkpoint_path(ref, STEPS))
    for part in ("model", "ema"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part}.{name} differs"
    for key, state in a["optimizer"]["state"].items():
        assert all(torch.equal(v, b["optimizer"]["state"][key][n]) for n, v in state.items())
    rows = [(r["step"], r["loss"]) for r in read_jsonl(run / "metrics.jsonl")]
    assert rows == [(r["step"], r["loss"]) for r in read_jsonl(ref / "metrics.jsonl")]


def test_sigkill_at_random_moments_then_resume_is_bitwise(straight, tmp_path):
    run = tmp_path / "run"
    rng = random.Random()
    kills = []
    for _ in range(12):
        delay = rng.uniform(2.0, 7.0)  # startup takes about 2 s; a kill may land anywhere after
        code = kill_after([*CFH, *train_args(run, every=3)], delay)
        if code is not None:
            assert code == 0
            break
        last = checkpoint_paths(run)
        kills.append((round(delay, 2), last[-1].name if last else None))
    else:
        run_to_end(run, every=3)
    print(f"killed {len(kills)} times (delay s, newest checkpoint then): {kills}")
    assert kills, "never killed: the run finished before the first kill"
    assert_same(run, straight)


@pytest.mark.parametrize("step", [3, 12])
def test_sigkill_inside_a_checkpoint_write_leaves_the_previous_state(straight, tmp_path, step):
    run, marker = tmp_path / "run", tmp_path / "in-write"
    cmd = [sys.executable, str(HERE / "slow_checkpoint.py"), str(step), str(marker)]
    proc = subprocess.Popen(
        [*cmd, *train_args(run, every=3)], env=child_env(), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), "the checkpoint write never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert f"ckpt_{step:08d}.pt" not in names  # killed before the rename: not there at all
    assert any(n.startswith(f".ckpt_{step:08d}.pt.") for n in names)  # only its temp file
    assert f"ckpt_{step:08d}.pt.sha256" not in names  # its checksum is written after it
    out = run_to_end(run, every=3)
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    resumed = "resumed from step" in out.stderr
    assert resumed == (step > 3), out.stderr[-2000:]  # step 3 was the first checkpoint
    assert_same(run, straight)
