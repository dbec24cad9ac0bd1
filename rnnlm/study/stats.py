"""Each group of runs against a baseline group, with the seeds as blocks.

A study runs every variant with the same seeds, and a seed fixes the initial weights and the
BPTT schedule in every variant: seeds are blocks, and the comparison uses them. Perplexities
are compared on the log scale, where a dropout's effect is a ratio (group / baseline).
:func:`compare_groups` takes long-format ``runs`` (``group``, ``block`` = the seed, ``value``
= a perplexity) and returns, for every group, its ratio to the baseline with simultaneous
intervals, and the same in perplexity points.

Method, chosen once for the whole table (``method`` column):

- ``blocked`` when every compared group shares at least one block with the baseline and the
  model below has at least one residual degree of freedom. Sharing a block makes each
  group's contrast with the baseline estimable within blocks, so seed-to-seed variation
  cancels out of it; the residual degrees of freedom estimate the error variance. The model
  is the additive two-way ANOVA ``log(value) ~ C(group, Treatment(baseline)) + C(block)``,
  fitted by ordinary least squares (statsmodels), which handles unequal numbers of runs and
  blocks missing a run. The group coefficients' covariance gives their correlation matrix,
  and the intervals are the single-step simultaneous max-t (Dunnett-type) intervals over the
  m comparisons with the residual df (Dunnett 1955; Hothorn, Bretz & Westfall 2008,
  "Simultaneous inference in general parametric models"). A group with a single run still
  gets an interval: its variance is the pooled residual one, as in any ANOVA.
- ``welch`` otherwise (some group shares no seed with the baseline, or no residual df is
  left): each comparison is a Welch t on the log values, with its Welch-Satterthwaite df,
  and the max-t adjustment uses the correlation that the shared baseline mean induces and
  each comparison's own df (Hasler & Hothorn 2008, "Multiple contrast tests in the presence
  of heteroscedasticity", Biometrical Journal 50(5)). One rule for the whole table keeps all
  of a family's intervals on one footing. A comparison needs two runs on each side and some
  spread.

Beside the adjusted interval, for the blocks a group shares with the baseline (the per-block
log differences d_b = log group - log baseline, a block's runs averaged on the log scale when
it has several):

- ``paired_low``/``paired_high``: the paired t-interval of mean(d_b), Bonferroni-adjusted to
  the family's level (each at ``1 - (1 - level) / m``, m the compared groups), in perplexity
  points;
- ``perm_p``: the exact two-sided sign-flip permutation p-value of mean(d_b) over all 2^n sign
  flips (``scipy.stats.permutation_test``, one sample, ``permutation_type="samples"``;
  Fisher 1935, Pitman 1937; beyond 16 blocks, 2^16 random flips), unadjusted; its smallest
  possible value is ``perm_floor = 2 / 2^n``: 0.25 with three seeds, and above 0.05 with
  fewer than six.

Points: a ratio r is shown in perplexity points as ``g (r - 1)``, g the baseline's geometric
mean over its runs; with complete blocks ``diff`` is then the difference of the geometric
means. ``seeds_needed`` is the number of seeds per group that would resolve a change of
``effect`` (a ratio of 1 + effect) with 80 % power from the observed residual sd sigma of log
perplexity (blocked: the OLS residual sd; welch: the pair's pooled sd):
``n = max(2, ceil(2 (c + z_0.8)^2 sigma^2 / log(1 + effect)^2))``, with c the normal-limit
simultaneous critical value of m comparisons of a balanced design (correlation 1/2).
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import stats

from .maxt import max_t_pvalues, simultaneous_critical

__all__ = ["LEVEL", "DEFAULT_EFFECT", "POWER", "Contrasts", "compare_groups", "fit_contrasts",
           "planning_critical", "seeds_needed", "sign_flip_p", "simultaneous_critical", "max_t_pvalues", "verdict_of"]

LEVEL = 0.95
DEFAULT_EFFECT = 0.03  # the equivalence margin / effect to resolve: 3 % of perplexity
POWER = 0.8  # of seeds_needed
EXACT_FLIPS = 16  # sign flips are enumerated exactly up to 2^16 (16 shared blocks)
FLIP_RANDOM_STATE = 1935

BASELINE, NO_INTERVAL, NO_SPREAD, UNRESOLVED = "baseline", "n<2: no interval", "no spread: no interval", "unresolved"
COLUMNS = ("method", "n", "n_shared", "ratio", "ratio_low", "ratio_high", "diff", "low", "high", "p_adj",
           "paired_low", "paired_high", "perm_p", "perm_floor", "seeds_needed", "df", "crit", "verdict", "note")


@dataclass(frozen=True)
class Contrasts:
    """Each compared group's log ratio to the baseline and what its intervals need.

    ``groups``: the compared groups (every non-baseline group with a finite run), in order,
    and ``codes`` their positions among all groups;
    ``estimate``, ``se``: log(group / baseline) and its standard error (NaN: no estimate, or
    no standard error); ``df``: residual (blocked) or Welch-Satterthwaite (welch) degrees of
    freedom per group; ``family``: which groups get an interval; ``corr``: the correlation
    matrix of the family's estimates; ``sigma``: the residual sd of log value per group
    (blocked: one for all; welch: the pair's pooled sd); ``baseline_gm``: the baseline's
    geometric mean.
    """

    method: str
    groups: list
    codes: list
    estimate: np.ndarray
    se: np.ndarray
    df: np.ndarray
    family: np.ndarray
    corr: np.ndarray
    sigma: np.ndarray
    baseline_gm: float

    @property
    def m(self) -> int:
        """The number of compared groups."""
        return len(self.groups)

    def halfwidth(self, level: float = LEVEL) -> np.ndarray:
        """Per compared group, half the width in perplexity points of its unadjusted ``level``
        t-interval (no multiplicity adjustment): g sinh(t_{(1+level)/2, df} se), g the baseline's
        geometric mean."""
        return self.baseline_gm * np.sinh(stats.t.ppf((1 + level) / 2, self.df) * self.se)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _missing(block) -> bool:
    """None, NaN or NA (a seed that a run does not have)."""
    return not isinstance(block, (tuple, list, str)) and bool(pd.isna(block))


def _clean(runs: pd.DataFrame) -> tuple[pd.DataFrame, list, dict]:
    """(the finite runs, every group in order of appearance, a note per group).

    The frame has integer codes ``g`` (the group's position in the list) and ``b`` (the
    block's), and ``log``, the log value; a run without a block is a block of its own."""
    missing = {"group", "block", "value"} - set(runs.columns)
    if missing:
        raise ValueError(f"runs needs the columns group, block and value; missing: {', '.join(sorted(missing))}")
    value = pd.to_numeric(runs["value"], errors="coerce").to_numpy(float)
    groups = list(dict.fromkeys(runs["group"]))
    code = {g: i for i, g in enumerate(groups)}
    blocks = [("no block", i) if _missing(b) else b for i, b in enumerate(runs["block"])]
    block_code = {b: i for i, b in enumerate(dict.fromkeys(blocks))}
    frame = pd.DataFrame({"g": [code[g] for g in runs["group"]], "b": [block_code[b] for b in blocks],
                          "value": value})
    non_finite, non_positive = ~np.isfinite(value), np.isfinite(value) & (value <= 0)
    kept = ~(non_finite | non_positive)
    notes = {}
    for i, group in enumerate(groups):
        mine = (frame["g"] == i).to_numpy()
        parts = [f"{_plural(int(k), kind + ' run')} left out" for kind, k in
                 (("non-finite", (non_finite & mine).sum()), ("non-positive", (non_positive & mine).sum())) if k]
        if frame.loc[mine & kept, "b"].duplicated().any():
            parts.append("several runs of one seed: their logs are averaged per seed for the paired figures")
        notes[group] = "; ".join(parts)
    frame = frame[kept].assign(log=lambda f: np.log(f["value"]))
    return frame.reset_index(drop=True), groups, notes


def _logs(frame: pd.DataFrame, g: int) -> np.ndarray:
    return frame.loc[frame["g"] == g, "log"].to_numpy(float)


def _shared_diffs(frame: pd.DataFrame, g: int, base: int) -> np.ndarray:
    """Per block that both have: mean log of group ``g`` - mean log of group ``base``."""
    cells = frame[frame["g"].isin([g, base])].groupby(["g", "b"])["log"].mean()
    mine, theirs = cells.loc[g], cells.loc[base]
    shared = mine.index.intersection(theirs.index, sort=False)
    return (mine[shared] - theirs[shared]).to_numpy(float)


def _method(frame: pd.DataFrame, base: int, compared: list[int]) -> str:
    """``blocked`` where every compared group shares a block with the baseline and the additive
    model leaves a residual degree of freedom; else ``welch``."""
    base_blocks = set(frame.loc[frame["g"] == base, "b"])
    if not base_blocks or not compared:
        return "welch"
    if any(not base_blocks & set(frame.loc[frame["g"] == g, "b"]) for g in compared):
        return "welch"
    used = frame[frame["g"].isin([base, *compared])]
    # connected through the baseline, so the design has full rank: 1 + m + (blocks - 1) columns
    return "blocked" if len(used) - len(compared) - used["b"].nunique() >= 1 else "welch"


def _fit_blocked(frame: pd.DataFrame, base: int, compared: list[int]) -> dict:
    from statsmodels.regression.linear_model import OLS  # imported here: it takes a second or two

    used = frame[frame["g"].isin([base, *compared])]
    blocks = list(dict.fromkeys(used["b"]))
    design = np.column_stack(
        [np.ones(len(used))]
        + [(used["g"] == g).to_numpy(float) for g in compared]  # C(group, Treatment(baseline))
        + [(used["b"] == b).to_numpy(float) for b in blocks[1:]])  # C(block), the first the reference
    fit = OLS(used["log"].to_numpy(float), design).fit()
    m = len(compared)
    cov = np.asarray(fit.cov_params())[1:1 + m, 1:1 + m]
    se = np.sqrt(np.diag(cov))
    sigma = math.sqrt(max(float(fit.scale), 0.0))
    spread = sigma > 1e-10
    return {"estimate": np.asarray(fit.params[1:1 + m], float), "se": se if spread else np.full(m, np.nan),
            "df": np.full(m, float(fit.df_resid)), "family": np.full(m, spread),
            "corr": cov / np.outer(se, se) if spread else np.zeros((0, 0)), "sigma": np.full(m, sigma)}


def _fit_welch(frame: pd.DataFrame, base: int, compared: list[int]) -> dict:
    logs = _logs(frame, base)
    nb = len(logs)
    vb = logs.var(ddof=1) / nb if nb >= 2 else np.nan
    m = len(compared)
    estimate, se, df, sigma = (np.full(m, np.nan) for _ in range(4))
    family = np.zeros(m, bool)
    for i, g in enumerate(compared):
        mine = _logs(frame, g)
        n = len(mine)
        if not nb:
            continue
        estimate[i] = mine.mean() - logs.mean()
        if n + nb >= 3:
            ss = ((mine - mine.mean()) ** 2).sum() + ((logs - logs.mean()) ** 2).sum()
            sigma[i] = math.sqrt(ss / (n + nb - 2))
        if n >= 2 and nb >= 2:
            vg = mine.var(ddof=1) / n
            if vg + vb > 0:
                se[i] = math.sqrt(vg + vb)
                df[i] = (vg + vb) ** 2 / (vg**2 / (n - 1) + vb**2 / (nb - 1))
                family[i] = True
    corr = vb / np.outer(se[family], se[family])
    np.fill_diagonal(corr, 1.0)
    return {"estimate": estimate, "se": se, "df": df, "family": family, "corr": corr, "sigma": sigma}


def fit_contrasts(runs: pd.DataFrame, baseline: Hashable) -> Contrasts:
    """The compared groups' log ratios to ``baseline``, fitted by the method the module
    docstring describes (non-finite and non-positive values left out)."""
    frame, groups, _ = _clean(runs)
    if baseline not in groups:
        raise ValueError(f"baseline {baseline!r} is not a group of runs")
    return _fit(frame, groups, groups.index(baseline))


def _fit(frame: pd.DataFrame, groups: list, base: int) -> Contrasts:
    counts = frame["g"].value_counts()
    compared = [i for i in range(len(groups)) if i != base and counts.get(i, 0) > 0]
    logs = _logs(frame, base)
    method = _method(frame, base, compared)
    fit = (_fit_blocked if method == "blocked" else _fit_welch)(frame, base, compared)
    return Contrasts(method, [groups[i] for i in compared], codes=compared,
                     baseline_gm=float(np.exp(logs.mean())) if len(logs) else np.nan, **fit)


def sign_flip_p(diffs) -> tuple[float, float]:
    """(p, floor): the two-sided sign-flip permutation p-value of ``mean(diffs)``, exact over all
    2^n flips up to n = 16 (beyond, 2^16 random flips), and the smallest p possible, 2 / 2^n.
    NaN for no differences."""
    diffs = np.asarray(diffs, float)
    n = len(diffs)
    if n == 0:
        return np.nan, np.nan
    if n == 1:  # the two flips +d and -d: each tail holds at least half of them
        return 1.0, 1.0
    result = stats.permutation_test(
        (diffs,), lambda x, axis: np.mean(x, axis=axis), vectorized=True, permutation_type="samples",
        n_resamples=2 ** min(n, EXACT_FLIPS), alternative="two-sided", rng=FLIP_RANDOM_STATE)
    return float(result.pvalue), min(1.0, 2.0 / 2**n)


@lru_cache(maxsize=64)
def planning_critical(m: int, level: float = LEVEL) -> float:
    """The normal-limit max-t critical value of m comparisons with one baseline in a balanced
    design (every correlation 1/2), as :func:`seeds_needed` plans with."""
    return float(simultaneous_critical(np.full((m, m), 0.5) + 0.5 * np.eye(m), np.inf, level))


def seeds_needed(sigma: float, m: int, effect: float = DEFAULT_EFFECT, level: float = LEVEL,
                 power: float = POWER) -> float:
    """Seeds per group that resolve a ratio of ``1 + effect`` at ``power`` with m simultaneous
    comparisons, from the residual sd ``sigma`` of log perplexity:
    ``max(2, ceil(2 (c + z_power)^2 sigma^2 / log(1 + effect)^2))``, c =
    :func:`planning_critical` (m, level). NaN when ``sigma`` is not a positive number."""
    if not (np.isfinite(sigma) and sigma > 0) or m < 1:
        return np.nan
    c = planning_critical(m, level)
    n = 2 * (c + stats.norm.ppf(power)) ** 2 * sigma**2 / math.log1p(effect) ** 2
    return float(max(2, math.ceil(n - 1e-9)))


def verdict_of(low: float, high: float, effect: float = DEFAULT_EFFECT) -> str:
    """From a log-ratio interval: ``lower``/``higher`` where it excludes 0, ``within ±E%`` where
    it lies inside [-log(1 + effect), log(1 + effect)], else ``unresolved``."""
    margin = math.log1p(effect)
    if high < 0:
        return "lower"
    if low > 0:
        return "higher"
    if -margin <= low and high <= margin:
        return f"within ±{effect * 100:g}%"
    return UNRESOLVED


def _paired(diffs: np.ndarray, m: int, level: float) -> tuple[float, float]:
    """Bonferroni-adjusted (level over m) paired t-interval of mean(diffs), log scale."""
    n = len(diffs)
    if n < 2 or not diffs.std(ddof=1) > 0:
        return np.nan, np.nan
    half = stats.t.ppf(1 - (1 - level) / (2 * max(m, 1)), n - 1) * diffs.std(ddof=1) / math.sqrt(n)
    return diffs.mean() - half, diffs.mean() + half


def compare_groups(runs: pd.DataFrame, baseline, *, level: float = LEVEL,
                   effect: float = DEFAULT_EFFECT) -> pd.DataFrame:
    """Every group of ``runs`` (columns ``group``, ``block`` = seed, ``value`` > 0) against
    ``baseline``, as the module docstring describes; one row per group, index ``group``.

    Columns: ``method`` (``blocked`` or ``welch``, one for the table), ``n`` (finite runs),
    ``n_shared`` (blocks shared with the baseline), ``ratio``, ``ratio_low``, ``ratio_high``
    (group / baseline and its max-t adjusted ``level`` interval), ``diff``, ``low``, ``high``
    (the same in perplexity points: baseline geometric mean x (ratio - 1)), ``p_adj`` (the
    single-step adjusted two-sided p-value), ``paired_low``, ``paired_high`` (points; NaN under
    two shared blocks), ``perm_p``, ``perm_floor`` (NaN without shared blocks),
    ``seeds_needed`` (to resolve ``effect``), ``df`` and ``crit`` (the critical value of the
    interval), ``verdict`` and ``note``. Non-finite and non-positive values are left out with
    a note; a group left with no run keeps its row.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if not 0 < effect < 1:
        raise ValueError(f"effect must be in (0, 1), got {effect}")
    frame, groups, notes = _clean(runs)
    if baseline not in groups:
        raise ValueError(f"baseline {baseline!r} is not a group of runs")
    base = groups.index(baseline)
    fit = _fit(frame, groups, base)
    counts = frame["g"].value_counts()
    n_base = int(counts.get(base, 0))

    family = np.flatnonzero(fit.family)
    crit, p_adj = np.full(fit.m, np.nan), np.full(fit.m, np.nan)
    if len(family):
        dfs = fit.df[family]
        df_arg = float(dfs[0]) if np.all(dfs == dfs[0]) else dfs
        crit[family] = simultaneous_critical(fit.corr, df_arg, level)
        p_adj[family] = max_t_pvalues(fit.estimate[family] / fit.se[family], fit.corr, df_arg)
    low, high = fit.estimate - crit * fit.se, fit.estimate + crit * fit.se

    gm = fit.baseline_gm
    points = lambda x: gm * math.expm1(x) if np.isfinite(x) else np.nan  # noqa: E731
    ratio = lambda x: math.exp(x) if np.isfinite(x) else np.nan  # noqa: E731
    rows = {base: {"n": n_base, "n_shared": frame.loc[frame["g"] == base, "b"].nunique(), "ratio": 1.0,
                   "diff": 0.0, "verdict": BASELINE}}
    for i, g in enumerate(fit.codes):
        diffs = _shared_diffs(frame, g, base) if n_base else np.zeros(0)
        paired = _paired(diffs, fit.m, level)
        perm_p, floor = sign_flip_p(diffs)
        if fit.family[i]:
            verdict = verdict_of(low[i], high[i], effect)
        elif fit.method == "blocked" or (counts[g] >= 2 and n_base >= 2):
            verdict = NO_SPREAD
        else:
            verdict = NO_INTERVAL
        rows[g] = {"n": int(counts[g]), "n_shared": len(diffs),
                   "ratio": ratio(fit.estimate[i]), "ratio_low": ratio(low[i]), "ratio_high": ratio(high[i]),
                   "diff": points(fit.estimate[i]), "low": points(low[i]), "high": points(high[i]),
                   "p_adj": p_adj[i], "paired_low": points(paired[0]), "paired_high": points(paired[1]),
                   "perm_p": perm_p, "perm_floor": floor, "seeds_needed": seeds_needed(fit.sigma[i], fit.m, effect, level),
                   "df": fit.df[i], "crit": crit[i], "verdict": verdict}
    table = pd.DataFrame([rows.get(i, {"n": 0, "n_shared": 0, "verdict": NO_INTERVAL}) for i in range(len(groups))],
                         columns=list(COLUMNS))
    table = table.assign(method=fit.method, note=[notes[g] for g in groups])
    table.index = pd.Index(groups, dtype=object, tupleize_cols=False, name="group")
    return table.astype({"n": int, "n_shared": int})
