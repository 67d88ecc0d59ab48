"""ab_test on the real test bed: a fixed split of real requests to two TorchServe versions, counted
by Prometheus from the handler's per-version metrics."""

import pytest

from tests.integration.canary_support import run_playbook, write_playbook

pytestmark = pytest.mark.integration
MODEL = "classifier"
VERSIONS = ("41.0", "42.0", "43.0", "44.0")  # 43.0 fails 8 % of requests, 44.0 sleeps 30 ms in each


@pytest.fixture(scope="module")
def ab_bed(torchserve, prometheus_factory):
    ts = torchserve
    for v, fr, delay in (("41.0", 0.0, 0), ("42.0", 0.0, 0), ("43.0", 0.08, 0), ("44.0", 0.0, 30)):
        ts.register(v, fail_rate=fr, delay_ms=delay)
    prom = prometheus_factory(targets=[ts.info["metrics_target"]], scrape_interval="1s")
    for v in VERSIONS:  # baseline sample before traffic (increase() needs two)
        prom.wait_for_series('gpuops_requests_total{model_version="%s"}' % v, timeout=60)
    # a fixed 1:1:1:1 split of 300 requests per version
    for _i in range(300):
        for v in VERSIONS:
            ts.predict(v)
    for v in VERSIONS:
        prom.wait_for_series('gpuops_requests_total{model_version="%s"} >= 300' % v, timeout=60)
    return ts, prom


def ab(tmp_path, prom, versions, **kw):
    args = dict(prometheus_url=prom.url, model=MODEL, versions=versions, window="10m", confidence=0.95)
    args.update(kw)
    pb = write_playbook(tmp_path / "ab.yml", [{"name": "ab", "gpuops.cluster.ab_test": args}])
    res = run_playbook(pb, {}, tmp_path)
    assert "ab" in res["tasks"], res["stderr"] + res["stdout"][-2000:]
    return res["tasks"]["ab"]


def test_worse_version_loses_significantly(ab_bed, tmp_path):
    _ts, prom = ab_bed
    out = ab(tmp_path, prom, ["41.0", "43.0"])
    assert out["versions"][0]["requests"] >= 300 and out["versions"][1]["errors"] > 5
    assert out["errors"]["significant"] and out["errors"]["p_value"] < 0.05
    assert out["winner"] == "41.0" and out["reason"] == "significant"


def test_identical_versions_have_no_winner(ab_bed, tmp_path):
    _ts, prom = ab_bed
    out = ab(tmp_path, prom, ["41.0", "42.0"])
    # Under CPU contention one worker can be a few ms slower on a handful of requests: that may be
    # significant, but it is below min_latency_effect (reason negligible_effect), never a winner.
    assert out["winner"] is None and out["significant"] is False, out["latency"]
    assert out["reason"] in ("not_significant", "negligible_effect"), out
    assert out["errors"]["p_value"] == pytest.approx(1.0)
    assert out["latency"] is not None, "latency buckets from the handler histogram were compared"


def test_slower_version_loses_on_latency_with_a_large_effect(ab_bed, tmp_path):
    _ts, prom = ab_bed
    out = ab(tmp_path, prom, ["44.0", "41.0"])
    lat = out["latency"]
    assert not out["errors"]["significant"], out["errors"]
    assert lat["significant"] and lat["effect"] > 0.9 and not lat["negligible"], lat
    assert out["winner"] == "41.0" and out["reason"] == "significant"


def test_too_few_requests_is_insufficient_data(ab_bed, tmp_path):
    _ts, prom = ab_bed
    out = ab(tmp_path, prom, ["41.0", "43.0"], min_requests=100000)
    assert out["reason"] == "insufficient_data" and out["winner"] is None
