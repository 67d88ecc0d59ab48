"""playbooks/gpu_stack_upgrade.yml on the lab cluster (issue 12), operator mode (the lab's default), two runs:

1. lab-gpu2's GPU 0 reports an XID error: the run sets the gpu-operator release's driver.version (a real
   ``helm upgrade`` of the lab's release through gpu_operator/helm_release), upgrades lab-gpu1 (cordon, a
   real drain of its pods, the driver at the target, the gate passes, uncordon), then stops on lab-gpu2
   at the health gate, naming it and the XID; lab-gpu2 is left cordoned;
2. the XID cleared, the re-run skips lab-gpu1 (at the target and healthy) and uncordons lab-gpu2.

What is real: the lab's API server and kubelets (cordon, the Eviction API, a pod of this module pinned to
lab-gpu1 evicted and started again once the node is back), the gpu-operator Helm release, a real
Prometheus (the test bed's binary, on 127.0.0.1) that the gate queries from the controller, the lab
inventory.

What is FAKE (tests/testbed/gpu_fakes.py, docs/day2.md), and why: no GPU, no DCGM and no NVIDIA driver run
here. The GPUs: allocatable ``nvidia.com/gpu`` is a node-status patch, as in test_platform.py; the DCGM
exporter: ``FakeDcgmExporter`` on 127.0.0.1; the driver: ``DriverStandIn`` plays GPU feature discovery
(the driver-version label) and the GPU operator's upgrade controller (the upgrade-state label), acting
only on a node the playbook has cordoned.

Not run here: the operator's own driver pods (its images are not built, docs/lab.md), preinstalled mode's
apt step, the service restarts and the reboot (a lab node is a container: never restarted, docs/lab.md)."""

import json
import os
import time

import pytest

from tests.cluster.lab import BUSYBOX, CACHE, GPU, KUBECONFIG, LOGS, ansible_env, fake_gpus, kubectl, record, run
from tests.testbed.common import wait_for
from tests.testbed.gpu_fakes import (DRIVER_LABEL, GPUS, NEW, OLD, STATE_LABEL, TEST_LABEL, DriverStandIn,
                                     FakeDcgmExporter, KubeconfigApi)
from tests.testbed.prometheus import Prometheus

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(1200)]

NS = "gpuops-gsu"
HELM = os.path.join(os.environ.get("GPUOPS_BIN", str(CACHE / "bin")), "helm")
FIRST, SHORT = GPU[0], GPU[1]
TOLERATE_GPU = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
# short waits: the fakes answer at once (a healthy gate passes at its first probe)
XVARS = {"gpu_stack_upgrade_driver_version": NEW, "gpu_stack_upgrade_gate_timeout": 6, "gpu_stack_upgrade_gate_delay": 1,
         "gpu_stack_upgrade_poll_delay": 1, "gpu_stack_upgrade_operator_timeout": 90,
         "gpu_stack_upgrade_driver_label_timeout": 90, "gpu_stack_upgrade_drain_timeout": 120,
         "gpu_stack_upgrade_drain_retries": 1, "gpu_stack_upgrade_drain_delay": 2}


def _node(name):
    n = json.loads(kubectl("get", "node", name, "-o", "json").stdout)
    labels = n["metadata"].get("labels", {})
    return {"driver": labels.get(DRIVER_LABEL), "state": labels.get(STATE_LABEL),
            "unschedulable": bool(n["spec"].get("unschedulable"))}


def _pods():
    items = json.loads(kubectl("-n", NS, "get", "pods", "-o", "json").stdout)["items"]
    return {p["metadata"]["name"]: p["spec"].get("nodeName") for p in items if not p["metadata"].get("deletionTimestamp")}


def _upgrade(name, prom):
    argv = ["ansible-playbook", "-i", "inventories/lab/hosts.yml", "playbooks/gpu_stack_upgrade.yml",
            "-e", json.dumps(dict(XVARS, gpuops_prometheus_url=prom.url))]
    t0 = time.monotonic()
    proc = run(argv, env=ansible_env(), timeout=900, check=False)
    out = proc.stdout + proc.stderr
    (LOGS / ("gpu-stack-%s.log" % name)).write_text(out)
    record("gpu_stack_upgrade.yml %s: rc %d in %.0f s" % (name, proc.returncode, time.monotonic() - t0))
    return proc.returncode, " ".join(out.split())


@pytest.fixture(scope="module")
def gsu(lab):
    for node in GPU:
        fake_gpus(node, GPUS)
        kubectl("label", "node", node, "--overwrite", "%s=%s" % (DRIVER_LABEL, OLD), "%s=upgrade-done" % STATE_LABEL,
                "%s=true" % TEST_LABEL)
    kubectl("create", "namespace", NS)
    pinned = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "on-first", "namespace": NS},
              "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "on-first"}},
                       "template": {"metadata": {"labels": {"app": "on-first"}},
                                    "spec": {"nodeSelector": {"kubernetes.io/hostname": FIRST}, "tolerations": TOLERATE_GPU,
                                             "terminationGracePeriodSeconds": 1,
                                             "containers": [{"name": "c", "image": BUSYBOX,
                                                             "command": ["sh", "-c", "exec sleep 86400"]}]}}}}
    kubectl("apply", "-f", "-", input_text=json.dumps(pinned))
    kubectl("-n", NS, "rollout", "status", "deployment/on-first", "--timeout=180s", timeout=200)
    exporter = FakeDcgmExporter(GPU).start()
    exporter.health[SHORT]["xid"] = 79                     # FAKE: XID 79, a GPU fallen off the bus
    prom = Prometheus(targets=[exporter.address])
    prom.start()
    standin = DriverStandIn(KubeconfigApi(KUBECONFIG), GPU, operator=GPU)
    info = {}
    try:
        prom.wait_for_series('DCGM_FI_DEV_XID_ERRORS{Hostname="%s"} > 0' % SHORT, timeout=60)
        prom.wait_for_series('DCGM_FI_DEV_GPU_TEMP{Hostname="%s"}' % FIRST, timeout=60)
        standin.start()
        info["pods_before"] = _pods()
        info["first"] = _upgrade("xid", prom)
        info["after_first"] = {n: _node(n) for n in GPU}
        info["values"] = json.loads(run([HELM, "--kubeconfig", str(KUBECONFIG), "-n", "gpu-operator", "get", "values",
                                         "gpu-operator", "-o", "json"], timeout=120).stdout)
        wait_for(lambda: any(node == FIRST for node in _pods().values()), 120,
                 "the pod pinned to %s to run again once the node was uncordoned" % FIRST, interval=2)
        info["pods_after"] = _pods()
        exporter.health[SHORT]["xid"] = 0                  # the GPU is back
        prom.wait_for_series('DCGM_FI_DEV_XID_ERRORS{Hostname="%s"} == 0' % SHORT, timeout=60)
        info["second"] = _upgrade("rerun", prom)
        info["after_second"] = {n: _node(n) for n in GPU}
        yield info
    finally:
        standin.stop()
        exporter.stop()
        prom.stop()
        prom.cleanup(keep_logs=False)
        for node in GPU:
            kubectl("uncordon", node, check=False)
            kubectl("label", "node", node, DRIVER_LABEL + "-", STATE_LABEL + "-", TEST_LABEL + "-", check=False)
        kubectl("delete", "namespace", NS, "--wait=false", check=False)


def test_the_gate_stops_on_the_node_with_an_xid_after_the_healthy_one_went_through(gsu):
    rc, out = gsu["first"]
    assert rc != 0, "gpu_stack_upgrade.yml passed a node whose GPU reports an XID (log %s)" % (LOGS / "gpu-stack-xid.log")
    assert "GPU STACK UPGRADE STOPPED on %s" % SHORT in out, out[-4000:]
    assert "DCGM: 1 GPU(s) with DCGM_FI_DEV_XID_ERRORS > 0" in out and "LEFT CORDONED" in out, out[-4000:]
    after = gsu["after_first"]
    assert after[FIRST] == {"driver": NEW, "state": "upgrade-done", "unschedulable": False}, after[FIRST]
    assert after[SHORT]["unschedulable"], after[SHORT]


def test_the_chart_step_set_the_release_driver_version(gsu):
    assert gsu["values"].get("driver", {}).get("version") == NEW, gsu["values"].get("driver")


def test_the_healthy_node_was_drained_for_real(gsu):
    before, after = gsu["pods_before"], gsu["pods_after"]
    assert list(before.values()) == [FIRST], before
    assert not set(before) & set(after), "the pod on %s was not evicted: %s -> %s" % (FIRST, before, after)


def test_the_rerun_skips_the_done_node_and_uncordons_the_healed_one(gsu):
    rc, out = gsu["second"]
    assert rc == 0, "the re-run failed (log %s): %s" % (LOGS / "gpu-stack-rerun.log", out[-4000:])
    assert "%s is already at driver %s and healthy" % (FIRST, NEW) in out, out[-4000:]
    assert "%s is already at driver %s and healthy" % (SHORT, NEW) in out and "uncordoned now" in out, out[-4000:]
    for n in GPU:
        assert gsu["after_second"][n] == {"driver": NEW, "state": "upgrade-done", "unschedulable": False}, n
