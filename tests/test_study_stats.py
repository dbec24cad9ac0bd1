"""``rnnlm.study.stats`` against computations done here by other means: a two-way ANOVA by
hand, least squares by numpy, scipy's paired, Welch and Dunnett procedures, an enumeration of
sign flips, and the sample-size formula written out."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from rnnlm.study.stats import (
    NO_INTERVAL, NO_SPREAD, compare_groups, fit_contrasts, max_t_pvalues, planning_critical, seeds_needed,
    sign_flip_p, simultaneous_critical,
)

STUDY = Path(__file__).resolve().parents[1] / "docs" / "studies" / "recurrent_dropout_ptb_edition1" / "runs"
Z80 = stats.norm.ppf(0.8)

# groups x seeds 1..3; A the baseline
GRID = {"A": [230.0, 250.0, 221.0], "B": [224.0, 240.0, 214.0], "C": [236.0, 262.0, 229.0]}


def long(table: dict, seeds: dict | None = None) -> pd.DataFrame:
    """Long-format runs from {group: values}, seeds 1, 2, ... unless ``seeds`` gives them."""
    rows = [{"group": g, "block": (seeds or {}).get(g, range(1, len(v) + 1))[i], "value": x}
            for g, v in table.items() for i, x in enumerate(v)]
    return pd.DataFrame(rows)


def two_way(logs: np.ndarray) -> tuple[np.ndarray, float, int]:
    """Group effects minus the first, residual variance and df of the additive two-way ANOVA
    of a complete groups x blocks table."""
    grand, groups, blocks = logs.mean(), logs.mean(axis=1), logs.mean(axis=0)
    resid = logs - groups[:, None] - blocks[None, :] + grand
    df = (logs.shape[0] - 1) * (logs.shape[1] - 1)
    return groups[1:] - groups[0], float((resid**2).sum() / df), df


def test_three_groups_three_blocks_match_the_two_way_anova_by_hand():
    logs = np.log(np.array(list(GRID.values())))
    effects, s2, df = two_way(logs)
    se = math.sqrt(2 * s2 / 3)  # a difference of two group means over 3 complete blocks
    corr = np.array([[1.0, 0.5], [0.5, 1.0]])  # balanced: the shared baseline mean
    c = simultaneous_critical(corr, df)
    # c is where max |T| of the bivariate t (own evaluation, other integration points) is at 95 %
    probe = stats.multivariate_t(shape=corr, df=df).cdf([c, c], lower_limit=[-c, -c], random_state=7,
                                                       maxpts=200_000)
    assert probe == pytest.approx(0.95, abs=1e-3)
    assert stats.t.ppf(0.975, df) < c < stats.t.ppf(1 - 0.025 / 2, df)  # above unadjusted, below Bonferroni

    table = compare_groups(long(GRID), "A")
    gm = math.exp(logs[0].mean())
    assert list(table.index) == ["A", "B", "C"] and (table["method"] == "blocked").all()
    assert table.loc["A", "verdict"] == "baseline" and table.loc["A", "ratio"] == 1.0
    for i, group in enumerate(["B", "C"]):
        row = table.loc[group]
        assert row["df"] == df and row["crit"] == pytest.approx(c, abs=1e-9)
        assert row["ratio"] == pytest.approx(math.exp(effects[i]), rel=1e-12)
        assert row["ratio_low"] == pytest.approx(math.exp(effects[i] - c * se), rel=1e-12)
        assert row["ratio_high"] == pytest.approx(math.exp(effects[i] + c * se), rel=1e-12)
        assert (row["diff"], row["low"], row["high"]) == pytest.approx(
            [gm * (math.exp(effects[i] + k * c * se) - 1) for k in (0, -1, 1)], rel=1e-12)
        t = abs(effects[i]) / se
        p = 1 - stats.multivariate_t(shape=corr, df=df).cdf([t, t], lower_limit=[-t, -t], random_state=7,
                                                           maxpts=200_000)
        assert row["p_adj"] == pytest.approx(p, abs=1e-3)
        assert row["n"] == 3 and row["n_shared"] == 3 and row["note"] == ""
    assert table.loc["B", "verdict"] == "lower" and table.loc["C", "verdict"] == "higher"


def test_one_group_against_the_baseline_is_the_paired_t_test():
    base, group = np.log(GRID["A"]), np.log(GRID["C"])
    paired = stats.ttest_rel(group, base)
    ci = paired.confidence_interval(0.95)
    row = compare_groups(long({"A": GRID["A"], "C": GRID["C"]}), "A").loc["C"]
    gm = math.exp(base.mean())
    assert row["crit"] == stats.t.ppf(0.975, 2)  # one comparison: the t quantile, exactly
    assert (row["ratio_low"], row["ratio_high"]) == pytest.approx([math.exp(ci.low), math.exp(ci.high)], rel=1e-12)
    assert row["p_adj"] == pytest.approx(paired.pvalue, rel=1e-10)
    # with m = 1 the Bonferroni-adjusted paired interval is the same interval
    assert (row["paired_low"], row["paired_high"]) == pytest.approx(
        [gm * math.expm1(ci.low), gm * math.expm1(ci.high)], rel=1e-10)


def test_unequal_runs_and_a_missing_block_match_least_squares_by_hand():
    table = {"A": [230.0, 250.0, 221.0, 240.0], "B": [224.0, 240.0, 231.0], "C": [236.0, 262.0, 255.0, 229.0, 246.0]}
    seeds = {"A": [1, 2, 3, 4], "B": [1, 2, 4], "C": [1, 2, 2, 3, 4]}  # B misses seed 3, C has seed 2 twice
    runs = long(table, seeds)
    y = np.log(runs["value"].to_numpy())
    # another coding than the module's: one column per group, no intercept, seed 4 the reference
    x = np.column_stack([(runs["group"] == g).to_numpy(float) for g in "ABC"]
                        + [(runs["block"] == s).to_numpy(float) for s in (1, 2, 3)])
    beta, rss, rank, _ = np.linalg.lstsq(x, y, rcond=None)
    df = len(y) - rank
    cov = float(rss[0]) / df * np.linalg.inv(x.T @ x)
    fit = fit_contrasts(runs, "A")
    assert fit.method == "blocked" and fit.groups == ["B", "C"] and list(fit.df) == [df, df] == [6, 6]
    for i, g in enumerate((1, 2)):
        contrast = np.zeros(x.shape[1])
        contrast[[g, 0]] = 1, -1
        assert fit.estimate[i] == pytest.approx(contrast @ beta, rel=1e-10)
        assert fit.se[i] == pytest.approx(math.sqrt(contrast @ cov @ contrast), rel=1e-10)
    result = compare_groups(runs, "A")
    assert result["n"].tolist() == [4, 3, 5] and result["n_shared"].tolist() == [4, 3, 4]
    assert result.loc["B", "ratio"] == pytest.approx(math.exp(fit.estimate[0]), rel=1e-12)
    assert "averaged per seed" in result.loc["C", "note"]
    # C's paired figures average its two seed-2 runs on the log scale
    d = np.log([236.0, math.sqrt(262.0 * 255.0), 229.0, 246.0]) - np.log(table["A"])
    assert sign_flip_p(d)[0] == result.loc["C", "perm_p"]


def test_non_finite_values_are_left_out_with_a_note():
    clean = long(GRID)
    dirty = pd.concat([clean, pd.DataFrame({"group": ["B", "B", "C", "C"], "block": [4, 5, 4, 5],
                                            "value": [np.nan, np.inf, -np.inf, 0.0]})], ignore_index=True)
    expected, got = compare_groups(clean, "A"), compare_groups(dirty, "A")
    pd.testing.assert_frame_equal(got.drop(columns="note"), expected.drop(columns="note"))
    assert got["note"].tolist() == ["", "2 non-finite runs left out",
                                    "1 non-finite run left out; 1 non-positive run left out"]


def test_groups_with_no_run_or_one_run_keep_a_row():
    runs = pd.concat([long(GRID), pd.DataFrame({"group": ["D", "E"], "block": [2, 1], "value": [np.nan, 241.0]})],
                     ignore_index=True)
    table = compare_groups(runs, "A")
    assert list(table.index) == ["A", "B", "C", "D", "E"] and table.loc["D", "n"] == 0
    assert table.loc["D", "verdict"] == NO_INTERVAL and math.isnan(table.loc["D", "ratio"])
    # one run, sharing seed 1: in the blocked model it is estimated against the baseline's fitted
    # value at seed 1 and its interval uses the pooled residual variance
    logs = np.log(np.array(list(GRID.values())))
    fitted = logs[0].mean() + logs[:, 0].mean() - logs.mean()
    e = table.loc["E"]
    assert e["n"] == 1 and e["n_shared"] == 1 and e["df"] == 4
    assert e["ratio"] == pytest.approx(241.0 / math.exp(fitted), rel=1e-10)
    assert e["ratio_low"] < e["ratio"] < e["ratio_high"]
    assert math.isnan(e["paired_low"]) and (e["perm_p"], e["perm_floor"]) == (1.0, 1.0)
    # without shared seeds (welch) one run gives no interval
    welch = compare_groups(long({"A": [230.0, 250.0, 221.0], "E": [241.0]}, {"E": [9]}), "A")
    assert (welch["method"] == "welch").all() and welch.loc["E", "verdict"] == NO_INTERVAL
    assert welch.loc["E", "ratio"] == pytest.approx(241.0 / stats.gmean(GRID["A"]))
    assert math.isnan(welch.loc["E", "perm_p"])


def test_identical_runs_have_no_spread():
    table = compare_groups(long({"A": [100.0, 110.0], "B": [100.0, 110.0]}), "A")  # df 1, residual 0
    assert table.loc["B", "verdict"] == NO_SPREAD and math.isnan(table.loc["B", "low"])


def test_disjoint_seeds_use_welch_and_match_scipy():
    runs = long({"A": GRID["A"], "C": [236.0, 262.0, 229.0, 240.0]}, {"C": [11, 12, 13, 14]})
    welch = stats.ttest_ind(np.log([236.0, 262.0, 229.0, 240.0]), np.log(GRID["A"]), equal_var=False)
    ci = welch.confidence_interval(0.95)
    row = compare_groups(runs, "A").loc["C"]
    assert row["method"] == "welch" and row["n_shared"] == 0 and math.isnan(row["perm_p"])
    assert row["df"] == pytest.approx(welch.df, rel=1e-12)
    assert (row["ratio_low"], row["ratio_high"]) == pytest.approx([math.exp(ci.low), math.exp(ci.high)], rel=1e-12)
    assert row["p_adj"] == pytest.approx(welch.pvalue, rel=1e-10)


def test_welch_family_uses_the_shared_baseline_correlation_and_each_df():
    values = {"A": [230.0, 250.0, 221.0], "B": [224.0, 214.0, 219.0, 226.0], "C": [236.0, 262.0, 299.0]}
    runs = long(values, {"B": [21, 22, 23, 24], "C": [31, 32, 33]})
    logs = {g: np.log(v) for g, v in values.items()}
    v = {g: x.var(ddof=1) / len(x) for g, x in logs.items()}
    se = {g: math.sqrt(v[g] + v["A"]) for g in "BC"}
    df = {g: (v[g] + v["A"]) ** 2 / (v[g] ** 2 / (len(logs[g]) - 1) + v["A"] ** 2 / 2) for g in "BC"}
    corr = np.array([[1.0, v["A"] / (se["B"] * se["C"])], [v["A"] / (se["B"] * se["C"]), 1.0]])
    table = compare_groups(runs, "A")
    for g in "BC":
        c = simultaneous_critical(corr, df[g])
        assert table.loc[g, "df"] == pytest.approx(df[g], rel=1e-12)
        assert table.loc[g, "crit"] == pytest.approx(c, abs=1e-9)
        estimate = logs[g].mean() - logs["A"].mean()
        assert table.loc[g, "ratio_low"] == pytest.approx(math.exp(estimate - c * se[g]), rel=1e-12)


def test_max_t_critical_value_reproduces_scipy_dunnett():
    rng = np.random.default_rng(3)
    control, *treated = (rng.normal(mu, 1.0, size=6) for mu in (0.0, 0.4, 1.5, -0.2))
    result = stats.dunnett(*treated, control=control, rng=0)
    ci = result.confidence_interval(0.95)
    df = 4 * 6 - 4
    s = math.sqrt(sum(((x - x.mean()) ** 2).sum() for x in (control, *treated)) / df)  # pooled sd
    corr = np.full((3, 3), 0.5) + 0.5 * np.eye(3)
    c = simultaneous_critical(corr, df)
    diffs = np.array([x.mean() - control.mean() for x in treated])
    half = c * s * math.sqrt(2 / 6)
    np.testing.assert_allclose(ci.low, diffs - half, atol=2e-3 * half)
    np.testing.assert_allclose(ci.high, diffs + half, atol=2e-3 * half)
    np.testing.assert_allclose(max_t_pvalues(diffs / (s * math.sqrt(2 / 6)), corr, df), result.pvalue, atol=2e-3)


def test_critical_value_special_cases():
    assert simultaneous_critical(np.eye(1), 7) == stats.t.ppf(0.975, 7)
    assert simultaneous_critical([[1.0]], np.inf, 0.9) == stats.norm.ppf(0.95)
    # Dunnett's (1955) table, two comparisons, infinite df, two-sided 95 %: 2.21
    assert simultaneous_critical([[1, 0.5], [0.5, 1]], np.inf) == pytest.approx(2.212, abs=2e-3)
    both = simultaneous_critical([[1, 0.5], [0.5, 1]], np.array([5.0, np.inf]))
    assert both[1] == pytest.approx(2.212, abs=2e-3) and both[0] > both[1]
    assert max_t_pvalues([2.0], [[1.0]], 4)[0] == pytest.approx(2 * stats.t.sf(2.0, 4), rel=1e-12)


def test_sign_flip_p_value_is_the_enumeration_of_all_flips():
    d = np.array([0.031, -0.012, 0.054, 0.020, 0.043])
    means = np.array([np.mean(d * s) for s in itertools.product((1, -1), repeat=len(d))])
    obs, tol = d.mean(), 1e-12
    by_hand = min(1.0, 2 * min((means >= obs - tol).mean(), (means <= obs + tol).mean()))
    assert sign_flip_p(d) == (pytest.approx(by_hand, rel=1e-12), 2 / 32)
    assert sign_flip_p(np.abs(d)) == (pytest.approx(2 / 32), 2 / 32)  # all one sign: the floor
    runs = long({"A": [200.0] * 5, "B": list(200.0 * np.exp(d))})
    row = compare_groups(runs.assign(value=runs["value"] * np.tile([1.0, 1.1, 0.9, 1.2, 1.05], 2)), "A").loc["B"]
    assert row["perm_p"] == pytest.approx(by_hand, rel=1e-9) and row["perm_floor"] == 2 / 32


def test_seeds_needed_is_the_formula():
    logs = np.log(np.array([GRID["A"], GRID["C"]]))
    _, s2, _ = two_way(logs)
    by_hand = max(2, math.ceil(2 * (stats.norm.ppf(0.975) + Z80) ** 2 * s2 / math.log(1.03) ** 2))
    assert compare_groups(long({"A": GRID["A"], "C": GRID["C"]}), "A").loc["C", "seeds_needed"] == by_hand
    assert seeds_needed(0.02, 1, effect=0.05) == math.ceil(2 * (1.959964 + Z80) ** 2 * 0.02**2 / math.log(1.05) ** 2)
    assert planning_critical(2) == pytest.approx(2.212, abs=2e-3)  # Dunnett's table, as above
    # welch: the pair's pooled sd
    a, b = np.log(GRID["A"]), np.log([236.0, 262.0, 229.0, 240.0])
    pooled = (((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum()) / (3 + 4 - 2)
    row = compare_groups(long({"A": GRID["A"], "C": list(np.exp(b))}, {"C": [7, 8, 9, 10]}), "A").loc["C"]
    assert row["seeds_needed"] == max(2, math.ceil(2 * (1.959964 + Z80) ** 2 * pooled / math.log(1.03) ** 2))


def test_verdicts_lower_higher_within_and_unresolved():
    base = [200.0, 220.0, 210.0, 205.0]
    noise = np.array([1.0, 1.002, 0.998, 1.001])
    runs = long({"A": base, "lower": list(0.9 * np.array(base) * noise), "same": list(np.array(base) * noise),
                 "higher": list(1.1 * np.array(base) * noise[::-1])})
    verdicts = compare_groups(runs, "A")["verdict"]
    assert verdicts.tolist() == ["baseline", "lower", "within ±3%", "higher"]
    same = compare_groups(runs[runs["group"].isin(["A", "same"])], "A", effect=0.05).loc["same"]
    assert same["verdict"] == "within ±5%" and 1 / 1.05 < same["ratio_low"] < same["ratio_high"] < 1.05
    wide = long({"A": base, "wide": list(np.array(base) * [1.1, 0.9, 1.0, 1.02])})
    assert compare_groups(wide, "A").loc["wide", "verdict"] == "unresolved"
    with pytest.raises(ValueError, match="effect"):
        compare_groups(runs, "A", effect=1.0)
    with pytest.raises(ValueError, match="baseline"):
        compare_groups(runs, "Z")


def test_committed_study_blocked_halfwidths_are_about_15_points_before_adjustment():
    """The recurrent-dropout study in docs/: 8 variants x 3 seeds, so 14 residual df."""
    results = pd.concat([pd.read_csv(path) for path in sorted(STUDY.glob("*/result.csv"))], ignore_index=True)
    assert len(results) == 24
    runs = pd.DataFrame({"group": results["dropout.recurrent.kind"] + "/" + results["dropout.recurrent.mask"],
                         "block": results["seed"], "value": results["best_val_ppl"]})
    baseline = next(g for g in runs["group"] if g.startswith("none/"))
    fit = fit_contrasts(runs, baseline)
    assert fit.method == "blocked" and fit.m == 7 and set(fit.df) == {14.0}
    assert fit.sigma[0] * fit.baseline_gm == pytest.approx(8.5, abs=0.2)  # residual sd in points
    np.testing.assert_allclose(fit.halfwidth(), 15.0, atol=0.3)  # t_{0.975,14} x se, in points
