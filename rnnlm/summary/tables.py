"""Group runs, aggregate over seeds, pick the best setting by validation, format.

Grouping keys are, unless given, the config keys whose values differ between
runs, except BOOKKEEPING_KEYS (settings that do not define an experiment).
Numeric grouping keys are "rates"; the others (kind, mask, dataset, ...) define
a "variant". A group's ``n`` counts its completed runs that have the selection
metric; means and sample stds (ddof=1, NaN for n=1) are over those runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype

from .runs import is_missing, same_value

# Config keys that never define an experiment, so never auto-group: the seed is
# what we average over; the rest only say where/how a run was executed.
BOOKKEEPING_KEYS = (
    "seed",
    "resume",
    "device",
    "threads",
    "dataset.path",
    "dataset.cache_dir",
    "trainer.progress",
    "trainer.max_minutes",
)
FORMATS = ("markdown", "csv", "latex")
DASH = {"markdown": "—", "latex": "---", "csv": ""}


@dataclass(frozen=True)
class Metric:
    """A validation/test pair: select on ``val``, report ``test`` at that choice.

    ``val``/``test`` are result.csv columns; ``val_stem``/``test_stem`` name the
    summary columns (``<stem>_mean``, ``<stem>_std``); ``curve`` is the
    metrics.csv column used for learning curves.
    """

    name: str
    val: str
    test: str
    val_stem: str
    test_stem: str
    label: str
    curve: str
    digits: int


PPL = Metric("ppl", "best_val_ppl", "test_ppl", "val_ppl", "test_ppl", "perplexity", "val_ppl", 2)
LOSS = Metric("loss", "best_val_loss", "test_loss", "val_loss", "test_loss", "loss (nats/token)", "val_loss", 4)
MC_PPL = Metric(
    "mc_ppl", "mc_val_ppl", "mc_test_ppl", "mc_val_ppl", "mc_test_ppl", "MC-dropout perplexity", "val_ppl", 2
)
METRICS = (PPL, LOSS, MC_PPL)
METRIC_NAMES = tuple(dict.fromkeys(n for m in METRICS for n in (m.name, m.val, m.test, m.val_stem, m.test_stem)))


def resolve_metric(name: str) -> Metric:
    """The pair that ``name`` (pair name or either column of it) belongs to."""
    return next(m for m in METRICS if name in (m.name, m.val, m.test, m.val_stem, m.test_stem))


def _values(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame:
        return pd.Series(float("nan"), index=frame.index)
    return pd.to_numeric(frame[column], errors="coerce")


def reported_metrics(frame: pd.DataFrame, metric: Metric) -> list[Metric]:
    """The selected pair, then the other perplexity pairs that any run reports."""
    others = [m for m in (PPL, MC_PPL) if m != metric and _values(frame, m.val).notna().any()]
    return [metric, *others]


def usable(frame: pd.DataFrame, metric: Metric) -> pd.Series:
    """Runs that enter the statistics: completed and with a validation value."""
    return (frame["status"] == "completed") & _values(frame, metric.val).notna()


def not_summarised(frame: pd.DataFrame, used: pd.Series, metric: Metric) -> pd.DataFrame:
    """status, run_dir and note of every run left out of the statistics."""
    left = frame.loc[~used, ["status", "run_dir", "note"]].copy()
    completed = left["status"] == "completed"
    left.loc[completed, "note"] = f"no {metric.val}"
    return left.reset_index(drop=True)


def grouping_keys(frame: pd.DataFrame, candidates: Iterable[str]) -> list[str]:
    """Candidates (minus bookkeeping) that take more than one value across runs."""
    return [
        k
        for k in candidates
        if k in frame and k not in BOOKKEEPING_KEYS and frame[k].astype(str).nunique() > 1
    ]


def split_keys(frame: pd.DataFrame, keys: Iterable[str]) -> tuple[list[str], list[str]]:
    """(variant keys, rate keys): rates are the numeric non-boolean keys."""
    keys = list(keys)
    rates = [k for k in keys if is_numeric_dtype(frame[k]) and not is_bool_dtype(frame[k])]
    return [k for k in keys if k not in rates], rates


def _groups(frame: pd.DataFrame, keys: list[str]) -> Iterator[tuple[tuple, pd.DataFrame]]:
    if not keys:
        yield (), frame
        return
    yield from frame.groupby(keys, dropna=False, sort=False)


def _stats(runs: pd.DataFrame, metric: Metric) -> dict[str, float]:
    stats = {}
    for stem, column in ((metric.val_stem, metric.val), (metric.test_stem, metric.test)):
        values = _values(runs, column)
        stats[f"{stem}_mean"] = values.mean()
        stats[f"{stem}_std"] = values.std(ddof=1)
    return stats


def _sort(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    if not keys:
        return table.reset_index(drop=True)

    def key(column: pd.Series) -> pd.Series:
        return column if is_numeric_dtype(column) else column.astype(str)

    return table.sort_values(keys, key=key, na_position="last", kind="stable").reset_index(drop=True)


def summarise(frame: pd.DataFrame, used: pd.Series, keys: list[str], metrics: list[Metric]) -> pd.DataFrame:
    """One row per group of ``frame`` (all runs, so empty groups show n=0).

    Statistics only use the rows where ``used`` is true.
    """
    rows = []
    for values, group in _groups(frame, keys):
        runs = group[used.loc[group.index]]
        row: dict[str, Any] = dict(zip(keys, values))
        row["n"] = len(runs)
        for metric in metrics:
            row.update(_stats(runs, metric))
        rows.append(row)
    return _sort(pd.DataFrame(rows), keys)


def best_by_validation(summary: pd.DataFrame, variant_keys: list[str], metric: Metric) -> pd.DataFrame:
    """Per variant, the group with the lowest MEAN validation value.

    Test values are only reported at that choice, never used to select. A tie
    goes to the group listed first (the lowest rate).
    """
    column = f"{metric.val_stem}_mean"
    ranked = summary[(summary["n"] > 0) & summary[column].notna()]
    if not variant_keys:
        return ranked.loc[[ranked[column].idxmin()]].reset_index(drop=True)
    best = ranked.groupby(variant_keys, dropna=False, sort=False)[column].idxmin()
    return _sort(ranked.loc[best.to_numpy()], variant_keys)


def runs_in(frame: pd.DataFrame, row: pd.Series, keys: list[str]) -> pd.DataFrame:
    """The runs of ``frame`` whose ``keys`` equal those of a summary ``row``."""
    keep = pd.Series(True, index=frame.index)
    for key in keys:
        keep &= frame[key].map(lambda v, want=row[key]: same_value(v, want)).astype(bool)
    return frame[keep]


def _display_value(value: Any, missing: str) -> str:
    if is_missing(value):
        return missing
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _display(table: pd.DataFrame, metrics: list[Metric], fmt: str) -> pd.DataFrame:
    """Strings for printing: fixed decimals per metric, the dash for missing values."""
    digits = {
        f"{stem}_{stat}": m.digits for m in metrics for stem in (m.val_stem, m.test_stem) for stat in ("mean", "std")
    }
    shown = pd.DataFrame(index=table.index)
    for column in table.columns:
        if column in digits:
            shown[column] = [DASH[fmt] if is_missing(v) else f"{v:.{digits[column]}f}" for v in table[column]]
        else:
            shown[column] = [_display_value(v, "null") for v in table[column]]
    return shown


def format_table(table: pd.DataFrame, metrics: list[Metric], fmt: str) -> str:
    """``table`` as markdown, csv (raw numbers, empty for missing) or LaTeX."""
    if fmt == "csv":
        return table.to_csv(index=False)
    shown = _display(table, metrics, fmt)
    n_keys = list(table.columns).index("n")
    if fmt == "markdown":
        align = ["left"] * n_keys + ["right"] * (len(table.columns) - n_keys)
        return shown.to_markdown(index=False, disable_numparse=True, colalign=align) + "\n"
    return shown.to_latex(index=False, escape=True, column_format="l" * n_keys + "r" * (len(table.columns) - n_keys))


def heading(text: str, fmt: str) -> str:
    """A one-line caption in the syntax of ``fmt``."""
    prefix = {"markdown": "### ", "csv": "# ", "latex": "% "}[fmt]
    return f"{prefix}{text}\n"
