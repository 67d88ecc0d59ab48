"""playbooks/gpu_stack_upgrade.yml on the kube-apiserver + kwok test bed, gated by a real Prometheus.

What is real: kube-apiserver (cordon, drain through the Eviction API, Node patches), Prometheus
(scraping every second, the gate's PromQL over /api/v1/query), ansible-playbook with the role.

Cost: five playbook runs on the bed, each a module fixture the next builds on, each proving
several properties (check; converge of the preinstalled nodes then the operator nodes until the
short one stops it; re-run of the operator nodes; the whole group once more; two fresh nodes, the
first holding a pod whose PodDisruptionBudget blocks its drain). The bed runs use
the lab's Mitogen strategy (scripts/lab-ansible, docs/lab.md: one interpreter for the run instead
of one per task; half the CPU here; GPUOPS_LAB_MITOGEN=0 gives the stock one, as in the lab); the
offline runs use the stock strategy. Every node of a run carries its mode as a host var (gsu-pre-*:
preinstalled, gsu-op-*: operator).

What is FAKE, and why (hardware and what runs on it; nothing of it is product code):

- the GPU nodes: kwok nodes advertising ``nvidia.com/gpu`` (tests/testbed/k8s.py); a node whose
  GPUs "fell off" is a FAKE node-status patch of its allocatable, as tests/cluster/test_platform.py
  stands in for the device plugin;
- the DCGM exporter: ``FakeDcgmExporter`` (tests/testbed/gpu_fakes.py, shared with the lab's
  tests/cluster/test_gpu_stack.py), a HARDWARE FAKE HTTP server on 127.0.0.1 serving
  dcgm-exporter's text format (DCGM_FI_DEV_GPU_TEMP, DCGM_FI_DEV_XID_ERRORS per GPU, with the
  exporter's ``Hostname`` label); bounded lifetime (it shuts itself down after LIFETIME s), stopped
  in the fixture's teardown;
- the driver itself: ``DriverStandIn`` (tests/testbed/gpu_fakes.py), a thread playing GPU feature discovery (the node's
  ``nvidia.com/cuda.driver-version.full`` label) and, in operator mode, the GPU operator's upgrade
  controller (``nvidia.com/gpu-driver-upgrade-state`` -> ``upgrade-done``): neither runs here. It
  acts only on a node the playbook has cordoned, so a label at the target proves the playbook's turn.

Not proven here (docs/day2.md): the apt step of preinstalled mode (``gpu_stack_upgrade_package_step:
false``: no node to install on), the restarts and the reboot; operator mode's chart step
(``gpu_stack_upgrade_set_chart_values: false`` here; tests/cluster/test_gpu_stack.py runs it on the
lab's real gpu-operator release).
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.integration.test_platform_helm import run
from tests.testbed.common import mitogen_strategy_env, wait_for
from tests.testbed.gpu_fakes import (DRIVER_LABEL, GPUS, NEW, OLD, STATE_LABEL, TEST_LABEL, DriverStandIn,
                                     FakeDcgmExporter)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO / "playbooks" / "gpu_stack_upgrade.yml"
MARK = "gpuops.io/gpu-stack-upgrade"
# every FAKE GPU node of this module starts at the old driver, its upgrade state done
NODE_LABELS = {DRIVER_LABEL: OLD, STATE_LABEL: "upgrade-done", TEST_LABEL: "true"}


# -- plumbing ----------------------------------------------------------------------------------------
def _hosts(doc_stdout: str) -> dict:
    """{host: [(task name, result)]} and stats from the JSON callback's output."""
    doc = json.loads(doc_stdout[doc_stdout.index("{"):])
    out: dict = {}
    for play in doc.get("plays", []):
        for task in play.get("tasks", []):
            for host, res in (task.get("hosts") or {}).items():
                out.setdefault(host, []).append((task["task"]["name"].split(" : ", 1)[-1], res))
    return {"tasks": out, "stats": doc.get("stats", {})}


def _inventory(path: Path, gpu_hosts: dict) -> Path:
    """localhost plus the FAKE GPU hosts in the order given (serial: 1 takes them in file order;
    test_platform_helm.inventory sorts them by name, and gsu-pre-10 sorts before gsu-pre-9)."""
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inv = {"all": {"hosts": {"localhost": local},
                   "children": {"gpu_nodes": {"hosts": gpu_hosts}}}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(inv, sort_keys=False))
    return path


def _play(bed, name, nodes, check=False, **extra):
    """One ansible-playbook run over ``nodes`` (in that order), each in its bed's mode (a host var:
    gsu-pre-* preinstalled, gsu-op-* operator), with the lab's Mitogen strategy (docs/lab.md; the
    offline test runs the stock one)."""
    xvars = {"gpuops_kubeconfig": bed["k8s"].kubeconfig, "gpu_stack_upgrade_driver_version": NEW,
             "gpu_stack_upgrade_package_step": False, "gpu_stack_upgrade_set_chart_values": False,
             "gpuops_prometheus_url": bed["prom"].url,
             # a healthy gate passes at its first probe; 4 s of retries ride out a missed 1 s scrape
             "gpu_stack_upgrade_gate_timeout": 4, "gpu_stack_upgrade_gate_delay": 1,
             "gpu_stack_upgrade_poll_delay": 1, "gpu_stack_upgrade_operator_timeout": 30,
             "gpu_stack_upgrade_driver_label_timeout": 30, "gpu_stack_upgrade_drain_timeout": 20,
             "gpu_stack_upgrade_drain_retries": 1, "gpu_stack_upgrade_drain_delay": 1}
    xvars.update(extra)
    work = bed["work"] / name
    inv = _inventory(work / "hosts.yml", {
        n: {"gpuops_gpu": {"product": "NVIDIA-H100-80GB-HBM3", "count": GPUS},
            "gpu_stack_upgrade_mode": "operator" if n in bed["op"] else "preinstalled"} for n in nodes})
    standin = DriverStandIn(bed["k8s"], nodes, operator=[n for n in nodes if n in bed["op"]])
    standin.start()
    try:
        with pytest.MonkeyPatch.context() as mp:    # run() hands os.environ to ansible-playbook
            if os.environ.get("GPUOPS_LAB_MITOGEN", "1") != "0":     # =0: the stock strategy, as in the lab
                for key, value in mitogen_strategy_env().items():
                    mp.setenv(key, value)
            r = run(PLAYBOOK, work, inv, xvars, check=check, timeout=300)
    finally:
        standin.stop()
    (work / "stdout.json").write_text(r["stdout"])
    r.update(_hosts(r["stdout"]) if "{" in r["stdout"] else {"tasks": {}, "stats": {}})
    r["standin"] = standin
    print(f"gpu_stack_upgrade run {name}: rc={r['rc']} wall={r['wall']}s cpu={r['cpu']}s "
          f"changed={ {h: s.get('changed') for h, s in r['stats'].items()} }")
    bed["runs"].append(r)
    return r


def _why(r) -> str:
    failed = [(h, t, res.get("msg")) for h, ts in r["tasks"].items() for t, res in ts if res.get("failed")]
    return f"rc={r['rc']} stats={r['stats']} failed={failed}\nstderr tail: {r['stderr'][-1500:]}"


def _nodes(bed, names) -> dict:
    from kubernetes import client
    with bed["k8s"].api_client() as api:
        core = client.CoreV1Api(api)
        out = {}
        for n in names:
            node = core.read_node(n)
            out[n] = {"driver": (node.metadata.labels or {}).get(DRIVER_LABEL),
                      "state": (node.metadata.labels or {}).get(STATE_LABEL),
                      "unschedulable": bool(node.spec.unschedulable),
                      "mark": (node.metadata.annotations or {}).get(MARK),
                      "allocatable": node.status.allocatable.get("nvidia.com/gpu")}
        return out


def _fake_allocatable(bed, node, count):
    """FAKE device plugin: the node's allocatable nvidia.com/gpu as a status patch."""
    from kubernetes import client
    with bed["k8s"].api_client() as api:
        client.CoreV1Api(api).patch_node_status(node, {"status": {"allocatable": {"nvidia.com/gpu": str(count)}}})


def _messages(r, host) -> list:
    return [str(res.get("msg", "")) for _name, res in r["tasks"].get(host, [])]


# -- offline: the options are refused before any host or API is contacted ---------------------------
def test_offline_preflight_refuses_missing_options_then_passes(tmp_path, monkeypatch):
    """`--tags gpu_stack_upgrade_preflight` on inventories/sample (unreachable addresses, no cluster):
    without a target driver the options play stops on the first GPU host with the message naming
    what to set; with one it passes, changed=0 everywhere."""
    inv = REPO / "inventories" / "sample" / "hosts.yml"
    base = {"gpuops_kubeconfig": "/nonexistent/admin.conf", "gpuops_prometheus_url": "http://prometheus.monitoring:9090"}
    monkeypatch.setenv("ANSIBLE_RUN_TAGS", "gpu_stack_upgrade_preflight")   # = --tags (run() takes no argv)
    with ThreadPoolExecutor(max_workers=2) as pool:
        bad_f = pool.submit(run, PLAYBOOK, tmp_path / "bad", inv, base)
        good_f = pool.submit(run, PLAYBOOK, tmp_path / "good", inv, dict(base, gpu_stack_upgrade_driver_version=NEW))
        bad, good = bad_f.result(), good_f.result()
    assert bad["rc"] != 0 and good["rc"] == 0, (bad["stderr"][-800:], good["stderr"][-800:])
    msgs = [str(res.get("msg", "")) for ts in _hosts(bad["stdout"])["tasks"].values() for _t, res in ts if res.get("failed")]
    assert msgs and "gpu_stack_upgrade_driver_version the target driver such as 595.91.07 (got '')" in msgs[0], msgs
    for host, st in _hosts(good["stdout"])["stats"].items():
        assert st["changed"] == 0 and st["unreachable"] == 0 and st["failures"] == 0, (host, st)


# -- the bed: six FAKE GPU nodes (three per mode), the FAKE exporter, a real Prometheus ----------
@pytest.fixture(scope="module")
def bed(k8s, prometheus_factory, tmp_path_factory):
    pre = k8s.add_gpu_nodes(3, prefix="gsu-pre", gpus=GPUS, labels=NODE_LABELS)
    op = k8s.add_gpu_nodes(3, prefix="gsu-op", gpus=GPUS, labels=NODE_LABELS)
    exporter = FakeDcgmExporter(pre + op).start()
    prom = prometheus_factory(targets=[exporter.address])
    bed = {"k8s": k8s, "prom": prom, "exporter": exporter, "pre": pre, "op": op,
           "work": tmp_path_factory.mktemp("gpu-stack-upgrade"), "runs": []}
    try:
        for n in pre + op:
            prom.wait_for_series(f'DCGM_FI_DEV_GPU_TEMP{{Hostname="{n}"}}', timeout=60)
        yield bed
    finally:
        exporter.stop()
        prom.stop()
        _delete_nodes(k8s, pre + op)
        total = [r["cpu"] for r in bed["runs"]]
        print(f"gpu_stack_upgrade: {len(total)} playbook runs, {sum(total):.1f} s CPU in ansible-playbook")


def _delete_nodes(k8s, names):
    """Delete this module's FAKE nodes: the shared bed's other tests count the kwok nodes."""
    from kubernetes import client
    with k8s.api_client() as api:
        for n in names:
            client.CoreV1Api(api).delete_node(n)
    k8s.info["gpu_nodes"] = [n for n in k8s.info.get("gpu_nodes", []) if n not in names]


# -- four playbook runs, each a module fixture that the next one builds on; the tests assert on them --
# check (a node of each mode) -> converge (the preinstalled nodes, then the operator nodes until the
# short one stops the run) -> re-run of the operator nodes (a DCGM XID stops the last) -> the XID
# cleared: the preinstalled nodes' second run, with the last operator node's third.
@pytest.fixture(scope="module")
def check_run(bed):
    before = _nodes(bed, bed["pre"] + bed["op"])
    r = _play(bed, "check", [bed["pre"][0], bed["op"][0]], check=True)   # one node of each mode
    r["before"], r["after"] = before, _nodes(bed, bed["pre"] + bed["op"])
    return r


@pytest.fixture(scope="module")
def converge_run(bed, check_run):
    _fake_allocatable(bed, bed["op"][1], 4)   # FAKE: four GPUs of the middle operator node fell off the bus
    r = _play(bed, "converge", bed["pre"] + bed["op"])
    r["after"] = _nodes(bed, bed["pre"] + bed["op"])
    return r


@pytest.fixture(scope="module")
def rerun_run(bed, converge_run):
    first, short, last = bed["op"]
    _fake_allocatable(bed, short, GPUS)     # the GPUs are back
    bed["exporter"].health[last]["xid"] = 79   # FAKE: XID 79, GPU fallen off the bus
    bed["prom"].wait_for_series(f'DCGM_FI_DEV_XID_ERRORS{{Hostname="{last}"}} > 0', timeout=30)
    r = _play(bed, "op-rerun", bed["op"])
    r["after"] = _nodes(bed, bed["pre"] + bed["op"])
    return r


@pytest.fixture(scope="module")
def final_run(bed, rerun_run):
    last = bed["op"][2]
    bed["exporter"].health[last]["xid"] = 0   # the XID cleared (the node was looked at)
    bed["prom"].wait_for_series(f'DCGM_FI_DEV_XID_ERRORS{{Hostname="{last}"}} == 0', timeout=30)
    # the operator nodes already re-run (the done one skipped) are left out: the last one is this
    # run's operator node; the preinstalled ones have their second run
    r = _play(bed, "final", bed["pre"] + [last])
    r["after"] = _nodes(bed, bed["pre"] + bed["op"])
    return r


@pytest.fixture(scope="module")
def pdb_run(bed, final_run):
    """A fifth run over two fresh preinstalled nodes: the first holds the only pod of a Deployment
    whose PodDisruptionBudget (minAvailable 1, status from the real disruption controller) allows no
    eviction, so its drain cannot finish; the second comes after it. Runs after the others (the
    stand-in's seen list stays per run)."""
    from kubernetes import client
    blocked, after = bed["k8s"].add_gpu_nodes(2, prefix="gsu-pdb", gpus=GPUS, labels=NODE_LABELS)
    ns, app = "gsu-pdb", "pinned-model"
    with bed["k8s"].api_client() as api:
        core, apps, policy = client.CoreV1Api(api), client.AppsV1Api(api), client.PolicyV1Api(api)
        core.create_namespace({"metadata": {"name": ns}})
        apps.create_namespaced_deployment(ns, {
            "metadata": {"name": app},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": app}},
                     "template": {"metadata": {"labels": {"app": app}},
                                  "spec": {"nodeSelector": {"kubernetes.io/hostname": blocked},
                                           "tolerations": [{"operator": "Exists"}],
                                           "containers": [{"name": "c", "image": "registry.invalid/fake:1"}]}}}})
        policy.create_namespaced_pod_disruption_budget(ns, {
            "metadata": {"name": app}, "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": app}}}})

        def budget_at_its_limit():
            pods = core.list_namespaced_pod(ns, label_selector=f"app={app}").items
            st = policy.read_namespaced_pod_disruption_budget_status(app, ns).status
            return (len(pods) == 1 and pods[0].status.phase == "Running" and st is not None
                    and st.current_healthy == 1 and st.disruptions_allowed == 0
                    and st.observed_generation is not None)
        wait_for(budget_at_its_limit, 90, "the pinned pod Running on kwok and counted by the disruption controller",
                 interval=0.5)
    try:
        r = _play(bed, "pdb", [blocked, after], gpu_stack_upgrade_drain_timeout=5,
                  gpu_stack_upgrade_drain_retries=0)
        r["after"] = _nodes(bed, [blocked, after])
        with bed["k8s"].api_client() as api:
            r["pods"] = [(p.spec.node_name, p.status.phase)
                         for p in client.CoreV1Api(api).list_namespaced_pod(ns, label_selector=f"app={app}").items]
        r["blocked"], r["next"], r["pdb"] = blocked, after, f"{ns}/{app}"
        yield r
    finally:
        with bed["k8s"].api_client() as api:
            client.CoreV1Api(api).delete_namespace(ns)
        _delete_nodes(bed["k8s"], [blocked, after])


DONE = {"driver": NEW, "state": "upgrade-done", "unschedulable": False, "mark": None, "allocatable": str(GPUS)}
UNTOUCHED = dict(DONE, driver=OLD)


# -- check mode (both modes); preinstalled mode: one by one ------------------------------------------
def test_check_mode_changes_nothing(bed, check_run):
    r = check_run
    assert r["rc"] == 0, _why(r)
    assert r["after"] == r["before"]
    assert all(b == UNTOUCHED for b in r["before"].values()), r["before"]
    assert r["standin"].seen == []          # never cordoned
    assert sorted(r["stats"]) == sorted([bed["pre"][0], bed["op"][0]]), r["stats"]   # both had their turn
    for n in r["stats"]:
        assert r["stats"][n]["failures"] == 0 and r["stats"][n]["unreachable"] == 0, (n, r["stats"][n])


def test_healthy_nodes_are_upgraded_one_by_one_and_uncordoned(bed, converge_run):
    r = converge_run
    for n in bed["pre"]:
        assert r["after"][n] == DONE, (n, r["after"][n])
        assert r["stats"][n]["changed"] > 0 and r["stats"][n]["failures"] == 0, (n, r["stats"][n], _why(r))
        assert not [m for m in _messages(r, n) if "STOPPED" in m], _messages(r, n)
    # serial 1: every node was cordoned in inventory order, never two at once (the run then went on
    # to the operator nodes, see the next test)
    assert r["standin"].seen[:3] == bed["pre"] and r["standin"].max_cordoned == 1, r["standin"].__dict__


# -- operator mode (the stand-in plays the operator): a short node stops the run; a re-run resumes ----
def test_node_short_of_gpus_stops_the_run_left_cordoned_next_untouched(bed, converge_run):
    first, short, last = bed["op"]
    r = converge_run
    assert r["rc"] != 0, _why(r)
    stop = [m for m in _messages(r, short) if "GPU STACK UPGRADE STOPPED" in m]
    assert stop, _why(r)
    assert f"STOPPED on {short}" in stop[0] and "failed the health gate" in stop[0], stop[0]
    assert f"allocatable nvidia.com/gpu 4 (inventory: {GPUS})" in stop[0] and "LEFT CORDONED" in stop[0], stop[0]
    s = r["after"]
    assert s[first] == DONE, s[first]
    assert r["stats"][first]["changed"] > 0 and r["stats"][first]["failures"] == 0, r["stats"][first]
    assert s[short]["unschedulable"] and s[short]["mark"] == "cordoned", s[short]
    assert s[last] == UNTOUCHED, s[last]
    assert "Read the node" not in [t for t, _res in r["tasks"].get(last, [])]   # its turn never came
    assert r["standin"].seen == bed["pre"] + [first, short] and r["standin"].max_cordoned == 1, r["standin"].__dict__


def test_rerun_skips_the_done_node_and_a_dcgm_xid_stops_the_next(bed, rerun_run):
    first, short, last = bed["op"]
    r = rerun_run
    assert r["rc"] != 0, _why(r)
    assert r["stats"][first]["changed"] == 0
    assert any(f"{first} is already at driver {NEW} and healthy" in m for m in _messages(r, first))
    assert any("left cordoned by a previous run: uncordoned now" in m for m in _messages(r, short)), _messages(r, short)
    stop = [m for m in _messages(r, last) if "GPU STACK UPGRADE STOPPED" in m]
    assert stop and f"STOPPED on {last}" in stop[0], _why(r)
    assert "DCGM: 1 GPU(s) with DCGM_FI_DEV_XID_ERRORS > 0" in stop[0] and "LEFT CORDONED" in stop[0], stop[0]
    s = r["after"]
    assert not s[first]["unschedulable"] and not s[short]["unschedulable"] and s[short]["mark"] is None, s
    assert s[last]["unschedulable"] and s[last]["driver"] == NEW, s[last]


# -- the final run: the preinstalled nodes' second, the last operator node's third ----------------------
def test_second_run_skips_every_node_and_changes_nothing(bed, final_run):
    r = final_run
    assert r["rc"] == 0, _why(r)
    for n in bed["pre"]:
        assert r["stats"][n]["changed"] == 0, (n, r["stats"][n])
        assert any(f"{n} is already at driver {NEW} and healthy" in m and "skipped" in m for m in _messages(r, n))
        assert r["after"][n] == DONE, (n, r["after"][n])
    assert not set(r["standin"].seen) & set(bed["pre"]), r["standin"].seen


def test_third_run_uncordons_the_fixed_node_and_changes_nothing_else(bed, final_run):
    last = bed["op"][2]
    r = final_run
    assert r["rc"] == 0, _why(r)
    assert all(v == DONE for v in r["after"].values()), r["after"]
    assert r["stats"][last]["changed"] > 0, r["stats"][last]
    assert all(r["stats"][n]["changed"] == 0 for n in bed["pre"]), r["stats"]
    assert any(f"{last} is already at driver {NEW} and healthy" in m and "uncordoned now" in m
               for m in _messages(r, last)), _messages(r, last)
    assert r["standin"].seen in ([], [last])


# -- a drain that a PodDisruptionBudget blocks: the run stops naming it, the node is uncordoned ------
def test_drain_blocked_by_a_budget_stops_naming_it_uncordons_and_touches_nothing_else(bed, pdb_run):
    r = pdb_run
    blocked, after = r["blocked"], r["next"]
    assert r["rc"] != 0, _why(r)
    stop = [m for m in _messages(r, blocked) if "GPU STACK UPGRADE STOPPED" in m]
    assert stop and f"STOPPED on {blocked}" in stop[0], _why(r)
    assert f"Blocking PodDisruptionBudget(s): {r['pdb']}" in stop[0], stop[0]
    assert "it was uncordoned (nothing on it changed)" in stop[0], stop[0]
    # cordoned by the drain (the stand-in saw it), uncordoned by the rescue, this run's mark gone
    assert r["standin"].seen == [blocked], r["standin"].__dict__
    assert not r["after"][blocked]["unschedulable"] and r["after"][blocked]["mark"] is None, r["after"][blocked]
    # the protected pod still runs where it ran; the node after it never had its turn
    assert r["pods"] == [(blocked, "Running")], r["pods"]
    assert r["after"][after] == UNTOUCHED, r["after"][after]
    assert "Read the node" not in [t for t, _res in r["tasks"].get(after, [])]
