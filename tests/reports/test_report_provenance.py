"""A report names the code commit and the machine of its runs, and says where they are unknown."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from conftest import write_smoke_grid

from core.io import update_status
from reports.provenance import provenance_lines
from reports.results import scan


def test_commits_and_machines_are_counted_and_old_runs_are_not_guessed(tmp_path: Path):
    runs = write_smoke_grid(tmp_path)
    machine = {"host": "node1", "cpu": "AMD EPYC", "cores": 2, "gpu": None, "torch": "2.14.1"}
    for run in runs[:4]:
        code = {"cfh": "0.1.0", "commit": "abcdef123456"}
        update_status(run, code=code, machine=machine, started="2026-12-05T08:00:00+00:00")
    df = scan(tmp_path, "smoke").table
    code, where, span = provenance_lines(df)
    assert code == (
        "Code: abcdef123456 (4 runs); not recorded for 3 runs (trained before cfh recorded it)."
    )
    assert where.startswith(
        "Machine: AMD EPYC, 2 cores, no GPU (host node1) (4 runs); not recorded"
    )
    assert span.startswith("Runs: the first started ")


def test_no_train_runs_no_lines():
    assert provenance_lines(pd.DataFrame({"kind": ["bench"], "signature": ["b"]})) == []
