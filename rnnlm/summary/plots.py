"""Figures for ``rnnlm summary --plot``.

Uses matplotlib's object API (``Figure`` renders with the Agg canvas), so no
pyplot state or GUI backend is involved. One panel per dataset; a variant keeps
its colour in every panel and figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from ..atomic import atomic_write
from .runs import load_metrics, same_value
from .tables import Metric, runs_in

DATASET_KEY = "dataset.name"
PANEL_WIDTH, PANEL_HEIGHT, LEGEND_WIDTH, MIN_WIDTH = 5.0, 3.6, 3.6, 6.5  # inches


def _short_names(keys: list[str]) -> dict[str, str]:
    """Last dotted part of each key, or the full key where that is ambiguous."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: s if last.count(s) == 1 else k for k, s in zip(keys, last)}


def _label(row: pd.Series, keys: list[str]) -> str:
    names = _short_names(keys)
    parts = [f"{names[k]}={row[k]:g}" if isinstance(row[k], float) else f"{names[k]}={row[k]}" for k in keys]
    return ", ".join(parts) or "all runs"


def _colours(labels: list[str]) -> dict[str, Any]:
    unique = sorted(set(labels))
    palette = colormaps["tab10" if len(unique) <= 10 else "tab20"]
    return {label: palette(i % palette.N) for i, label in enumerate(unique)}


def _panels(table: pd.DataFrame, variant_keys: list[str], dataset: str) -> list[tuple[str, pd.DataFrame]]:
    """(dataset, rows) per panel; one panel named ``dataset`` without a dataset key."""
    if DATASET_KEY not in variant_keys:
        return [(dataset, table)]
    names = sorted(table[DATASET_KEY].astype(str).unique())
    return [(name, table[table[DATASET_KEY].astype(str) == name]) for name in names]


def _figure(rows: int, cols: int) -> tuple[Figure, np.ndarray]:
    size = (PANEL_WIDTH * cols + LEGEND_WIDTH, PANEL_HEIGHT * rows + 0.6)
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False, sharex=True)


def _mark_empty(ax: Axes) -> None:
    ax.text(0.5, 0.5, "no values", transform=ax.transAxes, ha="center", va="center", color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _style_y(ax: Axes, log: bool, top_ratio: float | None = None) -> None:
    """Grid; cap the y axis at ``top_ratio`` x the lowest value if given; log scale
    with plain-number ticks if ``log`` and the shown range spans more than 1.5x."""
    ax.grid(True, which="major", alpha=0.3)
    low, high = ax.dataLim.y0, ax.dataLim.y1
    if not (ax.has_data() and np.isfinite([low, high]).all()):
        return
    if top_ratio and low > 0 and high > top_ratio * low:
        high = top_ratio * low
        ax.set_ylim(low - 0.02 * (high - low), high)
    if log and low > 0 and high / low > 1.5:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5) if high / low > 5 else range(1, 10)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())


def _legend(fig: Figure, axes: np.ndarray, extra: list[Line2D]) -> None:
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    for handle in extra:
        handles[handle.get_label()] = handle
    fig.legend(list(handles.values()), list(handles), loc="outside right center", fontsize="small", frameon=False)


def _save(fig: Figure, path: Path) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    return path


def _is_best(rows: pd.DataFrame, best: pd.DataFrame, keys: list[str]) -> list[bool]:
    return [
        any(all(same_value(row[k], b[k]) for k in keys) for _, b in best.iterrows()) for _, row in rows.iterrows()
    ]


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
    shown = summary[summary["n"] > 0].copy()
    shown["line"] = [_label(row, line_keys) for _, row in shown.iterrows()]
    shown["best"] = _is_best(shown, best, variant_keys + rate_keys)
    colours = _colours(list(shown["line"]))
    panels = _panels(shown, variant_keys, dataset)
    fig, axes = _figure(2, len(panels))
    for row, (split, stem) in enumerate((("validation", metric.val_stem), ("test", metric.test_stem))):
        for col, (name, rows) in enumerate(panels):
            ax = axes[row, col]
            for label, line in rows.groupby("line", sort=True):
                _rate_line(ax, line.sort_values(x_key), x_key, stem, colours[label], label)
            if not ax.has_data():
                _mark_empty(ax)
            _style_y(ax, log=metric.name != "loss")
            ax.set_title(f"{name}: {split}" if name else split)
            ax.set_xlabel(x_key if row == 1 else "")
            ax.set_ylabel(f"{split} {metric.label}")
    star = Line2D([], [], marker="*", markersize=12, markerfacecolor="none", color="0.2", linestyle="none",
                  label="best by validation")
    _legend(fig, axes, [star])
    fig.suptitle(f"{metric.label} vs {x_key}\nmean ± std over seeds")
    return _save(fig, path)


def _rate_line(ax: Axes, line: pd.DataFrame, x_key: str, stem: str, colour: Any, label: str) -> None:
    mean, std = line[f"{stem}_mean"], line[f"{stem}_std"].fillna(0)
    ax.errorbar(line[x_key], mean, yerr=std, marker="o", markersize=4, capsize=3, color=colour, label=label)
    chosen = line[line["best"]]
    ax.plot(chosen[x_key], chosen[f"{stem}_mean"], marker="*", markersize=14, markerfacecolor="none",
            color=colour, linestyle="none")


def curve_stats(run_dirs: list[str], column: str) -> pd.DataFrame | None:
    """Per-epoch mean and std (ddof=1) of ``column`` over runs, up to the shortest run.

    Epochs are the metrics.csv rows in order (a repeated (stage, epoch), e.g.
    after a resume, keeps its last row), so a finetune stage continues the axis.
    """
    series = []
    for run_dir in run_dirs:
        metrics = load_metrics(Path(run_dir))
        if metrics is None or column not in metrics:
            continue
        if {"stage", "epoch"} <= set(metrics.columns):
            metrics = metrics.drop_duplicates(["stage", "epoch"], keep="last")
        series.append(pd.to_numeric(metrics[column], errors="coerce").to_numpy())
    length = min((len(s) for s in series), default=0)
    if length == 0:
        return None
    values = np.stack([s[:length] for s in series])
    std = values.std(axis=0, ddof=1) if len(series) > 1 else np.full(length, np.nan)
    return pd.DataFrame({"epoch": np.arange(1, length + 1), "mean": values.mean(axis=0), "std": std,
                         "runs": len(series)})


def plot_curves(
    runs: pd.DataFrame, best: pd.DataFrame, variant_keys: list[str], rate_keys: list[str], metric: Metric,
    path: Path, dataset: str = "",
) -> Path | None:
    """Validation ``metric.curve`` vs epoch for each variant's best setting.

    Mean line and ±std band over the seeds (``runs``: the summarised runs); a
    perplexity axis stops at twice the lowest value so the final epochs stay legible.
    Returns None when no run of a best setting has a usable metrics.csv.
    """
    line_keys = [k for k in variant_keys if k != DATASET_KEY]
    rows = best.assign(line=[_label(row, line_keys) for _, row in best.iterrows()])
    colours = _colours(list(rows["line"]))
    panels = _panels(rows, variant_keys, dataset)
    size = (max(PANEL_WIDTH * len(panels), MIN_WIDTH), PANEL_HEIGHT + 0.2 * len(rows) / len(panels))
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)
    drawn = False
    for ax, (name, panel) in zip(axes.flat, panels):
        for _, row in panel.sort_values("line").iterrows():
            stats = curve_stats(list(runs_in(runs, row, variant_keys + rate_keys)["run_dir"]), metric.curve)
            if stats is not None:
                _curve_line(ax, stats, colours[row["line"]], _curve_label(row, rate_keys, stats))
                drawn = True
        _curve_axes(ax, name, metric)
    if not drawn:
        return None
    capped = "; y axis capped at 2× the lowest value" if metric.curve.endswith("ppl") else ""
    fig.suptitle(f"learning curves at each variant's best setting\nmean ± std over seeds{capped}")
    return _save(fig, path)


def _curve_axes(ax: Axes, dataset: str, metric: Metric) -> None:
    is_ppl = metric.curve.endswith("ppl")
    _style_y(ax, log=is_ppl, top_ratio=2 if is_ppl else None)
    ax.set_title(dataset)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("validation perplexity" if is_ppl else "validation loss (nats/token)")
    if ax.has_data():
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize="small", frameon=False)
    else:
        _mark_empty(ax)


def _curve_label(row: pd.Series, rate_keys: list[str], stats: pd.DataFrame) -> str:
    runs = f"{stats['runs'].iloc[0]} runs"
    return f"{row['line']} ({_label(row, rate_keys)}; {runs})" if rate_keys else f"{row['line']} ({runs})"


def _curve_line(ax: Axes, stats: pd.DataFrame, colour: Any, label: str) -> None:
    ax.plot(stats["epoch"], stats["mean"], color=colour, label=label, linewidth=1.5,
            marker="o" if len(stats) <= 30 else None, markersize=3)
    band = stats["std"].fillna(0)
    ax.fill_between(stats["epoch"], stats["mean"] - band, stats["mean"] + band, color=colour, alpha=0.2,
                    linewidth=0)
