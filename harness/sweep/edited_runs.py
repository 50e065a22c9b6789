"""A grid's run folders whose config.yaml was edited after cfh wrote it (issue 32, point 4).

A folder is named by its point's signature, so the point's own config says what the folder must
train. Its config.yaml, read, must give the same result keys (harness.grid.signatures; only
train.steps may have grown, by `--extend`), and match what cfh recorded when it wrote the file
(core.config.identity). A sweep refuses such a folder in one line naming it and the keys, before
anything is written or submitted; `--new-run` sets its files aside (replaced-*/) so the point
trains again from its true config.
"""

from __future__ import annotations

from pathlib import Path

from core.config.identity import changes_text, set_aside, stored_config_problem
from core.errors import UserError
from harness.config.compose import stored_config
from harness.grid.points import TrainPoint
from harness.grid.signatures import config_delta
from harness.launch import runs


def edited_keys(stored: dict, point_config: dict) -> list[str]:
    """Result keys whose stored value differs from the point's (train.steps only if lower)."""
    have, want = config_delta(stored), config_delta(point_config)
    out = []
    for key in sorted(set(have) | set(want)):
        a, b = have.get(key), want.get(key)
        if a == b or (key == "train.steps" and _steps(stored) >= _steps(point_config)):
            continue
        out.append(key)
    return out


def _steps(cfg: dict) -> int:
    return int((cfg.get("train") or {}).get("steps") or 0)


def edited_folder(rdir: Path, point: TrainPoint) -> str | None:
    """Why the run folder of `point` no longer trains what its signature says, or None."""
    if not (rdir / "config.yaml").is_file():
        return None
    stored = stored_config(rdir)
    keys = edited_keys(stored, point.config)
    if keys:
        shown = changes_text(point.config, stored, keys[:4])
        more = f" and {len(keys) - 4} more" if len(keys) > 4 else ""
        return f"config.yaml no longer matches its signature {point.signature} ({shown}{more})"
    return stored_config_problem(rdir)


def check_run_folders(root: str, points: list[TrainPoint], new_run: bool, grid: str) -> None:
    """Refuse the first edited run folder of the grid (one line); with `new_run`, set every
    edited folder's files aside instead and say so."""
    for point in points:
        rdir = runs.run_dir(root, point.signature)
        why = edited_folder(rdir, point)
        if why is None:
            continue
        if not new_run:
            raise UserError(
                f"run folder {rdir}: {why}; it was edited after cfh wrote it: restore it, or "
                f"train the point again with `cfh sweep {grid} --new-run` (its files move to a "
                "replaced-* folder in it)"
            )
        print(f"new run: {rdir} ({why}); its files are now in {set_aside(rdir)}")
