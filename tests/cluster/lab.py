"""Shared helpers of the cluster tier: the lab's names and addresses, kubectl/podman/site.yml runners.

Imported by tests/cluster/conftest.py (the session's ``lab`` fixture) and every tests/cluster module."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.testbed.common import private_stdin

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts" / "lib"))
import oci_image  # noqa: E402  (scripts/lib: image references as the bundle and the site registry name them)

CACHE = Path(os.environ.get("GPUOPS_CACHE", str(Path.home() / ".cache" / "gpuops")))
# The torchserve role's pinned image (its default), as containerd names it, and its repository and
# tag as the site registry logs them: the serving pods and test_vault's reader pod run it.
SERVING_IMAGE_REF = yaml.safe_load((REPO / "roles" / "torchserve" / "defaults" / "main.yml").read_text())[
    "torchserve_image"]
SERVING_IMAGE = oci_image.full_ref(SERVING_IMAGE_REF)
_SERVING_IMAGE_NAME, SERVING_IMAGE_TAG = oci_image.split_ref(SERVING_IMAGE)
SERVING_IMAGE_REPO = _SERVING_IMAGE_NAME.split("/", 1)[1]    # the path after the registry host
KUBECONFIG = CACHE / "lab" / "admin.conf"
LOGS = CACHE / "lab" / "logs"
KUBECTL = str(Path(os.environ.get("GPUOPS_BIN", str(CACHE / "bin"))) / "kubectl")
VIP = "10.250.0.10"
CONTROL = ["lab-cp1", "lab-cp2", "lab-cp3"]
GPU = ["lab-gpu1", "lab-gpu2"]
CPU = ["lab-cpu1"]
NODES = CONTROL + GPU + CPU
IPS = {"lab-cp1": "10.250.0.11", "lab-cp2": "10.250.0.12", "lab-cp3": "10.250.0.13",
       "lab-gpu1": "10.250.0.21", "lab-gpu2": "10.250.0.22", "lab-cpu1": "10.250.0.31"}
ZONES = {"lab-cp1": "zone-a", "lab-cp2": "zone-b", "lab-cp3": "zone-c",
         "lab-gpu1": "zone-a", "lab-gpu2": "zone-b", "lab-cpu1": "zone-c"}
BUSYBOX = "docker.io/library/busybox:1.35.0"
# Host-global kernel settings a privileged node's kubelet or kube-proxy would write (docs/lab.md).
HOST_SYSCTLS = ["vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
                "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes", "net/netfilter/nf_conntrack_max"]
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
# the lab's OpenBao (site.yml's vault layer): controller-side secrets, CA, API per control plane
VAULT_SECRETS = CACHE / "lab" / "secrets" / "vault"
VAULT_CA = VAULT_SECRETS / "tls" / "ca.pem"
VAULT_API = {n: "https://%s:8200" % IPS[n] for n in CONTROL}


def _pinned(path, pattern):
    m = re.search(pattern, (REPO / path).read_text(), re.M)
    assert m, "%s: no %s" % (path, pattern)
    return m.group(1)


# The Kubernetes versions of the tier: the lab comes up at the previous minor (scripts/build/k8s-prev.sh)
# and tests/cluster/test_cluster_upgrade.py upgrades it to the inventory's (docs/day2-upgrade.md).
CURRENT_VERSION = _pinned("inventories/lab/group_vars/all.yml", r'^gpuops_kubernetes_version:\s*"?([0-9.]+)"?')
PREVIOUS_VERSION = _pinned("scripts/build/k8s-releases.env", r'^K8S_PREV_VERSION="v([0-9.]+)"')
# the version site() pins (-e gpuops_kubernetes_version): set by the ``lab`` fixture, then by the upgrade
LAB = {"version": CURRENT_VERSION}


def host_sysctls():
    return {k: Path("/proc/sys", k).read_text().strip() for k in HOST_SYSCTLS if Path("/proc/sys", k).exists()}


def run(argv, timeout=600, check=True, env=None, input_text=None):
    kw = {"input": input_text} if input_text is not None else {}
    if input_text is None:
        with private_stdin() as stdin:
            proc = subprocess.run(argv, stdin=stdin, capture_output=True, text=True, timeout=timeout,
                                  cwd=str(REPO), env=env, check=False)
    else:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=str(REPO), env=env,
                              check=False, **kw)
    if check:
        assert proc.returncode == 0, "%s -> rc %d\n%s\n%s" % (" ".join(argv), proc.returncode,
                                                               proc.stdout[-4000:], proc.stderr[-4000:])
    return proc


def kubectl(*args, timeout=120, check=True, input_text=None):
    return run([KUBECTL, "--kubeconfig", str(KUBECONFIG), *args], timeout=timeout, check=check,
               input_text=input_text)


def wait_pod_ready(ns, pod, timeout=120):
    """kubectl wait until pod ns/pod is Ready; when it is not, print its description (events) and the
    nodes, then fail naming it."""
    proc = kubectl("wait", "--for=condition=Ready", "pod/%s" % pod, "-n", ns, "--timeout=%ds" % timeout,
                   timeout=timeout + 30, check=False)
    if proc.returncode != 0:
        print(kubectl("-n", ns, "describe", "pod", pod, check=False).stdout[-4000:])
        print(kubectl("get", "nodes", "-o", "wide", check=False).stdout)
    assert proc.returncode == 0, "pod %s/%s not Ready in %d s: %s" % (ns, pod, timeout, proc.stderr)


def fake_gpus(node, count):
    """FAKE GPU advertisement: what the NVIDIA device plugin would publish, as a node status patch."""
    patch = [{"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": str(count)},
             {"op": "add", "path": "/status/allocatable/nvidia.com~1gpu", "value": str(count)}]
    kubectl("patch", "node", node, "--subresource=status", "--type=json", "-p", json.dumps(patch))


def node_exec(node, *argv, timeout=60, check=True):
    return run(["podman", "exec", node, *argv], timeout=timeout, check=check)


def ansible_env(**extra):
    """The environment of every ansible-playbook run on the lab: the repo's ansible.cfg and what
    scripts/lab-ansible/lab-env exports (the lab's Mitogen strategy unless GPUOPS_LAB_MITOGEN=0, the
    lab's fact cache; docs/lab.md), the same settings scripts/site-lab uses."""
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), **extra)
    env.setdefault("GPUOPS_REPO", str(REPO))
    env.setdefault("GPUOPS_CACHE", str(CACHE))
    out = run(["bash", "-c", 'source "$GPUOPS_REPO/scripts/lab-ansible/lab-env" && env -0'], env=env).stdout
    env.update(line.split("=", 1) for line in out.split("\0") if line.startswith("ANSIBLE_"))
    return env


# CPU seconds (user + system) of each playbook run's processes on this host, by log name: the
# controller's share of a run (ansible-playbook, its workers, Mitogen's and podman's processes)
PLAYBOOK_CPU = {}


def playbook(path, log_name, *extra, timeout=1800):
    """ansible-playbook PATH on the lab with profile_tasks; the log goes to LOGS/LOG_NAME.log.
    Returns (completed process, wall seconds); PLAYBOOK_CPU[LOG_NAME] holds the run's CPU seconds."""
    env = ansible_env(ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks", PROFILE_TASKS_TASK_OUTPUT_LIMIT="30")
    t0, c0 = time.monotonic(), os.times()
    proc = run(["ansible-playbook", "-i", "inventories/lab/hosts.yml", path, *extra], timeout=timeout, check=False, env=env)
    wall, c1 = time.monotonic() - t0, os.times()
    PLAYBOOK_CPU[log_name] = (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
    LOGS.mkdir(parents=True, exist_ok=True)
    (LOGS / ("%s.log" % log_name)).write_text(proc.stdout + proc.stderr)
    return proc, wall


def lab_playbook(path, log_name, *extra):
    """Run a playbook of the collection on the lab at the lab's Kubernetes version (``LAB["version"]``);
    it must pass. Returns (wall seconds, {host: (ok, changed, unreachable, failed)}, stdout)."""
    if LAB["version"] != CURRENT_VERSION:
        extra = ("-e", "gpuops_kubernetes_version=%s" % LAB["version"], *extra)
    proc, wall = playbook(path, log_name, *extra)
    recap = {m[0]: tuple(int(x) for x in m[1:]) for m in RECAP.findall(proc.stdout)}
    assert proc.returncode == 0, "%s (%s) failed, log %s:\n%s" % (path, log_name, LOGS / ("%s.log" % log_name),
                                                                 proc.stdout[-6000:])
    return wall, recap, proc.stdout


def site(name, *extra):
    """Run playbooks/site.yml on the lab (log site-NAME.log); see lab_playbook."""
    return lab_playbook("playbooks/site.yml", "site-%s" % name, *extra)


def cluster_version():
    """The running cluster's Kubernetes version (kube-system/kubeadm-config), without the "v"."""
    cm = json.loads(kubectl("-n", "kube-system", "get", "configmap", "kubeadm-config", "-o", "json").stdout)
    m = re.search(r"^kubernetesVersion:\s*v?([0-9.]+)", cm["data"]["ClusterConfiguration"], re.M)
    return m.group(1) if m else ""


def lab_exists(running=False):
    """Any container carrying the lab node label (``running``: only a running one)."""
    status = ["--filter", "status=running"] if running else ["-a"]
    proc = run(["podman", "ps", "-q", "--filter", "label=io.gpuops.kind=lab-node", *status], check=False, timeout=60)
    return bool(proc.stdout.strip())


def lab_running():
    proc = run(["scripts/lab", "status"], check=False, timeout=120)
    return proc.returncode == 0 and KUBECONFIG.exists()


def record(line):
    """Print a measured figure and append it to $GPUOPS_CACHE/lab/logs/figures.txt (docs/measurements.md)."""
    print(line)
    LOGS.mkdir(parents=True, exist_ok=True)
    with open(LOGS / "figures.txt", "a", encoding="utf-8") as fh:
        fh.write("%s %s\n" % (time.strftime("%Y-%m-%d %H:%M:%S"), line))


# etcd's own HTTP API through curl on a control plane, with the API server's etcd client certificate
# (a fresh lab has no etcdctl: the etcd_backup role installs it).
ETCD_CURL = ["curl", "-sS", "--max-time", "5", "--cacert", "/etc/kubernetes/pki/etcd/ca.crt",
             "--cert", "/etc/kubernetes/pki/apiserver-etcd-client.crt",
             "--key", "/etc/kubernetes/pki/apiserver-etcd-client.key"]


def etcd_api(node, path, body=None, check=True):
    """One call of etcd's HTTP API on ``node``'s own member (POST with a JSON ``body``). ``check=False``:
    None when the member does not answer or answers something that is not JSON."""
    argv = ETCD_CURL + (["-X", "POST", "-d", json.dumps(body)] if body is not None else [])
    proc = node_exec(node, *argv, "https://%s:2379%s" % (IPS[node], path), check=check)
    if check:
        return json.loads(proc.stdout)
    try:
        return json.loads(proc.stdout) if proc.returncode == 0 else None
    except ValueError:
        return None
