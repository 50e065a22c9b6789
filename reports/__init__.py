"""Results -> pandas -> tables, plots, report, check.

`load_results(root, grid=None)` is the tidy results table (one row per run x eval settings x
checkpoint); `write_report(root, grid)` writes the report folder; `cfh report` / `cfh check` are
in reports.cli. Plotting modules import lazily (matplotlib and seaborn are slow to import).
"""

from __future__ import annotations

from typing import Any

from reports.results import ResultsWarning, load_curves, load_results, scan

__all__ = ["ResultsWarning", "load_curves", "load_results", "scan", "write_report"]


def __getattr__(name: str) -> Any:
    """write_report without importing matplotlib at `import reports`."""
    if name == "write_report":
        from reports.report import write_report

        return write_report
    raise AttributeError(f"module 'reports' has no attribute {name!r}")
