"""One run folder or one bench file -> results row dicts (before typing and derived columns).

A run folder is read by core.runfolder (the reader `cfh status` shares); this module only turns
what it found into rows: one per usable eval record, or one row carrying the run's state when
it has none. Damaged files become a `problems` note on the run's rows, never an exception.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from core.keys import flatten, unused_keys
from core.runfolder import compact_hosts, read_json, read_run_folder
from reports.columns import CONFIG_COLUMNS, EVAL_COLUMNS, METRIC_COLUMNS

BOOTSTRAP = "_bootstrap"  # the row key that carries a record's replicates to Results.replicates
_POINT_SKIP = {"signature", "sig", "grid", "eval", "eval_axes", "eval_points", "run_dir", "created"}


def point_axes(point: dict) -> dict:
    """The train-axis values ({dotted key: value}) of a plan entry or point.json."""
    for key in ("axes", "values", "train_axes", "train", "overrides"):
        value = point.get(key)
        if isinstance(value, dict):
            return flatten(value)
        if isinstance(value, list) and all(isinstance(v, str) and "=" in v for v in value):
            return dict(v.split("=", 1) for v in value)
    return {k: v for k, v in flatten(point).items() if k.split(".")[0] not in _POINT_SKIP}


def read_run(
    run_dir: Path, planned_axes: dict | None = None, eval_keys: set[str] | None = None
) -> tuple[list[dict], list[dict]]:
    """One run folder -> (result rows, training-curve records); never raises on bad files.

    With `eval_keys` (a grid's eval points), only the eval files that status.json's "evals"
    map those keys to are read; without that map every eval file is.
    """
    sig = run_dir.name
    base: dict[str, Any] = {"kind": "train", "signature": sig, "run_dir": str(run_dir)}
    folder = read_run_folder(run_dir, eval_keys)
    if not folder.exists:
        axes = {**(planned_axes or {})}
        return [{**base, **axis_columns(axes, {}), "state": "missing", "problems": ""}], []
    said = folder.progress()
    point = folder.point
    axes = {**(planned_axes or {}), **(point_axes(point) if point is not None else {})}
    state = "damaged" if folder.status_damaged or folder.edited else said["state"]
    if not (isinstance(state, str) and state):
        state = "pending" if folder.not_started else "unknown"
    if state == "running" and folder.gone:  # as `cfh status` shows it: its process died
        state, said["error"] = "failed", folder.gone
    base.update(
        state=state,
        phase=said["phase"],
        progress_step=said["step"],
        total_steps=said["total_steps"],
        attempts=said["attempts"],
        job_id=said["job_id"],
        error=_first_line(said["error"]),
        log=said["log"],
        **axis_columns(axes, folder.config),
        **provenance_columns(folder.status),
        started=said["started"],
        updated=said["updated"],
    )
    curve = [{"signature": sig, **r} for r in folder.metrics]
    rows = [  # an edited config.yaml: what the records measured is not known, so none is read
        {**base, **eval_columns(record), "eval_file": path.name, BOOTSTRAP: _bootstrap(record)}
        for path, record in ([] if folder.edited else folder.records)
    ]
    note = "; ".join(folder.problems)
    return [{**r, "problems": note} for r in rows or [base]], curve


def provenance_columns(status: dict) -> dict:
    """code_commit, cfh_version and machine_* from status.json (absent in runs before them);
    num_nodes and nodes (SLURM's compact list) where the run's job recorded its SLURM nodes."""
    code = status.get("code") if isinstance(status.get("code"), dict) else {}
    machine = status.get("machine") if isinstance(status.get("machine"), dict) else {}
    out = {"code_commit": code.get("commit"), "cfh_version": code.get("cfh")}
    out.update({f"machine_{k}": v for k, v in machine.items() if _scalar(v)})
    nodes = status.get("nodes")
    if isinstance(nodes, list) and nodes:
        out.update(num_nodes=len(nodes), nodes=compact_hosts([str(n) for n in nodes]))
    return out


def read_bench(path: Path) -> list[dict]:
    """A bench JSON file -> result rows with kind="bench" (one row noting corruption if bad)."""
    data, bad = read_json(path)
    base = {"kind": "bench", "signature": path.stem, "run_dir": str(path), "state": "completed"}
    rows = data.get("rows") if isinstance(data, dict) else None
    if bad or not isinstance(rows, list):
        return [{**base, "state": "corrupt", "problems": bad or f"no rows list in {path.name}"}]
    machine = data.get("machine") if isinstance(data.get("machine"), dict) else {}
    extra = {f"machine_{k}": v for k, v in machine.items() if _scalar(v)}
    extra.update(created=data.get("created"), grid=data.get("grid"))
    out = [
        {
            **base,
            **extra,
            **{k: v for k, v in r.items() if _scalar(v)},
            "state": "failed" if r.get("error") else "completed",  # a measurement that raised
            "problems": "",
        }
        for r in rows
        if isinstance(r, dict)
    ]
    return out or [{**base, "state": "corrupt", "problems": f"no usable rows in {path.name}"}]


def bench_grid(path: Path) -> Any:
    """The grid a root-level bench file is tagged with (None when untagged or unreadable)."""
    data, _ = read_json(path)
    return data.get("grid") if isinstance(data, dict) else None


def axis_columns(axes: dict, cfg: dict) -> dict:
    """Config-derived axis columns, plus any other grid axis under its dotted key; a key the run
    did not use (core.keys.CONDITIONAL_KEYS: ar_decay of a fixed-S run) is left empty."""
    flat = flatten(cfg)
    out = {col: flat.get(key) for col, key in CONFIG_COLUMNS.items()}
    by_key = {key: col for col, key in CONFIG_COLUMNS.items()}
    by_key.update(model="model", data="dataset")  # config-group axes (`model: [T, S]`)
    for key, value in axes.items():
        if key.split(".")[0] in ("sample", "eval", "cluster"):
            continue  # eval axes come from the eval json's settings; resources are no setting
        col = by_key.get(key, key)
        if out.get(col) is None:
            out[col] = flat.get(key, value)  # the resolved config wins over the raw axis text
    for key in unused_keys({**axes, **flat}):  # a setting the run did not use is not its setting
        if by_key.get(key, key) in out:
            out[by_key.get(key, key)] = None
    return out


def eval_columns(record: dict) -> dict:
    """A checked eval record (core.records.eval_record_problem) -> its setting and metric
    columns."""
    settings, metrics = record["settings"], record["metrics"]
    row = {col: settings.get(key) for col, key in EVAL_COLUMNS.items()}
    if isinstance(row["cfg_interval"], list | tuple):
        row["cfg_interval"] = ",".join(f"{v:g}" for v in row["cfg_interval"])
    if isinstance(record.get("ckpt_step"), int):  # the resolved step, even if settings say latest
        row["ckpt_step"] = record["ckpt_step"]
    row.update({m: _number(metrics.get(m)) for m in METRIC_COLUMNS})
    row["created"] = record.get("created")
    return row


def _bootstrap(record: dict) -> dict | None:
    """The record's bootstrap replicates (metrics.bootstrap: seed, count, num_samples, ...,
    and a list of replicate values per metric), or None when it kept none."""
    boot = record["metrics"].get("bootstrap")
    return boot if isinstance(boot, dict) else None


def _number(v: Any) -> float:
    """A metric value as float (NaN for missing or non-numeric)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _scalar(v: Any) -> bool:
    """Whether a value fits in one table cell."""
    return v is None or isinstance(v, str | int | float | bool)


def _first_line(text: Any) -> Any:
    """The first line of an error message (status.json keeps the whole traceback text)."""
    return text.strip().splitlines()[0] if isinstance(text, str) and text.strip() else None
