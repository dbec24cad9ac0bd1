"""Group-sequential bounds for looking at a study after every seed block.

A sweeper that adds one seed block at a time and re-analyses after each looks at the data
repeatedly; a fixed 95 % interval at every look would cover less than 95 % over all of them.
With the information fraction t_k of look k (here blocks so far / planned blocks), the
standardised estimates Z_1, Z_2, ... behave as a Brownian motion observed at t_k:
corr(Z_i, Z_j) = sqrt(t_i / t_j) for t_i <= t_j. Two-sided bounds b_k with

    P(|Z_k| >= b_k for some k) = alpha   (under no effect)

give repeated confidence intervals, estimate ± b_k se at look k, which cover with probability
1 - alpha at every look together (Jennison & Turnbull 1989, "Interim analyses: the repeated
confidence interval approach", JRSS B 51(3)); :func:`look_level` is the nominal level of the
latest look's interval.

- :func:`spending_bounds`: the Lan & DeMets (1983) alpha-spending version of O'Brien-Fleming
  for looks at any fractions. Each side spends 2 - 2 Phi(z_{1-a/2} / sqrt(t)) of its one-sided
  level a = alpha / 2, the two-sided convention of the published tables (e.g. 4.333, 2.963,
  2.359, 2.014 for four equal looks at alpha = 0.05); look k spends
  alpha(t_k) - alpha(t_{k-1}) of the two-sided alpha(t) = 4 - 4 Phi(z_{1-alpha/4} / sqrt(t)).
  (Spending 2 - 2 Phi(z_{1-alpha/2} / sqrt(t)) two-sided would spend more early: 3.920 at the
  first of four looks.)
- :func:`obrien_fleming_bounds`: O'Brien & Fleming (1979), K equally spaced looks,
  b_k = C sqrt(K / k) (Jennison & Turnbull 2000, "Group sequential methods with applications
  to clinical trials", Table 2.3).

The K-dimensional normal probabilities are ``scipy.stats.multivariate_normal.cdf`` (Genz's
quasi-Monte Carlo) with a fixed ``rng``, so the bounds are reproducible.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats
from scipy.optimize import brentq

RANDOM_STATE = 1983  # fixed quasi-Monte Carlo points: the same bounds on every call
MAX_BOUND = 40.0  # bounds are searched below this (P(|Z| >= 40) is 0 in double precision)


def _brownian_corr(fractions: np.ndarray) -> np.ndarray:
    t = np.asarray(fractions, float)
    return np.sqrt(np.minimum.outer(t, t) / np.maximum.outer(t, t))


def _inside(bounds: Sequence[float], corr: np.ndarray) -> float:
    """P(|Z_j| < b_j for every j), Z normal with unit variances and correlation ``corr``."""
    b = np.asarray(bounds, float)
    if len(b) == 0:
        return 1.0
    if len(b) == 1:
        return float(1 - 2 * stats.norm.sf(b[0]))
    dist = stats.multivariate_normal(cov=corr, allow_singular=True)
    return float(dist.cdf(b, lower_limit=-b, rng=RANDOM_STATE))


def _check(fractions: Sequence[float], alpha: float) -> np.ndarray:
    t = np.asarray(fractions, float)
    if t.ndim != 1 or len(t) == 0 or not (0 < t[0]) or not np.all(np.diff(t) > 0) or t[-1] > 1:
        raise ValueError(f"fractions must increase within (0, 1], got {list(fractions)}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return t


def obf_spending(t: float, alpha: float = 0.05) -> float:
    """The two-sided alpha spent by information fraction t: each side spends the Lan-DeMets
    O'Brien-Fleming-type 2 - 2 Phi(z_{1-a/2} / sqrt(t)) of its one-sided level a = alpha / 2,
    so 4 - 4 Phi(z_{1-alpha/4} / sqrt(t)) in all, alpha at t = 1."""
    return float(4 * stats.norm.sf(stats.norm.isf(alpha / 4) / math.sqrt(t))) if t > 0 else 0.0


def spending_bounds(fractions: Sequence[float], alpha: float = 0.05) -> list[float]:
    """Two-sided z bounds b_1..b_K at information fractions 0 < t_1 < ... < t_K <= 1 for the
    Lan-DeMets (1983) O'Brien-Fleming-type spending :func:`obf_spending` (alpha / 2 a side).

    b_k solves P(|Z_j| < b_j for j < k, |Z_k| >= b_k) = alpha(t_k) - alpha(t_{k-1}) with
    corr(Z_i, Z_j) = sqrt(t_i / t_j); b_1 = Phi^-1(1 - alpha(t_1) / 2) exactly.
    """
    t = _check(fractions, alpha)
    corr = _brownian_corr(t)
    bounds = [stats.norm.isf(obf_spending(t[0], alpha) / 2)]
    for k in range(1, len(t)):
        spend = obf_spending(t[k], alpha) - obf_spending(t[k - 1], alpha)
        before = _inside(bounds, corr[:k, :k])
        cross = lambda b: before - _inside([*bounds, b], corr[:k + 1, :k + 1]) - spend  # noqa: E731, B023
        low = 1e-6
        bounds.append(brentq(cross, low, MAX_BOUND, xtol=1e-7) if cross(low) > 0 > cross(MAX_BOUND)
                      else (MAX_BOUND if cross(low) <= 0 else low))
    return [float(b) for b in bounds]


def obrien_fleming_bounds(looks: int, alpha: float = 0.05) -> list[float]:
    """O'Brien & Fleming (1979) two-sided bounds for ``looks`` equally spaced looks:
    b_k = C sqrt(K / k), with C such that P(|Z_k| >= b_k for some k) = alpha."""
    if looks < 1:
        raise ValueError(f"looks must be at least 1, got {looks}")
    t = _check([k / looks for k in range(1, looks + 1)], alpha)
    corr = _brownian_corr(t)
    shape = np.sqrt(looks / np.arange(1, looks + 1))
    c = brentq(lambda c: 1 - _inside(c * shape, corr) - alpha, 0.5, 10.0, xtol=1e-7)
    return [float(c * s) for s in shape]


def look_level(blocks_seen: Sequence[int], max_blocks: int, alpha: float = 0.05) -> float:
    """The nominal two-sided confidence level 1 - 2 (1 - Phi(b_last)) of the latest look's
    repeated confidence interval, with a look after each of ``blocks_seen`` (increasing block
    counts) and information fraction blocks / ``max_blocks`` (:func:`spending_bounds`); a
    look at ``max_blocks`` spends all of ``alpha``."""
    seen = [int(b) for b in blocks_seen]
    if max_blocks < 1 or not seen or seen[-1] > max_blocks:
        raise ValueError(f"blocks_seen must be increasing counts up to max_blocks={max_blocks}, got {seen}")
    bound = spending_bounds([b / max_blocks for b in seen], alpha)[-1]
    return float(1 - 2 * stats.norm.sf(bound))
