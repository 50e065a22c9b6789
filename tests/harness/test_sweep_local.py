"""`cfh sweep/status/cancel` with cluster=local on tiny real runs: reconcile, retry, prune.

One module-scoped sweep trains and evaluates two tiny digits runs for real (4 steps, 20 samples)
next to a point whose training raises (an image folder without classes); the tests then check
what later sweeps do with that state.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from core.io import read_status, update_status
from harness.cli.main import main
from harness.launch.runs import read_submission

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

TINY = """
base:
  model: T
  data: digits
  train.steps: 4
  train.batch_size: 16
  train.ckpt_every: 2
  train.log_every: 2
  sample.num: 20
  sample.steps: 4
  sample.batch_size: 20
  eval.extractor: classifier
  eval.kid_subset_size: 10
  cluster.parallelism: 3
include:
{include}
eval:
  axes:
    sample.ar_steps: [1, 2]
"""
GOOD = [
    "  - {train.ar.mode: fixed, train.ar.steps: 1}",
    "  - {train.ar.mode: fixed, train.ar.steps: 2}",
]


def write_grid(path: Path, include: list[str]) -> Path:
    path.write_text(textwrap.dedent(TINY).replace("{include}", "\n".join(include)))
    return path


def cfh(*argv: str) -> tuple[int, str]:
    """Run `cfh` in this process; (exit code, stdout + stderr)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(argv))
    return code, out.getvalue()


def plan(root: Path, name: str) -> dict:
    return json.loads((root / "grids" / name / "plan.json").read_text())


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A local sweep of two good points and one failing point, run to the end."""
    os.environ.setdefault("CFH_CACHE", str(REPO / ".cache" / "cfh"))  # the cached classifier
    tmp = tmp_path_factory.mktemp("local")
    empty = tmp / "broken_images"  # valid up front; the job fails reading the image
    (empty / "a").mkdir(parents=True)
    for i in range(16):  # as many as a batch: a smaller folder is refused up front
        (empty / "a" / f"{i:02d}x.png").write_bytes(b"not a png")
    bad = (
        f"  - {{data: imagefolder, data.root: {empty}, data.resolution: 8, data.patch_size: 1, "
        "data.num_classes: 1}"
    )
    grid = write_grid(tmp / "tiny.yaml", GOOD + [bad])
    root = tmp / "out"
    t0 = time.perf_counter()
    code, out = cfh("--root", str(root), "sweep", str(grid))
    print(f"first local sweep: {time.perf_counter() - t0:.0f} s\n{out}")
    return {"grid": grid, "root": root, "code": code, "out": out, "bad": empty}


def sigs_by_state(root: Path, name: str = "tiny") -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p in plan(root, name)["points"]:
        status = read_status(root / "runs" / p["signature"])
        out.setdefault(str(status.get("state")), []).append(p["signature"])
    return out


def test_first_sweep_runs_everything_and_prints_status(swept):
    assert swept["code"] == 1, swept["out"]  # one point failed
    out = swept["out"]
    assert "plan: 3 to submit, 0 to skip" in out
    assert "tiny: 2 completed, 1 failed" in out
    assert "^ UnidentifiedImageError: cannot identify image file" in out and "x.png" in out
    assert "(log: " in out
    states = sigs_by_state(swept["root"])
    assert len(states["completed"]) == 2 and len(states["failed"]) == 1
    for sig in states["completed"]:
        status = read_status(swept["root"] / "runs" / sig)
        assert status["phase"] == "done" and len(status["evals"]) == 2
        assert all(isinstance(e["fid"], float) for e in status["evals"].values())
        assert all(
            (swept["root"] / "runs" / sig / e["file"]).is_file() for e in status["evals"].values()
        )
        # status.json's log is the run's log.txt: training, sampling and eval lines in one file
        assert status["log"] == str(swept["root"].absolute() / "runs" / sig / "log.txt")
        text = Path(status["log"]).read_text()
        assert "cfh.train: train: 4/4 step (100%)" in text and "cfh.sample: sample: 20/20" in text
        assert "cfh.inference: wrote eval record" in text
    (failed,) = states["failed"]
    status = read_status(swept["root"] / "runs" / failed)
    assert "UnidentifiedImageError" in Path(status["log"]).read_text()  # the traceback


def test_status_shows_every_point(swept):
    code, out = cfh("--root", str(swept["root"]), "status", "tiny")
    assert code == 1
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["signature", "ar.mode", "ar.steps", "data"]
    header = lines[0].split()
    assert "phase" in header and {"fid@S1", "fid@S2"} <= set(header)  # a FID per S_eval
    assert sum(" done " in line for line in lines) == 2  # the completed points' phase
    assert sum(" completed " in line for line in lines) == 2
    assert sum(" failed " in line for line in lines) == 1
    assert "2/2" in out  # eval points done


def test_second_sweep_submits_nothing(swept):
    before = {s: read_submission(swept["root"] / "runs" / s) for s in _all(swept)}
    code, out = cfh("--root", str(swept["root"]), "sweep", str(swept["grid"]))
    assert "plan: 0 to submit, 3 to skip" in out
    assert "skip (failed; --retry resubmits it)" in out
    after = {s: read_submission(swept["root"] / "runs" / s) for s in _all(swept)}
    assert before == after


def test_an_interrupted_point_is_resubmitted_with_retry(swept):
    root = swept["root"]
    sig = sigs_by_state(root)["completed"][0]
    path = root / "runs" / sig / "status.json"
    saved = path.read_text()
    update_status(path.parent, state="interrupted", error="interrupted by SIGINT")
    try:
        code, out = cfh("--root", str(root), "sweep", str(swept["grid"]), "--dry-run")
        assert "skip (interrupted; --retry resubmits it)" in out, out
        code, out = cfh("--root", str(root), "sweep", str(swept["grid"]), "--dry-run", "--retry")
        assert "plan: 2 to submit, 1 to skip" in out, out  # the failed and the interrupted one
    finally:
        path.write_text(saved)


def test_retry_resubmits_only_the_failed_point(swept):
    root = swept["root"]
    (failed,) = sigs_by_state(root)["failed"]
    jobs = {s: read_submission(root / "runs" / s)["job_id"] for s in _all(swept)}
    code, out = cfh("--root", str(root), "sweep", str(swept["grid"]), "--retry")
    assert "plan: 1 to submit, 2 to skip" in out
    assert f"{failed}" in out and "retry" in out
    after = {s: read_submission(root / "runs" / s)["job_id"] for s in _all(swept)}
    assert [s for s in jobs if jobs[s] != after[s]] == [failed]
    status = read_status(root / "runs" / failed)
    assert status["state"] == "failed" and status["attempts"] == 2  # it raises again


def test_a_job_on_a_completed_run_writes_nothing(swept, capfd):
    """A second start of a finished job (SLURM requeues a job for a node lost while the job
    was ending) leaves the run as it is: no attempt counted, no clock restarted."""
    from harness.launch.jobs import run_point

    def must_not_run(cfg):
        raise AssertionError("a completed run was trained or evaluated again")

    rdir = swept["root"] / "runs" / sigs_by_state(swept["root"])["completed"][0]
    before = {p.name: p.read_bytes() for p in rdir.iterdir() if p.is_file()}
    out = run_point(str(rdir), train_fn=must_not_run, eval_fn=must_not_run)
    assert out["attempts"] == 1 and len(out["evals"]) == 2, out
    assert {p.name: p.read_bytes() for p in rdir.iterdir() if p.is_file()} == before
    assert f"{rdir.name} is completed with nothing left to do" in capfd.readouterr().err
    point = json.loads(before["point.json"])
    point["evals"].append({**point["evals"][0], "key": "new"})
    try:  # an eval point added since (another grid): the job has work again
        (rdir / "point.json").write_text(json.dumps(point))
        with pytest.raises(AssertionError, match="trained or evaluated again"):
            run_point(str(rdir), train_fn=must_not_run, eval_fn=must_not_run)
    finally:  # the folder as the module's sweep left it (the failure wrote its status and log)
        for p in rdir.iterdir():
            if p.is_file() and p.name not in before:
                p.unlink()
        for name, data in before.items():
            (rdir / name).write_bytes(data)


def test_removed_points_are_reported_then_pruned(swept):
    root = swept["root"]
    grid = write_grid(swept["grid"], GOOD[:1])  # the grid loses two of its points
    code, out = cfh("--root", str(root), "sweep", str(grid), "--dry-run")
    assert "plan: 0 to submit, 1 to skip, 2 removed from the grid" in out
    assert "--prune unlinks it" in out
    code, out = cfh("--root", str(root), "sweep", str(grid))
    assert len(plan(root, "tiny")["removed"]) == 2
    assert len(list((root / "grids" / "tiny" / "runs").iterdir())) == 3
    code, out = cfh("--root", str(root), "sweep", str(grid), "--prune")
    assert "2 removed from the grid" in out
    assert plan(root, "tiny")["removed"] == []
    assert len(list((root / "grids" / "tiny" / "runs").iterdir())) == 1
    assert len(list((root / "runs").iterdir())) == 3  # run folders are kept
    code, out = cfh("--root", str(root), "sweep", str(grid))
    assert "removed" not in out


def test_cancel_stops_a_running_local_point(tmp_path):
    os.environ.setdefault("CFH_CACHE", str(REPO / ".cache" / "cfh"))
    grid = write_grid(tmp_path / "long.yaml", GOOD[:1])
    root = tmp_path / "out"
    env = dict(os.environ, CFH_ROOT=str(root))
    cmd = [sys.executable, "-m", "harness.cli", "sweep", str(grid), "train.steps=100000"]
    sweep = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            runs = list((root / "runs").glob("*")) if (root / "runs").exists() else []
            if runs and read_status(runs[0]).get("step", 0) >= 1:
                break
            time.sleep(1)
        else:
            pytest.fail("the long point never started training")
        code, out = cfh("--root", str(root), "cancel", "long", "train.ar.steps=1")
        assert "cancelled 1 points" in out, out
        sweep.wait(timeout=120)  # the blocking sweep returns once its job is gone
        code, out = cfh("--root", str(root), "status", "long")
        assert "long: 1 cancelled" in out, out
        code, out = cfh("--root", str(root), "sweep", str(grid), "train.steps=100000", "--dry-run")
        assert "skip (cancelled; --retry resubmits it)" in out
    finally:
        if sweep.poll() is None:
            sweep.kill()


def _all(swept) -> list[str]:
    return [p["signature"] for p in plan(swept["root"], "tiny")["points"]]


def test_another_grid_file_with_the_same_name_is_refused(swept, tmp_path):
    other = tmp_path / "elsewhere" / "tiny.yaml"
    other.parent.mkdir()
    other.write_text("base: {model: T}\nseeds: [0]\n")  # another grid: --prune would drop all
    links = sorted((swept["root"] / "grids" / "tiny" / "runs").iterdir())
    for extra in ([], ["--dry-run"], ["--prune"]):
        code, out = cfh("--root", str(swept["root"]), "sweep", str(other), *extra)
        assert code == 2, out
        assert str(swept["grid"].resolve()) in out and str(other.resolve()) in out, out
    assert sorted((swept["root"] / "grids" / "tiny" / "runs").iterdir()) == links


def test_a_root_that_is_a_file_is_a_user_error(tmp_path):
    root = tmp_path / "a_file"
    root.write_text("")
    code, out = cfh("--root", str(root), "status", "smoke")
    assert code == 2 and "is a file" in out and "Traceback" not in out, out


@pytest.mark.parametrize(
    "text,reason",
    [
        ("[]", "expected a JSON object, found list"),
        ('{"state": "completed", "loss": "low"}', "loss='low' is not a number"),
        ('{"state": "running", "started": "2026-12-01T10:00:00"}', "with a timezone"),
        ('{"state": "done-ish"}', "state='done-ish' is not one of"),
        ("\x00\x01garbage", "not JSON"),
    ],
)
def test_a_damaged_status_json_is_one_damaged_row(swept, text, reason):
    root = swept["root"]
    sig = sigs_by_state(root)["completed"][0]
    path = root / "runs" / sig / "status.json"
    good = path.read_text()
    try:
        path.write_text(text)
        code, out = cfh("--root", str(root), "status", "tiny")
        assert code == 1 and "Traceback" not in out, out
        row = next(line for line in out.splitlines() if line.startswith(sig))
        assert " damaged " in row, out
        assert "^ damaged: status.json: " in out and reason in out, out
        code, out = cfh("--root", str(root), "sweep", str(swept["grid"]), "--dry-run")
        assert "damaged; --retry resubmits it" in out, out
    finally:
        path.write_text(good)


def _final(run_dir: Path) -> dict:
    from model.training.checkpoint import checkpoint_paths, read_checkpoint

    return read_checkpoint(checkpoint_paths(run_dir)[-1])


def test_extend_continues_the_same_runs_and_redoes_their_evals(tmp_path):
    os.environ.setdefault("CFH_CACHE", str(REPO / ".cache" / "cfh"))
    grid = write_grid(tmp_path / "grow.yaml", GOOD[:1])
    root = tmp_path / "out"
    assert cfh("--root", str(root), "sweep", str(grid))[0] == 0
    (sig,) = [p["signature"] for p in plan(root, "grow")["points"]]
    run = root / "runs" / sig
    code, out = cfh("--root", str(root), "sweep", str(grid), "--extend", "train.steps=8")
    assert code == 0 and "extend: 1 runs continue to train.steps=8" in out, out
    assert [p["signature"] for p in plan(root, "grow")["points"]] == [sig]  # the same folder
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6, 8]  # resumed at 4, every step logged once
    evals = read_status(run)["evals"]
    assert len(evals) == 2 and all(e["ckpt_step"] == 8 for e in evals.values())
    assert len(list((run / "eval").glob("*.json"))) == 4  # the step-4 records are kept
    # exact resume: equal to the same point trained for 8 steps straight
    assert cfh("--root", str(root), "sweep", str(grid), "train.steps=8")[0] == 0
    straight = next(p["signature"] for p in plan(root, "grow")["points"])
    a, b = _final(run), _final(root / "runs" / straight)
    assert straight != sig and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # again: nothing to do; shortening is refused
    code, out = cfh("--root", str(root), "sweep", str(grid), "--extend", "train.steps=8")
    assert "nothing to submit" in out, out
    code, out = cfh("--root", str(root), "sweep", str(grid), "--extend", "train.steps=6")
    assert code == 2 and "never shortened" in out
    code, out = cfh("--root", str(root), "sweep", str(grid), "--extend", "train.lr=2")
    assert code == 2 and "expected train.steps=N" in out


def test_seeds_from_the_command_line_add_points(tmp_path):
    grid = write_grid(tmp_path / "seeded.yaml", GOOD[:1])
    root = tmp_path / "out"
    code, out = cfh("--root", str(root), "sweep", str(grid), "--seeds", "0,1", "--dry-run")
    assert code == 0 and "2 points" in out, out
    code, out = cfh("--root", str(root), "sweep", str(grid), "--seeds", "0,x", "--dry-run")
    assert code == 2 and "--seeds" in out
