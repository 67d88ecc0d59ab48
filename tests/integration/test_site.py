"""playbooks/site.yml's layering, without nodes: the summary play that ends `make lab`, and the
site playbook's syntax against the lab inventory. The full lab run (podman nodes) is `make lab`
(docs/measurements.md records its time); here every host is ``ansible_connection: local``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.testbed.common import private_stdin

# podman nodes and playbook-heavy: stream 2 of scripts/test all (pytest.ini: nodes)
pytestmark = pytest.mark.nodes

REPO = Path(__file__).resolve().parents[2]


def _env():
    env = dict(os.environ)
    env.update({"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json", "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")})
    return env


def _summary(tmp_path, host_vars, all_vars=None, children=None):
    k8s = {"hosts": host_vars} if children is None else {"children": children}
    inv = {"all": {"vars": dict({"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
                                **(all_vars or {})),
                   "children": {"k8s_cluster": k8s}}}
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inv))
    with private_stdin() as stdin:
        proc = subprocess.run(["timeout", "300", "ansible-playbook", "-i", str(tmp_path / "hosts.yml"),
                               str(REPO / "playbooks" / "summary.yml")],
                              stdin=stdin, capture_output=True, text=True, env=_env(), cwd=str(tmp_path), check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(proc.stdout[proc.stdout.index("{"):])
    results = [res for play in doc["plays"] for task in play["tasks"] for res in task["hosts"].values()]
    msgs = [r["msg"] for r in results if "msg" in r]
    assert len(msgs) == 1, "the summary is printed once (run_once), got %d" % len(msgs)
    return dict(line.split(": ", 1) for line in msgs[0].splitlines())


def test_summary_groups_hosts_by_skip_reason(tmp_path):
    lines = _summary(tmp_path, {
        "n1": {"gpuops_skip_layers": {"storage": "no NVMe here", "network": "shared links"}},
        "n2": {"gpuops_skip_layers": {"storage": "no NVMe here"}},
        "n3": {"gpuops_skip_layers": {"storage": "disks are bare-metal only"}},
    })
    assert lines["preflight"] == "ran on all 3 hosts"
    assert lines["network"] == "ran on n2, n3; SKIPPED on n1: shared links"
    assert lines["storage"] == "SKIPPED on n1, n2: no NVMe here; SKIPPED on n3: disks are bare-metal only"
    assert lines["kubeadm_control_plane"] == "not run: no host in kube_control_plane"


def test_summary_of_a_run_that_skips_a_layer_everywhere(tmp_path):
    lines = _summary(tmp_path, {"n1": {}, "n2": {}}, {"gpuops_skip_layers": {"storage": "lab: no disks"}})
    assert lines["storage"] == "SKIPPED on all 2 hosts: lab: no disks"
    assert lines["os_baseline"] == "ran on all 2 hosts"


def test_summary_of_the_cluster_layers_names_their_groups(tmp_path):
    lines = _summary(tmp_path, None, {"gpuops_skip_layers": {"network": "lab"}}, children={
        "kube_control_plane": {"hosts": {"cp1": {}, "cp2": {}, "cp3": {}}},
        "kube_node": {"hosts": {"w1": {}, "w2": {"gpuops_skip_layers": {"kubeadm_node": "joined by hand"}}}}})
    assert lines["kubeadm_control_plane"] == "ran on all 3 kube_control_plane hosts"
    assert lines["kubeadm_node"] == "ran on w1; SKIPPED on w2: joined by hand"
    assert lines["cni"] == "ran on all 3 kube_control_plane hosts"
    assert lines["os_baseline"] == "ran on all 5 hosts"
    # w2's own gpuops_skip_layers replaces the group's dict
    assert lines["network"] == "ran on w2; SKIPPED on cp1, cp2, cp3, w1: lab"


def test_summary_of_a_cluster_without_control_planes(tmp_path):
    lines = _summary(tmp_path, {"n1": {}})
    assert lines["kubeadm_control_plane"] == "not run: no host in kube_control_plane"
    assert lines["kubeadm_node"] == "not run: no host in kube_node"


def test_site_playbook_parses_against_the_lab_inventory():
    with private_stdin() as stdin:
        proc = subprocess.run(["timeout", "300", "ansible-playbook", "--syntax-check", "-i",
                               str(REPO / "inventories" / "lab" / "hosts.yml"), str(REPO / "playbooks" / "site.yml")],
                              stdin=stdin, capture_output=True, text=True,
                              env=dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg")), cwd=str(REPO), check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
