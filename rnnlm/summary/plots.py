"""Figures for ``rnnlm summary --plot``: metric vs rate, and learning curves.

Uses matplotlib's object API (``Figure`` renders with the Agg canvas), so no
pyplot state or GUI backend is involved. One panel per dataset; a variant keeps
its colour in every panel and figure.
"""

from __future__ import annotations

import io

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from ..atomic import atomic_write
from .runs import UNREAD, read_metrics
from .tables import Metric, text

DATASET_KEY = "dataset.name"
PANEL_WIDTH, PANEL_HEIGHT, LEGEND_WIDTH, MIN_WIDTH = 5.0, 3.6, 3.6, 6.5  # inches
STAR = {"marker": "*", "markerfacecolor": "none", "linestyle": "none"}  # the best-by-validation mark


def labels(table: pd.DataFrame, keys: list[str]) -> pd.Series:
    """``kind=variational, rate=0.2`` per row: each key by its last dotted part where unambiguous;
    a setting the run does not read (UNREAD, e.g. the mask of ``kind=none``) is left out."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    names = [s if last.count(s) == 1 else k for k, s in zip(keys, last)]
    rows = zip(*(table[k] for k in keys)) if keys else [()] * len(table)
    return pd.Series([", ".join(f"{n}={text(v)}" for n, v in zip(names, row) if v != UNREAD) or "all runs"
                      for row in rows], index=table.index, dtype=object)


def _colours(lines: pd.Series) -> dict[str, tuple]:
    unique = sorted(set(lines))
    palette = colormaps["tab10" if len(unique) <= 10 else "tab20"]
    return {label: palette(i % palette.N) for i, label in enumerate(unique)}


def _panels(table: pd.DataFrame, variant_keys: list[str], dataset: str) -> list[tuple[str, pd.DataFrame]]:
    """(dataset, rows) per panel; one panel named ``dataset`` without a dataset key."""
    if DATASET_KEY not in variant_keys:
        return [(dataset, table)]
    return list(table.groupby(table[DATASET_KEY].astype(str), sort=True))


def _finish(ax: Axes, log: bool, top: float | None = None) -> None:
    """Grid, or "no values" on an empty panel; cut the y axis at ``top`` if given and below the
    highest value; log scale with plain-number ticks if ``log`` and the range spans > 1.5x."""
    ax.grid(True, which="major", alpha=0.3)
    low, high = ax.dataLim.y0, ax.dataLim.y1
    if not (ax.has_data() and np.isfinite([low, high]).all()):
        ax.text(0.5, 0.5, "no values", transform=ax.transAxes, ha="center", va="center", color="0.4")
        ax.set_xticks([])
        ax.set_yticks([])
        return
    if top is not None and low < top < high:
        high = top
        ax.set_ylim(low - 0.02 * (high - low), high)
    if log and low > 0 and high / low > 1.5:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5) if high / low > 5 else range(1, 10)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())


def _save(fig: Figure, path: Path) -> Path:
    """``fig`` as a PNG of 256 palette colours (Pillow's median cut): a third of the size of
    matplotlib's RGBA file, for figures that are committed beside a study's runs."""
    from PIL import Image

    def write(tmp: str) -> None:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=120)
        buffer.seek(0)
        with Image.open(buffer) as image:
            palette = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
            palette.save(tmp, format="PNG", optimize=True)

    atomic_write(path, write)
    return path


def plot_rate(
    summary: pd.DataFrame, best: pd.DataFrame, variant_keys: list[str], rate_keys: list[str], metric: Metric,
    path: Path, dataset: str = "",
) -> Path:
    """Validation (top) and test (bottom) ``metric`` vs rate, mean ± std, per variant.

    ``dataset`` names the single panel when the datasets are not a grouping key.
    The x axis is the rate key with most values; other rate keys join the line
    label. A hollow star marks each variant's best-by-validation setting.
    """
    x_key = max(rate_keys, key=lambda k: summary[k].nunique())
    line_keys = [k for k in variant_keys if k != DATASET_KEY] + [k for k in rate_keys if k != x_key]
    shown = summary[summary["n"] > 0]
    shown = shown.assign(line=labels(shown, line_keys), best=labels(shown, variant_keys + rate_keys).isin(
        labels(best, variant_keys + rate_keys))).sort_values(x_key)
    colours, panels = _colours(shown["line"]), _panels(shown, variant_keys, dataset)
    fig = Figure(figsize=(PANEL_WIDTH * len(panels) + LEGEND_WIDTH, PANEL_HEIGHT * 2 + 0.6),
                 layout="constrained")
    axes = fig.subplots(2, len(panels), squeeze=False, sharex=True)
    for row, (split, stem) in enumerate(zip(("validation", "test"), metric.columns)):
        for ax, (name, rows) in zip(axes[row], panels):
            for label, line in rows.groupby("line", sort=True):
                ax.errorbar(line[x_key], line[f"{stem}_mean"], yerr=line[f"{stem}_std"].fillna(0), marker="o",
                            markersize=4, capsize=3, color=colours[label], label=label)
                chosen = line[line["best"]]
                ax.plot(chosen[x_key], chosen[f"{stem}_mean"], color=colours[label], markersize=14, **STAR)
            _finish(ax, log=metric.name != "loss")
            ax.set(title=f"{name}: {split}" if name else split, xlabel=x_key if row else "",
                   ylabel=f"{split} {metric.label}")
    handles = {label: h for ax in axes.flat for h, label in zip(*ax.get_legend_handles_labels())}
    handles["best by validation"] = Line2D([], [], color="0.2", markersize=12, **STAR)
    fig.legend(handles.values(), handles, loc="outside right center", fontsize="small", frameon=False)
    fig.suptitle(f"{metric.label} vs {x_key}\nmean ± std over seeds")
    return _save(fig, path)


def curve_stats(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per ``setting`` of ``runs`` and epoch: mean, std (ddof=1) and number of runs of
    ``column`` in their metrics.csv, up to the setting's shortest run.

    Epochs are the metrics.csv rows in order (a repeated (stage, epoch), e.g. after a
    resume, keeps its last row), so a finetune stage continues the axis.
    """
    curves = []
    for run, (run_dir, setting) in enumerate(zip(runs["run_dir"], runs["setting"])):
        metrics = read_metrics(run_dir)
        if metrics is not None and column in metrics:
            value = pd.to_numeric(metrics[column], errors="coerce").to_numpy()
            curves.append(pd.DataFrame({"setting": setting, "run": run, "epoch": range(1, len(value) + 1),
                                        "value": value}))
    if not curves:
        return pd.DataFrame(columns=["setting", "epoch", "mean", "std", "runs"])
    curves = pd.concat(curves)
    shortest = curves.groupby(["setting", "run"]).size().groupby("setting").min()
    curves = curves[curves["epoch"] <= curves["setting"].map(shortest)]
    return curves.groupby(["setting", "epoch"], as_index=False).agg(
        mean=("value", "mean"), std=("value", "std"), runs=("run", "nunique"))


def plot_curves(
    runs: pd.DataFrame, best: pd.DataFrame, variant_keys: list[str], rate_keys: list[str], metric: Metric,
    path: Path, dataset: str = "",
) -> Path | None:
    """Validation ``metric.curve`` vs epoch for each variant's best setting.

    Mean line and ±std band over the seeds (``runs``: the summarised runs); a
    perplexity axis stops just above the highest mean + std of the later half of the epochs
    (:func:`_late_top`), so early spikes do not squash the epochs where variants part.
    Returns None when no run of a best setting has a usable metrics.csv.
    """
    keys = variant_keys + rate_keys
    best = best.assign(setting=labels(best, keys), rates=labels(best, rate_keys),
                       line=labels(best, [k for k in variant_keys if k != DATASET_KEY]))
    runs = runs.assign(setting=labels(runs, keys))
    stats = curve_stats(runs[runs["setting"].isin(best["setting"])], metric.curve)
    if stats.empty:
        return None
    colours, panels = _colours(best["line"]), _panels(best, variant_keys, dataset)
    size = (max(PANEL_WIDTH * len(panels), MIN_WIDTH), PANEL_HEIGHT + 0.2 * len(best) / len(panels))
    fig = Figure(figsize=size, layout="constrained")
    is_ppl = metric.curve.endswith("ppl")
    for ax, (name, panel) in zip(fig.subplots(1, len(panels), squeeze=False).flat, panels):
        for row in panel.sort_values("line").itertuples():
            curve = stats[stats["setting"] == row.setting]
            if curve.empty:
                continue
            count = curve["runs"].iloc[0]
            n_runs = f"{count} run{'s' if count != 1 else ''}"
            label = f"{row.line} ({row.rates}; {n_runs})" if rate_keys else f"{row.line} ({n_runs})"
            ax.plot(curve["epoch"], curve["mean"], color=colours[row.line], label=label, linewidth=1.5,
                    marker="o" if len(curve) <= 30 else None, markersize=3)
            band = curve["std"].fillna(0)
            ax.fill_between(curve["epoch"], curve["mean"] - band, curve["mean"] + band,
                            color=colours[row.line], alpha=0.2, linewidth=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _finish(ax, log=is_ppl, top=_late_top(stats[stats["setting"].isin(panel["setting"])]) if is_ppl else None)
        ax.set(title=name, xlabel="epoch",
               ylabel="validation perplexity" if is_ppl else "validation loss (nats/token)")
        if ax.has_data():
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize="small", frameon=False)
    capped = "; y axis cut above the later half of training" if is_ppl else ""
    fig.suptitle(f"learning curves at each variant's best setting\nmean ± std over seeds{capped}")
    return _save(fig, path)


def _late_top(curves: pd.DataFrame) -> float | None:
    """A y limit showing every curve's later half: the highest mean + std over the epochs past
    the middle of each curve, plus 5 %, and never above twice the lowest mean."""
    if curves.empty:
        return None
    late = curves[curves["epoch"] > curves.groupby("setting")["epoch"].transform("max") / 2]
    high = (late["mean"] + late["std"].fillna(0)).max()
    low = curves["mean"].min()
    return float(min(1.05 * high, 2 * low)) if np.isfinite([high, low]).all() else None


VERDICT_COLOURS = {"lower": "tab:green", "higher": "tab:red", "within": "tab:blue"}  # else grey: unresolved


def _verdict_colour(verdict: str) -> str:
    return VERDICT_COLOURS.get(str(verdict).split(" ")[0], "0.5")


def plot_diff(summary: pd.DataFrame, keys: list[str], metric: Metric, baseline: list[str], path: Path,
              dataset: str = "") -> Path:
    """Each group's difference from the baseline (``rnnlm summary --baseline``), validation
    (left) and test (right), in points (the baseline's geometric mean x (ratio - 1)), with its
    simultaneous interval (:mod:`rnnlm.summary.compare`) as a bar.

    Green: the interval lies below zero (the group is better on a perplexity or a loss),
    red: above; blue: inside the equivalence margin; grey: unresolved; a hollow marker
    without a bar: no interval.
    """
    rows = summary[(summary["n"] > 0) & (summary[f"{metric.val}_verdict"] != "baseline")]
    rows = rows.assign(label=labels(rows, keys)).sort_values(f"{metric.val}_diff", ascending=False)
    height = max(2.5, 0.35 * len(rows) + 1.4)
    fig = Figure(figsize=(2 * PANEL_WIDTH + 2.5, height), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True, squeeze=False)[0]
    y = np.arange(len(rows))
    for ax, split, stem in zip(axes, ("validation", "test"), metric.columns):
        ax.axvline(0.0, color="0.3", linewidth=1, label="baseline")
        for yi, row in zip(y, rows.itertuples(index=False)):
            diff, low, high = (getattr(row, f"{stem}_{s}") for s in ("diff", "low", "high"))
            colour = _verdict_colour(getattr(row, f"{stem}_verdict"))
            if np.isfinite([low, high]).all():
                ax.errorbar(diff, yi, xerr=[[diff - low], [high - diff]], fmt="o", color=colour, capsize=3)
            else:
                ax.plot(diff, yi, "o", markerfacecolor="none", color=colour)
        ax.set_yticks(y, rows["label"])
        ax.grid(True, axis="x", alpha=0.3)
        ax.set(title=split, xlabel=f"{split} {metric.label}: group − baseline")
    where = f"{dataset}: " if dataset else ""
    method = str(summary["method"].iloc[0]) if "method" in summary and len(summary) else ""
    fig.suptitle(f"{where}difference from the baseline ({', '.join(baseline)}), {method}\n"
                 "95% simultaneous (max-t) intervals over seeds; green/red: the interval excludes 0; "
                 "blue: inside the margin; hollow: no interval")
    return _save(fig, path)
