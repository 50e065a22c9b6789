"""What one submitted point runs: train the run (resuming exactly), then every eval point.

Evaluation runs in the same job, right after training, rather than as dependent jobs: the
trained weights are already on the node, a point is one job id to watch and to requeue, and a
requeued job skips what is done (training resumes from its checkpoint, or is skipped when the
final checkpoint exists; eval points whose json exists are skipped; a job that finds its run
completed with nothing left, as when SLURM requeues a job for a node lost while the job was
ending, writes nothing and counts no attempt). Eval points added later by another grid make
the run incomplete again, and the next `cfh sweep` submits it to finish them.

status.json fields written here (merged with the trainer's): state (running, completed, failed,
interrupted; requeued is PointJob's), phase (train, eval, done), attempts (one per job start,
requeues included), job_id, log (the run's log.txt: training, sampling and evaluation lines,
and a failure's traceback), job_log (the job's stderr file, when submitit runs it), error
(first line of the exception, or what stopped it), evals ({eval key: {"file", "fid",
"s_eval"}}). In a multi-task job every rank trains (DDP) and draws its share of each eval
point's samples; rank 0 holds the run lock, writes status, gathers the samples and scores them.
The first rank to fail writes the error (`rank R/W: Type: message`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.config import RunConfig, validate_config
from core.io import now_iso, read_status, record_failure, run_lock, update_status
from core.progress import run_log
from harness.config.compose import parse_override, set_key, stored_config
from harness.config.search import group_options
from harness.launch.runs import read_point
from model.training.distributed import RankPresence, barrier, dist_info, init_distributed

log = logging.getLogger("cfh.jobs")

TrainFn = Callable[[RunConfig], Any]
EvalFn = Callable[[RunConfig], dict]


def job_env() -> tuple[str | None, str | None]:
    """(job id, stderr log path) of the job running this process, if any.

    submitit jobs (local or SLURM) tell their own id ("123_4" for a SLURM array task) and log.
    """
    try:
        import submitit

        env = submitit.JobEnvironment()
        return str(env.job_id), str(env.paths.stderr)
    except (RuntimeError, ImportError, KeyError):
        return os.environ.get("SLURM_JOB_ID"), None


def load_run_config(rdir: Path) -> RunConfig:
    """The run folder's config.yaml, run_dir pointed at this folder, validated and typed.

    Keys added to cfh after the folder was written get their defaults (a new key's default
    keeps the behaviour from before it existed).
    """
    cfg = stored_config(rdir)
    cfg["run_dir"] = str(rdir)
    return validate_config(cfg, group_options("cluster"))


def with_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """A copy of cfg with an eval point's sample.*/eval.* `key=value` overrides applied (they
    were checked when the grid was expanded; their Specs are checked again here)."""
    out = cfg.to_dict()
    for text in overrides:
        key, value = parse_override(text)
        set_key(out, key, value)
    return validate_config(out)


def _final_checkpoint_exists(rdir: Path, steps: int) -> bool:
    """The final checkpoint is there and passes its checksum (else training redoes it)."""
    from model.training.checkpoint import checkpoint_path, damage

    return damage(checkpoint_path(rdir, steps)) is None


def run_point(run_dir: str, train_fn: TrainFn | None = None, eval_fn: EvalFn | None = None) -> dict:
    """Train the run in run_dir (resume-exact), evaluate its missing eval points; return a summary.

    `train_fn` / `eval_fn` default to model.train.train and model.inference.evaluate_run; tests
    inject others. Rank 0 holds the run lock (core.io.run_lock) from before its first write: a
    job or `cfh train` already on this run refuses it at once, and its status.json is left to
    the holder. A stop (SystemExit from the trainer's signal hand-over, KeyboardInterrupt)
    marks the run interrupted and passes through so that submitit can requeue (PointJob then
    says requeued); any other exception marks the run failed.
    """
    from harness.launch.executors import export_distributed_env

    export_distributed_env()
    job_id, _ = job_env()
    what = f"cfh job {job_id}" if job_id else "cfh job"
    with run_lock(run_dir, what, enabled=dist_info().is_main), contextlib.ExitStack() as stack:
        return _run_point(Path(run_dir), train_fn, eval_fn, stack)


def job_nodes(environ: Any = None) -> dict[str, Any]:
    """The job's nodes for status.json: {"nodes": [names], "num_nodes": n} from
    SLURM_JOB_NODELIST ({} outside SLURM)."""
    from harness.launch.executors import expand_nodelist

    env = os.environ if environ is None else environ
    names = expand_nodelist(env.get("SLURM_JOB_NODELIST", ""))
    return {"nodes": names, "num_nodes": len(names)} if names else {}


def _run_point(
    rdir: Path, train_fn: TrainFn | None, eval_fn: EvalFn | None, stack: contextlib.ExitStack
) -> dict:
    """run_point's work, under the run lock; `stack` holds this rank's RankPresence."""
    info = dist_info()
    main = info.is_main
    job_id, job_log = job_env()
    log_path = str(rdir.absolute() / "log.txt")  # what the trainer and evaluation write
    finished = _nothing_left(rdir)
    if finished is not None:  # every rank reads the same files, unwritten: all leave together
        print(
            f"[cfh] {rdir.name} is completed with nothing left to do; left as it is",
            file=sys.stderr,
            flush=True,
        )
        evals, attempts = finished.get("evals"), finished.get("attempts")
        return {"run_dir": str(rdir), "evals": evals, "attempts": attempts}
    if main:
        old = read_status(rdir)
        update_status(
            rdir,
            state="running",
            phase="train",
            attempts=int(old.get("attempts", 0)) + 1,
            job_id=job_id,
            log=log_path,
            job_log=job_log,
            error=None,
            # a retry after failed/cancelled starts the clock again; a requeue does not
            started=old.get("started")
            if old.get("state") in ("running", "requeued")
            else now_iso(),
            **job_nodes(),  # this attempt's nodes (a requeue may land on others)
        )
    phase = "train"
    presence = RankPresence(rdir, info)  # entered once the process group is up
    try:
        run = load_run_config(rdir)
        init_distributed(float(run.train.dist_timeout_s))
        stack.enter_context(presence)
        barrier(info)  # no rank starts (or fails) before rank 0 has reset the status
        if run.bench.enabled:  # a bench point measures instead of training
            from harness.bench.command import run_bench_point

            phase = "bench"
            return run_bench_point(rdir, run, main, threads=slurm_cpus())
        steps = int(run.train.steps)
        # Every rank sees the same checkpoint folder, so all ranks skip (or train) together.
        if not _final_checkpoint_exists(rdir, steps):
            (train_fn or _default_train)(run)
        phase = "eval"
        if main:
            update_status(rdir, state="running", phase="eval", step=steps, total_steps=steps)
        done = evaluate_points(rdir, run, eval_fn or _default_eval, main)
        if not main:
            return {"run_dir": str(rdir), "rank": info.rank, "evals": len(done)}
    except Exception as e:
        lost = presence.lost(e)  # a rank that died without a word: named as the cause
        record_failure(rdir, e, info.rank, info.world, lost, phase=phase, log=log_path)
        traceback.print_exc(file=sys.stderr)
        with run_log(log_path, enabled=main):  # the traceback beside the lines that led to it
            log.error("failed in phase %s", phase, exc_info=True)
        raise
    except (KeyboardInterrupt, SystemExit) as e:
        if main and read_status(rdir).get("state") != "interrupted":  # the trainer said it first
            why = f"stopped in phase {phase} ({type(e).__name__})"
            update_status(rdir, state="interrupted", phase=phase, error=why)
        raise
    status = update_status(rdir, state="completed", phase="done", error=None)
    return {"run_dir": str(rdir), "evals": done, "attempts": status.get("attempts")}


def evaluate_points(rdir: Path, cfg: RunConfig, eval_fn: EvalFn, main: bool = True) -> dict:
    """Evaluate every eval point of point.json not yet done; record each in status.json.

    Every rank calls eval_fn (each draws its share of the samples, with no collective, so a
    rank never waits on rank 0's scoring); only rank 0 (`main`) records the results.
    """
    point = read_point(rdir)  # re-read: a sweep may have added eval points while we trained
    evals = read_status(rdir).get("evals")
    evals = dict(evals) if isinstance(evals, dict) else {}
    steps = int(cfg.train.steps)
    for e in point.get("evals", []):
        key = e.get("key")
        if _eval_done(rdir, evals.get(key), steps):
            continue  # done in an earlier attempt (at this final checkpoint; --extend redoes)
        _leave_if_preempted()
        record = eval_fn(with_overrides(cfg, list(e.get("overrides", []))))
        if not main:
            continue
        metrics = record.get("metrics", {})
        path = Path(record.get("path", ""))
        evals[key] = {
            "file": str(path.relative_to(rdir)) if path.is_relative_to(rdir) else str(path),
            "fid": metrics.get("fid"),
            "s_eval": record.get("settings", {}).get("s_eval"),
            "ckpt_step": record.get("ckpt_step"),
            "created": record.get("created"),
        }
        update_status(rdir, evals=evals)
    return evals


def _eval_done(rdir: Path, rec: Any, steps: int) -> bool:
    """An eval point's status record whose file exists, made at the final checkpoint."""
    if not isinstance(rec, dict) or not (rdir / str(rec.get("file", ""))).is_file():
        return False
    return rec.get("ckpt_step", steps) == steps


def _nothing_left(rdir: Path) -> dict | None:
    """status.json of a completed run whose final checkpoint and eval points are all there;
    None where the job has work (or where the folder is not readable: the job then says why).

    SLURM requeues a job whose node fails while it is still ending (the run written, the
    process not yet gone): the second start must not count an attempt or restart the clock.
    """
    try:
        status = read_status(rdir)
        if status.get("state") != "completed":
            return None
        run = load_run_config(rdir)
        steps = int(run.train.steps)
        if run.bench.enabled or not _final_checkpoint_exists(rdir, steps):
            return None
        evals = status.get("evals") if isinstance(status.get("evals"), dict) else {}
        points = read_point(rdir).get("evals", [])
    except Exception:  # noqa: BLE001 - the full path below meets the same fault and records it
        return None
    return status if all(_eval_done(rdir, evals.get(e.get("key")), steps) for e in points) else None


def _leave_if_preempted() -> None:
    """Between eval points: on a preemption warning, leave so that PointJob requeues the job."""
    from harness.launch.point_job import preemption_requested

    if preemption_requested():
        raise SystemExit(124)  # not an Exception: the run is not marked failed


def _default_train(cfg: RunConfig) -> Any:
    from model.training.trainer import train

    return train(cfg, **trainer_hooks())


def slurm_cpus(environ: Any = None) -> int | None:
    """The CPUs SLURM allotted to this rank (SLURM_CPUS_PER_TASK); None outside SLURM.

    Under torchrun started by srun (one task per node, TORCHELASTIC_RUN_ID set) the task's CPUs
    are shared by its LOCAL_WORLD_SIZE workers: each gets its share (at least 1), not all of
    them (4 ranks of 2 threads each on 2 cores ran 15x slower than 4 of 1, measured).
    """
    env = os.environ if environ is None else environ
    value = env.get("SLURM_CPUS_PER_TASK")
    if not value:
        return None
    cpus = int(value)
    if env.get("TORCHELASTIC_RUN_ID"):
        cpus = max(1, cpus // max(1, int(env.get("LOCAL_WORLD_SIZE") or 1)))
    return cpus


def trainer_hooks() -> dict[str, Any]:
    """What the harness tells the trainer (model/ knows nothing of SLURM or requeues): one CPU
    thread per allotted CPU (SLURM packs array tasks side by side). A signal leaves the run
    interrupted (the trainer says so); `requeued` is written by PointJob when it requeues the
    job (harness.launch.point_job), the one place that knows a requeue will happen."""
    return {"num_threads": slurm_cpus()}


def _default_eval(cfg: RunConfig) -> dict:
    from model.tasks.evaluate import evaluate_run

    return evaluate_run(cfg)


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.launch.jobs RUN_DIR`: run one point in this process (debugging)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m harness.launch.jobs RUN_DIR", file=sys.stderr)
        return 2
    run_point(args[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
