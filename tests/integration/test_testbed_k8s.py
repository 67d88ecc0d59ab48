"""The Kubernetes test bed itself: a real control plane (etcd, kube-apiserver, controller-manager,
scheduler) with kwok playing the kubelets of FAKE GPU nodes (no GPU hardware here).

Everything below talks to the real API server: scheduling, RBAC, TokenRequest and the Istio CRD
schema are upstream code, only the nodes and what "runs" on them are simulated.
"""

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.testbed import common as testbed_common
from tests.testbed.common import REPO, wait_for

pytestmark = pytest.mark.integration

kubernetes = pytest.importorskip("kubernetes")
from kubernetes import client  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402

GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"


@pytest.fixture
def api(k8s):
    with k8s.api_client() as a:
        yield a


def _message(exc):
    """The Status message of an API error (the body is JSON, quotes are escaped in it)."""
    return json.loads(exc.body)["message"]


def _settles_to(call, status):
    """Poll ``call`` until it answers ``status`` (200 = no error): RBAC changes reach the API
    server's authorizer through an informer, a few milliseconds after the write."""
    def check():
        try:
            call()
        except ApiException as exc:
            return exc.status == status
        return status == 200
    wait_for(check, 30, f"API answer {status}")


def _deployment(name, replicas, gpus=1):
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {"nvidia.com/gpu.product": GPU_PRODUCT},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                     "effect": "NoSchedule"}],
                    "containers": [{
                        "name": "torchserve", "image": "pytorch/torchserve:0.12.0-gpu",
                        "ports": [{"containerPort": 8080}],
                        "resources": {"limits": {"nvidia.com/gpu": str(gpus)},
                                      "requests": {"cpu": "1", "memory": "1Gi"}},
                    }],
                },
            },
        },
    }


def _virtual_service(name, weight_a=90, weight_b=10, extra_route_field=None):
    route_a = {"destination": {"host": "resnet", "subset": "stable"}, "weight": weight_a}
    if extra_route_field:
        route_a.update(extra_route_field)
    return {
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": name},
        "spec": {
            "hosts": ["resnet"],
            "http": [{"name": "primary", "route": [
                route_a,
                {"destination": {"host": "resnet", "subset": "canary"}, "weight": weight_b},
            ]}],
        },
    }


def test_control_plane_reports_pinned_versions_and_measurements(k8s):
    info = k8s.info
    assert info["versions"]["kube-apiserver"] == "Kubernetes v1.36.3"
    assert info["versions"]["kube-controller-manager"] == "Kubernetes v1.36.3"
    assert "3.6." in info["versions"]["etcd"]
    assert info["server"].startswith("https://127.0.0.1:")
    assert Path(info["ca_file"]).is_file() and Path(info["kubeconfig"]).is_file()
    assert info["rss_kib"] > 0 and info["startup_seconds"] > 0
    # the API server really serves TLS with our CA (not just any 200 from anything)
    ctx = ssl.create_default_context(cafile=info["ca_file"])
    with urllib.request.urlopen(info["server"] + "/version", context=ctx, timeout=10) as r:
        assert json.load(r)["gitVersion"] == "v1.36.3"
    print("k8s test bed:", json.dumps({k: info[k] for k in (
        "startup_seconds", "startup_phases", "rss_kib", "rss_kib_per_process", "versions")}))


def test_fake_gpu_nodes_report_capacity_and_zones(k8s, api):
    nodes = client.CoreV1Api(api).list_node(label_selector="type=kwok").items
    names = sorted(n.metadata.name for n in nodes)
    assert names[:3] == ["gpu-node-0", "gpu-node-1", "gpu-node-2"]
    zones = set()
    for n in nodes:
        assert n.status.capacity["nvidia.com/gpu"] == "8", n.metadata.name
        assert n.status.allocatable["nvidia.com/gpu"] == "8", n.metadata.name
        assert n.metadata.labels["nvidia.com/gpu.product"] == GPU_PRODUCT
        ready = [c for c in n.status.conditions if c.type == "Ready"]
        assert ready and ready[0].status == "True", f"{n.metadata.name} not Ready: {ready}"
        zones.add(n.metadata.labels["topology.kubernetes.io/zone"])
    assert {"zone-a", "zone-b"} <= zones


def test_fake_nodes_heartbeat_through_renewed_leases(k8s, api):
    """Like a kubelet, kwok holds a Lease per node in kube-node-lease and renews it. Without the
    heartbeat the node lifecycle controller declared every node NotReady once per grace period and
    marked all their pods NotReady for good: a rollback in CI waited 300 s on 0 available pods."""
    from tests.testbed.k8s import NODE_LEASE_SECONDS
    coord = client.CoordinationV1Api(api)
    nodes = [n.metadata.name for n in client.CoreV1Api(api).list_node(label_selector="type=kwok").items]

    def renewals():
        leases = {le.metadata.name: le for le in coord.list_namespaced_lease("kube-node-lease").items}
        missing = sorted(set(nodes) - set(leases))
        assert not missing, f"no node Lease for {missing} (kwok --node-lease-duration-seconds)"
        for name in nodes:
            assert leases[name].spec.lease_duration_seconds == NODE_LEASE_SECONDS, leases[name].spec
        return {name: leases[name].spec.renew_time for name in nodes}

    first = renewals()
    deadline = time.monotonic() + NODE_LEASE_SECONDS
    while time.monotonic() < deadline:
        later = renewals()
        if all(later[n] > first[n] for n in nodes):
            return
        time.sleep(1)
    raise AssertionError(f"node leases not renewed within {NODE_LEASE_SECONDS} s: {first} -> {later}")


def test_deployment_rolls_out_on_fake_gpu_nodes(k8s, api):
    ns = k8s.fresh_namespace("deploy")
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.create_namespaced_deployment(ns, _deployment("resnet", 3))

    def available():
        st = apps.read_namespaced_deployment_status("resnet", ns).status
        return st.available_replicas == 3 and st.ready_replicas == 3
    wait_for(available, 120, "Deployment resnet availableReplicas=3", procs=k8s.procs)

    pods = core.list_namespaced_pod(ns, label_selector="app=resnet").items
    assert len(pods) == 3
    gpu_nodes = set(k8s.info["gpu_nodes"])
    for p in pods:
        assert p.status.phase == "Running"
        assert p.spec.node_name in gpu_nodes, f"{p.metadata.name} on {p.spec.node_name}"
        assert p.status.pod_ip, f"{p.metadata.name} has no pod IP"
        # the ReplicaSet controller really owns the pods
        assert p.metadata.owner_references[0].kind == "ReplicaSet"


def test_scheduler_respects_gpu_capacity(k8s, api):
    """A pod asking for more GPUs than any node has stays Pending: the scheduler counts them."""
    ns = k8s.fresh_namespace("toobig")
    core = client.CoreV1Api(api)
    pod = _deployment("greedy", 1, gpus=9)["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "greedy"}, "spec": pod["spec"]}
    core.create_namespaced_pod(ns, pod)

    def unschedulable():
        conds = core.read_namespaced_pod_status("greedy", ns).status.conditions or []
        return any(c.type == "PodScheduled" and c.status == "False"
                   and c.reason == "Unschedulable" and "nvidia.com/gpu" in (c.message or "")
                   for c in conds)
    wait_for(unschedulable, 60, "PodScheduled=False Insufficient nvidia.com/gpu")
    assert core.read_namespaced_pod("greedy", ns).spec.node_name is None


def test_istio_crd_schema_rejects_bad_virtualservice(k8s, api):
    ns = k8s.fresh_namespace("vs")
    co = client.CustomObjectsApi(api)
    args = ("networking.istio.io", "v1", ns, "virtualservices")

    with pytest.raises(ApiException) as bad_type:
        co.create_namespaced_custom_object(*args, _virtual_service("bad-weight", weight_a="ninety"))
    assert bad_type.value.status == 422
    assert "spec.http[0].route[0].weight" in _message(bad_type.value)

    with pytest.raises(ApiException) as unknown:
        co.create_namespaced_custom_object(
            *args, _virtual_service("bad-field", extra_route_field={"percent": 90}),
            field_validation="Strict")
    assert unknown.value.status == 400
    assert 'unknown field "spec.http[0].route[0].percent"' in _message(unknown.value)

    created = co.create_namespaced_custom_object(*args, _virtual_service("good"),
                                                 field_validation="Strict")
    assert created["metadata"]["uid"]
    got = co.get_namespaced_custom_object(*args, "good")
    assert [r["weight"] for r in got["spec"]["http"][0]["route"]] == [90, 10]


def test_restricted_service_account_is_read_only_on_virtualservices(k8s):
    ns = "gpuops-test"
    with k8s.api_client(k8s.info["restricted_kubeconfig"]) as ro:
        co = client.CustomObjectsApi(ro)
        listed = co.list_namespaced_custom_object("networking.istio.io", "v1", ns,
                                                  "virtualservices")
        assert listed["kind"] == "VirtualServiceList"
        with pytest.raises(ApiException) as write:
            co.create_namespaced_custom_object("networking.istio.io", "v1", ns, "virtualservices",
                                               _virtual_service("forbidden"))
        assert write.value.status == 403
        assert "system:serviceaccount:gpuops-test:gpuops-readonly" in _message(write.value)
        with pytest.raises(ApiException) as other:
            client.CoreV1Api(ro).list_namespaced_secret(ns)
        assert other.value.status == 403


def test_make_sa_kubeconfig_grants_exactly_the_rules(k8s, api):
    ns = k8s.fresh_namespace("rbac")
    path = k8s.make_sa_kubeconfig(ns, "cm-writer", [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "get"]}])
    with k8s.api_client(path) as sa:
        core = client.CoreV1Api(sa)
        _settles_to(lambda: core.create_namespaced_config_map(
            ns, {"metadata": {"name": "probe"}}, dry_run="All"), 200)
        core.create_namespaced_config_map(ns, {"metadata": {"name": "flag"}, "data": {"a": "1"}})
        assert core.read_namespaced_config_map("flag", ns).data == {"a": "1"}
        with pytest.raises(ApiException) as denied:
            core.delete_namespaced_config_map("flag", ns)
        assert denied.value.status == 403
        # a second call replaces the Role: the old "create" right is gone
        path2 = k8s.make_sa_kubeconfig(ns, "cm-writer", [
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}])
    with k8s.api_client(path2) as sa2:
        _settles_to(lambda: client.CoreV1Api(sa2).create_namespaced_config_map(
            ns, {"metadata": {"name": "x"}}, dry_run="All"), 403)
        assert client.CoreV1Api(sa2).read_namespaced_config_map("flag", ns).data == {"a": "1"}


def test_make_sa_kubeconfig_cluster_rules(k8s):
    ns = k8s.fresh_namespace("crbac")
    node_reader = [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}]
    path = k8s.make_sa_kubeconfig(ns, "node-reader", [], cluster_rules=node_reader)
    with k8s.api_client(path) as sa:
        _settles_to(lambda: client.CoreV1Api(sa).list_node(), 200)
        assert client.CoreV1Api(sa).list_node(label_selector="type=kwok").items
    # without cluster_rules the ClusterRole(Binding) from the first call is removed again
    path = k8s.make_sa_kubeconfig(ns, "node-reader", [])
    with k8s.api_client(path) as sa:
        _settles_to(lambda: client.CoreV1Api(sa).list_node(), 403)


def test_add_gpu_nodes_in_a_new_zone(k8s, api):
    names = k8s.add_gpu_nodes(1, zone="zone-c", gpus=4, prefix="gpu-extra")
    node = client.CoreV1Api(api).read_node(names[0])
    assert node.metadata.labels["topology.kubernetes.io/zone"] == "zone-c"
    assert node.status.allocatable["nvidia.com/gpu"] == "4"


# a second kube-apiserver test bed (13 inotify instances beside the session's 13): in the nodes
# stream, which ends before the lab cluster (~98 of the host's 128) starts (scripts/test all)
@pytest.mark.nodes
@pytest.mark.slow
def test_cli_up_and_down_by_pid(tmp_path):
    """`scripts/testbed up k8s` leaves a working cluster behind; `down k8s` stops it by PID."""
    env = dict(os.environ, GPUOPS_TESTBED_DIR=str(tmp_path))
    cmd = [sys.executable, "-m", "tests.testbed.cli"]
    up = subprocess.run(cmd + ["up", "k8s", "--lifetime", "600"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
    state_file = tmp_path / "cli-k8s" / "state.json"
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        state = json.loads(state_file.read_text())
        pids = [p["pid"] for p in state["procs"]]
        assert [p["name"] for p in state["procs"]] == [
            "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"]
        ctx = ssl.create_default_context(cafile=state["info"]["ca_file"])
        with urllib.request.urlopen(state["info"]["server"] + "/readyz", context=ctx,
                                    timeout=10) as r:
            assert r.status == 200
    finally:
        down = subprocess.run(cmd + ["down", "k8s"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)
    assert down.stdout.strip() == "stopped", down.stdout + down.stderr
    assert not state_file.exists()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)


def test_missing_binary_is_a_clear_error(tmp_path, monkeypatch):
    """Without the built binaries the test bed says how to build them instead of a traceback."""
    from tests.testbed import k8s as k8s_mod
    monkeypatch.setattr(testbed_common, "BIN", tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    c = k8s_mod.KubeCluster(workdir=tmp_path / "wd", lifetime=30)
    with pytest.raises(testbed_common.TestbedError, match="scripts/build/k8s.sh"):
        c.start()
    assert not c.procs
