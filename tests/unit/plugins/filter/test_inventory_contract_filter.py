"""plugins/filter/inventory_contract.py: gathering hostvars safely, and the real inventories.

The inventories are loaded in-process by Ansible's own inventory manager and variable manager
(real group_vars/host_vars parsing and templating), then go through the same filters the
preflight role calls: gather -> check.
"""

from pathlib import Path

import pytest
import yaml
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader
from ansible.vars.hostvars import HostVars
from ansible.vars.manager import VariableManager

from ansible_collections.gpuops.cluster.plugins.filter import inventory_contract as f
from ansible_collections.gpuops.cluster.plugins.module_utils import inventory_contract as c

REPO = Path(__file__).resolve().parents[4]
ROLES = ["os_baseline", "network", "storage", "container_runtime", "kubernetes_packages"]


def role_options():
    """What roles/preflight reads from meta/argument_specs.yml of the collection's roles."""
    out = {}
    for r in ROLES:
        spec = yaml.safe_load((REPO / "roles" / r / "meta" / "argument_specs.yml").read_text())
        for name, o in spec["argument_specs"]["main"]["options"].items():
            out[name] = {"type": o.get("type", "str"), "role": r, "choices": o.get("choices", []), "default": o.get("default")}
    return out


_LOADER = []


def load(source):
    if not _LOADER:  # lookups in the inventory (the lab's env lookups) need the plugin loader, once
        init_plugin_loader()
        _LOADER.append(True)
    loader = DataLoader()
    inv = InventoryManager(loader=loader, sources=[str(source)])
    hv = HostVars(inventory=inv, variable_manager=VariableManager(loader=loader, inventory=inv), loader=loader)
    groups = {g: [h.name for h in grp.get_hosts()] for g, grp in inv.groups.items()}
    return hv, groups


def problems_of(source, typed_role_options=True):
    hv, groups = load(source)
    hosts = f.inventory_cluster_hosts(groups)
    opts = {"role_options": role_options() if typed_role_options else {}}
    gathered = f.inventory_gather(hv, hosts, c.HOST_READ_VARS + list(opts["role_options"]))
    return hosts, f.inventory_problem_lines(f.inventory_check(gathered, groups, hosts, opts))


# The lab's role options read files that setup's mirror build writes (checksums), so its role
# options are only templated where a play runs them (tests/integration/test_site.py).
@pytest.mark.parametrize("name,count,typed", [("sample", 10, True), ("lab", 5, False)])
def test_the_project_inventories_satisfy_the_contract(name, count, typed):
    hosts, lines = problems_of(REPO / "inventories" / name / "hosts.yml", typed)
    assert len(hosts) >= count
    assert lines == []


def test_sample_inventory_layout():
    """The documented production inventory: 3 control planes, GPU workers in 3 zones, a CPU worker, 3 networks."""
    hv, groups = load(REPO / "inventories" / "sample" / "hosts.yml")
    assert len(groups["kube_control_plane"]) == 3
    gpus = groups["gpu_nodes"]
    assert {hv[h]["gpuops_zone"] for h in gpus} == {"zone-a", "zone-b", "zone-c"}
    assert {hv[h]["gpuops_gpu"]["product"].split("-")[1] for h in gpus} == {"H100", "A100"}
    assert [h for h in groups["kube_node"] if h not in gpus] == ["cpu01"]
    nets = hv["cp01"]["gpuops_networks"]
    assert set(nets) == {"management", "cluster", "storage"} and nets["cluster"]["vlan"] and nets["storage"]["vlan"]


@pytest.fixture(scope="module")
def broken_inventory(tmp_path_factory):
    d = tmp_path_factory.mktemp("inv")
    sample = yaml.safe_load((REPO / "inventories" / "sample" / "hosts.yml").read_text())
    (d / "hosts.yml").write_text(yaml.safe_dump(sample))
    for sub in ("group_vars", "host_vars"):
        (d / sub).mkdir()
        for p in (REPO / "inventories" / "sample" / sub).iterdir():
            (d / sub / p.name).write_text(p.read_text())
    hv = yaml.safe_load((d / "host_vars" / "gpu-b01.yml").read_text())
    hv["gpuops_node_addresses"]["cluster"]["address"] = "{{ gpu_b01_cluster_ip }}"
    (d / "host_vars" / "gpu-b01.yml").write_text(yaml.safe_dump(hv))
    return d / "hosts.yml"


def test_an_undefined_template_variable_names_host_and_variable(broken_inventory):
    hosts, lines = problems_of(broken_inventory)
    assert len(hosts) == 10
    assert len(lines) == 1, lines
    # outside a play Ansible templates the whole variable; inside one (lazy templating) the path
    # goes down to the leaf (tests/integration/test_preflight.py undefined-template-variable)
    assert lines[0].startswith("[gpu-b01] gpuops_node_addresses"), lines
    assert "cannot be templated:" in lines[0], lines
    assert "gpu_b01_cluster_ip" in lines[0] and "Fix:" in lines[0]


class Exploding(dict):
    """A mapping whose listed keys raise on access, like a lazy template with an undefined variable."""

    def __init__(self, data, bad):
        super().__init__(data)
        self.bad = bad

    def __getitem__(self, key):
        if key in self.bad:
            raise RuntimeError("'%s' is undefined" % self.bad[key])
        return super().__getitem__(key)


def test_gather_keeps_reading_after_a_failure():
    hostvars = {
        "a": Exploding({"gpuops_zone": "z", "gpuops_node_addresses": {"m": Exploding({"address": "x"}, {"address": "ip_a"})}},
                       {}),
        "b": Exploding({"gpuops_zone": "z"}, {"gpuops_zone": "zone_b"}),
    }
    got = f.inventory_gather(hostvars, ["a", "b"], ["gpuops_zone", "gpuops_node_addresses", "gpuops_gpu"])
    assert got["hostvars"] == {"a": {"gpuops_zone": "z"}, "b": {}}
    assert [(p["host"], p["variable"]) for p in got["unreadable"]] == [
        ("a", "gpuops_node_addresses.m.address"), ("b", "gpuops_zone")]
    assert "ip_a" in got["unreadable"][0]["message"]


def test_cluster_hosts_keep_case_and_order():
    groups = {"kube_control_plane": ["cp01"], "kube_node": ["gpu01", "GPU01"], "gpu_nodes": ["gpu01"], "k8s_cluster": ["cp01"]}
    assert f.inventory_cluster_hosts(groups, ["extra", "cp01"]) == ["cp01", "gpu01", "GPU01", "extra"]


def test_role_filters_are_the_contract():
    nets = {"management": {"cidr": "192.168.10.0/24"}}
    ifs = [{"name": "eno1", "type": "ethernet"}]
    good = {"management": {"interface": "eno1", "address": "192.168.10.5"}}
    assert f.inventory_network_problems(nets, ifs, good, "n1") == []
    bad = f.inventory_network_problems(nets, ifs, {}, "n1", {"management_network": "management"})
    assert f.inventory_problem_lines(bad) == [
        "[n1] gpuops_node_addresses.management is not defined: every node needs an address on the management network "
        "(the network Ansible connects over). Fix: add management: {interface: <link>, address: <ip>} to "
        "gpuops_node_addresses in host_vars/n1."]
    assert f.inventory_storage_problems([], [], [], ["sda"], "n1")[0]["variable"] == "storage_force_wipe_devices"
    assert set(f.FilterModule().filters()) >= {"inventory_gather", "inventory_check", "inventory_problem_lines",
                                               "inventory_network_problems", "inventory_storage_problems"}
