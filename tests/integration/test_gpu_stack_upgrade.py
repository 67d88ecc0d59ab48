"""playbooks/gpu_stack_upgrade.yml on the kube-apiserver + kwok test bed, gated by a real Prometheus.

What is real: kube-apiserver (cordon, drain through the Eviction API, Node patches), Prometheus
(scraping every second, the gate's PromQL over /api/v1/query), ansible-playbook with the role.

What is FAKE, and why (hardware and what runs on it; nothing of it is product code):

- the GPU nodes: kwok nodes advertising ``nvidia.com/gpu`` (tests/testbed/k8s.py); a node whose
  GPUs "fell off" is a FAKE node-status patch of its allocatable, as tests/cluster/test_platform.py
  stands in for the device plugin;
- the DCGM exporter: ``FakeDcgmExporter``, a HARDWARE FAKE HTTP server on 127.0.0.1 serving
  dcgm-exporter's text format (DCGM_FI_DEV_GPU_TEMP, DCGM_FI_DEV_XID_ERRORS per GPU, with the
  exporter's ``Hostname`` label); bounded lifetime (it shuts itself down after LIFETIME s), stopped
  in the fixture's teardown;
- the driver itself: ``DriverStandIn``, a thread playing GPU feature discovery (the node's
  ``nvidia.com/cuda.driver-version.full`` label) and, in operator mode, the GPU operator's upgrade
  controller (``nvidia.com/gpu-driver-upgrade-state`` -> ``upgrade-done``): neither runs here. It
  acts only on a node the playbook has cordoned, so a label at the target proves the playbook's turn.

Not proven here (docs/day2.md): the apt step of preinstalled mode (``gpu_stack_upgrade_package_step:
false``: no node to install on), the restarts and the reboot; operator mode's chart step
(``gpu_stack_upgrade_set_chart_values: false``: the gpu-operator release's values are the
gpu_operator role's, proved by test_platform_helm.py); a drain blocked by a PodDisruptionBudget.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.integration.test_platform_helm import inventory, run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO / "playbooks" / "gpu_stack_upgrade.yml"
OLD, NEW = "580.95.05", "595.91.07"
DRIVER_LABEL = "nvidia.com/cuda.driver-version.full"
STATE_LABEL = "nvidia.com/gpu-driver-upgrade-state"
MARK = "gpuops.io/gpu-stack-upgrade"
GPUS = 8
LIFETIME = 600


class FakeDcgmExporter:
    """HARDWARE FAKE: dcgm-exporter's /metrics for FAKE GPU nodes (no GPU, no DCGM here).

    ``health[node] = {"gpus": n, "xid": code}``: n GPUs report a temperature, each with the last
    XID error code given. Served from a thread of the test process on 127.0.0.1; shuts down after
    LIFETIME s on its own, and in ``stop()``.
    """

    def __init__(self, nodes):
        self.health = {n: {"gpus": GPUS, "xid": 0} for n in nodes}
        exporter = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.timer = threading.Timer(LIFETIME, self.server.shutdown)

    def render(self) -> str:
        lines = ["# HELP DCGM_FI_DEV_GPU_TEMP GPU temperature (in C).", "# TYPE DCGM_FI_DEV_GPU_TEMP gauge",
                 "# HELP DCGM_FI_DEV_XID_ERRORS Value of the last XID error encountered.",
                 "# TYPE DCGM_FI_DEV_XID_ERRORS gauge"]
        for node, h in sorted(self.health.items()):
            for gpu in range(h["gpus"]):
                labels = (f'gpu="{gpu}",UUID="GPU-fake-{node}-{gpu}",device="nvidia{gpu}",'
                          f'modelName="NVIDIA H100 80GB HBM3",Hostname="{node}"')
                lines.append(f"DCGM_FI_DEV_GPU_TEMP{{{labels}}} 41")
                lines.append(f"DCGM_FI_DEV_XID_ERRORS{{{labels}}} {h['xid'] if gpu == 0 else 0}")
        return "\n".join(lines) + "\n"

    def start(self):
        self.thread.start()
        self.timer.start()
        return self

    def stop(self):
        self.timer.cancel()
        self.server.shutdown()
        self.server.server_close()


class DriverStandIn(threading.Thread):
    """Stand-in for GPU feature discovery and the GPU operator's upgrade controller (neither runs
    here): on a node of ``nodes`` that the playbook has cordoned and that is not at the target yet,
    it sets the driver label (and, in operator mode, the upgrade state, through validation-required
    to upgrade-done). Records every node it saw cordoned and the most cordoned at one time."""

    def __init__(self, k8s, nodes, operator: bool):
        super().__init__(daemon=True)
        self.k8s, self.nodes, self.operator = k8s, list(nodes), operator
        self.seen: list = []
        self.max_cordoned = 0
        self.halt = threading.Event()

    def run(self):
        from kubernetes import client
        with self.k8s.api_client() as api:
            core = client.CoreV1Api(api)
            deadline = time.monotonic() + LIFETIME
            while not self.halt.is_set() and time.monotonic() < deadline:
                cordoned = 0
                for name in self.nodes:
                    node = core.read_node(name)
                    labels = node.metadata.labels or {}
                    if not node.spec.unschedulable:
                        continue
                    cordoned += 1
                    if name not in self.seen:
                        self.seen.append(name)
                    if labels.get(DRIVER_LABEL) == NEW and (not self.operator or labels.get(STATE_LABEL) == "upgrade-done"):
                        continue
                    if self.operator and labels.get(STATE_LABEL) != "validation-required":
                        new = {STATE_LABEL: "validation-required"}
                    else:
                        new = {DRIVER_LABEL: NEW, STATE_LABEL: "upgrade-done"} if self.operator else {DRIVER_LABEL: NEW}
                    core.patch_node(name, {"metadata": {"labels": new}})
                self.max_cordoned = max(self.max_cordoned, cordoned)
                self.halt.wait(0.5)

    def stop(self):
        self.halt.set()
        self.join(timeout=10)


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


def _play(bed, name, mode, nodes, check=False, **extra):
    xvars = {"gpuops_kubeconfig": bed["k8s"].kubeconfig, "gpu_stack_upgrade_driver_version": NEW,
             "gpu_stack_upgrade_mode": mode, "gpu_stack_upgrade_package_step": False,
             "gpu_stack_upgrade_set_chart_values": False,
             "gpuops_prometheus_url": bed["prom"].url,
             "gpu_stack_upgrade_gate_timeout": 4, "gpu_stack_upgrade_gate_delay": 1,
             "gpu_stack_upgrade_poll_delay": 1, "gpu_stack_upgrade_operator_timeout": 30,
             "gpu_stack_upgrade_driver_label_timeout": 30, "gpu_stack_upgrade_drain_timeout": 20,
             "gpu_stack_upgrade_drain_retries": 1, "gpu_stack_upgrade_drain_delay": 1}
    xvars.update(extra)
    work = bed["work"] / name
    inv = inventory(work / "hosts.yml", {n: {"gpuops_gpu": {"product": "NVIDIA-H100-80GB-HBM3", "count": GPUS}}
                                         for n in nodes})
    standin = DriverStandIn(bed["k8s"], nodes, operator=(mode == "operator"))
    standin.start()
    try:
        r = run(PLAYBOOK, work, inv, xvars, check=check, timeout=300)
    finally:
        standin.stop()
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
    from kubernetes import client
    labels = {DRIVER_LABEL: OLD, STATE_LABEL: "upgrade-done", "gpuops.io/gsu-test": "true"}
    pre = k8s.add_gpu_nodes(3, prefix="gsu-pre", gpus=GPUS, labels=labels)
    op = k8s.add_gpu_nodes(3, prefix="gsu-op", gpus=GPUS, labels=labels)
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
        with k8s.api_client() as api:   # the shared bed's other tests count the kwok nodes
            for n in pre + op:
                client.CoreV1Api(api).delete_node(n)
        k8s.info["gpu_nodes"] = [n for n in k8s.info.get("gpu_nodes", []) if n not in pre + op]
        total = [r["cpu"] for r in bed["runs"]]
        print(f"gpu_stack_upgrade: {len(total)} playbook runs, {sum(total):.1f} s CPU in ansible-playbook")


# -- preinstalled mode: check mode, one by one, second run ------------------------------------------
def test_check_mode_changes_nothing(bed):
    before = _nodes(bed, bed["pre"])
    r = _play(bed, "pre-check", "preinstalled", bed["pre"], check=True)
    assert r["rc"] == 0, _why(r)
    assert _nodes(bed, bed["pre"]) == before
    assert all(not b["unschedulable"] and b["driver"] == OLD and b["mark"] is None for b in before.values())
    assert r["standin"].seen == []          # never cordoned


def test_healthy_nodes_are_upgraded_one_by_one_and_uncordoned(bed):
    r = _play(bed, "pre-first", "preinstalled", bed["pre"])
    assert r["rc"] == 0, _why(r)
    after = _nodes(bed, bed["pre"])
    for n, s in after.items():
        assert s == {"driver": NEW, "state": "upgrade-done", "unschedulable": False, "mark": None,
                     "allocatable": str(GPUS)}, (n, s)
    # serial 1: every node was cordoned in inventory order, never two at once
    assert r["standin"].seen == bed["pre"] and r["standin"].max_cordoned == 1, r["standin"].__dict__
    for n in bed["pre"]:
        assert r["stats"][n]["changed"] > 0 and r["stats"][n]["failures"] == 0


def test_second_run_skips_every_node_and_changes_nothing(bed):
    r = _play(bed, "pre-second", "preinstalled", bed["pre"])
    assert r["rc"] == 0, _why(r)
    for n in bed["pre"]:
        assert r["stats"][n]["changed"] == 0, (n, r["stats"][n])
        assert any(f"{n} is already at driver {NEW} and healthy" in m and "skipped" in m for m in _messages(r, n))
    assert r["standin"].seen == []


# -- operator mode (the stand-in plays the operator): a short node stops the run; re-runs resume ------
def test_node_short_of_gpus_stops_the_run_left_cordoned_next_untouched(bed):
    first, short, last = bed["op"]
    _fake_allocatable(bed, short, 4)        # FAKE: four GPUs fell off the bus after the upgrade
    r = _play(bed, "op-short", "operator", bed["op"])
    assert r["rc"] != 0, _why(r)
    stop = [m for m in _messages(r, short) if "GPU STACK UPGRADE STOPPED" in m]
    assert stop, _why(r)
    assert f"STOPPED on {short}" in stop[0] and "failed the health gate" in stop[0], stop[0]
    assert f"allocatable nvidia.com/gpu 4 (inventory: {GPUS})" in stop[0] and "LEFT CORDONED" in stop[0], stop[0]
    s = _nodes(bed, bed["op"])
    assert s[first] == {"driver": NEW, "state": "upgrade-done", "unschedulable": False, "mark": None,
                        "allocatable": str(GPUS)}, s[first]
    assert s[short]["unschedulable"] and s[short]["mark"] == "cordoned", s[short]
    assert s[last] == {"driver": OLD, "state": "upgrade-done", "unschedulable": False, "mark": None,
                       "allocatable": str(GPUS)}, s[last]
    assert "Read the node" not in [t for t, _res in r["tasks"].get(last, [])]   # its turn never came
    assert r["standin"].seen == [first, short]


def test_rerun_skips_the_done_node_and_a_dcgm_xid_stops_the_next(bed):
    first, short, last = bed["op"]
    _fake_allocatable(bed, short, GPUS)     # the GPUs are back
    bed["exporter"].health[last]["xid"] = 79   # FAKE: XID 79, GPU fallen off the bus
    bed["prom"].wait_for_series(f'DCGM_FI_DEV_XID_ERRORS{{Hostname="{last}"}} > 0', timeout=30)
    r = _play(bed, "op-rerun", "operator", bed["op"])
    assert r["rc"] != 0, _why(r)
    assert r["stats"][first]["changed"] == 0
    assert any(f"{first} is already at driver {NEW} and healthy" in m for m in _messages(r, first))
    assert any("left cordoned by a previous run: uncordoned now" in m for m in _messages(r, short)), _messages(r, short)
    stop = [m for m in _messages(r, last) if "GPU STACK UPGRADE STOPPED" in m]
    assert stop and f"STOPPED on {last}" in stop[0], _why(r)
    assert "DCGM: 1 GPU(s) with DCGM_FI_DEV_XID_ERRORS > 0" in stop[0] and "LEFT CORDONED" in stop[0], stop[0]
    s = _nodes(bed, bed["op"])
    assert not s[first]["unschedulable"] and not s[short]["unschedulable"] and s[short]["mark"] is None, s
    assert s[last]["unschedulable"] and s[last]["driver"] == NEW, s[last]

    # the XID cleared (the node was looked at): the third run uncordons it and changes nothing else
    bed["exporter"].health[last]["xid"] = 0
    bed["prom"].wait_for_series(f'DCGM_FI_DEV_XID_ERRORS{{Hostname="{last}"}} == 0', timeout=30)
    r3 = _play(bed, "op-third", "operator", bed["op"])
    assert r3["rc"] == 0, _why(r3)
    s = _nodes(bed, bed["op"])
    assert all(not v["unschedulable"] and v["driver"] == NEW and v["mark"] is None for v in s.values()), s
    assert r3["standin"].seen in ([], [last])
