# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""The inventory contract (docs/inventory.md) as one pure function over plain data.

Every rule the collection makes on inventory data alone lives here, once. The preflight role
calls :func:`check_inventory` for the whole cluster before any host changes; the network and
storage roles call :func:`check_node_network` and :func:`check_storage` for their own host,
so a rule can never pass in one place and fail in another.

Input is plain data (no Ansible objects):

``hostvars``   {host: {variable: value}} for every host of the cluster (only what is defined)
``groups``     {group: [host, ...]}
``options``    the preflight_* knobs (see :data:`DEFAULT_OPTIONS`)
``unreadable`` [{host, variable, message}] variables that could not be templated (reported as
               problems; the rules skip those variables instead of calling them "not defined")

Output is a list of problems ``{"host": name or None (cluster-wide), "variable": ..., "message":
...}``; the message names the variable, says what is wrong and ends with ``Fix: ...``.
:func:`format_problem` renders one as ``[host] message`` (``[all hosts]`` for cluster-wide).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import json
import re

ALL_HOSTS = None

DEFAULT_OPTIONS = {
    "supported_kubernetes_minors": ["1.34", "1.35", "1.36"],
    "allow_downgrade": False,
    "supported_gpu_products": [
        "NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-PCIE-40GB", "NVIDIA-A100-80GB-PCIe",
        "NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe", "NVIDIA-H100-NVL",
    ],
    "gpu_max_count": 16,
    "mtu_min_ipv4": 576,
    "mtu_min_ipv6": 1280,
    "mtu_max": 9216,
    "node_cidr_mask_size": 24,
    "network_extra_keys": [],
    "management_network": "management",
    # {option: {type, role, choices}} from the roles' meta/argument_specs.yml
    "role_options": {},
}

# Cluster-wide variables: one value for the whole cluster (group_vars/all).
CLUSTER_VARS = [
    {"name": "gpuops_cluster_name", "type": "string", "required": True, "hint": "a DNS label such as rack1"},
    {"name": "gpuops_kubernetes_version", "type": "string", "required": True,
     "hint": 'a quoted version X.Y.Z such as "1.36.3"'},
    {"name": "gpuops_kubernetes_current_version", "type": "string", "required": False,
     "hint": "the quoted X.Y.Z version running now, only for upgrades"},
    {"name": "gpuops_control_plane_ha", "type": "boolean", "required": True, "hint": "true or false, unquoted"},
    {"name": "gpuops_pod_cidr", "type": "string", "required": True, "hint": "a CIDR such as 10.244.0.0/16"},
    {"name": "gpuops_service_cidr", "type": "string", "required": True, "hint": "a CIDR such as 10.96.0.0/12"},
    {"name": "gpuops_networks", "type": "mapping", "required": True,
     "hint": "a dict name -> {cidr, mtu, vlan, gateway, dns}, see docs/inventory.md"},
    {"name": "gpuops_required_networks", "type": "list", "required": False,
     "hint": "a list of gpuops_networks names every node needs an address on, e.g. [storage]"},
    {"name": "gpuops_api_vip", "type": "string", "required": False,
     "hint": "the free IP address of the API server VIP (controlPlaneEndpoint), e.g. 10.0.20.10"},
    {"name": "gpuops_api_vip_interface", "type": "string", "required": False,
     "hint": "the link the VIP lives on, e.g. bond0.110"},
    {"name": "gpuops_api_vip_prefix", "type": "integer", "required": False, "hint": "the VIP's prefix length, e.g. 22"},
]

# Per-host variables every Kubernetes node needs (host_vars).
NODE_VARS = [
    {"name": "gpuops_node_interfaces", "type": "list", "hint": "a list of {name, type: ethernet|bond, members, bond_mode, mtu}"},
    {"name": "gpuops_node_addresses", "type": "mapping", "hint": "a dict network-name -> {interface, address}"},
]

BOND_MODES = ("802.3ad", "active-backup", "balance-xor")
INTERFACE_TYPES = ("ethernet", "bond")
NETWORK_KEYS = ("cidr", "mtu", "vlan", "gateway", "dns")
IFNAMSIZ = 15  # Linux interface names: at most 15 characters (IFNAMSIZ 16 with the NUL)
CLUSTER_DNS_INDEX = 10  # kubeadm puts the cluster DNS Service on the 10th address of the service CIDR
SERVICE_CIDR_MAX_HOST_BITS = 20  # kube-apiserver refuses larger service CIDRs

STORAGE_VARS = ("storage_arrays", "storage_volume_groups", "storage_logical_volumes", "storage_force_wipe_devices")
RAID_MIN_DEVICES = {0: 2, 1: 2, 10: 2}

_RFC1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$")
_VERSION = re.compile(r"^[0-9]+[.][0-9]+[.][0-9]+$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")
_LVM_SIZE = re.compile(r"^[0-9.]+([bBsSkKmMgGtTpPeE]|%(VG|PVS|FREE|ORIGIN))?$")

# Variables the contract reads from each host (the preflight role gathers exactly these).
HOST_READ_VARS = ([v["name"] for v in CLUSTER_VARS] + [v["name"] for v in NODE_VARS]
                  + ["gpuops_zone", "gpuops_rack", "gpuops_gpu", "gpuops_kubernetes_node_ip", "ansible_host",
                     "network_management_network"] + list(STORAGE_VARS))


def problem(host, variable, message):
    return {"host": host, "variable": variable, "message": message}


def format_problem(p):
    return "[%s] %s" % ("all hosts" if p.get("host") is None else p["host"], p["message"])


def format_problems(problems):
    return [format_problem(p) for p in problems]


def _j(value):
    """JSON text of a value, as the messages quote it."""
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        return json.dumps(str(value))


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_list(v):
    return isinstance(v, (list, tuple))


def _type_name(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    if isinstance(v, dict):
        return "dict"
    return "list"


def _ip(value):
    """ipaddress object of a bare IP string, or None."""
    if not isinstance(value, str) or not value or "/" in value:
        return None
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _parse_cidr(value):
    """(network, error) where error is None, 'invalid' or 'host-bits'."""
    if not isinstance(value, str) or "/" not in value:
        return None, "invalid"
    try:
        return ipaddress.ip_network(value, strict=True), None
    except ValueError:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            return None, "invalid"
        return None, "host-bits"


def _usable(net, ip):
    """ip inside net and not its network (or IPv4 broadcast) address."""
    if ip is None or net is None or ip.version != net.version or ip not in net:
        return False
    if net.prefixlen >= net.max_prefixlen - 1:
        return True  # /31, /32 (and IPv6 /127, /128): every address is usable
    if ip == net.network_address:
        return False
    return not (net.version == 4 and ip == net.broadcast_address)


def _overlap(a, b):
    return a.version == b.version and a.overlaps(b)


def _opts(options):
    out = dict(DEFAULT_OPTIONS)
    out.update(dict((k, v) for k, v in (options or {}).items() if v is not None))
    for k in ("gpu_max_count", "mtu_min_ipv4", "mtu_min_ipv6", "mtu_max", "node_cidr_mask_size"):
        out[k] = int(out[k])
    out["allow_downgrade"] = out["allow_downgrade"] in (True, "true", "True", "yes", "1", 1)
    out["supported_kubernetes_minors"] = [str(m) for m in out["supported_kubernetes_minors"]]
    return out


# ------------------------------------------------------------------------------ cluster-wide

def resolve_cluster(hostvars, hosts):
    """The cluster's value of each cluster-wide variable: the value most hosts see."""
    out = {}
    for spec in CLUSTER_VARS:
        vals = [hostvars[h][spec["name"]] for h in hosts if spec["name"] in hostvars[h]]
        best, ref = 0, None
        for v in vals:
            c = sum(1 for x in vals if x == v)
            if c > best:
                best, ref = c, v
        if vals:
            out[spec["name"]] = ref
    return out


def check_cluster_variables(hostvars, hosts, cluster, unreadable_vars=None):
    """Cluster-wide variables: defined, typed, identical on every host (no per-host overrides)."""
    unreadable_vars = unreadable_vars or {}
    p = []
    for spec in CLUSTER_VARS:
        n = spec["name"]
        skipped = [h for h in hosts if n in unreadable_vars.get(h, ())]
        defined_on = [h for h in hosts if n in hostvars[h]]
        missing_on = [h for h in hosts if n not in hostvars[h] and h not in skipped]
        if not defined_on:
            if spec["required"] and not skipped:
                p.append(problem(ALL_HOSTS, n, "%s is not defined. Fix: set %s in group_vars/all to %s." % (n, n, spec["hint"])))
            continue
        ref = cluster[n]
        if missing_on:
            p.append(problem(", ".join(missing_on), n, (
                "%s is not defined on these hosts but is on %s. Fix: cluster-wide variables must be identical on "
                "every host: set %s once in group_vars/all.") % (n, ", ".join(defined_on), n)))
        for h in defined_on:
            if hostvars[h][n] != ref:
                p.append(problem(h, n, (
                    "%s is %s on this host but %s on most hosts. Fix: cluster-wide variables must be identical on every "
                    "host: set %s once in group_vars/all and remove host or group overrides.") % (n, _j(hostvars[h][n]), _j(ref), n)))
        v, t = ref, spec["type"]
        ok = ((t == "string" and isinstance(v, str) and len(v) > 0) or (t == "boolean" and isinstance(v, bool))
              or (t == "integer" and _is_int(v))
              or (t == "mapping" and isinstance(v, dict) and len(v) > 0) or (t == "list" and _is_list(v)))
        if not ok:
            extra = ""
            if t == "string" and isinstance(v, (int, float)) and not isinstance(v, bool):
                extra = " (YAML reads an unquoted 1.36 as a number: quote versions)"
            if t == "boolean" and isinstance(v, str):
                extra = ' ("yes"/"no"/"true" in quotes are strings, not booleans)'
            p.append(problem(ALL_HOSTS, n, "%s must be a %s%s, got %s %s%s. Fix: set %s to %s." % (
                n, "non-empty " if t in ("string", "mapping") else "", t, _type_name(v), _j(v), extra, n, spec["hint"])))
    return p


def check_cluster_name(cluster):
    """gpuops_cluster_name: a DNS label (kubeadm clusterName, kubeconfig context, label values)."""
    v = cluster.get("gpuops_cluster_name")
    if isinstance(v, str) and v and not re.match(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", v):
        return [problem(ALL_HOSTS, "gpuops_cluster_name", (
            "gpuops_cluster_name %s is not a DNS label (1-63 lowercase letters, digits and -, alphanumeric at both ends). "
            "Fix: e.g. gpuops_cluster_name: %s.") % (_j(v), _j(re.sub(r"[^-a-z0-9]", "-", v.lower()).strip("-")[:63] or "rack1")))]
    return []


def check_api_vip(cluster, hostvars, hosts, groups):
    """The API server VIP (controlPlaneEndpoint, keepalived): set with HA, an IP, nobody's address."""
    p = []
    cps = list((groups or {}).get("kube_control_plane") or [])
    vip = cluster.get("gpuops_api_vip")
    ha = cluster.get("gpuops_control_plane_ha")
    if vip is None:
        if ha is True and len(cps) > 1:
            p.append(problem(ALL_HOSTS, "gpuops_api_vip", (
                "gpuops_api_vip is not defined but gpuops_control_plane_ha is true: the control planes need a virtual IP as "
                "kubeadm's controlPlaneEndpoint (held by keepalived). Fix: set gpuops_api_vip to a free address of the "
                "control planes' network in group_vars/all (and gpuops_api_vip_interface).")))
        return p
    ip = _ip(vip)
    if ip is None:
        if isinstance(vip, str) and vip:
            p.append(problem(ALL_HOSTS, "gpuops_api_vip", "gpuops_api_vip %s is not an IP address. Fix: give the VIP's address "
                                                          "without a prefix (gpuops_api_vip_prefix holds the prefix)." % _j(vip)))
        return p
    for h in hosts:
        hv = hostvars[h]
        taken = []
        if _ip(hv.get("gpuops_kubernetes_node_ip")) == ip:
            taken.append("gpuops_kubernetes_node_ip")
        if _ip(str(hv.get("ansible_host", ""))) == ip:
            taken.append("ansible_host")
        al = hv.get("gpuops_node_addresses") if isinstance(hv.get("gpuops_node_addresses"), dict) else {}
        for net, a in al.items():
            if isinstance(a, dict) and _ip(a.get("address")) == ip:
                taken.append("gpuops_node_addresses.%s.address" % net)
        for var in taken:
            p.append(problem(ALL_HOSTS, "gpuops_api_vip", (
                "gpuops_api_vip %s is also %s of %s: the VIP moves between control planes and must be nobody's own address. "
                "Fix: pick a free address for gpuops_api_vip.") % (ip, var, h)))
    prefix = cluster.get("gpuops_api_vip_prefix")
    if _is_int(prefix) and not 1 <= prefix <= ip.max_prefixlen:
        p.append(problem(ALL_HOSTS, "gpuops_api_vip_prefix", (
            "gpuops_api_vip_prefix %d is outside 1..%d. Fix: use the prefix length of the VIP's network, e.g. 24.")
            % (prefix, ip.max_prefixlen)))
    return p


def check_node_ips(hostvars, hosts):
    """gpuops_kubernetes_node_ip (kubelet --node-ip, when set): an IP address, unique; gpuops_rack a label value."""
    p = []
    seen = {}
    for h in hosts:
        hv = hostvars[h]
        if "gpuops_kubernetes_node_ip" in hv:
            v = hv["gpuops_kubernetes_node_ip"]
            ip = _ip(v if isinstance(v, str) else None)
            if ip is None:
                p.append(problem(h, "gpuops_kubernetes_node_ip", "gpuops_kubernetes_node_ip %s is not an IP address. Fix: give the "
                                                                 "address kubelet registers, without a prefix, or remove it to use "
                                                                 "gpuops_node_addresses.cluster.address." % _j(v)))
            elif str(ip) in seen:
                p.append(problem(h, "gpuops_kubernetes_node_ip", "gpuops_kubernetes_node_ip %s is also the node IP of %s. Fix: every "
                                                                 "node needs its own address." % (ip, seen[str(ip)])))
            else:
                seen[str(ip)] = h
        if "gpuops_rack" in hv and (not isinstance(hv["gpuops_rack"], str) or not _LABEL_VALUE.match(hv["gpuops_rack"])):
            p.append(problem(h, "gpuops_rack", "gpuops_rack %s is not a valid label value (1-63 letters, digits, -, _ and ., "
                                               "alphanumeric at both ends). Fix: e.g. gpuops_rack: r12." % _j(hv["gpuops_rack"])))
    return p


def check_versions(cluster, options=None):
    """gpuops_kubernetes_version: X.Y.Z of a supported minor; upgrades one minor at a time."""
    o = _opts(options)
    p = []
    supported = o["supported_kubernetes_minors"]
    parsed = {}
    for name in ("gpuops_kubernetes_version", "gpuops_kubernetes_current_version"):
        v = cluster.get(name)
        if not isinstance(v, str) or not v:
            continue
        if re.match(r"^v[0-9]+[.][0-9]+[.][0-9]+$", v):
            p.append(problem(ALL_HOSTS, name, '%s %s has a leading "v". Fix: write it as %s.' % (name, _j(v), _j(v[1:]))))
        elif not _VERSION.match(v):
            p.append(problem(ALL_HOSTS, name, '%s %s is not a full X.Y.Z version. Fix: give the exact patch release, e.g. "%s.0" (quoted).'
                             % (name, _j(v), supported[-1] if supported else "1.36")))
        else:
            parsed[name] = [int(x) for x in v.split(".")]
    t = parsed.get("gpuops_kubernetes_version")
    cur = parsed.get("gpuops_kubernetes_current_version")
    if t is None:
        return p
    target = cluster["gpuops_kubernetes_version"]
    minor = "%d.%d" % (t[0], t[1])
    if minor not in supported:
        p.append(problem(ALL_HOSTS, "gpuops_kubernetes_version", (
            "gpuops_kubernetes_version %s: Kubernetes %s is not supported by this collection "
            "(preflight_supported_kubernetes_minors: %s). Fix: pick a release of a supported minor.") % (_j(target), minor, ", ".join(supported))))
    if cur is None:
        return p
    current = cluster["gpuops_kubernetes_current_version"]
    name = "gpuops_kubernetes_version"
    if cur[0] != t[0]:
        p.append(problem(ALL_HOSTS, name, "gpuops_kubernetes_version %s changes the major version from gpuops_kubernetes_current_version %s. "
                         "Fix: major-version changes are not supported; stay on %d.x." % (_j(target), _j(current), cur[0])))
    elif t < cur and not o["allow_downgrade"]:
        p.append(problem(ALL_HOSTS, name, (
            "gpuops_kubernetes_version %s is a downgrade from gpuops_kubernetes_current_version %s (kubeadm cannot downgrade). "
            "Fix: set gpuops_kubernetes_version to %s or newer, or set preflight_allow_downgrade: true when rebuilding the cluster.")
            % (_j(target), _j(current), _j(current))))
    elif t[1] > cur[1] + 1:
        p.append(problem(ALL_HOSTS, name, (
            "gpuops_kubernetes_version %s skips a minor from gpuops_kubernetes_current_version %s (kubeadm upgrades one minor "
            "at a time). Fix: upgrade to %d.%d.x first, then to %s.") % (_j(target), _j(current), cur[0], cur[1] + 1, minor)))
    elif t[1] < cur[1] - 1:
        p.append(problem(ALL_HOSTS, name, (
            "gpuops_kubernetes_version %s goes down more than one minor from gpuops_kubernetes_current_version %s, even with "
            "preflight_allow_downgrade. Fix: go back at most to %d.%d.x.") % (_j(target), _j(current), cur[0], cur[1] - 1)))
    return p


def parse_version(value):
    """[major, minor, patch] of "X.Y.Z" or "vX.Y.Z" (a version read from the cluster), or None."""
    if not isinstance(value, str):
        return None
    m = re.match(r"^v?([0-9]+)[.]([0-9]+)[.]([0-9]+)$", value.strip())
    return [int(x) for x in m.groups()] if m else None


def check_upgrade(target, cluster_version, inventory_current=None, node_versions=None):
    """playbooks/upgrade.yml's rule: the step from the running cluster to ``target``.

    ``target``             gpuops_kubernetes_version (inventory, "X.Y.Z")
    ``cluster_version``    the version the cluster runs: kubeadm-config's kubernetesVersion (facts,
                           "vX.Y.Z"), or gpuops_kubernetes_current_version when checking the
                           inventory alone before any host is reached
    ``inventory_current``  gpuops_kubernetes_current_version when checking against facts (it must
                           name the running version; on a resumed upgrade, whose cluster version is
                           already the target, it may still name the version before it)
    ``node_versions``      {node: kubelet version} from the Node objects (facts)

    An upgrade is never a downgrade (whatever preflight_allow_downgrade says: kubeadm cannot
    downgrade), never skips a minor, never changes the major. Target == cluster version is allowed:
    it is a resumed upgrade (the nodes not at the target yet are upgraded, the others skipped)."""
    p = []
    name = "gpuops_kubernetes_version"
    t = parse_version(target) if isinstance(target, str) and _VERSION.match(target) else None
    if t is None:
        p.append(problem(ALL_HOSTS, name, '%s %s is not a quoted X.Y.Z version. Fix: set the release to upgrade to, '
                                          'e.g. "1.36.3".' % (name, _j(target))))
        return p
    cur = parse_version(cluster_version)
    if cur is None:
        p.append(problem(ALL_HOSTS, "gpuops_kubernetes_current_version", (
            "the running Kubernetes version is not known (%s). Fix: check that the cluster answers and its kube-system/"
            "kubeadm-config ConfigMap has a kubernetesVersion, or set gpuops_kubernetes_current_version to the running "
            "X.Y.Z.") % _j(cluster_version)))
        return p
    running = "%d.%d.%d" % tuple(cur)
    if cur[0] != t[0]:
        p.append(problem(ALL_HOSTS, name, "gpuops_kubernetes_version %s changes the major version of the running %s. "
                                          "Fix: major-version upgrades are not supported; stay on %d.x." % (_j(target), running, cur[0])))
    elif t < cur:
        p.append(problem(ALL_HOSTS, name, (
            "gpuops_kubernetes_version %s is a downgrade from the running %s; upgrade.yml never downgrades (kubeadm "
            "cannot). Fix: set gpuops_kubernetes_version to %s or newer.") % (_j(target), running, _j(running))))
    elif t[1] > cur[1] + 1:
        p.append(problem(ALL_HOSTS, name, (
            "gpuops_kubernetes_version %s skips a minor from the running %s (kubeadm upgrades one minor at a time). "
            "Fix: upgrade to %d.%d.x first, then to %d.%d.") % (_j(target), running, cur[0], cur[1] + 1, t[0], t[1])))
    if p:
        return p
    inv = parse_version(inventory_current) if inventory_current not in (None, "") else None
    # On a resumed upgrade (the cluster already at the target) the inventory may still name the step before.
    resumed = cur == t and inv is not None and inv <= t and inv[0] == t[0] and inv[1] >= t[1] - 1
    if inventory_current not in (None, "") and inv != cur and not resumed:
        p.append(problem(ALL_HOSTS, "gpuops_kubernetes_current_version", (
            "gpuops_kubernetes_current_version %s is not the running %s (the cluster's kubeadm-config). Fix: set it to %s.")
            % (_j(inventory_current), running, _j(running))))
    for node in sorted(node_versions or {}):
        v = (node_versions or {})[node]
        nv = parse_version(v)
        if nv is None:
            p.append(problem(node, "kubeletVersion", "the node reports kubelet version %s, not vX.Y.Z. Fix: check the "
                                                     "node's kubelet (kubectl get node %s -o wide)." % (_j(v), node)))
        elif nv > t:
            p.append(problem(node, "kubeletVersion", (
                "the node's kubelet %s is newer than the target %s (a kubelet may never be newer than the API server). "
                "Fix: set gpuops_kubernetes_version to %d.%d.%d or newer, or reinstall this node at %s.")
                % (v, target, nv[0], nv[1], nv[2], target)))
        elif nv[0] != t[0] or nv[1] < t[1] - 1:
            p.append(problem(node, "kubeletVersion", (
                "the node's kubelet %s is more than one minor behind the target %s; upgrade.yml moves a kubelet one "
                "minor at a time. Fix: upgrade this node's kubelet to %d.%d.x first (kubernetes_packages), then re-run.")
                % (v, target, t[0], t[1] - 1)))
    return p


def upgrade_pending(target, versions):
    """The names in ``versions`` ({name: version}) not at ``target`` yet, sorted (a re-run skips the others)."""
    want = parse_version(target)
    return sorted(n for n, v in (versions or {}).items() if want is None or parse_version(v) != want)


def check_groups(groups, hosts, cluster):
    """Group structure and kubeadm's control-plane count."""
    p = []
    cps = list(groups.get("kube_control_plane") or [])
    workers = list(groups.get("kube_node") or [])
    k8s = set(cps) | set(workers)
    for h in hosts:
        if h not in k8s:
            p.append(problem(h, "groups", "inventory groups: the host is in neither kube_control_plane nor kube_node. "
                             "Fix: add it to one of them (gpu_nodes hosts belong in kube_node) or leave it out of the play."))
    ha = cluster.get("gpuops_control_plane_ha")
    n = len(cps)
    if n == 0:
        p.append(problem(ALL_HOSTS, "kube_control_plane", "group kube_control_plane is empty or missing. Fix: put the control-plane "
                         "host(s) in kube_control_plane (3 or 5 with gpuops_control_plane_ha: true)."))
    elif isinstance(ha, bool) and ha and (n < 3 or n % 2 == 0):
        p.append(problem(ALL_HOSTS, "gpuops_control_plane_ha", (
            "gpuops_control_plane_ha is true but group kube_control_plane has %d host(s) (%s); etcd needs an odd number >= 3 "
            "for quorum. Fix: use 3 or 5 control planes, or set gpuops_control_plane_ha: false with exactly one.") % (n, ", ".join(cps))))
    elif isinstance(ha, bool) and not ha and n > 1:
        p.append(problem(ALL_HOSTS, "gpuops_control_plane_ha", (
            "gpuops_control_plane_ha is false but group kube_control_plane has %d hosts (%s). Fix: set gpuops_control_plane_ha: "
            "true (odd number >= 3 of control planes) or keep a single control plane.") % (n, ", ".join(cps))))
    if not workers:
        p.append(problem(ALL_HOSTS, "kube_node", "group kube_node is empty or missing. Fix: put the worker hosts in kube_node "
                         "(control planes may be listed there too to run workloads)."))
    for h in groups.get("gpu_nodes") or []:
        if h not in workers:
            p.append(problem(h, "groups", "inventory groups: the host is in gpu_nodes but not in kube_node. Fix: add %s to kube_node "
                             "too (gpu_nodes is a subset of the workers)." % h))
    return p


def node_name_key(host):
    """The name kubelet registers: lowercase short name; an IP-address host name is kept whole."""
    if _ip(host) is not None:
        return str(_ip(host))
    return host.lower().split(".")[0]


def check_host_names(hosts, hostvars, management_network="management"):
    """inventory_hostname is a valid, unique node name; ansible_host unique and on the management address."""
    p = []
    seen = {}
    for h in hosts:
        if _ip(h) is None and (not _RFC1123.match(h) or len(h) > 253 or max(len(label) for label in h.split(".")) > 63):
            p.append(problem(h, "inventory_hostname", (
                "inventory_hostname %s is not a valid Kubernetes node name (RFC 1123: lowercase letters, digits, - and ., "
                "labels of at most 63 characters). "
                "Fix: rename the host, e.g. %s.") % (_j(h), _j(re.sub(r"[^-a-z0-9.]", "-", h.lower())))))
        key = node_name_key(h)
        if key in seen:
            other = seen[key]
            if other.lower() == h.lower():
                why = "differs from %s only in letter case (Kubernetes node names are lowercase: both would be node %s)" % (other, _j(key))
            else:
                why = "duplicate node name %s (also %s): kubelet registers nodes by their lowercase short hostname" % (_j(key), other)
            p.append(problem(h, "inventory_hostname", "inventory_hostname %s %s. Fix: give every host a unique short name."
                             % (_j(h), why)))
        else:
            seen[key] = h
    addrs = {}
    for h in hosts:
        a = hostvars[h].get("ansible_host")
        if a is None or str(a) == "":
            continue
        a = str(a).lower()
        if a in addrs:
            p.append(problem(h, "ansible_host", "ansible_host %s is also the ansible_host of %s. Fix: every host needs its own "
                             "management address." % (_j(a), addrs[a])))
        else:
            addrs[a] = h
        ip = _ip(a)
        mgmt = (hostvars[h].get("gpuops_node_addresses") or {}) if isinstance(hostvars[h].get("gpuops_node_addresses"), dict) else {}
        spec = mgmt.get(management_network)
        maddr = _ip(spec.get("address")) if isinstance(spec, dict) else None
        if ip is not None and maddr is not None and ip != maddr:
            p.append(problem(h, "ansible_host", (
                "ansible_host %s is not the host's management address gpuops_node_addresses.%s.address %s: Ansible would "
                "connect to one address while the network role configures another. Fix: make them equal (or set "
                "ansible_host to a DNS name of the management address).") % (a, management_network, maddr)))
    return p


# ------------------------------------------------------------------------------ networks

def parse_networks(networks):
    """{name: ip_network} of every valid network cidr."""
    out = {}
    for name, n in (networks or {}).items() if isinstance(networks, dict) else []:
        if isinstance(n, dict):
            net, _err = _parse_cidr(n.get("cidr"))
            if net is not None:
                out[name] = net
    return out


def check_networks(networks, options=None):
    """Each gpuops_networks entry: keys, cidr, mtu (per IP family), vlan, gateway, dns."""
    o = _opts(options)
    allowed = list(NETWORK_KEYS) + list(o["network_extra_keys"])
    p = []
    if not isinstance(networks, dict):
        return p
    for name, n in networks.items():
        v = "gpuops_networks.%s" % name
        if not isinstance(n, dict):
            p.append(problem(ALL_HOSTS, v, "%s must be a dict {cidr, mtu, vlan, gateway, dns}, got %s. Fix: see docs/inventory.md." % (v, _j(n))))
            continue
        for k in n:
            if k not in allowed:
                p.append(problem(ALL_HOSTS, v + "." + str(k), (
                    "%s.%s is not a known network key (known: %s). Fix: correct the typo, or add it to "
                    "preflight_network_extra_keys if another role reads it.") % (v, k, ", ".join(allowed))))
        cidr = n.get("cidr")
        net = None
        if cidr is None:
            p.append(problem(ALL_HOSTS, v + ".cidr", "%s.cidr is missing. Fix: give the network its CIDR, e.g. cidr: 10.10.0.0/24." % v))
        else:
            net, err = _parse_cidr(cidr)
            if err == "invalid":
                p.append(problem(ALL_HOSTS, v + ".cidr", "%s.cidr %s is not a valid CIDR. Fix: write it as address/prefix, e.g. 10.10.0.0/24." % (v, _j(cidr))))
            elif err == "host-bits":
                p.append(problem(ALL_HOSTS, v + ".cidr", "%s.cidr %s has host bits set. Fix: use the network address, %s."
                                 % (v, _j(cidr), ipaddress.ip_network(cidr, strict=False))))
        version = net.version if net is not None else 4
        mtu = n.get("mtu", 1500)
        mtu_min = o["mtu_min_ipv6"] if version == 6 else o["mtu_min_ipv4"]
        if not _is_int(mtu):
            p.append(problem(ALL_HOSTS, v + ".mtu", "%s.mtu must be an integer, got %s. Fix: write it unquoted, e.g. mtu: 9000." % (v, _j(mtu))))
        elif mtu < mtu_min or mtu > o["mtu_max"]:
            p.append(problem(ALL_HOSTS, v + ".mtu", "%s.mtu %d is outside %d..%d (IPv%d). Fix: use 1500, or 9000 for jumbo-frame storage/RDMA networks."
                             % (v, mtu, mtu_min, o["mtu_max"], version)))
        if "vlan" in n:
            vl = n["vlan"]
            if not _is_int(vl):
                p.append(problem(ALL_HOSTS, v + ".vlan", "%s.vlan must be an integer 1-4094, got %s. Fix: write the 802.1Q id unquoted, "
                                 "e.g. vlan: 100, or remove vlan for an untagged network." % (v, _j(vl))))
            elif vl < 1 or vl > 4094:
                p.append(problem(ALL_HOSTS, v + ".vlan", "%s.vlan %d is outside 1-4094 (0 and 4095 are reserved by 802.1Q). "
                                 "Fix: use the VLAN id configured on the switch." % (v, vl)))
        if "gateway" in n:
            gw = _ip(n["gateway"])
            if gw is None:
                p.append(problem(ALL_HOSTS, v + ".gateway", "%s.gateway %s is not an IP address. Fix: give the router address, without a prefix."
                                 % (v, _j(n["gateway"]))))
            elif net is not None and not _usable(net, gw):
                p.append(problem(ALL_HOSTS, v + ".gateway", "%s.gateway %s is not a usable address of %s. Fix: the gateway must be inside "
                                 "the network (not its network or broadcast address)." % (v, gw, net)))
        if "dns" in n:
            dns = n["dns"]
            if not _is_list(dns):
                p.append(problem(ALL_HOSTS, v + ".dns", "%s.dns must be a list of IP addresses, got %s. Fix: e.g. dns: [192.168.10.53]." % (v, _j(dns))))
            else:
                for i, d in enumerate(dns):
                    if _ip(d) is None:
                        p.append(problem(ALL_HOSTS, "%s.dns[%d]" % (v, i), "%s.dns[%d] %s is not an IP address. Fix: list resolver IP "
                                         "addresses, not names." % (v, i, _j(d))))
    return p


def check_pod_service(cluster, node_count, options=None):
    """Pod and service CIDRs: valid, one IP family, sized for the cluster, overlapping nothing."""
    o = _opts(options)
    p = []
    nets = {}
    for var in ("gpuops_pod_cidr", "gpuops_service_cidr"):
        v = cluster.get(var)
        if not isinstance(v, str) or not v:
            continue
        net, err = _parse_cidr(v)
        if err == "invalid":
            p.append(problem(ALL_HOSTS, var, "%s %s is not a valid CIDR. Fix: write it as address/prefix, e.g. %s."
                             % (var, _j(v), "10.244.0.0/16" if var == "gpuops_pod_cidr" else "10.96.0.0/12")))
            continue
        if err == "host-bits":
            p.append(problem(ALL_HOSTS, var, "%s %s has host bits set. Fix: use the network address, %s."
                             % (var, _j(v), ipaddress.ip_network(v, strict=False))))
            continue
        nets[var] = net
        host_bits = net.max_prefixlen - net.prefixlen
        if var == "gpuops_service_cidr":
            if host_bits > SERVICE_CIDR_MAX_HOST_BITS:
                p.append(problem(ALL_HOSTS, var, "%s %s is too large: kube-apiserver accepts at most 20 host bits (/12 for IPv4, "
                                 "/108 for IPv6). Fix: use e.g. 10.96.0.0/12." % (var, _j(v))))
            elif net.num_addresses <= CLUSTER_DNS_INDEX:
                p.append(problem(ALL_HOSTS, var, (
                    "%s %s is too small: kubeadm gives the cluster DNS Service the 10th address of the service CIDR (%s+10), "
                    "which is outside %s. Fix: use at least a /%d, e.g. 10.96.0.0/12.")
                    % (var, _j(v), net.network_address, net, net.max_prefixlen - 4)))
        elif net.version == 4:
            mask = o["node_cidr_mask_size"]
            if net.prefixlen > mask:
                p.append(problem(ALL_HOSTS, var, "%s %s is smaller than one node block (preflight_node_cidr_mask_size /%d). Fix: use a "
                                 "larger pod CIDR, e.g. 10.244.0.0/16." % (var, _j(v), mask)))
            elif 2 ** (mask - net.prefixlen) < node_count:
                p.append(problem(ALL_HOSTS, var, "%s %s holds only %d node blocks of /%d but the inventory has %d nodes. Fix: use a larger pod CIDR."
                                 % (var, _j(v), 2 ** (mask - net.prefixlen), mask, node_count)))
    pod, svc = nets.get("gpuops_pod_cidr"), nets.get("gpuops_service_cidr")
    if pod is not None and svc is not None and pod.version != svc.version:
        p.append(problem(ALL_HOSTS, "gpuops_service_cidr", (
            "gpuops_service_cidr %s is IPv%d but gpuops_pod_cidr %s is IPv%d: a single-stack cluster needs one IP family. "
            "Fix: use pod and service CIDRs of the same family.") % (svc, svc.version, pod, pod.version)))
    return p


def check_overlaps(cluster):
    """Pod, service and every node network overlap none of the others."""
    ranges = []
    networks = cluster.get("gpuops_networks")
    for name, net in sorted(parse_networks(networks).items(), key=lambda kv: list((networks or {}).keys()).index(kv[0])):
        ranges.append(("gpuops_networks.%s.cidr" % name, net))
    for var in ("gpuops_pod_cidr", "gpuops_service_cidr"):
        net, _err = _parse_cidr(cluster.get(var))
        if net is not None:
            ranges.append((var, net))
    p = []
    for i, (an, a) in enumerate(ranges):
        for bn, b in ranges[i + 1:]:
            if _overlap(a, b):
                p.append(problem(ALL_HOSTS, an, "%s %s overlaps %s %s: routing to one of them would break. Fix: choose non-overlapping "
                                 "ranges for pod, service and node networks." % (an, a, bn, b)))
    return p


def check_dns_outside_service_cidr(cluster):
    """Node resolvers (gpuops_networks.<n>.dns) must not sit in the service CIDR."""
    svc, _err = _parse_cidr(cluster.get("gpuops_service_cidr"))
    networks = cluster.get("gpuops_networks")
    p = []
    if svc is None or not isinstance(networks, dict):
        return p
    for name, n in networks.items():
        if not isinstance(n, dict) or not _is_list(n.get("dns")):
            continue
        for i, d in enumerate(n["dns"]):
            ip = _ip(d)
            if ip is not None and ip.version == svc.version and ip in svc:
                p.append(problem(ALL_HOSTS, "gpuops_networks.%s.dns[%d]" % (name, i), (
                    "gpuops_networks.%s.dns[%d] %s is inside gpuops_service_cidr %s: a node resolves names before kube-proxy "
                    "programs Service addresses, and the node's own queries would be captured by cluster Services. "
                    "Fix: list the site's resolvers (outside %s); pods get the cluster DNS from kubelet.") % (name, i, ip, svc, svc)))
    return p


def required_networks(cluster, management_network="management"):
    """Networks every node needs an address on: management, cluster (when declared), gpuops_required_networks."""
    networks = cluster.get("gpuops_networks") if isinstance(cluster.get("gpuops_networks"), dict) else {}
    out = [management_network]
    if "cluster" in networks and "cluster" not in out:
        out.append("cluster")
    extra = cluster.get("gpuops_required_networks")
    for n in extra if _is_list(extra) else []:
        if isinstance(n, str) and n not in out:
            out.append(n)
    return out


def check_required_networks(cluster, management_network="management"):
    """gpuops_required_networks only names declared networks."""
    networks = cluster.get("gpuops_networks") if isinstance(cluster.get("gpuops_networks"), dict) else {}
    p = []
    if not networks:
        return p
    for n in required_networks(cluster, management_network):
        if n not in networks:
            var = "gpuops_required_networks" if n not in (management_network, "cluster") else "gpuops_networks"
            p.append(problem(ALL_HOSTS, var, (
                "%s: network %s is required on every node but is not declared in gpuops_networks (declared: %s). "
                "Fix: declare it in group_vars/all%s.") % (var, _j(n), ", ".join(networks),
                                                           " (network_management_network names the management network)"
                                                           if n == management_network else " or remove it from gpuops_required_networks")))
    return p


# ------------------------------------------------------------------------------ one node's network

def check_node_network(host, networks, interfaces, addresses, options=None, required=None, allocated=None):
    """One node: interfaces and bonds, addresses inside their networks, VLANs, MTUs, device names.

    ``required``: network names the node must have an address on (default: the management network).
    ``allocated``: {ip: "host gpuops_node_addresses.<n>"} shared across hosts to find duplicate IPs;
    a fresh dict checks the node alone (roles/network).
    """
    o = _opts(options)
    p = []
    h = host
    nets = networks if isinstance(networks, dict) else {}
    ncidrs = parse_networks(nets)
    allocated = {} if allocated is None else allocated
    ifl = interfaces if _is_list(interfaces) else []
    ifs = {}
    member_of = {}
    for idx, itf in enumerate(ifl):
        if not isinstance(itf, dict) or not isinstance(itf.get("name"), str) or not _IFNAME.match(itf.get("name")):
            p.append(problem(h, "gpuops_node_interfaces[%d]" % idx, (
                "gpuops_node_interfaces[%d] %s needs a name (a Linux interface name, 1-15 characters). "
                "Fix: e.g. {name: eno1, type: ethernet}.") % (idx, _j(itf))))
            continue
        name = itf["name"]
        lbl = "gpuops_node_interfaces[%d] (%s)" % (idx, name)
        if name in ifs:
            p.append(problem(h, lbl, "%s: interface %s is declared twice. Fix: declare each interface once." % (lbl, name)))
        else:
            ifs[name] = itf
        typ = itf.get("type")
        if typ not in INTERFACE_TYPES:
            p.append(problem(h, lbl + ".type", "%s.type %s is not one of %s. Fix: set type: ethernet for a physical link or type: bond."
                             % (lbl, _j(typ), ", ".join(INTERFACE_TYPES))))
        elif typ == "bond":
            members = itf.get("members", [])
            if not _is_list(members) or not members:
                p.append(problem(h, lbl + ".members", "%s.members must be a non-empty list of interface names for a bond, got %s. "
                                 "Fix: e.g. members: [ens1f0, ens1f1]." % (lbl, _j(members))))
            else:
                for i, m in enumerate(members):
                    if not isinstance(m, str) or not m:
                        p.append(problem(h, lbl + ".members", "%s.members[%d] %s is not an interface name. Fix: list the bond members by name."
                                         % (lbl, i, _j(m))))
                    elif m in member_of:
                        p.append(problem(h, lbl + ".members", "%s.members: %s is already a member of bond %s. Fix: a link can be "
                                         "enslaved to one bond only." % (lbl, m, member_of[m])))
                    else:
                        member_of[m] = name
            if "bond_mode" in itf and itf["bond_mode"] not in BOND_MODES:
                p.append(problem(h, lbl + ".bond_mode", "%s.bond_mode %s is not supported (%s). Fix: use 802.3ad with LACP on the "
                                 "switch, or active-backup." % (lbl, _j(itf["bond_mode"]), ", ".join(BOND_MODES))))
        elif "members" in itf or "bond_mode" in itf:
            p.append(problem(h, lbl, "%s: members/bond_mode are only valid for type: bond, this interface is %s. Fix: set type: bond "
                             "or remove members/bond_mode." % (lbl, typ)))
        if "mtu" in itf:
            m = itf["mtu"]
            if not _is_int(m) or m < o["mtu_min_ipv4"] or m > o["mtu_max"]:
                p.append(problem(h, lbl + ".mtu", "%s.mtu %s must be an integer %d..%d. Fix: e.g. mtu: 9000 (unquoted)."
                                 % (lbl, _j(m), o["mtu_min_ipv4"], o["mtu_max"])))
    for m, b in member_of.items():
        if m not in ifs:
            continue
        bond_mtu = ifs[b].get("mtu")
        if ifs[m].get("type") == "bond":
            p.append(problem(h, "gpuops_node_interfaces (%s).members" % b, (
                "gpuops_node_interfaces (%s).members: %s is itself a bond; nested bonds are not supported. "
                "Fix: list the physical links of %s instead.") % (b, m, m)))
        elif bond_mtu is not None and "mtu" in ifs[m] and ifs[m]["mtu"] != bond_mtu:
            p.append(problem(h, "gpuops_node_interfaces (%s).mtu" % m, (
                "gpuops_node_interfaces (%s).mtu %s differs from the mtu %s of its bond %s (the kernel forces bond members to "
                "the bond MTU). Fix: give %s mtu: %s or drop its mtu.") % (m, ifs[m]["mtu"], bond_mtu, b, m, bond_mtu)))
    al = addresses if isinstance(addresses, dict) else {}
    for net in required or []:
        if net not in al and (net in nets or not nets):
            p.append(problem(h, "gpuops_node_addresses.%s" % net, (
                "gpuops_node_addresses.%s is not defined: every node needs an address on the %s network%s. "
                "Fix: add %s: {interface: <link>, address: <ip>} to gpuops_node_addresses in host_vars/%s.")
                % (net, net, " (the network Ansible connects over)" if net == o["management_network"] else "", net, h)))
    on_link = {}
    for net, a in al.items():
        lbl = "gpuops_node_addresses.%s" % net
        if net not in nets and nets:
            p.append(problem(h, lbl, "%s: network %s is not declared in gpuops_networks (declared: %s). Fix: correct the name or "
                             "declare the network in group_vars/all." % (lbl, _j(net), ", ".join(nets))))
            continue
        if not isinstance(a, dict) or "interface" not in a or "address" not in a:
            p.append(problem(h, lbl, "%s must be a dict {interface, address}, got %s. Fix: e.g. %s: {interface: bond0, address: 10.10.0.21}."
                             % (lbl, _j(a), net)))
            continue
        n = nets.get(net) if isinstance(nets.get(net), dict) else {}
        ncidr = ncidrs.get(net)
        ifname = a["interface"]
        if isinstance(ifname, str) and ifname in member_of:
            p.append(problem(h, lbl + ".interface", "%s.interface %s is a member of bond %s and cannot carry an address. Fix: use "
                             "interface: %s." % (lbl, ifname, member_of[ifname], member_of[ifname])))
        elif (not isinstance(ifname, str) or ifname not in ifs) and ifl:
            p.append(problem(h, lbl + ".interface", "%s.interface %s is not declared in gpuops_node_interfaces of this host "
                             "(declared: %s). Fix: declare the interface or correct the name." % (lbl, _j(ifname), ", ".join(ifs))))
        addr = a["address"]
        ip = _ip(addr)
        if ip is None:
            hint = " without the prefix length" if isinstance(addr, str) and "/" in addr else ""
            p.append(problem(h, lbl + ".address", "%s.address %s is not an IP address. Fix: give the node address%s, e.g. address: 10.10.0.21."
                             % (lbl, _j(addr), hint)))
        else:
            if ncidr is not None and not _usable(ncidr, ip):
                p.append(problem(h, lbl + ".address", (
                    "%s.address %s is not a usable address of gpuops_networks.%s.cidr %s (outside the subnet, or its "
                    "network/broadcast address). Fix: pick a host address inside %s or correct the network cidr.")
                    % (lbl, addr, net, ncidr, ncidr)))
            if _ip(n.get("gateway")) == ip:
                p.append(problem(h, lbl + ".address", "%s.address %s is the gateway of gpuops_networks.%s. Fix: give the node its own address."
                                 % (lbl, addr, net)))
            key = str(ip)
            if key in allocated:
                p.append(problem(h, lbl + ".address", "%s.address %s is already used by %s (duplicate IP). Fix: give every node address a unique IP."
                                 % (lbl, addr, allocated[key])))
            else:
                allocated[key] = "%s gpuops_node_addresses.%s" % (h, net)
        if isinstance(ifname, str) and ifname in ifs and net in nets:
            nmtu = n.get("mtu", 1500)
            imtu = ifs[ifname].get("mtu")
            vlan = n.get("vlan")
            tagged = _is_int(vlan)
            link = "%s.%s" % (ifname, vlan) if tagged else "%s (untagged)" % ifname
            if link in on_link:
                p.append(problem(h, lbl, (
                    "%s: %s is already used by network %s on this host (VLAN ids must be unique per parent interface). Fix: give "
                    "gpuops_networks.%s its own vlan id, or put it on another interface.")
                    % (lbl, ("VLAN %s on %s" % (vlan, ifname)) if tagged else "untagged " + ifname, on_link[link], net)))
            else:
                on_link[link] = net
            if tagged and len(link) > IFNAMSIZ:
                p.append(problem(h, lbl + ".interface", (
                    "%s.interface %s: the VLAN device %s has %d characters, more than the kernel's %d-character interface name limit "
                    "(IFNAMSIZ), so it cannot be created. Fix: use a shorter parent interface name (e.g. bond0) or a "
                    "shorter VLAN id.") % (lbl, ifname, link, len(link), IFNAMSIZ)))
            if _is_int(nmtu) and _is_int(imtu):
                if tagged and nmtu > imtu:
                    p.append(problem(h, lbl, (
                        "%s: gpuops_networks.%s.mtu %d is larger than the mtu %d of its parent interface %s (gpuops_node_interfaces "
                        "%s.mtu; a VLAN cannot exceed its parent). Fix: set mtu: %d on %s or lower the network mtu.")
                        % (lbl, net, nmtu, imtu, ifname, ifname, nmtu, ifname)))
                elif not tagged and nmtu != imtu:
                    p.append(problem(h, lbl, (
                        "%s: gpuops_networks.%s.mtu %d differs from the mtu %d of interface %s (gpuops_node_interfaces %s.mtu; an "
                        "untagged network sits on the interface itself). Fix: make them equal, e.g. mtu: %d on %s.")
                        % (lbl, net, nmtu, imtu, ifname, ifname, nmtu, ifname)))
    return p


def check_network_timers(host, rollback_seconds, reconnect_timeout):
    """roles/network's commit-confirm timers: the rollback must outlive the reconnect attempts."""
    try:
        rollback, reconnect = int(rollback_seconds), int(reconnect_timeout)
    except (TypeError, ValueError):
        return []  # a wrong type is reported by check_role_options
    p = []
    if reconnect < 10:
        p.append(problem(host, "network_reconnect_timeout", "network_reconnect_timeout %d is below 10 s. Fix: give the controller "
                                                            "at least 10 s to reconnect after a network change." % reconnect))
    if rollback < reconnect + 20:
        p.append(problem(host, "network_rollback_seconds", (
            "network_rollback_seconds %d must be at least network_reconnect_timeout (%d) + 20 s, or a good change could be "
            "rolled back before it is confirmed. Fix: raise network_rollback_seconds to %d or more.") % (rollback, reconnect, reconnect + 20)))
    return p


def check_network_role_inventory(host, networks, interfaces, addresses, options=None):
    """What roles/network checks before touching a node: the networks, this node's links and, when
    ``options`` has them, its network_rollback_seconds / network_reconnect_timeout."""
    o = _opts(options)
    p = check_networks(networks, o)
    p += check_node_network(host, networks, interfaces, addresses, o, required=[o["management_network"]])
    if "network_rollback_seconds" in o and "network_reconnect_timeout" in o:
        p += check_network_timers(host, o["network_rollback_seconds"], o["network_reconnect_timeout"])
    for q in p:
        if q["host"] is None:
            q["host"] = host
    return p


# ------------------------------------------------------------------------------ GPU nodes

def check_gpu(host, hv, is_gpu, options=None):
    o = _opts(options)
    p = []
    h = host
    if "gpuops_zone" in hv:
        z = hv["gpuops_zone"]
        if not isinstance(z, str) or not _LABEL_VALUE.match(z):
            p.append(problem(h, "gpuops_zone", (
                "gpuops_zone %s is not a valid topology.kubernetes.io/zone label value (1-63 letters, digits, -, _ and ., starting "
                "and ending alphanumeric). Fix: e.g. gpuops_zone: zone-a.") % _j(z)))
    elif is_gpu:
        p.append(problem(h, "gpuops_zone", (
            "gpuops_zone is not defined; every GPU node needs a zone (topology.kubernetes.io/zone) so replicas spread across "
            "failure domains. Fix: set gpuops_zone: <zone> in host_vars/%s.") % h))
    g = hv.get("gpuops_gpu")
    if is_gpu and "gpuops_gpu" not in hv:
        p.append(problem(h, "gpuops_gpu", (
            "gpuops_gpu is not defined for a host in gpu_nodes. Fix: set gpuops_gpu: {product: NVIDIA-H100-80GB-HBM3, count: 8} "
            "in host_vars/%s (or group_vars/gpu_nodes).") % h))
    elif "gpuops_gpu" in hv and not is_gpu:
        p.append(problem(h, "gpuops_gpu", "gpuops_gpu is set but the host is not in gpu_nodes, so it would get no GPU stack. Fix: add %s "
                         "to gpu_nodes, or remove gpuops_gpu." % h))
    elif is_gpu and not isinstance(g, dict):
        p.append(problem(h, "gpuops_gpu", "gpuops_gpu must be a dict {product, count}, got %s. Fix: e.g. gpuops_gpu: {product: "
                         "NVIDIA-H100-80GB-HBM3, count: 8}." % _j(g)))
    elif is_gpu:
        if g.get("product") not in o["supported_gpu_products"]:
            p.append(problem(h, "gpuops_gpu.product", (
                "gpuops_gpu.product %s is not in preflight_supported_gpu_products (%s). Fix: use the nvidia.com/gpu.product name "
                "of an A100/H100 board, or extend preflight_supported_gpu_products if you validated that product.")
                % (_j(g.get("product")), ", ".join(o["supported_gpu_products"]))))
        cnt = g.get("count")
        if not _is_int(cnt) or cnt < 1 or cnt > o["gpu_max_count"]:
            p.append(problem(h, "gpuops_gpu.count", "gpuops_gpu.count %s must be an integer 1..%d. Fix: set the number of GPUs in the node, "
                             "unquoted, e.g. count: 8." % (_j(cnt), o["gpu_max_count"])))
    return p


# ------------------------------------------------------------------------------ role options

_FIXES = {"bool": "write true or false, unquoted", "int": "write a number, unquoted", "float": "write a number, unquoted",
          "str": "quote the value", "path": "quote the path", "list": "use a YAML list", "dict": "use a YAML mapping"}


def _type_ok(t, v):
    return (v is None or (t == "bool" and isinstance(v, bool)) or (t == "int" and _is_int(v))
            or (t == "float" and isinstance(v, (int, float)) and not isinstance(v, bool))
            or (t in ("str", "path") and isinstance(v, str)) or (t == "list" and _is_list(v)) or (t == "dict" and isinstance(v, dict)))


def check_role_options(hostvars, hosts, role_options):
    """Options of the collection's roles set in the inventory have their argument_specs type and choices."""
    p = []
    for name, o in (role_options or {}).items():
        t = o.get("type", "str")
        if t not in _FIXES:
            continue
        bad = {}
        for h in hosts:
            if name not in hostvars[h]:
                continue
            v = hostvars[h][name]
            if not _type_ok(t, v):
                bad[h] = "must be a %s, got %s" % (t, _j(v))
            elif o.get("choices") and v is not None and v not in o["choices"]:
                bad[h] = "is %s, not one of %s" % (_j(v), ", ".join(str(c) for c in o["choices"]))
        whys = sorted(set(bad.values()))
        targets = [(ALL_HOSTS, whys[0])] if (bad and len(bad) == len(hosts) and len(whys) == 1) else sorted(bad.items())
        for h, why in targets:
            p.append(problem(h, name, "%s %s (option of role %s). Fix: %s." % (
                name, why, o.get("role"), _FIXES[t] if "must be" in why else "use one of the listed values")))
    return p


# ------------------------------------------------------------------------------ storage

def check_storage(host, arrays=None, volume_groups=None, logical_volumes=None, force_wipe_devices=None):
    """roles/storage's inventory rules for one host: arrays, volume groups, logical volumes, force-wipe list."""
    h = host
    p = []
    arrays = arrays if arrays is not None else []
    vgs = volume_groups if volume_groups is not None else []
    lvs = logical_volumes if logical_volumes is not None else []
    force = force_wipe_devices if force_wipe_devices is not None else []
    for var, val in (("storage_arrays", arrays), ("storage_volume_groups", vgs), ("storage_logical_volumes", lvs),
                     ("storage_force_wipe_devices", force)):
        if not _is_list(val):
            p.append(problem(h, var, "%s must be a list, got %s. Fix: see roles/storage/meta/argument_specs.yml." % (var, _j(val))))
    if p:
        return p
    names = [a.get("name") for a in arrays if isinstance(a, dict)]
    listed = {}
    for i, a in enumerate(arrays):
        lbl = "storage_arrays[%d]" % i
        if not isinstance(a, dict):
            p.append(problem(h, lbl, "%s must be a dict {name, level, devices|selector}, got %s. Fix: see docs/storage.md." % (lbl, _j(a))))
            continue
        name = a.get("name")
        if isinstance(name, str):
            lbl = "storage_arrays[%s]" % name
        if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9_-]+$", name):
            p.append(problem(h, lbl + ".name", "%s.name %s must be letters, digits, _ and -. Fix: e.g. name: data." % (lbl, _j(name))))
        elif names.count(name) > 1:
            p.append(problem(h, lbl + ".name", "%s.name %s is used by %d arrays. Fix: give every array a unique name." % (lbl, name, names.count(name))))
        level = a.get("level")
        try:
            level = int(str(level))
        except ValueError:
            level = None
        if level not in RAID_MIN_DEVICES:
            p.append(problem(h, lbl + ".level", "%s.level %s is not supported. Fix: use 0, 1 or 10." % (lbl, _j(a.get("level")))))
        devices = a.get("devices")
        has_devices = _is_list(devices) and len(devices) > 0
        has_selector = isinstance(a.get("selector"), dict)
        if has_devices == has_selector:
            p.append(problem(h, lbl, "%s needs exactly one of a non-empty devices list or a selector dict. Fix: e.g. devices: "
                             "[/dev/nvme1n1, /dev/nvme2n1] or selector: {transport: nvme, count: 2}." % lbl))
        if has_devices:
            for d in devices:
                if not isinstance(d, str) or not d.startswith("/dev/"):
                    p.append(problem(h, lbl + ".devices", "%s.devices: %s is not a device path. Fix: use paths like /dev/nvme1n1 or "
                                     "/dev/disk/by-id/...." % (lbl, _j(d))))
                elif d in listed and listed[d] != name:
                    p.append(problem(h, lbl + ".devices", "%s.devices: %s is also listed in array %s. Fix: a disk belongs to one array."
                                     % (lbl, d, listed[d])))
                else:
                    listed[d] = name
            if level in RAID_MIN_DEVICES:
                if len(devices) < RAID_MIN_DEVICES[level]:
                    p.append(problem(h, lbl + ".devices", "%s: RAID%d needs at least %d devices, got %d. Fix: list more devices or change "
                                     "the level." % (lbl, level, RAID_MIN_DEVICES[level], len(devices))))
                elif level == 10 and len(devices) % 2:
                    p.append(problem(h, lbl + ".devices", "%s: RAID10 needs an even number of devices, got %d. Fix: add or remove one."
                                     % (lbl, len(devices))))
    vg_names = [v.get("name") for v in vgs if isinstance(v, dict)]
    for i, v in enumerate(vgs):
        lbl = "storage_volume_groups[%d]" % i
        if not isinstance(v, dict):
            p.append(problem(h, lbl, "%s must be a dict {name, arrays, devices}, got %s. Fix: see docs/storage.md." % (lbl, _j(v))))
            continue
        if isinstance(v.get("name"), str):
            lbl = "storage_volume_groups[%s]" % v["name"]
        if not isinstance(v.get("name"), str) or not re.match(r"^[A-Za-z0-9_.+-]+$", v["name"]):
            p.append(problem(h, lbl + ".name", "%s.name %s is not a valid VG name. Fix: letters, digits, _ . + and -." % (lbl, _j(v.get("name")))))
        elif vg_names.count(v["name"]) > 1:
            p.append(problem(h, lbl + ".name", "%s.name is used by %d volume groups. Fix: give every VG a unique name." % (lbl, vg_names.count(v["name"]))))
        va = v.get("arrays") or []
        vd = v.get("devices") or []
        unknown = [x for x in va if x not in names] if _is_list(va) else [va]
        if unknown:
            p.append(problem(h, lbl + ".arrays", "%s.arrays names %s, not in storage_arrays (%s). Fix: name arrays of storage_arrays."
                             % (lbl, _j(unknown), ", ".join(str(n) for n in names) or "none")))
        if not (_is_list(va) and _is_list(vd)) or len(va) + len(vd) == 0:
            p.append(problem(h, lbl, "%s needs at least one array or device. Fix: set arrays: [<array>] or devices: [/dev/...]." % lbl))
        for d in vd if _is_list(vd) else []:
            if not isinstance(d, str) or not d.startswith("/dev/"):
                p.append(problem(h, lbl + ".devices", "%s.devices: %s is not a device path. Fix: use paths like /dev/nvme1n1." % (lbl, _j(d))))
    mounts = [lv.get("mountpoint") for lv in lvs if isinstance(lv, dict) and lv.get("mountpoint") is not None]
    for i, lv in enumerate(lvs):
        lbl = "storage_logical_volumes[%d]" % i
        if not isinstance(lv, dict):
            p.append(problem(h, lbl, "%s must be a dict {name, vg, size, fstype, mountpoint}, got %s. Fix: see docs/storage.md." % (lbl, _j(lv))))
            continue
        if isinstance(lv.get("name"), str):
            lbl = "storage_logical_volumes[%s/%s]" % (lv.get("vg", "?"), lv["name"])
        if not isinstance(lv.get("name"), str) or not re.match(r"^[A-Za-z0-9_.+-]+$", lv["name"]):
            p.append(problem(h, lbl + ".name", "%s.name %s is not a valid LV name. Fix: letters, digits, _ . + and -." % (lbl, _j(lv.get("name")))))
        if lv.get("vg") not in vg_names:
            p.append(problem(h, lbl + ".vg", "%s.vg %s is not in storage_volume_groups (%s). Fix: name a VG of storage_volume_groups."
                             % (lbl, _j(lv.get("vg")), ", ".join(str(n) for n in vg_names) or "none")))
        if "size" not in lv or not _LVM_SIZE.match(str(lv["size"])):
            p.append(problem(h, lbl + ".size", "%s.size %s is not an LVM size. Fix: e.g. 200G, 40%%VG or 100%%FREE." % (lbl, _j(lv.get("size")))))
        if lv.get("fstype", "xfs") not in ("xfs", "ext4"):
            p.append(problem(h, lbl + ".fstype", "%s.fstype %s is not supported. Fix: use xfs or ext4." % (lbl, _j(lv.get("fstype")))))
        mp = lv.get("mountpoint")
        if mp is not None:
            if not isinstance(mp, str) or not mp.startswith("/"):
                p.append(problem(h, lbl + ".mountpoint", "%s.mountpoint %s is not an absolute path. Fix: e.g. /var/lib/containerd." % (lbl, _j(mp))))
            elif mounts.count(mp) > 1:
                p.append(problem(h, lbl + ".mountpoint", "%s.mountpoint %s is used by %d logical volumes. Fix: one LV per mount point."
                                 % (lbl, mp, mounts.count(mp))))
    for d in force:
        if not isinstance(d, str) or not d.startswith("/dev/"):
            p.append(problem(h, "storage_force_wipe_devices", "storage_force_wipe_devices: %s is not a device path. Fix: list device "
                             "paths like /dev/nvme1n1." % _j(d)))
    return p


# ------------------------------------------------------------------------------ the whole inventory

def cluster_hosts(groups, play_hosts=None):
    """Hosts of the cluster groups plus the play's, in order, exact names (case kept: never folded)."""
    out = []
    for g in ("kube_control_plane", "kube_node", "gpu_nodes", "k8s_cluster"):
        for h in (groups or {}).get(g) or []:
            if h not in out:
                out.append(h)
    for h in play_hosts or []:
        if h not in out:
            out.append(h)
    return out


def _node_ip_hostvars(node_ips):
    """host -> {gpuops_kubernetes_node_ip} from host -> address, and the problems of those addresses."""
    hostvars = dict((h, {"gpuops_kubernetes_node_ip": ip} if ip not in (None, "") else {}) for h, ip in (node_ips or {}).items())
    p = [problem(h, "gpuops_kubernetes_node_ip", "the host has no node address. Fix: set gpuops_kubernetes_node_ip or "
                                                 "gpuops_node_addresses.cluster.address for %s." % h)
         for h in hostvars if not hostvars[h]]
    return hostvars, p + check_node_ips(hostvars, list(hostvars))


def check_node_role_options(host, node_ip):
    """kubeadm_node's view of the contract: the address this node's kubelet registers."""
    return _node_ip_hostvars({host: node_ip})[1]


def check_cluster_role_options(version, pod_cidr, service_cidr, control_planes, node_count, node_ips, ha=None, vip=None,
                               options=None):
    """The cluster roles' own view of the contract's cluster rules (kubeadm_control_plane, kubeadm_node).

    The roles take these values from the inventory by default but can be given them directly; they
    ask the same rules preflight runs instead of keeping copies. ``node_ips`` maps host -> the address
    its kubelet registers; ``ha`` None means "as many control planes as given must keep etcd quorum"."""
    cluster = {"gpuops_kubernetes_version": version, "gpuops_pod_cidr": pod_cidr, "gpuops_service_cidr": service_cidr}
    if vip not in (None, ""):
        cluster["gpuops_api_vip"] = vip
    p = []
    if version not in (None, ""):
        p.extend(check_versions(cluster, options))
    else:
        p.append(problem(ALL_HOSTS, "gpuops_kubernetes_version", "gpuops_kubernetes_version is not set. Fix: set it in "
                                                                 "group_vars/all to X.Y.Z, e.g. 1.36.3."))
    p.extend(check_pod_service(cluster, node_count, options))
    hostvars, node_problems = _node_ip_hostvars(node_ips)
    p.extend(node_problems)
    cps = list(control_planes or [])
    quorum_ha = ha if isinstance(ha, bool) else len(cps) > 1
    p.extend(q for q in check_groups({"kube_control_plane": cps, "kube_node": ["-"]}, [], {"gpuops_control_plane_ha": quorum_ha})
             if q["variable"] in ("kube_control_plane", "gpuops_control_plane_ha"))
    if "gpuops_api_vip" in cluster:
        p.extend(check_api_vip(cluster, hostvars, list(hostvars), {"kube_control_plane": cps}))
    return p


def check_inventory(hostvars, groups, hosts=None, options=None, unreadable=None):
    """Every rule of the contract over the whole cluster; returns the list of problems."""
    o = _opts(options)
    groups = groups or {}
    hosts = list(hosts) if hosts else cluster_hosts(groups)
    hostvars = dict((h, dict(hostvars.get(h) or {})) for h in hosts)
    unreadable = list(unreadable or [])
    skip = {}
    for u in unreadable:
        skip.setdefault(u["host"], set()).add(u["variable"].split(".")[0].split("[")[0])
    for h, names in skip.items():
        for n in names:
            hostvars.get(h, {}).pop(n, None)
    p = list(unreadable)
    cluster = resolve_cluster(hostvars, hosts)
    mgmt = o["management_network"]
    mgmts = [hostvars[h]["network_management_network"] for h in hosts if isinstance(hostvars[h].get("network_management_network"), str)]
    if mgmts:
        mgmt = max(set(mgmts), key=mgmts.count)
        o["management_network"] = mgmt
    p += check_cluster_variables(hostvars, hosts, cluster, skip)
    p += check_cluster_name(cluster)
    p += check_versions(cluster, o)
    p += check_groups(groups, hosts, cluster)
    p += check_api_vip(cluster, hostvars, hosts, groups)
    p += check_node_ips(hostvars, hosts)
    p += check_host_names(hosts, hostvars, mgmt)
    networks = cluster.get("gpuops_networks") if isinstance(cluster.get("gpuops_networks"), dict) else {}
    p += check_networks(networks, o)
    p += check_pod_service(cluster, len(hosts), o)
    p += check_overlaps(dict(cluster, gpuops_networks=networks))
    p += check_dns_outside_service_cidr(cluster)
    p += check_required_networks(cluster, mgmt)
    required = [n for n in required_networks(cluster, mgmt) if n in networks or not networks]
    allocated = {}
    gpu_hosts = set(groups.get("gpu_nodes") or [])
    for h in hosts:
        hv = hostvars[h]
        for spec in NODE_VARS:
            n = spec["name"]
            if n in skip.get(h, ()):
                continue
            v = hv.get(n)
            if n not in hv:
                p.append(problem(h, n, "%s is not defined. Fix: set it in host_vars/%s to %s." % (n, h, spec["hint"])))
            elif (spec["type"] == "list" and not _is_list(v)) or (spec["type"] == "mapping" and not isinstance(v, dict)):
                p.append(problem(h, n, "%s must be a %s, got %s. Fix: set it in host_vars/%s to %s." % (n, spec["type"], _j(v), h, spec["hint"])))
        need = [] if ("gpuops_node_addresses" not in hv or not isinstance(hv.get("gpuops_node_addresses"), dict)) else required
        p += check_node_network(h, networks, hv.get("gpuops_node_interfaces"), hv.get("gpuops_node_addresses"), o,
                                required=need, allocated=allocated)
        p += check_gpu(h, hv, h in gpu_hosts, o)
        if any(n in hv for n in STORAGE_VARS):
            # a non-list value is reported by check_role_options (storage's argument_specs types)
            p += check_storage(h, *[hv.get(n) if _is_list(hv.get(n)) else None for n in STORAGE_VARS])
    p += check_role_options(hostvars, hosts, o["role_options"])
    timers = [o["role_options"].get(n) for n in ("network_rollback_seconds", "network_reconnect_timeout")]
    if all(timers):
        per_host = []
        for h in hosts:
            vals = [hostvars[h].get(n, spec.get("default")) for n, spec in
                    zip(("network_rollback_seconds", "network_reconnect_timeout"), timers)]
            if all(_is_int(v) for v in vals):
                per_host += check_network_timers(h, *vals)
        p += _fold_identical(per_host, hosts)
    return p


def _fold_identical(problems, hosts):
    """One [all hosts] problem for a (variable, message) every host has; the others as they are."""
    out = []
    for p in problems:
        same = [q for q in problems if q["variable"] == p["variable"] and q["message"] == p["message"]]
        if len(same) == len(hosts) and len(hosts) > 1:
            if not any(o["host"] is None and o["variable"] == p["variable"] and o["message"] == p["message"] for o in out):
                out.append(problem(ALL_HOSTS, p["variable"], p["message"]))
        else:
            out.append(p)
    return out
