"""Submitting a grid's points and following them: job arrays, their resources, waiting, cancel.

One job array per resource shape (at most MAX_ARRAY_SIZE points each) through
harness.launch.executors
(submitit); each run's submission.json records its job. Job pickles and logs live in
`<root>/submitit/`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.config.cluster import MAX_ARRAY_SIZE, validate_profile
from core.io import now_iso
from harness.grid.expansion import Grid
from harness.grid.points import TrainPoint, points_text
from harness.launch import runs
from harness.launch.status import Row, progress_lines, row_for, train_rate


def submitit_folder(root: str) -> Path:
    """`<root>/submitit`: job pickles and logs; local runs share its parallelism slots."""
    return (Path(root) / "submitit").absolute()


def submit(points: Sequence[TrainPoint], grid: Grid, root: str) -> list[tuple[TrainPoint, Any]]:
    """Submit the points, one job array per resource shape; record each job in submission.json."""
    from harness.launch.executors import (  # here: submitit is slow to import
        make_executor,
        submit_array,
    )
    from harness.launch.point_job import PointJob

    by_shape: dict[str, list[TrainPoint]] = {}
    for p in points:
        by_shape.setdefault(p.shape, []).append(p)
    folder = submitit_folder(root)
    out = []
    for shape_points in by_shape.values():
        cluster = shape_points[0].config["cluster"]
        executor = make_executor(cluster, folder, job_name=f"cfh-{grid.name}")
        dirs = [str(runs.run_dir(root, p.signature).absolute()) for p in shape_points]
        jobs = submit_array(executor, PointJob.for_profile(cluster), dirs)
        for p, job in zip(shape_points, jobs, strict=True):
            runs.write_submission(
                runs.run_dir(root, p.signature),
                job_id=str(job.job_id),
                backend=cluster["backend"],
                folder=str(folder),
                submitted=now_iso(),
                grid=grid.name,
                cancelled=False,
            )
            out.append((p, job))
    return out


def print_progress(root: str, rows: Sequence[Row]) -> None:
    """`HH:MM:SS` and one line per active point (state, phase, step/total, ETA)."""
    rates = {r.signature: train_rate(runs.run_dir(root, r.signature)) for r in rows}
    lines = progress_lines(rows, rates)
    if lines:
        print(f"{time.strftime('%H:%M:%S')} {len(lines)} active:", flush=True)
        print("\n".join(f"  {line}" for line in lines), flush=True)


def wait_local(root: str, submitted: Sequence[tuple[TrainPoint, Any]], every: float = 60) -> None:
    """Block until the local jobs end, printing one line per finished point and, every `every`
    seconds, one line per running point."""
    pending = list(submitted)
    total = len(pending)
    last = time.monotonic()
    while pending:
        time.sleep(0.5)
        if time.monotonic() - last >= every:
            last = time.monotonic()
            rows = [row_for(p.signature, p.axes, [e.key for e in p.evals], root, {})
                    for p, _ in pending]  # fmt: skip
            print_progress(root, rows)
        for item in [x for x in pending if x[1].done()]:
            pending.remove(item)
            p = item[0]
            row = row_for(p.signature, p.axes, [e.key for e in p.evals], root, {})
            fid = f", fid {row.fid:.2f}" if row.fid is not None else ""
            n = total - len(pending)
            print(f"[{n}/{total}] {p.signature} {row.state}{fid}", flush=True)


def cancel_points(root: str, sigs: Sequence[str]) -> list[str]:
    """Cancel the points' jobs and mark them cancelled; returns the job ids cancelled."""
    from harness.launch.executors import cancel

    groups: dict[tuple[str, str | None], list[str]] = {}
    for sig in sigs:
        rdir = runs.run_dir(root, sig)
        sub = runs.read_submission(rdir)
        if sub.get("job_id"):
            key = (sub.get("backend", "local"), sub.get("folder"))
            groups.setdefault(key, []).append(str(sub["job_id"]))
        runs.write_submission(rdir, cancelled=True)
    for (backend, folder), ids in groups.items():
        cancel(ids, backend, folder=Path(folder) if folder else None)
    return [j for ids in groups.values() for j in ids]


def arrays(points: Sequence[TrainPoint]) -> list[list[TrainPoint]]:
    """The job arrays submit() makes: one per resource shape, at most MAX_ARRAY_SIZE points."""
    by_shape: dict[str, list[TrainPoint]] = {}
    for p in points:
        by_shape.setdefault(p.shape, []).append(p)
    return [
        group[i : i + MAX_ARRAY_SIZE]
        for group in by_shape.values()
        for i in range(0, len(group), MAX_ARRAY_SIZE)
    ]


def resources_text(grid: Grid, points: Sequence[TrainPoint], root: str) -> str:
    """Each array's resources; for SLURM profiles the #SBATCH options submitit would write."""
    lines = []
    groups = arrays(points)
    for i, group in enumerate(groups):
        p = validate_profile(group[0].config["cluster"])
        tasks = p.tasks_per_node
        mem = f"{p.mem_gb:g} GB" if p.mem_gb is not None else "default"
        head = (
            f"array {i + 1}/{len(groups)}: {points_text(len(group))}, cluster {p.name} "
            f"({p.backend}): "
            f"nodes {p.nodes}, tasks/node {tasks}, gpus/node {p.gpus_per_node}, cpus/task "
            f"{p.cpus_per_task}, mem {mem}, time {p.timeout_min:g} min"
        )
        if p.backend == "local":
            lines.append(f"{head}, {p.parallelism} at a time")
            continue
        lines.append(f"{head}, partition {p.partition or 'default'}")
        from harness.launch.executors import sbatch_options  # submitit's own sbatch script builder

        opts = sbatch_options(p, submitit_folder(root), f"cfh-{grid.name}", len(group))
        lines += [f"  #SBATCH {o}" for o in opts]
        lines += [f"  setup: {line}" for line in p.setup]
    return "\n".join(lines)


def compress_ids(ids: Sequence[str]) -> str:
    """Job ids as `123_[0,1,2] 456` (array tasks grouped under their array's id)."""
    arrays: dict[str, list[str]] = {}
    for j in ids:
        head, _, task = j.partition("_")
        arrays.setdefault(head, []).append(task)
    parts = [f"{h}_[{','.join(t)}]" if any(t) else h for h, t in arrays.items()]
    return " ".join(parts)
