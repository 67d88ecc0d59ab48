"""canary_gate on the real test bed: Prometheus scraping a real TorchServe 0.12 whose handler emits
per-version request/error/latency metrics. Versions are made healthy, failing (HTTP 5xx) or slow
with the handler's fault injection. There is no Istio proxy here, so the torchserve-* templates are
used (istio_requests_total does not exist on this test bed).
"""

import pytest

from tests.integration.canary_support import run_playbook, write_playbook

pytestmark = pytest.mark.integration

MODEL = "classifier"
OK, BAD, SLOW, IDLE = "21.0", "22.0", "23.0", "24.0"


def send(ts, version, n):
    codes = [ts.predict(version)[0] for _i in range(n)]
    return sum(1 for c in codes if c >= 500)


@pytest.fixture(scope="module")
def gate_bed(torchserve, prometheus_factory):
    """One TorchServe with four versions, one Prometheus scraping it every second."""
    ts = torchserve
    ts.register(OK)
    ts.register(BAD, fail_rate=0.5)
    ts.register(SLOW, delay_ms=1500)
    ts.register(IDLE)
    prom = prometheus_factory(targets=[ts.info["metrics_target"]], scrape_interval="1s")
    # counters start at 0 when a worker loads; let Prometheus see that baseline before traffic,
    # as it would in a cluster where it scrapes all the time (increase() needs two samples).
    for v in (OK, BAD, SLOW, IDLE):
        prom.wait_for_series('gpuops_requests_total{model_version="%s"}' % v, timeout=60)
    # the latency histogram's series only exist after a version's first request: send one and let
    # Prometheus scrape it before the rest, else a burst that fits between two scrapes makes
    # rate() 0 over the window and the p99 NaN (no data), as measured in a loaded CI run.
    assert send(ts, OK, 1) == 0
    send(ts, BAD, 1)
    send(ts, SLOW, 1)
    for v in (OK, BAD, SLOW):
        prom.wait_for_series('gpuops_latency_seconds_bucket{model_version="%s"}' % v, timeout=60)
    errors = send(ts, BAD, 40)
    assert 5 <= errors <= 35, "fault injection should fail about half of the requests"
    assert send(ts, OK, 40) == 0
    send(ts, SLOW, 8)
    for v in (OK, BAD, SLOW):
        prom.wait_for_series('gpuops_requests_total{model_version="%s"} > 0' % v, timeout=60)
    return ts, prom


def gate(tmp_path, prom_url, version, checks, check_mode=False, **opts):
    args = dict(prometheus_url=prom_url, model=MODEL, version=version, interval="5m", checks=checks)
    args.update(opts)
    pb = write_playbook(tmp_path / "gate.yml", [{"name": "gate", "gpuops.cluster.canary_gate": args}])
    res = run_playbook(pb, {}, tmp_path, check=check_mode)
    assert "gate" in res["tasks"], res["stderr"] + res["stdout"][-2000:]
    return res["tasks"]["gate"]


SUCCESS = {"name": "success-rate", "template": "torchserve-success-rate", "threshold_range": {"min": 95}}
# generous bound: a healthy version on a loaded 2-core CI box can take a few hundred ms; the slow one takes 1.5 s
LATENCY = {"name": "latency-p99", "template": "torchserve-latency-p99", "threshold_range": {"max": 1000}}


def test_healthy_version_passes(gate_bed, tmp_path):
    ts, prom = gate_bed
    out = gate(tmp_path, prom.url, OK, [SUCCESS, LATENCY, {
        "name": "workers", "kind": "torchserve_ready", "management_url": ts.info["management_url"],
        "model": MODEL, "version": OK}])
    assert out["decision"] == "pass", out["checks"]
    by = {c["name"]: c for c in out["checks"]}
    assert by["success-rate"]["value"] == pytest.approx(100.0)
    assert by["latency-p99"]["value"] < 1000
    assert by["workers"]["value"] >= 1
    assert out["changed"] is False


def test_5xx_version_fails_with_its_value(gate_bed, tmp_path):
    _ts, prom = gate_bed
    out = gate(tmp_path, prom.url, BAD, [SUCCESS])
    assert out["decision"] == "fail"
    check = out["checks"][0]
    assert check["status"] == "fail" and 10 < check["value"] < 90


def test_slow_version_fails_latency(gate_bed, tmp_path):
    _ts, prom = gate_bed
    out = gate(tmp_path, prom.url, SLOW, [SUCCESS, LATENCY])
    by = {c["name"]: c for c in out["checks"]}
    assert by["success-rate"]["status"] == "pass"
    assert by["latency-p99"]["status"] == "fail" and by["latency-p99"]["value"] > 1000
    assert out["decision"] == "fail"


@pytest.mark.parametrize("policy", ["fail", "hold", "pass"])
def test_no_traffic_follows_on_no_data(gate_bed, tmp_path, policy):
    _ts, prom = gate_bed
    out = gate(tmp_path, prom.url, IDLE, [dict(SUCCESS, min_request_volume=10)], on_no_data=policy)
    assert out["checks"][0]["status"] == "no_data"
    assert out["decision"] == policy


def test_min_request_volume_blocks_a_thin_sample(gate_bed, tmp_path):
    _ts, prom = gate_bed
    out = gate(tmp_path, prom.url, OK, [dict(SUCCESS, min_request_volume=100000)], on_no_data="hold")
    assert out["checks"][0]["status"] == "no_data" and out["decision"] == "hold"


def test_unregistered_version_is_not_ready(gate_bed, tmp_path):
    ts, prom = gate_bed
    out = gate(tmp_path, prom.url, OK, [{"name": "workers", "kind": "torchserve_ready", "model": MODEL,
                                        "version": "99.9", "management_url": ts.info["management_url"]}])
    assert out["checks"][0]["status"] == "fail" and out["decision"] == "fail"


def test_check_mode_evaluates_for_real(gate_bed, tmp_path):
    _ts, prom = gate_bed
    out = gate(tmp_path, prom.url, BAD, [SUCCESS], check_mode=True)
    assert out["decision"] == "fail" and out["checks"][0]["value"] is not None


def test_fail_on_gate_fails_the_task(gate_bed, tmp_path):
    _ts, prom = gate_bed
    out = gate(tmp_path, prom.url, BAD, [SUCCESS], fail_on_gate=True)
    assert out.get("failed") is True and "canary gate failed" in out["msg"]


def test_prometheus_killed_is_never_a_pass(gate_bed, prometheus_factory, tmp_path):
    ts, _prom = gate_bed
    doomed = prometheus_factory(targets=[ts.info["metrics_target"]], scrape_interval="1s")
    doomed.wait_for_series('gpuops_requests_total{model_version="%s"}' % OK, timeout=60)
    url = doomed.url
    doomed.kill()
    for policy in ("pass", "hold", "fail"):
        out = gate(tmp_path, url, OK, [SUCCESS], on_no_data=policy)
        assert out["checks"][0]["status"] == "error", out
        assert "unreachable" in out["checks"][0]["message"]
        assert out["decision"] == "fail"


def test_bad_promql_is_an_error_not_a_pass(gate_bed, tmp_path):
    _ts, prom = gate_bed
    out = gate(tmp_path, prom.url, OK, [{"name": "broken", "query": "sum(rate(gpuops_requests_total[",
                                        "threshold_range": {"min": 0}}], on_no_data="pass")
    assert out["checks"][0]["status"] == "error" and out["decision"] == "fail"
