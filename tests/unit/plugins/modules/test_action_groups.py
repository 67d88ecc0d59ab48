"""meta/runtime.yml action groups: ``module_defaults: group/gpuops.cluster.<group>`` sets one connection's
options and never gives a member an option it does not accept.

Two proofs: every member documents the group's connection options through the group's doc fragment
(ansible-test sanity checks that docs and argument specs agree), and a real ansible-playbook run with
module_defaults for every group at once, where each member must get past option parsing and fail (or
pass) on the defaulted connection itself. No server: the connections point at a missing kubeconfig and
closed loopback ports.
"""

from pathlib import Path

import pytest
import yaml

from tests.integration import canary_support as cs
from tests.testbed.common import free_port as closed_port  # a port nobody listens on

REPO = Path(__file__).resolve().parents[4]
# group -> the doc fragment holding the connection options it is for (None: a one-module group)
GROUP_FRAGMENT = {"kubernetes": "gpuops.cluster.k8s_auth", "prometheus": "gpuops.cluster.prometheus",
                  "torchserve": None}


def groups():
    return yaml.safe_load((REPO / "meta" / "runtime.yml").read_text())["action_groups"]


def module_doc(name):
    text = (REPO / "plugins" / "modules" / (name + ".py")).read_text()
    return yaml.safe_load(text.split('DOCUMENTATION = r"""', 1)[1].split('"""', 1)[0])


def test_every_group_is_one_connection_shared_by_all_its_members():
    found = groups()
    assert set(found) == set(GROUP_FRAGMENT), found
    for group, members in found.items():
        fragment = GROUP_FRAGMENT[group]
        if fragment is None:
            assert len(members) == 1, (group, members)
            continue
        for member in members:
            assert fragment in (module_doc(member).get("extends_documentation_fragment") or []), (group, member)
    modules = {p.stem for p in (REPO / "plugins" / "modules").glob("*.py")}
    # modules that act on the host they run on talk to no shared service: no connection, no group
    host_local = {"sysctl_conf"}
    assert not host_local & {m for ms in found.values() for m in ms}
    assert modules - host_local == {m for ms in found.values() for m in ms}, "every connected module is in a group"


def test_no_module_outside_a_group_takes_its_connection_options():
    """A module that documents a group's fragment but is not in the group would miss its defaults."""
    found = groups()
    for path in (REPO / "plugins" / "modules").glob("*.py"):
        fragments = module_doc(path.stem).get("extends_documentation_fragment") or []
        for group, fragment in GROUP_FRAGMENT.items():
            if fragment in fragments:
                assert path.stem in found[group], (path.stem, group)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("groups")
    prom_port, ts_port = closed_port(), closed_port()
    kubeconfig = str(tmp / "missing-kubeconfig")
    defaults = {
        "group/gpuops.cluster.kubernetes": {"kubeconfig": kubeconfig, "context": "lab", "validate_certs": False},
        "group/gpuops.cluster.prometheus": {"prometheus_url": "http://127.0.0.1:%d" % prom_port,
                                            "prometheus_timeout": 3, "prometheus_headers": {"X-Scope": "lab"}},
        "group/gpuops.cluster.torchserve": {"management_url": "http://127.0.0.1:%d" % ts_port, "timeout": 3},
    }
    metric = {"name": "up", "query": "up", "threshold_range": {"min": 1}}
    tasks = [
        {"name": "traffic_split", "gpuops.cluster.traffic_split": {"namespace": "n", "name": "vs",
                                                                    "weights": {"stable": 100}}},
        {"name": "canary_gate", "gpuops.cluster.canary_gate": {"checks": [metric]}},
        {"name": "canary_gate_k8s", "gpuops.cluster.canary_gate": {"checks": [
            {"name": "dep", "kind": "deployment_available", "namespace": "n", "deployment": "d"}]}},
        {"name": "canary_rollout", "gpuops.cluster.canary_rollout": {
            "namespace": "n", "virtual_service": "vs", "revision": "2", "checks": [metric]}},
        {"name": "ab_test", "gpuops.cluster.ab_test": {"model": "m", "versions": ["1", "2"]}},
        {"name": "ab_test_data", "gpuops.cluster.ab_test": {"data": [
            {"name": "a", "requests": 200, "errors": 1}, {"name": "b", "requests": 200, "errors": 2}]}},
        {"name": "torchserve_model", "gpuops.cluster.torchserve_model": {"model": "m", "version": "1"}},
    ]
    for t in tasks:
        t["ignore_errors"] = True
    pb = cs.write_playbook(tmp / "groups.yml", tasks, module_defaults=defaults)
    out = cs.run_playbook(pb, {}, tmp, timeout=300)
    out["kubeconfig"], out["prom_port"], out["ts_port"] = kubeconfig, prom_port, ts_port
    return out


def task(run, name):
    assert name in run["tasks"], run["stderr"] + run["stdout"][-3000:]
    res = run["tasks"][name]
    assert "Unsupported parameters" not in str(res.get("msg")), res
    return res


def test_kubernetes_group_defaults_reach_every_member(run):
    for name in ("traffic_split", "canary_gate_k8s", "canary_rollout"):
        res = task(run, name)
        assert res.get("failed") and "%s does not exist" % run["kubeconfig"] in res["msg"], (name, res)


def test_prometheus_group_defaults_reach_every_member(run):
    gate = task(run, "canary_gate")
    assert gate["decision"] == "fail" and not gate.get("failed"), gate
    assert "127.0.0.1:%d unreachable" % run["prom_port"] in gate["checks"][0]["message"], gate
    ab = task(run, "ab_test")
    assert ab.get("failed") and "127.0.0.1:%d unreachable" % run["prom_port"] in ab["msg"], ab
    # given data, ab_test does not use Prometheus: the group's prometheus_url does not get in the way
    ab_data = task(run, "ab_test_data")
    assert not ab_data.get("failed") and ab_data["reason"], ab_data


def test_torchserve_group_defaults_reach_its_member(run):
    res = task(run, "torchserve_model")
    assert res.get("failed") and str(run["ts_port"]) in res["msg"], res
