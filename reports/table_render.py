"""One table as the report shows it: aligned mean/std/count frames, each column's better
direction and best cells marked, written as markdown, LaTeX or HTML."""

from __future__ import annotations

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

    def caption(self) -> str:
        """What the numbers are, then how cells are aggregated."""
        return "; ".join(p for p in (self.context, self.note or self.seeds_note()) if p)

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

    def to_markdown(self) -> str:
        """A GitHub markdown table; the best of each column in bold."""
        cells = self._frame("markdown")
        bold = self.best_mask().to_numpy()
        cells = cells.mask(bold & (cells != "-"), "**" + cells + "**")
        body = cells.reset_index().to_markdown(index=False, disable_numparse=True)
        return f"**{self.title}** ({self.caption()})\n\n{body}\n"

    def to_latex(self) -> str:
        """A booktabs LaTeX table; the best of each column in \\textbf."""
        cells = self._frame("latex")
        bold = self.best_mask().to_numpy()
        styler = cells.style.apply(
            lambda _: np.where(bold, "textbf:--rwrap;", ""), axis=None
        ).format_index(escape="latex", axis=0)
        caption = f"{self.title} ({self.caption()})"
        return styler.to_latex(
            hrules=True,
            caption=caption.replace("±", "$\\pm$").replace("_", "\\_"),
            label=f"tab:{self.name}",
            position_float="centering",
            multirow_align="t",
        )

    def to_html(self) -> str:
        """An HTML table (for the self-contained report); the best of each column in bold."""
        cells = self._frame("html")
        bold = self.best_mask().to_numpy()
        styler = cells.style.apply(lambda _: np.where(bold, "font-weight: bold", ""), axis=None)
        return styler.set_caption(f"{self.title} ({self.caption()})").to_html()


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
