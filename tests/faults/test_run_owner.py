"""One writer per run folder, with real processes: a second `cfh train` on a held run, the same
samples or eval record asked for twice, and places that cannot be written (issue 21: 1, 6)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from cfh_procs import CFH, REPO, TINY, cfh, child_env, wait_for

from core.io import RUN_LOCK, lock_state, read_jsonl, read_status

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SAMPLE = ["sample.num=10", "sample.steps=2", "sample.ar_steps=2", "sample.batch_size=10"]
SCORE = ["eval.extractor=classifier", "eval.kid_subset_size=5"]


@contextlib.contextmanager
def stopped(proc: subprocess.Popen):
    """The process paused (SIGSTOP): alive, holding its locks, doing nothing, until the end."""
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(proc.pid, signal.SIGCONT)


def held_lock(folder: Path, pattern: str) -> Path | None:
    """A lock file under `folder` matching `pattern` that a process holds now."""
    for path in folder.glob(pattern):
        if lock_state(path)[0]:
            return path
    return None


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("owner") / "run"
    os.environ.setdefault("CFH_CACHE", str(REPO / ".cache" / "cfh"))
    code, out = cfh("train", *TINY, "train.steps=2", "train.ckpt_every=2", f"run_dir={run}")
    assert code == 0, out
    return run


def test_a_second_cfh_train_on_a_held_run_refuses_at_once(tmp_path):
    """Two `cfh train` on one run_dir: the second exits 2 naming the first's pid and host and
    writes nothing; the first completes with every metrics step once."""
    run, steps = tmp_path / "run", 12
    args = [*CFH, "train", *TINY, f"train.steps={steps}", "train.ckpt_every=4", f"run_dir={run}"]
    first = subprocess.Popen(args, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: read_jsonl(run / "metrics.jsonl"), 180, "the first step", first)
        with stopped(first):  # mid-run, holding the lock
            config, status = (run / "config.yaml").read_text(), read_status(run)
            t0 = time.monotonic()
            second = subprocess.run(
                args, env=child_env(), capture_output=True, text=True, timeout=120
            )
            took = time.monotonic() - t0
            assert second.returncode == 2, second.stderr[-3000:]
            last = second.stderr.strip().splitlines()[-1]
            assert last.startswith(f"error: run_dir={run} is in use by pid {first.pid} on host ")
            assert socket.gethostname() in last and RUN_LOCK in last, last
            assert "Traceback" not in second.stderr
            assert (run / "config.yaml").read_text() == config and read_status(run) == status
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    print(f"second `cfh train` refused in {took:.1f} s (mostly its imports)")
    assert first.returncode == 0, err.decode()[-3000:]
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == list(range(1, steps + 1))
    assert read_status(run)["state"] == "completed"
    assert lock_state(run / RUN_LOCK) == (False, {})  # released, and nobody named in it


def test_a_killed_owner_leaves_the_lock_free_for_the_rerun(trained, tmp_path):
    """SIGKILL (or a SLURM requeue) ends the owner: the kernel drops its lock, a rerun resumes."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    args = [*CFH, "train", *TINY, "train.steps=40", "train.ckpt_every=2", f"run_dir={run}"]
    first = subprocess.Popen(
        args, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    wait_for(lambda: len(read_jsonl(run / "metrics.jsonl")) > 2, 180, "step 3", first)
    first.kill()
    first.wait()
    assert lock_state(run / RUN_LOCK)[0] is False
    code, out = cfh("train", *TINY, "train.steps=6", "train.ckpt_every=2", f"run_dir={run}")
    assert code == 0, out
    assert "resumed from step" in (run / "log.txt").read_text()


def test_the_same_samples_twice_refuse_and_other_samples_proceed(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    # 200 sampler steps: a draw of about a second, so the pause lands inside it, not in the
    # moment between its last write and the lock's release (that would reuse the samples)
    slow = [a if not a.startswith("sample.steps=") else "sample.steps=200" for a in SAMPLE]
    args = [*CFH, "sample", f"run_dir={run}", *slow]
    first = subprocess.Popen(args, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lock = wait_for(lambda: held_lock(run, "samples/*/.lock"), 180, "the sample lock", first)
        with stopped(first):
            code, out = cfh("sample", f"run_dir={run}", *slow)
            assert code == 2 and f"is in use by pid {first.pid} on host" in out, out
            assert f"samples {lock.parent.name} of run_dir={run}" in out, out
            assert "Traceback" not in out
            code, out = cfh("sample", f"run_dir={run}", *SAMPLE, "sample.seed=1")  # another key
            assert code == 0 and "wrote 10 samples" in out, out
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err.decode()[-3000:]
    assert (lock.parent / "samples.npz").is_file()


def test_samples_cut_off_before_their_settings_are_drawn_again(trained, tmp_path):
    """samples.npz without settings.json (a process stopped or killed between the two writes,
    as the test above can catch one): the next `cfh sample` draws them again, no half read."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    code, out = cfh("sample", f"run_dir={run}", *SAMPLE)
    assert code == 0 and "wrote 10 samples" in out, out
    (folder,) = (run / "samples").iterdir()
    (folder / "settings.json").unlink()
    code, out = cfh("sample", f"run_dir={run}", *SAMPLE)
    assert code == 0 and "wrote 10 samples" in out and "Traceback" not in out, out
    assert json.loads((folder / "settings.json").read_text())["num_samples"] == 10


def test_the_same_evaluation_twice_refuses(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    evaluation = [f"run_dir={run}", *SAMPLE, *SCORE]
    first = subprocess.Popen(
        [*CFH, "evaluate", *evaluation],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        lock = wait_for(lambda: held_lock(run, "eval/.*.lock"), 240, "the eval lock", first)
        with stopped(first):
            code, out = cfh("evaluate", *evaluation)
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    name = lock.name.removeprefix(".").removesuffix(".lock")
    assert code == 2 and f"eval record {name}.json of run_dir={run} is in use by pid" in out, out
    assert f"pid {first.pid} on host" in out and "Traceback" not in out, out
    assert first.returncode == 0, err.decode()[-3000:]
    assert (run / "eval" / f"{name}.json").is_file()


# ---------------------------------------------------------------- places that cannot be written
# Tests run as root, where permissions do not stop a write: a file where a folder must be does.


def _one_line_naming(code: int, out: str, path: Path) -> None:
    assert code == 2, out
    assert "Traceback" not in out, out
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: ") and "cannot write" in last and str(path) in last, out


def test_train_into_a_path_under_a_file_is_one_line(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    run = tmp_path / "file.txt" / "sub"
    _one_line_naming(*cfh("train", *TINY, "train.steps=2", f"run_dir={run}"), run)


def test_evaluate_and_sample_where_their_folders_are_files_are_one_line(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "eval").write_text("not a folder")
    (run / "samples").write_text("not a folder")
    evaluation = ["evaluate", f"run_dir={run}", *SAMPLE, *SCORE]
    _one_line_naming(*cfh(*evaluation), run / "eval")
    _one_line_naming(*cfh("sample", f"run_dir={run}", *SAMPLE), run / "samples")
    (run / "log.txt").unlink()
    (run / "log.txt").mkdir()  # the run's log cannot be opened for writing
    _one_line_naming(*cfh("sample", f"run_dir={run}", *SAMPLE), run / "log.txt")


def test_a_root_under_a_file_is_one_line(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    root = tmp_path / "file.txt" / "root"
    grid = tmp_path / "g.yaml"
    grid.write_text('{"base": {"model": "T", "train.steps": 2}, "seeds": [0], "eval": false}')
    code, out = cfh("--root", str(root), "sweep", str(grid))
    assert code == 2 and "Traceback" not in out, out
    assert "cannot write" in out and str(tmp_path / "file.txt") in out, out
