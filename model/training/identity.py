"""A resumed run may change only the resumable keys of its config (core/config/identity.py)."""

from __future__ import annotations

from pathlib import Path

from core.config import RunConfig, read_config_dict
from core.config.identity import (
    IDENTITY_FIELD,
    changes_text,
    check_stored_config,
    edited_refusal,
    identity_diff,
)
from core.errors import UserError
from core.io import read_status
from model.training.checkpoint import checkpoint_paths, saved_config


def check_run_dir(cfg: RunConfig, run_dir: Path) -> None:
    """Refuse a config that would change what an existing run folder trains, and a run folder
    whose config.yaml was edited after cfh wrote it (the same change as an override is refused
    below; by hand it would go unseen, since the resume reads that very file)."""
    path = run_dir / "config.yaml"
    if not path.exists():
        return
    check_run_folder(run_dir)
    old = read_config_dict(path)
    new = cfg.to_dict()
    diff = identity_diff(old, new)
    if diff:
        shown = changes_text(old, new, diff[:6])
        raise UserError(
            f"run_dir={run_dir} holds a run with a different config ({shown}); "
            "use a new run_dir, or only change train.steps and other resumable keys"
        )


def check_run_folder(run_dir: str | Path) -> None:
    """Refuse, in one line, a run folder whose config.yaml no longer says what it trained: edited
    after cfh recorded it, or (a folder from before the record) unlike its checkpoint's config."""
    check_stored_config(run_dir)
    check_checkpoint_config(run_dir)


def check_checkpoint_config(run_dir: str | Path) -> None:
    """Refuse, in one line, a folder from before the record whose config.yaml differs from its
    newest good checkpoint's config (the part of check_run_folder that needs torch)."""
    edited = checkpoint_config_problem(run_dir)
    if edited:
        raise edited_refusal(run_dir, edited)


def checkpoint_config_problem(run_dir: str | Path) -> str | None:
    """For a run folder that cfh wrote before it recorded what config.yaml trains (no
    config_identity in status.json): how config.yaml differs from the config its newest good
    checkpoint was trained with, or None. A folder with a record is checked by that record
    (core.config.identity.check_stored_config), without opening a checkpoint."""
    folder = Path(run_dir)
    path = folder / "config.yaml"
    if not path.is_file() or read_status(folder).get(IDENTITY_FIELD):
        return None
    for ckpt in reversed(checkpoint_paths(folder)):
        saved = saved_config(ckpt)
        if saved is None:
            continue
        stored = read_config_dict(path)
        diff = identity_diff(saved, stored)
        if not diff:
            return None
        shown = changes_text(saved, stored, diff[:6])
        return f"config.yaml differs from the config {ckpt.name} was trained with ({shown})"
    return None
