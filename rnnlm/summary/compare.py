"""Each group against a baseline group: perplexity ratios over seeds with simultaneous intervals.

``rnnlm summary --baseline KEY=VALUE`` names one group of runs (e.g. the runs without
recurrent dropout). For the validation and the test value of the selected metric (two
families of comparisons, each adjusted on its own), every group is compared with the
baseline by :func:`rnnlm.study.stats.compare_groups`, with the runs' seeds as blocks: the
same seed gives the same initial weights and BPTT schedule in every variant. In short:

- ``blocked`` (the seeds are shared): OLS of log value on group and seed, intervals max-t
  (Dunnett-type) adjusted over the m comparisons shown (Hothorn, Bretz & Westfall 2008);
- ``welch`` (some group shares no seed with the baseline): Welch t on log values, max-t
  adjusted with each comparison's own df (Hasler & Hothorn 2008).

Per compared value ``<column>`` (e.g. ``val_ppl``) the summary gains ``<column>_diff``,
``_low``, ``_high`` (group - baseline in points: the baseline's geometric mean x (ratio - 1),
with the adjusted interval), ``_ratio``, ``_ratio_low``, ``_ratio_high`` (group / baseline),
``_p`` (adjusted), ``_paired_low``, ``_paired_high`` (Bonferroni-adjusted paired t-interval
over the shared seeds, points), ``_perm_p`` and ``_perm_floor`` (exact sign-flip p-value and
its smallest possible value), ``_seeds_needed`` (seeds per group to resolve ``--effect``),
``_crit`` (the critical value of the interval) and ``_verdict``:

- ``lower`` / ``higher``: the adjusted interval lies below / above zero;
- ``within ±3%``: it lies inside the equivalence margin (``--effect``, default 3 %);
- ``unresolved``: neither;
- ``n<2: no interval`` / ``no spread: no interval``: no interval can be computed;
- ``baseline``: the baseline group itself.

One ``method`` column says which method each family used.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from ..study.stats import DEFAULT_EFFECT, LEVEL, compare_groups
from .runs import RunsError, filter_runs, is_missing
from .tables import Metric, group_ids

# summary column <column>_<stat> <- compare_groups column
STATS = {"diff": "diff", "low": "low", "high": "high", "ratio": "ratio", "ratio_low": "ratio_low",
         "ratio_high": "ratio_high", "p": "p_adj", "paired_low": "paired_low", "paired_high": "paired_high",
         "perm_p": "perm_p", "perm_floor": "perm_floor", "seeds_needed": "seeds_needed", "crit": "crit",
         "verdict": "verdict"}
SHOWN = ("diff", "low", "high", "ratio", "p", "perm_p", "verdict")  # markdown / LaTeX (low, high join diff)


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


def check_effect(effect: float) -> float:
    """``effect`` if it is a fraction in (0, 1), else RunsError."""
    if not 0 < effect < 1:
        raise RunsError(f"--effect {effect:g} is not a fraction in (0, 1); e.g. --effect 0.03 for ±3 %")
    return effect


def compare(summary: pd.DataFrame, runs: pd.DataFrame, keys: list[str], base: tuple, metric: Metric,
            effect: float = DEFAULT_EFFECT) -> pd.DataFrame:
    """``summary`` with ``<column>_<stat>`` (:data:`STATS`) for the validation and test value of
    ``metric`` and a ``method`` column, each group against the group ``base`` (``runs``: the
    summarised runs; their ``seed`` is the block)."""
    ids, row_ids = group_ids(runs, keys), group_ids(summary, keys)
    seeds = runs["seed"] if "seed" in runs else pd.Series(np.nan, index=runs.index)  # NaN: a block per run
    order = pd.Index(list(row_ids), dtype=object, tupleize_cols=False)
    columns: dict[str, object] = {}
    methods = {}
    for column in metric.columns:
        long = pd.DataFrame({"group": ids.to_numpy(object), "block": seeds.to_numpy(object),
                             "value": runs[column].to_numpy(float)})
        result = compare_groups(long, base, level=LEVEL, effect=effect).reindex(order)
        for stat, source in STATS.items():
            columns[f"{column}_{stat}"] = result[source].to_numpy()
        columns[f"{column}_verdict"] = result["verdict"].fillna("").to_numpy()  # a group without runs
        methods[column] = result["method"].dropna().iloc[0]
    method = (next(iter(methods.values())) if len(set(methods.values())) == 1
              else "; ".join(f"{c}: {m}" for c, m in methods.items()))
    return summary.assign(**columns, method=method)


def _p_value(value) -> str:
    return "" if is_missing(value) else "<0.001" if value < 0.001 else f"{value:.3f}"


def for_display(table: pd.DataFrame, metric: Metric) -> pd.DataFrame:
    """``table`` with the comparison columns that markdown and LaTeX print (:data:`SHOWN`),
    the ratio to three decimals and the permutation p-value as the p-values are shown; the
    rest stays in summary.csv."""
    if "method" not in table:
        return table
    hidden = [f"{column}_{stat}" for column in metric.columns for stat in STATS if stat not in SHOWN]
    shown = table.drop(columns=[c for c in hidden + ["method"] if c in table])
    for column in metric.columns:
        shown[f"{column}_ratio"] = [
            "" if is_missing(r) else f"{r:.3f}" for r in shown[f"{column}_ratio"]]
        shown[f"{column}_perm_p"] = [_p_value(p) for p in shown[f"{column}_perm_p"]]
    return shown


def _family(summary: pd.DataFrame, column: str) -> str:
    """What one compared column's intervals are, from the summary's comparison columns."""
    verdicts = summary[f"{column}_verdict"]
    compared = summary[(verdicts != "baseline") & summary[f"{column}_ratio"].notna()]
    crit = compared[f"{column}_crit"].dropna()
    if crit.empty:
        return f"{column}: no interval"
    values = f"{crit.iloc[0]:.2f}" if np.allclose(crit, crit.iloc[0]) else f"{crit.min():.2f}-{crit.max():.2f}"
    floors = compared[f"{column}_perm_floor"].dropna()
    floor = f", sign-flip floor {floors.min():.3g}" if len(floors) else ""
    return f"{column}: {len(crit)} comparison{'s' if len(crit) != 1 else ''}, critical value {values}{floor}"


def describe(metric: Metric, spec: Iterable[str], summary: pd.DataFrame,
             effect: float = DEFAULT_EFFECT) -> list[str]:
    """Lines saying what the comparison columns mean, for the tables' caption: the first a
    heading, the others its explanation."""
    methods = str(summary["method"].iloc[0]) if "method" in summary and len(summary) else ""
    value = metric.label.split(" (")[0]  # perplexity, loss, MC-dropout perplexity, ...
    how = []
    if "blocked" in methods:
        how.append(f"blocked: OLS of log {value} on group and seed (the seeds as blocks), intervals "
                   "Dunnett-type max-t adjusted over the comparisons shown (Hothorn, Bretz & Westfall 2008)")
    if "welch" in methods:
        how.append(f"welch (seeds not shared): Welch t on log {value}, max-t adjusted with each "
                   "comparison's own df (Hasler & Hothorn 2008)")
    margin = f"{effect * 100:g}%"
    return [
        f"difference from the baseline ({', '.join(spec)}): group / baseline ratio of {metric.val} and "
        f"{metric.test} over seeds, with {LEVEL:.0%} simultaneous intervals",
        "Method: " + "; ".join(how) + ". "
        f"{metric.val} and {metric.test} are two families, each adjusted on its own "
        f"({'; '.join(_family(summary, c) for c in metric.columns)}).",
        f"diff [low, high]: in {value} points, the baseline's geometric mean x (ratio - 1); p: adjusted; "
        "perm p: exact sign-flip p-value over the seeds shared with the baseline, unadjusted "
        "(it cannot go below 2 / 2^seeds). Verdict: lower/higher (the interval excludes 0), "
        f"within ±{margin} (the interval lies inside ±{margin}), unresolved (neither). summary.csv adds the "
        "ratio interval, Bonferroni-adjusted paired t-intervals over the shared seeds and the seeds per "
        f"group that would resolve ±{margin} at 80% power.",
    ]
