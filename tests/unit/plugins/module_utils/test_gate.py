"""Gate evaluation core: thresholds, no_data policy, min volume, errors never pass, rendering."""

import json

import pytest

from ansible_collections.gpuops.cluster.plugins.module_utils import gate, promql


class FakeProm:
    """Stands in for the Prometheus HTTP API in unit tests: maps query substrings to answers."""

    def __init__(self, answers):
        self.answers = answers
        self.queries = []

    def query(self, q):
        self.queries.append(q)
        for key, value in self.answers.items():
            if key in q:
                if isinstance(value, Exception):
                    raise value
                return value
        return None


VARS = {"namespace": "serving", "target": "classifier-canary", "interval": "1m",
        "model": "classifier", "version": "2.0"}


def sr_check(**kw):
    base = {"name": "success", "template": "torchserve-success-rate", "threshold_range": {"min": 99}}
    base.update(kw)
    return base


def test_pass_inside_range():
    res = gate.run_gate([sr_check()], VARS, FakeProm({"gpuops_errors_total": 99.5}))
    assert res["decision"] == "pass"
    assert res["checks"][0]["status"] == "pass" and res["checks"][0]["value"] == 99.5


def test_fail_outside_range_reports_value():
    res = gate.run_gate([sr_check()], VARS, FakeProm({"gpuops_errors_total": 80.0}))
    assert res["decision"] == "fail"
    assert res["checks"][0]["status"] == "fail"
    assert "outside" in res["checks"][0]["message"]


def test_max_bound():
    chk = {"name": "p99", "template": "torchserve-latency-p99", "threshold_range": {"max": 500}}
    assert gate.run_gate([chk], VARS, FakeProm({"histogram_quantile": 750.0}))["decision"] == "fail"
    assert gate.run_gate([chk], VARS, FakeProm({"histogram_quantile": 120.0}))["decision"] == "pass"


@pytest.mark.parametrize("policy,decision", [("fail", "fail"), ("hold", "hold"), ("pass", "pass")])
def test_no_data_policy(policy, decision):
    res = gate.run_gate([sr_check()], VARS, FakeProm({}), on_no_data=policy)
    assert res["checks"][0]["status"] == "no_data"
    assert res["decision"] == decision


def test_per_check_no_data_overrides_global():
    res = gate.run_gate([sr_check(on_no_data="hold")], VARS, FakeProm({}), on_no_data="fail")
    assert res["decision"] == "hold"


def test_min_request_volume_turns_low_traffic_into_no_data():
    prom = FakeProm({"sum(increase(gpuops_requests_total": 3.0, "gpuops_errors_total": 100.0})
    res = gate.run_gate([sr_check(min_request_volume=20)], VARS, prom, on_no_data="hold")
    assert res["checks"][0]["status"] == "no_data"
    assert "below min_request_volume" in res["checks"][0]["message"]
    assert res["decision"] == "hold"


@pytest.mark.parametrize("policy", ["fail", "hold", "pass"])
def test_prometheus_error_is_never_a_pass(policy):
    prom = FakeProm({"gpuops": promql.PrometheusError("connection refused")})
    res = gate.run_gate([sr_check()], VARS, prom, on_no_data=policy)
    assert res["checks"][0]["status"] == "error"
    assert res["decision"] == "fail"


def test_on_error_hold_holds_but_never_passes():
    prom = FakeProm({"gpuops": promql.PrometheusError("boom")})
    assert gate.run_gate([sr_check()], VARS, prom, on_error="hold")["decision"] == "hold"
    assert gate.decide([{"name": "success", "status": "error"}], [sr_check(on_error="pass")]) == "fail"


def test_one_failure_among_passes_fails_the_gate():
    checks = [sr_check(), {"name": "p99", "template": "torchserve-latency-p99", "threshold_range": {"max": 100}}]
    res = gate.run_gate(checks, VARS, FakeProm({"gpuops_errors_total": 100.0, "histogram_quantile": 400.0}))
    assert [c["status"] for c in res["checks"]] == ["pass", "fail"]
    assert res["decision"] == "fail"


def test_hold_and_fail_gives_fail():
    assert gate.decide([{"name": "a", "status": "no_data"}, {"name": "b", "status": "fail"}],
                       [{"name": "a", "on_no_data": "hold"}, {"name": "b"}]) == "fail"


@pytest.mark.parametrize("checks,needle", [
    ([], "no checks"),
    ([{"name": "x", "query": "up", "template": "request-duration", "threshold_range": {"min": 1}}], "exactly one"),
    ([{"name": "x", "template": "nope", "threshold_range": {"min": 1}}], "unknown"),
    ([{"name": "x", "query": "up"}], "threshold_range"),
    ([{"name": "x", "query": "up", "threshold_range": {"min": 5, "max": 1}}], "min 5 > max 1"),
    ([{"name": "x", "query": "up", "threshold_range": {"min": 1}}] * 2, "twice"),
    ([{"name": "x", "kind": "torchserve_ready", "model": "m"}], "management_url"),
    ([{"name": "x", "kind": "deployment_available", "namespace": "n"}], "deployment"),
    ([{"name": "x", "query": "up", "threshold_range": {"min": 1}, "min_request_volume": 5}], "volume_query"),
])
def test_validation_messages(checks, needle):
    with pytest.raises(gate.GateConfigError, match=needle):
        gate.run_gate(checks, VARS, FakeProm({}))


def test_unknown_placeholder_is_a_config_error():
    chk = {"name": "x", "query": 'rate(foo{pod="{{ pod }}"}[1m])', "threshold_range": {"min": 0}}
    with pytest.raises(gate.GateConfigError, match="pod"):
        gate.run_gate([chk], VARS, FakeProm({}))


def test_builtin_istio_template_renders_like_flagger():
    q = promql.render(promql.BUILTIN_TEMPLATES["request-success-rate"][0], VARS)
    assert 'destination_workload_namespace="serving"' in q
    assert 'destination_workload=~"classifier-canary"' in q
    assert 'response_code!~"5.*"' in q and "[1m]" in q
    assert "{{" not in q


@pytest.mark.parametrize("bad", ['a"b', "x}", "a\\b", "line\nbreak"])
def test_render_rejects_quote_breakout(bad):
    with pytest.raises(promql.TemplateError):
        promql.render('up{job="{{ target }}"}', {"target": bad})


def test_render_rejects_bad_interval():
    with pytest.raises(promql.TemplateError, match="duration"):
        promql.render("rate(x[{{ interval }}])", {"interval": "1 minute"})


@pytest.mark.parametrize("data,value", [
    ({"resultType": "vector", "result": []}, None),
    ({"resultType": "vector", "result": [{"metric": {}, "value": [1, "NaN"]}]}, None),
    ({"resultType": "vector", "result": [{"metric": {}, "value": [1, "42.5"]}]}, 42.5),
    ({"resultType": "scalar", "result": [1, "7"]}, 7.0),
])
def test_parse_value(data, value):
    assert promql.parse_value(data) == value


def test_parse_value_rejects_many_series():
    with pytest.raises(promql.PrometheusError, match="aggregate"):
        promql.parse_value({"resultType": "vector", "result": [{"value": [1, "1"]}, {"value": [1, "2"]}]})


def test_client_maps_http_errors_and_unreachable():
    bad = promql.PrometheusClient("http://127.0.0.1:9", opener=lambda u, h, t: (
        400, json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error"})))
    with pytest.raises(promql.PrometheusError, match="bad_data"):
        bad.query("up")

    def refuse(u, h, t):
        raise OSError("connection refused")
    with pytest.raises(promql.PrometheusError, match="unreachable"):
        promql.PrometheusClient("http://127.0.0.1:9", opener=refuse).query("up")


def test_shared_prometheus_options_reach_the_client():
    """The options of the gpuops.cluster.prometheus doc fragment end up on the wire (headers) and in
    the client (timeout, TLS); a module without prometheus_url gets no client."""
    spec = promql.prometheus_argument_spec()
    assert spec["prometheus_headers"]["no_log"] is True
    assert set(spec) == {"prometheus_url", "prometheus_timeout", "prometheus_headers",
                         "prometheus_validate_certs", "prometheus_ca_path"}
    spec["prometheus_timeout"]["default"] = 99
    assert promql.PROMETHEUS_ARG_SPEC["prometheus_timeout"]["default"] == 10, "callers get a copy"
    assert promql.prometheus_settings({"prometheus_url": None}) is None
    seen = {}

    def opener(url, headers, timeout):
        seen.update(url=url, headers=headers, timeout=timeout)
        return 200, json.dumps({"status": "success", "data": {"resultType": "vector",
                                                              "result": [{"value": [1, "3"]}]}})
    params = {"prometheus_url": "https://prom.example:9090/", "prometheus_timeout": 7,
              "prometheus_headers": {"Authorization": "Bearer t0k3n"}, "prometheus_validate_certs": False,
              "prometheus_ca_path": "/etc/ssl/prom-ca.pem"}
    client = promql.client_from_params(params, opener=opener)
    assert client.validate_certs is False and client.ca_path == "/etc/ssl/prom-ca.pem"
    assert client.query("up") == 3.0
    assert seen["url"].startswith("https://prom.example:9090/api/v1/query?")
    assert seen["headers"]["Authorization"] == "Bearer t0k3n" and seen["timeout"] == 7
