"""Report figures (seaborn on matplotlib Figures, no pyplot state): PNG + SVG for each plot.

Every function takes the tidy results table (and the training curves where needed), writes
`<out>/<name>.png` and `.svg`, and returns the PNG path, or None when the data cannot support
the plot (e.g. no FID yet). Colours come from seaborn's colour-blind-safe palette; more than
MAX_SETTINGS training settings are cut to the best ones so legends stay readable.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never open a window (also on a login node without X)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from core.io import atomic_write_bytes  # noqa: E402
from reports.results import EVAL_KEY_COLUMNS  # noqa: E402
from reports.tables import final_evals, varying  # noqa: E402

MAX_SETTINGS = 10  # the colour-blind palette has 10 distinguishable colours
MAX_SAMPLE_ROWS = 8
PALETTE = "colorblind"


@contextmanager
def _style() -> Iterator[None]:
    """Seaborn's whitegrid look, scoped so that importing reports never changes global rcParams."""
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        yield


def save(fig: Figure, out: Path, name: str) -> Path:
    """Write `fig` as <out>/<name>.png and .svg atomically; return the PNG path."""
    out.mkdir(parents=True, exist_ok=True)
    for ext, kw in (("png", {"dpi": 100}), ("svg", {})):
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


def _eval_label(data: pd.DataFrame) -> pd.Series | None:
    """A label for eval settings other than S_eval and ckpt that vary (None when none do)."""
    cols = [c for c in varying(data, EVAL_KEY_COLUMNS) if c not in ("s_eval", "ckpt_step")]
    if not cols:
        return None
    parts = [c + "=" + data[c].astype(object).astype(str) for c in cols]
    return pd.concat(parts, axis=1).agg(", ".join, axis=1)


def _log_if_wide(ax, values: pd.Series, axis: str = "y") -> None:
    """Log scale when values span more than a factor 10 (FID from 13 to 400 is common),
    with plain tick labels (20, 50, 100) rather than powers of ten."""
    v = values[values > 0]
    if len(v) and v.max() / v.min() > 10:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
        _plain_log_ticks(ax.yaxis if axis == "y" else ax.xaxis)


def _plain_log_ticks(axis) -> None:
    """Ticks at 1-2-5 steps labelled 20, 50, 100 on a log axis."""
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    axis.set_minor_formatter(NullFormatter())


def _legend_outside(ax, title: str) -> None:
    """Move the legend right of the axes, titled, widening the figure to make room for it."""
    legend = ax.get_legend()
    if legend is None:
        return
    texts = [t.get_text() for t in legend.get_texts()] + title.split("\n")
    longest = max(map(len, texts), default=0)
    fig = ax.figure
    fig.set_figwidth(fig.get_figwidth() + 0.6 + 0.075 * longest)  # ~0.075 in per character
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1.0), title=title, frameon=False)


def _hue(data: pd.DataFrame, palette: Palette) -> dict:
    """hue arguments: the (short-labelled) settings present, in order, in their colours."""
    present = set(data["setting"])
    order = [k for k in palette.colours if k in present]
    return {"hue": "setting", "hue_order": order, "palette": {k: palette.colours[k] for k in order}}


def _s_eval_style(values: pd.Series) -> tuple[pd.Series, list[str]]:
    """S_eval as text for a `style` mapping, and its numeric order."""
    order = [f"{v:g}" for v in sorted(values.dropna().unique())]
    return values.map("{:g}".format, na_action="ignore"), order


def _s_eval_ticks(ax, values: pd.Series) -> None:
    """Log2 x axis with a tick at every evaluated S_eval."""
    ticks = sorted(values.dropna().unique())
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()


def fid_vs_s_eval(df: pd.DataFrame, out: Path, palette: Palette | None = None) -> Path | None:
    """FID against S_eval, one line per training setting (mean, band = sd over seeds)."""
    data = final_evals(df)
    if data.empty or data["s_eval"].nunique() < 2:  # one S_eval: the tables say it all
        return None
    palette = palette or setting_palette(df)
    data, note = top_settings(data, palette)
    style = _eval_label(data)
    with _style():
        fig = Figure(figsize=(6, 4.5), layout="constrained")
        ax = fig.subplots()
        sns.lineplot(
            data=data.assign(eval_setting=style) if style is not None else data,
            x="s_eval",
            y="fid",
            style="eval_setting" if style is not None else None,
            estimator="mean",
            errorbar="sd",
            marker="o",
            ax=ax,
            **_hue(data, palette),
        )
        _s_eval_ticks(ax, data["s_eval"])
        _log_if_wide(ax, data["fid"])
        ax.set(
            title=f"FID vs sampling AR steps{note}",
            xlabel="S_eval (AR steps at sampling)",
            ylabel="FID (lower is better)",
        )
        _legend_outside(ax, palette.legend_title())
        return save(fig, out, "fid_vs_s_eval")


def heatmap_s_train_s_eval(df: pd.DataFrame, out: Path) -> Path | None:
    """Mean FID heatmap, S_train (rows) x S_eval (columns); where other training settings
    vary, each cell shows the best of them (the tables have every combination)."""
    data = final_evals(df)
    if data.empty:
        return None
    per_setting = data.groupby(["s_train", "setting", "s_eval"], observed=True)["fid"].mean()
    grid = per_setting.groupby(level=["s_train", "s_eval"], observed=True).min().unstack()
    others = per_setting.reset_index().groupby("s_train", observed=True)["setting"].nunique()
    note = f" (best of up to {others.max()} settings per cell)" if others.max() > 1 else ""
    grid.columns = [f"{c:g}" for c in grid.columns]
    positive = grid.where(grid > 0)
    lo, hi = positive.min().min(), positive.max().max()
    norm = LogNorm(lo, hi) if np.isfinite([lo, hi]).all() and hi > lo else None
    with _style():
        fig = Figure(figsize=(3.0 + 1.1 * grid.shape[1], 1.6 + 0.45 * grid.shape[0]),
                     layout="constrained")  # fmt: skip
        ax = fig.subplots()
        sns.heatmap(
            grid,
            annot=True,
            fmt=".1f",
            cmap="cividis_r",  # perceptually uniform and colour-blind safe; dark = worse
            norm=norm,
            cbar_kws={"label": "mean FID (lower is better)"},
            ax=ax,
        )
        if norm is not None:
            _plain_log_ticks(ax.collections[0].colorbar.ax.yaxis)
        ax.set(
            title=f"Mean FID by S_train and S_eval{note}",
            xlabel="S_eval (AR steps at sampling)",
            ylabel="S_train (AR steps in training)",
        )
        return save(fig, out, "heatmap_s_train_s_eval")


def training_curves(
    df: pd.DataFrame, curves: pd.DataFrame, out: Path, palette: Palette | None = None
) -> Path | None:
    """Training loss vs step, and FID vs checkpoint step (mean, band = sd over seeds)."""
    runs = df[df["kind"] == "train"].drop_duplicates("signature")[["signature", "setting"]]
    loss = curves.merge(runs, on="signature") if "loss" in curves else pd.DataFrame()
    fid = df[(df["kind"] == "train") & df["fid"].notna()]
    if fid["ckpt_step"].nunique() < 2:  # one checkpoint is no curve
        fid = fid.iloc[0:0]
    if loss.empty and fid.empty:
        return None
    palette = palette or setting_palette(df)
    loss, note = top_settings(loss, palette) if not loss.empty else (loss, "")
    fid, fid_note = top_settings(fid, palette)
    with _style():
        fig = Figure(figsize=(10, 4.5), layout="constrained")
        ax_loss, ax_fid = fig.subplots(1, 2)
        if not loss.empty:
            sns.lineplot(
                data=loss, x="step", y="loss", errorbar="sd", ax=ax_loss, **_hue(loss, palette)
            )
            _log_if_wide(ax_loss, loss["loss"])
        fig.suptitle(f"Training loss and FID over training{note or fid_note}")
        ax_loss.set(
            title="Training loss",
            xlabel="training step",
            ylabel="loss (weighted MSE on noise)",
        )
        if not fid.empty:
            s_eval, s_order = _s_eval_style(fid["s_eval"])
            sns.lineplot(
                data=fid.assign(S_eval=s_eval),
                x="ckpt_step",
                y="fid",
                style="S_eval",
                style_order=s_order,
                errorbar="sd",
                marker="o",
                ax=ax_fid,
                **_hue(fid, palette),
            )
            _log_if_wide(ax_fid, fid["fid"])
        ax_fid.set(
            title="FID over training", xlabel="checkpoint step", ylabel="FID (lower is better)"
        )
        if fid.empty:  # loss curves only
            ax_fid.set_visible(False)
            _legend_outside(ax_loss, palette.legend_title())
            return save(fig, out, "training_curves")
        if ax_loss.get_legend() is not None:
            ax_loss.get_legend().remove()  # the FID panel's legend names the same settings
        _legend_outside(ax_fid, palette.legend_title("training setting / S_eval"))
        return save(fig, out, "training_curves")


def throughput_vs_params(df: pd.DataFrame, out: Path) -> Path | None:
    """Training and sampling throughput (img/s) against parameter count, runs and bench rows."""
    data = df[df["params"].notna() & (df["params"] > 0)].copy()
    if data["params"].nunique() < 2:  # one model size: no axis to plot against
        return None
    impl = data.get("impl", pd.Series(index=data.index, dtype=object)).astype(object)
    attention = data["attention"].astype(object).fillna("-").astype(str)
    data["source"] = np.where(
        data["kind"] == "bench",
        "bench " + impl.fillna("cfh").astype(str) + " (" + attention + ")",
        "training runs (" + attention + ")",
    )
    # one point per run (training) and per run x S_eval (sampling): means over eval rows
    train = (
        data[data["train_img_per_s"].notna()]
        .groupby(["source", "model", "params", "signature"], as_index=False)["train_img_per_s"]
        .mean()
    )
    sample = data[data["sample_img_per_s"].notna()]
    if train.empty and sample.empty:
        return None
    s_eval, s_order = _s_eval_style(sample["s_eval"])
    sample = sample.assign(S_eval=s_eval.fillna("-"))
    sample = sample.groupby(["source", "S_eval", "params"], as_index=False)[
        "sample_img_per_s"
    ].mean()
    with _style():
        fig = Figure(figsize=(13, 4.8), layout="constrained")
        ax_t, ax_s = fig.subplots(1, 2)
        if not train.empty:
            sns.scatterplot(
                data=train, x="params", y="train_img_per_s", hue="source", style="model",
                s=70, palette=PALETTE, ax=ax_t,
            )  # fmt: skip
            _log_if_wide(ax_t, train["train_img_per_s"])
            _legend_outside(ax_t, "source / model")
        if not sample.empty:
            sns.lineplot(
                data=sample, x="params", y="sample_img_per_s", hue="S_eval", hue_order=s_order,
                style="source", markers=True, palette=PALETTE, ax=ax_s,
            )  # fmt: skip
            _log_if_wide(ax_s, sample["sample_img_per_s"])
            _legend_outside(ax_s, "S_eval / source")
        for ax, what in ((ax_t, "training"), (ax_s, "sampling")):
            ax.set_xscale("log")
            ax.set(
                title=f"{what.capitalize()} throughput vs model size",
                xlabel="parameters (count, log scale)",
                ylabel=f"{what} throughput (images/s)",
            )
        return save(fig, out, "throughput_vs_params")


def fid_vs_cost(df: pd.DataFrame, out: Path, palette: Palette | None = None) -> Path | None:
    """FID against sampling cost with the Pareto front: left the analytic cost (network
    evaluations x tokens per evaluation), right the measured time per image."""
    data = final_evals(df)
    data = data[data["sample_cost"].notna() | data["sample_img_per_s"].notna()]
    if data.empty:
        return None
    palette = palette or setting_palette(df)
    data, note = top_settings(data, palette)
    points = data.groupby(["setting", "eval_key"], observed=True, as_index=False).agg(
        fid=("fid", "mean"),
        cost=("sample_cost", "first"),
        img_s=("sample_img_per_s", "mean"),
        s_eval=("s_eval", "first"),
    )
    points["ms_per_img"] = 1000.0 / points["img_s"]
    s_eval, s_order = _s_eval_style(points["s_eval"])
    points["S_eval"] = s_eval
    with _style():
        fig = Figure(figsize=(10, 4.8), layout="constrained")
        axes = fig.subplots(1, 2, sharey=True)
        fig.suptitle(f"FID vs sampling cost, Pareto front in black{note}")
        panels = (
            ("cost", "network evaluations x tokens per evaluation, per image"),
            ("ms_per_img", "measured sampling time per image (ms)"),
        )
        for ax, (x, label) in zip(axes, panels, strict=True):
            part = points[points[x].notna() & np.isfinite(points[x])]
            if part.empty:
                ax.set_axis_off()
                continue
            sns.scatterplot(
                data=part, x=x, y="fid", style="S_eval", style_order=s_order, s=70, ax=ax,
                **_hue(part, palette),
            )  # fmt: skip
            front = pareto_front(part, x)
            ax.plot(front[x], front["fid"], drawstyle="steps-post", color="black", lw=1.2,
                    marker="o", ms=13, mfc="none", zorder=0, label="Pareto front")  # fmt: skip
            ax.set_xscale("log")
            _plain_log_ticks(ax.xaxis)
            _log_if_wide(ax, points["fid"])
            title = "analytic cost" if x == "cost" else "measured cost"
            ax.set(title=title, xlabel=label, ylabel="FID (lower is better)")
            ax.legend().remove() if ax is axes[0] else ax.legend()
        _legend_outside(axes[1], palette.legend_title("training setting / S_eval"))
        return save(fig, out, "fid_vs_cost")


def pareto_front(points: pd.DataFrame, cost: str, value: str = "fid") -> pd.DataFrame:
    """Points that no cheaper-or-equal point beats (lower `value` is better), by cost."""
    ordered = points.sort_values([cost, value])
    return ordered[ordered[value] < ordered[value].cummin().shift(fill_value=np.inf)]


def sample_grids(df: pd.DataFrame, out: Path, palette: Palette | None = None) -> Path | None:
    """One row of sample grids per run (first seed of each shown setting), one per S_eval."""
    palette = palette or setting_palette(df)
    runs = df[(df["kind"] == "train") & (df["state"] == "completed")]
    runs = top_settings(runs, palette)[0]
    runs = runs.sort_values(["s_train", "setting", "seed"]).drop_duplicates("setting")
    panels = []
    for run in runs.itertuples():
        found = _run_sample_grids(Path(run.run_dir))
        if found:
            panels.append((f"{run.setting} (seed {run.seed:g})", found))
        if len(panels) == MAX_SAMPLE_ROWS:
            break
    if not panels:
        return None
    s_evals = sorted({s for _, found in panels for s in found})[:4]
    from PIL import Image

    with Image.open(next(iter(panels[0][1].values()))) as first:
        aspect = first.height / max(first.width, 1)  # panels shaped like the sample grids
    with _style():
        width = 4.5  # large enough to see digits (an 8x8 sample is 40 px across)
        fig = Figure(
            figsize=(width * len(s_evals) + 1.5, (width * aspect + 0.7) * len(panels) + 0.6),
            layout="constrained",
        )
        axes = np.atleast_2d(fig.subplots(len(panels), len(s_evals), squeeze=False))
        for r, (label, found) in enumerate(panels):
            for c, s in enumerate(s_evals):
                ax = axes[r, c]
                ax.set_xticks([]), ax.set_yticks([])
                ax.grid(False)
                for side in ax.spines.values():
                    side.set_visible(False)
                if s in found:
                    with Image.open(found[s]) as im:
                        im.thumbnail((640, 640))
                        ax.imshow(np.asarray(im.convert("RGB")))
                        _class_ticks(ax, found[s], im.width)
                ax.set_title(f"S_eval={s:g}" if r == 0 else "", fontsize=9)
            axes[r, 0].text(
                -0.05, 0.5, label, transform=axes[r, 0].transAxes, ha="right", va="center",
                fontsize=8, wrap=True,
            )  # fmt: skip
        common = f"\nall: {palette.common}" if palette.common else ""
        fig.suptitle(f"Samples per run (final checkpoint){common}")
        return save(fig, out, "samples")


def _class_ticks(ax, grid: Path, width: int, ncol: int = 10) -> None:
    """Label the columns of a sample grid with the classes of its first row (samples.npz)."""
    try:
        with np.load(grid.parent / "samples.npz") as f:
            labels = f["labels"][:ncol]
    except (OSError, KeyError, ValueError):
        return
    step = width / ncol
    ax.set_xticks([(i + 0.5) * step for i in range(len(labels))])
    ax.set_xticklabels([str(int(v)) for v in labels], fontsize=7)
    ax.set_xlabel("requested class of each sample in the first row", fontsize=7)


def _run_sample_grids(run_dir: Path) -> dict[float, Path]:
    """{S_eval: grid.png} of a run's latest-checkpoint samples folders."""
    import json

    best: dict[float, tuple[int, Path]] = {}
    for grid in run_dir.glob("samples/*/grid.png"):
        try:
            meta = json.loads((grid.parent / "settings.json").read_text())
            settings = meta.get("settings", meta)
            s, step = float(settings["s_eval"]), int(settings.get("ckpt_step") or 0)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if s not in best or step > best[s][0]:
            best[s] = (step, grid)
    return {s: p for s, (_, p) in best.items()}


def all_plots(df: pd.DataFrame, curves: pd.DataFrame, out: str | Path) -> dict[str, Path]:
    """Write every plot the data supports; {name: png path}."""
    out = Path(out)
    palette = setting_palette(df)
    made = {
        "fid_vs_s_eval": fid_vs_s_eval(df, out, palette),
        "heatmap_s_train_s_eval": heatmap_s_train_s_eval(df, out),
        "training_curves": training_curves(df, curves, out, palette),
        "throughput_vs_params": throughput_vs_params(df, out),
        "fid_vs_cost": fid_vs_cost(df, out, palette),
        "samples": sample_grids(df, out, palette),
    }
    return {k: v for k, v in made.items() if v is not None}
