"""playbooks/upgrade.yml on the lab cluster (issue 12): the lab came up at the previous minor
(tests/cluster/conftest.py, scripts/build/k8s-prev.sh) and is upgraded to the inventory's version here,
right after test_cluster.py's checks and before the day-2 and platform modules, which then run on the
upgraded cluster. One upgrade, four runs, each a failure drill of the issue:

1. a control plane stopped in the middle: a post-upgrade hook on lab-cp1 (tests/cluster/files/)
   freezes lab-cp3 (podman pause: none of its processes runs); the run stops before lab-cp2 changes
   (kubeadm_upgrade's etcd gate: upgrading lab-cp2 would restart its etcd member with another one
   down), naming lab-cp3, and the API keeps answering through the VIP. lab-cp3 is resumed;
2. a worker that will not drain: a PodDisruptionBudget that allows no disruption protects a pod pinned
   to the first worker. The re-run skips lab-cp1, upgrades lab-cp2 and lab-cp3, then the first
   worker's batch stops naming the node and the budget; the node is uncordoned and no other worker is
   touched;
3. the budget still there, the re-run resumes with kubeadm_upgrade_force_past_pdb=true (the named flag
   that forces past a budget: the drain deletes pods instead of evicting them): the control planes are
   skipped, the workers upgraded, the pinned pod deleted, its budget left in place.

Between 2 and 3, run 2b: a worker whose pods do not go in time (a pod that ignores SIGTERM for its 30 s
grace, a drain timeout of 8 s, forced past the budget so only that pod holds the drain): the batch
stops naming the node and the timeout, the node is uncordoned, no other worker touched.

A pre-upgrade hook (tests/cluster/files/upgrade-hook-record.yml) in all the runs writes down, on each
node, its kubelet version and cordon as the hook runs: every node must have run it once, drained and
still at the previous version.

During all the runs a load loop on lab-cp1 (in the node's own network namespace, so no drain stops
it) asks, every 0.2 s, a ClusterIP Service backed by a Deployment of three web servers whose own budget
keeps two available (no request may fail) and the API through the VIP.

Run alone: ``GPUOPS_LAB_KEEP=1 python -m pytest tests/cluster -m cluster -k "site_run or upgrade"``."""

import json
import re
import subprocess
import time

import pytest

from tests.cluster.lab import (BUSYBOX, CONTROL, CPU, CURRENT_VERSION, GPU, LAB, LOGS, NODES, PREVIOUS_VERSION,
                               REPO, VIP, cluster_version, etcd_api, host_sysctls, kubectl, node_exec, playbook,
                               record, run)
from tests.testbed.common import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(3600)]

NS = "gpuops-upgrade"
WORKERS = GPU + CPU                 # the inventory's order: the first batch is lab-gpu1 (serial 20% of 3 = 1)
BLOCKED = WORKERS[0]
LOADER = CONTROL[0]
STOPPED = CONTROL[2]                # the control plane stopped by the hook on CONTROL[0]
STOP_FILE = "/tmp/gpuops-upgrade-load.stop"
HOOK = REPO / "tests" / "cluster" / "files" / "upgrade-hook-stop-node.yml"
PRE_HOOK = REPO / "tests" / "cluster" / "files" / "upgrade-hook-record.yml"    # every run: what a node is at its hook
PRE_HOOK_MARK = "/var/tmp/gpuops-upgrade-pre-hook"
PRE_HOOKS = json.dumps({"kubeadm_upgrade_pre_hooks": [str(PRE_HOOK)]})
TOLERATE_GPU = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


# One line per round: "<epoch> <web Service code> <API code through the VIP>" (curl's error text
# instead of a code when the request failed).
LOAD_LOOP = ("while [ ! -e %(stop)s ]; do "
             "w=$(curl -sS -m 3 -o /dev/null -w '%%{http_code}' %(web)s 2>&1 | tr ' \\n' '__'); "
             "a=$(curl -sSk -m 3 -o /dev/null -w '%%{http_code}' %(api)s 2>&1 | tr ' \\n' '__'); "
             "echo \"$(date +%%s) $w $a\"; sleep 0.2; done")


def _objects():
    web_pod = {
        "metadata": {"labels": {"app": "web"}},
        "spec": {
            "terminationGracePeriodSeconds": 20, "tolerations": TOLERATE_GPU,
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": WORKERS}]}]}}},
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                           "whenUnsatisfiable": "ScheduleAnyway",
                                           "labelSelector": {"matchLabels": {"app": "web"}}}],
            "containers": [{
                "name": "web", "image": BUSYBOX,
                "command": ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"],
                "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1, "failureThreshold": 1},
                # keep serving while the endpoint is withdrawn from every node's kube-proxy
                "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}}}]}}
    pinned_pod = {
        "metadata": {"labels": {"app": "pinned"}},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": BLOCKED}, "tolerations": TOLERATE_GPU,
                 "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "exec sleep 86400"]}]}}

    def deployment(name, replicas, template):
        return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": NS},
                "spec": {"replicas": replicas, "selector": {"matchLabels": template["metadata"]["labels"]},
                         "template": template}}

    def pdb(name, min_available):
        return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": name, "namespace": NS},
                "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": name}}}}

    return [deployment("web", 3, web_pod), pdb("web", 2), deployment("pinned", 1, pinned_pod), pdb("pinned", 1),
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NS},
             "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}]


def _upgrade(name, *extra):
    """ansible-playbook playbooks/upgrade.yml on the lab; (rc, wall seconds, stdout). Log in LOGS."""
    proc, wall = playbook("playbooks/upgrade.yml", "upgrade-%s" % name, *extra, timeout=2400)
    record("upgrade.yml %s: rc %d in %.0f s" % (name, proc.returncode, wall))
    return proc.returncode, wall, proc.stdout


def _longest_outage(rounds):
    """Seconds from the first to the last round of the longest run of failed API rounds (0 if none)."""
    longest, start = 0.0, None
    for ts, _, api in rounds:
        if api != "200":
            start = ts if start is None else start
            longest = max(longest, ts - start + 1)
        else:
            start = None
    return longest


def _resume(node):
    """Thaw a lab node the hook paused (podman unpause: its processes go on where they stopped) and
    wait for its etcd member to answer healthy and its Node to be Ready."""
    run(["podman", "unpause", node], timeout=120)
    wait_for(lambda: (etcd_api(node, "/health", check=False) or {}).get("health") == "true", 300,
             "the etcd member of %s to answer healthy after it was resumed" % node, interval=2)
    wait_for(lambda: _ready(_nodes()[node]), 300, "%s to be Ready after it was resumed" % node, interval=2)


SLOW_DRAIN_TIMEOUT = 8


def _slow_deployment():
    """One pod on the first worker that outlives any short drain: PID 1 ignores SIGTERM (sleep as init),
    so it goes only when the kubelet kills it at the end of its 30 s grace period."""
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "slow", "namespace": NS},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "slow"}},
                     "template": {"metadata": {"labels": {"app": "slow"}},
                                  "spec": {"nodeSelector": {"kubernetes.io/hostname": BLOCKED},
                                           "tolerations": TOLERATE_GPU, "terminationGracePeriodSeconds": 30,
                                           "containers": [{"name": "c", "image": BUSYBOX,
                                                           "command": ["sh", "-c", "exec sleep 86400"]}]}}}}


def _pod_names(app):
    pods = json.loads(kubectl("-n", NS, "get", "pods", "-l", "app=" + app, "-o", "json").stdout)["items"]
    return sorted(p["metadata"]["name"] for p in pods)


def _container_state(node):
    return run(["podman", "container", "inspect", "--format", "{{.State.Status}}", node], check=False).stdout.strip()


def _nodes():
    items = json.loads(kubectl("get", "nodes", "-o", "json").stdout)["items"]
    return {n["metadata"]["name"]: n for n in items}


def _ready(node):
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])


@pytest.fixture(scope="module")
def upgrade(lab):
    if LAB["version"] != PREVIOUS_VERSION:
        pytest.skip("the lab runs v%s, not the previous minor v%s (a reused lab, or GPUOPS_LAB_START=current): "
                    "nothing to upgrade from" % (LAB["version"], PREVIOUS_VERSION))
    kubectl("create", "namespace", NS)
    kubectl("apply", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": _objects()}))
    kubectl("-n", NS, "rollout", "status", "deployment/web", "--timeout=180s", timeout=200)
    kubectl("-n", NS, "rollout", "status", "deployment/pinned", "--timeout=180s", timeout=200)
    ip = kubectl("-n", NS, "get", "service", "web", "-o", "jsonpath={.spec.clusterIP}").stdout.strip()
    info = {"host_sysctls_before": lab["host_sysctls_before"]}
    # the load loop: in lab-cp1's own network namespace (kube-proxy's rules), bounded by `timeout`
    node_exec(LOADER, "rm", "-f", STOP_FILE)
    loop = LOAD_LOOP % {"stop": STOP_FILE, "web": "http://%s/" % ip, "api": "https://%s:6443/livez" % VIP}
    out = open(LOGS / "upgrade-load.log", "w", encoding="utf-8")  # noqa: SIM115 (closed below)
    load = subprocess.Popen(["podman", "exec", LOADER, "timeout", "2700", "sh", "-c", loop],
                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    time.sleep(3)
    try:
        # 1. a control plane stopped in the middle (the hook on CONTROL[0] pauses STOPPED)
        hook = {"kubeadm_upgrade_post_hooks": [str(HOOK)], "gpuops_test_hook_node": CONTROL[0],
                "gpuops_test_stop_node": STOPPED, "kubeadm_upgrade_pre_hooks": [str(PRE_HOOK)]}
        info["cp_down"] = _upgrade("cp-down", "-e", json.dumps(hook))
        info["after_cp_down"] = {"nodes": _nodes(), "api": kubectl("get", "--raw", "/livez", check=False),
                                 "keepalived": node_exec(CONTROL[1], "systemctl", "is-active", "keepalived",
                                                         check=False).stdout.strip(),
                                 "stopped": _container_state(STOPPED)}
        _resume(STOPPED)
        # 2. the first worker's batch cannot drain (the "pinned" budget allows no disruption); two quick
        #    retries instead of the default six every 10 s
        info["blocked"] = _upgrade("blocked", "-e", "kubeadm_upgrade_drain_retries=1", "-e", "kubeadm_upgrade_drain_delay=3",
                                   "-e", PRE_HOOKS)
        info["after_blocked"] = _nodes()
        info["cluster_after_blocked"] = cluster_version()
        # 2b. a worker whose pods do not go in time: a pod on the first worker that ignores SIGTERM (30 s grace)
        #     and a drain timeout of 8 s; forced past the budget, so only the slow pod holds the drain
        kubectl("apply", "-f", "-", input_text=json.dumps(_slow_deployment()))
        kubectl("-n", NS, "rollout", "status", "deployment/slow", "--timeout=180s", timeout=200)
        info["slow_before"] = _pod_names("slow")
        info["slow"] = _upgrade("slow-drain", "-e", PRE_HOOKS, "-e", "kubeadm_upgrade_force_past_pdb=true",
                                "-e", "kubeadm_upgrade_drain_timeout=%d" % SLOW_DRAIN_TIMEOUT,
                                "-e", "kubeadm_upgrade_drain_retries=1", "-e", "kubeadm_upgrade_drain_delay=3")
        info["after_slow"] = _nodes()
        info["slow_after"] = json.loads(kubectl("-n", NS, "get", "pods", "-l", "app=slow", "-o", "json").stdout)["items"]
        kubectl("-n", NS, "scale", "deployment/slow", "--replicas=0")   # no replacement for run 3 to wait for
        # 3. the budget still there, the re-run resumes forced past it (kubeadm_upgrade_force_past_pdb: the
        #    drain deletes pods instead of evicting them)
        info["pinned_before"] = _pod_names("pinned")
        info["resumed"] = _upgrade("resumed", "-e", PRE_HOOKS, "-e", "kubeadm_upgrade_force_past_pdb=true")
        info["pinned_after"] = _pod_names("pinned")
        info["pinned_pdb_after"] = kubectl("-n", NS, "get", "poddisruptionbudget", "pinned", check=False).returncode
        info["pre_hook"] = {n: node_exec(n, "cat", PRE_HOOK_MARK, check=False).stdout.split() for n in NODES}
        info["after"] = _nodes()
        if info["resumed"][0] == 0:
            LAB["version"] = CURRENT_VERSION   # later site.yml runs pin nothing
    finally:
        if _container_state(STOPPED) == "paused":
            run(["podman", "unpause", STOPPED], check=False)   # a run that failed before _resume
        node_exec(LOADER, "touch", STOP_FILE, check=False)
        try:
            load.wait(timeout=30)
        except subprocess.TimeoutExpired:
            load.kill()
        out.close()
    # (epoch, web code, API code) per round; a line cut short by the stop counts as failed
    info["load"] = [(int(p[0]), p[1], p[2] if len(p) > 2 else "") for p in
                    (ln.split() for ln in (LOGS / "upgrade-load.log").read_text().splitlines()) if p and p[0].isdigit()]
    web_failed = [r for r in info["load"] if r[1] != "200"]
    api_failed = [r for r in info["load"] if r[2] != "200"]
    info["api_outage"] = _longest_outage(info["load"])
    record("upgrade load loop: %d rounds during the four runs; web Service requests failed: %d; API requests "
           "through the VIP failed: %d (longest outage %.0f s)"
           % (len(info["load"]), len(web_failed), len(api_failed), info["api_outage"]))
    yield info
    kubectl("delete", "namespace", NS, "--wait=false", check=False)


def test_a_control_plane_stopped_mid_upgrade_stops_the_run_naming_it_while_the_api_answers(upgrade):
    rc, _, out = upgrade["cp_down"]
    after = upgrade["after_cp_down"]
    assert after["stopped"] == "paused", "the hook did not stop %s: %s" % (STOPPED, after["stopped"])
    assert rc != 0, "upgrade.yml went on with %s down (log %s)" % (STOPPED, LOGS / "upgrade-cp-down.log")
    m = re.search(r"UPGRADE STOPPED before %s changed: etcd member\(s\) ([^;]*) did not answer healthy" % CONTROL[1], out)
    assert m and m.group(1).split(" of ")[0] == STOPPED, out[-4000:]
    nodes = after["nodes"]
    assert nodes[CONTROL[0]]["status"]["nodeInfo"]["kubeletVersion"] == "v" + CURRENT_VERSION
    # lab-cp2 was not touched: old version, schedulable, its VIP service running
    assert nodes[CONTROL[1]]["status"]["nodeInfo"]["kubeletVersion"] == "v" + PREVIOUS_VERSION
    assert not nodes[CONTROL[1]]["spec"].get("unschedulable", False)
    assert after["keepalived"] == "active"
    # the API answered through the VIP with a control plane down
    assert after["api"].returncode == 0 and after["api"].stdout.strip() == "ok", after["api"].stderr
    assert host_sysctls() == upgrade["host_sysctls_before"]


def _assert_first_batch_stopped_alone(nodes, out):
    """After a run whose first worker batch (BLOCKED) stopped: every worker uncordoned and still at the old
    version, and no task of the workers' play ran on the other workers (the first batch's failure is fatal)."""
    for n in WORKERS:
        assert not nodes[n]["spec"].get("unschedulable", False), "%s left cordoned" % n
        assert nodes[n]["status"]["nodeInfo"]["kubeletVersion"] == "v" + PREVIOUS_VERSION, n
    workers_play = out.split("PLAY [Upgrade the workers in batches]")[-1].split("PLAY RECAP")[0]
    assert "[%s" % BLOCKED in workers_play, workers_play[-2000:]
    for n in WORKERS[1:]:
        assert "[%s" % n not in workers_play, "%s was touched after %s's batch stopped" % (n, BLOCKED)


def test_a_worker_that_will_not_drain_stops_its_batch_uncordoned_and_touches_no_other_worker(upgrade):
    rc, _, out = upgrade["blocked"]
    assert rc != 0, "upgrade.yml passed a drain that a PodDisruptionBudget forbids (log %s)" % (LOGS / "upgrade-blocked.log")
    assert "UPGRADE STOPPED on %s" % BLOCKED in out, out[-4000:]
    assert "%s/pinned" % NS in out, "the stop message does not name the blocking budget: %s" % out[-4000:]
    nodes = upgrade["after_blocked"]
    # the control planes went first and are at the target
    assert upgrade["cluster_after_blocked"] == CURRENT_VERSION
    for n in CONTROL:
        assert nodes[n]["status"]["nodeInfo"]["kubeletVersion"] == "v" + CURRENT_VERSION, n
    _assert_first_batch_stopped_alone(nodes, out)


def test_a_worker_whose_pods_do_not_go_in_time_stops_its_batch_uncordoned_and_touches_no_other_worker(upgrade):
    rc, _, out = upgrade["slow"]
    log = LOGS / "upgrade-slow-drain.log"
    assert rc != 0, "upgrade.yml went on past a drain that timed out (log %s)" % log
    assert "UPGRADE STOPPED on %s" % BLOCKED in out, out[-4000:]
    assert "%s did not drain within kubeadm_upgrade_drain_timeout=%d s" % (BLOCKED, SLOW_DRAIN_TIMEOUT) in out, out[-4000:]
    # the slow pod was asked to go (deleted: forced past the budgets) and was still terminating at the stop
    assert upgrade["slow_before"], "the slow pod never ran"
    assert any(p["metadata"]["name"] in upgrade["slow_before"] and p["metadata"].get("deletionTimestamp")
               for p in upgrade["slow_after"]) or not upgrade["slow_after"], upgrade["slow_after"]
    _assert_first_batch_stopped_alone(upgrade["after_slow"], out)


def test_the_rerun_resumes_and_every_node_ends_ready_at_the_target(upgrade):
    rc, wall, out = upgrade["resumed"]
    assert rc == 0, "the resumed upgrade.yml failed (log %s):\n%s" % (LOGS / "upgrade-resumed.log", out[-5000:])
    for n in CONTROL:
        assert "%s is already at v%s: skipped" % (n, CURRENT_VERSION) in out, n
    nodes = upgrade["after"]
    assert set(NODES) <= set(nodes)
    for n in NODES:
        assert nodes[n]["status"]["nodeInfo"]["kubeletVersion"] == "v" + CURRENT_VERSION, n
        assert _ready(nodes[n]) and not nodes[n]["spec"].get("unschedulable", False), n
    assert cluster_version() == CURRENT_VERSION
    # every control plane's static pods run the target's images
    pods = json.loads(kubectl("-n", "kube-system", "get", "pods", "-l", "tier=control-plane", "-o", "json").stdout)["items"]
    images = {p["metadata"]["name"]: p["spec"]["containers"][0]["image"] for p in pods}
    for n in CONTROL:
        for c in ["kube-apiserver", "kube-controller-manager", "kube-scheduler"]:
            assert images.get("%s-%s" % (c, n), "").endswith(":v" + CURRENT_VERSION), (c, n, images)
    # forced past the budget that blocked the second run: still there, its pod deleted (not evicted)
    assert upgrade["pinned_pdb_after"] == 0, "the run removed the pinned PodDisruptionBudget"
    assert upgrade["pinned_before"] and not set(upgrade["pinned_before"]) & set(upgrade["pinned_after"]), (
        upgrade["pinned_before"], upgrade["pinned_after"])
    # the pre-upgrade hook ran once on every node: drained (cordoned), nothing of it upgraded yet
    for n in NODES:
        assert upgrade["pre_hook"][n] == ["v" + PREVIOUS_VERSION, "true"], (n, upgrade["pre_hook"][n])
    # the packages followed: kubeadm, kubelet and kubectl at the target on every node
    for n in NODES:
        got = node_exec(n, "dpkg-query", "-W", "-f", "${Version} ", "kubeadm", "kubelet", "kubectl").stdout.split()
        assert got and all(v.startswith(CURRENT_VERSION + "-") for v in got), (n, got)


def test_an_etcd_snapshot_was_taken_before_anything_changed(upgrade):
    out = upgrade["cp_down"][2]
    line = r"etcd snapshot before the upgrade: .*pre-upgrade-v%s-to-v%s-\d{8}T\d{6}Z\.db" % (
        re.escape(PREVIOUS_VERSION), re.escape(CURRENT_VERSION))
    assert re.search(line, out), "no snapshot line in the first run (log %s)" % (LOGS / "upgrade-cp-down.log")
    # the snapshot came before the first control plane changed
    assert out.index("etcd snapshot before the upgrade") < out.index("kubeadm upgrade apply")


def test_no_request_to_the_pdb_protected_service_failed(upgrade):
    load = upgrade["load"]
    failed = [r for r in load if r[1] != "200"]
    assert not failed, "%d of %d requests failed during the upgrade: %s" % (len(failed), len(load), failed[:10])
    # the loop ran through the four runs (one round every 0.2 s plus its time): minutes, not seconds
    span = load[-1][0] - load[0][0]
    runs = upgrade["cp_down"][1] + upgrade["blocked"][1] + upgrade["slow"][1] + upgrade["resumed"][1]
    assert len(load) > 200 and span > runs - 30, (len(load), span, runs)


def test_the_api_answers_through_the_vip_while_the_control_planes_restart(upgrade):
    # each control plane hands the VIP to a peer before its API server restarts (kubeadm_upgrade_vip_service):
    # at most a VRRP failover's worth of failed requests, never an API server's restart
    assert upgrade["api_outage"] <= 5, ("API through the VIP failed for %.0f s in a row" % upgrade["api_outage"],
                                        [r for r in upgrade["load"] if r[2] != "200"][:20])
