"""A full disk, for real: cfh train, cfh evaluate and cfh report writing into a small tmpfs of
their own (mounted here: root only) that runs out of space. Each ends in one line,
`error: disk full writing PATH (No space left on device); free space and run again`, exit 1,
with nothing partial left (no temp file, no checksum file without its checkpoint, no torn line,
no half-gathered samples, no eval record, a report folder as it was); a training run says
`failed` with that reason, and once there is room a resume continues from the last good
checkpoint to the bits of an uninterrupted run."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from cfh_procs import CFH, REPO, cfh, child_env
from fill_disk import PAGE, fill, free

from core.errors import DiskFull, one_line
from core.io import read_jsonl, read_status, record_failure
from model.training.checkpoint import checkpoint_path, checkpoint_paths, damage, read_checkpoint
from model.training.loggers import tensorboard_writes

HERE = Path(__file__).resolve().parent
cli_main = importlib.import_module("harness.cli.main")  # harness.cli.main is also the function
sys.path.insert(0, str(HERE.parent / "reports"))  # synthetic run folders, as the report tests
import synthetic as sy  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

TINY = [
    "model=T",
    "data=digits",
    "train.batch_size=16",
    "train.lr=1e-3",
    "train.ema_decay=0.99",
    "train.log_every=1",
    "train.device=cpu",
]
STEPS, EVERY = 6, 2
EVAL = [
    "sample.num=20",
    "sample.steps=4",
    "sample.batch_size=20",
    "eval.extractor=classifier",
    "eval.kid_subset_size=10",
]
FULL = " (No space left on device); free space and run again"


@pytest.fixture
def disk(tmp_path):
    """mount(size) -> a new, empty tmpfs of `size` bytes; each is unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root (mount -t tmpfs)")
    if shutil.which("mount") is None:
        pytest.skip("no mount command on this machine")
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        opts = f"size={size}"
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        if subprocess.run(["umount", str(where)], capture_output=True, timeout=30).returncode:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def grow(where: Path, size: int) -> None:
    """The tmpfs at `where`, made `size` bytes (a disk with room again)."""
    cmd = ["mount", "-o", f"remount,size={size}", str(where)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


def train(run: Path, *wrapper: str) -> subprocess.CompletedProcess:
    """`cfh train` of the tiny run in a child process (`wrapper`: a script that runs cfh)."""
    args = ["train", *TINY, f"train.steps={STEPS}", f"train.ckpt_every={EVERY}", f"run_dir={run}"]
    return subprocess.run(
        [*(wrapper or CFH), *args], env=child_env(), capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The tiny run trained to the end on a disk with room."""
    run = tmp_path_factory.mktemp("disk_full") / "straight"
    done = train(run)
    assert done.returncode == 0, done.stderr[-3000:]
    return run


def disk_full_path(code: int, text: str, under: Path) -> Path:
    """The file named by the one `error: disk full writing PATH ...` line of `text`."""
    assert code == 1, text[-3000:]
    assert "Traceback" not in text and "Logging error" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text[-3000:]
    (line,) = errors
    assert line.startswith("error: disk full writing ") and line.endswith(FULL), line
    path = Path(line.removeprefix("error: disk full writing ").removesuffix(FULL))
    assert path.is_relative_to(under), line
    return path


def assert_nothing_partial(folder: Path) -> None:
    """No temp file, checksum file alone, damaged checkpoint, torn line or unreadable JSON."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.endswith(".tmp")], files
    for side in folder.rglob("*.pt.sha256"):
        assert side.with_name(side.name.removesuffix(".sha256")).exists(), side
    for ckpt in checkpoint_paths(folder):
        assert damage(ckpt) is None, ckpt
    for path in files:
        if path.suffix in (".jsonl", ".txt") and path.stat().st_size:
            assert path.read_bytes().endswith(b"\n"), path  # no torn last line
        if path.suffix == ".jsonl":
            [json.loads(line) for line in path.read_text().splitlines()]
        if path.suffix == ".json":
            json.loads(path.read_text())


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


def test_a_checkpoint_that_does_not_fit_fails_the_run_and_a_resume_finishes_it(disk, straight):
    size = checkpoint_path(straight, EVERY).stat().st_size
    where = disk(size * 3 // 2)  # the first checkpoint fits, the second does not
    run = where / "run"
    done = train(run)
    path = disk_full_path(done.returncode, done.stderr, run)
    assert path == checkpoint_path(run, 2 * EVERY)
    status = read_status(run)
    assert status["state"] == "failed", status
    assert status["error"] == f"DiskFull: disk full writing {path}{FULL}", status
    assert [p.name for p in checkpoint_paths(run)] == [checkpoint_path(run, EVERY).name]
    assert_nothing_partial(run)

    grow(where, size * 4)
    done = train(run)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from step {EVERY}" in done.stderr
    assert read_status(run)["state"] == "completed"
    assert_nothing_partial(run)
    assert_same(run, straight)


def test_a_disk_that_fills_after_a_checkpoint_fails_at_its_next_write(disk, straight):
    size = checkpoint_path(straight, EVERY).stat().st_size
    where = disk(size * 4)
    run, filler = where / "run", where / "filler"
    done = train(run, sys.executable, str(HERE / "fill_disk.py"), str(EVERY), str(filler))
    path = disk_full_path(done.returncode, done.stderr, run)
    # a metrics line fits in its file's last page; the status update needs a page of its own
    assert path in (run / "metrics.jsonl", run / "status.json"), path
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl")]
    assert steps == list(range(1, len(steps) + 1)) and EVERY <= len(steps) <= EVERY + 1, steps
    status = read_status(run)  # written over the old one in place: no page was free for a copy
    assert status["state"] == "failed", status
    assert status["error"] == f"DiskFull: disk full writing {path}{FULL}", status
    assert_nothing_partial(run)

    filler.unlink()
    done = train(run)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from step {EVERY}" in done.stderr
    assert_nothing_partial(run)
    assert_same(run, straight)


def test_a_failure_with_no_room_for_its_status_says_so_on_its_line(disk, monkeypatch):
    where = disk(64 * PAGE)
    run = where / "run"
    run.mkdir()
    fill(where / "filler")
    e = DiskFull(run / "metrics.jsonl")
    record_failure(run, e)
    assert not (run / "status.json").exists()
    line = (
        f"disk full writing {run}/metrics.jsonl{FULL}; {run}/status.json could not be marked "
        "failed either: the disk is full"
    )
    assert one_line(e) == line

    def raising(overrides):  # what cfh runs first inside its error handling
        raise e

    monkeypatch.setattr(cli_main, "check_repeated_keys", raising)
    assert cfh("status", "smoke") == (1, f"error: {line}\n")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run trained to one checkpoint (step 2), on a disk with room."""
    os.environ.setdefault("CFH_CACHE", str(REPO / ".cache" / "cfh"))
    run = tmp_path_factory.mktemp("disk_full_eval") / "run"
    code, out = cfh("train", *TINY, "train.steps=2", "train.ckpt_every=2", f"run_dir={run}")
    assert code == 0, out
    return run


def folder_bytes(folder: Path) -> int:
    return sum(-(-p.stat().st_size // PAGE) * PAGE for p in folder.rglob("*") if p.is_file())


def test_evaluate_on_a_full_disk_leaves_no_partial_samples_or_record(disk, trained, tmp_path):
    ref = tmp_path / "ref"
    shutil.copytree(trained, ref)
    code, out = cfh("evaluate", f"run_dir={ref}", *EVAL)
    assert code == 0, out
    (want,) = (ref / "eval").glob("*.json")

    where = disk(folder_bytes(trained) + 256 * PAGE)
    run, filler = where / "run", where / "filler"
    shutil.copytree(trained, run)
    fill(filler)
    args = ["evaluate", f"run_dir={run}", *EVAL]
    done = subprocess.run(
        [*CFH, *args], env=child_env(), capture_output=True, text=True, timeout=120
    )  # a whole process first: its stderr holds the one line and nothing else of note
    failed = [disk_full_path(done.returncode, done.stderr, run)]
    for pages in range(1, 64):  # then each write in turn finds no room, in this process
        fill(filler)
        free(filler, pages)
        code, out = cfh(*args)
        if code == 0:
            break
        failed.append(disk_full_path(code, out, run))
        assert_nothing_partial(run)
        assert not list((run / "eval").glob("*.json")), pages
        for samples in (run / "samples").glob("*"):
            if not (samples / "settings.json").exists():
                names = {p.name for p in samples.iterdir()}
                assert not names & {"samples.npz", "grid.png"}, names
    else:
        pytest.fail(f"cfh evaluate never had room: {failed}")
    print("failed writing, in turn:", [str(p.relative_to(run)) for p in failed])
    assert len(set(failed)) >= 3, failed  # the lock, the samples, their grid, ...
    assert any(p.name == "samples.npz" for p in failed), failed
    assert_nothing_partial(run)
    (got,) = (run / "eval").glob("*.json")
    assert got.name == want.name
    metrics = [json.loads(p.read_text())["metrics"] for p in (got, want)]
    for m in metrics:
        m.pop("sample_img_per_s")
    assert metrics[0] == metrics[1]


def tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_report_into_a_full_disk_leaves_the_folder_as_it_was(disk, tmp_path):
    root = tmp_path / "root"
    runs = [sy.write_run(root, ar_mode="fixed", ar_steps=s, seed=0) for s in (1, 4)]
    runs.append(sy.write_run(root, ar_mode="decay", ar_decay=0.9, seed=0))
    sy.write_grid(root, "small", runs)
    report = ["--root", str(root), "report", "small", "--out"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, out = cfh(*report, str(tmp_path / "ref"))
        assert code == 0, out
        need = folder_bytes(tmp_path / "ref") // PAGE

        where = disk((2 * need + 64) * PAGE)
        folder, filler = where / "report", where / "filler"
        code, out = cfh(*report, str(folder))  # an earlier report, whole
        assert code == 0, out
        before = tree(folder)
        failed = []
        for pages in (0, need // 3, 2 * need // 3):
            fill(filler)
            free(filler, pages)
            code, out = cfh(*report, str(folder))
            failed.append(disk_full_path(code, out, folder))
            assert tree(folder) == before  # the earlier report whole, nothing of this one
            assert not list(folder.glob(".report-*")), "its staging folder was left"
        print("failed writing:", [str(p.relative_to(folder)) for p in failed])
        filler.unlink()
        code, out = cfh(*report, str(folder))
        assert code == 0, out
    assert sorted(tree(folder)) == sorted(before)


def test_tensorboard_on_a_full_disk_is_one_disk_full_error_and_no_thread_traceback(disk, capfd):
    """TensorBoard's event writer runs in a thread of its own: its failed write must reach the
    trainer as a DiskFull naming the event folder (not a bare OSError), its thread must not
    print a traceback, and closing after a failure must not hide the error that failed the run."""
    from model.training.loggers import TrainLoggers, tensorboard_dir

    where = disk(64 * PAGE)
    run = where / "run"
    run.mkdir()
    loggers = TrainLoggers(run, ["jsonl", "tensorboard"])
    loggers.log({"step": 1, "loss": 1.0})
    loggers.flush()
    fill(where / "filler")
    with pytest.raises(DiskFull) as caught:
        for step in range(2, 100_000):  # the event thread fails at its first write
            with tensorboard_writes(run):  # as TrainLoggers.log, past metrics.jsonl: TB alone
                loggers.tb.add_scalar("train/loss", 1.0, step)
            if step % 100 == 0:
                loggers.flush()
    assert str(caught.value) == f"disk full writing {tensorboard_dir(run)}{FULL}"
    loggers.close(exit_code=1)  # the run already failed: its first error stands
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception in thread" not in err, err
    assert_nothing_partial(run)
