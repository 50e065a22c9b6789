"""What a run folder trains, and whether its config.yaml still says so.

A resumed run may change only the resumable keys of its config (`identity_diff`). The rest is
the run's identity: `config_identity` hashes it, and cfh records that hash where it writes a
run's config.yaml (the trainer in status.json, a sweep in point.json). A config.yaml edited by
hand afterwards no longer matches the record (`edited_config`), so a resume, an evaluation, a
sweep and a report see it, as they would refuse the same change given on the command line.
Torch-free.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.config.stored import read_config_dict
from core.errors import UserError
from core.hashing import json_hash
from core.io import RUN_LOCK, lock_state, read_status
from core.keys import flatten

# Keys that may differ between a run folder's config and a resumed run's config.
RESUMABLE_KEYS = (
    "run_dir",
    "train.steps",
    "train.ckpt_every",
    "train.keep_checkpoints",
    "train.log_every",
    "train.num_workers",
    "train.device",
    "train.dist_timeout_s",
    "train.compile",
    "train.grad_checkpointing",
    "train.loggers",
    "data.on_device",  # where the batches are gathered, not which
    "sample",
    "eval",
    "cluster",
)

# Keys added to cfh after run folders were written without them, with the value that does what
# cfh did before the key existed: a stored config without the key matches that value. A key
# added later goes here too, so that the identity of a folder written before it stays the same.
ADDED_KEYS = {
    "data.train_split": "train",
    "train.ema_warmup": True,
}

IDENTITY_FIELD = "config_identity"  # the record's key in status.json and point.json
REPLACED_PREFIX = "replaced-"  # a run folder's files set aside by --new-run (set_aside)


def _identity_keys(cfg: dict) -> dict[str, Any]:
    """The flattened non-resumable keys of a config, the added keys filled in."""
    flat = {**ADDED_KEYS, **flatten(cfg)}
    return {k: v for k, v in flat.items() if not _resumable(k)}


def _resumable(key: str) -> bool:
    return any(key == r or key.startswith(r + ".") for r in RESUMABLE_KEYS)


def identity_diff(old: dict, new: dict) -> list[str]:
    """Keys (dotted) whose values differ between two configs, ignoring resumable keys."""
    a, b = flatten(old), flatten(new)
    for key, value in ADDED_KEYS.items():
        if key not in a and key in b:
            a[key] = value
    return sorted(k for k in set(a) | set(b) if not _resumable(k) and a.get(k) != b.get(k))


def config_identity(cfg: dict) -> str:
    """The hash of what a config trains: equal for two configs whose identity_diff is empty."""
    return json_hash(_identity_keys(cfg), 16)


def edited_config(stored: dict, *records: dict) -> str | None:
    """Why `stored` (a run's config.yaml, read) no longer matches what cfh recorded for it in
    `records` (status.json, point.json; those without a record, e.g. from before cfh kept one,
    are skipped), or None where it matches."""
    now = config_identity(stored)
    for record in records:
        wrote = record.get(IDENTITY_FIELD) if isinstance(record, dict) else None
        if isinstance(wrote, str) and wrote != now:
            return (
                f"config.yaml was changed after cfh wrote it (what it trains hashes to {now}, "
                f"cfh recorded {wrote})"
            )
    return None


def stored_config_problem(run_dir: str | Path) -> str | None:
    """Why run_dir/config.yaml no longer matches cfh's records of it (status.json, point.json),
    or None: also where there is no config.yaml or no record yet."""
    folder = Path(run_dir)
    path = folder / "config.yaml"
    if not path.is_file():
        return None
    try:
        point = json.loads((folder / "point.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        point = {}  # no grid point, or a damaged one (its readers say so)
    return edited_config(read_config_dict(path), read_status(folder), point)


def set_aside(run_dir: str | Path) -> Path:
    """Move a run folder's files into `replaced-<UTC time>/` inside it (a run that trains
    there again starts from step 0; nothing is deleted). Refused while a process trains it."""
    folder = Path(run_dir)
    held, holder = lock_state(folder / RUN_LOCK)
    if held:
        raise UserError(
            f"run_dir={folder} is in use by pid {holder.get('pid')} on host "
            f"{holder.get('host')}; stop it before setting its files aside"
        )
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    target = folder / f"{REPLACED_PREFIX}{stamp}"
    target.mkdir()
    for entry in sorted(folder.iterdir()):
        if entry.name != RUN_LOCK and not entry.name.startswith(REPLACED_PREFIX):
            entry.rename(target / entry.name)
    return target


def changes_text(old: dict, new: dict, keys: Sequence[str]) -> str:
    """`key: old -> new, ...` for dotted `keys` of two configs (a key one lacks reads None)."""
    a, b = flatten(old), flatten(new)
    return ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys)


def edited_refusal(run_dir: str | Path, why: str) -> UserError:
    """The one-line refusal of a run folder whose config.yaml no longer says what it trained."""
    return UserError(
        f"run_dir={run_dir}: {why}; restore it, or train it again from step 0 with "
        f"`cfh train run_dir={run_dir} --new-run` (the old files move to a replaced-* folder)"
    )


def check_stored_config(run_dir: str | Path) -> None:
    """Refuse, in one line, a run folder whose config.yaml was edited after cfh wrote it."""
    edited = stored_config_problem(run_dir)
    if edited:
        raise edited_refusal(run_dir, edited)
