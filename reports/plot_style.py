"""The report plots' shared look: seaborn style, files, the colour of each training setting,
legends and log axes."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never open a window (also on a login node without X)

import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from core.io import atomic_write_bytes  # noqa: E402
from reports.columns import EVAL_KEY_COLUMNS  # noqa: E402
from reports.tables import final_evals, varying  # noqa: E402

FORMATS: ContextVar[tuple[str, ...]] = ContextVar("plot_formats", default=("png", "svg"))
MAX_SETTINGS = 10  # the colour-blind palette has 10 distinguishable colours
PALETTE = "colorblind"


@contextmanager
def seaborn_style() -> Iterator[None]:
    """Seaborn's whitegrid look, scoped so that importing reports never changes global rcParams."""
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        yield


@contextmanager
def png_only() -> Iterator[None]:
    """Plots saved in this block are PNG only (`cfh report --publish`)."""
    token = FORMATS.set(("png",))
    try:
        yield
    finally:
        FORMATS.reset(token)


def save(fig: Figure, out: Path, name: str) -> Path:
    """Write `fig` as <out>/<name>.png and .svg (PNG only under png_only) atomically; return
    the PNG path."""
    out.mkdir(parents=True, exist_ok=True)
    for ext in FORMATS.get():
        kw = {"dpi": 100} if ext == "png" else {}
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, **kw)  # constrained layout: no second "tight" draw
        atomic_write_bytes(out / f"{name}.{ext}", buf.getvalue())
        fig.set_layout_engine("none")  # text layout dominates: keep the first draw's layout
    return out / f"{name}.png"


@dataclass
class Palette:
    """The training settings the plots show: short legend labels (the parts they share are
    said once, in `common`) and one fixed colour each, the same in every plot."""

    short: dict[str, str]  # full setting label -> legend label
    colours: dict[str, tuple]  # legend label -> colour
    common: str = ""
    total: int = 0  # settings in the data, shown or not

    def legend_title(self, what: str = "training setting") -> str:
        """Legend title naming what the shown settings share."""
        return f"{what}\n(all: {self.common})" if self.common else what


def setting_palette(df: pd.DataFrame, limit: int = MAX_SETTINGS) -> Palette:
    """Colours for the training settings the plots show: all of them when there are at most
    `limit`, else the `limit` best by mean final FID over eval settings."""
    train = df[df["kind"] == "train"]
    names = list(dict.fromkeys(train.sort_values(["s_train", "setting"])["setting"].dropna()))
    total = len(names)
    scored = final_evals(df)
    if len(names) > limit and not scored.empty:
        best = set(scored.groupby("setting")["fid"].mean().nsmallest(limit).index)
        names = [n for n in names if n in best]
    names = names[:limit]
    parts = [n.split(", ") for n in names]
    shared = [p for p in parts[0] if all(p in q for q in parts)] if len(parts) > 1 else []
    short = {
        n: ", ".join(x for x in p if x not in shared) or n
        for n, p in zip(names, parts, strict=True)
    }
    colours = sns.color_palette(PALETTE, n_colors=max(len(names), 1))
    return Palette(
        short=short,
        colours=dict(zip(short.values(), colours, strict=False)),
        common=", ".join(shared),
        total=total,
    )


def top_settings(data: pd.DataFrame, palette: Palette) -> tuple[pd.DataFrame, str]:
    """The rows of the shown settings, labelled short; a title note when some were left out."""
    kept = data[data["setting"].isin(list(palette.short))]
    kept = kept.assign(setting=kept["setting"].map(palette.short))
    shown = len(palette.short)
    note = (
        f" (best {shown} of {palette.total} settings by mean FID)" if shown < palette.total else ""
    )
    return kept, note


def eval_label(data: pd.DataFrame) -> pd.Series | None:
    """A label for eval settings other than S_eval and ckpt that vary (None when none do)."""
    cols = [c for c in varying(data, EVAL_KEY_COLUMNS) if c not in ("s_eval", "ckpt_step")]
    if not cols:
        return None
    parts = [c + "=" + data[c].astype(object).astype(str) for c in cols]
    return pd.concat(parts, axis=1).agg(", ".join, axis=1)


def log_if_wide(ax, values: pd.Series, axis: str = "y") -> None:
    """Log scale when values span more than a factor 10 (FID from 13 to 400 is common),
    with plain tick labels (20, 50, 100) rather than powers of ten."""
    v = values[values > 0]
    if len(v) and v.max() / v.min() > 10:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
        plain_log_ticks(ax.yaxis if axis == "y" else ax.xaxis)


def plain_log_ticks(axis) -> None:
    """Ticks at 1-2-5 steps labelled 20, 50, 100 on a log axis."""
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    axis.set_minor_formatter(NullFormatter())


def legend_outside(ax, title: str) -> None:
    """Move the legend right of the axes, titled, widening the figure to make room for it."""
    legend = ax.get_legend()
    if legend is None:
        return
    texts = [t.get_text() for t in legend.get_texts()] + title.split("\n")
    longest = max(map(len, texts), default=0)
    fig = ax.figure
    fig.set_figwidth(fig.get_figwidth() + 0.6 + 0.075 * longest)  # ~0.075 in per character
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1.0), title=title, frameon=False)


def hue(data: pd.DataFrame, palette: Palette) -> dict:
    """hue arguments: the (short-labelled) settings present, in order, in their colours."""
    present = set(data["setting"])
    order = [k for k in palette.colours if k in present]
    return {"hue": "setting", "hue_order": order, "palette": {k: palette.colours[k] for k in order}}


def s_eval_style(values: pd.Series) -> tuple[pd.Series, list[str]]:
    """S_eval as text for a `style` mapping, and its numeric order."""
    order = [f"{v:g}" for v in sorted(values.dropna().unique())]
    return values.map("{:g}".format, na_action="ignore"), order


def s_eval_ticks(ax, values: pd.Series) -> None:
    """Log2 x axis with a tick at every evaluated S_eval."""
    ticks = sorted(values.dropna().unique())
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
