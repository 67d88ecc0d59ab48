"""Unit tests of plugins/filter/gpu_platform.py: Helm values canonicalisation (helm_release) and the
GPU allocatable expectation/report (gpu_operator)."""

import datetime
import importlib.util
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parents[4] / "plugins" / "filter" / "gpu_platform.py"


def load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


gp = load(PLUGIN)
GPU = "nvidia.com/gpu"
DP = {"default": {"version": "v1", "flags": {"migStrategy": "single"}},
      "ts4": {"version": "v1", "sharing": {"timeSlicing": {"resources": [{"name": GPU, "replicas": 4}]}}},
      "ts2-renamed": {"version": "v1", "sharing": {"timeSlicing": {"renameByDefault": True,
                                                                    "resources": [{"name": GPU, "replicas": 2}]}}},
      "mps3": {"version": "v1", "sharing": {"mps": {"resources": [{"name": GPU, "replicas": 3}]}}}}
MIG = {"all-disabled": [{"devices": "all", "mig-enabled": False}],
       "all-1g.10gb": [{"devices": "all", "mig-enabled": True, "mig-devices": {"1g.10gb": 7}}],
       "half": [{"devices": [0, 1, 2, 3], "mig-enabled": False},
                {"devices": [4, 5, 6, 7], "mig-enabled": True, "mig-devices": {"3g.40gb": 2}}]}


def host(name, count=8, dp="", mig="", node=None):
    return {"host": name, "node": node or name, "count": count, "device_plugin_config": dp, "mig_config": mig}


def node(name, gpus=None, ready=True, extra=None):
    alloc = {"cpu": "224"}
    if gpus is not None:
        alloc[GPU] = str(gpus)
    alloc.update(extra or {})
    return {"metadata": {"name": name},
            "status": {"allocatable": alloc,
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


# -- helm_values_canonical --------------------------------------------------------------------
def test_values_keep_json_types_and_turn_the_rest_into_what_helm_records():
    v = {"a": 2.0, "b": 2.5, "c": True, "d": None, "e": "8", "f": (1, 2), 3: "int key",
         "when": datetime.date(2026, 1, 2), "nested": {"x": [1.0, {"yy": False}]}}
    out = gp.helm_values_canonical(v)
    assert out == {"a": 2, "b": 2.5, "c": True, "d": None, "e": "8", "f": [1, 2], "3": "int key",
                   "when": "2026-01-02", "nested": {"x": [1, {"yy": False}]}}
    assert type(out["a"]) is int and type(out["e"]) is str and type(out["c"]) is bool


def test_values_canonical_is_idempotent_and_does_not_touch_its_input():
    v = {"a": {"b": [1.0]}}
    once = gp.helm_values_canonical(v)
    assert gp.helm_values_canonical(once) == once
    assert v == {"a": {"b": [1.0]}} and type(v["a"]["b"][0]) is float


@pytest.mark.parametrize("bad, where", [({"x": float("nan")}, "values.x"), ({"w": [float("inf")]}, "values.w[0]"),
                                        ({"z": {1: "a", "1": "b"}}, "values.z"), ({"s": {1, 2}}, "values.s")])
def test_values_helm_cannot_hold_are_refused_with_their_path(bad, where):
    with pytest.raises(Exception) as exc:
        gp.helm_values_canonical(bad)
    assert where in str(exc.value)


@pytest.mark.parametrize("bad, where, why", [
    ({"flag": "y"}, "values.flag", "bool"), ({"a": {"N": 1}}, "values.a key 'N'", "bool"),
    ({"x": ["1e3"]}, "values.x[0]", "float"), ({"v": "1.0e3"}, "values.v", "float"),
    ({"big": 2 ** 53 + 1}, "values.big", "2**53"), ({"tiny": 1e-7}, "values.tiny", "exponent"),
    ({"huge": 1.5e21}, "values.huge", "exponent"), ({"huge": 1.25e22 + 0.5}, "values.huge", ""),
])
def test_values_helm_would_record_differently_are_refused(bad, where, why):
    """Measured with helm v3.21.4: these come back from `helm get values` as another value."""
    with pytest.raises(Exception) as exc:
        gp.helm_values_canonical(bad)
    assert where in str(exc.value) and why in str(exc.value)


@pytest.mark.parametrize("ok", ["yes", "no", "on", "off", "true", "1.30", "0755", "0x1F", "2026-01-02", "~", "",
                                "null", "1:20", "3.0", "+1", "1_000", "abc", "a: b", "*", "größe", ".inf"])
def test_strings_pyyaml_quotes_pass_unchanged(ok):
    assert gp.helm_values_canonical({"k": ok, ok or "empty": 1}) == {"k": ok, ok or "empty": 1}


def test_values_none_is_empty_and_a_list_is_refused():
    assert gp.helm_values_canonical(None) == {}
    with pytest.raises(Exception, match="mapping"):
        gp.helm_values_canonical([1])


# -- gpu_inventory_hosts / gpu_nvidia_dropin_writers ----------------------------------------
def test_inventory_hosts_read_count_node_name_and_configs():
    hv = {"g1": {"gpuops_gpu": {"product": "NVIDIA-H100-80GB-HBM3", "count": 8}},
          "g2": {"gpuops_gpu": {"count": 4}, "gpuops_node_name": "gpu-2.rack1",
                 "gpu_operator_node_device_plugin_config": "ts4", "gpu_operator_node_mig_config": "half"},
          "g3": {}}
    assert gp.gpu_inventory_hosts(["g1", "g2", "g3"], hv) == [
        host("g1"), host("g2", 4, "ts4", "half", node="gpu-2.rack1"), host("g3", None)]


def test_dropin_writers_are_hosts_where_container_runtime_keeps_its_nvidia_dropin():
    hv = {"a": {}, "b": {"container_runtime_nvidia_enabled": False}, "c": {"container_runtime_nvidia_enabled": "false"},
          "d": {"container_runtime_nvidia_enabled": "yes"}}
    assert gp.gpu_nvidia_dropin_writers(["a", "b", "c", "d"], hv) == ["a", "d"]


# -- gpu_expected_resources -----------------------------------------------------------------
def test_whole_gpus_without_sharing():
    out = gp.gpu_expected_resources([host("g1"), host("g2", 4)], DP, MIG)
    assert out["errors"] == []
    assert out["nodes"]["g1"]["resources"] == {GPU: 8}
    assert out["nodes"]["g2"]["resources"] == {GPU: 4}


def test_time_slicing_and_mps_multiply_and_rename():
    out = gp.gpu_expected_resources([host("a", dp="ts4"), host("b", 2, dp="ts2-renamed"), host("c", dp="mps3")], DP, MIG)
    assert out["errors"] == []
    assert out["nodes"]["a"]["resources"] == {GPU: 32}
    assert "x 4 replicas" in out["nodes"]["a"]["explain"]
    assert out["nodes"]["b"]["resources"] == {GPU + ".shared": 4}
    assert out["nodes"]["c"]["resources"] == {GPU: 24}


def test_mig_single_counts_mig_devices_as_gpus():
    out = gp.gpu_expected_resources([host("a", mig="all-1g.10gb")], DP, MIG, "single")
    assert out["nodes"]["a"]["resources"] == {GPU: 56}


def test_mig_mixed_splits_whole_gpus_and_mig_resources():
    out = gp.gpu_expected_resources([host("a", mig="half")], DP, MIG, "mixed")
    assert out["nodes"]["a"]["resources"] == {GPU: 4, "nvidia.com/mig-3g.40gb": 8}


def test_mig_strategy_none_ignores_the_profile():
    out = gp.gpu_expected_resources([host("a", mig="all-1g.10gb")], DP, MIG, "none")
    assert out["nodes"]["a"]["resources"] == {GPU: 8}


def test_mig_single_refuses_a_mixed_layout_naming_the_host():
    out = gp.gpu_expected_resources([host("a", mig="half")], DP, MIG, "single")
    assert out["nodes"] == {}
    assert len(out["errors"]) == 1 and out["errors"][0].startswith("a (node a)") and "mixed" in out["errors"][0]


@pytest.mark.parametrize("h, msg", [
    (host("a", count=0), "count"), (host("a", count="8"), "count"), (host("a", count=True), "count"),
    (host("a", dp="nope"), "device plugin config 'nope'"), (host("a", mig="nope"), "MIG config 'nope'"),
])
def test_unknown_configs_and_bad_counts_are_errors_not_guesses(h, msg):
    out = gp.gpu_expected_resources([h], DP, MIG)
    assert out["nodes"] == {} and msg in out["errors"][0]


def test_mig_device_index_beyond_the_gpu_count_is_an_error():
    out = gp.gpu_expected_resources([host("a", count=4, mig="half")], DP, MIG, "mixed")
    assert "index" in out["errors"][0] and "4 GPU" in out["errors"][0]


def test_two_hosts_on_one_node_name_is_an_error():
    out = gp.gpu_expected_resources([host("a", node="n"), host("b", node="n")], DP, MIG)
    assert "used by hosts a and b" in out["errors"][0]


def test_unknown_strategy():
    assert gp.gpu_expected_resources([host("a")], DP, MIG, "weird")["errors"]


# -- gpu_allocatable_report -----------------------------------------------------------------
def expected(*hosts, strategy="single"):
    out = gp.gpu_expected_resources(list(hosts), DP, MIG, strategy)
    assert out["errors"] == []
    return out["nodes"]


def test_report_ok_when_every_node_advertises_exactly_its_gpus():
    r = gp.gpu_allocatable_report(expected(host("a"), host("b", 4)), [node("a", 8), node("b", 4), node("other", 1)])
    assert r == {"ok": True, "problems": [], "nodes": {"a": {GPU: 8}, "b": {GPU: 4}}}


def test_report_names_each_node_that_does_not():
    r = gp.gpu_allocatable_report(expected(host("a"), host("b", 4), host("c"), host("d"), host("e")),
                                  [node("a", 8), node("b", 8), node("c"), node("e", 8, ready=False)])
    assert not r["ok"]
    assert len(r["problems"]) == 4
    text = "\n".join(r["problems"])
    assert "b (host b) advertises allocatable nvidia.com/gpu 8 (inventory: 4 = 4 whole GPUs)" in text
    assert "c (host c) advertises allocatable nvidia.com/gpu absent" in text
    assert "d (host d): no such Node in the cluster" in text
    assert "e (host e) is not Ready" in text
    assert "a (host a)" not in text


def test_report_checks_mig_resources_too_and_reads_quantities_as_integers():
    exp = expected(host("a", mig="half"), strategy="mixed")
    assert gp.gpu_allocatable_report(exp, [node("a", 4, extra={"nvidia.com/mig-3g.40gb": "8"})])["ok"]
    r = gp.gpu_allocatable_report(exp, [node("a", 4, extra={"nvidia.com/mig-3g.40gb": "6"})])
    assert not r["ok"] and "nvidia.com/mig-3g.40gb 6" in r["problems"][0]
    r = gp.gpu_allocatable_report(exp, [node("a", "4k")])
    assert not r["ok"]


def test_report_uses_the_node_name_not_the_host_name():
    exp = expected(host("gpu01", node="gpu01.rack1"))
    assert gp.gpu_allocatable_report(exp, [node("gpu01.rack1", 8)])["ok"]
    r = gp.gpu_allocatable_report(exp, [node("gpu01", 8)])
    assert r["problems"] == ["gpu01.rack1 (host gpu01): no such Node in the cluster (expected nvidia.com/gpu: 8)"]


def test_filters_are_registered():
    names = set(gp.FilterModule().filters())
    assert {"helm_values_canonical", "gpu_inventory_hosts", "gpu_nvidia_dropin_writers",
            "gpu_expected_resources", "gpu_allocatable_report"} <= names
