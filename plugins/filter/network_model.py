# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Pure model of a node's network from the inventory contract (docs/inventory.md).

``network_model(networks, interfaces, addresses)`` turns gpuops_networks,
gpuops_node_interfaces and gpuops_node_addresses into a list of links
(ethernet, bond, vlan) with MTU, members, VLAN ids, addresses and routes,
plus the list of problems the inventory contract finds in them
(plugins/module_utils/inventory_contract.py, the same rules preflight runs for the whole
cluster; this module never judges the inventory itself). Templates render systemd-networkd
.netdev/.network files or a netplan file from the links; no I/O here.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress

from ansible_collections.gpuops.cluster.plugins.module_utils import inventory_contract as contract

BOND_MODES = contract.BOND_MODES


def _net(cidr):
    return ipaddress.ip_network(str(cidr), strict=True)


def network_model(networks, interfaces, addresses, management="management"):
    # the model skips what it cannot build; what is wrong is the contract's to say, once
    problems = contract.check_network_role_inventory("node", networks, interfaces, addresses,
                                                     {"management_network": management})
    errors = []  # why a part was not modelled; never returned: the contract reports the problem
    networks = networks or {}
    links = {}
    order = []

    def add(link):
        links[link["name"]] = link
        order.append(link["name"])
        return link

    def new_link(name, kind):
        return {"name": name, "kind": kind, "mtu": None, "members": [], "bond_mode": None,
                "master": None, "vlan_id": None, "parent": None, "vlans": [], "addresses": [],
                "gateway": None, "routes": [], "dns": [], "networks": []}

    # 1. networks
    parsed = {}
    for name, net in sorted(networks.items()):
        if not isinstance(net, dict) or "cidr" not in net:
            errors.append("gpuops_networks.%s needs a cidr" % name)
            continue
        try:
            parsed[name] = _net(net["cidr"])
        except ValueError as exc:
            errors.append("gpuops_networks.%s.cidr %r is not a network address: %s" % (name, net["cidr"], exc))
            continue
        vlan = net.get("vlan")
        if vlan is not None and not (isinstance(vlan, int) and 1 <= vlan <= 4094):
            errors.append("gpuops_networks.%s.vlan must be an integer 1-4094, got %r" % (name, vlan))
        mtu = net.get("mtu", 1500)
        if not (isinstance(mtu, int) and 576 <= mtu <= 9216):
            errors.append("gpuops_networks.%s.mtu must be an integer 576-9216, got %r" % (name, mtu))
        gw = net.get("gateway")
        if gw is not None:
            try:
                if ipaddress.ip_address(str(gw)) not in parsed[name]:
                    errors.append("gpuops_networks.%s.gateway %s is outside %s" % (name, gw, net["cidr"]))
            except ValueError:
                errors.append("gpuops_networks.%s.gateway %r is not an IP address" % (name, gw))

    # 2. declared interfaces
    for itf in interfaces or []:
        name = itf.get("name")
        kind = itf.get("type", "ethernet")
        if not name:
            errors.append("gpuops_node_interfaces: every entry needs a name")
            continue
        if name in links:
            errors.append("gpuops_node_interfaces: %s declared twice" % name)
            continue
        if kind not in ("ethernet", "bond"):
            errors.append("gpuops_node_interfaces.%s.type must be ethernet or bond, got %r" % (name, kind))
            continue
        link = add(new_link(name, kind))
        link["mtu"] = itf.get("mtu")
        if kind == "bond":
            mode = itf.get("bond_mode", "802.3ad")
            if mode not in BOND_MODES:
                errors.append("gpuops_node_interfaces.%s.bond_mode %r is not one of %s" % (name, mode, ", ".join(BOND_MODES)))
            link["bond_mode"] = mode
            members = itf.get("members") or []
            if not members:
                errors.append("bond %s needs at least one member" % name)
            link["members"] = list(members)
    for bond in [l for l in list(links.values()) if l["kind"] == "bond"]:
        for m in bond["members"]:
            member = links.get(m) or add(new_link(m, "ethernet"))
            if member["kind"] != "ethernet":
                errors.append("bond %s member %s must be an ethernet link" % (bond["name"], m))
            elif member["master"] and member["master"] != bond["name"]:
                errors.append("%s is a member of both %s and %s" % (m, member["master"], bond["name"]))
            member["master"] = bond["name"]

    # 3. addresses per network role
    seen_addr = {}
    if management not in (addresses or {}):
        errors.append("gpuops_node_addresses.%s is required: it is the network Ansible connects over" % management)
    gw_metric = 200
    for net_name, spec in sorted((addresses or {}).items()):
        if net_name not in networks:
            errors.append("gpuops_node_addresses.%s: no such network in gpuops_networks (%s)"
                          % (net_name, ", ".join(sorted(networks)) or "none"))
            continue
        if net_name not in parsed:
            continue
        net = networks[net_name]
        cidr = parsed[net_name]
        parent_name = (spec or {}).get("interface")
        addr = (spec or {}).get("address")
        parent = links.get(parent_name)
        if parent is None:
            errors.append("gpuops_node_addresses.%s.interface %r is not declared in gpuops_node_interfaces"
                          % (net_name, parent_name))
            continue
        if parent["master"]:
            errors.append("gpuops_node_addresses.%s.interface %s is a member of bond %s; address the bond"
                          % (net_name, parent_name, parent["master"]))
            continue
        try:
            ip = ipaddress.ip_address(str(addr))
        except ValueError:
            errors.append("gpuops_node_addresses.%s.address %r is not an IP address" % (net_name, addr))
            continue
        if ip not in cidr:
            errors.append("gpuops_node_addresses.%s.address %s is outside %s" % (net_name, ip, cidr))
            continue
        if str(ip) in seen_addr:
            errors.append("address %s used for both %s and %s" % (ip, seen_addr[str(ip)], net_name))
        seen_addr[str(ip)] = net_name
        mtu = net.get("mtu", 1500)
        vlan = net.get("vlan")
        if vlan:
            vname = "%s.%s" % (parent_name, vlan)
            if vname in links:
                errors.append("networks %s and %s both use VLAN %s on %s"
                              % (links[vname]["networks"][0], net_name, vlan, parent_name))
                continue
            target = add(new_link(vname, "vlan"))
            target.update(vlan_id=vlan, parent=parent_name, mtu=mtu)
            parent["vlans"].append(vname)
        else:
            target = parent
            if target["networks"]:
                errors.append("networks %s and %s are both untagged on %s"
                              % (target["networks"][0], net_name, parent_name))
        target["networks"].append(net_name)
        target["addresses"].append("%s/%d" % (ip, cidr.prefixlen))
        target["dns"].extend([str(d) for d in net.get("dns") or []])
        if net.get("gateway"):
            if net_name == management:
                target["gateway"] = str(net["gateway"])
            else:
                target["routes"].append({"gateway": str(net["gateway"]), "metric": gw_metric})
                gw_metric += 1
        if not vlan:
            target.setdefault("_untagged_mtu", mtu)

    # 4. MTUs: explicit > untagged network > largest VLAN child > 1500; VLANs fit their parent
    for link in [links[n] for n in order]:
        if link["kind"] == "vlan":
            continue
        if link["mtu"] is None:
            kids = [links[v]["mtu"] for v in link["vlans"]]
            cands = [m for m in [link.get("_untagged_mtu")] + kids if m]
            link["mtu"] = max(cands) if cands else None
    for link in [links[n] for n in order]:
        if link["kind"] == "vlan":
            pmtu = links[link["parent"]]["mtu"] or 1500
            if link["mtu"] > pmtu:
                errors.append("VLAN %s MTU %d is larger than its parent %s MTU %d"
                              % (link["name"], link["mtu"], link["parent"], pmtu))
        if link.get("_untagged_mtu") and link["mtu"] and link["_untagged_mtu"] > link["mtu"]:
            errors.append("%s MTU %d is smaller than network %s MTU %d"
                          % (link["name"], link["mtu"], link["networks"][0], link["_untagged_mtu"]))
    for link in [links[n] for n in order]:
        if link["master"]:
            bond_mtu = links[link["master"]]["mtu"]
            if link["mtu"] and bond_mtu and link["mtu"] != bond_mtu:
                errors.append("bond member %s MTU %d differs from bond %s MTU %d"
                              % (link["name"], link["mtu"], link["master"], bond_mtu))
            link["mtu"] = bond_mtu
        link.pop("_untagged_mtu", None)
        link["dns"] = sorted(set(link["dns"]), key=link["dns"].index)

    mgmt = None
    for link in links.values():
        if management in link["networks"]:
            mgmt = link["name"]
    out = [links[n] for n in order]
    return {"links": out, "errors": [p["message"] for p in problems], "management_link": mgmt,
            "virtual": [l["name"] for l in out if l["kind"] in ("bond", "vlan")],
            "physical": [l["name"] for l in out if l["kind"] == "ethernet"]}


class FilterModule(object):
    def filters(self):
        return {"network_model": network_model}
