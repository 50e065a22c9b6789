"""`cfh status` table (phase, one FID column per eval setting) and `cfh sweep --wait` lines."""

from __future__ import annotations

import json
from pathlib import Path

from core.io import run_lock, update_status
from harness.launch.runs import run_dir
from harness.launch.status import Row, eval_label, progress_lines, render, row_for, train_rate

SIG = "a" * 10


def _row(**kw) -> Row:
    base = {"signature": SIG, "axes": {"train.ar.steps": 1}, "state": "running"}
    return Row(**{**base, **kw})


def test_the_table_has_a_phase_column_and_a_fid_column_per_s_eval() -> None:
    rows = [
        _row(state="completed", phase="done", fids={"fid@S1": 12.345, "fid@S4": 30.0}),
        _row(signature="b" * 10, phase="train", step=5, total_steps=10, fids={"fid@S4": 9.0}),
        _row(signature="c" * 10, state="missing"),
    ]
    header, *lines = render(rows, ["train.ar.steps"]).splitlines()
    assert header.split() == [
        "signature", "ar.steps", "state", "phase", "job", "att", "step", "loss",
        "fid@S1", "fid@S4", "evals", "elapsed",
    ]  # fmt: skip
    assert lines[0].split()[2:4] == ["completed", "done"]
    assert lines[0].split()[8:10] == ["12.35", "30.00"]
    assert lines[1].split()[3] == "train" and lines[1].split()[6] == "5/10"
    assert lines[1].split()[8:10] == ["-", "9.00"]
    assert lines[2].split()[3] == "-"
    # no eval record anywhere: one empty fid column
    assert "fid" in render([_row()], []).splitlines()[0].split()


def test_row_labels_each_fid_with_its_s_eval_and_other_eval_axes(tmp_path: Path) -> None:
    rdir = run_dir(tmp_path, SIG)
    rdir.mkdir(parents=True)
    evals = {
        "k1": {"file": "eval/1.json", "fid": 20.0, "s_eval": 1, "created": "1"},
        "k4": {"file": "eval/4.json", "fid": 10.0, "s_eval": 4, "created": "2"},
        "k4g": {"file": "eval/5.json", "fid": 8.0, "s_eval": 4, "created": "3"},
        "cap": {"file": "eval/6.json", "fid": None, "s_eval": None, "created": "4"},
    }
    update_status(rdir, state="running", phase="eval", step=4, total_steps=4, evals=evals)
    values = {
        "k1": {"sample.ar_steps": 1},
        "k4": {"sample.ar_steps": 4},
        "k4g": {"sample.ar_steps": 4, "sample.cfg": 1.5},
        "cap": {"eval.task": "caption"},
    }
    row = row_for(SIG, {}, list(evals), tmp_path, {}, values)
    assert row.phase == "eval" and row.fid == 8.0 and row.evals_done == 4
    assert row.fids == {"fid@S1": 20.0, "fid@S4": 10.0, "fid@S4,cfg=1.5": 8.0}
    assert eval_label(2) == "fid@S2" and eval_label(None) == "fid"


def test_train_rate_uses_the_rows_since_the_last_restart(tmp_path: Path) -> None:
    rows = [
        {"step": 10, "wall_s": 10.0},
        {"step": 20, "wall_s": 20.0},  # first attempt
        {"step": 30, "wall_s": 1.0},
        {"step": 50, "wall_s": 5.0},
        {"step": 70, "wall_s": 9.0},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{bad")
    assert train_rate(tmp_path) == 5.0  # 40 steps in 8 s, not across the restart
    assert train_rate(tmp_path / "none") is None
    (tmp_path / "metrics.jsonl").write_text(json.dumps(rows[0]) + "\n")
    assert train_rate(tmp_path) is None


def test_wait_lines_show_state_phase_step_and_eta() -> None:
    rows = [
        _row(phase="train", step=100, total_steps=1100),
        _row(signature="b" * 10, phase="eval", step=10, total_steps=10, evals_total=2),
        _row(signature="c" * 10, state="pending"),
        _row(signature="d" * 10, state="completed", phase="done"),
    ]
    lines = progress_lines(rows, {SIG: 2.0})
    assert len(lines) == 3  # the completed point is not active
    assert lines[0].split() == [SIG, "running", "train", "step", "100/1100", "2", "step/s,",
                                "ETA", "08:20"]  # fmt: skip
    assert lines[1].split()[1:] == ["running", "eval", "step", "10/10", "evals", "0/2"]
    assert lines[2].split()[1:] == ["pending", "-", "step", "-", "ETA", "-"]
    assert progress_lines(rows[3:], {}) == []


def test_status_and_report_agree_on_a_grid_never_swept(tmp_path: Path, capsys) -> None:
    from harness.cli.main import main

    (tmp_path / "grids" / "smoke").mkdir(parents=True)  # a lock folder, but no plan.json
    said = {}
    for command in ("status", "report"):
        assert main(["--root", str(tmp_path), command, "smoke"]) == 2, command
        out, err = capsys.readouterr()
        said[command] = err.strip().splitlines()[-1]
        if command == "status":  # the points the first sweep would run, then the refusal
            assert "missing" in out and out.strip().splitlines()[-1].endswith("missing"), out
    assert said["status"] == said["report"], said
    assert said["status"].startswith(
        f"error: grid 'smoke' has never been swept under {tmp_path}: "
        f"run `cfh --root {tmp_path} sweep smoke` first"
    ), said


def test_status_and_the_results_loader_read_a_run_folder_alike(tmp_path: Path) -> None:
    from reports.rows import read_run

    rdir = run_dir(tmp_path, SIG)
    evals = {"k1": {"file": "eval/1.json", "fid": 20.0, "s_eval": 1}}
    update_status(rdir, state="running", phase="eval", step=3, total_steps=4, evals=evals)
    with run_lock(rdir, "a job"):  # a process runs it
        row = row_for(SIG, {}, ["k1", "k2"], tmp_path, {})
        (result,), _ = read_run(rdir, {}, {"k1", "k2"})
    assert (row.state, row.phase, row.step, row.total_steps) == ("running", "eval", 3, 4)
    assert (result["state"], result["phase"], result["progress_step"]) == ("running", "eval", 3)
    row = row_for(SIG, {}, ["k1", "k2"], tmp_path, {})  # no process: gone, as both say
    (result,), _ = read_run(rdir, {}, {"k1", "k2"})
    assert row.state == result["state"] == "failed" and row.error == result["error"]
    assert row.error.startswith("process gone (status.json says running, but no process holds")
    (rdir / "status.json").write_text('{"state": "done"}')  # not a state a job writes
    row = row_for(SIG, {}, ["k1"], tmp_path, {})
    (result,), _ = read_run(rdir, {}, {"k1"})
    assert row.state == result["state"] == "damaged"
    assert row.error == result["problems"]
    assert row.error.startswith("damaged: status.json: state='done' is not one of pending, ")
