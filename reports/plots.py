"""Report figures (seaborn on matplotlib Figures, no pyplot state): PNG + SVG for each plot.

Every function takes the tidy results table (and the training curves where needed), writes
`<out>/<name>.png` and `.svg`, and returns the PNG path, or None when the data cannot support
the plot (e.g. no FID yet). Colours come from seaborn's colour-blind-safe palette; more than
MAX_SETTINGS training settings are cut to the best ones so legends stay readable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from reports import plot_style as ps  # sets the file-only backend before any figure
from reports.plot_style import MAX_SETTINGS, PALETTE, Palette
from reports.tables import final_evals

__all__ = ["MAX_SETTINGS", "all_plots", "pareto_front"]
MAX_SAMPLE_ROWS = 8


def fid_vs_s_eval(df: pd.DataFrame, out: Path, palette: Palette | None = None) -> Path | None:
    """FID against S_eval, one line per training setting (mean, band = sd over seeds)."""
    data = final_evals(df)
    if data.empty or data["s_eval"].nunique() < 2:  # one S_eval: the tables say it all
        return None
    palette = palette or ps.setting_palette(df)
    data, note = ps.top_settings(data, palette)
    style = ps.eval_label(data)
    with ps.seaborn_style():
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
            **ps.hue(data, palette),
        )
        ps.s_eval_ticks(ax, data["s_eval"])
        ps.log_if_wide(ax, data["fid"])
        ax.set(
            title=f"FID vs sampling AR steps{note}",
            xlabel="S_eval (AR steps at sampling)",
            ylabel="FID (lower is better)",
        )
        ps.legend_outside(ax, palette.legend_title())
        return ps.save(fig, out, "fid_vs_s_eval")


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
    with ps.seaborn_style():
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
            ps.plain_log_ticks(ax.collections[0].colorbar.ax.yaxis)
        ax.set(
            title=f"Mean FID by S_train and S_eval{note}",
            xlabel="S_eval (AR steps at sampling)",
            ylabel="S_train (AR steps in training)",
        )
        return ps.save(fig, out, "heatmap_s_train_s_eval")


def training_curves(
    df: pd.DataFrame, curves: pd.DataFrame, out: Path, palette: Palette | None = None
) -> Path | None:
    """Training loss vs step, and FID vs checkpoint step (mean, band = sd over seeds) of the runs
    with two or more checkpoints evaluated (one checkpoint is no curve). Saved as
    `training_curves`, or as `training_loss` when no run has an FID curve (loss only)."""
    runs = df[df["kind"] == "train"].drop_duplicates("signature")[["signature", "setting"]]
    loss = curves.merge(runs, on="signature") if "loss" in curves else pd.DataFrame()
    fid = df[(df["kind"] == "train") & df["fid"].notna()]
    fid = fid[fid.groupby("signature")["ckpt_step"].transform("nunique") >= 2]
    if loss.empty and fid.empty:
        return None
    palette = palette or ps.setting_palette(df)
    loss, note = ps.top_settings(loss, palette) if not loss.empty else (loss, "")
    fid, fid_note = ps.top_settings(fid, palette)
    with ps.seaborn_style():
        fig = Figure(figsize=(10, 4.5), layout="constrained")
        ax_loss, ax_fid = fig.subplots(1, 2)
        if not loss.empty:
            sns.lineplot(
                data=loss, x="step", y="loss", errorbar="sd", ax=ax_loss, **ps.hue(loss, palette)
            )
            ps.log_if_wide(ax_loss, loss["loss"])
        what = "Training loss" if fid.empty else "Training loss and FID"
        fig.suptitle(f"{what} over training{note or fid_note}")
        ax_loss.set(
            title="Training loss",
            xlabel="training step",
            ylabel="loss (weighted MSE on noise)",
        )
        if not fid.empty:
            s_eval, s_order = ps.s_eval_style(fid["s_eval"])
            sns.lineplot(
                data=fid.assign(S_eval=s_eval),
                x="ckpt_step",
                y="fid",
                style="S_eval",
                style_order=s_order,
                errorbar="sd",
                marker="o",
                ax=ax_fid,
                **ps.hue(fid, palette),
            )
            ps.log_if_wide(ax_fid, fid["fid"])
        ax_fid.set(
            title="FID over training", xlabel="checkpoint step", ylabel="FID (lower is better)"
        )
        if fid.empty:  # loss curves only
            ax_fid.set_visible(False)
            ps.legend_outside(ax_loss, palette.legend_title())
            return ps.save(fig, out, "training_loss")
        if ax_loss.get_legend() is not None:
            ax_loss.get_legend().remove()  # the FID panel's legend names the same settings
        ps.legend_outside(ax_fid, palette.legend_title("training setting / S_eval"))
        return ps.save(fig, out, "training_curves")


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
    s_eval, s_order = ps.s_eval_style(sample["s_eval"])
    sample = sample.assign(S_eval=s_eval.fillna("-"))
    sample = sample.groupby(["source", "S_eval", "params"], as_index=False)[
        "sample_img_per_s"
    ].mean()
    with ps.seaborn_style():
        fig = Figure(figsize=(13, 4.8), layout="constrained")
        ax_t, ax_s = fig.subplots(1, 2)
        if not train.empty:
            sns.scatterplot(
                data=train, x="params", y="train_img_per_s", hue="source", style="model",
                s=70, palette=PALETTE, ax=ax_t,
            )  # fmt: skip
            ps.log_if_wide(ax_t, train["train_img_per_s"])
            ps.legend_outside(ax_t, "source / model")
        if not sample.empty:
            sns.lineplot(
                data=sample, x="params", y="sample_img_per_s", hue="S_eval", hue_order=s_order,
                style="source", markers=True, palette=PALETTE, ax=ax_s,
            )  # fmt: skip
            ps.log_if_wide(ax_s, sample["sample_img_per_s"])
            ps.legend_outside(ax_s, "S_eval / source")
        for ax, what in ((ax_t, "training"), (ax_s, "sampling")):
            ax.set_xscale("log")
            ax.set(
                title=f"{what.capitalize()} throughput vs model size",
                xlabel="parameters (count, log scale)",
                ylabel=f"{what} throughput (images/s)",
            )
        if not sample.empty:  # a measured rate: it moves with whatever else the machine runs
            ax_s.set_title("Sampling throughput vs model size (measured: moves with machine load)")
        return ps.save(fig, out, "throughput_vs_params")


def fid_vs_cost(df: pd.DataFrame, out: Path, palette: Palette | None = None) -> Path | None:
    """FID against sampling cost with the Pareto front: left the token evaluations (network
    evaluations x tokens per evaluation), right the analytic sampling FLOPs per image (model
    size included). Both are computed, not timed: a measured img/s moves with the machine's
    load (the same settings measured 4x apart on a shared machine), so it stays in the tables."""
    data = final_evals(df)
    data = data[data["sample_cost"].notna() | data["sample_flops"].notna()]
    if data.empty:
        return None
    palette = palette or ps.setting_palette(df)
    data, note = ps.top_settings(data, palette)
    points = data.groupby(["setting", "eval_key"], observed=True, as_index=False).agg(
        fid=("fid", "mean"),
        cost=("sample_cost", "first"),
        gflops=("sample_flops", "first"),
        s_eval=("s_eval", "first"),
    )
    points["gflops"] /= 1e9
    s_eval, s_order = ps.s_eval_style(points["s_eval"])
    points["S_eval"] = s_eval
    with ps.seaborn_style():
        fig = Figure(figsize=(10, 4.8), layout="constrained")
        axes = fig.subplots(1, 2, sharey=True)
        fig.suptitle(f"FID vs sampling cost, Pareto front in black{note}")
        panels = (
            ("cost", "network evaluations x tokens per evaluation, per image"),
            ("gflops", "sampling GFLOPs per image (analytic, incl. model size)"),
        )
        for ax, (x, label) in zip(axes, panels, strict=True):
            part = points[points[x].notna() & np.isfinite(points[x])]
            if part.empty:
                ax.set_axis_off()
                continue
            sns.scatterplot(
                data=part, x=x, y="fid", style="S_eval", style_order=s_order, s=70, ax=ax,
                **ps.hue(part, palette),
            )  # fmt: skip
            front = pareto_front(part, x)
            ax.plot(front[x], front["fid"], drawstyle="steps-post", color="black", lw=1.2,
                    marker="o", ms=13, mfc="none", zorder=0, label="Pareto front")  # fmt: skip
            ax.set_xscale("log")
            ps.plain_log_ticks(ax.xaxis)
            ps.log_if_wide(ax, points["fid"])
            title = "token evaluations" if x == "cost" else "sampling FLOPs"
            ax.set(title=title, xlabel=label, ylabel="FID (lower is better)")
            ax.legend().remove() if ax is axes[0] else ax.legend()
        ps.legend_outside(axes[1], palette.legend_title("training setting / S_eval"))
        return ps.save(fig, out, "fid_vs_cost")


def pareto_front(points: pd.DataFrame, cost: str, value: str = "fid") -> pd.DataFrame:
    """Points that no cheaper-or-equal point beats (lower `value` is better), by cost."""
    ordered = points.sort_values([cost, value])
    return ordered[ordered[value] < ordered[value].cummin().shift(fill_value=np.inf)]


def sample_grids(df: pd.DataFrame, out: Path, palette: Palette | None = None) -> Path | None:
    """One row of sample grids per run (first seed of each shown setting), one per S_eval."""
    palette = palette or ps.setting_palette(df)
    runs = df[(df["kind"] == "train") & (df["state"] == "completed")]
    runs = ps.top_settings(runs, palette)[0]
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
    with ps.seaborn_style():
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
        return ps.save(fig, out, "samples")


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
    palette = ps.setting_palette(df)
    made = {
        "fid_vs_s_eval": fid_vs_s_eval(df, out, palette),
        "heatmap_s_train_s_eval": heatmap_s_train_s_eval(df, out),
        "training_curves": training_curves(df, curves, out, palette),  # or training_loss
        "throughput_vs_params": throughput_vs_params(df, out),
        "fid_vs_cost": fid_vs_cost(df, out, palette),
        "samples": sample_grids(df, out, palette),
    }
    return {v.stem: v for v in made.values() if v is not None}  # the file says what it shows
