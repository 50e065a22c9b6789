"""harness.launch.executors on a real local SLURM cluster (scripts/slurm-local.sh) and locally.

The job functions below are pickled by value (cloudpickle) so that the job processes, which
cannot import this test module, can run them. Every slurm test submits real sbatch jobs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit
import yaml

from core.errors import UserError
from core.records import STATUS_STATES
from harness.config.search import SHIPPED_CONFIG_DIR
from harness.launch import executors as ex
from harness.launch import point_job as pj

cloudpickle.register_pickle_by_value(sys.modules[__name__])

ROOT = Path(__file__).resolve().parents[2]
SLURM_STATE = Path(os.environ.get("CFH_SLURM_STATE", "/run/cfh-slurm"))
TIMINGS: dict[str, float] = {}


# ---------------------------------------------------------------- job functions


def square(out_dir: str, i: int) -> int:
    """Write start/end times, sleep a little, return i*i."""
    start = time.time()
    time.sleep(1.0)
    Path(out_dir, f"task{i}.json").write_text(
        json.dumps({"i": i, "start": start, "end": time.time(), "pid": os.getpid()})
    )
    return i * i


def boom(run_dir: str) -> None:
    raise ValueError(f"boom in {Path(run_dir).name}")


def sleeper(run_dir: str, seconds: float = 120.0) -> str:
    Path(run_dir, "started").write_text(str(os.getpid()))
    time.sleep(seconds)
    return "slept"


def counting_loop(run_dir: str, total: int = 40, step_s: float = 0.1) -> dict:
    """A resumable loop: state.json holds the step; saves and leaves on preemption."""
    rd = Path(run_dir)
    state_file = rd / "state.json"
    step = json.loads(state_file.read_text())["step"] if state_file.exists() else 0
    with open(rd / "attempts.log", "a") as f:
        f.write(f"{step}\n")
    while step < total:
        if pj.preemption_requested():
            state_file.write_text(json.dumps({"step": step}))
            raise SystemExit(124)
        time.sleep(step_s)
        step += 1
        (rd / "progress").write_text(str(step))
    starts = [int(s) for s in (rd / "attempts.log").read_text().split()]
    return {"step": step, "starts": starts}


def ignore_warning(run_dir: str, seconds: float = 60.0) -> str:
    """Never looks at preemption_requested(): the wrapper's grace period must requeue it."""
    rd = Path(run_dir)
    with open(rd / "attempts.log", "a") as f:
        f.write("start\n")
    if len((rd / "attempts.log").read_text().split()) > 1:
        return "second attempt"
    (rd / "progress").write_text("1")
    time.sleep(seconds)
    return "first attempt ran to the end"


def visible_gpus() -> str | None:
    return os.environ.get("CUDA_VISIBLE_DEVICES")


# ---------------------------------------------------------------- helpers


def wait_for(cond, timeout: float, what: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def sacct_state(job_id: str) -> str:
    out = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State"], capture_output=True, text=True
    ).stdout.splitlines()
    return out[-1].split()[0] if out else ""  # "CANCELLED by 0" -> CANCELLED


def max_overlap(records: list[dict]) -> int:
    events = sorted([(r["start"], 1) for r in records] + [(r["end"], -1) for r in records])
    live = best = 0
    for _, delta in events:
        live += delta
        best = max(best, live)
    return best


def local_profile(**overrides) -> dict:
    profile = yaml.safe_load((SHIPPED_CONFIG_DIR / "cluster/local.yaml").read_text())
    profile.update(overrides)
    return profile


# ---------------------------------------------------------------- profiles (no cluster needed)


@pytest.mark.parametrize("name", ["local", "slurm", "slurm_gpu"])
def test_shipped_profiles_validate(name):
    cfg = yaml.safe_load((SHIPPED_CONFIG_DIR / f"cluster/{name}.yaml").read_text())
    p = ex.validate_profile(cfg) if cfg["backend"] == "slurm" or not cfg["gpus_per_node"] else None
    if p is not None:
        assert p.name == name and p.tasks_per_node == max(1, cfg["gpus_per_node"])


@pytest.mark.parametrize(
    "change, words",
    [
        ({"backend": "pbs"}, ["backend='pbs'", "local | slurm", "local.yaml"]),
        ({"gpus_per_node": 64}, ["gpus_per_node=64", "GPU", "local.yaml"]),
        ({"nodes": 2}, ["nodes=2", "local backend"]),
        ({"parallelism": 0}, ["parallelism=0", "int >= 1"]),
        ({"cpus_per_task": "two"}, ["cpus_per_task='two'"]),
        ({"paralelism": 2}, ["unknown key", "paralelism", "parallelism"]),
        ({"timeout_min": 1, "signal_delay_s": 60}, ["signal_delay_s=60", "timeout_min=1"]),
        ({"setup": "module load x"}, ["setup="]),
    ],
)
def test_bad_profiles_are_user_errors(change, words):
    with pytest.raises(UserError) as err:
        ex.make_executor(local_profile(**change), Path("/nonexistent"))
    for w in words:
        assert w in str(err.value)


def test_slurm_profile_needs_whole_minutes():
    cfg = yaml.safe_load((SHIPPED_CONFIG_DIR / "cluster/slurm.yaml").read_text())
    with pytest.raises(UserError, match="timeout_min=1.5"):
        ex.validate_profile({**cfg, "timeout_min": 1.5})


def test_timeout_or_preemption():
    job = pj.PointJob(sleeper, signal_delay_s=60)
    job._start = time.monotonic() - 60 * 60  # an hour into a 2-hour job: preemption
    assert not job._timed_out(120)
    job._start = time.monotonic() - (120 * 60 - 70)  # warning 70 s before the limit: time-out
    assert job._timed_out(120)
    short = pj.PointJob(sleeper, signal_delay_s=15)  # 1-minute job, warning due at 45 s
    short._start = time.monotonic() - 5
    assert not short._timed_out(1)
    short._start = time.monotonic() - 30
    assert short._timed_out(1)


def test_a_second_signal_inside_the_first_handler_does_not_hang():
    """SLURM's SIGTERM and USR2 come ms apart: USR2's handler may run inside SIGTERM's. Once a
    lock taken there hung a job until its time limit; here USR2 lands at every line of it."""
    script = Path(__file__).parents[1] / "nested_signals.py"
    try:
        out = subprocess.run(
            [sys.executable, str(script), "point_job"], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:  # SIGKILL: the hung handler catches SIGTERM itself
        pytest.fail("PointJob's signal handler hung when a second signal arrived inside it")
    assert out.returncode == 0, out.stderr
    lines = int(out.stdout.split()[2])  # "nested at N lines": USR2 once at each, after 1 alone
    assert out.stderr.count("got SIGUSR2: preemption requested") == lines
    assert out.stderr.count("got SIGTERM: preemption requested") == lines + 1


def test_every_slurm_state_maps_to_a_cfh_state():
    listed = "PENDING RUNNING COMPLETED FAILED CANCELLED TIMEOUT PREEMPTED REQUEUED NODE_FAIL"
    for s in (listed + " OUT_OF_MEMORY").split():
        assert ex.SLURM_STATES[s] in STATUS_STATES


def test_submit_array_checks_arity(tmp_path):
    executor = ex.make_executor(local_profile(), tmp_path)
    assert ex.submit_array(executor, square, []) == []
    with pytest.raises(ValueError, match="same number"):
        ex.submit_array(executor, square, [(str(tmp_path), 1), (str(tmp_path),)])


# ---------------------------------------------------------------- local backend


def test_local_runs_the_same_functions_with_a_parallelism_limit(tmp_path):
    folder = tmp_path / "submitit"
    executor = ex.make_executor(local_profile(parallelism=2), folder)
    t0 = time.monotonic()
    jobs = ex.submit_array(executor, square, [(str(tmp_path), i) for i in range(4)])
    assert [j.result() for j in jobs] == [0, 1, 4, 9]
    TIMINGS["local 4-task array (parallelism 2)"] = time.monotonic() - t0
    records = [json.loads((tmp_path / f"task{i}.json").read_text()) for i in range(4)]
    assert max_overlap(records) <= 2
    states = ex.job_states([j.job_id for j in jobs], "local", folder=folder)
    assert set(states.values()) == {"completed"}

    (tmp_path / "r").mkdir()
    failing = ex.submit_array(executor, pj.PointJob(boom), [str(tmp_path / "r")])[0]
    with pytest.raises(submitit.core.utils.FailedJobError, match="boom in r"):
        failing.result()
    assert ex.job_states([failing.job_id], "local", folder=folder)[failing.job_id] == "failed"


def test_local_cancel_and_pending(tmp_path):
    folder = tmp_path / "submitit"
    executor = ex.make_executor(local_profile(parallelism=1), folder)
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.mkdir()
    running, waiting = ex.submit_array(executor, sleeper, [str(d) for d in dirs])
    wait_for(lambda: (dirs[0] / "started").exists(), 30, "the first job to start")
    ids = [running.job_id, waiting.job_id]
    assert ex.job_states(ids, "local", folder=folder) == {
        running.job_id: "running",
        waiting.job_id: "pending",  # parallelism 1: waits for the slot
    }
    ex.cancel(ids, "local", folder=folder)
    for job in (running, waiting):
        wait_for(lambda j=job: j.done(), 15, "the cancelled job to stop")
    assert set(ex.job_states(ids, "local", folder=folder).values()) == {"cancelled"}
    assert not (dirs[1] / "started").exists()


def test_local_time_outs_requeue_and_resume_up_to_the_limit(tmp_path):
    """A 24 s local time limit with a 12 s warning: USR2 ~12 s after the start, so 15 s of
    work needs at least two attempts; with max_num_timeout=0 the first time-out is final."""
    folder = tmp_path / "submitit"
    runs = {}
    for limit in (3, 0):
        profile = local_profile(
            timeout_min=0.4, signal_delay_s=12, max_num_timeout=limit, parallelism=2
        )
        executor = ex.make_executor(profile, folder)
        runs[limit] = tmp_path / f"max{limit}"
        runs[limit].mkdir()
        point = pj.PointJob.for_profile(profile, counting_loop)
        runs[limit] = ex.submit_array(executor, point, [(str(runs[limit]), 150)])[0]
    out = runs[3].result()
    assert out["step"] == 150
    assert len(out["starts"]) >= 2 and out["starts"][0] == 0, out
    assert out["starts"] == sorted(set(out["starts"])), out  # each attempt resumed further on
    with pytest.raises(submitit.core.utils.FailedJobError, match="timed out too many times"):
        runs[0].result()


# ---------------------------------------------------------------- real SLURM


@pytest.mark.slurm
def test_script_is_idempotent_and_reports_status(slurm_cluster):
    TIMINGS["cluster start (this session)"] = slurm_cluster.start_s
    t0 = time.monotonic()
    again = subprocess.run(
        ["bash", str(ROOT / "scripts/slurm-local.sh"), "start"], text=True, capture_output=True
    )
    assert again.returncode == 0, again.stderr
    assert "already up" in again.stdout
    assert time.monotonic() - t0 < 5
    status = subprocess.run(
        ["bash", str(ROOT / "scripts/slurm-local.sh"), "status"], text=True, capture_output=True
    )
    assert status.returncode == 0 and "debug" in status.stdout
    assert any(s in status.stdout for s in (" idle ", " mix ", " alloc ")), status.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the script as another user")
def test_script_refuses_without_root():
    script = (ROOT / "scripts/slurm-local.sh").read_text()  # on stdin: nobody may not read ROOT
    out = subprocess.run(
        ["runuser", "-u", "nobody", "--", "bash", "-s", "start"],
        input=script,
        capture_output=True,
        text=True,
        cwd="/",
    )
    assert out.returncode != 0 and "must run as root" in out.stderr, out.stderr


@pytest.mark.slurm
def test_array_runs_to_completion(slurm_cluster, tmp_path):
    folder = tmp_path / "submitit"
    executor = ex.make_executor(slurm_cluster.profile(), folder)
    t0 = time.monotonic()
    jobs = ex.submit_array(executor, square, [(str(tmp_path), i) for i in range(4)])
    assert [j.result() for j in jobs] == [0, 1, 4, 9]
    TIMINGS["slurm 4-task array, submit -> results"] = time.monotonic() - t0
    assert len({j.job_id.split("_")[0] for j in jobs}) == 1  # one array
    ids = [j.job_id for j in jobs]

    def all_completed():
        states = ex.job_states(ids, "slurm")
        return states if set(states.values()) == {"completed"} else None

    states = wait_for(all_completed, 15, "sacct to show the array completed")
    assert len(states) == 4
    records = [json.loads((tmp_path / f"task{i}.json").read_text()) for i in range(4)]
    print(f"array tasks side by side: {max_overlap(records)}")


@pytest.mark.slurm
def test_raising_job_shows_failed_with_its_exception(slurm_cluster, tmp_path):
    executor = ex.make_executor(slurm_cluster.profile(), tmp_path / "submitit")
    (tmp_path / "point").mkdir()
    job = ex.submit_array(executor, pj.PointJob(boom), [str(tmp_path / "point")])[0]
    with pytest.raises(submitit.core.utils.FailedJobError, match="boom in point"):
        job.result()
    wait_for(
        lambda: ex.job_states([job.job_id], "slurm")[job.job_id] == "failed",
        15,
        "job_states to say failed",
    )
    assert sacct_state(job.job_id) == "FAILED"


@pytest.mark.slurm
def test_interrupt_requeues_and_resumes_from_checkpoint(slurm_cluster, tmp_path):
    """job._interrupt() (SIGTERM + USR2): a cooperating job saves, is requeued and resumes; one
    that ignores the warning is requeued after its grace period. Both run side by side."""
    profile = slurm_cluster.profile()
    executor = ex.make_executor(profile, tmp_path / "submitit")
    coop, deaf = tmp_path / "coop", tmp_path / "deaf"
    coop.mkdir()
    deaf.mkdir()
    job = ex.submit_array(
        executor, pj.PointJob.for_profile(profile, counting_loop), [(str(coop), 60)]
    )[0]
    point = pj.PointJob(ignore_warning, grace_s=2, signal_delay_s=profile["signal_delay_s"])
    deaf_job = ex.submit_array(executor, point, [str(deaf)])[0]

    def progress():
        p = coop / "progress"
        return (deaf / "progress").exists() and p.exists() and int(p.read_text() or 0) >= 10

    wait_for(progress, 60, "both jobs to run")
    t0 = time.monotonic()
    job._interrupt()  # SIGTERM + USR2, as a preemption
    deaf_job._interrupt()
    seen = set()
    while not job.done():
        seen.add(ex.job_states([job.job_id], "slurm")[job.job_id])
        time.sleep(0.5)
    out = job.result()
    TIMINGS["slurm interrupt -> requeued job finished"] = time.monotonic() - t0
    assert out["step"] == 60
    assert len(out["starts"]) == 2 and out["starts"][0] == 0 and out["starts"][1] >= 10
    assert "requeued" in seen, seen

    def history():
        out = subprocess.run(
            ["sacct", "-n", "-P", "-X", "-D", "-j", job.job_id, "-o", "State"],
            capture_output=True,
            text=True,
        )
        states = out.stdout.split()
        return states if states[-1:] == ["COMPLETED"] else None

    states = wait_for(history, 15, "sacct to show the job completed")
    assert "REQUEUED" in states, states
    # a preemption does not use up the time-out requeues
    assert "3 time-out requeues left" in Path(job.paths.stderr).read_text()
    assert deaf_job.result() == "second attempt"
    assert "did not leave within 2s" in Path(deaf_job.paths.stderr).read_text()


@pytest.mark.slurm
def test_cancel_leaves_the_job_cancelled(slurm_cluster, tmp_path):
    executor = ex.make_executor(slurm_cluster.profile(), tmp_path / "submitit")
    (tmp_path / "p").mkdir()
    job = ex.submit_array(executor, pj.PointJob(sleeper), [str(tmp_path / "p")])[0]
    wait_for(lambda: (tmp_path / "p" / "started").exists(), 60, "the job to start")
    assert ex.job_states([job.job_id], "slurm")[job.job_id] == "running"
    ex.cancel([job.job_id], "slurm")
    wait_for(
        lambda: ex.job_states([job.job_id], "slurm")[job.job_id] == "cancelled",
        20,
        "job_states to say cancelled",
    )
    assert sacct_state(job.job_id) == "CANCELLED"


@pytest.mark.slurm
def test_gpu_request_schedules_on_fake_gpus(slurm_cluster, tmp_path):
    profile = slurm_cluster.profile(gpus_per_node=1)
    executor = ex.make_executor(profile, tmp_path / "submitit")
    job = executor.submit(visible_gpus)
    assert job.result() == "0"


@pytest.mark.slurm
def test_stop_and_restart(slurm_cluster):
    """Last: stop exactly what start started, then start again (skipped if others use it)."""
    if not slurm_cluster.started_here or slurm_cluster.other_sessions():
        pytest.skip("the cluster was not started by this session, or others use it")
    if subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip():
        pytest.skip("jobs are queued or running on the cluster: not stopping it under them")
    pids = [ln.split() for ln in (SLURM_STATE / "pids").read_text().splitlines()]
    stop, start, seconds = slurm_cluster.restart()
    assert stop.returncode == 0, stop.stderr
    for name, pid in pids:
        status = Path(f"/proc/{pid}/status")
        assert not status.exists() or "\tZ" in status.read_text(), f"{name} {pid} still runs"
    TIMINGS["cluster restart, packages present"] = seconds
    assert start.returncode == 0, start.stderr
    assert "idle" in start.stdout
    assert subprocess.run(["sinfo"], capture_output=True).returncode == 0


def test_report_timings():
    """Prints what the tests above measured (pytest -s or -rA shows it)."""
    for what, seconds in TIMINGS.items():
        print(f"{what}: {seconds:.1f} s")
