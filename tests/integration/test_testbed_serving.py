"""Serving test bed end to end: real TorchServe + real Prometheus, no fakes.

The handler's per-version metrics (gpuops_requests_total, gpuops_errors_total,
gpuops_latency_seconds; labels model_name, model_version) are what the canary gate queries,
so these tests read them back through Prometheus with the same kind of PromQL.
Needs: scripts/build/torchserve.sh, Java 17, /usr/bin/prometheus.
"""

import pytest

from tests.testbed import common
from tests.testbed.model import build
from tests.testbed.prometheus import scrape_configs
from tests.testbed.torchserve import TorchServe, http

pytestmark = pytest.mark.integration

MODEL = "classifier"
N = 40  # requests per version for the error-rate check
HEALTHY, FAILING, SLOW = "1.0", "2.0", "3.0"


def sel(version):
    return f'model_name="{MODEL}",model_version="{version}"'


@pytest.fixture(scope="module")
def serving(torchserve, prometheus_factory):
    """The preset versions on the session TorchServe, scraped every second by a Prometheus."""
    prom = prometheus_factory(name="prometheus-serving", targets=[torchserve.info["metrics_target"]])
    loads = {
        HEALTHY: torchserve.register(HEALTHY),
        FAILING: torchserve.register(FAILING, fail_rate=0.5),
        SLOW: torchserve.register(SLOW, delay_ms=300),
    }
    prom.wait_for_targets_up(timeout=60)
    # The handler emits both counters with 0 when a worker loads: the series exist before traffic,
    # so increase()/rate() over a window count every request.
    for v in (HEALTHY, FAILING, SLOW):
        prom.wait_for_series(f"gpuops_errors_total{{{sel(v)}}}", timeout=60)
    return torchserve, prom, loads


def counter(prom, name, version):
    return prom.query_value(f"sum(gpuops_{name}_total{{{sel(version)}}})") or 0.0


def wait_counted(prom, version, at_least):
    """Wait until Prometheus has scraped ``at_least`` requests of ``version``."""
    prom.wait_for_series(f"sum(gpuops_requests_total{{{sel(version)}}}) >= {at_least}", timeout=60)


def test_error_rate_per_version_through_prometheus(serving):
    ts, prom, _ = serving
    before = {v: counter(prom, "requests", v) for v in (HEALTHY, FAILING)}
    codes = {v: [ts.predict(v, [1.0, 2.0, 3.0, 4.0])[0] for _ in range(N)] for v in (HEALTHY, FAILING)}
    assert codes[HEALTHY] == [200] * N
    assert set(codes[FAILING]) == {200, 500}
    # failures are spread deterministically: exactly half, +-1 for where the sequence starts
    assert abs(codes[FAILING].count(500) - N // 2) <= 1, codes[FAILING]
    for v in (HEALTHY, FAILING):
        wait_counted(prom, v, before[v] + N)
    # the canary gate's TorchServe error-rate form: errors / requests over a window
    rate = {}
    for v in (HEALTHY, FAILING):
        rate[v] = prom.query_value(f"sum(increase(gpuops_errors_total{{{sel(v)}}}[10m])) / "
                                   f"sum(increase(gpuops_requests_total{{{sel(v)}}}[10m]))")
    assert rate[HEALTHY] is not None and rate[HEALTHY] < 0.01, rate
    assert rate[FAILING] is not None and 0.2 < rate[FAILING] < 0.8, rate
    # TorchServe's own counters agree that the failures were answered 5xx
    assert prom.query_value("sum(Requests5XX)") >= codes[FAILING].count(500)


def test_slow_version_has_higher_latency_quantile(serving):
    ts, prom, _ = serving
    before = {v: counter(prom, "requests", v) for v in (HEALTHY, SLOW)}
    for v in (HEALTHY, SLOW):
        for _ in range(10):
            assert ts.predict(v)[0] == 200
    for v in (HEALTHY, SLOW):
        wait_counted(prom, v, before[v] + 10)
    # Lifetime distribution (cumulative buckets): the fast version's bucket series may appear
    # within a single scrape, which a rate() over them would not see.
    p50 = {v: prom.query_value(
        f"histogram_quantile(0.5, sum by (le) (gpuops_latency_seconds_bucket{{{sel(v)}}}))")
        for v in (HEALTHY, SLOW)}
    # every SLOW request slept 300 ms, so all its observations are in buckets above 0.25 s
    assert p50[SLOW] >= 0.25, p50
    assert p50[HEALTHY] < p50[SLOW], p50
    mean = prom.query_value(f"sum(gpuops_latency_seconds_sum{{{sel(SLOW)}}}) / "
                            f"sum(gpuops_latency_seconds_count{{{sel(SLOW)}}})")
    assert mean >= 0.3, mean


def test_workers_ready_only_after_load_not_ping(torchserve, tmp_path):
    version = "0.9-gated"
    gate = tmp_path / "open"
    torchserve.register(version, wait=False, load_gate=gate)
    try:
        # registered, its worker is blocked in initialize() until the gate file exists
        assert torchserve.describe(version) is not None
        assert torchserve.ready_workers(version) == 0
        ping = http("GET", f"{torchserve.info['inference_url']}/ping")
        assert ping[0] == 200, ping  # /ping says nothing about this version being loaded
        gate.write_text("go")
        torchserve.wait_ready(version, 1, timeout=300)
        assert torchserve.ready_workers(version) == 1
        status, body = torchserve.predict(version)
        assert status == 200 and body["version"] == version, body
    finally:
        torchserve.unregister(version)
    assert torchserve.describe(version) is None


def test_default_version_unregister_and_runtime_faults(torchserve):
    original = torchserve.default_version()  # shared session server: restore its default
    torchserve.register("4.0")
    torchserve.register("4.1")
    try:
        torchserve.set_default("4.1")
        assert torchserve.default_version() == "4.1"
        status, body = torchserve.predict(None)
        assert status == 200 and body["version"] == "4.1", body
        # flip a running version to failing and back, without re-registering it
        torchserve.set_faults("4.1", fail_rate=1.0)
        assert torchserve.predict("4.1")[0] == 500
        torchserve.set_faults("4.1")
        assert torchserve.predict("4.1")[0] == 200
        # registering the same archive again is a no-op, other faults for it are refused
        assert torchserve.register("4.0")["existing"] is True
        with pytest.raises(common.TestbedError, match="already registered"):
            torchserve.register("4.0", fail_rate=0.3)
        torchserve.set_default("4.0")
        torchserve.unregister("4.1")
        assert torchserve.describe("4.1") is None
        assert torchserve.predict("4.1")[0] == 404
        assert torchserve.predict(None)[1]["version"] == "4.0"
    finally:
        if original and original not in ("4.0", "4.1"):
            torchserve.set_default(original)  # TorchServe refuses to remove the default version
        for v in ("4.1", "4.0"):
            if torchserve.describe(v):
                torchserve.unregister(v)


def test_bad_request_is_4xx_and_not_counted_as_error(serving):
    ts, prom, _ = serving
    before = counter(prom, "requests", HEALTHY)
    errors_before = counter(prom, "errors", HEALTHY)
    status, body = ts.predict(HEALTHY, {"data": [1, 2]})
    assert status == 400, body
    wait_counted(prom, HEALTHY, before + 1)
    assert counter(prom, "errors", HEALTHY) == errors_before


def refused(resp):
    """TorchServe 0.12 refuses a missing or wrong token with HTTP 400 InvalidKeyException (not 401)."""
    status, body = resp
    return status == 400 and isinstance(body, dict) and body.get("type") == "InvalidKeyException"


def test_token_auth_refuses_unauthenticated_management_call(keep_logs):
    ts = TorchServe(name="torchserve-token", token_auth=True, lifetime=600)
    ts.start()
    try:
        mgmt = ts.info["management_url"]
        assert refused(http("GET", f"{mgmt}/models"))
        assert refused(http("GET", f"{mgmt}/models", headers={"Authorization": "Bearer wrong"}))
        keys = ts.keys()
        ok = http("GET", f"{mgmt}/models", headers={"Authorization": f"Bearer {keys['management']}"})
        assert ok == (200, {"models": []}), ok
        # the inference key is a different key: it does not open the management API
        assert refused(http("GET", f"{mgmt}/models", headers={"Authorization": f"Bearer {keys['inference']}"}))
        assert refused(http("POST", f"{ts.info['inference_url']}/predictions/{MODEL}", body=[0, 0, 0, 0]))
        # the component's own helpers send the keys
        assert ts.register("5.0")["load_seconds"] is not None
        status, body = ts.predict("5.0")
        assert status == 200 and body["version"] == "5.0", body
    finally:
        ts.stop()
        ts.cleanup(keep_logs=keep_logs())


def test_prometheus_kill_and_restart(serving, prometheus_factory):
    ts, _, _ = serving
    prom = prometheus_factory(name="prometheus-kill", targets=[ts.info["metrics_target"]])
    prom.wait_for_series(f"gpuops_requests_total{{{sel(HEALTHY)}}}", timeout=60)
    port = prom.info["port"]
    prom.kill()
    assert not any(p.alive() for p in prom.procs)
    with pytest.raises(OSError):
        prom.query("up")
    prom.restart()
    assert prom.info["port"] == port
    # the TSDB survived the SIGKILL (WAL replay) and scraping resumes
    prom.wait_for_series(f"gpuops_requests_total{{{sel(HEALTHY)}}}", timeout=60)


def test_scrape_configs_group_targets_and_reject_unknown_keys():
    cfgs = scrape_configs(["127.0.0.1:1", {"target": "127.0.0.1:2", "labels": {"track": "canary"}},
                           {"target": "127.0.0.1:3", "metrics_path": "/stats"}], "1s")
    assert [c["job_name"] for c in cfgs] == ["testbed", "testbed-1"]
    assert cfgs[0]["static_configs"] == [{"targets": ["127.0.0.1:1"]},
                                         {"targets": ["127.0.0.1:2"], "labels": {"track": "canary"}}]
    assert cfgs[1]["metrics_path"] == "/stats"
    with pytest.raises(ValueError, match="unknown keys"):
        scrape_configs([{"target": "127.0.0.1:1", "label": {}}], "1s")
    with pytest.raises(ValueError, match="names no 'target'"):
        scrape_configs([{"labels": {"a": "b"}}], "1s")


@pytest.mark.parametrize("kwargs, match", [
    ({"version": "2.0", "fail_rate": 1.5, "delay_ms": 0}, "fail_rate"),
    ({"version": "2.0", "fail_rate": 0.1, "delay_ms": -1}, "delay_ms"),
    ({"version": "2.0/../x", "fail_rate": 0.1, "delay_ms": 0}, "model version"),
])
def test_archive_builder_rejects_bad_faults(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build.build_archive(**kwargs)
