"""`cfh sweep GRID --until-decided` (harness.sweep.rounds): the additions a round plans, and
real local sweeps of a tiny grid (4 digits runs of 8 steps, 16 samples) run to the end, run
twice, and killed (SIGKILL to the sweep's process group) and started again.

The additions are checked on a real expanded grid with a hand-made judged row (what
reports.findings.judge_findings gives), since the tiny runs' finding never decides within a
small budget: next_round's seeds are the ones `cfh sweep GRID --seeds ...` would plan, only for
the finding's cells; its samples are eval points with sample.num=N on the cells' runs only; an
addition past --budget-hours is skipped; augmented() adds nothing twice.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from core.io import read_status
from harness.cli.main import main
from harness.grid.files import load_grid
from harness.sweep import rounds as dr
from harness.sweep.reconcile import parse_seeds, set_seeds

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

# /tmp/udgrid/ud_tiny.yaml shrunk (40 -> 8 steps, 24 -> 16 samples, 10 -> 4 sampling steps):
# a run costs about its start-up; 2 seeds a cell is the least that gives a seed variance
TINY = """\
description: until-decided tiny test grid
base:
  model: T
  data: digits
  data.patch_size: 2
  train.steps: 8
  train.batch_size: 16
  train.lr: 1.0e-3
  train.ckpt_every: 4
  train.log_every: 4
  sample.num: 16
  sample.steps: 4
  eval.extractor: classifier
  eval.kid_subset_size: 8
  eval.bootstrap: 20
include:
  - {train.ar.mode: fixed, train.ar.steps: 1}
  - {train.ar.mode: uniform}
seeds: [0, 1]
eval:
  axes:
    sample.ar_steps: [1]
findings:
  - claim: fixed 1 beats uniform at S_eval 1
    better: {train.ar.mode: fixed, train.ar.steps: 1}
    worse: {train.ar.mode: uniform}
resources:
  cluster: local
  parallelism: 2
  cpus_per_task: 1
"""
# For the planning tests (never trained): a third training setting that no finding names, two
# eval settings, and findings whose cells name an eval setting.
THREE = """\
base:
  model: T
  data: digits
  data.patch_size: 2
  train.steps: 8
  train.batch_size: 16
  train.ckpt_every: 4
  sample.num: 16
  sample.steps: 4
  eval.extractor: classifier
  eval.kid_subset_size: 8
include:
  - {train.ar.mode: fixed, train.ar.steps: 1}
  - {train.ar.mode: uniform}
  - {train.ar.mode: fixed, train.ar.steps: 2}
seeds: [0, 1]
eval:
  axes:
    sample.ar_steps: [1, 2]
findings:
  - claim: fixed 1 beats uniform at S_eval 1
    better: {train.ar.mode: fixed, train.ar.steps: 1, sample.ar_steps: 1}
    worse: {train.ar.mode: uniform, sample.ar_steps: 1}
  - claim: fixed 2 beats uniform at S_eval 2
    better: {train.ar.mode: fixed, train.ar.steps: 2, sample.ar_steps: 2}
    worse: {train.ar.mode: uniform, sample.ar_steps: 2}
resources:
  cluster: local
  parallelism: 2
  cpus_per_task: 1
"""
FLAGS = ["--until-decided", "--max-seeds", "3", "--max-samples", "48", "--budget-hours", "0.5"]
SIG = re.compile(r"^([0-9a-f]{10})\s")


@pytest.fixture(autouse=True)
def _cache(monkeypatch):
    monkeypatch.setenv("CFH_CACHE", os.environ.get("CFH_CACHE", str(REPO / ".cache" / "cfh")))


def cfh(*argv: str) -> tuple[int, str]:
    """`cfh ARGV` in this process: (exit code, stdout + stderr)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(argv))
    return code, out.getvalue()


# ---------------------------------------------------------------- `cfh` child processes


def child_env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.setdefault("CFH_CACHE", str(REPO / ".cache" / "cfh"))
    return env


def start(log: Path, *argv: str) -> subprocess.Popen:
    """`cfh ARGV` as a child in its own process group (its local jobs are in it too)."""
    return subprocess.Popen(
        [sys.executable, "-m", "harness.cli", *argv], cwd=REPO, env=child_env(),
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's whole process group; return once no process of it is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"process group {proc.pid} still has processes 30 s after SIGKILL")


def run_cfh(log: Path, *argv: str, timeout: float) -> tuple[int, str]:
    """`cfh ARGV` as a child under a hard timeout (its process group killed past it)."""
    proc = start(log, *argv)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        pytest.fail(f"cfh {' '.join(argv)} ran past {timeout} s:\n{log.read_text()[-4000:]}")
    return code, log.read_text()


def decide(root: Path) -> dict:
    return json.loads((root / "grids" / "ud_tiny" / "decide.json").read_text())


def planned(root: Path) -> list[str]:
    plan = json.loads((root / "grids" / "ud_tiny" / "plan.json").read_text())
    return [p["signature"] for p in plan["points"]]


def run_record(root: Path) -> dict:
    """Per planned run: what a second training or evaluation would change."""
    out = {}
    for sig in planned(root):
        rdir = root / "runs" / sig
        s = read_status(rdir)
        metrics = (rdir / "metrics.jsonl").read_bytes()
        out[sig] = (s.get("attempts"), s.get("job_id"), s.get("state"), metrics, s.get("evals"))
    return out


def assert_rounds_consistent(state: dict) -> None:
    numbers = [r["round"] for r in state["rounds"]]
    assert numbers == list(range(1, len(numbers) + 1)), numbers  # none twice, none skipped
    for r in state["rounds"]:
        assert [v["finding"] for v in r["verdicts"]] == [0], r
        assert r["verdicts"][0]["claim"] == "fixed 1 beats uniform at S_eval 1"


# ---------------------------------------------------------------- what a round adds


@pytest.fixture
def three(tmp_path):
    path = tmp_path / "ud_three.yaml"
    path.write_text(THREE)
    grid = load_grid(str(path))
    return grid, grid.expand(), tmp_path / "root"


def judged_row(grid, i: int, **values) -> dict:
    """One judged finding as reports.findings.judge_findings gives it: undecided, 2 seeds a
    side, 16 samples, seed variance 3/4 of the difference's."""
    f = grid.findings[i]
    row = {
        **{"finding": i, "claim": f["claim"], "better": f["better"], "worse": f["worse"]},
        **{"verdict": "undecided", "lever": "seeds", "need_seeds": 3, "seeds": 2},
        **{"need_samples": None, "num_samples": 16.0, "var_sampling": 1.0, "var_seed": 3.0},
        "need": "about 1 more seeds",
    }
    return {**row, **values}


def state_for(grid, root: Path, hours: float = 4.0, max_samples: int = 2000) -> dict:
    return dr.load_state(str(root), grid, dr.Budget(3, max_samples, hours))


def add_round(state: dict, added: list[dict]) -> None:
    state["rounds"].append({"round": len(state["rounds"]) + 1, "verdicts": [], "added": added})


COSTS = {"seed": 0.5, "samples": 1e-4}


def test_a_seeds_round_adds_the_new_seeds_of_the_findings_cells_only(three):
    grid, points, root = three
    state = state_for(grid, root)
    added = dr.next_round(grid, points, pd.DataFrame([judged_row(grid, 0)]), COSTS, state)
    assert [(a["lever"], a["seeds"], a["finding"]) for a in added] == [("seeds", [2], 0)]
    assert added[0]["hours"] == pytest.approx(1.0)  # 1 seed x 2 settings x 0.5 h
    assert state["spent_hours"] == pytest.approx(1.0)
    add_round(state, added)
    new = [p for p in dr.augmented(grid, grid.expand(), state) if p.signature not in
           {q.signature for q in points}]  # fmt: skip
    # exactly what `cfh sweep GRID --seeds 0,1,2` plans for the two cells' settings at seed 2
    wide = load_grid(str(grid.path))
    set_seeds(wide, parse_seeds("0,1,2"))
    want = {
        p.signature: p.axes
        for p in wide.expand()
        if p.axes["seed"] == 2 and p.axes.get("train.ar.steps") != 2
    }
    assert {p.signature: p.axes for p in new} == want and len(want) == 2
    assert [e.key for p in new for e in p.evals] == [e.key for e in points[0].evals] * 2
    code, out = cfh("--root", str(root), "sweep", str(grid.path), "--seeds", "0,1,2", "--dry-run")
    assert code == 0 and set(want) <= {m[1] for m in map(SIG.match, out.splitlines()) if m}, out


def test_a_samples_round_adds_n_sample_evals_on_the_findings_runs_only(three):
    grid, points, root = three
    row = judged_row(grid, 0, lever="samples", need_seeds=None, need_samples=150)
    state = state_for(grid, root)
    added = dr.next_round(grid, points, pd.DataFrame([row]), COSTS, state)
    assert [(a["lever"], a["num"]) for a in added] == [("samples", 200)]  # rounded up to 100s
    assert 0 < added[0]["hours"] <= 4.0
    add_round(state, added)
    before = {p.signature: [e.key for e in p.evals] for p in grid.expand()}
    after = dr.augmented(grid, grid.expand(), state)
    assert [p.signature for p in after] == list(before)  # no run added
    # the eval point a grid with sample.num: 200 plans at S_eval 1 (same signatures)
    (at_n,) = [
        e for e in load_grid(str(grid.path), ["sample.num=200"]).expand()[0].evals
        if e.values == {"sample.ar_steps": 1}
    ]  # fmt: skip
    for p in after:
        extra = [e for e in p.evals if e.key not in before[p.signature]]
        cell = p.axes.get("train.ar.steps") != 2  # fixed 1 or uniform
        assert [e.key for e in extra] == ([at_n.key] if cell else []), p.axes
        assert all(e.settings["sample"]["num"] == 200 for e in extra)
        assert all(e.settings["sample"]["ar_steps"] == 1 for e in extra)


def test_the_samples_lever_never_passes_max_samples(three):
    grid, points, root = three
    row = judged_row(grid, 0, lever="samples", need_seeds=None, need_samples=40)
    state = state_for(grid, root, max_samples=48)
    added = dr.next_round(grid, points, pd.DataFrame([row]), COSTS, state)
    assert [a["num"] for a in added] == [48]


def test_an_addition_past_the_budget_is_skipped(three):
    grid, points, root = three
    rows = pd.DataFrame(
        [judged_row(grid, 0), judged_row(grid, 1), judged_row(grid, 1, verdict="holds")]
    )
    state = state_for(grid, root, hours=0.5)  # one seed for 2 settings costs 1 h
    assert dr.next_round(grid, points, rows, COSTS, state) == []
    assert state["spent_hours"] == 0.0
    state = state_for(grid, root, hours=1.5)  # the first fits, the first and second do not
    added = dr.next_round(grid, points, rows, COSTS, state)
    assert [a["finding"] for a in added] == [0] and state["spent_hours"] == pytest.approx(1.0)
    state = state_for(grid, root, hours=1.5)
    state["spent_hours"] = 1.0  # spent by earlier rounds: counts against the budget
    assert dr.next_round(grid, points, rows, COSTS, state) == []
    row = judged_row(grid, 0, lever="samples", need_seeds=None, need_samples=150)
    state = state_for(grid, root, hours=0.5)
    assert dr.next_round(grid, points, pd.DataFrame([row]), {"samples": 1.0}, state) == []


def test_augmented_adds_nothing_twice_and_the_sweep_plans_the_rounds(three):
    grid, points, root = three
    state = state_for(grid, root)
    add_round(state, dr.next_round(grid, points, pd.DataFrame([judged_row(grid, 0)]), COSTS, state))
    row = judged_row(grid, 0, lever="samples", need_seeds=None, need_samples=150)
    add_round(state, dr.next_round(grid, grid.expand(), pd.DataFrame([row]), COSTS, state))
    add_round(state, state["rounds"][-1]["added"])  # the same addition again: no new points

    def shape(pts):
        return [(p.signature, sorted(e.key for e in p.evals)) for p in pts]

    once = dr.augmented(grid, grid.expand(), state)
    assert len(once) == 8 and all(len(set(keys)) == len(keys) for _, keys in shape(once))
    assert shape(dr.augmented(grid, once, state)) == shape(once)
    assert shape(dr.augmented(grid, grid.expand(), state)) == shape(once)
    # seed 2 of the cells gets the 200-sample eval too; 2 + 1 evals on the 6 runs of the cells
    assert sorted(len(keys) for _, keys in shape(once)) == [2, 2] + [3] * 6
    # a (resumed) sweep plans the points of decide.json's rounds: the 8, all to submit
    dr.save_state(str(root), grid, state)
    code, out = cfh("--root", str(root), "sweep", str(grid.path), "--until-decided", "--dry-run")
    assert code == 0 and "plan: 8 to submit, 0 to skip" in out, out
    assert [m[1] for m in map(SIG.match, out.splitlines()) if m] == [s for s, _ in shape(once)]


# ---------------------------------------------------------------- real sweeps


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The tiny grid swept --until-decided into a fresh root, to the end."""
    tmp = tmp_path_factory.mktemp("until_decided")
    grid, root = tmp / "ud_tiny.yaml", tmp / "root"
    grid.write_text(TINY)
    t0 = time.monotonic()
    code, out = run_cfh(tmp / "sweep.log", "--root", str(root), "sweep", str(grid), *FLAGS,
                        timeout=300)  # fmt: skip
    print(f"until-decided sweep: {time.monotonic() - t0:.0f} s")
    return {"grid": grid, "root": root, "code": code, "out": out, "tmp": tmp}


@pytest.mark.timeout(420)
def test_until_decided_runs_the_grid_judges_it_and_records_the_rounds(swept):
    root, out = swept["root"], swept["out"]
    assert swept["code"] == 0, out
    assert "plan: 4 to submit, 0 to skip" in out and "ud_tiny: 4 completed" in out, out
    state = decide(root)
    assert len(state["rounds"]) >= 1 and state["finished_because"], state
    assert (state["max_seeds"], state["max_samples"], state["budget_hours"]) == (3, 48, 0.5)
    assert_rounds_consistent(state)
    assert state["rounds"][0]["verdicts"][0]["verdict"] in ("holds", "contradicted", "undecided")
    assert f"until-decided: {state['finished_because']} after {len(state['rounds'])} rounds" in out
    code, text = cfh("--root", str(root), "status", "ud_tiny")
    assert code == 0, text
    assert any(line.startswith("until-decided: round") for line in text.splitlines()), text


@pytest.mark.timeout(420)
def test_a_second_until_decided_sweep_trains_nothing(swept):
    root = swept["root"]
    assert swept["code"] == 0, swept["out"]
    runs, before = run_record(root), decide(root)
    code, out = run_cfh(swept["tmp"] / "again.log", "--root", str(root), "sweep",
                        str(swept["grid"]), *FLAGS, timeout=180)  # fmt: skip
    assert code == 0, out
    assert "plan: 0 to submit, 4 to skip" in out, out
    assert run_record(root) == runs  # no attempt, job, metrics line or eval record changed
    after = decide(root)
    assert after["rounds"][: len(before["rounds"])] == before["rounds"]
    assert len(after["rounds"]) - len(before["rounds"]) in (0, 1)  # a round more, or none
    assert_rounds_consistent(after)


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """The tiny grid's until-decided sweep SIGKILLed (its process group) while a run trains,
    started again as a user would (no flag), then again with --retry."""
    tmp = tmp_path_factory.mktemp("until_decided_killed")
    grid, root = tmp / "ud_tiny.yaml", tmp / "root"
    grid.write_text(TINY)
    argv = ["--root", str(root), "sweep", str(grid), *FLAGS]
    proc = start(tmp / "killed.log", *argv)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            found = [read_status(d) for d in (root / "runs").glob("*")]
            if any(s.get("state") == "running" and s.get("phase") == "train" for s in found):
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"no run started training:\n{(tmp / 'killed.log').read_text()[-3000:]}")
    finally:
        kill_group(proc)
    states = {d.name: read_status(d).get("state") for d in (root / "runs").glob("*")}
    plain = run_cfh(tmp / "plain.log", *argv, timeout=120)
    after_plain = decide(root)
    retried = run_cfh(tmp / "retry.log", *argv, "--retry", timeout=300)
    return {"grid": grid, "root": root, "killed": states, "plain": plain,
            "after_plain": after_plain, "retried": retried}  # fmt: skip


@pytest.mark.timeout(600)
def test_a_killed_until_decided_sweep_resumes_with_retry(resumed):
    root = resumed["root"]
    assert len(resumed["killed"]) == 4 and "running" in resumed["killed"].values()
    # the killed runs (the training ones and the queued ones) are failed; a plain restart
    # skips them, as `cfh sweep` skips failed points: the user has to give --retry
    code, out = resumed["plain"]
    assert code == 1, out
    assert "plan: 0 to submit, 4 to skip" in out and "ud_tiny: 4 failed" in out, out
    assert out.count("skip (failed; --retry resubmits it)") == 4, out
    assert [v["verdict"] for v in resumed["after_plain"]["rounds"][-1]["verdicts"]] == [
        "not measured"
    ]
    code, out = resumed["retried"]
    assert code == 0, out
    assert "plan: 4 to submit, 0 to skip" in out and "ud_tiny: 4 completed" in out, out
    for sig in planned(root):
        status = read_status(root / "runs" / sig)
        assert (status["state"], status["phase"], len(status["evals"])) == ("completed", "done", 1)
    state = decide(root)
    assert_rounds_consistent(state)
    assert len(state["rounds"]) == len(resumed["after_plain"]["rounds"]) + 1
    assert state["rounds"][-1]["verdicts"][0]["verdict"] != "not measured"
    code, text = cfh("--root", str(root), "status", "ud_tiny")
    assert code == 0 and "ud_tiny: 4 completed" in text, text


@pytest.mark.timeout(600)
def test_a_round_that_measured_nothing_does_not_end_as_decided(resumed):
    state = resumed["after_plain"]
    assert state["rounds"][-1]["verdicts"][0]["verdict"] == "not measured"
    assert state["finished_because"] != "every finding decided"
    assert "--retry" in state["finished_because"]


@pytest.mark.timeout(600)
def test_report_lists_the_rounds_and_the_findings_with_their_forest_plot(resumed):
    root = resumed["root"]
    assert resumed["retried"][0] == 0, resumed["retried"][1]
    code, out = cfh("--root", str(root), "report", "ud_tiny")
    assert code == 0, out
    folder = root / "grids" / "ud_tiny" / "report"
    md = (folder / "report.md").read_text()
    headings = [line for line in md.splitlines() if line.startswith("## ")]
    assert "## Findings the grid tests" in headings and (
        "## Rounds of cfh sweep --until-decided" in headings
    ), headings
    findings = md.split("## Findings the grid tests", 1)[1].split("\n## ", 1)[0]
    assert "fixed 1 beats uniform at S_eval 1" in findings
    assert "](plots/findings_forest.png)" in findings
    assert (folder / "plots" / "findings_forest.png").stat().st_size > 0
    rounds = md.split("## Rounds of cfh sweep --until-decided", 1)[1].split("\n## ", 1)[0]
    n = len(decide(root)["rounds"])
    assert f"{n} rounds; budget 0.5 h" in rounds, rounds


# ---------------------------------------------------------------- refused flags


@pytest.mark.parametrize(
    "flags,named",
    [
        (["--max-seeds", "1"], "--max-seeds 1 "),
        (["--max-samples", "3"], "--max-samples 3 "),
        (["--budget-hours", "0"], "--budget-hours 0.0 "),
        (["--budget-hours", "nan"], "--budget-hours nan "),
    ],
    ids=["max-seeds-1", "max-samples-3", "budget-hours-0", "budget-hours-nan"],
)
def test_a_bad_budget_flag_exits_2_before_anything_is_written(tmp_path, flags, named):
    grid = tmp_path / "ud_tiny.yaml"
    grid.write_text(TINY)
    root = tmp_path / "root"
    code, out = cfh("--root", str(root), "sweep", str(grid), "--until-decided", *flags)
    assert code == 2 and len(out.strip().splitlines()) == 1 and named in out, out
    assert not root.exists()


def test_until_decided_on_a_grid_without_findings_exits_2(tmp_path):
    grid = tmp_path / "plain.yaml"
    grid.write_text(TINY.split("findings:")[0] + "resources:" + TINY.split("resources:")[1])
    root = tmp_path / "root"
    code, out = cfh("--root", str(root), "sweep", str(grid), "--until-decided")
    assert code == 2 and len(out.strip().splitlines()) == 1, out
    assert "names no findings" in out and "plain" in out and str(grid) in out, out
    assert not root.exists()
