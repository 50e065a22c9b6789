"""The suite's own layout: pytest imports test modules by basename (no __init__.py files), so
two test files with one name in different folders stop collection on a clean checkout."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path


def test_every_test_module_name_is_unique():
    names = Counter(p.name for p in Path(__file__).parent.rglob("test_*.py"))
    assert [n for n, k in names.items() if k > 1] == []


def test_the_modules_that_use_slurm_are_the_ones_run_together():
    """tests/conftest.py's SLURM_MODULES (one worker runs them) lists every user of the cluster."""
    here = Path(__file__).parent
    # read, not imported: under xdist `conftest` may name another folder's conftest module
    listed = re.findall(r'"(tests/[\w/]+\.py)"', (here / "conftest.py").read_text())
    users = sorted(
        str(p.relative_to(here.parent))
        for p in here.rglob("test_*.py")
        if p != Path(__file__) and "slurm_cluster" in p.read_text()
    )
    assert users == sorted(listed)
