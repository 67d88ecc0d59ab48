"""Unit tests of plugins/filter/network_model.py, the pure network model of roles/network."""

import json
from pathlib import Path

import pytest

from plugins.filter import network_model as nm

ROLES = Path(__file__).resolve().parents[4] / "roles"


NETS = {"management": {"cidr": "192.168.10.0/24", "mtu": 1500, "gateway": "192.168.10.1"},
        "cluster": {"cidr": "10.10.0.0/24", "vlan": 100, "mtu": 9000},
        "storage": {"cidr": "10.20.0.0/24", "vlan": 200, "mtu": 9000, "gateway": "10.20.0.1"}}
IFS = [{"name": "eno1", "type": "ethernet"},
       {"name": "bond0", "type": "bond", "members": ["ens1f0", "ens1f1"], "bond_mode": "802.3ad"}]
ADDR = {"management": {"interface": "eno1", "address": "192.168.10.21"},
        "cluster": {"interface": "bond0", "address": "10.10.0.21"},
        "storage": {"interface": "bond0", "address": "10.20.0.21"}}


def test_network_model_inventory_example():
    m = nm.network_model(NETS, IFS, ADDR)
    assert m["errors"] == []
    links = {l["name"]: l for l in m["links"]}
    assert links["eno1"]["addresses"] == ["192.168.10.21/24"] and links["eno1"]["gateway"] == "192.168.10.1"
    assert links["bond0"]["mtu"] == 9000 and links["bond0"]["vlans"] == ["bond0.100", "bond0.200"]
    assert links["ens1f0"]["master"] == "bond0" and links["ens1f0"]["mtu"] == 9000
    assert links["bond0.200"]["vlan_id"] == 200 and links["bond0.200"]["addresses"] == ["10.20.0.21/24"]
    # only management gets the default route; other gateways become metric routes
    assert links["bond0.200"]["gateway"] is None and links["bond0.200"]["routes"] == [{"gateway": "10.20.0.1", "metric": 200}]
    assert m["management_link"] == "eno1" and set(m["virtual"]) == {"bond0", "bond0.100", "bond0.200"}


@pytest.mark.parametrize("mutate,needle", [
    (lambda n, i, a: a["cluster"].update(address="10.11.0.5"), "10.11.0.5 is not a usable address of gpuops_networks.cluster.cidr 10.10.0.0/24"),
    (lambda n, i, a: n["cluster"].update(vlan=5000), "1-4094"),
    (lambda n, i, a: a.pop("management"), "gpuops_node_addresses.management is not defined"),
    (lambda n, i, a: a["cluster"].update(interface="ens1f0"), "member of bond bond0"),
    (lambda n, i, a: a["cluster"].update(interface="eth9"), "not declared"),
    (lambda n, i, a: i[1].update(mtu=1500), "gpuops_networks.cluster.mtu 9000 is larger than the mtu 1500 of its parent interface bond0"),
    (lambda n, i, a: i[1].update(bond_mode="lacp"), "bond_mode"),
    (lambda n, i, a: n["storage"].update(vlan=100), "VLAN 100 on bond0 is already used by network cluster"),
    (lambda n, i, a: a["storage"].update(address="10.20.0.0/24"), "not an IP address"),
])
def test_network_model_errors(mutate, needle):
    """The model's errors are the inventory contract's problems for the node (one set of rules)."""
    import copy
    n, i, a = copy.deepcopy(NETS), copy.deepcopy(IFS), copy.deepcopy(ADDR)
    mutate(n, i, a)
    errs = nm.network_model(n, i, a)["errors"]
    assert any(needle in e for e in errs), errs


def test_netplan_template_renders_valid_yaml():
    """The netplan path is not exercised in a VM (Debian guest): at least check the rendering."""
    import jinja2
    import yaml
    env = jinja2.Environment(trim_blocks=True)
    env.filters["to_json"] = json.dumps
    tpl = env.from_string((ROLES / "network" / "templates" / "netplan.yaml.j2").read_text())
    ifs = [dict(IFS[0]), dict(IFS[1], mtu=9000)]
    out = tpl.render(network_model_result=nm.network_model(NETS, ifs, ADDR), ansible_managed="managed",
                     network_bond_miimon_ms=100, network_bond_lacp_rate="fast",
                     network_bond_xmit_hash_policy="layer3+4")
    doc = yaml.safe_load(out)["network"]
    assert doc["ethernets"]["eno1"]["addresses"] == ["192.168.10.21/24"]
    assert doc["ethernets"]["eno1"]["routes"] == [{"to": "default", "via": "192.168.10.1"}]
    assert doc["bonds"]["bond0"]["interfaces"] == ["ens1f0", "ens1f1"]
    assert doc["bonds"]["bond0"]["parameters"]["mode"] == "802.3ad"
    assert doc["vlans"]["bond0.200"] == {"id": 200, "link": "bond0", "mtu": 9000, "dhcp4": False, "dhcp6": False,
                                         "addresses": ["10.20.0.21/24"],
                                         "routes": [{"to": "default", "via": "10.20.0.1", "metric": 200}]}
