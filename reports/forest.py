"""The findings' forest plot: each difference with its 95% interval against zero, by verdict."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from reports import plot_style as ps  # sets the file-only backend before any figure

VERDICT_COLORS = {
    "holds": "#0072B2",
    "contradicted": "#D55E00",
    "undecided": "#999999",
    "not measured": "#DDDDDD",
}


def forest_plot(judged: pd.DataFrame, out: Path, metric: str = "FID") -> Path | None:
    """One row per finding: difference (worse - better) and its interval, 0 marked; None when
    no finding was measured."""
    if judged.empty or not judged["difference"].notna().any():
        return None
    rows = judged.iloc[::-1].reset_index(drop=True)  # the first finding on top
    labels = [textwrap.shorten(str(c), 56, placeholder="...") for c in rows["claim"]]
    with ps.seaborn_style():
        fig = Figure(figsize=(9.5, 1.2 + 0.42 * len(rows)), layout="constrained")
        ax = fig.subplots()
        ax.axvline(0, color="black", lw=1)
        for i, r in rows.iterrows():
            color = VERDICT_COLORS.get(r["verdict"], "#999999")
            if np.isfinite(r["lo"]) and np.isfinite(r["hi"]):
                ax.plot([r["lo"], r["hi"]], [i, i], color=color, lw=2.5, solid_capstyle="butt")
            if np.isfinite(r["difference"]):
                ax.plot(r["difference"], i, "o", color=color, ms=6)
        ax.set_yticks(range(len(rows)), labels)
        handles = [
            ax.plot([], [], "o-", color=c, label=v)[0]
            for v, c in VERDICT_COLORS.items()
            if v in set(rows["verdict"])
        ]
        ax.legend(handles=handles, loc="lower right", fontsize=8, frameon=True)
        ax.set(
            title=f"{metric}: worse - better, 95% interval",
            xlabel=f"{metric} difference (> 0: the finding holds)",
        )
        return ps.save(fig, out, "findings_forest")
