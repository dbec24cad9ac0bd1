"""Metrics; group runs, aggregate over seeds, pick the best setting by validation, format.

Grouping keys are, unless given, the config keys whose values differ between
runs, except BOOKKEEPING_KEYS (settings that do not define an experiment).
Runs are one group where their keys' values print alike (:func:`group_ids`).
Numeric grouping keys are "rates"; the others (kind, mask, dataset, ...) define
a "variant". A group's ``n`` counts its completed runs that have the selection
metric; means and sample stds (ddof=1, NaN for n=1) are over those runs.
"""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype

from .runs import eval_pair, is_missing

# Config keys that never define an experiment, so never auto-group: the seed and the
# random streams' seeds are what we average over; the rest only say where/how a run was
# executed. A key also covers the keys below it (``logger``: which trackers watched a run).
BOOKKEEPING_KEYS = ("seed", "seeds", "resume", "device", "threads", "dataset.path", "dataset.cache_dir",
                    "trainer.progress", "trainer.max_minutes", "trainer.compile", "logger")
FORMATS = ("markdown", "csv", "latex")
DASH = {"markdown": "—", "latex": "---", "csv": ""}


class Metric(NamedTuple):
    """A validation/test pair of run columns: select on ``val``, report ``test`` at that choice.

    The summary names its columns ``<column>_mean`` and ``<column>_std``; ``curve`` is the metrics.csv column of the learning curves. A pair with a
    ``method`` is filled from the run's ``rnnlm eval`` rows (:func:`.runs.eval_pair`); a run
    without them is left out of the statistics like a run without a validation value.
    """

    name: str
    val: str
    test: str
    label: str
    curve: str = "val_ppl"
    digits: int = 2
    method: str = ""

    @property
    def columns(self) -> tuple[str, str]:
        """The run columns of the validation and the test value."""
        return self.val, self.test


EVAL_LABELS = {"standard": "perplexity (rnnlm eval)", "mc_eval": "MC-dropout perplexity (rnnlm eval)",
               "pointer": "perplexity with cache pointer", "dynamic": "perplexity with dynamic evaluation"}
METRICS = (
    # val_ppl / val_loss: the validation of the weights the test used (runs.tested_validation)
    Metric("ppl", "val_ppl", "test_ppl", "perplexity"),
    Metric("loss", "val_loss", "test_loss", "loss (nats/token)", "val_loss", 4),
    Metric("mc_ppl", "mc_val_ppl", "mc_test_ppl", "MC-dropout perplexity"),
    # ``mc_eval``: eval.csv's method ``mc``, as ``mc_ppl`` already names result.csv's MC pair
    *(Metric(f"{p}_ppl", f"{p}_val_ppl", f"{p}_test_ppl", label, method=p.removesuffix("_eval"))
      for p, label in EVAL_LABELS.items()),
)
PPL, LOSS, MC_PPL = METRICS[:3]
# --metric NAME: a pair's name or either of its columns -> the pair
METRIC_OF = {n: m for m in METRICS for n in (m.name, m.val, m.test)}


def with_metrics(frame: pd.DataFrame, metric: Metric) -> pd.DataFrame:
    """``frame`` with every metric column as numbers (NaN where missing or not a number); the
    ``rnnlm eval`` pairs are first filled from each run's eval.csv."""
    for m in METRICS:
        if m.method:
            pairs = [eval_pair(d, m.method) for d in frame["run_dir"]]
            frame = frame.assign(**{m.val: [v for v, _ in pairs], m.test: [t for _, t in pairs]})
    columns = dict.fromkeys(c for m in METRICS for c in m.columns)
    return frame.assign(**{c: pd.to_numeric(frame[c], errors="coerce") if c in frame else np.nan
                           for c in columns})


def select_runs(frame: pd.DataFrame, metric: Metric) -> tuple[pd.Series, pd.DataFrame]:
    """(used, left): which runs enter the statistics (completed and with a validation value),
    and status, run_dir and note of every run left out.

    A run a search's pruner stopped is left out as ``pruned`` (its status as :func:`~rnnlm.summary.runs.load_runs`
    reads it, :func:`~rnnlm.results.columns.current_status`): its validation figure is an
    early epoch's, not a finished run's, so it would flatter or sink its group's mean."""
    status = frame["status"]
    used = (status == "completed") & frame[metric.val].notna()
    left = frame.loc[~used, ["run_dir", "note"]].assign(status=status[~used])[["status", "run_dir", "note"]]
    note = left["note"].mask(left["status"] == "completed", f"no {metric.val}")
    epochs = pd.to_numeric(frame["epochs_run"], errors="coerce") if "epochs_run" in frame else None
    for i in left.index[left["status"] == "pruned"]:
        after = "" if epochs is None or is_missing(epochs[i]) else f" after epoch {epochs[i]:g}"
        note[i] = f"stopped by the search's pruner{after}; not tested"
    return used, left.assign(note=note).reset_index(drop=True)


def reported_metrics(frame: pd.DataFrame, metric: Metric) -> list[Metric]:
    """The selected pair, then the other perplexity pairs of which any run reports either value
    (e.g. an MC-dropout test perplexity that ``rnnlm eval`` computed on the test split only)."""
    return [metric, *(m for m in METRICS if m not in (metric, LOSS)
                      and (frame[m.val].notna().any() or frame[m.test].notna().any()))]


def is_bookkeeping(key: str) -> bool:
    return any(key == b or key.startswith(f"{b}.") for b in BOOKKEEPING_KEYS)


def split_keys(frame: pd.DataFrame, config_keys: Iterable[str], group_by: list[str] | None):
    """(variant keys, rate keys) of ``group_by`` or else of the config keys (minus bookkeeping)
    that take more than one value across runs; rates are the numeric non-boolean keys."""
    keys = group_by or [k for k in config_keys if k in frame and not is_bookkeeping(k)
                        and frame[k].astype(str).nunique() > 1]
    rates = [k for k in keys if is_numeric_dtype(frame[k]) and not is_bool_dtype(frame[k])]
    return [k for k in keys if k not in rates], rates


def group_ids(table: pd.DataFrame, keys: list[str]) -> pd.Series:
    """Each row's group: the tuple of its ``keys`` values as :func:`text` shows them (a float
    to 6 significant digits, a missing value as ``null``); ``()`` for every row without keys.

    This is the one rule by which the summary table, best-by-validation and the baseline
    comparison put runs together. It groups on the shown value, not the raw one, because two
    rates that print alike are one setting to a researcher: a rate that a search or an
    arithmetic override wrote as 0.30000001 and the 0.3 typed for another run train the same
    model to well within seed noise, and grouping them apart would give two table rows that
    read ``0.3`` with half the seeds each. Rates that differ within 6 significant digits
    (0.2345 and 0.2346) stay apart."""
    rows = zip(*(table[k] for k in keys)) if keys else [()] * len(table)
    return pd.Series([tuple(text(v) for v in row) for row in rows], index=table.index, dtype=object)


def _shown_value(value: Any) -> Any:
    """A key's value as its group is shown: a float rounded as :func:`text` prints it, so a
    group's key column holds the same value whichever of its runs comes first."""
    return float(text(value)) if isinstance(value, float) and not is_missing(value) else value


def _group_keys(frame: pd.DataFrame, keys: list[str], ids: pd.Series) -> pd.DataFrame:
    """One row per group of ``ids`` (in order of first appearance): its ``keys`` values."""
    first = frame.loc[~ids.duplicated().to_numpy(), keys]
    return first.apply(lambda c: c.map(_shown_value)).reset_index(drop=True)


def _sort(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    if keys:
        table = table.sort_values(keys, key=lambda c: c if is_numeric_dtype(c) else c.astype(str),
                                  na_position="last", kind="stable")
    return table.reset_index(drop=True)


def summarise(frame: pd.DataFrame, used: pd.Series, keys: list[str], metrics: list[Metric]) -> pd.DataFrame:
    """One row per group of ``frame`` (all runs, so a group without usable runs shows n=0);
    the statistics only use the runs where ``used`` is true. A reported column that no used
    run has (e.g. an MC validation perplexity where only the test split was scored) is left
    out; the selected pair (``metrics[0]``) always stays. A reported column's mean is over the
    runs that have it, and ``<column>_n`` counts them where that is not all of a group's runs."""
    data = frame[[col for m in metrics for col in m.columns]].where(used)
    kept = [col for i, m in enumerate(metrics) for col in m.columns if i == 0 or data[col].notna().any()]
    stats = {f"{col}_{stat}": (col, stat) for col in kept for stat in ("mean", "std", "count")}
    ids = group_ids(frame, keys)
    table = data.assign(n=used.astype(int)).groupby(ids, sort=False).agg(n=("n", "sum"), **stats)
    # A reported pair's own count (<col>_n) is shown where it is not every used run of a group.
    for col in kept:
        counts = table.pop(f"{col}_count")
        if col not in metrics[0].columns and (counts != table["n"]).any():
            table.insert(table.columns.get_loc(f"{col}_std") + 1, f"{col}_n", counts.astype(int))
    return _sort(pd.concat([_group_keys(frame, keys, ids), table.reset_index(drop=True)], axis=1), keys)


def best_by_validation(summary: pd.DataFrame, variant_keys: list[str], metric: Metric) -> pd.DataFrame:
    """Per variant, the group with the lowest MEAN validation value.

    Test values are only reported at that choice, never used to select. A tie
    goes to the group listed first (the lowest rate).
    """
    column = f"{metric.val}_mean"
    ranked = summary[(summary["n"] > 0) & summary[column].notna()]
    best = ranked.groupby(group_ids(ranked, variant_keys), sort=False)[column].idxmin()
    return _sort(ranked.loc[best.to_numpy()], variant_keys)


def text(value: Any) -> str:
    """A key's value as shown in tables and plot labels."""
    return "null" if is_missing(value) else f"{value:g}" if isinstance(value, float) else str(value)


def _p_value(value: Any) -> str:
    return "" if is_missing(value) else "<0.001" if value < 0.001 else f"{value:.3f}"


def format_table(table: pd.DataFrame, metrics: list[Metric], fmt: str) -> str:
    """``table`` as markdown, csv (raw numbers, empty for missing) or LaTeX with fixed
    decimals per metric and a dash for a missing statistic."""
    if fmt == "csv":
        return table.to_csv(index=False)
    digits = {f"{stem}_{stat}": m.digits for m in metrics for stem in m.columns
              for stat in ("mean", "std", "diff")}
    p_values = {f"{stem}_p" for m in metrics for stem in m.columns}
    shown = table.apply(lambda c: c.map(lambda v: DASH[fmt] if is_missing(v) else f"{v:.{digits[c.name]}f}")
                        if c.name in digits else c.map(_p_value) if c.name in p_values else c.map(text))
    for stem in (c for m in metrics for c in m.columns):
        if f"{stem}_low" in table:  # a baseline comparison: the interval joins the difference
            interval = [f" [{lo:+.{digits[stem + '_diff']}f}, {hi:+.{digits[stem + '_diff']}f}]"
                        if not (is_missing(lo) or is_missing(hi)) else ""
                        for lo, hi in zip(table[f"{stem}_low"], table[f"{stem}_high"])]
            shown[f"{stem}_diff"] = [d if is_missing(v) else f"{v:+.{digits[stem + '_diff']}f}{i}"
                                     for d, v, i in zip(shown[f"{stem}_diff"], table[f"{stem}_diff"], interval)]
            shown = shown.drop(columns=[f"{stem}_low", f"{stem}_high"])
    keys = list(shown.columns).index("n")  # key columns left-aligned, statistics right-aligned
    align = "l" * keys + "r" * (len(shown.columns) - keys)
    if fmt == "markdown":
        colalign = ["left" if a == "l" else "right" for a in align]
        return shown.to_markdown(index=False, disable_numparse=True, colalign=colalign) + "\n"
    return shown.to_latex(index=False, escape=True, column_format=align)
