"""Single-step max-t multiplicity adjustment: simultaneous critical values and adjusted p-values.

For m estimates with t statistics T_1..T_m whose joint law is a central multivariate t with
correlation matrix R and ``df`` degrees of freedom (a multivariate normal for ``df = inf``),
the simultaneous two-sided ``level`` intervals are ``estimate_i ± c se_i`` with c solving

    P(max_i |T_i| <= c) = level,

and the single-step adjusted p-value of ``t_i`` is ``P(max_j |T_j| >= |t_i|)``. This is
Dunnett's (1955) procedure for comparisons with a control, in the general form of Hothorn,
Bretz & Westfall (2008), "Simultaneous inference in general parametric models", Biometrical
Journal 50(3). With one estimate c is the t quantile ``t_{(1+level)/2, df}`` and the adjusted
p-value the ordinary two-sided one, computed exactly.

Where each estimate has its own degrees of freedom (Welch-type comparisons with unequal
variances), comparison i uses the multivariate t with R and its own df_i, as Hasler & Hothorn
(2008), "Multiple contrast tests in the presence of heteroscedasticity", Biometrical Journal
50(5), propose.

The m-dimensional probabilities come from ``scipy.stats.multivariate_t.cdf`` (randomised
quasi-Monte Carlo, Genz & Bretz 2002) with a fixed ``random_state``, so that every call with
the same arguments returns the same value; c is found with Brent's method between the
single-comparison quantile (a lower bound) and the Bonferroni quantile (an upper bound).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import stats
from scipy.optimize import brentq

RANDOM_STATE = 1955  # fixed: the quasi-Monte Carlo points, hence every probability, are reproducible
MAXPTS = 50_000  # integration points per probability: critical values to about 1e-3


def _as_corr(corr) -> np.ndarray:
    corr = np.atleast_2d(np.asarray(corr, float))
    if corr.ndim != 2 or corr.shape[0] != corr.shape[1]:
        raise ValueError(f"corr must be a square matrix, got shape {corr.shape}")
    return (corr + corr.T) / 2


def _df_array(df, m: int) -> np.ndarray:
    df = np.broadcast_to(np.asarray(df, float), (m,)).copy() if np.ndim(df) == 0 else np.asarray(df, float)
    if df.shape != (m,) or np.any(~(df > 0)):
        raise ValueError(f"df must be one positive number or {m} of them, got {df}")
    return df


def max_abs_cdf(c: float, corr, df: float) -> float:
    """P(max_i |T_i| <= c) for T ~ multivariate t(R = ``corr``, ``df``) (normal for df = inf)."""
    corr = _as_corr(corr)
    m = len(corr)
    if c <= 0:
        return 0.0
    if m == 1:
        dist = stats.norm if np.isinf(df) else stats.t(df)
        return float(1 - 2 * dist.sf(c))
    upper = np.full(m, float(c))
    if np.isinf(df):
        dist = stats.multivariate_normal(cov=corr, allow_singular=True)
        return float(dist.cdf(upper, lower_limit=-upper, rng=RANDOM_STATE))
    dist = stats.multivariate_t(shape=corr, df=df, allow_singular=True)
    return float(dist.cdf(upper, lower_limit=-upper, random_state=RANDOM_STATE, maxpts=MAXPTS))


def _critical_one(corr: np.ndarray, df: float, level: float) -> float:
    # rounded, so that matrices equal but for rounding (e.g. validation and test of one design) share a result
    return _critical_cached(np.round(corr, 12).tobytes(), len(corr), df, level)


@lru_cache(maxsize=256)
def _critical_cached(corr_bytes: bytes, m: int, df: float, level: float) -> float:
    corr = np.frombuffer(corr_bytes).reshape(m, m)
    quantile = stats.norm.ppf if np.isinf(df) else stats.t(df).ppf
    single = float(quantile((1 + level) / 2))
    if m == 1:
        return single
    bonferroni = float(quantile(1 - (1 - level) / (2 * m)))
    low, high = single - 1e-3, bonferroni + 1e-2  # margins for the integration error
    f = lambda c: max_abs_cdf(c, corr, df) - level  # noqa: E731
    if f(low) > 0 or f(high) < 0:  # only if the integration error exceeds the margins
        return bonferroni
    return float(brentq(f, low, high, xtol=1e-6))


def simultaneous_critical(corr: np.ndarray, df: float | np.ndarray, level: float = 0.95) -> float | np.ndarray:
    """The c with ``P(max_i |T_i| <= c) = level``, T ~ multivariate t(``corr``, ``df``).

    ``corr``: the m x m correlation matrix of the estimates; ``df``: the residual degrees of
    freedom (``np.inf`` for the normal limit), or one per estimate (then the result is an
    array, entry i computed with ``df[i]``, as Hasler & Hothorn 2008). With m = 1 the result
    is exactly the two-sided t (or normal) quantile.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    corr = _as_corr(corr)
    if np.ndim(df) == 0:
        return _critical_one(corr, float(_df_array(df, len(corr))[0]), level)
    dfs = _df_array(df, len(corr))
    found = {d: _critical_one(corr, d, level) for d in dict.fromkeys(dfs.tolist())}
    return np.array([found[d] for d in dfs.tolist()])


def max_t_pvalues(tstats, corr, df: float | np.ndarray) -> np.ndarray:
    """Single-step adjusted two-sided p-values ``P(max_j |T_j| >= |t_i|)`` (one ``df`` or one per
    statistic, as in :func:`simultaneous_critical`); NaN where a statistic is NaN."""
    tstats = np.asarray(tstats, float)
    corr = _as_corr(corr)
    dfs = _df_array(df, len(corr))
    if len(corr) == 1:  # exactly the two-sided t (or normal) p-value
        return np.array([2 * (stats.norm if np.isinf(d) else stats.t(d)).sf(abs(t)) for t, d in zip(tstats, dfs)])
    return np.array([np.nan if np.isnan(t) else min(1.0, max(0.0, 1 - max_abs_cdf(abs(t), corr, d)))
                     for t, d in zip(tstats, dfs)])
