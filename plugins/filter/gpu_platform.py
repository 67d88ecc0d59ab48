# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Pure logic of the platform roles (helm_release, gpu_operator); controller side, no I/O.

``helm_values_canonical(values)``
    The values as Helm records them for a release and ``helm get values`` gives them back, so
    kubernetes.core.helm's idempotency check (recorded values == values passed) holds on a re-run
    with the same input. See docs/platform.md ("Why a re-run changes nothing").

``gpu_inventory_hosts(names, hostvars)``
    The GPU hosts as the check reads them: ``{host, node, count, device_plugin_config, mig_config}``
    from ``gpuops_gpu.count``, ``gpuops_node_name`` (default: the inventory name) and the host
    variables ``gpu_operator_node_device_plugin_config`` / ``gpu_operator_node_mig_config``.

``gpu_expected_resources(hosts, device_plugin_configs, mig_configs, mig_strategy, ...)``
    What every GPU node must advertise as allocatable, from the inventory: ``gpuops_gpu.count``
    per host, the MIG layout (mig-parted config) and the sharing (time-slicing / MPS replicas in
    the device plugin's config format) selected for the node.

``gpu_allocatable_report(expected, nodes)``
    Compare with the Node objects the apiserver returns: ``{ok, problems, nodes}``, one problem
    line per node that does not advertise what the inventory says (or is not registered).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import math
import re

from ansible.errors import AnsibleFilterError

GPU = "nvidia.com/gpu"


# -- helm values ---------------------------------------------------------------------------------
# kubernetes.core.helm writes release_values with PyYAML (YAML 1.1 as PyYAML reads it) into a file
# for `helm upgrade -f`; Helm reads it with Go's YAML 1.1 and keeps the result as JSON; on the next
# run the module compares `helm get values` (Go's YAML, read back by PyYAML) with what it passes.
# Where the three disagree, the value Helm records is not the one passed (and the chart gets it),
# and every run reports a change. Measured with helm v3.21.4 (docs/platform.md):
# - a string PyYAML writes unquoted that Go reads as another type: "y"/"n" (and Y/N) become
#   booleans, "1e3" / "1.0e3" numbers -- as values and as keys;
# - integers beyond 2**53 lose precision (JSON float64);
# - floats Go prints in exponent form without a dot (|x| < 1e-6 or >= 1e21) come back as strings.
# Those are refused with the value's path; integral floats become ints (Helm records 2.0 as 2).
_GO_BOOLS = frozenset("y Y yes Yes YES n N no No NO true True TRUE false False FALSE on On ON off Off OFF".split())
_GO_NULLS = frozenset(["", "~", "null", "Null", "NULL"])
_GO_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_GO_SPECIAL_FLOAT = frozenset(".inf .Inf .INF +.inf +.Inf +.INF -.inf -.Inf -.INF .nan .NaN .NAN".split())
_GO_INT = re.compile(r"^[-+]?(0b[01]+|0o?[0-7]+|0x[0-9a-fA-F]+|[0-9]+)$")
_JSON_SAFE_INT = 2 ** 53


def _go_yaml_type(text):
    """What Go's YAML 1.1 (sigs.k8s.io/yaml) makes of an unquoted scalar."""
    if text in _GO_NULLS:
        return "null"
    if text in _GO_BOOLS:
        return "bool"
    plain = text.replace("_", "")
    if _GO_INT.match(plain):
        return "int"
    if _GO_FLOAT.match(plain) or text in _GO_SPECIAL_FLOAT:
        return "float"
    return "str"


def _pyyaml_writes_plain(text):
    """True when PyYAML's resolver reads ``text`` as a string, so yaml.dump does not quote it."""
    import yaml
    return yaml.resolver.Resolver().resolve(yaml.ScalarNode, text, (True, False)) == "tag:yaml.org,2002:str"


def _check_string(text, path, what):
    kind = _go_yaml_type(text)
    if kind != "str" and _pyyaml_writes_plain(text):
        raise AnsibleFilterError(
            "helm values: %s %s %r would reach Helm as a %s, not a string: kubernetes.core.helm writes it "
            "unquoted and Helm reads YAML 1.1; the release would hold another value than the one passed and every "
            "run would report a change. Use an unambiguous spelling (for a boolean true/false, for a number a number)."
            % (path, what, text, kind))
    return text


def _canonical(value, path):
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if abs(value) > _JSON_SAFE_INT:
            raise AnsibleFilterError("helm values: %s is %d, beyond 2**53: Helm keeps numbers as JSON float64 and "
                                     "would record %r; pass it as a string" % (path, value, float(value)))
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise AnsibleFilterError("helm values: %s is %r, which JSON (and Helm) cannot hold" % (path, value))
        if value.is_integer() and abs(value) <= _JSON_SAFE_INT:
            return int(value)  # Helm records 2.0 as 2
        if value != 0 and (abs(value) < 1e-6 or abs(value) >= 1e21):
            raise AnsibleFilterError("helm values: %s is %r: Helm prints it in exponent form (%s), which reads back as "
                                     "a string; pass it as a string or in other units" % (path, value, repr(value)))
        return value
    if isinstance(value, (datetime.date, datetime.datetime)):
        # YAML timestamps are strings to Helm (JSON has no date type)
        return value.isoformat()
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            key = _check_string(k, path, "key") if isinstance(k, str) else _scalar_key(k, path)
            if key in out:
                raise AnsibleFilterError("helm values: %s has the key %r twice once keys are strings" % (path, key))
            out[key] = _canonical(v, "%s.%s" % (path, key))
        return out
    if isinstance(value, (list, tuple)):
        return [_canonical(v, "%s[%d]" % (path, i)) for i, v in enumerate(value)]
    if isinstance(value, str):
        return _check_string(str(value), path, "string")
    raise AnsibleFilterError("helm values: %s has a value of type %s that Helm cannot hold"
                             % (path, type(value).__name__))


def _scalar_key(key, path):
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, (int, float)) or key is None:
        return "null" if key is None else str(key)
    raise AnsibleFilterError("helm values: %s has a key of type %s" % (path, type(key).__name__))


def helm_values_canonical(values):
    """Values as Helm will record them (see above), or an error naming the value Helm would not
    record as passed."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise AnsibleFilterError("helm values must be a mapping, got %s" % type(values).__name__)
    return _canonical(values, "values")


# -- GPU resources -------------------------------------------------------------------------------
def gpu_inventory_hosts(names, hostvars):
    """Read each GPU host's variables (``hostvars`` is Ansible's hostvars or a plain dict)."""
    out = []
    for name in names or []:
        hv = hostvars[name]
        gpu = hv.get("gpuops_gpu") or {}
        out.append({
            "host": name,
            "node": hv.get("gpuops_node_name") or name,
            "count": gpu.get("count") if isinstance(gpu, dict) else None,
            "device_plugin_config": hv.get("gpu_operator_node_device_plugin_config") or "",
            "mig_config": hv.get("gpu_operator_node_mig_config") or "",
        })
    return out


def _truthy(value, default=True):
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() not in ("false", "no", "off", "0", "n", "f", "")


def gpu_nvidia_dropin_writers(names, hostvars):
    """Hosts on which the container_runtime role writes its nvidia drop-in
    (``container_runtime_nvidia_enabled`` not set to false; the role's default is true on GPU nodes)."""
    return [n for n in names or [] if _truthy(hostvars[n].get("container_runtime_nvidia_enabled"))]


def _device_indices(devices, count, where):
    if devices == "all":
        return list(range(count))
    if isinstance(devices, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in devices):
        bad = [d for d in devices if d < 0 or d >= count]
        if bad:
            raise ValueError("%s names GPU index(es) %s but the node has %d GPU(s)" % (where, bad, count))
        return list(devices)
    raise ValueError("%s: devices must be 'all' or a list of GPU indices, got %r" % (where, devices))


def _mig_layout(profile_entries, count, where):
    """{gpu index: {mig profile: n} or None (MIG disabled)} for one mig-parted profile."""
    layout = {i: None for i in range(count)}
    for n, entry in enumerate(profile_entries or []):
        if not isinstance(entry, dict):
            raise ValueError("%s entry %d is not a mapping" % (where, n))
        idx = _device_indices(entry.get("devices", "all"), count, "%s entry %d" % (where, n))
        enabled = bool(entry.get("mig-enabled", False))
        devices = entry.get("mig-devices") or {}
        if enabled and not devices:
            raise ValueError("%s entry %d enables MIG without mig-devices" % (where, n))
        for i in idx:
            layout[i] = {str(k): int(v) for k, v in devices.items()} if enabled else None
    return layout


def _sharing_replicas(config, where):
    """{resource name: (replicas, rename)} from a device plugin config's sharing section."""
    sharing = (config or {}).get("sharing") or {}
    out = {}
    for kind in ("timeSlicing", "mps"):
        section = sharing.get(kind) or {}
        rename = bool(section.get("renameByDefault", False))
        for r in section.get("resources") or []:
            name = r.get("name")
            replicas = r.get("replicas")
            if not name or not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
                raise ValueError("%s: sharing.%s resource %r needs a name and replicas >= 1" % (where, kind, r))
            if r.get("devices", "all") != "all":
                raise ValueError("%s: sharing.%s of %s on some devices only is not supported by the allocatable "
                                 "check (devices: all)" % (where, kind, name))
            if r.get("rename"):
                raise ValueError("%s: sharing.%s resource %s: rename is not supported by the allocatable check"
                                 % (where, kind, name))
            out[name] = (replicas, rename)
    return out


def gpu_expected_resources(hosts, device_plugin_configs=None, mig_configs=None, mig_strategy="single",
                           default_device_plugin_config="default", default_mig_config="all-disabled"):
    """Expected extended resources per node.

    ``hosts``: list of ``{host, node, count, device_plugin_config, mig_config}`` (the last two may be
    empty: the defaults apply). Returns ``{"nodes": {node: {"host", "resources": {name: n},
    "explain": str}}, "errors": [...]}``; a host whose expectation cannot be computed is an error
    naming it (never a silent guess).
    """
    device_plugin_configs = device_plugin_configs or {}
    mig_configs = mig_configs or {}
    if mig_strategy not in ("none", "single", "mixed"):
        return {"nodes": {}, "errors": ["mig strategy must be none, single or mixed, got %r" % (mig_strategy,)]}
    nodes, errors = {}, []
    for h in hosts or []:
        host = h.get("host")
        node = h.get("node") or host
        count = h.get("count")
        try:
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise ValueError("gpuops_gpu.count must be an integer >= 1, got %r" % (count,))
            if node in nodes:
                raise ValueError("node name %s is used by hosts %s and %s" % (node, nodes[node]["host"], host))
            dp_name = h.get("device_plugin_config") or default_device_plugin_config
            mig_name = h.get("mig_config") or default_mig_config
            if device_plugin_configs and dp_name not in device_plugin_configs:
                raise ValueError("device plugin config %r is not defined (have: %s)"
                                 % (dp_name, ", ".join(sorted(device_plugin_configs))))
            layout = {i: None for i in range(count)}
            if mig_strategy != "none":
                if mig_name not in mig_configs and mig_configs:
                    raise ValueError("MIG config %r is not defined (have: %s)" % (mig_name, ", ".join(sorted(mig_configs))))
                layout = _mig_layout(mig_configs.get(mig_name), count, "MIG config %r" % mig_name)
            whole = [i for i, d in layout.items() if d is None]
            migged = [d for d in layout.values() if d is not None]
            resources, explain = {}, []
            if mig_strategy == "single" and migged:
                if whole or any(d != migged[0] for d in migged):
                    raise ValueError("MIG strategy single needs every GPU in the same MIG layout; MIG config %r "
                                     "leaves GPUs %s whole or mixes layouts (use strategy mixed)" % (mig_name, whole))
                per_gpu = sum(migged[0].values())
                resources[GPU] = per_gpu * len(migged)
                explain.append("%d GPUs x %d MIG devices (%s, strategy single)" % (len(migged), per_gpu, mig_name))
            else:
                resources[GPU] = len(whole)
                explain.append("%d whole GPUs" % len(whole))
                for d in migged:
                    for prof, n in d.items():
                        key = "nvidia.com/mig-%s" % prof
                        resources[key] = resources.get(key, 0) + n
                if migged:
                    explain.append("MIG devices of %s (strategy mixed)" % mig_name)
            sharing = _sharing_replicas(device_plugin_configs.get(dp_name), "device plugin config %r" % dp_name)
            for name, (replicas, rename) in sharing.items():
                if name not in resources:
                    continue
                n = resources.pop(name) * replicas
                resources[name + ".shared" if rename else name] = n
                explain.append("%s x %d replicas (%s)" % (name, replicas, dp_name))
            nodes[node] = {"host": host, "resources": resources, "explain": ", ".join(explain)}
        except ValueError as exc:
            errors.append("%s (node %s): %s" % (host, node, exc))
    return {"nodes": nodes, "errors": errors}


def _quantity(value):
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def gpu_allocatable_report(expected, nodes):
    """Compare ``expected`` (gpu_expected_resources' ``nodes``) with Node objects (dicts as
    kubernetes.core.k8s_info returns them). Every expected resource must be allocatable in exactly
    the expected amount, and the node must be Ready."""
    by_name = {}
    for n in nodes or []:
        name = ((n or {}).get("metadata") or {}).get("name")
        if name:
            by_name[name] = n
    problems, seen = [], {}
    for node in sorted(expected or {}):
        want = expected[node]
        host = want.get("host") or node
        obj = by_name.get(node)
        if obj is None:
            problems.append("%s (host %s): no such Node in the cluster (expected %s)"
                            % (node, host, _fmt(want["resources"])))
            seen[node] = None
            continue
        status = obj.get("status") or {}
        alloc = status.get("allocatable") or {}
        have = {r: _quantity(alloc.get(r)) for r in want["resources"]}
        seen[node] = have
        wrong = ["%s %s (inventory: %d = %s)" % (r, "absent" if have[r] is None else have[r], n, want["explain"])
                 for r, n in sorted(want["resources"].items()) if have[r] != n]
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        if wrong:
            problems.append("%s (host %s) advertises allocatable %s" % (node, host, "; ".join(wrong)))
        elif not ready:
            problems.append("%s (host %s) is not Ready" % (node, host))
    return {"ok": not problems, "problems": problems, "nodes": seen}


def _fmt(resources):
    return ", ".join("%s: %d" % kv for kv in sorted(resources.items()))


class FilterModule(object):
    def filters(self):
        return {
            "helm_values_canonical": helm_values_canonical,
            "gpu_inventory_hosts": gpu_inventory_hosts,
            "gpu_nvidia_dropin_writers": gpu_nvidia_dropin_writers,
            "gpu_expected_resources": gpu_expected_resources,
            "gpu_allocatable_report": gpu_allocatable_report,
        }
