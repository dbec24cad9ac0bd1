"""Each group's difference from a baseline group, with a Welch t-interval over seeds.

``rnnlm summary --baseline KEY=VALUE`` names one group of runs (e.g. the runs without
recurrent dropout). For every group and for the validation and the test value of the
selected metric, the difference of means (group - baseline), a 95 % confidence interval
for it and the two-sided p-value come from Welch's t-test, which does not assume equal
variances (Welch 1947; ``scipy.stats.ttest_ind(equal_var=False)`` and its
``confidence_interval``). The verdict says whether zero lies outside the interval:

- ``lower`` / ``higher``: the interval lies below / above zero;
- ``not distinguishable``: the interval contains zero;
- ``n=1: no interval``: a group (or the baseline) has a single run, so no spread is known;
- ``no spread: no interval``: both groups have zero variance (identical runs), so the
  t-statistic is undefined;
- ``baseline``: the baseline group itself.

Seeds are the replicates: a group's values are its summarised runs, one per seed.
"""

from __future__ import annotations

import warnings
from typing import Iterable

import numpy as np
import pandas as pd
from scipy import stats

from .runs import RunsError, filter_runs
from .tables import Metric, text

LEVEL = 0.95
STATS = ("diff", "low", "high", "p", "verdict")  # columns <column>_<stat> per compared value


def group_ids(table: pd.DataFrame, keys: list[str]) -> pd.Series:
    """A hashable identity of each row's group: its key values as shown in tables."""
    rows = zip(*(table[k] for k in keys)) if keys else [()] * len(table)
    return pd.Series([tuple(text(v) for v in row) for row in rows], index=table.index, dtype=object)


def baseline_group(runs: pd.DataFrame, keys: list[str], spec: Iterable[str]) -> tuple:
    """The identity of the one group whose summarised ``runs`` match every ``KEY=VALUE`` of
    ``spec``; RunsError when none or several do."""
    spec = list(spec)
    shown = " ".join(f"--baseline {s}" for s in spec)
    try:
        chosen = filter_runs(runs, spec)
    except RunsError as err:
        raise RunsError(str(err).replace("--filter", "--baseline")) from None
    found = sorted(set(group_ids(chosen, keys)))
    if not found:
        raise RunsError(f"{shown} matches no summarised run; pick a group of the summary table, "
                        f"e.g. --baseline dropout.recurrent.kind=none")
    if len(found) > 1:
        names = "; ".join(", ".join(f"{k}={v}" for k, v in zip(keys, g)) for g in found[:4])
        raise RunsError(f"{shown} matches {len(found)} groups ({names}{'; ...' if len(found) > 4 else ''}); "
                        f"add --baseline KEY=VALUE until one group is left")
    return found[0]


def welch(values: np.ndarray, base: np.ndarray, level: float = LEVEL) -> dict[str, object]:
    """Difference of means ``values - base``, its ``level`` Welch t-interval, p-value, verdict."""
    diff = float(np.mean(values) - np.mean(base)) if len(values) and len(base) else np.nan
    out: dict[str, object] = {"diff": diff, "low": np.nan, "high": np.nan, "p": np.nan}
    if len(values) < 2 or len(base) < 2:
        return {**out, "verdict": "n=1: no interval" if len(values) and len(base) else ""}
    if np.var(values) == 0 and np.var(base) == 0:
        return {**out, "verdict": "no spread: no interval"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        test = stats.ttest_ind(values, base, equal_var=False)
        low, high = test.confidence_interval(confidence_level=level)
    verdict = "lower" if high < 0 else "higher" if low > 0 else "not distinguishable"
    return {**out, "low": float(low), "high": float(high), "p": float(test.pvalue), "verdict": verdict}


def compare(summary: pd.DataFrame, runs: pd.DataFrame, keys: list[str], base: tuple,
            metric: Metric) -> pd.DataFrame:
    """``summary`` with ``<column>_diff|low|high|p|verdict`` for the validation and test value
    of ``metric``, each group against the group ``base`` (``runs``: the summarised runs)."""
    ids, row_ids = group_ids(runs, keys), group_ids(summary, keys)
    columns: dict[str, list] = {}
    for column in metric.columns:
        base_values = runs.loc[ids == base, column].dropna().to_numpy(float)
        results = []
        for group in row_ids:
            if group == base:
                results.append({"diff": 0.0, "low": np.nan, "high": np.nan, "p": np.nan, "verdict": "baseline"})
            else:
                results.append(welch(runs.loc[ids == group, column].dropna().to_numpy(float), base_values))
        for stat in STATS:
            columns[f"{column}_{stat}"] = [r[stat] for r in results]
    return summary.assign(**columns)


def describe(metric: Metric, spec: Iterable[str]) -> str:
    """One sentence on what the comparison columns mean, for the tables' caption."""
    return (f"difference from the baseline ({', '.join(spec)}): group mean - baseline mean of "
            f"{metric.val} and {metric.test}, with a {LEVEL:.0%} Welch t-interval over seeds "
            "(lower/higher: the interval excludes 0)")
