"""Every ending says what happened (issue 21: 2, 3, 5): SIGINT and SIGTERM leave `interrupted`
(during start-up too), only a requeue says `requeued`, a dead process shows as failed with its
last log line; `cfh train run_dir=R` resumes R with its own config; a fallback checkpoint is
named once, and the eval record keeps both steps."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import yaml
from cfh_procs import CFH, REPO, TINY, cfh, child_env, wait_for

from core.io import read_jsonl, read_status, update_status
from harness.config.search import SHIPPED_CONFIG_DIR
from harness.launch import executors as ex
from harness.launch import point_job as pj
from harness.launch.runs import run_dir
from harness.launch.status import row_for
from model.training.checkpoint import checkpoint_path, checkpoint_paths
from reports.rows import read_run

cloudpickle.register_pickle_by_value(sys.modules[__name__])
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SIG = "e" * 10


def start_train(run: Path, steps: int = 400, every: int = 4) -> subprocess.Popen:
    args = ["train", *TINY, f"train.steps={steps}", f"train.ckpt_every={every}", f"run_dir={run}"]
    return subprocess.Popen(
        [*CFH, *args],
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_sigint_default,
    )


def _sigint_default() -> None:
    """SIGINT as a terminal gives it: a test suite started in the background (`cmd &` in a
    script) has it ignored, the child would inherit that, and Python would then not raise
    KeyboardInterrupt for it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop(proc: subprocess.Popen, sig: int) -> tuple[int, str]:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=180)
    return proc.returncode, err


# ---------------------------------------------------------------- states


def test_sigint_mid_run_leaves_interrupted(tmp_path):
    run = tmp_path / "run"
    proc = start_train(run)
    wait_for(lambda: len(read_jsonl(run / "metrics.jsonl")) >= 2, 180, "step 2", proc)
    code, err = stop(proc, signal.SIGINT)
    status = read_status(run)
    assert code == 130, err[-2000:]
    assert (status["state"], status["error"]) == ("interrupted", "interrupted by SIGINT"), status


def test_sigterm_without_a_scheduler_is_interrupted_not_requeued(tmp_path):
    run = tmp_path / "run"
    proc = start_train(run)
    wait_for(lambda: len(read_jsonl(run / "metrics.jsonl")) >= 2, 180, "step 2", proc)
    code, err = stop(proc, signal.SIGTERM)
    status = read_status(run)
    assert code == 124, err[-2000:]
    assert status["state"] == "interrupted", status
    step = status["step"]
    assert status["error"] == f"stopped by SIGTERM at step {step} (checkpoint saved)"
    assert checkpoint_paths(run)[-1] == checkpoint_path(run, step)


def test_sigterm_during_start_up_is_interrupted_at_step_0(tmp_path):
    """The signal lands right after the status says running, while the data and the model are
    being built: the run still ends interrupted at step 0, not running with step null."""
    run = tmp_path / "run"
    proc = start_train(run)
    wait_for(lambda: read_status(run).get("state") == "running", 180, "the running state", proc)
    assert not (run / "metrics.jsonl").exists()
    code, err = stop(proc, signal.SIGTERM)
    status = read_status(run)
    assert code == 124, err[-2000:]
    assert (status["state"], status["step"]) == ("interrupted", 0), status
    assert checkpoint_paths(run) == []  # nothing trained, nothing to save


def test_a_killed_run_shows_failed_process_gone_with_its_last_log_line(tmp_path):
    """SIGKILL (as the OOM killer does): status.json still says running; `cfh status` and the
    results loader show failed, "process gone", and the last line of log.txt."""
    run = run_dir(tmp_path, SIG)
    proc = start_train(run)
    wait_for(lambda: len(read_jsonl(run / "metrics.jsonl")) >= 1, 180, "step 1", proc)
    proc.kill()
    proc.wait()
    assert read_status(run)["state"] == "running"
    last = (run / "log.txt").read_text().strip().splitlines()[-1]
    row = row_for(SIG, {}, [], tmp_path, {})
    assert row.state == "failed", row
    assert row.error.startswith("process gone") and last[:150] in row.error, row.error
    (result,), _ = read_run(run, {}, set())
    assert (result["state"], result["error"]) == ("failed", row.error.splitlines()[0])


# ---------------------------------------------------------------- requeued: only by PointJob


def as_a_run(run_dir: str, total: int = 150, step_s: float = 0.1) -> dict:
    """A resumable job that keeps a run folder's status as the trainer does: each attempt
    notes the state it found; a preemption warning saves, marks interrupted, and leaves."""
    rd = Path(run_dir)
    state_file = rd / "state.json"
    step = json.loads(state_file.read_text())["step"] if state_file.exists() else 0
    with open(rd / "found.log", "a") as f:
        f.write(f"{read_status(rd).get('state')}\n")
    update_status(rd, state="running", step=step)
    while step < total:
        if pj.preemption_requested():
            state_file.write_text(json.dumps({"step": step}))
            update_status(rd, state="interrupted", step=step)
            raise SystemExit(124)
        time.sleep(step_s)
        step += 1
    update_status(rd, state="completed", step=step)
    return {"found": (rd / "found.log").read_text().split()}


def test_a_local_job_requeued_after_its_warning_says_requeued(tmp_path):
    """A local time limit of 24 s warns (USR2) at ~12 s: PointJob requeues the job and marks the
    run requeued, which the next attempt finds."""
    profile = yaml.safe_load((SHIPPED_CONFIG_DIR / "cluster/local.yaml").read_text())
    profile.update(timeout_min=0.4, signal_delay_s=12, max_num_timeout=3, parallelism=1)
    executor = ex.make_executor(profile, tmp_path / "submitit")
    run = tmp_path / "run"
    run.mkdir()
    update_status(run, state="pending")
    point = pj.PointJob.for_profile(profile, as_a_run)
    (job,) = ex.submit_array(executor, point, [(str(run),)])
    found = job.result()["found"]
    assert found[0] == "pending" and found[1:] and set(found[1:]) == {"requeued"}, found
    assert read_status(run)["state"] == "completed"


# ---------------------------------------------------------------- resume from the run's config


def test_resume_uses_the_runs_own_config(tmp_path):
    """The README's resume line after a run trained with many overrides: only train.steps is
    given, the rest comes from R/config.yaml; changing the run is still refused."""
    run = tmp_path / "run"
    first = [*TINY, "train.lr=3e-4", "train.ar.mode=fixed", "train.ar.steps=2", "seed=3"]
    code, out = cfh("train", *first, "train.steps=3", "train.ckpt_every=3", f"run_dir={run}")
    assert code == 0, out
    before = yaml.safe_load((run / "config.yaml").read_text())
    code, out = cfh("train", f"run_dir={run}", "train.steps=5")
    assert code == 0, out
    after = yaml.safe_load((run / "config.yaml").read_text())
    assert after["train"].pop("steps") == 5 and before["train"].pop("steps") == 3
    assert after == before
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    code, out = cfh("train", f"run_dir={run}", "train.steps=6", "model=T", "train.log_every=2")
    assert code == 0, out  # the same group option and a resumable key: fine
    code, out = cfh("train", f"run_dir={run}", "train.steps=7", "train.lr=1e-2")
    assert code == 2 and "holds a run with a different config (train.lr: 0.0003 -> 0.01)" in out
    code, out = cfh("train", f"run_dir={run}", "model=XS")
    assert code == 2 and "different config" in out and "model.name: 'T' -> 'XS'" in out, out
    code, out = cfh("train", f"run_dir={run}", "train.steps=9", "--cfg", "job")
    shown = yaml.safe_load(out)
    assert (shown["train"]["ar"]["steps"], shown["seed"], shown["train"]["steps"]) == (2, 3, 9)


# ---------------------------------------------------------------- checkpoint warnings


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Checkpoints at steps 2 and 4."""
    run = tmp_path_factory.mktemp("warn") / "run"
    os.environ.setdefault("CFH_CACHE", str(REPO / ".cache" / "cfh"))
    code, out = cfh("train", *TINY, "train.steps=4", "train.ckpt_every=2", f"run_dir={run}")
    assert code == 0, out
    return run


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def test_a_fallback_evaluation_warns_once_and_the_record_keeps_both(trained, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    latest = checkpoint_path(run, 4)
    truncate(latest)
    args = ["sample.num=10", "sample.steps=2", "sample.ar_steps=2", "sample.batch_size=10"]
    score = ["eval.extractor=classifier", "eval.kid_subset_size=5"]
    with caplog.at_level(logging.WARNING):
        code, out = cfh("evaluate", f"run_dir={run}", *args, *score)
    assert code == 0, out
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(said) == 1, said
    assert said[0].startswith(f"checkpoint {latest} is damaged: sha256 ")
    assert "the previous good checkpoint ckpt_00000002.pt (step 2)" in said[0], said
    record = json.loads(Path(json.loads(out.strip().splitlines()[-1])["eval"]).read_text())
    assert record["ckpt_step"] == 2
    ((skipped),) = record["ckpt_skipped"]
    assert skipped["path"] == str(latest) and skipped["reason"].startswith("sha256 "), skipped


def test_train_names_each_damaged_checkpoint_once_and_previous_only_when_there_is_one(
    trained, tmp_path
):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    truncate(checkpoint_path(run, 4))
    args = [*CFH, "train", *TINY, "train.steps=6", "train.ckpt_every=2", f"run_dir={run}"]
    done = subprocess.run(args, env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if "is damaged" in line]
    assert len(lines) == 1, done.stderr[-3000:]  # once on stderr (it was twice)
    assert "ckpt_00000004.pt is damaged" in lines[0]
    assert "using the previous good checkpoint ckpt_00000002.pt" in lines[0]
    only = tmp_path / "only"
    shutil.copytree(trained, only)
    checkpoint_path(only, 2).unlink()
    truncate(checkpoint_path(only, 4))  # damaged, and no previous one
    done = subprocess.run(
        [*args[:-1], f"run_dir={only}"],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "no good checkpoint among ckpt_00000004.pt" in done.stderr
    assert "previous" not in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_missing_checksum_file_is_called_missing(trained, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    latest = checkpoint_path(run, 4)
    latest.with_name(latest.name + ".sha256").unlink()
    with caplog.at_level(logging.WARNING):
        code, out = cfh("sample", f"run_dir={run}", "sample.num=10", "sample.steps=2")
    assert code == 0, out
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert said == [
        f"checkpoint {latest} is not verified: its checksum file ckpt_00000004.pt.sha256 is "
        "missing (written before checksums, or lost); loaded as its zip CRCs allow"
    ], said
    truncate(latest)  # no checksum and a damaged archive: skipped, named as such
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        code, out = cfh("sample", f"run_dir={run}", "sample.num=10", "sample.steps=2")
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert code == 0 and len(said) == 1, (out, said)
    assert "its .sha256 file is missing" in said[0] and "ckpt_00000002.pt (step 2)" in said[0]
