"""``rnnlm.study.sequential`` against published bounds and a simulated Brownian motion."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from rnnlm.study.sequential import look_level, obf_spending, obrien_fleming_bounds, spending_bounds


def crossing(bounds, fractions, paths: int = 400_000, seed: int = 0) -> float:
    """P(|Z_k| >= b_k at some look) under no effect, by simulating the Brownian motion:
    Z_k = W(t_k) / sqrt(t_k) with independent increments of variance t_k - t_{k-1}."""
    t = np.asarray(fractions, float)
    steps = np.random.default_rng(seed).standard_normal((paths, len(t))) * np.sqrt(np.diff(t, prepend=0.0))
    z = np.cumsum(steps, axis=1) / np.sqrt(t)
    return float((np.abs(z) >= np.asarray(bounds)).any(axis=1).mean())


def test_classic_obrien_fleming_matches_jennison_turnbull_table_2_3():
    # four equally spaced looks, alpha 0.05: C = 2.024 (Jennison & Turnbull 2000, Table 2.3)
    bounds = obrien_fleming_bounds(4)
    assert bounds == pytest.approx([4.049, 2.863, 2.337, 2.024], abs=2e-3)
    assert bounds[0] / bounds[3] == pytest.approx(2.0, rel=1e-12)  # b_k = C sqrt(K / k)
    assert crossing(bounds, [0.25, 0.5, 0.75, 1.0]) == pytest.approx(0.05, abs=2e-3)


def test_lan_demets_obrien_fleming_spending_matches_the_published_bounds():
    bounds = spending_bounds([0.25, 0.5, 0.75, 1.0])
    assert bounds == pytest.approx([4.333, 2.963, 2.359, 2.014], abs=0.01)
    # the first bound in closed form, and the total crossing probability is alpha
    assert bounds[0] == pytest.approx(stats.norm.isf(obf_spending(0.25) / 2), rel=1e-12)
    assert crossing(bounds, [0.25, 0.5, 0.75, 1.0]) == pytest.approx(0.05, abs=2e-3)


def test_unequal_looks_spend_what_the_function_says():
    fractions = [0.3, 0.7, 1.0]
    bounds = spending_bounds(fractions, alpha=0.1)
    assert obf_spending(1.0, 0.1) == pytest.approx(0.1, rel=1e-12)
    # the crossing probability up to each look is the spending function there
    for k in range(1, 4):
        assert crossing(bounds[:k], fractions[:k], seed=k) == pytest.approx(obf_spending(fractions[k - 1], 0.1),
                                                                             abs=2.5e-3)


def test_one_look_is_the_fixed_sample_bound():
    assert spending_bounds([1.0]) == pytest.approx([1.960], abs=5e-4)
    assert obrien_fleming_bounds(1) == pytest.approx([stats.norm.isf(0.025)], abs=1e-6)


def test_look_level_is_the_nominal_level_of_the_latest_repeated_interval():
    assert look_level([3], 3) == pytest.approx(0.95, abs=1e-9)  # one look at the end: no penalty
    after_all = look_level([1, 2, 3], 3)
    assert after_all == pytest.approx(1 - 2 * stats.norm.sf(spending_bounds([1 / 3, 2 / 3, 1.0])[-1]), rel=1e-12)
    assert 0.95 < after_all < 0.96  # the final look of three pays a little for the first two
    assert look_level([1], 3) == pytest.approx(1 - obf_spending(1 / 3), rel=1e-9)  # a first look spends little


@pytest.mark.parametrize("call", [
    lambda: spending_bounds([0.5, 0.4]), lambda: spending_bounds([0.5, 1.2]), lambda: spending_bounds([0.0, 1.0]),
    lambda: spending_bounds([1.0], alpha=0.0), lambda: obrien_fleming_bounds(0), lambda: look_level([2, 4], 3),
])
def test_bad_arguments_raise(call):
    with pytest.raises(ValueError):
        call()
