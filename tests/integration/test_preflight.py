"""roles/preflight against generated inventories: one valid inventory passes, every bad one fails.

No server and no hardware is needed: every host is ``ansible_connection: local`` and the role
reads hostvars only (gather_facts: false). Each case is the valid base inventory with ONE
mutation (a few cases combine several to prove every problem is reported at once).

Each inventory runs through tests/integration/preflight_cases/site.yml: the real
playbooks/preflight.yml, then a play that writes a sentinel file per host. A failing case must
(1) fail with a message naming the host and the variable, (2) show changed=0 for every host in
the recap and (3) leave every pre-created sentinel file untouched. The valid case proves the
sentinel play does run (and rewrites the files) when preflight passes, so (3) can fail.

The runs are batched: one ansible-playbook per case, at most 2 at a time, all started by a
module fixture; the parametrized tests then assert on the stored results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest
import yaml

from tests.testbed.common import private_stdin

# No marker: the rest stream of scripts/test all (local playbooks only, no podman node and no
# inotify-hungry test bed). In the nodes stream it made the cluster tier, which starts when that
# stream ends, ~2.5 min later (docs/testing.md "The whole suite").

REPO = Path(__file__).resolve().parents[2]
SITE = REPO / "tests" / "integration" / "preflight_cases" / "site.yml"
WORKERS = int(os.environ.get("GPUOPS_PREFLIGHT_WORKERS", "2"))
SENTINEL_TEXT = "untouched sentinel\n"

# ---------------------------------------------------------------- the valid base inventory


def base_inventory() -> dict:
    """A valid 3 control-plane + 2 GPU worker + 1 CPU worker cluster (docs/inventory.md)."""
    cluster = {
        "gpuops_cluster_name": "rack1",
        "gpuops_kubernetes_version": "1.36.3",
        "gpuops_kubernetes_current_version": "1.35.4",
        "gpuops_control_plane_ha": True,
        "gpuops_api_vip": "10.10.0.10",
        "gpuops_pod_cidr": "10.244.0.0/16",
        "gpuops_service_cidr": "10.96.0.0/12",
        "gpuops_networks": {
            "management": {"cidr": "192.168.10.0/24", "mtu": 1500, "gateway": "192.168.10.1",
                           "dns": ["192.168.10.53"]},
            "cluster": {"cidr": "10.10.0.0/24", "vlan": 100, "mtu": 9000},
            "storage": {"cidr": "10.20.0.0/24", "vlan": 200, "mtu": 9000},
        },
    }
    hosts: Dict[str, dict] = {}
    for i, name in enumerate(["cp01", "cp02", "cp03", "gpu01", "gpu02", "wk01"], start=11):
        hv = {
            "ansible_host": f"192.168.10.{i}",
            "gpuops_node_interfaces": [
                {"name": "eno1", "type": "ethernet"},
                {"name": "bond0", "type": "bond", "members": ["ens1f0", "ens1f1"],
                 "bond_mode": "802.3ad", "mtu": 9000},
            ],
            "gpuops_node_addresses": {
                "management": {"interface": "eno1", "address": f"192.168.10.{i}"},
                "cluster": {"interface": "bond0", "address": f"10.10.0.{i}"},
                "storage": {"interface": "bond0", "address": f"10.20.0.{i}"},
            },
        }
        if name.startswith("gpu"):
            hv["gpuops_zone"] = "zone-a" if name == "gpu01" else "zone-b"
            hv["gpuops_gpu"] = {"product": "NVIDIA-H100-80GB-HBM3", "count": 8}
        hosts[name] = hv
    return {
        "vars": cluster,
        "hosts": hosts,
        "groups": {
            "kube_control_plane": ["cp01", "cp02", "cp03"],
            "kube_node": ["gpu01", "gpu02", "wk01"],
            "gpu_nodes": ["gpu01", "gpu02"],
        },
    }


def render(inv: dict) -> dict:
    """The Ansible YAML inventory of ``inv``: host vars under the host's first group."""
    placed: set = set()
    children: Dict[str, dict] = {}
    for group, members in inv["groups"].items():
        hosts = {}
        for h in members:
            hosts[h] = {} if h in placed else inv["hosts"].get(h, {})
            placed.add(h)
        children[group] = {"hosts": hosts}
    k8s = {g: children.pop(g) for g in ("kube_control_plane", "kube_node") if g in children}
    all_vars = dict(inv["vars"])
    all_vars.update({"ansible_connection": "local", "ansible_python_interpreter": sys.executable})
    # hosts in no group at all (membership cases) sit directly under all
    loose = {h: hv for h, hv in inv["hosts"].items() if h not in placed}
    out = {"all": {"vars": all_vars, "children": dict(children, k8s_cluster={"children": k8s})}}
    if loose:
        out["all"]["hosts"] = loose
    return out


# ---------------------------------------------------------------- mutations


def cvar(name, value):
    """Set (or, with value=DELETE, remove) a cluster-wide variable."""
    def _m(inv):
        if value is DELETE:
            inv["vars"].pop(name, None)
        else:
            inv["vars"][name] = value
    return _m


def net(name, key, value):
    def _m(inv):
        if value is DELETE:
            inv["vars"]["gpuops_networks"][name].pop(key, None)
        else:
            inv["vars"]["gpuops_networks"][name][key] = value
    return _m


def hvar(host, name, value):
    def _m(inv):
        if value is DELETE:
            inv["hosts"][host].pop(name, None)
        else:
            inv["hosts"][host][name] = value
    return _m


def addr(host, network, key, value):
    def _m(inv):
        inv["hosts"][host]["gpuops_node_addresses"][network][key] = value
    return _m


def iface(host, index, key, value):
    def _m(inv):
        itf = inv["hosts"][host]["gpuops_node_interfaces"][index]
        if value is DELETE:
            itf.pop(key, None)
        else:
            itf[key] = value
    return _m


def group(name, members):
    def _m(inv):
        inv["groups"][name] = members
    return _m


def both(*muts):
    def _m(inv):
        for m in muts:
            m(inv)
    return _m


DELETE = object()

# Each case: (id, mutation, [substrings every one of which must appear in ONE problem line]).
# A case with several expectation lists must report every one of them.
CASES: List[tuple] = [
    # required variables and types
    ("missing-cluster-name", cvar("gpuops_cluster_name", DELETE),
     [["[all hosts]", "gpuops_cluster_name", "not defined", "group_vars/all"]]),
    ("ha-as-string-yes", cvar("gpuops_control_plane_ha", "yes"),
     [["[all hosts]", "gpuops_control_plane_ha", "boolean", '"yes"']]),
    ("ha-as-string-false", cvar("gpuops_control_plane_ha", "false"),
     [["[all hosts]", "gpuops_control_plane_ha", "boolean", '"false"']]),
    ("version-as-float", cvar("gpuops_kubernetes_version", 1.36),
     [["[all hosts]", "gpuops_kubernetes_version", "must be a non-empty string", "got float"]]),
    ("networks-not-a-dict", cvar("gpuops_networks", ["management"]),
     [["[all hosts]", "gpuops_networks", "mapping"]]),
    ("host-override-differs", hvar("gpu02", "gpuops_pod_cidr", "10.245.0.0/16"),
     [["[gpu02]", "gpuops_pod_cidr", "identical on every host"]]),
    ("node-addresses-missing", hvar("wk01", "gpuops_node_addresses", DELETE),
     [["[wk01]", "gpuops_node_addresses", "not defined", "host_vars/wk01"]]),
    ("node-interfaces-not-list", hvar("cp02", "gpuops_node_interfaces", {"name": "eno1"}),
     [["[cp02]", "gpuops_node_interfaces", "must be a list"]]),
    # Kubernetes version and upgrade path
    ("version-not-xyz", cvar("gpuops_kubernetes_version", "1.36"),
     [["[all hosts]", "gpuops_kubernetes_version", "X.Y.Z"]]),
    ("version-leading-v", cvar("gpuops_kubernetes_version", "v1.36.3"),
     [["[all hosts]", "gpuops_kubernetes_version", 'leading "v"', '"1.36.3"']]),
    ("version-unsupported-minor", both(cvar("gpuops_kubernetes_version", "1.29.4"),
                                       cvar("gpuops_kubernetes_current_version", DELETE)),
     [["[all hosts]", "gpuops_kubernetes_version", "1.29 is not supported", "preflight_supported_kubernetes_minors"]]),
    ("upgrade-skips-a-minor", cvar("gpuops_kubernetes_current_version", "1.34.2"),
     [["[all hosts]", "gpuops_kubernetes_version", "skips a minor", "gpuops_kubernetes_current_version", "1.35.x first"]]),
    ("downgrade", cvar("gpuops_kubernetes_current_version", "1.36.5"),
     [["[all hosts]", "gpuops_kubernetes_version", "downgrade", "preflight_allow_downgrade"]]),
    # control planes and groups
    ("ha-two-control-planes", group("kube_control_plane", ["cp01", "cp02"]),
     [["[all hosts]", "gpuops_control_plane_ha", "kube_control_plane", "2 host(s)", "odd number >= 3"]]),
    ("ha-four-control-planes", both(group("kube_control_plane", ["cp01", "cp02", "cp03", "wk01"]),
                                    group("kube_node", ["gpu01", "gpu02"])),
     [["[all hosts]", "gpuops_control_plane_ha", "4 host(s)"]]),
    ("non-ha-three-control-planes", cvar("gpuops_control_plane_ha", False),
     [["[all hosts]", "gpuops_control_plane_ha is false", "3 hosts"]]),
    ("gpu-node-not-in-kube-node", group("kube_node", ["gpu01", "wk01"]),
     [["[gpu02]", "gpu_nodes but not in kube_node"]]),
    ("host-name-invalid", lambda inv: _rename(inv, "wk01", "wk_01"),
     [["[wk_01]", "inventory_hostname", "RFC 1123", '"wk-01"']]),
    ("host-name-duplicate-short-name", lambda inv: _rename(inv, "wk01", "cp01.rack1.example"),
     [["[cp01.rack1.example]", "inventory_hostname", "duplicate node name", "cp01"]]),
    ("duplicate-ansible-host", hvar("gpu02", "ansible_host", "192.168.10.14"),
     [["[gpu02]", "ansible_host", "192.168.10.14", "gpu01"]]),
    # networks, pod and service CIDRs
    ("pod-cidr-invalid", cvar("gpuops_pod_cidr", "10.244.0.0/33"),
     [["[all hosts]", "gpuops_pod_cidr", "not a valid CIDR"]]),
    ("pod-cidr-host-bits", cvar("gpuops_pod_cidr", "10.244.1.0/16"),
     [["[all hosts]", "gpuops_pod_cidr", "host bits", "10.244.0.0/16"]]),
    ("pod-overlaps-service", cvar("gpuops_pod_cidr", "10.96.0.0/16"),
     [["[all hosts]", "gpuops_pod_cidr", "overlaps", "gpuops_service_cidr"]]),
    ("pod-overlaps-node-network", cvar("gpuops_pod_cidr", "10.10.0.0/16"),
     [["[all hosts]", "gpuops_networks.cluster.cidr", "overlaps", "gpuops_pod_cidr"]]),
    ("service-overlaps-management", cvar("gpuops_service_cidr", "192.168.0.0/16"),
     [["[all hosts]", "gpuops_networks.management.cidr", "overlaps", "gpuops_service_cidr"]]),
    ("node-networks-overlap", net("storage", "cidr", "10.10.0.0/23"),
     [["[all hosts]", "gpuops_networks.cluster.cidr", "overlaps", "gpuops_networks.storage.cidr"]]),
    ("service-cidr-too-large", cvar("gpuops_service_cidr", "10.96.0.0/11"),
     [["[all hosts]", "gpuops_service_cidr", "too large"]]),
    ("pod-cidr-too-small-for-nodes", cvar("gpuops_pod_cidr", "10.244.0.0/22"),
     [["[all hosts]", "gpuops_pod_cidr", "only 4 node blocks", "6 nodes"]]),
    ("network-cidr-missing", net("storage", "cidr", DELETE),
     [["[all hosts]", "gpuops_networks.storage.cidr", "missing"]]),
    ("network-key-typo", both(net("storage", "valn", 200), net("storage", "vlan", DELETE)),
     [["[all hosts]", "gpuops_networks.storage.valn", "not a known network key"]]),
    ("gateway-outside", net("management", "gateway", "192.168.11.1"),
     [["[all hosts]", "gpuops_networks.management.gateway", "192.168.11.1", "not a usable address"]]),
    ("dns-not-ip", net("management", "dns", ["ns1.example"]),
     [["[all hosts]", "gpuops_networks.management.dns[0]", "not an IP address"]]),
    # VLANs
    ("vlan-zero", net("cluster", "vlan", 0),
     [["[all hosts]", "gpuops_networks.cluster.vlan", "outside 1-4094"]]),
    ("vlan-4095", net("cluster", "vlan", 4095),
     [["[all hosts]", "gpuops_networks.cluster.vlan", "outside 1-4094"]]),
    ("vlan-as-string", net("cluster", "vlan", "100"),
     [["[all hosts]", "gpuops_networks.cluster.vlan", "must be an integer"]]),
    ("vlan-duplicate-on-parent", net("storage", "vlan", 100),
     [["[cp01]", "gpuops_node_addresses.storage", "VLAN 100 on bond0", "already used by network cluster"],
      ["[wk01]", "gpuops_node_addresses.storage", "VLAN 100 on bond0"]]),
    # MTUs
    ("mtu-too-large", net("storage", "mtu", 9600),
     [["[all hosts]", "gpuops_networks.storage.mtu", "9600", "outside 576..9216"]]),
    ("mtu-too-small", net("management", "mtu", 500),
     [["[all hosts]", "gpuops_networks.management.mtu", "outside 576..9216"]]),
    ("mtu-as-string", net("storage", "mtu", "9000"),
     [["[all hosts]", "gpuops_networks.storage.mtu", "must be an integer"]]),
    ("vlan-mtu-above-parent", iface("gpu01", 1, "mtu", 1500),
     [["[gpu01]", "gpuops_node_addresses.cluster", "gpuops_networks.cluster.mtu 9000", "parent interface bond0"]]),
    ("untagged-mtu-differs", iface("cp03", 0, "mtu", 9000),
     [["[cp03]", "gpuops_node_addresses.management", "gpuops_networks.management.mtu 1500", "differs", "eno1"]]),
    ("bond-member-mtu-differs",
     lambda inv: inv["hosts"]["gpu02"]["gpuops_node_interfaces"].append(
         {"name": "ens1f0", "type": "ethernet", "mtu": 1500}),
     [["[gpu02]", "gpuops_node_interfaces (ens1f0).mtu 1500", "bond bond0"]]),
    ("interface-mtu-out-of-range", iface("wk01", 1, "mtu", 65536),
     [["[wk01]", "gpuops_node_interfaces[1] (bond0).mtu", "65536"]]),
    # interfaces and bonds
    ("bond-without-members", iface("cp01", 1, "members", []),
     [["[cp01]", "gpuops_node_interfaces[1] (bond0).members", "non-empty list"]]),
    ("bond-mode-invalid", iface("cp01", 1, "bond_mode", "round-robin"),
     [["[cp01]", "gpuops_node_interfaces[1] (bond0).bond_mode", "round-robin"]]),
    ("interface-type-invalid", iface("cp02", 0, "type", "wifi"),
     [["[cp02]", "gpuops_node_interfaces[0] (eno1).type", "wifi"]]),
    ("interface-declared-twice",
     lambda inv: inv["hosts"]["cp03"]["gpuops_node_interfaces"].append({"name": "eno1", "type": "ethernet"}),
     [["[cp03]", "gpuops_node_interfaces[2] (eno1)", "declared twice"]]),
    ("address-on-bond-member", addr("wk01", "storage", "interface", "ens1f1"),
     [["[wk01]", "gpuops_node_addresses.storage.interface", "member of bond bond0"]]),
    ("address-on-undeclared-interface", addr("gpu01", "management", "interface", "eno2"),
     [["[gpu01]", "gpuops_node_addresses.management.interface", '"eno2"', "not declared"]]),
    # node addresses
    ("address-outside-subnet", addr("gpu01", "cluster", "address", "10.10.1.21"),
     [["[gpu01]", "gpuops_node_addresses.cluster.address", "10.10.1.21", "gpuops_networks.cluster.cidr"]]),
    ("address-is-broadcast", addr("cp02", "storage", "address", "10.20.0.255"),
     [["[cp02]", "gpuops_node_addresses.storage.address", "10.20.0.255", "not a usable address"]]),
    ("address-with-prefix", addr("cp02", "cluster", "address", "10.10.0.12/24"),
     [["[cp02]", "gpuops_node_addresses.cluster.address", "without the prefix length"]]),
    ("address-is-gateway", addr("wk01", "management", "address", "192.168.10.1"),
     [["[wk01]", "gpuops_node_addresses.management.address", "gateway"]]),
    ("address-undeclared-network",
     lambda inv: inv["hosts"]["gpu02"]["gpuops_node_addresses"].update(
         {"rdma": {"interface": "bond0", "address": "10.30.0.15"}}),
     [["[gpu02]", "gpuops_node_addresses.rdma", "not declared in gpuops_networks"]]),
    ("duplicate-node-address", addr("gpu02", "cluster", "address", "10.10.0.14"),
     [["[gpu02]", "gpuops_node_addresses.cluster.address", "10.10.0.14", "already used by gpu01"]]),
    # GPU nodes
    ("gpu-node-without-zone", hvar("gpu02", "gpuops_zone", DELETE),
     [["[gpu02]", "gpuops_zone", "not defined", "GPU node"]]),
    ("gpu-zone-invalid", hvar("gpu01", "gpuops_zone", "zone a!"),
     [["[gpu01]", "gpuops_zone", "not a valid topology.kubernetes.io/zone"]]),
    ("gpu-product-unsupported", hvar("gpu01", "gpuops_gpu", {"product": "Tesla-V100-SXM2-32GB", "count": 8}),
     [["[gpu01]", "gpuops_gpu.product", "Tesla-V100-SXM2-32GB", "preflight_supported_gpu_products"]]),
    ("gpu-count-zero", hvar("gpu02", "gpuops_gpu", {"product": "NVIDIA-A100-SXM4-80GB", "count": 0}),
     [["[gpu02]", "gpuops_gpu.count", "integer 1..16"]]),
    ("gpu-data-on-cpu-node", hvar("wk01", "gpuops_gpu", {"product": "NVIDIA-H100-PCIe", "count": 2}),
     [["[wk01]", "gpuops_gpu", "not in gpu_nodes"]]),
    ("gpu-missing-on-gpu-node", hvar("gpu01", "gpuops_gpu", DELETE),
     [["[gpu01]", "gpuops_gpu", "not defined", "gpu_nodes"]]),
    # options of the collection's other roles, typed by their meta/argument_specs.yml
    ("role-option-bool-as-string", cvar("container_runtime_package_hold", "false"),
     [["[all hosts]", "container_runtime_package_hold", "must be a bool", 'got "false"', "role container_runtime"]]),
    ("role-option-bool-as-string-one-host", hvar("gpu01", "os_baseline_disable_swap", "yes"),
     [["[gpu01]", "os_baseline_disable_swap", "must be a bool", "role os_baseline"]]),
    ("role-option-not-a-choice", cvar("kubernetes_packages_mode", "snap"),
     [["[all hosts]", "kubernetes_packages_mode", '"snap"', "not one of apt, binary"]]),
    # contract classes that once crashed preflight or slipped through it
    ("host-name-differs-only-in-case", lambda inv: _rename(inv, "wk01", "GPU01"),
     [["[GPU01]", "inventory_hostname", "only in letter case", "gpu01"], ["[GPU01]", "RFC 1123"]]),
    ("undefined-template-variable", addr("gpu01", "cluster", "address", "{{ gpu01_cluster_ip }}"),
     [["[gpu01]", "gpuops_node_addresses.cluster.address", "cannot be templated", "gpu01_cluster_ip"]]),
    ("ansible-host-not-management-address", hvar("cp02", "ansible_host", "192.168.10.99"),
     [["[cp02]", "ansible_host", "192.168.10.99", "gpuops_node_addresses.management.address 192.168.10.12"]]),
    # every problem at once, not one at a time
    ("several-problems-at-once",
     both(cvar("gpuops_control_plane_ha", "yes"), addr("gpu01", "cluster", "address", "10.10.1.21"),
          hvar("gpu02", "gpuops_zone", DELETE), net("cluster", "vlan", 5000)),
     [["[all hosts]", "gpuops_control_plane_ha"], ["[gpu01]", "gpuops_node_addresses.cluster.address"],
      ["[gpu02]", "gpuops_zone"], ["[all hosts]", "gpuops_networks.cluster.vlan"]]),
    ("several-new-classes-at-once",
     both(cvar("gpuops_service_cidr", "10.96.0.0/29"), hvar("gpu02", "gpuops_kubernetes_version", "1.35.4"),
          lambda inv: inv["hosts"]["cp01"]["gpuops_node_interfaces"].__setitem__(
              1, {"name": "enp129s0f0np0", "type": "ethernet", "mtu": 9000}),
          addr("cp01", "cluster", "interface", "enp129s0f0np0"), addr("cp01", "storage", "interface", "enp129s0f0np0"),
          net("management", "dns", ["10.96.0.5"])),
     [["[all hosts]", "gpuops_service_cidr", "10th address"], ["[gpu02]", "gpuops_kubernetes_version", "on most hosts"],
      ["[cp01]", "gpuops_node_addresses.cluster.interface", "enp129s0f0np0.100", "IFNAMSIZ"],
      ["[all hosts]", "gpuops_networks.management.dns[0]", "inside gpuops_service_cidr"]]),
]


def _rename(inv: dict, old: str, new: str) -> None:
    inv["hosts"][new] = inv["hosts"].pop(old)
    for members in inv["groups"].values():
        for i, h in enumerate(members):
            if h == old:
                members[i] = new


# ---------------------------------------------------------------- running ansible-playbook


class Run:
    """One ansible-playbook run: rc, the json callback document, sentinel state."""

    def __init__(self, rc: int, doc: Optional[dict], stdout: str, stderr: str,
                 sentinels_before: Dict[str, tuple], sentinels_after: Dict[str, tuple],
                 seconds: float):
        self.rc = rc
        self.doc = doc
        self.stdout = stdout
        self.stderr = stderr
        self.sentinels_before = sentinels_before
        self.sentinels_after = sentinels_after
        self.seconds = seconds

    def messages(self) -> List[str]:
        """msg of every failed task result (the preflight report)."""
        out = []
        for play in (self.doc or {}).get("plays", []):
            for task in play.get("tasks", []):
                for res in task.get("hosts", {}).values():
                    if res.get("failed") and isinstance(res.get("msg"), str):
                        out.append(res["msg"])
        return out

    def problem_lines(self) -> List[str]:
        lines = []
        for msg in self.messages():
            lines.extend(line[2:] for line in msg.splitlines() if line.startswith("- "))
        return sorted(set(lines))

    def stats(self) -> Dict[str, dict]:
        return (self.doc or {}).get("stats", {})

    def explain(self) -> str:
        return (f"rc={self.rc}\nproblems:\n  " + "\n  ".join(self.problem_lines())
                + f"\nstats={json.dumps(self.stats())}\nstderr tail:\n{self.stderr[-3000:]}")


def _snapshot(d: Path) -> Dict[str, tuple]:
    return {p.name: (p.read_text(), p.stat().st_mtime_ns) for p in sorted(d.iterdir())}


def run_case(workdir: Path, inv: dict, extra: Optional[List[str]] = None) -> Run:
    workdir.mkdir(parents=True, exist_ok=True)
    inv_file = workdir / "hosts.yml"
    inv_file.write_text(yaml.safe_dump(render(inv), sort_keys=False))
    sentinels = workdir / "sentinels"
    sentinels.mkdir(exist_ok=True)
    for h in inv["hosts"]:
        (sentinels / h).write_text(SENTINEL_TEXT)
    before = _snapshot(sentinels)
    env = dict(os.environ)
    env.update({
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-tmp"),
        # the generated inventory is YAML: do not load and try the other inventory plugins
        "ANSIBLE_INVENTORY_ENABLED": "ansible.builtin.yaml",
    })
    cmd = ["ansible-playbook", "-i", str(inv_file), str(SITE),
           "-e", f"preflight_test_sentinel_dir={sentinels}"] + (extra or [])
    t0 = time.monotonic()
    with private_stdin() as stdin:
        proc = subprocess.run(cmd, stdin=stdin, cwd=str(REPO), env=env, capture_output=True, text=True, timeout=300,
                              check=False)
    seconds = time.monotonic() - t0
    try:
        doc = json.loads(proc.stdout)
    except json.JSONDecodeError:
        doc = None
    (workdir / "stdout.json").write_text(proc.stdout)
    (workdir / "stderr.txt").write_text(proc.stderr)
    return Run(proc.returncode, doc, proc.stdout, proc.stderr, before, _snapshot(sentinels), seconds)


def mutated(mutation: Callable[[dict], None]) -> dict:
    inv = base_inventory()
    mutation(inv)
    return inv


@pytest.fixture(scope="module")
def case_runs(request, tmp_path_factory):
    """The selected bad cases, queued on a pool of at most WORKERS ansible-playbook processes.

    Returns cid -> Future: each test waits only for its own case (so no single test's timeout
    covers the whole batch) while the pool keeps both workers busy.
    """
    wanted = [item.callspec.params["cid"] for item in request.session.items
              if getattr(item, "originalname", "") == "test_bad_inventory_fails_naming_host_and_variable"
              and hasattr(item, "callspec")]
    muts = {case[0]: case[1] for case in CASES}
    root = tmp_path_factory.mktemp("preflight")
    pool = ThreadPoolExecutor(max_workers=WORKERS)
    t0 = time.monotonic()
    futures = {cid: pool.submit(run_case, root / cid, mutated(muts[cid])) for cid in wanted}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)
    done = [f.result() for f in futures.values() if f.done() and not f.cancelled()]
    print(f"\n{len(done)} preflight cases in {time.monotonic() - t0:.1f}s with {WORKERS} workers"
          f" (ansible-playbook wall time per case: {sum(r.seconds for r in done) / max(len(done), 1):.1f}s)")


def assert_failed_without_change(run: Run) -> None:
    assert run.rc != 0, run.explain()
    assert run.doc is not None, f"no JSON from ansible-playbook\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
    stats = run.stats()
    assert stats, run.explain()
    for host, s in stats.items():
        assert s.get("changed", 0) == 0, f"{host} changed: {s}\n{run.explain()}"
    assert run.sentinels_after == run.sentinels_before, "a sentinel file was touched"
    assert all(text == SENTINEL_TEXT for text, _mtime in run.sentinels_after.values())


# ---------------------------------------------------------------- tests


def test_valid_inventory_passes_and_the_next_play_runs(tmp_path):
    run = run_case(tmp_path / "valid", base_inventory())
    assert run.rc == 0, run.explain()
    assert run.problem_lines() == []
    # The stand-in play ran on every host: the sentinel check of the bad cases can fail.
    assert set(run.sentinels_after) == set(base_inventory()["hosts"])
    assert all(text != SENTINEL_TEXT for text, _mtime in run.sentinels_after.values())
    for host, s in run.stats().items():
        assert s["failures"] == 0 and s["unreachable"] == 0, (host, s)


def test_valid_inventory_passes_in_check_mode(tmp_path):
    run = run_case(tmp_path / "check", base_inventory(), ["--check"])
    assert run.rc == 0, run.explain()
    # check mode: the stand-in play only reports what it would change
    assert run.sentinels_after == run.sentinels_before


def test_bad_inventory_fails_in_check_mode_too(tmp_path):
    inv = mutated(addr("gpu01", "cluster", "address", "10.10.1.21"))
    run = run_case(tmp_path / "check-bad", inv, ["--check"])
    assert_failed_without_change(run)
    assert any("[gpu01] gpuops_node_addresses.cluster.address 10.10.1.21" in line
               for line in run.problem_lines()), run.explain()


def test_ip_address_host_names_pass(tmp_path):
    """Hosts named by their management IP are valid node names, not duplicates of each other."""
    inv = base_inventory()
    for h in list(inv["hosts"]):
        _rename(inv, h, inv["hosts"][h]["ansible_host"])
    run = run_case(tmp_path / "ip-names", inv)
    assert run.rc == 0, run.explain()
    assert run.problem_lines() == []


def test_sample_inventory_passes(tmp_path):
    """inventories/sample (the documented production inventory) passes the real preflight play."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"), ANSIBLE_RETRY_FILES_ENABLED="0")
    cmd = ["ansible-playbook", "-i", str(REPO / "inventories" / "sample" / "hosts.yml"),
           str(REPO / "playbooks" / "preflight.yml"), "--check",
           "-e", json.dumps({"ansible_connection": "local", "ansible_python_interpreter": sys.executable})]
    with private_stdin() as stdin:
        proc = subprocess.run(cmd, stdin=stdin, cwd=str(REPO), env=env, capture_output=True, text=True,
                              timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "Preflight passed: 10 hosts validated" in proc.stdout, proc.stdout[-4000:]


def test_downgrade_allowed_with_the_flag(tmp_path):
    inv = mutated(both(cvar("gpuops_kubernetes_current_version", "1.36.5"),
                       cvar("gpuops_kubernetes_version", "1.35.9")))
    run = run_case(tmp_path / "downgrade-ok", inv, ["-e", "preflight_allow_downgrade=true"])
    assert run.rc == 0, run.explain()
    two_down = json.dumps({"preflight_allow_downgrade": True, "gpuops_kubernetes_version": "1.34.1"})
    run = run_case(tmp_path / "downgrade-two", inv, ["-e", two_down])
    assert_failed_without_change(run)
    assert any("more than one minor" in line for line in run.problem_lines()), run.explain()


def test_options_given_as_key_value_strings_are_coerced(tmp_path):
    """-e name=value passes strings: the role must still compare its int options as numbers."""
    run = run_case(tmp_path / "kv", base_inventory(), ["-e", "preflight_gpu_max_count=4"])
    assert_failed_without_change(run)
    assert any(line.startswith("[gpu01] gpuops_gpu.count 8 must be an integer 1..4")
               for line in run.problem_lines()), run.explain()


def test_warn_only_reports_and_does_not_stop_the_run(tmp_path):
    inv = mutated(hvar("gpu02", "gpuops_zone", DELETE))
    run = run_case(tmp_path / "warn", inv, ["-e", "preflight_warn_only=true"])
    assert run.rc == 0, run.explain()
    warned = [res.get("msg", "") for play in run.doc["plays"] for task in play["tasks"]
              if "preflight_warn_only" in task["task"]["name"] for res in task["hosts"].values()]
    assert any("[gpu02] gpuops_zone is not defined" in m for m in warned), warned
    # the next play ran: warn-only is for migrations, it does not protect the hosts
    assert all(text != SENTINEL_TEXT for text, _mtime in run.sentinels_after.values())


def test_at_least_thirty_cases():
    assert len(CASES) >= 30
    assert len({case[0] for case in CASES}) == len(CASES), "case ids must be unique"


@pytest.mark.parametrize("cid,expected", [(c[0], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_inventory_fails_naming_host_and_variable(case_runs, cid, expected):
    run = case_runs[cid].result()
    assert_failed_without_change(run)
    lines = run.problem_lines()
    for needles in expected:
        assert any(all(n in line for n in needles) for line in lines), (
            f"no problem line contains all of {needles}\n{run.explain()}")
    # every line names a host (or the cluster scope) and says how to fix it
    for line in lines:
        assert line.startswith("["), line
        assert "Fix:" in line, line


# ---------------------------------------------------------------- host-level checks (this machine)


def _notes(run: Run) -> List[str]:
    """msg lines of the 'skipped, and why' debug task of the host checks."""
    out: List[str] = []
    for play in (run.doc or {}).get("plays", []):
        for task in play.get("tasks", []):
            if "skipped, and why" not in task.get("task", {}).get("name", ""):
                continue
            for res in task.get("hosts", {}).values():
                msg = res.get("msg")
                out.extend(msg if isinstance(msg, list) else [])
    return out


def _in_container() -> bool:
    return Path("/.dockerenv").exists() or Path("/run/.containerenv").exists()


def test_host_checks_pass_on_this_machine(tmp_path):
    """Real facts of the machine running the test (cp01 is ansible_connection: local)."""
    extra = ["--limit", "cp01", "-e", json.dumps({
        "preflight_check_hosts": True, "preflight_min_vcpus": 1, "preflight_min_memory_mb": 256,
        "preflight_min_free_disk_gb": 0, "preflight_disk_path": "/",
        "preflight_supported_os": [{"distribution": "Debian", "versions": ["12", "13"]},
                                   {"distribution": "Ubuntu", "versions": ["22.04", "24.04"]}],
        "preflight_required_kernel_modules": ["overlay"]})]
    run = run_case(tmp_path / "host-ok", base_inventory(), extra)
    assert run.rc == 0, run.explain()
    notes = _notes(run)
    if _in_container():
        # kernel modules cannot be checked in a container: skipped WITH a message, not passed silently
        assert any("[cp01] preflight_required_kernel_modules: skipped" in n and "container" in n
                   for n in notes), notes


def test_host_checks_fail_naming_host_and_threshold(tmp_path):
    extra = ["--limit", "cp01", "-e", json.dumps({
        "preflight_check_hosts": True, "preflight_min_vcpus": 4096,
        "preflight_min_memory_mb": 64 * 1024 * 1024, "preflight_min_free_disk_gb": 1024 * 1024,
        "preflight_disk_path": "/", "preflight_supported_os": [{"distribution": "Plan9", "versions": ["4"]}]})]
    run = run_case(tmp_path / "host-bad", base_inventory(), extra)
    assert_failed_without_change(run)
    lines = run.problem_lines()
    for needle in ("[cp01] preflight_min_vcpus: the host has", "[cp01] preflight_min_memory_mb: the host has",
                   "[cp01] preflight_min_free_disk_gb:", "[cp01] preflight_supported_os:"):
        assert any(line.startswith(needle) for line in lines), f"{needle}\n{run.explain()}"


def test_host_checks_report_an_unreachable_host_by_name(tmp_path):
    """cp02 answers nowhere (ssh to a closed port on 127.0.0.1): its host checks cannot run, and
    preflight must say so for cp02 instead of passing it; cp01 (local) is still checked."""
    inv = mutated(both(hvar("cp02", "ansible_connection", "ssh"), hvar("cp02", "ansible_host", "127.0.0.1"),
                       hvar("cp02", "ansible_port", 1), hvar("cp02", "ansible_ssh_common_args",
                                                             "-o ConnectTimeout=5 -o BatchMode=yes")))
    extra = ["--limit", "cp01,cp02", "-e", json.dumps({
        "preflight_check_hosts": True, "preflight_min_vcpus": 1, "preflight_min_memory_mb": 256,
        "preflight_min_free_disk_gb": 0, "preflight_disk_path": "/",
        "preflight_supported_os": [{"distribution": "Debian", "versions": ["12", "13"]}],
        "preflight_required_kernel_modules": [], "preflight_connect_timeout": 4})]
    run = run_case(tmp_path / "host-unreachable", inv, extra)
    assert_failed_without_change(run)
    lines = run.problem_lines()
    assert any(line.startswith("[cp02] preflight_check_hosts: the host is unreachable") for line in lines), run.explain()
    assert not any(line.startswith("[cp01]") for line in lines), run.explain()
