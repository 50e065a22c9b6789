"""What a run folder's JSON files must look like: status.json, eval records, metrics lines.

One checker per file kind; each returns None for a usable value or a short reason. Readers that
show run folders (`cfh status`, `cfh report`) mark a file that fails as
`damaged: <file>: <reason>` on its own row instead of raising or guessing a state; writers
treat a damaged status.json as absent and overwrite it.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

# interrupted: stopped by SIGINT, or by a signal where nothing requeues the run; requeued: a
# scheduler will start it again (harness.launch.point_job decides that, model/ never does)
STATUS_STATES = (
    "pending", "running", "completed", "failed", "interrupted", "requeued", "cancelled",
)  # fmt: skip
STATUS_PHASES = ("train", "eval", "bench", "done")
_TIME = "an ISO-8601 time with a timezone"
_STATUS_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "state": ((str,), "a string"),
    "phase": ((str,), "a string"),
    "job_id": ((str, int), "a job id"),
    "log": ((str,), "a path"),
    "job_log": ((str,), "a path"),
    "error": ((str,), "a string"),
    "step": ((int,), "an integer >= 0"),
    "total_steps": ((int,), "an integer >= 0"),
    "attempts": ((int,), "an integer >= 0"),
    "failed_rank": ((int,), "an integer >= 0"),
    "loss": ((int, float), "a number"),
    "evals": ((dict,), "an object"),
    "code": ((dict,), "an object"),  # core.provenance.code_version() of the latest start
    "machine": ((dict,), "an object"),  # model.training.perf.machine_info() of the latest start
    "started": ((str,), _TIME),
    "updated": ((str,), _TIME),
}


def _is_time(text: str) -> bool:
    try:
        return dt.datetime.fromisoformat(text).tzinfo is not None
    except ValueError:
        return False


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def status_problem(data: Any) -> str | None:
    """What is wrong with a parsed status.json, or None."""
    if not isinstance(data, dict):
        return f"expected a JSON object, found {type(data).__name__}"
    for key, (kinds, what) in _STATUS_FIELDS.items():
        v = data.get(key)
        if v is None:
            continue
        bad = isinstance(v, bool) or not isinstance(v, kinds)
        bad = bad or (what == _TIME and not _is_time(v))
        bad = bad or (what.startswith("an integer") and v < 0)
        bad = bad or (key == "loss" and not math.isfinite(v) and not math.isnan(v))
        if bad:
            return f"{key}={v!r} is not {what}"
    if data.get("state") is not None and data["state"] not in STATUS_STATES:
        return f"state={data['state']!r} is not one of {', '.join(STATUS_STATES)}"
    if data.get("phase") is not None and data["phase"] not in STATUS_PHASES:
        return f"phase={data['phase']!r} is not one of {', '.join(STATUS_PHASES)}"
    for key, rec in (data.get("evals") or {}).items():
        if not isinstance(rec, dict):
            return f"evals[{key!r}] is not an object"
        if rec.get("fid") is not None and not _number(rec["fid"]):
            return f"evals[{key!r}].fid={rec['fid']!r} is not a number"
        if not isinstance(rec.get("file"), str):
            return f"evals[{key!r}].file={rec.get('file')!r} is not a path"
    return None


def eval_record_problem(data: Any) -> str | None:
    """What is wrong with a parsed eval/<hash>.json, or None."""
    if not isinstance(data, dict):
        return f"expected a JSON object, found {type(data).__name__}"
    for key in ("settings", "metrics"):
        if not isinstance(data.get(key), dict):
            return f"{key}={data.get(key)!r} is not an object"
    s_eval = data["settings"].get("s_eval")
    if s_eval is not None and (isinstance(s_eval, bool) or not isinstance(s_eval, int)):
        return f"settings.s_eval={s_eval!r} is not an integer"
    for name, value in data["metrics"].items():
        plain = value is None or _number(value) or isinstance(value, str | dict)
        numbers = isinstance(value, list) and all(_number(v) for v in value)  # fid_inf_sizes
        if not plain and not numbers:
            return f"metrics.{name}={value!r} is not a number"
    fid = data["metrics"].get("fid")
    if fid is not None and not _number(fid):
        return f"metrics.fid={fid!r} is not a number"
    return None


# metrics.jsonl keys with a narrower meaning than "a number": shares of the window's wall time,
# and counts (skipped non-finite steps, graphs compiled so far)
METRIC_SHARES = ("data_wait_frac", "step_frac")
METRIC_COUNTS = ("nonfinite_steps", "compiled_graphs")


def metrics_row_problem(row: Any) -> str | None:
    """What is wrong with one parsed metrics.jsonl line, or None."""
    if not isinstance(row, dict):
        return f"expected a JSON object, found {type(row).__name__}"
    step = row.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return f"step={step!r} is not an integer >= 0"
    for key, value in row.items():
        if key != "step" and value is not None and not _number(value):
            return f"{key}={value!r} at step {step} is not a number"
        if value is None:
            continue
        if key in METRIC_SHARES and not 0 <= value <= 1:
            return f"{key}={value!r} at step {step} is not a share in [0, 1]"
        if key in METRIC_COUNTS and (not isinstance(value, int) or value < 0):
            return f"{key}={value!r} at step {step} is not an integer >= 0"
    return None
