# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Filters over the inventory contract (plugins/module_utils/inventory_contract.py).

``hostvars | inventory_gather(hosts, names)``
    Read ``names`` of every host into plain data. A variable whose template fails (an undefined
    variable inside a host's address, say) does not crash the play: it becomes a problem naming
    the host and the variable path, and the other hosts and variables are still read.
``gathered | inventory_check(groups, hosts, options)``
    Every rule of the contract over the whole cluster: a list of problems {host, variable, message}.
``problems | inventory_problem_lines``
    ``[host] message`` lines (``[all hosts]`` for cluster-wide problems).
``gpuops_networks | inventory_network_problems(interfaces, addresses, host, options)``
    roles/network's inventory rules for one node (the same functions preflight runs).
``target | inventory_upgrade_problems(cluster_version, inventory_current, node_versions)``
    playbooks/upgrade.yml's rule (no downgrade, no skipped minor, kubelets within one minor).
``versions | upgrade_pending(target)``
    The names ({name: version}) not at the target version yet, sorted.
``storage_arrays | inventory_storage_problems(volume_groups, logical_volumes, force_wipe_devices, host)``
    roles/storage's inventory rules for one node.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.gpuops.cluster.plugins.module_utils import inventory_contract as contract


def _plain(value, path, errors):
    """Deep copy of value as plain dicts/lists; a failing element is recorded and left out."""
    if isinstance(value, dict):
        out = {}
        for k in list(value.keys()):
            try:
                v = value[k]
            except Exception as exc:  # pylint: disable=broad-except
                errors.append(("%s.%s" % (path, k), exc))
                continue
            out[k] = _plain(v, "%s.%s" % (path, k), errors)
        return out
    if isinstance(value, (list, tuple)):
        out = []
        for i in range(len(value)):
            try:
                v = value[i]
            except Exception as exc:  # pylint: disable=broad-except
                errors.append(("%s[%d]" % (path, i), exc))
                continue
            out.append(_plain(v, "%s[%d]" % (path, i), errors))
        return out
    return value


def _reason(exc):
    msg = str(getattr(exc, "message", "") or exc).strip().splitlines()
    return (msg[0] if msg else type(exc).__name__)[:300]


def inventory_gather(hostvars, hosts, names):
    """{"hostvars": {host: {name: value}}, "unreadable": [problem]} for the given hosts and names."""
    out = {}
    unreadable = []
    names = sorted(set(names), key=list(names).index)
    for h in hosts:
        one = {}
        try:
            hv = hostvars[h]
        except Exception as exc:  # pylint: disable=broad-except
            unreadable.append(contract.problem(h, "hostvars", "the host's variables cannot be read: %s. Fix: correct the "
                                                              "inventory of %s." % (_reason(exc), h)))
            out[h] = one
            continue
        for n in names:
            errors = []
            try:
                if n not in hv:
                    continue
                value = _plain(hv[n], n, errors)
            except Exception as exc:  # pylint: disable=broad-except
                errors.append((n, exc))
            else:
                one[n] = value
            for path, exc in errors[:1]:
                unreadable.append(contract.problem(h, path, (
                    "%s cannot be templated: %s. Fix: define the variable it uses or correct the template in the inventory "
                    "(host_vars/%s or its groups).") % (path, _reason(exc), h)))
            if errors:
                one.pop(n, None)
        out[h] = one
    return {"hostvars": out, "unreadable": unreadable}


def inventory_check(gathered, groups, hosts=None, options=None):
    return contract.check_inventory(gathered["hostvars"], dict(groups), hosts=list(hosts or []) or None,
                                    options=options, unreadable=gathered.get("unreadable"))


def inventory_cluster_hosts(groups, play_hosts=None):
    return contract.cluster_hosts(dict(groups), list(play_hosts or []))


def inventory_problem_lines(problems):
    return contract.format_problems(problems)


def inventory_network_problems(networks, interfaces, addresses, host, options=None):
    return contract.check_network_role_inventory(host, networks, interfaces, addresses, options)


def inventory_storage_problems(arrays, volume_groups, logical_volumes, force_wipe_devices, host):
    return contract.check_storage(host, arrays, volume_groups, logical_volumes, force_wipe_devices)


def inventory_cluster_role_problems(version, pod_cidr, service_cidr, control_planes, node_count, node_ips, ha=None, vip=None):
    return contract.check_cluster_role_options(version, pod_cidr, service_cidr, list(control_planes or []), int(node_count),
                                               dict(node_ips or {}), ha=ha, vip=vip)


def inventory_upgrade_problems(target, cluster_version, inventory_current=None, node_versions=None):
    return contract.check_upgrade(target, cluster_version, inventory_current, dict(node_versions or {}))


def upgrade_pending(versions, target):
    return contract.upgrade_pending(target, dict(versions or {}))


def inventory_node_role_problems(node_ip, host):
    return contract.check_node_role_options(host, node_ip)


class FilterModule(object):
    def filters(self):
        return {
            "inventory_gather": inventory_gather,
            "inventory_check": inventory_check,
            "inventory_cluster_hosts": inventory_cluster_hosts,
            "inventory_problem_lines": inventory_problem_lines,
            "inventory_network_problems": inventory_network_problems,
            "inventory_storage_problems": inventory_storage_problems,
            "inventory_cluster_role_problems": inventory_cluster_role_problems,
            "inventory_node_role_problems": inventory_node_role_problems,
            "inventory_upgrade_problems": inventory_upgrade_problems,
            "upgrade_pending": upgrade_pending,
        }
