"""The cluster tier: the lab (scripts/lab up) plus playbooks/site.yml make a real kubeadm cluster, and
these checks hold on it (issue 9). One bring-up per session (the ``lab`` fixture); the tests run in
file order and share it. ``GPUOPS_LAB_REUSE=1`` reuses a running lab and leaves it running.

Run: ``source scripts/env.sh; python -m pytest tests/cluster -m cluster -x``. Logs of every
ansible-playbook run (with profile_tasks) go to $GPUOPS_CACHE/lab/logs/."""

import base64
import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.testbed.common import private_stdin

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("GPUOPS_CACHE", str(Path.home() / ".cache" / "gpuops")))
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


def node_exec(node, *argv, timeout=60, check=True):
    return run(["podman", "exec", node, *argv], timeout=timeout, check=check)


def site(name, *extra):
    """Run playbooks/site.yml on the lab; returns (wall seconds, {host: (ok, changed, unreachable, failed)}, stdout)."""
    env = dict(os.environ, ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks", ANSIBLE_NOCOLOR="1",
               ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), PROFILE_TASKS_TASK_OUTPUT_LIMIT="30")
    t0 = time.monotonic()
    proc = run(["ansible-playbook", "-i", "inventories/lab/hosts.yml", "playbooks/site.yml", *extra],
               timeout=1800, check=False, env=env)
    wall = time.monotonic() - t0
    LOGS.mkdir(parents=True, exist_ok=True)
    (LOGS / ("site-%s.log" % name)).write_text(proc.stdout + proc.stderr)
    recap = {m[0]: tuple(int(x) for x in m[1:]) for m in RECAP.findall(proc.stdout)}
    assert proc.returncode == 0, "site.yml (%s) failed, log %s:\n%s" % (name, LOGS / ("site-%s.log" % name),
                                                                       proc.stdout[-6000:])
    return wall, recap, proc.stdout


def lab_running():
    proc = run(["scripts/lab", "status"], check=False, timeout=120)
    return proc.returncode == 0 and KUBECONFIG.exists()


@pytest.fixture(scope="session")
def lab():
    """The lab with the cluster built by site.yml (first run measured); scripts/lab down at the end
    unless a running lab was reused."""
    before = host_sysctls()
    reuse = os.environ.get("GPUOPS_LAB_REUSE") == "1" and lab_running()
    # the registry's log outlives it (scripts/registry keeps it): only this session's lines count
    info = {"host_sysctls_before": before, "reused": reuse,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) if not reuse else ""}
    try:
        if not reuse:
            t0 = time.monotonic()
            run(["scripts/lab", "up"], timeout=1800)
            info["lab_up"] = time.monotonic() - t0
        info["first"] = site("first")
        yield info
    finally:
        if not reuse:
            run(["scripts/lab", "down"], timeout=600, check=False)


@pytest.fixture(scope="module")
def workload(lab):
    """busybox web servers on two different workers, a client, and a ClusterIP Service (namespace of its own)."""
    ns = "gpuops-test-" + uuid.uuid4().hex[:6]
    kubectl("create", "namespace", ns)

    def pod(name, node, labels, cmd):
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels},
                "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                         "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                         "containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", cmd]}]}}
    web = "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"
    objs = [pod("web-a", "lab-cpu1", {"app": "web"}, web), pod("web-b", "lab-gpu1", {"app": "web"}, web),
            pod("client", "lab-gpu2", {"app": "client"}, "exec sleep 3600"),
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns},
             "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}]
    kubectl("apply", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
    kubectl("-n", ns, "wait", "--for=condition=Ready", "pod", "--all", "--timeout=180s", timeout=200)
    pods = json.loads(kubectl("-n", ns, "get", "pods", "-o", "json").stdout)["items"]
    ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods}
    yield {"ns": ns, "ips": ips}
    kubectl("delete", "namespace", ns, "--wait=false", check=False)


def fetch(ns, url, timeout=5):
    """wget from the client pod; returns (rc, output). The time limit is busybox's ``timeout``: the
    test image's wget (Debian busybox-static 1.35.0) dies with SIGSEGV (exit 139) on ``-T``."""
    proc = kubectl("-n", ns, "exec", "client", "--", "timeout", str(timeout), "wget", "-q", "-O", "-", url,
                   check=False, timeout=timeout + 30)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def test_site_run_builds_the_cluster_and_the_summary_shows_every_layer(lab):
    wall, recap, out = lab["first"]
    assert set(NODES) <= set(recap), recap
    assert all(r[2] == 0 and r[3] == 0 for r in recap.values()), recap
    for layer in ["container_runtime", "kubernetes_packages"]:
        assert re.search(r"%s: ran on all 6 hosts" % layer, out), out[-3000:]
    assert "kubeadm_control_plane: ran on all 3 kube_control_plane hosts" in out
    assert "kubeadm_node: ran on all 3 kube_node hosts" in out
    assert "cni: ran on all 3 kube_control_plane hosts" in out
    assert re.search(r"network: SKIPPED on all 6 hosts", out) and re.search(r"storage: SKIPPED on all 6 hosts", out)
    # the kubeconfig the role fetched points at the VIP and is private
    assert "server: https://%s:6443" % VIP in KUBECONFIG.read_text()
    assert KUBECONFIG.stat().st_mode & 0o077 == 0


def test_every_node_is_ready_with_its_labels_and_taints(lab):
    items = {n["metadata"]["name"]: n for n in json.loads(kubectl("get", "nodes", "-o", "json").stdout)["items"]}
    assert sorted(items) == sorted(NODES)
    for name, node in items.items():
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"][0]
        assert ready["status"] == "True", (name, ready)
        labels = node["metadata"]["labels"]
        assert labels["topology.kubernetes.io/zone"] == ZONES[name]
        assert labels["gpuops.io/rack"] == "lab-r1"
        taints = {(t["key"], t.get("value", ""), t["effect"]) for t in node["spec"].get("taints", [])}
        gpu_taint = ("nvidia.com/gpu", "present", "NoSchedule")
        if name in GPU:
            assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3" and labels["nvidia.com/gpu.count"] == "8"
            assert gpu_taint in taints, (name, taints)
        else:
            assert "nvidia.com/gpu.product" not in labels and gpu_taint not in taints, (name, labels, taints)
        if name in CONTROL:
            assert ("node-role.kubernetes.io/control-plane", "", "NoSchedule") in taints
        assert [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"] == [IPS[name]]


def test_static_pods_run_on_all_three_control_planes(lab):
    pods = json.loads(kubectl("-n", "kube-system", "get", "pods", "-o", "json").stdout)["items"]
    running = {p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Running"
               and all(c.get("ready") for c in p["status"].get("containerStatuses", []))}
    for cp in CONTROL:
        for comp in ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]:
            assert "%s-%s" % (comp, cp) in running, ("%s-%s" % (comp, cp), sorted(running))


def _etcd(node, path, body=None):
    pki = "/etc/kubernetes/pki"
    argv = ["curl", "-sS", "--max-time", "5", "--cacert", pki + "/etcd/ca.crt", "--cert",
            pki + "/apiserver-etcd-client.crt", "--key", pki + "/apiserver-etcd-client.key"]
    if body is not None:
        argv += ["-X", "POST", "-d", json.dumps(body)]
    return json.loads(node_exec(node, *argv, "https://%s:2379%s" % (IPS[node], path)).stdout)


def test_etcd_has_three_healthy_members(lab):
    members = _etcd("lab-cp1", "/v3/cluster/member/list", {})["members"]
    assert sorted(m["name"] for m in members) == CONTROL, members
    for cp in CONTROL:
        assert _etcd(cp, "/health")["health"] == "true", cp


def test_secrets_are_encrypted_at_rest(lab):
    ns = "default"
    name = "gpuops-enc-" + uuid.uuid4().hex[:6]
    kubectl("-n", ns, "create", "secret", "generic", name, "--from-literal=k=plaintext-marker-%s" % name)
    try:
        key = "/registry/secrets/%s/%s" % (ns, name)
        kv = _etcd("lab-cp1", "/v3/kv/range", {"key": base64.b64encode(key.encode()).decode()})["kvs"][0]
        value = base64.b64decode(kv["value"])
        assert value.startswith(b"k8s:enc:secretbox:v1:gpuops-1:"), value[:40]
        assert b"plaintext-marker" not in value
    finally:
        kubectl("-n", ns, "delete", "secret", name, check=False)


def test_coredns_resolves(workload):
    rc, out = 1, ""
    for _ in range(10):
        proc = kubectl("-n", workload["ns"], "exec", "client", "--", "nslookup", "kubernetes.default.svc.cluster.local",
                       check=False)
        rc, out = proc.returncode, proc.stdout + proc.stderr
        if rc == 0:
            break
        time.sleep(2)
    assert rc == 0 and "10.96.0.1" in out, out


def test_pod_to_pod_across_nodes(workload):
    for name, node in [("web-a", "lab-cpu1"), ("web-b", "lab-gpu1")]:
        rc, out = fetch(workload["ns"], "http://%s:8080/" % workload["ips"][name])
        assert rc == 0 and out == "hello-from-%s" % name, (name, node, rc, out)


def test_clusterip_service_reaches_both_backends(workload):
    seen = set()
    for _ in range(20):
        rc, out = fetch(workload["ns"], "http://web.%s.svc.cluster.local/" % workload["ns"])
        assert rc == 0, out
        seen.add(out)
        if len(seen) == 2:
            break
    assert seen == {"hello-from-web-a", "hello-from-web-b"}, seen


def test_network_policy_denies_then_allows(workload):
    ns, target = workload["ns"], "http://%s:8080/" % workload["ips"]["web-a"]
    assert fetch(ns, target)[0] == 0
    deny = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "web-deny", "namespace": ns},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]}}
    kubectl("apply", "-f", "-", input_text=json.dumps(deny))
    denied = False
    for _ in range(15):  # kube-router applies policies within seconds
        rc, out = fetch(ns, target, timeout=3)
        if rc != 0:
            denied = True
            break
        time.sleep(2)
    assert denied, "the NetworkPolicy did not block client -> web-a: " + out
    allow = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": "web-allow-client", "namespace": ns},
             "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                      "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                                   "ports": [{"port": 8080, "protocol": "TCP"}]}]}}
    kubectl("apply", "-f", "-", input_text=json.dumps(allow))
    allowed = False
    for _ in range(15):
        rc, out = fetch(ns, target, timeout=3)
        if rc == 0 and out == "hello-from-web-a":
            allowed = True
            break
        time.sleep(2)
    assert allowed, "an allowing NetworkPolicy did not let client -> web-a through: " + out
    kubectl("-n", ns, "delete", "networkpolicy", "web-deny", "web-allow-client")


def _vip_holder():
    for cp in CONTROL:
        if " %s/" % VIP in node_exec(cp, "ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout:
            return cp
    return None


def _livez(url):
    return run(["curl", "-sk", "--max-time", "3", url], check=False, timeout=20).stdout.strip() == "ok"


def test_vip_answers_after_the_api_server_holding_it_stops(lab):
    holder = _vip_holder()
    assert holder, "no control plane holds the VIP %s" % VIP
    manifest = "/etc/kubernetes/manifests/kube-apiserver.yaml"
    node_exec(holder, "mv", manifest, "/root/kube-apiserver.yaml.gpuops-test")
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            new = _vip_holder()
            if new and new != holder and _livez("https://%s:6443/livez" % VIP):
                break
            time.sleep(1)
        else:
            pytest.fail("the VIP did not move away from %s within 90 s (holder now %s)" % (holder, _vip_holder()))
        assert not _livez("https://%s:6443/livez" % IPS[holder])
        kubectl("get", "nodes")  # the API through the VIP (admin.conf) answers
    finally:
        node_exec(holder, "mv", "/root/kube-apiserver.yaml.gpuops-test", manifest)
    deadline = time.monotonic() + 180
    while not _livez("https://%s:6443/livez" % IPS[holder]):
        assert time.monotonic() < deadline, "the API server of %s did not come back" % holder
        time.sleep(2)


def test_images_came_through_the_site_registry(lab):
    since = ["--since", lab["since"] + "Z"] if lab["since"] else []
    proc = run(["scripts/registry", "log", "gpuops-lab", *since], timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    nodes = "|".join(re.escape(ip) for ip in IPS.values())
    for repo in ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd", "kube-proxy", "pause",
                 "coredns/coredns", "cloudnativelabs/kube-router", "library/busybox"]:
        # a request from a node (the pushes come from the host, 10.250.0.1)
        pulled = re.compile(r'(%s)\b.*"(GET|HEAD) /v2/%s/manifests/[^ ]+ HTTP' % (nodes, re.escape(repo)))
        assert any(pulled.search(line) for line in lines), (repo, lines[-20:])
    # containerd knows them by their upstream names (the mirror is transparent)
    images = node_exec("lab-cp2", "ctr", "-n", "k8s.io", "images", "ls", "-q").stdout
    assert "registry.k8s.io/kube-apiserver:v1.36.3" in images and "docker.io/cloudnativelabs/kube-router" in images


def _fingerprint():
    """What a converged node is: checksums of the files the layers manage, per node."""
    out = {}
    for n in NODES:
        out[n] = node_exec(n, "sh", "-c", "find /etc/kubernetes /etc/containerd /etc/keepalived /etc/systemd/system "
                           "/var/lib/kubelet/config.yaml -type f 2>/dev/null | sort | xargs -r md5sum").stdout
    return out


def test_second_site_run_changes_nothing_and_is_fast(lab):
    first_wall = lab["first"][0]
    before = _fingerprint()
    wall, recap, _ = site("second")
    assert set(NODES) <= set(recap)
    changed = {h: r[1] for h, r in recap.items() if r[1] != 0}
    assert not changed, "second site.yml run changed %s (log %s)" % (changed, LOGS / "site-second.log")
    assert _fingerprint() == before
    print("site.yml first run %.0f s, second run %.0f s (%.2fx)" % (first_wall, wall, wall / first_wall))
    if not lab["reused"]:
        assert wall <= 0.25 * first_wall, "second run %.0f s > 0.25 x first run %.0f s" % (wall, first_wall)


def _node_meta():
    items = json.loads(kubectl("get", "nodes", "-o", "json").stdout)["items"]
    return {n["metadata"]["name"]: (n["metadata"]["labels"], n["spec"].get("taints", [])) for n in items}


def test_check_mode_changes_nothing(lab):
    before, meta = _fingerprint(), _node_meta()
    _, recap, _ = site("check", "--check")
    assert set(NODES) <= set(recap)
    assert all(r[3] == 0 for r in recap.values()), recap
    changed = {h: r[1] for h, r in recap.items() if r[1] != 0}
    assert not changed, "check mode on the converged lab predicts changes %s (log %s)" % (changed, LOGS / "site-check.log")
    assert _fingerprint() == before
    assert _node_meta() == meta


def test_host_kernel_settings_are_unchanged(lab):
    assert host_sysctls() == lab["host_sysctls_before"]
    # and the nodes really see the kubelet's values (the shield took the writes)
    assert node_exec("lab-cp1", "cat", "/proc/sys/vm/overcommit_memory").stdout.strip() == "1"
