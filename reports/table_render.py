"""One table as the report shows it: aligned mean/std/count frames, each column's better
direction and best cells marked, written as markdown, LaTeX or HTML."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

# Column -> (plain/markdown label, LaTeX label).
LABELS = {
    "s_train": ("S_train", r"$S_\mathrm{train}$"),
    "s_eval": ("S_eval", r"$S_\mathrm{eval}$"),
    "decay": ("decay", "decay"),
    "train_order": ("token order", "token order"),
    "eval_order": ("sampling order", "sampling order"),
    "ar_weighting": ("AR weighting", "AR weighting"),
    "noise_weighting": ("noise weighting", "noise weighting"),
    "model": ("model", "model"),
    "dataset": ("dataset", "dataset"),
    "cfg": ("CFG", "CFG"),
    "sampler_steps": ("sampler steps", "sampler steps"),
    "num_samples": ("samples", "samples"),
    "train_steps": ("train steps", "train steps"),
    "batch_size": ("batch", "batch"),
    "sampler": ("sampler", "sampler"),
    "extractor": ("extractor", "extractor"),
    "task": ("task", "task"),
    "cfg_interval": ("CFG interval", "CFG interval"),
    "attention": ("attention", "attention"),
    "precision": ("precision", "precision"),
    "impl": ("implementation", "implementation"),
}
# Metric -> which direction is better.
BETTER = {
    "fid": "min",
    "fid_inf": "min",
    "kid": "min",
    "precision": "max",
    "recall": "max",
    "class_acc": "max",
    "cider": "max",
    "bleu4": "max",
    "rouge_l": "max",
    "caption_acc": "max",
    "train_img_per_s": "max",
    "sample_img_per_s": "max",
    "mfu": "max",
    "peak_mem_mb": "min",
}


BOOT_MARK = "*"  # marks a ± that is FID's sampling bootstrap std, not a spread over seeds
ROW_MARK = "†"  # marks a row's best cell (bold marks a column's best)


@dataclass
class Table:
    """Aligned mean/std/count frames of one table, with the better direction of each column."""

    name: str
    title: str
    mean: pd.DataFrame
    std: pd.DataFrame
    count: pd.DataFrame
    better: dict = field(default_factory=dict)  # column -> "min" | "max" | None
    decimals: dict = field(default_factory=dict)  # column -> digits (default 2)
    exact: tuple = ()  # columns that do not vary over seeds (params, FLOPs): no "± 0"
    note: str = ""
    boot: pd.DataFrame | None = None  # FID's sampling bootstrap std (mean over seeds)
    context: str = ""  # what the FIDs were measured with (fid_context)
    row_best: bool = False  # also mark each row's best (S_train x S_eval: the best S_eval)
    remark: str = ""  # a last caption part (e.g. which columns move with the machine's load)

    def caption(self) -> str:
        """What the numbers are, then how cells are aggregated."""
        parts = (self.context, self.note or self.seeds_note(), self.remark)
        return "; ".join(p for p in parts if p)

    def legend(self) -> str:
        """The line under a table that says what its marks mean ('' when it marks nothing)."""
        rows, cols = self.best_mask().to_numpy().any(), self.row_best_mask().to_numpy().any()
        if not (rows or cols):
            return ""
        ways = set(self.better.values())
        what = (
            {"min": " (lowest)", "max": " (highest)"}.get(ways.pop(), "") if len(ways) == 1 else ""
        )
        row_name = "/".join(_name(n, "plain") for n in self.mean.index.names if n is not None)
        col_name = "/".join(_name(n, "plain") for n in self.mean.columns.names if n is not None)
        parts = []
        if rows:
            parts.append(f"bold: best {row_name or 'row'} in each column{what}")
        if cols:
            parts.append(f"{ROW_MARK}: best {col_name or 'column'} in each row{what}")
        return "; ".join(parts)

    def best_mask(self) -> pd.DataFrame:
        """True where a cell holds its column's best mean (ties all marked)."""
        mask = pd.DataFrame(False, index=self.mean.index, columns=self.mean.columns)
        for col in self.mean.columns:
            way = self.better.get(col)
            values = self.mean[col]
            if way not in ("min", "max") or values.notna().sum() < 2:
                continue  # nothing to compare against
            best = values.min() if way == "min" else values.max()
            mask[col] = np.isclose(values, best, rtol=0, atol=1e-12) & values.notna()
        return mask

    def row_best_mask(self) -> pd.DataFrame:
        """True where a cell holds its row's best mean, among the columns that differ only in
        the first column level (S_eval); all False unless `row_best`."""
        mask = pd.DataFrame(False, index=self.mean.index, columns=self.mean.columns)
        ways = {self.better.get(c) for c in self.mean.columns}
        if not self.row_best or len(ways) != 1 or not ways <= {"min", "max"}:
            return mask
        cols = self.mean.columns
        groups = (
            cols.droplevel(0).to_flat_index() if cols.nlevels > 1 else [()] * len(cols)
        )  # the other eval settings: compared within, never across
        for group in dict.fromkeys(groups):
            part = self.mean.loc[:, [g == group for g in groups]]
            if part.shape[1] < 2:
                continue
            best = part.min(axis=1) if ways == {"min"} else part.max(axis=1)
            hit = np.isclose(part.to_numpy(), best.to_numpy()[:, None], rtol=0, atol=1e-12)
            mask.loc[:, part.columns] = hit & part.notna().to_numpy()
        return mask

    def cells(self, pm: str = " ± ") -> pd.DataFrame:
        """'mean ± std' strings: the std over training seeds where a cell has several, else
        FID's sampling bootstrap std marked with BOOT_MARK; the mean alone when neither exists,
        '-' for no data."""
        out = pd.DataFrame("", index=self.mean.index, columns=self.mean.columns, dtype=object)
        for col in self.mean.columns:
            d = self.decimals.get(col, 2)
            m, s, n = self.mean[col], self.std[col], self.count[col]
            text = m.map(lambda v, d=d: f"{v:,.{d}f}", na_action="ignore")
            spread = s.map(lambda v, d=d: f"{pm}{v:,.{d}f}", na_action="ignore")
            show = (n > 1) & s.notna() & (col not in self.exact)
            text = text + spread.where(show, "")
            if self.boot is not None and col in self.boot:
                b = self.boot[col]
                boot = b.map(lambda v, d=d: f"{pm}{v:,.{d}f}{BOOT_MARK}", na_action="ignore")
                text = text + boot.where(~show & b.notna() & m.notna(), "")
            out[col] = text.fillna("-")
        return out

    def seeds_note(self) -> str:
        """How many seeds each cell averages."""
        n = self.count.to_numpy(dtype=float)
        n = n[np.isfinite(n) & (n > 0)]
        if n.size == 0:
            return "no data"
        lo, hi = int(n.min()), int(n.max())
        boot = self.boot is not None and self.boot.notna().to_numpy().any()
        sampling = f"; {BOOT_MARK}: sampling bootstrap std of one seed's FID" if boot else ""
        if hi == 1:
            return f"single seed per cell{sampling}" if boot else "single seed per cell, no std"
        seeds = f"{lo}" if lo == hi else f"{lo}-{hi}"
        return f"mean ± std over {seeds} training seeds{sampling}"

    def _frame(self, fmt: str) -> pd.DataFrame:
        """Cell strings with labelled rows and columns for `fmt` (markdown | latex | html)."""
        cells = self.cells(" $\\pm$ " if fmt == "latex" else " ± ")
        cells.columns = column_labels(self.mean.columns, fmt)
        cells.index = cells.index.set_names([_name(n, fmt) for n in cells.index.names])
        return cells

    def _marked(self, fmt: str) -> pd.DataFrame:
        """_frame with each row's best marked by ROW_MARK ($^\\dagger$ in LaTeX)."""
        cells = self._frame(fmt)
        mark = "$^\\dagger$" if fmt == "latex" else ROW_MARK
        row = self.row_best_mask().to_numpy() & (cells != "-").to_numpy()
        return cells.mask(row, cells + mark)

    def to_markdown(self) -> str:
        """A GitHub markdown table; the best of each column in bold, of each row with †."""
        cells = self._marked("markdown")
        bold = self.best_mask().to_numpy()
        cells = cells.mask(bold & (cells != "-"), "**" + cells + "**")
        body = cells.reset_index().to_markdown(index=False, disable_numparse=True)
        legend = f"\n*{self.legend()}*\n" if self.legend() else ""
        return f"**{self.title}** ({self.caption()})\n\n{body}\n{legend}"

    def to_latex(self) -> str:
        """A booktabs LaTeX table; the best of each column in \\textbf, of each row with a
        dagger."""
        cells = self._marked("latex")
        bold = self.best_mask().to_numpy()
        styler = cells.style.apply(
            lambda _: np.where(bold, "textbf:--rwrap;", ""), axis=None
        ).format_index(escape="latex", axis=0)
        legend = f"; {self.legend()}" if self.legend() else ""
        caption = f"{self.title} ({self.caption()}{legend})".replace(ROW_MARK, "$^\\dagger$")
        return styler.to_latex(
            hrules=True,
            caption=caption.replace("±", "$\\pm$").replace("_", "\\_"),
            label=f"tab:{self.name}",
            position_float="centering",
            multirow_align="t",
        )

    def to_html(self) -> str:
        """An HTML table (for the self-contained report); the best of each column in bold, of
        each row with †; the legend under it."""
        cells = self._marked("html")
        bold = self.best_mask().to_numpy()
        styler = cells.style.apply(lambda _: np.where(bold, "font-weight: bold", ""), axis=None)
        legend = f"<p><em>{html.escape(self.legend())}</em></p>" if self.legend() else ""
        return styler.set_caption(f"{self.title} ({self.caption()})").to_html() + legend


def _name(col: Any, fmt: str) -> str:
    """Display name of a column or index level."""
    plain, latex = LABELS.get(col, (str(col), str(col).replace("_", "\\_")))
    return latex if fmt == "latex" else plain


def column_labels(columns: pd.Index, fmt: str) -> list[str]:
    """Flat column labels: 'S_eval=1', 'S_eval=1, CFG=1.5', or a metric's own label."""
    names = columns.names
    out = []
    for key in columns:
        key = key if isinstance(key, tuple) else (key,)
        if names == [None]:
            out.append(str(key[0]))
            continue
        out.append(
            ", ".join(f"{_name(n, fmt)}={value_text(v)}" for n, v in zip(names, key, strict=True))
        )
    return out


def value_text(v: Any) -> str:
    """Compact text of a level value."""
    return f"{v:g}" if isinstance(v, float | np.floating) else str(v)
