"""plugins/module_utils/inventory_contract.py, rule by rule.

Each case is a valid cluster (3 control planes, 2 GPU workers, 1 CPU worker, management +
cluster/storage VLANs on an LACP bond) with one mutation; the case names the host, the variable
and a piece of the message the contract must report. The valid cluster itself reports nothing,
so every case can fail.
"""

import copy

import pytest

from plugins.module_utils import inventory_contract as c

CLUSTER = {
    "gpuops_cluster_name": "rack1",
    "gpuops_kubernetes_version": "1.36.3",
    "gpuops_kubernetes_current_version": "1.35.4",
    "gpuops_control_plane_ha": True,
    "gpuops_api_vip": "10.10.0.10",
    "gpuops_pod_cidr": "10.244.0.0/16",
    "gpuops_service_cidr": "10.96.0.0/12",
    "gpuops_networks": {
        "management": {"cidr": "192.168.10.0/24", "mtu": 1500, "gateway": "192.168.10.1", "dns": ["192.168.10.53"]},
        "cluster": {"cidr": "10.10.0.0/24", "vlan": 100, "mtu": 9000},
        "storage": {"cidr": "10.20.0.0/24", "vlan": 200, "mtu": 9000},
    },
}
NAMES = ["cp01", "cp02", "cp03", "gpu01", "gpu02", "wk01"]
GROUPS = {"kube_control_plane": ["cp01", "cp02", "cp03"], "kube_node": ["gpu01", "gpu02", "wk01"],
          "gpu_nodes": ["gpu01", "gpu02"]}


def node(i):
    return {
        "ansible_host": "192.168.10.%d" % i,
        "gpuops_node_interfaces": [
            {"name": "eno1", "type": "ethernet"},
            {"name": "bond0", "type": "bond", "members": ["ens1f0", "ens1f1"], "bond_mode": "802.3ad", "mtu": 9000}],
        "gpuops_node_addresses": {
            "management": {"interface": "eno1", "address": "192.168.10.%d" % i},
            "cluster": {"interface": "bond0", "address": "10.10.0.%d" % i},
            "storage": {"interface": "bond0", "address": "10.20.0.%d" % i}},
    }


def inventory():
    hv = {}
    for i, h in enumerate(NAMES, start=11):
        hv[h] = dict(copy.deepcopy(CLUSTER), **node(i))
        if h.startswith("gpu"):
            hv[h].update(gpuops_zone="zone-a", gpuops_gpu={"product": "NVIDIA-H100-80GB-HBM3", "count": 8})
    return hv, copy.deepcopy(GROUPS)


def check(hv, groups, **kw):
    return c.check_inventory(hv, groups, **kw)


def lines(problems):
    return c.format_problems(problems)


def everywhere(name, value):
    def _m(hv, groups):
        for h in hv:
            if value is DELETE:
                hv[h].pop(name, None)
            else:
                hv[h][name] = copy.deepcopy(value)
    return _m


def net(name, key, value):
    def _m(hv, groups):
        for h in hv:
            if value is DELETE:
                hv[h]["gpuops_networks"][name].pop(key, None)
            else:
                hv[h]["gpuops_networks"][name][key] = value
    return _m


def on(host, name, value):
    def _m(hv, groups):
        if value is DELETE:
            hv[host].pop(name, None)
        else:
            hv[host][name] = value
    return _m


def addr(host, network, key, value):
    def _m(hv, groups):
        hv[host]["gpuops_node_addresses"][network][key] = value
    return _m


def iface(host, index, key, value):
    def _m(hv, groups):
        hv[host]["gpuops_node_interfaces"][index][key] = value
    return _m


def rename(old, new):
    def _m(hv, groups):
        hv[new] = hv.pop(old)
        for members in groups.values():
            members[:] = [new if h == old else h for h in members]
    return _m


def group(name, members):
    def _m(hv, groups):
        groups[name] = members
    return _m


def both(*muts):
    def _m(hv, groups):
        for m in muts:
            m(hv, groups)
    return _m


DELETE = object()
ALL = None

# (id, mutation, host (None = cluster-wide), variable, substring of the message)
CASES = [
    # cluster-wide variables
    ("cluster-name-missing", everywhere("gpuops_cluster_name", DELETE), ALL, "gpuops_cluster_name", "not defined"),
    ("ha-as-string", everywhere("gpuops_control_plane_ha", "yes"), ALL, "gpuops_control_plane_ha", '"yes"/"no"/"true" in quotes'),
    ("version-as-float", everywhere("gpuops_kubernetes_version", 1.36), ALL, "gpuops_kubernetes_version", "got float 1.36"),
    ("networks-not-a-dict", everywhere("gpuops_networks", ["management"]), ALL, "gpuops_networks", "non-empty mapping"),
    ("pod-cidr-overridden-on-one-host", on("gpu02", "gpuops_pod_cidr", "10.245.0.0/16"), "gpu02", "gpuops_pod_cidr", "on most hosts"),
    ("version-overridden-on-one-host", on("wk01", "gpuops_kubernetes_version", "1.35.9"), "wk01", "gpuops_kubernetes_version",
     '"1.35.9" on this host but "1.36.3" on most hosts'),
    ("current-version-only-on-one-host", both(everywhere("gpuops_kubernetes_current_version", DELETE),
                                              on("cp01", "gpuops_kubernetes_current_version", "1.35.4")),
     "cp02, cp03, gpu01, gpu02, wk01", "gpuops_kubernetes_current_version", "not defined on these hosts but is on cp01"),
    ("required-networks-not-a-list", everywhere("gpuops_required_networks", "storage"), ALL, "gpuops_required_networks", "must be a list"),
    ("cluster-name-not-a-dns-label", everywhere("gpuops_cluster_name", "Rack_1"), ALL, "gpuops_cluster_name", '"rack-1"'),
    # the API server VIP and node IPs (kubeadm_control_plane, kubeadm_node)
    ("vip-missing-with-ha", everywhere("gpuops_api_vip", DELETE), ALL, "gpuops_api_vip", "controlPlaneEndpoint"),
    ("vip-not-an-ip", everywhere("gpuops_api_vip", "api.rack1"), ALL, "gpuops_api_vip", "not an IP address"),
    ("vip-is-a-node-address", everywhere("gpuops_api_vip", "10.10.0.12"), ALL, "gpuops_api_vip",
     "gpuops_node_addresses.cluster.address of cp02"),
    ("vip-is-a-node-ip", both(everywhere("gpuops_api_vip", "10.250.0.10"), on("cp01", "gpuops_kubernetes_node_ip", "10.250.0.10")),
     ALL, "gpuops_api_vip", "gpuops_kubernetes_node_ip of cp01"),
    ("vip-prefix-out-of-range", everywhere("gpuops_api_vip_prefix", 33), ALL, "gpuops_api_vip_prefix", "outside 1..32"),
    ("vip-prefix-string", everywhere("gpuops_api_vip_prefix", "24"), ALL, "gpuops_api_vip_prefix", "must be a integer"),
    ("node-ip-not-an-ip", on("gpu01", "gpuops_kubernetes_node_ip", "10.250.0.21/24"), "gpu01", "gpuops_kubernetes_node_ip",
     "not an IP address"),
    ("node-ip-duplicate", both(on("gpu01", "gpuops_kubernetes_node_ip", "10.250.0.21"), on("gpu02", "gpuops_kubernetes_node_ip", "10.250.0.21")),
     "gpu02", "gpuops_kubernetes_node_ip", "also the node IP of gpu01"),
    ("rack-invalid", on("wk01", "gpuops_rack", "rack 1"), "wk01", "gpuops_rack", "not a valid label value"),
    # per-host variables
    ("addresses-missing", on("wk01", "gpuops_node_addresses", DELETE), "wk01", "gpuops_node_addresses", "host_vars/wk01"),
    ("interfaces-not-a-list", on("cp02", "gpuops_node_interfaces", {"name": "eno1"}), "cp02", "gpuops_node_interfaces", "must be a list"),
    # versions (kubeadm: supported minor, one minor at a time, no downgrade)
    ("version-not-xyz", everywhere("gpuops_kubernetes_version", "1.36"), ALL, "gpuops_kubernetes_version", "X.Y.Z"),
    ("version-leading-v", everywhere("gpuops_kubernetes_version", "v1.36.3"), ALL, "gpuops_kubernetes_version", 'leading "v"'),
    ("current-version-leading-v", everywhere("gpuops_kubernetes_current_version", "v1.35.4"), ALL,
     "gpuops_kubernetes_current_version", 'leading "v"'),
    ("minor-unsupported", both(everywhere("gpuops_kubernetes_version", "1.29.1"), everywhere("gpuops_kubernetes_current_version", DELETE)),
     ALL, "gpuops_kubernetes_version", "1.29 is not supported"),
    ("upgrade-skips-a-minor", everywhere("gpuops_kubernetes_current_version", "1.34.2"), ALL, "gpuops_kubernetes_version",
     "upgrade to 1.35.x first"),
    ("downgrade", everywhere("gpuops_kubernetes_current_version", "1.36.5"), ALL, "gpuops_kubernetes_version", "is a downgrade"),
    ("major-change", everywhere("gpuops_kubernetes_current_version", "0.36.1"), ALL, "gpuops_kubernetes_version", "major version"),
    # groups and control planes
    ("ha-two-control-planes", group("kube_control_plane", ["cp01", "cp02"]), ALL, "gpuops_control_plane_ha", "2 host(s)"),
    ("ha-four-control-planes", both(group("kube_control_plane", ["cp01", "cp02", "cp03", "wk01"]), group("kube_node", ["gpu01", "gpu02"])),
     ALL, "gpuops_control_plane_ha", "odd number >= 3"),
    ("non-ha-three-control-planes", everywhere("gpuops_control_plane_ha", False), ALL, "gpuops_control_plane_ha", "is false"),
    ("no-control-plane", both(group("kube_control_plane", []), group("kube_node", NAMES)), ALL, "kube_control_plane", "empty"),
    ("no-worker", both(group("kube_node", []), group("gpu_nodes", [])), ALL, "kube_node", "empty"),
    ("gpu-node-not-a-worker", group("kube_node", ["gpu01", "wk01"]), "gpu02", "groups", "gpu_nodes but not in kube_node"),
    ("host-in-no-cluster-group", group("kube_node", ["gpu01", "gpu02"]), "wk01", "groups", "neither kube_control_plane"),
    # host names
    ("host-name-invalid", rename("wk01", "wk_01"), "wk_01", "inventory_hostname", "RFC 1123"),
    ("host-name-label-too-long", rename("wk01", "w" * 64 + ".rack1"), "w" * 64 + ".rack1", "inventory_hostname", "63 characters"),
    ("host-name-duplicate-short-name", rename("wk01", "cp01.rack1.example"), "cp01.rack1.example", "inventory_hostname",
     "duplicate node name"),
    ("host-name-differs-only-in-case", rename("wk01", "GPU01"), "GPU01", "inventory_hostname", "only in letter case"),
    ("ansible-host-duplicate", on("gpu02", "ansible_host", "192.168.10.14"), "gpu02", "ansible_host", "also the ansible_host of gpu01"),
    ("ansible-host-not-management", on("gpu02", "ansible_host", "192.168.10.99"), "gpu02", "ansible_host",
     "gpuops_node_addresses.management.address 192.168.10.15"),
    # networks
    ("network-not-a-dict", net("storage", "cidr", DELETE), ALL, "gpuops_networks.storage.cidr", "missing"),
    ("network-key-typo", net("storage", "valn", 200), ALL, "gpuops_networks.storage.valn", "not a known network key"),
    ("network-cidr-invalid", net("storage", "cidr", "10.20.0.0/33"), ALL, "gpuops_networks.storage.cidr", "not a valid CIDR"),
    ("network-cidr-host-bits", net("storage", "cidr", "10.20.0.1/24"), ALL, "gpuops_networks.storage.cidr", "10.20.0.0/24"),
    ("mtu-string", net("storage", "mtu", "9000"), ALL, "gpuops_networks.storage.mtu", "must be an integer"),
    ("mtu-above-max", net("storage", "mtu", 9600), ALL, "gpuops_networks.storage.mtu", "outside 576..9216"),
    ("mtu-below-ipv4-min", net("management", "mtu", 500), ALL, "gpuops_networks.management.mtu", "outside 576..9216"),
    ("vlan-zero", net("cluster", "vlan", 0), ALL, "gpuops_networks.cluster.vlan", "outside 1-4094"),
    ("vlan-string", net("cluster", "vlan", "100"), ALL, "gpuops_networks.cluster.vlan", "must be an integer"),
    ("gateway-outside", net("management", "gateway", "192.168.11.1"), ALL, "gpuops_networks.management.gateway", "not a usable"),
    ("gateway-broadcast", net("management", "gateway", "192.168.10.255"), ALL, "gpuops_networks.management.gateway", "not a usable"),
    ("gateway-not-ip", net("management", "gateway", "router1"), ALL, "gpuops_networks.management.gateway", "not an IP"),
    ("dns-not-a-list", net("management", "dns", "192.168.10.53"), ALL, "gpuops_networks.management.dns", "must be a list"),
    ("dns-name", net("management", "dns", ["ns1.example"]), ALL, "gpuops_networks.management.dns[0]", "not an IP"),
    ("dns-in-service-cidr", net("management", "dns", ["192.168.10.53", "10.96.0.10"]), ALL, "gpuops_networks.management.dns[1]",
     "inside gpuops_service_cidr"),
    # pod and service CIDRs
    ("pod-cidr-invalid", everywhere("gpuops_pod_cidr", "10.244.0.0/33"), ALL, "gpuops_pod_cidr", "not a valid CIDR"),
    ("pod-cidr-host-bits", everywhere("gpuops_pod_cidr", "10.244.1.0/16"), ALL, "gpuops_pod_cidr", "10.244.0.0/16"),
    ("service-cidr-too-large", everywhere("gpuops_service_cidr", "10.96.0.0/11"), ALL, "gpuops_service_cidr", "too large"),
    ("service-cidr-too-small-for-dns", everywhere("gpuops_service_cidr", "10.96.0.0/29"), ALL, "gpuops_service_cidr", "10th address"),
    ("pod-cidr-smaller-than-node-block", everywhere("gpuops_pod_cidr", "10.244.0.0/25"), ALL, "gpuops_pod_cidr", "one node block"),
    ("pod-cidr-too-few-blocks", everywhere("gpuops_pod_cidr", "10.244.0.0/22"), ALL, "gpuops_pod_cidr", "only 4 node blocks"),
    ("pod-and-service-families-differ", everywhere("gpuops_service_cidr", "fd00:96::/108"), ALL, "gpuops_service_cidr",
     "one IP family"),
    ("pod-overlaps-service", everywhere("gpuops_pod_cidr", "10.96.0.0/16"), ALL, "gpuops_pod_cidr", "overlaps gpuops_service_cidr"),
    ("pod-overlaps-node-network", everywhere("gpuops_pod_cidr", "10.10.0.0/16"), ALL, "gpuops_networks.cluster.cidr",
     "overlaps gpuops_pod_cidr"),
    ("node-networks-overlap", net("storage", "cidr", "10.10.0.0/23"), ALL, "gpuops_networks.cluster.cidr",
     "overlaps gpuops_networks.storage.cidr"),
    # required networks
    ("management-address-missing", lambda hv, g: hv["cp03"]["gpuops_node_addresses"].pop("management"), "cp03",
     "gpuops_node_addresses.management", "the network Ansible connects over"),
    ("cluster-address-missing", lambda hv, g: hv["gpu02"]["gpuops_node_addresses"].pop("cluster"), "gpu02",
     "gpuops_node_addresses.cluster", "every node needs an address on the cluster network"),
    ("required-storage-address-missing", both(everywhere("gpuops_required_networks", ["storage"]),
                                              lambda hv, g: hv["wk01"]["gpuops_node_addresses"].pop("storage")),
     "wk01", "gpuops_node_addresses.storage", "every node needs an address"),
    ("required-network-undeclared", everywhere("gpuops_required_networks", ["rdma"]), ALL, "gpuops_required_networks", '"rdma"'),
    # interfaces and bonds
    ("interface-without-name", iface("cp01", 0, "name", ""), "cp01", "gpuops_node_interfaces[0]", "needs a name"),
    ("interface-name-too-long", iface("cp01", 0, "name", "enp129s0f0np0xyz"), "cp01", "gpuops_node_interfaces[0]", "1-15 characters"),
    ("interface-type-invalid", iface("cp02", 0, "type", "wifi"), "cp02", "gpuops_node_interfaces[0] (eno1).type", "wifi"),
    ("bond-without-members", iface("cp01", 1, "members", []), "cp01", "gpuops_node_interfaces[1] (bond0).members", "non-empty"),
    ("bond-mode-balance-rr", iface("cp01", 1, "bond_mode", "balance-rr"), "cp01", "gpuops_node_interfaces[1] (bond0).bond_mode",
     "802.3ad, active-backup, balance-xor"),
    ("bond-options-on-ethernet", iface("cp01", 0, "bond_mode", "802.3ad"), "cp01", "gpuops_node_interfaces[0] (eno1)",
     "only valid for type: bond"),
    ("interface-mtu-string", iface("wk01", 1, "mtu", "9000"), "wk01", "gpuops_node_interfaces[1] (bond0).mtu", "must be an integer"),
    ("interface-declared-twice", lambda hv, g: hv["cp03"]["gpuops_node_interfaces"].append({"name": "eno1", "type": "ethernet"}),
     "cp03", "gpuops_node_interfaces[2] (eno1)", "declared twice"),
    ("link-in-two-bonds", lambda hv, g: hv["cp03"]["gpuops_node_interfaces"].append(
        {"name": "bond1", "type": "bond", "members": ["ens1f0"]}), "cp03", "gpuops_node_interfaces[2] (bond1).members",
     "already a member of bond bond0"),
    ("nested-bond", lambda hv, g: hv["cp03"]["gpuops_node_interfaces"].append(
        {"name": "bond1", "type": "bond", "members": ["bond0"]}), "cp03", "gpuops_node_interfaces (bond1).members", "nested bonds"),
    ("bond-member-mtu-differs", lambda hv, g: hv["gpu02"]["gpuops_node_interfaces"].append(
        {"name": "ens1f0", "type": "ethernet", "mtu": 1500}), "gpu02", "gpuops_node_interfaces (ens1f0).mtu", "bond bond0"),
    # addresses
    ("address-network-undeclared", lambda hv, g: hv["gpu02"]["gpuops_node_addresses"].update(
        {"rdma": {"interface": "bond0", "address": "10.30.0.15"}}), "gpu02", "gpuops_node_addresses.rdma", "not declared"),
    ("address-not-a-dict", lambda hv, g: hv["gpu02"]["gpuops_node_addresses"].update({"storage": "10.20.0.15"}), "gpu02",
     "gpuops_node_addresses.storage", "must be a dict"),
    ("address-on-bond-member", addr("wk01", "storage", "interface", "ens1f1"), "wk01", "gpuops_node_addresses.storage.interface",
     "member of bond bond0"),
    ("address-on-undeclared-interface", addr("gpu01", "management", "interface", "eno2"), "gpu01",
     "gpuops_node_addresses.management.interface", "not declared"),
    ("address-with-prefix", addr("cp02", "cluster", "address", "10.10.0.12/24"), "cp02", "gpuops_node_addresses.cluster.address",
     "without the prefix length"),
    ("address-outside", addr("gpu01", "cluster", "address", "10.10.1.21"), "gpu01", "gpuops_node_addresses.cluster.address",
     "not a usable address"),
    ("address-network-address", addr("gpu01", "cluster", "address", "10.10.0.0"), "gpu01", "gpuops_node_addresses.cluster.address",
     "not a usable address"),
    ("address-is-gateway", addr("wk01", "management", "address", "192.168.10.1"), "wk01", "gpuops_node_addresses.management.address",
     "is the gateway"),
    ("address-duplicate-across-hosts", addr("gpu02", "cluster", "address", "10.10.0.14"), "gpu02",
     "gpuops_node_addresses.cluster.address", "already used by gpu01"),
    # VLANs and MTUs
    ("vlan-duplicate-on-parent", net("storage", "vlan", 100), "cp01", "gpuops_node_addresses.storage", "VLAN 100 on bond0"),
    ("two-untagged-on-one-link", both(net("storage", "vlan", DELETE), net("storage", "mtu", 1500),
                                      lambda hv, g: [hv[h]["gpuops_node_addresses"]["storage"].update(interface="eno1") for h in hv]),
     "cp01", "gpuops_node_addresses.storage", "untagged eno1"),
    ("vlan-device-name-too-long", both(
        lambda hv, g: hv["cp01"]["gpuops_node_interfaces"].__setitem__(1, {"name": "enp129s0f0np0", "type": "ethernet", "mtu": 9000}),
        addr("cp01", "cluster", "interface", "enp129s0f0np0"), addr("cp01", "storage", "interface", "enp129s0f0np0")),
     "cp01", "gpuops_node_addresses.cluster.interface", "enp129s0f0np0.100 has 17 characters"),
    ("vlan-mtu-above-parent", iface("gpu01", 1, "mtu", 1500), "gpu01", "gpuops_node_addresses.cluster", "parent interface bond0"),
    ("untagged-mtu-differs", iface("cp03", 0, "mtu", 9000), "cp03", "gpuops_node_addresses.management", "differs from the mtu 9000"),
    # GPU nodes
    ("gpu-zone-missing", on("gpu02", "gpuops_zone", DELETE), "gpu02", "gpuops_zone", "not defined"),
    ("gpu-zone-invalid", on("gpu01", "gpuops_zone", "zone a!"), "gpu01", "gpuops_zone", "topology.kubernetes.io/zone"),
    ("zone-invalid-on-cpu-node", on("wk01", "gpuops_zone", "-a"), "wk01", "gpuops_zone", "not a valid"),
    ("gpu-missing", on("gpu01", "gpuops_gpu", DELETE), "gpu01", "gpuops_gpu", "not defined"),
    ("gpu-not-a-dict", on("gpu01", "gpuops_gpu", "H100"), "gpu01", "gpuops_gpu", "must be a dict"),
    ("gpu-product", on("gpu01", "gpuops_gpu", {"product": "Tesla-V100", "count": 8}), "gpu01", "gpuops_gpu.product", "Tesla-V100"),
    ("gpu-count-zero", on("gpu02", "gpuops_gpu", {"product": "NVIDIA-H100-PCIe", "count": 0}), "gpu02", "gpuops_gpu.count", "1..16"),
    ("gpu-count-bool", on("gpu02", "gpuops_gpu", {"product": "NVIDIA-H100-PCIe", "count": True}), "gpu02", "gpuops_gpu.count", "1..16"),
    ("gpu-on-cpu-node", on("wk01", "gpuops_gpu", {"product": "NVIDIA-H100-PCIe", "count": 2}), "wk01", "gpuops_gpu", "not in gpu_nodes"),
    # storage (roles/storage's inventory rules, checked by preflight too)
    ("storage-array-level", on("gpu01", "storage_arrays", [{"name": "data", "level": 5, "devices": ["/dev/a", "/dev/b"]}]),
     "gpu01", "storage_arrays[data].level", "0, 1 or 10"),
    ("storage-array-devices-and-selector", on("gpu01", "storage_arrays", [
        {"name": "data", "level": 1, "devices": ["/dev/nvme1n1", "/dev/nvme2n1"], "selector": {"count": 2}}]),
     "gpu01", "storage_arrays[data]", "exactly one of"),
    ("storage-raid1-one-device", on("gpu01", "storage_arrays", [{"name": "data", "level": 1, "devices": ["/dev/nvme1n1"]}]),
     "gpu01", "storage_arrays[data].devices", "at least 2"),
    ("storage-raid10-odd", on("gpu01", "storage_arrays", [{"name": "d", "level": 10, "devices": ["/dev/a", "/dev/b", "/dev/c"]}]),
     "gpu01", "storage_arrays[d].devices", "even number"),
    ("storage-device-in-two-arrays", on("gpu01", "storage_arrays", [
        {"name": "a", "level": 1, "devices": ["/dev/x", "/dev/y"]}, {"name": "b", "level": 1, "devices": ["/dev/y", "/dev/z"]}]),
     "gpu01", "storage_arrays[b].devices", "also listed in array a"),
    ("storage-array-name-twice", on("gpu01", "storage_arrays", [
        {"name": "a", "level": 0, "selector": {}}, {"name": "a", "level": 0, "selector": {}}]), "gpu01", "storage_arrays[a].name",
     "used by 2 arrays"),
    ("storage-vg-unknown-array", on("gpu02", "storage_volume_groups", [{"name": "vg0", "arrays": ["nope"]}]), "gpu02",
     "storage_volume_groups[vg0].arrays", "not in storage_arrays"),
    ("storage-lv-unknown-vg", on("gpu02", "storage_logical_volumes", [{"name": "lv", "vg": "vgx", "size": "10G"}]), "gpu02",
     "storage_logical_volumes[vgx/lv].vg", "not in storage_volume_groups"),
    ("storage-lv-size", both(on("gpu02", "storage_volume_groups", [{"name": "vg0", "devices": ["/dev/nvme1n1"]}]),
                             on("gpu02", "storage_logical_volumes", [{"name": "lv", "vg": "vg0", "size": "ten"}])),
     "gpu02", "storage_logical_volumes[vg0/lv].size", "not an LVM size"),
    ("storage-lv-mount-twice", both(on("gpu02", "storage_volume_groups", [{"name": "vg0", "devices": ["/dev/nvme1n1"]}]),
                                    on("gpu02", "storage_logical_volumes", [
                                        {"name": "a", "vg": "vg0", "size": "1G", "mountpoint": "/data"},
                                        {"name": "b", "vg": "vg0", "size": "1G", "mountpoint": "/data"}])),
     "gpu02", "storage_logical_volumes[vg0/a].mountpoint", "used by 2"),
    ("storage-force-wipe-not-a-path", on("gpu02", "storage_force_wipe_devices", ["nvme1n1"]), "gpu02", "storage_force_wipe_devices",
     "not a device path"),
]


def test_the_valid_cluster_has_no_problem():
    hv, groups = inventory()
    assert check(hv, groups) == []


@pytest.mark.parametrize("mutation,host,variable,needle", [c_[1:] for c_ in CASES], ids=[c_[0] for c_ in CASES])
def test_rule(mutation, host, variable, needle):
    hv, groups = inventory()
    mutation(hv, groups)
    problems = check(hv, groups, hosts=c.cluster_hosts(groups, list(hv)))
    hits = [p for p in problems if p["host"] == host and p["variable"] == variable and needle in p["message"]]
    assert hits, "\n".join(lines(problems))
    for p in problems:
        assert "Fix:" in p["message"], p
        assert p["variable"], p


def test_case_ids_are_unique():
    assert len({c_[0] for c_ in CASES}) == len(CASES)


def test_every_problem_at_once():
    hv, groups = inventory()
    both(everywhere("gpuops_control_plane_ha", "yes"), addr("gpu01", "cluster", "address", "10.10.1.21"),
         on("gpu02", "gpuops_zone", DELETE), net("cluster", "vlan", 5000), rename("wk01", "GPU01"))(hv, groups)
    found = {(p["host"], p["variable"]) for p in check(hv, groups)}
    assert {(None, "gpuops_control_plane_ha"), ("gpu01", "gpuops_node_addresses.cluster.address"), ("gpu02", "gpuops_zone"),
            (None, "gpuops_networks.cluster.vlan"), ("GPU01", "inventory_hostname")} <= found


def test_host_names_differing_only_in_case_are_each_validated():
    """Jinja's unique() folds case: the contract keeps both hosts and checks both."""
    hv, groups = inventory()
    rename("wk01", "GPU01")(hv, groups)
    hv["GPU01"]["gpuops_node_addresses"]["cluster"]["address"] = "10.99.0.1"
    problems = check(hv, groups)
    assert any(p["host"] == "GPU01" and p["variable"] == "gpuops_node_addresses.cluster.address" for p in problems), lines(problems)
    assert c.cluster_hosts({"kube_node": ["gpu01", "GPU01", "gpu01"]}) == ["gpu01", "GPU01"]


def test_ip_address_host_names_are_valid_and_not_duplicates():
    hv, groups = inventory()
    for h in list(hv):
        rename(h, hv[h]["ansible_host"])(hv, groups)
    assert check(hv, groups) == []
    assert c.node_name_key("192.168.10.11") != c.node_name_key("192.168.10.12")
    assert c.node_name_key("fd00::1") == "fd00::1"


def test_unreadable_variable_is_reported_once_not_as_missing():
    hv, groups = inventory()
    del hv["gpu01"]["gpuops_node_addresses"]
    unreadable = [c.problem("gpu01", "gpuops_node_addresses.cluster.address", "gpuops_node_addresses.cluster.address cannot be "
                            "templated: 'x' is undefined. Fix: define it.")]
    problems = check(hv, groups, unreadable=unreadable)
    assert [(p["host"], p["variable"]) for p in problems] == [("gpu01", "gpuops_node_addresses.cluster.address")]


def test_unreadable_cluster_variable_is_not_called_missing():
    hv, groups = inventory()
    for h in hv:
        del hv[h]["gpuops_pod_cidr"]
    unreadable = [c.problem(h, "gpuops_pod_cidr", "gpuops_pod_cidr cannot be templated. Fix: x.") for h in hv]
    problems = check(hv, groups, unreadable=unreadable)
    assert len(problems) == len(hv) and all(p["variable"] == "gpuops_pod_cidr" for p in problems), lines(problems)


def test_downgrade_allowed_with_the_option_but_one_minor_only():
    hv, groups = inventory()
    both(everywhere("gpuops_kubernetes_current_version", "1.36.5"), everywhere("gpuops_kubernetes_version", "1.35.9"))(hv, groups)
    assert check(hv, groups, options={"allow_downgrade": True}) == []
    everywhere("gpuops_kubernetes_version", "1.34.1")(hv, groups)
    assert any("more than one minor" in p["message"] for p in check(hv, groups, options={"allow_downgrade": True}))


def test_ipv6_networks():
    hv, groups = inventory()
    for h in hv:
        hv[h]["gpuops_networks"]["storage"] = {"cidr": "fd00:20::/64", "vlan": 200, "mtu": 1200}
        hv[h]["gpuops_node_addresses"]["storage"]["address"] = "fd00:20::%x" % (NAMES.index(h) + 11)
    problems = check(hv, groups)
    assert [(p["variable"], "1280..9216" in p["message"]) for p in problems] == [("gpuops_networks.storage.mtu", True)]
    for h in hv:
        hv[h]["gpuops_networks"]["storage"]["mtu"] = 9000
    assert check(hv, groups) == []


def test_role_options_are_typed():
    hv, groups = inventory()
    opts = {"role_options": {"os_baseline_disable_swap": {"type": "bool", "role": "os_baseline", "choices": []},
                             "kubernetes_packages_mode": {"type": "str", "role": "kubernetes_packages", "choices": ["apt", "binary"]}}}
    on("gpu01", "os_baseline_disable_swap", "yes")(hv, groups)
    everywhere("kubernetes_packages_mode", "snap")(hv, groups)
    got = lines(check(hv, groups, options=opts))
    assert any(line.startswith("[gpu01] os_baseline_disable_swap must be a bool") for line in got), got
    assert any(line.startswith('[all hosts] kubernetes_packages_mode is "snap", not one of apt, binary') for line in got), got


def test_management_network_is_configurable():
    hv, groups = inventory()
    for h in hv:
        hv[h]["gpuops_networks"]["oob"] = hv[h]["gpuops_networks"].pop("management")
        hv[h]["gpuops_node_addresses"]["oob"] = hv[h]["gpuops_node_addresses"].pop("management")
    assert any(p["variable"] == "gpuops_networks" and '"management"' in p["message"] for p in check(hv, groups))
    everywhere("network_management_network", "oob")(hv, groups)
    assert check(hv, groups) == []


def test_network_role_checks_one_node_with_the_same_rules():
    hv, _groups = inventory()
    one = hv["gpu01"]
    assert c.check_network_role_inventory("gpu01", one["gpuops_networks"], one["gpuops_node_interfaces"],
                                          one["gpuops_node_addresses"]) == []
    one["gpuops_networks"]["cluster"]["vlan"] = 5000
    one["gpuops_node_interfaces"][1]["bond_mode"] = "balance-alb"
    got = c.check_network_role_inventory("gpu01", one["gpuops_networks"], one["gpuops_node_interfaces"], one["gpuops_node_addresses"])
    assert {(p["host"], p["variable"]) for p in got} == {("gpu01", "gpuops_networks.cluster.vlan"),
                                                        ("gpu01", "gpuops_node_interfaces[1] (bond0).bond_mode")}


def test_storage_rules_accept_the_documented_layout():
    arrays = [{"name": "data", "level": 1, "devices": ["/dev/nvme1n1", "/dev/nvme2n1"]},
              {"name": "scratch", "level": 0, "selector": {"transport": "nvme", "count": 2}}]
    vgs = [{"name": "vg_data", "arrays": ["data"]}, {"name": "vg_scratch", "arrays": ["scratch"], "devices": ["/dev/disk/by-id/x"]}]
    lvs = [{"name": "containerd", "vg": "vg_data", "size": "40%VG", "mountpoint": "/var/lib/containerd"},
           {"name": "models", "vg": "vg_scratch", "size": "100%FREE", "fstype": "ext4", "mountpoint": "/srv/models"}]
    assert c.check_storage("n1", arrays, vgs, lvs, ["/dev/nvme3n1"]) == []
    assert c.check_storage("n1") == []
    assert [p["variable"] for p in c.check_storage("n1", "data")] == ["storage_arrays"]


def test_format_problem():
    assert c.format_problem(c.problem(None, "x", "x is bad. Fix: y.")) == "[all hosts] x is bad. Fix: y."
    assert c.format_problem(c.problem("h1", "x", "x is bad. Fix: y.")) == "[h1] x is bad. Fix: y."


def test_network_timers_from_role_defaults_and_inventory():
    """roles/network's timer rule, with the role's defaults when the inventory does not set them."""
    specs = {"network_rollback_seconds": {"type": "int", "role": "network", "choices": [], "default": 120},
             "network_reconnect_timeout": {"type": "int", "role": "network", "choices": [], "default": 60}}
    hv, groups = inventory()
    assert check(hv, groups, options={"role_options": specs}) == []
    everywhere("network_reconnect_timeout", 150)(hv, groups)
    got = check(hv, groups, options={"role_options": specs})
    assert [(p["host"], p["variable"]) for p in got] == [(None, "network_rollback_seconds")], lines(got)
    on("cp01", "network_rollback_seconds", 900)(hv, groups)
    got = check(hv, groups, options={"role_options": specs})
    assert sorted(p["host"] for p in got) == ["cp02", "cp03", "gpu01", "gpu02", "wk01"], lines(got)
    one = hv["gpu01"]
    got = c.check_network_role_inventory("gpu01", one["gpuops_networks"], one["gpuops_node_interfaces"], one["gpuops_node_addresses"],
                                         {"network_rollback_seconds": 20, "network_reconnect_timeout": 5})
    assert {p["variable"] for p in got} == {"network_rollback_seconds", "network_reconnect_timeout"}


# --------------------------------------------------------------- the cluster roles' own view of the rules

CP_IPS = {"cp01": "10.10.0.11", "cp02": "10.10.0.12", "cp03": "10.10.0.13"}


def role_problems(**change):
    args = dict(version="1.36.3", pod_cidr="10.244.0.0/16", service_cidr="10.96.0.0/12", control_planes=list(CP_IPS),
                node_count=6, node_ips=dict(CP_IPS), ha=True, vip="10.10.0.10")
    args.update(change)
    return c.check_cluster_role_options(args.pop("version"), args.pop("pod_cidr"), args.pop("service_cidr"),
                                        args.pop("control_planes"), args.pop("node_count"), args.pop("node_ips"), **args)


def test_the_cluster_roles_accept_what_the_contract_accepts_including_ipv6():
    assert role_problems() == []
    v6 = dict((h, "fd00:10::%d" % i) for i, h in enumerate(CP_IPS, 11))
    assert role_problems(pod_cidr="fd00:10:244::/56", service_cidr="fd00:96::/108", node_ips=v6, vip="fd00:10::10") == []


@pytest.mark.parametrize("change, host, variable, text", [
    ({"version": "1.36"}, None, "gpuops_kubernetes_version", "X.Y.Z"),
    ({"version": ""}, None, "gpuops_kubernetes_version", "not set"),
    ({"service_cidr": "fd00:96::/108"}, None, "gpuops_service_cidr", "one IP family"),
    ({"service_cidr": "10.96.0.0/29"}, None, "gpuops_service_cidr", "too small"),
    ({"pod_cidr": "10.244.0.1/16"}, None, "gpuops_pod_cidr", "host bits"),
    ({"node_ips": dict(CP_IPS, cp02="")}, "cp02", "gpuops_kubernetes_node_ip", "no node address"),
    ({"node_ips": dict(CP_IPS, cp02="10.10.0.11")}, "cp02", "gpuops_kubernetes_node_ip", "also the node IP of cp01"),
    ({"control_planes": ["cp01", "cp02"]}, None, "gpuops_control_plane_ha", "odd number"),
    ({"control_planes": ["cp01", "cp02"], "ha": None}, None, "gpuops_control_plane_ha", "odd number"),
    ({"vip": "10.10.0.12"}, None, "gpuops_api_vip", "nobody's own address"),
    ({"vip": "10.10.0.300"}, None, "gpuops_api_vip", "not an IP address"),
])
def test_the_cluster_roles_refuse_what_the_contract_refuses(change, host, variable, text):
    found = [p for p in role_problems(**change) if p["variable"] == variable and p["host"] == host]
    assert found and text in found[0]["message"], role_problems(**change)


def test_the_node_role_checks_its_node_address_with_the_contract():
    assert c.check_node_role_options("gpu01", "10.10.0.21") == []
    assert c.check_node_role_options("gpu01", "fd00:10::21") == []
    bad = c.check_node_role_options("gpu01", "10.10.0.21/24")
    assert bad and bad[0]["host"] == "gpu01" and bad[0]["variable"] == "gpuops_kubernetes_node_ip"
    assert "no node address" in c.check_node_role_options("gpu01", "")[0]["message"]
