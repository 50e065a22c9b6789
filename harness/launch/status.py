"""Run states from run folders + the scheduler (squeue/sacct, or local process ids); the table.

A point's state combines three sources, none of which is trusted alone:
  status.json      written by the job (jobs.py, the trainer): what the run last said it did
  submission.json  written by the sweep: which job was last submitted for it, and cancels
  the scheduler    whether that job is pending, running or gone (and how it ended)
If the last submitted job has not started yet (status.json names another job id), the
scheduler decides (pending); once it has, status.json decides, corrected by the scheduler when
the job died without writing (killed, out of memory, node failure: failed; scancel: cancelled).
A running status.json that no scheduler can confirm (a plain `cfh train`, a job sacct forgot)
whose run lock (core.io.run_lock) no process holds is failed: "process gone", with the run's
last log line. `interrupted` (SIGINT, or a signal where nothing requeues) is shown as is and,
like failed and cancelled, resubmitted by `cfh sweep --retry`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.runfolder import ROW_STATES, compact_hosts, last_log_line, read_run_folder
from harness.launch.runs import read_submission, run_dir

STATES = ROW_STATES  # a row's states, in the order the summary line counts them
FAILING = ("failed", "damaged")
ACTIVE = ("pending", "running", "requeued")
WAITING = ("pending", "requeued")  # job states (launch.executors.job_states) of a queued job
RETRYABLE = ("failed", "interrupted", "cancelled", "damaged")  # what `cfh sweep --retry` resubmits


@dataclass
class Row:
    """One point of a grid as `cfh status` shows it."""

    signature: str
    axes: dict[str, Any]
    state: str
    job_id: str | None = None
    attempts: int | None = None
    step: int | None = None
    total_steps: int | None = None
    loss: float | None = None
    fid: float | None = None
    evals_done: int = 0
    evals_total: int = 0
    elapsed_s: float | None = None
    error: str | None = None
    log: str | None = None
    phase: str | None = None
    fids: dict[str, float] = field(default_factory=dict)  # eval label (fid@S4, ...) -> FID
    extra: dict[str, Any] = field(default_factory=dict)
    nodes: list[str] = field(default_factory=list)  # the last attempt's SLURM nodes
    waiting: str | None = None  # why the scheduler keeps it pending, beyond its turn


# ---------------------------------------------------------------- the scheduler


def scheduler_states(jobs: Sequence[tuple[str, str, str | None]]) -> dict[str, str]:
    """{job id: job state} for (job id, backend, submitit folder) triples, one query per kind.

    Job states are harness.launch.executors.job_states' words: pending, running, completed, failed,
    cancelled, requeued, unknown.
    """
    from harness.launch.executors import job_states

    groups: dict[tuple[str, str | None], list[str]] = {}
    for job_id, backend, folder in jobs:
        groups.setdefault((backend, folder), []).append(str(job_id))
    out: dict[str, str] = {}
    for (backend, folder), ids in groups.items():
        out.update(job_states(ids, backend, folder=Path(folder) if folder else None))
    return out


# ---------------------------------------------------------------- one point


def derive_state(
    status: dict, submission: dict, sched: str | None, eval_keys: Sequence[str]
) -> str:
    """The point's state from its status.json, submission.json and job state."""
    evals = status.get("evals") if isinstance(status.get("evals"), dict) else {}
    done = all(k in evals for k in eval_keys)
    if status.get("state") == "completed" and status.get("phase") == "done" and done:
        return "completed"
    if not status and not submission:
        return "missing"
    if submission.get("cancelled"):
        return "cancelled"
    sub_id = submission.get("job_id")
    started = sub_id is not None and str(status.get("job_id")) == str(sub_id)
    if sub_id is not None and not started:  # the last submitted job has not written yet
        if sched in WAITING:
            return "pending"
        if sched in ("running", "cancelled", "failed"):
            return sched
        if sched == "completed":  # ended without running the point: treat as failed
            return "failed"
        return "missing" if not status else _by_status(status, None)
    return _by_status(status, sched)


def _by_status(status: dict, sched: str | None) -> str:
    state = status.get("state")
    if state in ("running", "requeued"):
        if sched == "running":
            return "running"
        if sched in WAITING:
            return "requeued"
        if sched == "cancelled":
            return "cancelled"
        if sched in (None, "unknown"):  # unknown to the scheduler (too old for sacct)
            return state
        return "failed"  # the job ended (completed, failed, killed) in the middle of the run
    if state == "interrupted" and sched in WAITING:  # a stop SLURM requeued (scontrol requeue)
        return "requeued"
    if state == "interrupted" and sched == "running":  # requeued, started, not written yet
        return "running"
    if state == "completed":  # trained, but eval points are missing (a grid added some)
        return "pending"
    if state in STATES:
        return state
    return "missing"


def eval_label(s_eval: Any, values: dict | None = None) -> str:
    """An FID column's name: fid@S<S_eval>, plus the eval axes other than S_eval (cfg=1.5)."""
    label = f"fid@S{s_eval}" if s_eval is not None else "fid"
    others = [
        f"{short_key(k)}={_fmt(v)}" for k, v in (values or {}).items() if k != "sample.ar_steps"
    ]
    return ",".join([label, *others])


def row_for(
    sig: str,
    axes: dict,
    eval_keys: Sequence[str],
    root: str | os.PathLike,
    sched: dict,
    eval_values: dict[str, dict] | None = None,
) -> Row:
    """The status row of one point (state, phase, progress, FID per eval setting, elapsed).

    `eval_values`: {eval key: the eval axis values of that point}, which label its FID.
    """
    rdir = run_dir(root, sig)
    folder = read_run_folder(rdir, full=False)
    status = folder.status
    sub = read_submission(rdir)
    job_id = sub.get("job_id") or status.get("job_id")
    if folder.status_damaged:
        return Row(
            signature=sig,
            axes=axes,
            state="damaged",
            job_id=str(job_id) if job_id else None,
            evals_total=len(eval_keys),
            error=folder.problems[0],
            log=str(rdir / "status.json"),
        )
    job_state = sched.get(str(job_id)) if job_id else None
    state = derive_state(status, sub, job_state, eval_keys)
    if state == "running" and folder.gone and job_state in (None, "unknown"):
        state = "failed"  # no scheduler to ask (a plain process, or a job sacct forgot)
    # Trained by the last job, which ended before eval points that a grid added since: the
    # point is pending and nothing will run it unless the sweep submits it again.
    last_job_wrote = sub.get("job_id") is None or str(status.get("job_id")) == str(sub["job_id"])
    evals_missing = state == "pending" and status.get("state") == "completed" and last_job_wrote
    done = folder.eval_entries(eval_keys)
    mine = list(done.values())
    scored = [r for r in mine if r.get("fid") is not None]  # caption evals have no FID
    fids = {
        eval_label(rec.get("s_eval"), (eval_values or {}).get(k)): rec["fid"]
        for k, rec in done.items()
        if rec.get("fid") is not None
    }
    latest = max(scored, key=lambda r: str(r.get("created") or ""), default={})
    said = folder.progress()
    error, log = said["error"], said["log"]
    if state == "failed" and status.get("state") == "running":  # it died without saying why
        ended = f"job {job_id} ended ({job_state or 'unknown'}) without finishing"
        error = folder.gone or _with_last_line(ended, rdir)
    elif state == "failed" and not error:
        error = f"job {job_id} ended ({job_state or 'unknown'}) without finishing"
    return Row(
        signature=sig,
        axes=axes,
        state=state,
        job_id=str(job_id) if job_id else None,
        attempts=said["attempts"],
        step=said["step"],
        total_steps=said["total_steps"],
        loss=said["loss"],
        fid=latest.get("fid"),
        evals_done=len(mine),
        evals_total=len(eval_keys),
        elapsed_s=_elapsed(status, state),
        error=error if state == "failed" else None,
        log=log if state == "failed" else None,
        phase=said["phase"],
        fids=fids,
        extra={"evals_missing": evals_missing},
        nodes=_nodes(status),
    )


def _nodes(status: dict) -> list[str]:
    nodes = status.get("nodes")
    return [str(n) for n in nodes] if isinstance(nodes, list) else []


def _with_last_line(text: str, rdir: Path) -> str:
    last = last_log_line(rdir)
    return f"{text}; last log line: {last}" if last else text


def _parse_time(text: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(text))
    except ValueError:
        return None


def _elapsed(status: dict, state: str) -> float | None:
    start = _parse_time(status.get("started"))
    if start is None:
        return None
    end = dt.datetime.now(dt.UTC) if state in ACTIVE else _parse_time(status.get("updated"))
    return (end - start).total_seconds() if end else None


def collect(root: str | os.PathLike, plan: dict) -> list[Row]:
    """Rows for every point of a plan (plan.json's layout), the scheduler queried once."""
    points = plan.get("points", [])
    jobs = []
    for p in points:
        sub = read_submission(run_dir(root, p["signature"]))
        if sub.get("job_id") and not sub.get("cancelled"):
            jobs.append((str(sub["job_id"]), sub.get("backend", "local"), sub.get("folder")))
    sched = scheduler_states(jobs) if jobs else {}
    rows = [
        row_for(
            p["signature"],
            p.get("axes", {}),
            [e["key"] for e in p.get("evals", [])],
            root,
            sched,
            {e["key"]: e.get("values", {}) for e in p.get("evals", [])},
        )
        for p in points
    ]
    waiting = [j for j, backend, _ in jobs if backend == "slurm" and sched.get(j) in WAITING]
    if waiting:  # why SLURM holds them (a node down, a limit), asked only when some wait
        from harness.launch.executors import pending_reasons

        reasons = pending_reasons(waiting)
        for r in rows:
            if r.state in WAITING and r.job_id in reasons:
                r.waiting = reasons[r.job_id]
    return rows


# ---------------------------------------------------------------- the table


def _fmt(value: Any, kind: str = "") -> str:
    if value is None:
        return "-"
    if kind == "loss":
        return f"{value:.4f}"
    if kind == "fid":
        return f"{value:.2f}"
    if kind == "time":
        s = int(value)
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def short_key(key: str) -> str:
    """Column name for an axis key: train.ar.steps -> ar.steps, sample.ar_steps -> ar_steps."""
    for prefix in ("train.", "sample.", "cluster."):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def fid_columns(rows: Sequence[Row]) -> list[str]:
    """The FID column names of a table: every eval label of the rows, in S_eval order."""
    labels = {label for r in rows for label in r.fids}

    def order(label: str) -> tuple[int, str]:
        head = label.split(",")[0].removeprefix("fid@S")
        return (int(head) if head.isdigit() else -1, label)

    return sorted(labels, key=order) or ["fid"]


def render(rows: Sequence[Row], axis_keys: Sequence[str]) -> str:
    """A plain-text table, one row per point; failed rows get their error and log below.

    One FID column per eval setting the points have records of (fid@S1, fid@S4, ...). Where a
    point's job recorded its SLURM nodes: `nodes` (how many) and `hosts` (SLURM's compact
    list). A point SLURM keeps pending for a reason beyond its turn gets that reason below.
    """
    fid_cols = fid_columns(rows)
    with_nodes = any(r.nodes for r in rows)
    header = ["signature", *map(short_key, axis_keys), "state", "phase", "job", "att", "step"]
    header += ["loss", *fid_cols, "evals", "elapsed"]
    header += ["nodes", "hosts"] if with_nodes else []
    lines: list[list[str]] = []
    notes: dict[int, str] = {}
    for r in rows:
        step = f"{_fmt(r.step)}/{_fmt(r.total_steps)}" if r.total_steps else _fmt(r.step)
        cells = [r.signature, *(_fmt(r.axes.get(k)) for k in axis_keys), r.state, _fmt(r.phase)]
        cells += [_fmt(r.job_id), _fmt(r.attempts), step, _fmt(r.loss, "loss")]
        cells += [_fmt(r.fids.get(c), "fid") for c in fid_cols]
        cells += [f"{r.evals_done}/{r.evals_total}", _fmt(r.elapsed_s, "time")]
        if with_nodes:
            cells += [str(len(r.nodes)) if r.nodes else "-", compact_hosts(r.nodes) or "-"]
        if r.state == "failed":
            notes[len(lines)] = f"  ^ {r.error or 'failed'} (log: {r.log or '-'})"
        elif r.state == "damaged":
            notes[len(lines)] = f"  ^ {r.error}"
        elif r.waiting:
            notes[len(lines)] = f"  ^ {r.state}: {r.waiting}"
        lines.append(cells)
    widths = [
        max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(header)
    ]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for i, cells in enumerate(lines):
        out.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
        if i in notes:
            out.append(notes[i])
    return "\n".join(out)


def summary(rows: Sequence[Row]) -> str:
    """`3 completed, 1 failed` in STATES order."""
    counts = {s: sum(r.state == s for r in rows) for s in STATES}
    return ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no points"


# ---------------------------------------------------------------- progress while waiting


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def train_rate(
    rdir: str | os.PathLike, window: int = 20, tail_bytes: int = 1 << 16
) -> float | None:
    """Training steps per second from the last metrics.jsonl rows of the current attempt.

    Rows of one process have growing wall_s; a resume starts wall_s again, so the rate uses only
    the rows after the last restart (at most `window` of them). None with fewer than two rows.
    """
    path = Path(rdir) / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - tail_bytes))
            lines = f.read().splitlines()
    except OSError:
        return None
    if size > tail_bytes:
        lines = lines[1:]  # the first line of the tail may be cut
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and _number(row.get("step")) and _number(row.get("wall_s")):
            rows.append(row)
    if not rows:
        return None
    run = [rows[-1]]
    for row in reversed(rows[:-1]):
        if row["wall_s"] >= run[0]["wall_s"] or row["step"] >= run[0]["step"] or len(run) > window:
            break
        run.insert(0, row)
    seconds = run[-1]["wall_s"] - run[0]["wall_s"]
    steps = run[-1]["step"] - run[0]["step"]
    return steps / seconds if seconds > 0 and steps > 0 else None


def progress_lines(rows: Sequence[Row], rates: dict[str, float | None]) -> list[str]:
    """One aligned line per active point: signature, state, phase, step/total, rate, ETA.

    `rates`: training steps per second by signature (train_rate, or None when unknown). In the
    eval phase the line shows the eval points done instead of a training ETA.
    """
    from tqdm import tqdm

    table = []
    for r in rows:
        if r.state not in ACTIVE:
            continue
        step = f"{_fmt(r.step)}/{_fmt(r.total_steps)}" if r.total_steps else _fmt(r.step)
        rate = rates.get(r.signature)
        if r.phase == "eval":
            eta = f"evals {r.evals_done}/{r.evals_total}"
        elif rate and r.total_steps and r.step is not None and r.state == "running":
            left = max(r.total_steps - r.step, 0) / rate
            eta = f"{rate:.3g} step/s, ETA {tqdm.format_interval(left)}"
        else:
            eta = "ETA -"
        table.append([r.signature, r.state, _fmt(r.phase), f"step {step}", eta])
    if not table:
        return []
    widths = [max(len(c[i]) for c in table) for i in range(len(table[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
            for cells in table]  # fmt: skip
