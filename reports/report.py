"""`cfh report`: results.parquet/csv, tables, plots, report.md and a self-contained report.html.

The report is a list of blocks (heading, paragraph, table, image, code) rendered twice, as
markdown and as HTML (reports.blocks), so the two never disagree.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from core.errors import DiskFull
from core.io import atomic_write_bytes, atomic_write_text, now_iso
from core.runfolder import decide_path, read_json
from reports import plots
from reports.blocks import Block, to_html, to_markdown
from reports.columns import EVAL_KEY_COLUMNS
from reports.findings import (
    DEFAULT_MAX_SAMPLES,
    DEFAULT_MAX_SEEDS,
    METRIC_NAMES,
    findings_view,
    judge_findings,
    method_note,
)
from reports.forest import forest_plot
from reports.plot_style import png_only
from reports.provenance import provenance_lines
from reports.publish import PublishLeak, Scrubber, check_published, publish_view, root_phrase
from reports.results import Results, ResultsWarning, scan
from reports.sizes import set_size_cache
from reports.tables import (
    Table,
    all_tables,
    fid_context,
    final_evals,
    varying,
)
from reports.winners import winners

PLOT_CAPTIONS = {
    "fid_vs_s_eval": "FID vs S_eval, one line per training setting (band: sd over seeds).",
    "heatmap_s_train_s_eval": "Mean FID per training setting and S_eval.",
    "training_curves": "Training loss vs training step (left) and FID vs checkpoint step "
    "(right; runs with two or more checkpoints evaluated).",
    "training_loss": "Training loss vs training step (no FID over training: each run has one "
    "checkpoint evaluated).",
    "throughput_vs_params": "Training and sampling throughput vs parameter count (measured: "
    "both move with the machine's load).",
    "fid_vs_cost": "FID vs sampling cost, with the Pareto front (black): token evaluations "
    "(left) and analytic sampling FLOPs per image (right), which do not move with the "
    "machine's load; measured img/s is in results.csv and the model-size table.",
    "samples": "Sample grids per run (first seed of each setting), one column per S_eval.",
}
MAX_LISTED_RUNS = 50


def report_dir(root: str | os.PathLike, grid: str | None) -> Path:
    """Where `cfh report` writes: <root>/grids/<GRID>/report, or <root>/report for all runs."""
    root = Path(root)
    return root / "grids" / grid / "report" if grid else root / "report"


def write_report(
    root: str | os.PathLike,
    grid: str | None = None,
    out: str | os.PathLike | None = None,
    publish: bool = False,
) -> Path:
    """Load the grid's results and write every report file; return the report.html path (with
    `publish`, what a repository should hold: report.md, PNG plots, results.csv and the tables,
    no HTML, parquet or SVG; then the report.md path)."""
    set_size_cache(Path(root) / ".cache" / "reports" / "model_sizes.json")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResultsWarning)
        results = scan(root, grid)
    notes = [str(w.message) for w in caught if issubclass(w.category, ResultsWarning)]
    path = build_report(results, Path(out) if out else report_dir(root, grid), notes, publish)
    for note in notes:  # in the report and, for the caller, as the warning it was
        warnings.warn(note, ResultsWarning, stacklevel=2)
    return path


# the staging folder of a report being written, inside its folder (the same filesystem)
STAGE_PREFIX, STAGE_SUFFIX = ".report-", ".tmp"
LAST_MOVED = ("report.md", "report.html")  # what a reader opens: in place once the rest is


def build_report(
    results: Results, out: Path, notes: list[str] | tuple = (), publish: bool = False
) -> Path:
    """Write results files, tables, plots, report.md and report.html into `out` (see
    write_report for `publish`: then every path in the written text is relative to the results
    root or the repository, and reports.publish checks that no machine path remains).

    Every file is written into a staging folder `out/.report-*.tmp` first and moved into `out`
    once all of them are there (report.md and report.html last), so a report that fails (a full
    disk: core.errors.DiskFull naming the file) leaves `out` as it was, with nothing of its own.
    """
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, suffix=STAGE_SUFFIX, dir=out))
    try:
        try:
            made = _write_report_files(results, stage, notes, publish)
        except DiskFull as e:  # named where it would have been written
            where = Path(e.filename)
            if not where.is_relative_to(stage):
                raise
            raise DiskFull(out / where.relative_to(stage), e.errno) from e
        except PublishLeak as e:
            raise PublishLeak(str(e).replace(str(stage), str(out))) from None
        _move_into(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out / made.relative_to(stage)


def _move_into(stage: Path, out: Path) -> None:
    """Move every file under `stage` to the same place under `out` (renames: no new space),
    the files of LAST_MOVED last."""
    files = sorted(p for p in stage.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.relative_to(stage).as_posix() in LAST_MOVED)
    for path in files:
        target = out / path.relative_to(stage)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)


def _write_report_files(
    results: Results, out: Path, notes: list[str] | tuple, publish: bool
) -> Path:
    """build_report's files, all written into `out` (the staging folder)."""
    df = results.table
    scrub = Scrubber(results.root) if publish else None
    shown, notes = publish_view(results, notes, scrub) if scrub else (results, list(notes))
    written = write_table_files(shown.table, out, parquet=not publish)
    tables = all_tables(shown.table)
    for t in tables:
        for path, text in ((f"{t.name}.md", t.to_markdown()), (f"{t.name}.tex", t.to_latex())):
            atomic_write_text(out / "tables" / path, text)
            written.append(out / "tables" / path)
    judged = judge_grid(results)
    with png_only() if publish else contextlib.nullcontext():
        images = plots.all_plots(df, results.curves, out / "plots")  # sample grids: run folders
        metric = METRIC_NAMES.get(str(judged["metric"].iloc[0])) if judged is not None else ""
        forest = forest_plot(judged, out / "plots", metric) if judged is not None else None
    blocks = report_blocks(shown, tables, images, notes, publish, judged, forest)
    atomic_write_text(out / "report.md", to_markdown(blocks, out))
    if scrub:
        check_published([*written, out / "report.md"], scrub)
        return out / "report.md"
    atomic_write_text(out / "report.html", to_html(blocks, results.grid))
    return out / "report.html"


def write_table_files(df: pd.DataFrame, out: Path, parquet: bool = True) -> list[Path]:
    """results.parquet (unless not `parquet`) and results.csv, written atomically; the text
    files written (results.csv)."""
    if parquet:
        buf = io.BytesIO()
        parquet_safe(df).to_parquet(buf, index=False)
        atomic_write_bytes(out / "results.parquet", buf.getvalue())
    atomic_write_text(out / "results.csv", df.to_csv(index=False))
    return [out / "results.csv"]


def parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Object columns holding mixed types (an axis with ints and strings) as strings."""
    out = df.copy()
    for col in out.select_dtypes(include=object, exclude="str").columns:
        kind = pd.api.types.infer_dtype(out[col], skipna=True)
        if kind not in ("string", "empty", "boolean", "integer", "floating"):
            out[col] = out[col].map(str, na_action="ignore")
    return out


# ---- content ----


def report_blocks(
    results: Results,
    tables: list[Table],
    images: dict[str, Path],
    notes: list[str],
    publish: bool = False,
    judged: pd.DataFrame | None = None,
    forest: Path | None = None,
) -> list[Block]:
    """The report's sections in order."""
    df = results.table
    title = f"cfh report: grid {results.grid}" if results.grid else "cfh report: all runs"
    blocks = [
        Block("h1", title),
        Block("p", f"Generated {now_iso()}{root_phrase(results.root, publish)}."),
        *[Block("p", f"Warning: {n}") for n in notes],
        Block("h2", "What the grid varies"),
        *grid_blocks(results),
        Block("h2", "Run states"),
        *state_blocks(df),
        *[Block("p", line) for line in provenance_lines(df)],
        Block("h2", "Winner per S_eval"),
        *winner_blocks(df, results.replicates),
        *finding_blocks(results, judged, forest),
        Block("h2", "Tables"),
    ]
    if not tables:
        blocks.append(Block("p", "No FID results yet: no tables."))
    blocks += [Block("table", t) for t in tables]
    blocks.append(Block("h2", "Plots"))
    if not images:
        blocks.append(Block("p", "No results to plot yet."))
    context = fid_context(df)
    blocks += [Block("image", path, _plot_caption(name, context)) for name, path in images.items()]
    blocks += plan_blocks(results)
    blocks += [
        Block("h2", "Files"),
        Block(
            "p",
            "results.csv (one row per run x eval settings x checkpoint), tables/*.md and "
            "tables/*.tex, plots/*.png."
            if publish
            else "results.parquet and results.csv (one row per run x eval settings x "
            "checkpoint), tables/*.md and tables/*.tex, plots/*.png and plots/*.svg.",
        ),
    ]
    return blocks


def _plot_caption(name: str, context: str) -> str:
    """A plot's caption; FID plots also say what their FID is."""
    caption = PLOT_CAPTIONS.get(name, name)
    fid_plot = name in ("fid_vs_s_eval", "heatmap_s_train_s_eval", "training_curves", "fid_vs_cost")
    return f"{caption} FID: {context}." if fid_plot and context else caption


def grid_blocks(results: Results) -> list[Block]:
    """What the grid varies: its plan (without the point list) and the observed axes."""
    df = results.table
    train = df[df["kind"] == "train"]
    n_runs = train["signature"].nunique()
    blocks = [Block("p", f"{n_runs} train points; {int(df['fid'].notna().sum())} FID results.")]
    axes = varying(train, ["s_train", "model", "dataset", "train_order", "ar_weighting",
                           "noise_weighting", "seed", *[c for c in df if "." in c]])  # fmt: skip
    scored = df[df["fid"].notna()]  # rows of runs without evals have no eval settings
    axes += [c for c in varying(scored, EVAL_KEY_COLUMNS) if c not in axes]
    if axes:
        values = {c: ", ".join(_fmt(v) for v in _unique_sorted(df[c].dropna())) for c in axes}
        blocks.append(
            Block("frame", pd.DataFrame({"axis": values.keys(), "values": values.values()}))
        )
    return blocks


def plan_blocks(results: Results) -> list[Block]:
    """Appendix: the grid's stored plan (without the point list)."""
    definition = {k: v for k, v in results.plan.items() if k not in ("points", "train_points")}
    if not definition:
        return []
    return [
        Block("h2", "Appendix: the grid's plan"),
        Block("code", yaml.safe_dump(definition, sort_keys=False, width=100)),
    ]


def state_blocks(df: pd.DataFrame) -> list[Block]:
    """Counts of runs per state and the runs that need attention (with error and log)."""
    runs = df.drop_duplicates(["kind", "signature"])
    counts = runs.groupby(["kind", "state"]).size().rename("runs").reset_index()
    blocks = [Block("frame", counts)]
    bad = runs[(runs["state"] != "completed") | (runs["problems"] != "")]
    if not bad.empty:
        cols = ["signature", "setting", "seed", "state", "progress_step", "total_steps",
                "error", "problems", "log"]  # fmt: skip
        listed = bad[[c for c in cols if c in bad]].head(MAX_LISTED_RUNS)
        more = len(bad) - len(listed)
        blocks += [
            Block("p", "Runs that are not completed or have unreadable files:"),
            Block("frame", listed.fillna("")),
        ]
        if more > 0:
            blocks.append(Block("p", f"... and {more} more (see results.csv)."))
    return blocks


def winner_blocks(df: pd.DataFrame, replicates: dict | None = None) -> list[Block]:
    """The winners table, readable."""
    w = winners(df, replicates)
    if w.empty:
        return [Block("p", "No FID results yet.")]
    if (w["verdict"] != "only one setting").any():  # e.g. a finding's cells scored again
        w = w[w["verdict"] != "only one setting"].reset_index(drop=True)
    data = final_evals(df)
    others = [c for c in varying(data, EVAL_KEY_COLUMNS) if c not in ("s_eval", "ckpt_step")]
    interval = "[" + w["lo"].map(_num) + ", " + w["hi"].map(_num) + "]"
    view = pd.DataFrame(
        {
            "S_eval": w["s_eval"].map(_fmt),
            **{c: w[c].map(_fmt) for c in others},
            "winner": w["setting"],
            "FID": _pm(w["mean"], w["std"], w["n"]),
            "runner-up": w["setting_2"].fillna("-"),
            "runner-up FID": _pm(w["mean_2"], w["std_2"], w["n_2"]),
            "margin": w["margin"].map(_num),
            "95% interval": interval.where(w["lo"].notna(), "-"),
            "seed variance": w["noise_kind"].where(w["mean_2"].notna(), "-"),
            "winner decided": w["verdict"],
        }
    )
    note = fid_context(df)
    method = (
        "margin = runner-up - winner; decided when its 95% interval (Student t at the seed "
        "variance's df; paired over shared seeds) lies above 0, as for the findings below"
    )
    return [Block("frame", view, f"{note}; {method}." if note else f"{method}.")]


def judge_grid(results: Results) -> pd.DataFrame | None:
    """The grid's findings (plan.json) judged on its `decide_on` metric, or None without any."""
    plan = results.plan if isinstance(results.plan, dict) else {}
    findings = plan.get("findings")
    if not findings:
        return None
    state, _ = read_json(decide_path(results.root, results.grid)) if results.grid else ({}, "")
    decide = state if isinstance(state, dict) else {}
    judged = judge_findings(
        results.table,
        findings,
        decide_on=str(plan.get("decide_on") or "fid"),
        replicates=results.replicates,
        max_seeds=int(decide.get("max_seeds", DEFAULT_MAX_SEEDS)),
        max_samples=int(decide.get("max_samples", DEFAULT_MAX_SAMPLES)),
    )
    return None if judged.empty else judged


def finding_blocks(
    results: Results, judged: pd.DataFrame | None, forest: Path | None
) -> list[Block]:
    """The findings the grid file names, each with its interval and verdict, the forest plot,
    and the rounds of `cfh sweep --until-decided`."""
    if judged is None:
        return []
    metric = METRIC_NAMES.get(str(judged["metric"].iloc[0]), "FID")
    blocks = [
        Block("h2", "Findings the grid tests"),
        Block("p", f"Judged on {metric} (the grid's decide_on)."),
        Block("frame", findings_view(judged), method_note(judged)),
    ]
    if forest is not None:
        caption = (
            f"Each finding's difference in {metric} (worse - better) with its 95% interval; "
            "right of 0: the finding holds; colour: the verdict."
        )
        blocks.append(Block("image", forest, caption))
    return blocks + round_blocks(results)


def round_blocks(results: Results) -> list[Block]:
    """`cfh sweep --until-decided`'s rounds (grids/<GRID>/decide.json): what each added, why."""
    state, _ = read_json(decide_path(results.root, results.grid)) if results.grid else ({}, "")
    rounds = state.get("rounds") if isinstance(state, dict) else None
    if not rounds:
        return []
    lines = []
    for r in rounds:
        for a in r.get("added", []) or [{"claim": "-", "what": "nothing", "why": "-"}]:
            lines.append(
                {
                    "round": r.get("round"),
                    "finding": a.get("claim", "-"),
                    "added": a.get("what", "-"),
                    "why": a.get("why", "-"),
                    "estimated hours": _num(a.get("hours", math.nan)),
                }
            )
    done = state.get("finished_because") or "still running"
    return [
        Block("h2", "Rounds of cfh sweep --until-decided"),
        Block(
            "p",
            f"{len(rounds)} rounds; budget {state.get('budget_hours', '-')} h of estimated "
            f"compute, {_num(state.get('spent_hours', math.nan))} h added; ended: {done}.",
        ),
        Block("frame", pd.DataFrame(lines)),
    ]


def _pm(mean: pd.Series, std: pd.Series, n: pd.Series) -> pd.Series:
    """'mean ± std (n=k)' text ('-' where there is no mean)."""
    n = n.fillna(0).astype(int)
    text = mean.map(_num) + (" ± " + std.map(_num)).where(std.notna() & (n > 1), "")
    text = text + (" (n=" + n.astype(str) + ")").where(n > 0, "")
    return text.where(mean.notna(), "-")


def _num(v: Any) -> str:
    """Two decimals, '-' for NaN."""
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.2f}"


def _fmt(v: Any) -> str:
    """Compact value text."""
    if isinstance(v, float | np.floating):
        return "-" if np.isnan(v) else f"{v:g}"
    return str(v)


def _unique_sorted(values: pd.Series) -> list:
    """Distinct values, sorted when comparable (categoricals in their own order)."""
    uniq = values.unique()
    try:
        return sorted(uniq)
    except TypeError:
        return list(uniq)
