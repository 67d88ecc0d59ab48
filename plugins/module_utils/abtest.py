# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""A/B comparison core: collect per-version counts from Prometheus, then compare.

The split itself is fixed beforehand (gpuops.cluster.traffic_split); this core
only measures and decides. From Prometheus it reads, per version, over
``window``: requests, errors, and the latency histogram buckets of the
collection's TorchServe handler (``gpuops_latency_seconds_bucket``). Latency is then
compared with Mann-Whitney U over the buckets (binned, tie-corrected), since a
histogram carries no raw samples for a t-test.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.gpuops.cluster.plugins.module_utils.promql import (
    TS_ERRORS, TS_LATENCY_BUCKET, TS_REQUESTS, render)
from ansible_collections.gpuops.cluster.plugins.module_utils.stats import compare_versions


def _le(labels):
    le = labels.get("le", "+Inf")
    return float("inf") if le in ("+Inf", "Inf") else float(le)


def buckets_to_bins(series):
    """Cumulative ``le`` buckets [(labels, count)] -> (sorted upper bounds, per-bin counts)."""
    pairs = sorted((_le(labels), value) for labels, value in series)
    bounds, bins, prev = [], [], 0.0
    for bound, cumulative in pairs:
        bounds.append(bound)
        bins.append(max(0.0, cumulative - prev))
        prev = max(prev, cumulative)
    return bounds, bins


def collect_version(prom, model, version, window):
    variables = {"model": model, "version": version, "interval": window}
    requests = prom.query(render("sum(increase(%s[{{ interval }}]))" % TS_REQUESTS, variables))
    errors = prom.query(render("sum(increase(%s[{{ interval }}]))" % TS_ERRORS, variables))
    series = prom.query_vector(render("sum by (le) (increase(%s[{{ interval }}]))" % TS_LATENCY_BUCKET, variables))
    bounds, bins = buckets_to_bins(series)
    return {"name": version, "requests": int(round(requests or 0)), "errors": int(round(errors or 0)),
            "latency_bounds": bounds, "latency_bins": [int(round(b)) for b in bins]}


def align_bins(a, b):
    """Both versions' bins over the union of bucket bounds (buckets normally match)."""
    if a["latency_bounds"] == b["latency_bounds"]:
        return a["latency_bins"], b["latency_bins"]
    bounds = sorted(set(a["latency_bounds"]) | set(b["latency_bounds"]))

    def expand(v):
        m = dict(zip(v["latency_bounds"], v["latency_bins"]))
        return [m.get(x, 0) for x in bounds]
    return expand(a), expand(b)


def run_ab(versions_data, confidence, min_requests, latency_test="welch", min_latency_effect=0.1):
    """Compare two versions' data dicts; a winner only when significant and volume suffices."""
    a, b = versions_data
    for v in (a, b):
        if v["requests"] < min_requests:
            return {"winner": None, "significant": False, "reason": "insufficient_data",
                    "message": "version %s has %d requests, fewer than min_requests %d" % (
                        v["name"], v["requests"], min_requests),
                    "versions": [a, b]}
    ea, eb = dict(a), dict(b)
    if a.get("latency_bins") and b.get("latency_bins") and sum(a["latency_bins"]) and sum(b["latency_bins"]):
        ea["latency_bins"], eb["latency_bins"] = align_bins(a, b)
    else:
        ea.pop("latency_bins", None)
        eb.pop("latency_bins", None)
    res = compare_versions(ea, eb, confidence=confidence, latency_test=latency_test,
                           min_latency_effect=min_latency_effect)
    if res["winner"]:
        reason = "significant"
    elif res["conflict"]:
        reason = "conflict"
    elif res["latency"] and res["latency"]["negligible"]:
        reason = "negligible_effect"
    else:
        reason = "not_significant"
    res.update(reason=reason, versions=[a, b])
    return res


def collect_from_prometheus(prom, model, versions, window):
    """Data of each version; PrometheusError propagates (never a verdict without data)."""
    return [collect_version(prom, model, v, window) for v in versions]
