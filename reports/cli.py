"""`cfh report` and `cfh check`: registered into harness.cli.main's subcommands."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from core.errors import UserError
from reports.check import (
    BASELINE_DIR,
    DEFAULT_ABS_TOL,
    DEFAULT_K,
    check_tolerances,
    default_baseline,
    format_result,
    run_check,
    write_baseline,
)
from reports.results import ResultsWarning, check_name, load_results
from reports.sizes import set_size_cache

KEYS = "Config keys: experiments/config.yaml; report contents: README.md (What the numbers mean)."


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `report` and `check` subcommands."""
    p = subparsers.add_parser(
        "report",
        help="tables, plots and report.html for a grid",
        description="Write results.parquet/csv, paper-style tables (markdown, LaTeX), plots "
        "(PNG, SVG), report.md and a self-contained report.html into <root>/grids/GRID/report/.",
        epilog="examples:\n  cfh report smoke\n"
        "  cfh report smoke --root /scratch/cfh --out site/smoke\n"
        "  cfh report                # every run under the root\n"
        "  cfh report ar_steps_cpu --publish --out docs/results/ar_steps_cpu\n\n" + KEYS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("grid", nargs="?", help="grid name (default: every run under --root)")
    p.add_argument("--out", help="output folder (default: <root>/grids/GRID/report)")
    p.add_argument(
        "--publish",
        action="store_true",
        help="only what a repository should hold: report.md, PNG plots, results.csv and the "
        "tables (no HTML, parquet or SVG); prints the report.md path",
    )
    p.set_defaults(func=cmd_report)

    c = subparsers.add_parser(
        "check",
        help="fail when FID regressed against a baseline",
        description="Compare mean FID per (train setting, eval setting) with a baseline CSV. "
        "Regression: current mean above baseline by more than max(--abs-tol, --k x pooled seed "
        "std). Exit 0: nothing regressed; 1: a regression; 2: unusable input.",
        epilog="examples:\n  cfh check smoke --abs-tol 60 --k 3\n"
        "  cfh check smoke --baseline my.csv --update-baseline\n\n" + KEYS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("grid", help="grid name")
    c.add_argument(
        "--baseline",
        help="baseline CSV (default: the one shipped with cfh for GRID, in the installed "
        "package's reports/baselines/, wherever cfh runs from)",
    )
    c.add_argument(
        "--abs-tol",
        type=float,
        default=DEFAULT_ABS_TOL,
        help=f"absolute FID tolerance (default {DEFAULT_ABS_TOL})",
    )
    c.add_argument(
        "--k",
        type=float,
        default=DEFAULT_K,
        help=f"tolerance in pooled seed standard deviations (default {DEFAULT_K})",
    )
    c.add_argument(
        "--update-baseline",
        action="store_true",
        help="write the current results to --baseline PATH instead of comparing",
    )
    c.set_defaults(func=cmd_check)


def cmd_report(args: argparse.Namespace) -> int:
    """Write the report and print where report.html (or, with --publish, report.md) is."""
    from reports.report import write_report  # plotting imports are slow: only when asked

    grid = check_name(args.grid) if args.grid else None
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a file; the report needs a folder (or a new path)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResultsWarning)
        path = write_report(args.root, grid, args.out, publish=args.publish)
    _print_warnings(caught)
    print(path)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Compare with (or update) the baseline; return the exit code."""
    grid = check_name(args.grid)
    if args.update_baseline and not args.baseline:
        raise UserError(
            "--update-baseline needs --baseline PATH (where to write; the shipped baselines live "
            f"in the package, e.g. {default_baseline(grid)})"
        )
    check_tolerances(args.abs_tol, args.k)
    baseline = Path(args.baseline) if args.baseline else default_baseline(grid)
    if not args.baseline and not baseline.is_file():
        shipped = ", ".join(sorted(p.stem for p in BASELINE_DIR.glob("*.csv"))) or "none"
        raise UserError(
            f"cfh ships no baseline for grid {grid!r} (shipped: {shipped}, in {BASELINE_DIR}); "
            f"pass --baseline PATH, written by `cfh check {grid} --update-baseline --baseline "
            "PATH` after a good sweep"
        )
    set_size_cache(Path(args.root) / ".cache" / "reports" / "model_sizes.json")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResultsWarning)
        results = load_results(args.root, grid)
    _print_warnings(caught)
    if args.update_baseline:
        summary = write_baseline(results, baseline)
        print(f"wrote {len(summary)} baseline entries to {baseline}")
        return 0
    result = run_check(results, baseline, args.abs_tol, args.k)
    print(format_result(result), end="")
    if result.exit_code == 2:
        raise UserError(f"no entry of grid {grid!r} matches the baseline {baseline}")
    return result.exit_code


def _print_warnings(caught: list) -> None:
    """Results warnings as one stderr line each (not Python's file:line format)."""
    for w in caught:
        if issubclass(w.category, ResultsWarning):
            print(f"warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
