"""A resumed run may change only the resumable keys of its config (core/config/identity.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.config import RunConfig, read_config_dict
from core.config.identity import check_stored_config, identity_diff
from core.errors import UserError


def check_run_dir(cfg: RunConfig, run_dir: Path) -> None:
    """Refuse a config that would change what an existing run folder trains, and a run folder
    whose config.yaml was edited after cfh wrote it (the same change as an override is refused
    below; by hand it would go unseen, since the resume reads that very file)."""
    path = run_dir / "config.yaml"
    if not path.exists():
        return
    check_stored_config(run_dir)
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
