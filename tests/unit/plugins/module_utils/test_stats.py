"""Statistics core of ab_test, cross-checked against scipy (dev-only dependency)."""

import random

import pytest
from scipy import stats as sp

from ansible_collections.gpuops.cluster.plugins.module_utils import stats


@pytest.mark.parametrize("t,df", [(0.0, 5), (1.3, 3), (-2.7, 12.5), (4.2, 40), (0.05, 1), (12.0, 7)])
def test_student_t_matches_scipy(t, df):
    assert stats.student_t_two_sided_p(t, df) == pytest.approx(2 * sp.t.sf(abs(t), df), rel=1e-9, abs=1e-14)


@pytest.mark.parametrize("a,b,x", [(0.5, 0.5, 0.3), (2, 3, 0.1), (10, 0.5, 0.95), (30, 30, 0.5)])
def test_incomplete_beta_matches_scipy(a, b, x):
    from scipy.special import betainc
    assert stats.regularized_incomplete_beta(a, b, x) == pytest.approx(betainc(a, b, x), rel=1e-10)


def test_welch_matches_scipy():
    rng = random.Random(7)
    a = [rng.gauss(50, 5) for _i in range(40)]
    b = [rng.gauss(53, 9) for _i in range(25)]
    ours = stats.welch_t_test(a, b)
    ref = sp.ttest_ind(a, b, equal_var=False)
    assert ours["statistic"] == pytest.approx(ref.statistic, rel=1e-9)
    assert ours["p_value"] == pytest.approx(ref.pvalue, rel=1e-7)


def test_mann_whitney_matches_scipy_with_ties():
    rng = random.Random(3)
    a = [round(rng.expovariate(1 / 20)) for _i in range(60)]
    b = [round(rng.expovariate(1 / 26)) for _i in range(45)]
    ours = stats.mann_whitney_u(a, b)
    ref = sp.mannwhitneyu(a, b, alternative="two-sided", use_continuity=True, method="asymptotic")
    assert ours["u_a"] == pytest.approx(ref.statistic)
    assert ours["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)


def test_two_proportion_matches_manual_reference():
    # statsmodels' proportions_ztest(pooled) equivalent, computed with scipy's normal sf
    res = stats.two_proportion_z_test(980, 1000, 950, 1000)
    p = (980 + 950) / 2000
    se = (p * (1 - p) * (2 / 1000)) ** 0.5
    z = (0.98 - 0.95) / se
    assert res["statistic"] == pytest.approx(z)
    assert res["p_value"] == pytest.approx(2 * sp.norm.sf(abs(z)))


def test_identical_all_success_is_not_significant():
    assert stats.two_proportion_z_test(100, 100, 50, 50)["p_value"] == 1.0


@pytest.mark.parametrize("args", [(5, 0, 1, 1), (2, 1, 1, 1), (-1, 3, 1, 1)])
def test_two_proportion_rejects_bad_counts(args):
    with pytest.raises(stats.StatsError):
        stats.two_proportion_z_test(*args)


def test_compare_names_worse_version_only_when_significant():
    rng = random.Random(11)
    good = {"name": "v1", "requests": 2000, "errors": 10, "latencies": [rng.gauss(20, 2) for _i in range(300)]}
    bad = {"name": "v2", "requests": 2000, "errors": 120, "latencies": [rng.gauss(20, 2) for _i in range(300)]}
    res = stats.compare_versions(good, bad, confidence=0.99)
    assert res["winner"] == "v1" and res["errors"]["significant"]
    assert res["errors"]["p_value"] < 0.01
    same = stats.compare_versions(good, dict(good, name="v1b"), confidence=0.95)
    assert same["winner"] is None and not same["significant"]


def test_compare_conflict_names_no_winner():
    rng = random.Random(5)
    fast_buggy = {"name": "a", "requests": 5000, "errors": 300, "latencies": [rng.gauss(10, 1) for _i in range(200)]}
    slow_clean = {"name": "b", "requests": 5000, "errors": 5, "latencies": [rng.gauss(30, 1) for _i in range(200)]}
    res = stats.compare_versions(fast_buggy, slow_clean, latency_test="mann-whitney")
    assert res["conflict"] and res["winner"] is None


def test_compare_rejects_bad_confidence():
    with pytest.raises(stats.StatsError):
        stats.compare_versions({"name": "a", "requests": 1, "errors": 0}, {"name": "b", "requests": 1, "errors": 0},
                               confidence=1.0)


def test_binned_mann_whitney_equals_expanded_samples():
    bins = [5, 10, 25, 50, 100]
    a_counts, b_counts = [3, 10, 40, 7, 1], [1, 4, 30, 25, 6]
    a = [b for b, c in zip(bins, a_counts) for _i in range(c)]
    b = [b for b, c in zip(bins, b_counts) for _i in range(c)]
    binned = stats.mann_whitney_u_binned(a_counts, b_counts)
    expanded = stats.mann_whitney_u(a, b)
    assert binned["u_a"] == pytest.approx(expanded["u_a"])
    assert binned["p_value"] == pytest.approx(expanded["p_value"], rel=1e-12)
    ref = sp.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic")
    assert binned["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)


def test_compare_with_latency_bins_names_faster_version():
    res = stats.compare_versions({"name": "old", "requests": 500, "errors": 0, "latency_bins": [400, 90, 10, 0]},
                                 {"name": "new", "requests": 500, "errors": 0, "latency_bins": [50, 100, 250, 100]})
    assert res["latency"]["significant"] and res["winner"] == "old"


def test_rank_biserial_matches_scipy_u():
    rng = random.Random(3)
    a = [rng.gauss(20, 3) for _i in range(80)]
    b = [rng.gauss(21, 3) for _i in range(120)]
    res = stats.mann_whitney_u(a, b)
    ref = sp.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic")
    assert stats.rank_biserial(res["u_a"], res["u_b"]) == pytest.approx(2 * ref.statistic / (80 * 120) - 1)
    assert stats.rank_biserial(0.0, 0.0) == 0.0


# What the test bed saw under CPU contention (two identical versions, 300 requests each, a
# handful of requests of one worker pushed into the next buckets): significant, but no winner.
NOISE_A, NOISE_B = [300, 0, 0, 0], [282, 12, 5, 1]


def test_significant_but_negligible_latency_names_no_winner():
    a = {"name": "41.0", "requests": 300, "errors": 0, "latency_bins": NOISE_A}
    b = {"name": "42.0", "requests": 300, "errors": 0, "latency_bins": NOISE_B}
    res = stats.compare_versions(a, b, confidence=0.95)
    lat = res["latency"]
    assert lat["significant"] and lat["p_value"] < 0.05, lat
    assert lat["negligible"] and 0 < -lat["effect"] < 0.1, lat
    assert res["winner"] is None and not res["significant"]
    strict = stats.compare_versions(a, b, confidence=0.95, min_latency_effect=0.0)
    assert strict["winner"] == "41.0" and not strict["latency"]["negligible"]


def test_effect_threshold_applies_to_raw_samples_too():
    rng = random.Random(8)
    a = {"name": "a", "requests": 4000, "errors": 0, "latencies": [rng.gauss(20.0, 2) for _i in range(4000)]}
    b = {"name": "b", "requests": 4000, "errors": 0, "latencies": [rng.gauss(20.3, 2) for _i in range(4000)]}
    for test in ("welch", "mann-whitney"):
        res = stats.compare_versions(a, b, latency_test=test)
        assert res["latency"]["significant"] and res["latency"]["negligible"], (test, res["latency"])
        assert res["winner"] is None
        assert stats.compare_versions(a, b, latency_test=test, min_latency_effect=0.0)["winner"] == "a"


@pytest.mark.parametrize("effect", [-0.1, 1.5])
def test_compare_rejects_bad_min_latency_effect(effect):
    with pytest.raises(stats.StatsError):
        stats.compare_versions({"name": "a", "requests": 1, "errors": 0}, {"name": "b", "requests": 1, "errors": 0},
                               min_latency_effect=effect)
