"""roles/network on a QEMU guest: a bond (active-backup) with two 802.1Q VLANs at MTU 9000, static
management address, and the commit-confirm rollback of a change that cuts the management network.

eth1/eth2 are QEMU user-mode NICs without a peer switch: LACP (802.3ad) cannot negotiate there,
so the bond is tested in active-backup mode; tagged frames leave into nowhere (links, ids, MTUs
and addresses are real, traffic across the VLANs is not tested).
"""

import copy
import time

import pytest

from tests.vm.harness import record_timing

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(2700)]

GOOD = {
    "gpuops_networks": {
        # slirp's network: the guest is 10.0.2.15, the gateway 10.0.2.2, DNS 10.0.2.3
        "management": {"cidr": "10.0.2.0/24", "mtu": 1500, "gateway": "10.0.2.2", "dns": ["10.0.2.3"]},
        "cluster": {"cidr": "10.10.0.0/24", "vlan": 100, "mtu": 9000},
        "storage": {"cidr": "10.20.0.0/24", "vlan": 200, "mtu": 9000},
    },
    "gpuops_node_interfaces": [
        {"name": "eth0", "type": "ethernet"},
        {"name": "bond0", "type": "bond", "members": ["eth1", "eth2"], "bond_mode": "active-backup", "mtu": 9000},
    ],
    "gpuops_node_addresses": {
        "management": {"interface": "eth0", "address": "10.0.2.15"},
        "cluster": {"interface": "bond0", "address": "10.10.0.21"},
        "storage": {"interface": "bond0", "address": "10.20.0.21"},
    },
    # generous: one module call takes ~50 s in a TCG guest on the busy shared host
    "network_rollback_seconds": 900,
    "network_reconnect_timeout": 150,
}


@pytest.fixture(scope="module")
def vm(vm_factory):
    vm = vm_factory("vm-network", nvme=[])
    if not vm.info.get("attached"):
        record_timing("vm_cold_boot_to_ssh", vm.info["boot_seconds"])
    return vm


def links(vm):
    return {l["ifname"]: l for l in vm.json("ip -details -json link show")}


def addrs(vm, dev):
    data = vm.json(f"ip -json addr show dev {dev}")[0]
    return {f"{a['local']}/{a['prefixlen']}" for a in data.get("addr_info", []) if a["family"] == "inet"}


def test_network_apply_idempotent_and_rollback(vm):
    inv = vm.write_inventory(GOOD)

    # check mode first: reports the change, writes nothing
    r = vm.playbook("network.yml", inv, check=True, tag="check-first")
    assert r.rc == 0, r.output[-4000:]
    assert r.stats()["changed"] > 0
    assert vm.ssh("ls /etc/systemd/network/10-gpuops-* 2>/dev/null | wc -l", check=True).stdout.strip() == "0"

    # good config
    t0 = time.monotonic()
    r = vm.playbook("network.yml", inv, tag="good")
    record_timing("network_apply_good", time.monotonic() - t0)
    assert r.rc == 0, r.output[-5000:]
    assert r.stats()["changed"] > 0
    ls = links(vm)
    bond = ls["bond0"]
    assert bond["linkinfo"]["info_kind"] == "bond" and bond["mtu"] == 9000, bond
    assert bond["linkinfo"]["info_data"]["mode"] == "active-backup", bond["linkinfo"]
    for member in ("eth1", "eth2"):
        assert ls[member].get("master") == "bond0" and ls[member]["mtu"] == 9000, ls[member]
    for name, vid, addr in (("bond0.100", 100, "10.10.0.21/24"), ("bond0.200", 200, "10.20.0.21/24")):
        v = ls[name]
        assert v["linkinfo"]["info_kind"] == "vlan", v
        assert v["linkinfo"]["info_data"]["id"] == vid and v["linkinfo"]["info_data"]["protocol"] == "802.1Q", v
        assert v["mtu"] == 9000 and v["link"] == "bond0", v
        assert addrs(vm, name) == {addr}
    assert addrs(vm, "eth0") == {"10.0.2.15/24"}
    assert "default via 10.0.2.2 dev eth0" in vm.ssh("ip route show default", check=True).stdout
    # the rollback timer was stopped (confirmed)
    assert vm.ssh("systemctl is-active gpuops-network-rollback.timer").stdout.strip() != "active"

    # idempotent
    r = vm.playbook("network.yml", inv, tag="idempotent")
    assert r.rc == 0, r.output[-4000:]
    assert r.stats()["changed"] == 0, r.output[-6000:]
    r = vm.playbook("network.yml", inv, check=True, tag="check-converged")
    assert r.rc == 0 and r.stats()["changed"] == 0, r.output[-6000:]

    # bad config: re-addresses management into a network slirp does not route -> cut, auto-rollback
    bad = copy.deepcopy(GOOD)
    bad["gpuops_networks"]["management"].update(cidr="10.0.3.0/24", gateway="10.0.3.2")
    bad["gpuops_node_addresses"]["management"]["address"] = "10.0.3.15"
    bad.update(network_rollback_seconds=240, network_reconnect_timeout=90)
    t0 = time.monotonic()
    r = vm.playbook("network.yml", vm.write_inventory(bad, vm.workdir / "bad.yml"), tag="bad")
    record_timing("network_bad_change_to_rolled_back", time.monotonic() - t0)
    assert r.rc != 0, r.output[-5000:]
    assert "was NOT confirmed" in r.output and "rolled back automatically" in r.output, r.output[-5000:]
    assert "no SSH reconnect" in r.output
    # the node answers again, on the previous config
    assert vm.ssh("true").returncode == 0
    assert addrs(vm, "eth0") == {"10.0.2.15/24"}
    conf = vm.ssh("cat /etc/systemd/network/10-gpuops-eth0.network", check=True).stdout
    assert "Address=10.0.2.15/24" in conf and "10.0.3.15" not in conf, conf
    assert addrs(vm, "bond0.100") == {"10.10.0.21/24"}
    # and the good config re-applies as a no-op
    r = vm.playbook("network.yml", inv, tag="after-rollback")
    assert r.rc == 0 and r.stats()["changed"] == 0, r.output[-6000:]
