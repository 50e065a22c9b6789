"""A grid file's `findings:`: checked before anything runs, kept in plan.json for the report."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from core.errors import UserError
from harness.grid.files import load_grid
from harness.launch import runs

PAPER_GRIDS = ("smoke", "ar_steps", "ar_decay", "token_order", "ar_weighting", "model_size")
BODY = """
    base: {model: T, data: digits, train.steps: 10}
    include:
      - {train.ar.mode: fixed, train.ar.steps: 1}
      - {train.ar.mode: decay, train.ar.decay: 0.9}
    seeds: [0, 1]
    eval:
      axes:
        sample.ar_steps: [1, 4]
    """


def grid_with(tmp_path: Path, findings: str) -> Path:
    path = tmp_path / "g.yaml"
    path.write_text(textwrap.dedent(BODY) + textwrap.dedent(findings))
    return path


@pytest.mark.parametrize("name", PAPER_GRIDS)
def test_the_paper_grids_name_their_findings(name):
    grid = load_grid(name)
    assert len(grid.findings) >= 1
    for item in grid.findings:
        assert item["claim"] and item["better"] != item["worse"]
        assert set(item["better"]) <= set(grid.axis_keys()) | set(grid.eval_axis_keys())


def test_findings_are_stored_in_the_plan(tmp_path):
    path = grid_with(
        tmp_path,
        """
        findings:
          - claim: decay keeps S_eval 4 usable
            better: {train.ar.mode: decay, sample.ar_steps: 4}
            worse: {train.ar: {mode: fixed, steps: 1}, sample.ar_steps: 4}
        """,
    )
    grid = load_grid(str(path))
    plan = json.loads(runs.write_plan(tmp_path / "root", grid, grid.expand()).read_text())
    assert plan["findings"] == [
        {
            "claim": "decay keeps S_eval 4 usable",
            "better": {"train.ar.mode": "decay", "sample.ar_steps": 4},
            "worse": {"train.ar.mode": "fixed", "train.ar.steps": 1, "sample.ar_steps": 4},
        }
    ]
    assert load_grid("smoke", ["train.steps=20"]).findings == load_grid("smoke").findings


@pytest.mark.parametrize(
    "findings, message",
    [
        ("findings: {claim: x}\n", r"findings: must be a list of \{claim"),
        ("findings:\n  - {claim: x, better: {seed: 0}}\n",
         r"findings\[0\]: must have the keys claim, better and worse"),
        ("findings:\n  - {claim: '', better: {sample.ar_steps: 1}, worse: {sample.ar_steps: 4}}\n",
         r"findings\[0\].claim: must be a line of text"),
        ("findings:\n  - {claim: x, better: {seed: 0}, worse: {seed: 1}}\n",
         r"findings\[0\].better.seed: is not an axis of the grid; allowed: train.ar.mode, "),
        ("findings:\n  - {claim: x, better: {train.lr: 1}, worse: {sample.ar_steps: 4}}\n",
         r"findings\[0\].better.train.lr: is not an axis"),
        ("findings:\n  - {claim: x, better: {sample.ar_steps: 2}, worse: {sample.ar_steps: 4}}\n",
         r"findings\[0\].better.sample.ar_steps: 2 is not a value of this axis; allowed: 1, 4"),
        ("findings:\n  - {claim: x, better: {sample.ar_steps: 1}, worse: {sample.ar_steps: 1}}\n",
         r"findings\[0\]: better and worse name the same cell"),
        ("findings:\n  - {claim: x, better: {}, worse: {sample.ar_steps: 1}}\n",
         r"findings\[0\].better: must be a non-empty mapping"),
    ],
)  # fmt: skip
def test_bad_findings_are_refused_with_the_key(tmp_path, findings, message):
    with pytest.raises(UserError, match=f"grid {tmp_path / 'g.yaml'}: {message}"):
        load_grid(str(grid_with(tmp_path, findings)))


def test_a_key_only_include_entries_set_takes_the_other_points_value(tmp_path):
    path = grid_with(
        tmp_path,
        """
        findings:
          - claim: the decay default
            better: {train.ar.decay: 0.9, sample.ar_steps: 1}
            worse: {train.ar.mode: fixed, sample.ar_steps: 1}
        """,
    )
    assert load_grid(str(path)).findings[0]["better"]["train.ar.decay"] == 0.9
    cli = load_grid(str(path), ["train.lr=1e-3,2e-3"])  # a command-line sweep is an axis too
    assert cli.findings[0]["claim"] == "the decay default"
