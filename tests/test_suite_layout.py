"""The suite's own layout: pytest imports test modules by basename (no __init__.py files), so
two test files with one name in different folders stop collection on a clean checkout."""

from __future__ import annotations

from collections import Counter
from pathlib import Path


def test_every_test_module_name_is_unique():
    names = Counter(p.name for p in Path(__file__).parent.rglob("test_*.py"))
    assert [n for n, k in names.items() if k > 1] == []
