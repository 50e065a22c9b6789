"""`cfh sweep GRID --extend train.steps=N`: the grid's trained runs continue to N steps (their
config.yaml's train.steps raised, the job resumed from the last checkpoint, the evals redone
at the new final checkpoint)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omegaconf import OmegaConf

from core.errors import UserError
from core.io import atomic_write_text, read_status
from core.yaml_bounds import check_yaml_file
from harness.grid.expansion import Grid
from harness.grid.points import TrainPoint
from harness.launch import runs
from harness.sweep.plan import Decision


def check_extends(grid: Grid, points: Sequence[TrainPoint], steps: int) -> None:
    """--extend train.steps=N must extend: N above the train.steps of every point of the grid."""
    most = max(int(p.config["train"]["steps"]) for p in points)
    if steps <= most:
        raise UserError(
            f"--extend train.steps={steps} does not extend grid {grid.name}: its points train "
            f"for {most} steps (train.steps); allowed: N > {most}"
        )


def parse_extend(text: str) -> int:
    """--extend train.steps=N -> N; the one key a run can be extended along."""
    key, sep, value = str(text).partition("=")
    if key.strip() != "train.steps" or not sep or not value.strip().isdigit():
        raise UserError(
            f"--extend {text!r} is not allowed; expected train.steps=N (N an integer >= 1)"
        )
    steps = int(value)
    if steps < 1:
        raise UserError(f"--extend train.steps={steps} is not allowed; expected N >= 1")
    return steps


def extend_runs(root: str, decisions: list[Decision], steps: int) -> list[Decision]:
    """Raise train.steps to `steps` in the run folders of the grid's trained points and mark
    them for submission: the job resumes training from the last checkpoint and redoes the evals
    at the new final checkpoint. Running points are left alone (extend once they end); a run
    already at `steps` or beyond is not shortened."""
    loaded = {}  # read (and refuse) every run first: a refusal leaves no config rewritten
    for d in decisions:
        path = runs.run_dir(root, d.signature) / "config.yaml"
        if d.point is None or not path.is_file() or d.state in ("running", "requeued"):
            continue
        check_yaml_file(path, hint="; restore it")
        cfg = OmegaConf.load(path)
        have = int(cfg.train.steps)
        if have > steps:
            raise UserError(
                f"--extend train.steps={steps}: run {d.signature} already has train.steps={have};"
                " a run is extended, never shortened"
            )
        loaded[d.signature] = (path, cfg, have)
    out = []
    for d in decisions:
        if d.point is None or d.signature not in loaded:
            out.append(d)
            continue
        path, cfg, have = loaded[d.signature]
        rdir = path.parent
        if have < steps:
            cfg.train.steps = steps
            atomic_write_text(path, OmegaConf.to_yaml(cfg))
        if have < steps or d.state != "completed" or not _extended_evals_done(rdir, steps):
            d = Decision(d.signature, d.axes, d.state, "submit", f"extend to {steps}", d.point)
        out.append(d)
    return out


def _extended_evals_done(rdir: Any, steps: int) -> bool:
    """Whether every eval of status.json was made at checkpoint `steps`."""
    evals = read_status(rdir).get("evals") or {}
    return all(isinstance(e, dict) and e.get("ckpt_step") == steps for e in evals.values())
