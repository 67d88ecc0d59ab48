"""plugins/module_utils/inventory_contract.py: check_upgrade and upgrade_pending (playbooks/upgrade.yml).

Each refused case names the variable and a piece of the message; the accepted cases return no
problem at all, so every case can fail both ways.
"""

import pytest

from plugins.module_utils import inventory_contract as c

NODES_PREV = {"cp01": "v1.35.4", "cp02": "v1.35.4", "wk01": "v1.35.4"}


def lines(problems):
    return [(p["host"], p["variable"], p["message"]) for p in problems]


@pytest.mark.parametrize("target, running, inventory_current, nodes", [
    ("1.36.3", "v1.35.4", None, NODES_PREV),                       # the one-minor step
    ("1.36.3", "1.35.4", "1.35.4", None),                          # inventory alone (before any host)
    ("1.36.3", "v1.36.3", "1.35.4", dict(NODES_PREV, cp01="v1.36.3")),  # resumed: first control plane done
    ("1.36.3", "v1.36.3", "1.36.3", {"cp01": "v1.36.3"}),          # everything done: a no-op re-run
    ("1.36.3", "v1.36.1", None, {"cp01": "v1.36.1"}),              # a patch upgrade
    ("1.36.3", "v1.36.3", "1.36.1", None),                         # resumed patch upgrade
])
def test_accepted(target, running, inventory_current, nodes):
    assert c.check_upgrade(target, running, inventory_current, nodes) == []


@pytest.mark.parametrize("target, running, inventory_current, nodes, host, variable, pieces", [
    ("1.36.3", "v1.34.2", None, None, None, "gpuops_kubernetes_version", ["skips a minor", "1.34.2", "1.35.x first"]),
    ("1.36.3", "1.34.2", None, None, None, "gpuops_kubernetes_version", ["skips a minor"]),
    ("1.35.4", "v1.36.3", None, None, None, "gpuops_kubernetes_version", ["downgrade", "never downgrades", '"1.36.3" or newer']),
    ("1.36.1", "v1.36.3", None, None, None, "gpuops_kubernetes_version", ["downgrade"]),      # a patch downgrade too
    ("2.0.0", "v1.36.3", None, None, None, "gpuops_kubernetes_version", ["major"]),
    ("v1.36.3", "v1.35.4", None, None, None, "gpuops_kubernetes_version", ["not a quoted X.Y.Z"]),
    ("1.36", "v1.35.4", None, None, None, "gpuops_kubernetes_version", ["not a quoted X.Y.Z"]),
    ("1.36.3", None, None, None, None, "gpuops_kubernetes_current_version", ["not known", "kubeadm-config"]),
    ("1.36.3", "garbage", None, None, None, "gpuops_kubernetes_current_version", ["not known"]),
    ("1.36.3", "v1.35.4", "1.34.2", None, None, "gpuops_kubernetes_current_version",
     ["is not the running 1.35.4", 'set it to "1.35.4"']),
    ("1.36.3", "v1.36.3", "1.34.2", None, None, "gpuops_kubernetes_current_version", ["is not the running 1.36.3"]),
    ("1.36.3", "v1.35.4", None, {"wk01": "v1.37.0"}, "wk01", "kubeletVersion", ["newer than the target", "1.37.0 or newer"]),
    ("1.36.3", "v1.35.4", None, {"wk01": "v1.33.5"}, "wk01", "kubeletVersion", ["more than one minor behind", "1.35.x first"]),
    ("1.36.3", "v1.35.4", None, {"wk01": "v1.34.9"}, "wk01", "kubeletVersion", ["more than one minor behind"]),
    ("1.36.3", "v1.35.4", None, {"wk01": ""}, "wk01", "kubeletVersion", ["not vX.Y.Z"]),
])
def test_refused(target, running, inventory_current, nodes, host, variable, pieces):
    got = lines(c.check_upgrade(target, running, inventory_current, nodes))
    assert len(got) == 1, got
    assert got[0][:2] == (host, variable)
    for piece in pieces:
        assert piece in got[0][2]
    assert "Fix:" in got[0][2]


def test_refused_step_reports_nothing_else():
    """A refused step stops there: the node rules would only repeat it."""
    got = c.check_upgrade("1.36.3", "v1.34.2", "1.20.0", {"wk01": "v1.30.0"})
    assert [p["variable"] for p in got] == ["gpuops_kubernetes_version"]


def test_every_bad_kubelet_is_named():
    got = lines(c.check_upgrade("1.36.3", "v1.35.4", None, {"b": "v1.33.0", "a": "v1.37.1", "ok": "v1.36.3"}))
    assert [g[0] for g in got] == ["a", "b"]


def test_allow_downgrade_does_not_apply_to_upgrades():
    """preflight_allow_downgrade (a rebuild) has no say here: check_upgrade takes no such option."""
    assert c.check_versions({"gpuops_kubernetes_version": "1.35.4", "gpuops_kubernetes_current_version": "1.36.3"},
                            {"allow_downgrade": True}) == []
    assert "downgrade" in c.check_upgrade("1.35.4", "1.36.3")[0]["message"]


@pytest.mark.parametrize("versions, pending", [
    ({"cp01": "v1.36.3", "cp02": "v1.35.4", "wk01": "1.35.4"}, ["cp02", "wk01"]),
    ({"cp01": "v1.36.3", "wk01": "1.36.3"}, []),
    ({"b": "v1.35.4", "a": None}, ["a", "b"]),          # unknown counts as pending
    ({}, []),
])
def test_upgrade_pending(versions, pending):
    assert c.upgrade_pending("1.36.3", versions) == pending


@pytest.mark.parametrize("value, parsed", [
    ("v1.36.3", [1, 36, 3]), ("1.35.4", [1, 35, 4]), (" v1.2.3 ", [1, 2, 3]),
    ("v1.36", None), ("v1.36.3-rc.1", None), (None, None), (136, None),
])
def test_parse_version(value, parsed):
    assert c.parse_version(value) == parsed
