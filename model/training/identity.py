"""What a run folder trains: a resumed run may change only the resumable keys of its config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.config import RunConfig, read_config_dict
from core.errors import UserError
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
# cfh did before the key existed: a stored config without the key matches that value.
ADDED_KEYS = {
    "data.train_split": "train",
    "train.ema_warmup": True,
}


def identity_diff(old: dict, new: dict) -> list[str]:
    """Keys (dotted) whose values differ between two configs, ignoring resumable keys."""

    def keep(key: str) -> bool:
        return not any(key == r or key.startswith(r + ".") for r in RESUMABLE_KEYS)

    a, b = flatten(old), flatten(new)
    for key, value in ADDED_KEYS.items():
        if key not in a and key in b:
            a[key] = value
    return sorted(k for k in set(a) | set(b) if keep(k) and a.get(k) != b.get(k))


def check_run_dir(cfg: RunConfig, run_dir: Path) -> None:
    """Refuse a config that would change what an existing run folder trains."""
    path = run_dir / "config.yaml"
    if not path.exists():
        return
    old = read_config_dict(path)
    new = cfg.to_dict()
    diff = identity_diff(old, new)
    if diff:
        shown = ", ".join(f"{k}: {_get(old, k)!r} -> {_get(new, k)!r}" for k in diff[:6])
        raise UserError(
            f"run_dir={run_dir} holds a run with a different config ({shown}); "
            "use a new run_dir, or only change train.steps and other resumable keys"
        )


def _get(d: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d
