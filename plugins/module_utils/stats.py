# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Significance tests for A/B comparisons, in pure Python (no scipy at run time).

- two_proportion_z_test: error (or success) ratios of two versions;
- welch_t_test: mean latency with unequal variances;
- mann_whitney_u: latency distributions, no normality assumption
  (normal approximation with tie correction and continuity correction).

All return a dict with the statistic, the two-sided p-value and the effect.
The Student t CDF uses the regularized incomplete beta function evaluated
with Lentz's continued fraction (Numerical Recipes' betacf).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import math


class StatsError(ValueError):
    """Inputs cannot support the requested test."""


def normal_cdf(z):
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def normal_two_sided_p(z):
    return math.erfc(abs(z) / math.sqrt(2.0))


def _lentz_step(aa, c, d, fpmin=1.0e-300):
    """One modified-Lentz update of the continued fraction; returns (c, d, factor)."""
    d = 1.0 + aa * d
    if abs(d) < fpmin:
        d = fpmin
    c = 1.0 + aa / c
    if abs(c) < fpmin:
        c = fpmin
    d = 1.0 / d
    return c, d, d * c


def _betacf(a, b, x, max_iter=300, eps=3.0e-14):
    fpmin = 1.0e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    if abs(d) < fpmin:
        d = fpmin
    d = 1.0 / d
    h = d
    for m in range(1, max_iter + 1):
        m2 = 2 * m
        # even step, then odd step of the continued fraction
        c, d, factor = _lentz_step(m * (b - m) * x / ((qam + m2) * (a + m2)), c, d)
        h *= factor
        c, d, delta = _lentz_step(-(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)), c, d)
        h *= delta
        if abs(delta - 1.0) < eps:
            return h
    raise StatsError("incomplete beta continued fraction did not converge")


def regularized_incomplete_beta(a, b, x):
    if x < 0.0 or x > 1.0:
        raise StatsError("x must be within [0, 1]")
    if x in (0.0, 1.0):
        return x
    ln_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                + a * math.log(x) + b * math.log(1.0 - x))
    front = math.exp(ln_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def student_t_two_sided_p(t, df):
    if df <= 0:
        raise StatsError("degrees of freedom must be positive")
    if math.isinf(t):
        return 0.0
    x = df / (df + t * t)
    return regularized_incomplete_beta(df / 2.0, 0.5, x)


def _mean_var(samples):
    n = len(samples)
    mean = sum(samples) / n
    var = sum((s - mean) ** 2 for s in samples) / (n - 1)
    return n, mean, var


def two_proportion_z_test(successes_a, total_a, successes_b, total_b):
    """Pooled two-proportion z-test of p_a == p_b (two-sided)."""
    for name, v in (("successes_a", successes_a), ("total_a", total_a),
                    ("successes_b", successes_b), ("total_b", total_b)):
        if v < 0:
            raise StatsError("%s must not be negative" % name)
    if total_a <= 0 or total_b <= 0:
        raise StatsError("both versions need at least one request")
    if successes_a > total_a or successes_b > total_b:
        raise StatsError("successes cannot exceed totals")
    p_a = successes_a / total_a
    p_b = successes_b / total_b
    pooled = (successes_a + successes_b) / (total_a + total_b)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / total_a + 1.0 / total_b))
    if se == 0.0:
        # identical all-success or all-failure: no evidence of a difference
        return {"test": "two-proportion-z", "statistic": 0.0, "p_value": 1.0,
                "rate_a": p_a, "rate_b": p_b, "difference": p_a - p_b}
    z = (p_a - p_b) / se
    return {"test": "two-proportion-z", "statistic": z, "p_value": normal_two_sided_p(z),
            "rate_a": p_a, "rate_b": p_b, "difference": p_a - p_b}


def welch_t_test(samples_a, samples_b):
    """Welch's unequal-variance t-test of mean_a == mean_b (two-sided)."""
    if len(samples_a) < 2 or len(samples_b) < 2:
        raise StatsError("Welch's t-test needs at least two samples per version")
    n_a, m_a, v_a = _mean_var(samples_a)
    n_b, m_b, v_b = _mean_var(samples_b)
    se2 = v_a / n_a + v_b / n_b
    if se2 == 0.0:
        p = 1.0 if m_a == m_b else 0.0
        return {"test": "welch-t", "statistic": 0.0 if m_a == m_b else math.copysign(float("inf"), m_a - m_b),
                "df": float(n_a + n_b - 2), "p_value": p, "mean_a": m_a, "mean_b": m_b,
                "difference": m_a - m_b}
    t = (m_a - m_b) / math.sqrt(se2)
    df = se2 ** 2 / ((v_a / n_a) ** 2 / (n_a - 1) + (v_b / n_b) ** 2 / (n_b - 1))
    return {"test": "welch-t", "statistic": t, "df": df, "p_value": student_t_two_sided_p(t, df),
            "mean_a": m_a, "mean_b": m_b, "difference": m_a - m_b}


def _ranks(values):
    """Average ranks (1-based) and the tie-correction term sum(t^3 - t)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    ties = 0.0
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        avg = (i + j) / 2.0 + 1.0
        for k in range(i, j + 1):
            ranks[order[k]] = avg
        t = j - i + 1
        ties += t ** 3 - t
        i = j + 1
    return ranks, ties


def mann_whitney_u(samples_a, samples_b):
    """Mann-Whitney U (two-sided), normal approximation with tie and continuity correction."""
    n_a, n_b = len(samples_a), len(samples_b)
    if n_a < 1 or n_b < 1:
        raise StatsError("Mann-Whitney U needs samples from both versions")
    ranks, ties = _ranks(list(samples_a) + list(samples_b))
    r_a = sum(ranks[:n_a])
    u_a = r_a - n_a * (n_a + 1) / 2.0
    u_b = n_a * n_b - u_a
    n = n_a + n_b
    mu = n_a * n_b / 2.0
    sigma2 = n_a * n_b / 12.0 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    if sigma2 <= 0.0:
        return {"test": "mann-whitney-u", "statistic": u_a, "p_value": 1.0, "u_a": u_a, "u_b": u_b}
    u = max(u_a, u_b)
    z = (u - mu - 0.5) / math.sqrt(sigma2)
    p = min(1.0, 2.0 * (1.0 - normal_cdf(z)))
    return {"test": "mann-whitney-u", "statistic": u_a, "z": z, "p_value": p, "u_a": u_a, "u_b": u_b,
            "median_a": _median(samples_a), "median_b": _median(samples_b)}


def mann_whitney_u_binned(counts_a, counts_b):
    """Mann-Whitney U over binned data (e.g. Prometheus histogram buckets).

    ``counts_a``/``counts_b``: per-bin counts over the same ordered bins (not
    cumulative). Every bin is one tie group, so the tie correction applies;
    this is the exact rank statistic of the binned samples, computed without
    expanding them.
    """
    if len(counts_a) != len(counts_b):
        raise StatsError("both versions need the same bins")
    n_a, n_b = float(sum(counts_a)), float(sum(counts_b))
    if n_a < 1 or n_b < 1:
        raise StatsError("Mann-Whitney U needs samples from both versions")
    n = n_a + n_b
    rank_start, r_a, ties = 0.0, 0.0, 0.0
    for ca, cb in zip(counts_a, counts_b):
        t = ca + cb
        if t:
            avg = rank_start + (t + 1) / 2.0
            r_a += ca * avg
            ties += t ** 3 - t
            rank_start += t
    u_a = r_a - n_a * (n_a + 1) / 2.0
    u_b = n_a * n_b - u_a
    mu = n_a * n_b / 2.0
    sigma2 = n_a * n_b / 12.0 * ((n + 1) - ties / (n * (n - 1)))
    if sigma2 <= 0.0:
        return {"test": "mann-whitney-u", "statistic": u_a, "p_value": 1.0, "u_a": u_a, "u_b": u_b}
    z = (max(u_a, u_b) - mu - 0.5) / math.sqrt(sigma2)
    return {"test": "mann-whitney-u", "statistic": u_a, "z": z, "p_value": min(1.0, 2.0 * (1.0 - normal_cdf(z))),
            "u_a": u_a, "u_b": u_b}


def rank_biserial(u_a, u_b):
    """Rank-biserial correlation (u_a - u_b) / (n_a * n_b), from -1 to 1.

    The effect size of Mann-Whitney U: the probability that a sample of A is
    larger than one of B minus the reverse (ties count half each way). 0 means
    no shift; 0.1 is a small effect (A slower in 55 % of pairs), 0.3 medium,
    0.5 large. Positive: A is slower.
    """
    total = u_a + u_b
    return 0.0 if total <= 0 else (u_a - u_b) / total


def _median(samples):
    s = sorted(samples)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2.0


def compare_versions(a, b, confidence=0.95, latency_test="welch", min_latency_effect=0.1):
    """Compare two versions' success ratio and latency; name a winner only when significant.

    ``a``/``b``: dicts with ``name``, ``requests``, ``errors`` and optional
    ``latencies`` (list of samples, ms) or ``latency_bins`` (per-bucket counts
    over the same ordered buckets; always compared with Mann-Whitney U). Returns ``{"errors": {...},
    "latency": {...}|None, "winner": name|None, "significant": bool}``.
    A winner on errors is the version with the lower error ratio; on latency the
    faster one, and only when the latency effect (rank-biserial correlation, see
    ``rank_biserial``) is at least ``min_latency_effect``: with hundreds of samples a
    few milliseconds of scheduling noise are "significant" without mattering.
    If the two tests disagree (one version better on errors, the other on
    latency) no winner is named.
    """
    if not 0.5 <= confidence < 1.0:
        raise StatsError("confidence must be within [0.5, 1)")
    if not 0.0 <= min_latency_effect <= 1.0:
        raise StatsError("min_latency_effect must be within [0, 1]")
    alpha = 1.0 - confidence
    err = two_proportion_z_test(a["requests"] - a["errors"], a["requests"],
                                b["requests"] - b["errors"], b["requests"])
    err["significant"] = err["p_value"] < alpha
    err["better"] = None
    if err["significant"]:
        err["better"] = a["name"] if err["rate_a"] > err["rate_b"] else b["name"]
    lat = None
    if a.get("latency_bins") and b.get("latency_bins"):
        lat = mann_whitney_u_binned(a["latency_bins"], b["latency_bins"])
        lat["effect"] = rank_biserial(lat["u_a"], lat["u_b"])
        a_slower = lat["u_a"] > lat["u_b"]
    elif a.get("latencies") and b.get("latencies"):
        ranks = mann_whitney_u(a["latencies"], b["latencies"])
        if latency_test == "welch":
            lat = welch_t_test(a["latencies"], b["latencies"])
            a_slower = lat["mean_a"] > lat["mean_b"]
        elif latency_test == "mann-whitney":
            lat = ranks
            a_slower = lat["u_a"] > lat["u_b"]
        else:
            raise StatsError("latency_test must be welch or mann-whitney")
        lat["effect"] = rank_biserial(ranks["u_a"], ranks["u_b"])
    if lat is not None:
        lat["significant"] = lat["p_value"] < alpha
        lat["min_effect"] = min_latency_effect
        lat["negligible"] = lat["significant"] and abs(lat["effect"]) < min_latency_effect
        lat["better"] = None
        if lat["significant"] and not lat["negligible"]:
            lat["better"] = b["name"] if a_slower else a["name"]
    verdicts = sorted(set(v for v in (err["better"], lat["better"] if lat else None) if v))
    winner = verdicts[0] if len(verdicts) == 1 else None
    return {"errors": err, "latency": lat, "winner": winner, "significant": winner is not None,
            "confidence": confidence, "conflict": len(verdicts) > 1}
