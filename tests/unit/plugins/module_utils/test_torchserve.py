"""torchserve_model planning, key-file parsing and the management client's error mapping."""

import json

import pytest

from ansible_collections.gpuops.cluster.plugins.module_utils import abtest, torchserve as ts


def desc(version, workers=1, ready=1, min_workers=1, max_workers=1):
    return {"modelVersion": version, "minWorkers": min_workers, "maxWorkers": max_workers,
            "workers": [{"status": "READY" if i < ready else "UNLOADING"} for i in range(workers)]}


@pytest.mark.parametrize("state,current,default,params,expected", [
    ("present", None, None, {"url": "m.mar"}, ["register"]),
    ("present", desc("2.0"), "1.0", {"url": "m.mar", "min_workers": 1}, []),
    ("present", desc("2.0"), "1.0", {"min_workers": 3}, ["scale"]),
    ("present", desc("2.0", max_workers=4), "1.0", {"min_workers": 1, "max_workers": 2}, ["scale"]),
    ("default", desc("2.0"), "1.0", {"min_workers": 1}, ["set_default"]),
    ("default", desc("2.0"), "2.0", {"min_workers": 1}, []),
    ("default", None, "1.0", {"url": "m.mar"}, ["register", "set_default"]),
    ("absent", desc("2.0"), "1.0", {}, ["unregister"]),
    ("absent", None, "1.0", {}, []),
    ("absent", desc("1.0"), "1.0", {"other_versions": []}, ["unregister"]),
])
def test_plan(state, current, default, params, expected):
    assert ts.plan(state, "m", "2.0" if current is None else current["modelVersion"], current, default,
                   params) == expected


def test_plan_refuses_register_without_url():
    with pytest.raises(ts.TorchServeError, match="give url"):
        ts.plan("present", "m", "2.0", None, None, {})


def test_plan_refuses_to_unregister_default_with_others():
    with pytest.raises(ts.TorchServeError, match="set another default first"):
        ts.plan("absent", "m", "1.0", desc("1.0"), "1.0", {"other_versions": ["2.0"]})


def test_ready_workers_counts_only_ready():
    assert ts.ready_workers(desc("1", workers=3, ready=2)) == 2


def test_read_management_key_json_and_txt(tmp_path):
    j = tmp_path / "key_file.json"
    j.write_text(json.dumps({"management": {"key": "MGMT", "expiration time": "x"},
                             "inference": {"key": "INF"}, "API": {"key": "API"}}))
    assert ts.read_management_key(str(j)) == "MGMT"
    t = tmp_path / "key_file.txt"
    t.write_text("Management Key: aadJv_R6 --- Expiration time: 2024\nInference Key: poZ --- x\nAPI Key: xr\n")
    assert ts.read_management_key(str(t)) == "aadJv_R6"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"inference": {"key": "INF"}}))
    with pytest.raises(ts.TorchServeError, match="no management key"):
        ts.read_management_key(str(bad))


def test_client_auth_hint_and_404():
    calls = []

    def opener(method, url, headers, timeout):
        calls.append((method, url, headers))
        if "/models/missing" in url:
            return 404, b'{"code": 404, "message": "Model not found"}'
        return 401, b'{"code": 401, "message": "Token Authorization failed"}'
    client = ts.TorchServeClient("http://127.0.0.1:1", token="KEY", opener=opener)
    assert client.describe("missing", "1.0") is None
    with pytest.raises(ts.TorchServeError, match="token authorization is on"):
        client.describe("m", "1.0")
    assert calls[0][2]["Authorization"] == "Bearer KEY"


def test_wait_ready_times_out_with_counts():
    client = ts.TorchServeClient("http://x", opener=lambda *a: (200, json.dumps([desc("1", workers=2, ready=0)])))
    clock = iter(range(0, 100, 5))
    with pytest.raises(ts.TorchServeError, match="0 of 2 workers READY"):
        client.wait_ready("m", "1", 2, 10, sleep=lambda s: None, clock=lambda: next(clock))


def test_buckets_to_bins_from_cumulative():
    series = [({"le": "+Inf"}, 10.0), ({"le": "5"}, 2.0), ({"le": "10"}, 7.0)]
    bounds, bins = abtest.buckets_to_bins(series)
    assert bounds == [5.0, 10.0, float("inf")]
    assert bins == [2.0, 5.0, 3.0]


def test_run_ab_insufficient_data():
    res = abtest.run_ab([{"name": "a", "requests": 5, "errors": 0}, {"name": "b", "requests": 500, "errors": 0}],
                        0.95, 100)
    assert res["reason"] == "insufficient_data" and res["winner"] is None


def test_run_ab_reports_negligible_latency_effect():
    a = {"name": "a", "requests": 300, "errors": 0, "latency_bounds": [0.005, 0.01, 0.025, float("inf")],
         "latency_bins": [300, 0, 0, 0]}
    b = dict(a, name="b", latency_bins=[282, 12, 5, 1])
    res = abtest.run_ab([a, b], 0.95, 100)
    assert res["reason"] == "negligible_effect" and res["winner"] is None
    assert abtest.run_ab([a, b], 0.95, 100, min_latency_effect=0.0)["reason"] == "significant"
