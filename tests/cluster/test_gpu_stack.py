"""playbooks/gpu_stack_upgrade.yml on the lab cluster (issue 12), operator mode (the lab's default), two runs:

1. lab-gpu2's GPU 0 reports an XID error: the run sets the gpu-operator release's driver.version (a real
   ``helm upgrade`` of the lab's release through gpu_operator/helm_release), upgrades lab-gpu1 (cordon, a
   real drain of its pods, the driver at the target, the gate passes, uncordon), then stops on lab-gpu2
   at the health gate, naming it and the XID; lab-gpu2 is left cordoned;
2. the XID cleared, the re-run skips lab-gpu1 (at the target and healthy) and uncordons lab-gpu2;
3. preinstalled mode on lab-gpu1 (``--limit``), whose FAKE NVIDIA packages are at the old versions: the run
   cordons and drains it, installs the pinned driver and toolkit packages with apt from a FAKE apt
   repository on the lab's artifact mirror, restarts containerd (the handler), passes the gate and
   uncordons it; a fourth run finds its packages at the pins and changes nothing.

What is real: the lab's API server and kubelets (cordon, the Eviction API, a pod of this module pinned to
lab-gpu1 evicted and started again once the node is back), the gpu-operator Helm release, a real
Prometheus (the test bed's binary, on 127.0.0.1) that the gate queries from the controller, the lab
inventory.

What is FAKE (tests/testbed/gpu_fakes.py, docs/day2.md), and why: no GPU, no DCGM and no NVIDIA driver run
here. The GPUs: allocatable ``nvidia.com/gpu`` is a node-status patch, as in test_platform.py; the DCGM
exporter: ``FakeDcgmExporter`` on 127.0.0.1; the driver: ``DriverStandIn`` plays GPU feature discovery
(the driver-version label) and the GPU operator's upgrade controller (the upgrade-state label), acting
only on a node the playbook has cordoned.

The NVIDIA packages are FAKES too (``fake_nvidia_apt_repo``: empty .debs named like NVIDIA's, each installing
only a note saying so).

Not run here: the operator's own driver pods (its images are not built, docs/lab.md) and preinstalled mode's
reboot (``gpu_stack_upgrade_reboot: false``: a lab node is a container, never restarted, docs/lab.md)."""

import json
import os
import re
import time

import pytest

from tests.cluster.lab import (BUSYBOX, CACHE, GPU, KUBECONFIG, LOGS, ansible_env, fake_gpus, kubectl, node_exec, record,
                               run)
from tests.testbed.common import wait_for
from tests.testbed.gpu_fakes import (DRIVER_LABEL, GPUS, NEW, OLD, STATE_LABEL, TEST_LABEL, DriverStandIn,
                                     FakeDcgmExporter, KubeconfigApi, fake_nvidia_apt_repo)
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


# preinstalled mode (run 3): the FAKE packages' versions, old (on the node before) and pinned
TOOLKIT = ["nvidia-container-toolkit", "nvidia-container-toolkit-base", "libnvidia-container-tools", "libnvidia-container1"]
TOOLKIT_OLD, TOOLKIT_NEW = "1.17.7-1", "1.17.8-1"
FAKE_APT = "gpuops-fake-nvidia"               # $GPUOPS_CACHE/mirror/<this>, http://10.250.0.6:8080/<this>
PREINSTALLED = {"gpu_stack_upgrade_mode": "preinstalled", "gpu_stack_upgrade_toolkit_version": TOOLKIT_NEW,
                "gpu_stack_upgrade_reboot": False}


def _installed(node):
    """{package: version} of the FAKE NVIDIA packages dpkg has on ``node``."""
    out = node_exec(node, "dpkg-query", "-W", "-f", "${Package} ${Version} ${Status}\\n", "cuda-drivers", *TOOLKIT,
                    check=False).stdout
    return {ln.split()[0]: ln.split()[1] for ln in out.splitlines() if ln.endswith("install ok installed")}


def _containerd_started(node):
    return node_exec(node, "systemctl", "show", "-p", "ActiveEnterTimestampMonotonic", "containerd").stdout.strip()


def _upgrade(name, prom, *extra, **xvars):
    argv = ["ansible-playbook", "-i", "inventories/lab/hosts.yml", "playbooks/gpu_stack_upgrade.yml",
            "-e", json.dumps(dict(XVARS, gpuops_prometheus_url=prom.url, **xvars)), *extra]
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
        # 3. preinstalled mode on FIRST: the node "has" the old FAKE packages, the repository the pinned ones
        fake_nvidia_apt_repo(CACHE / "mirror" / FAKE_APT, dict({"cuda-drivers": [OLD + "-1", NEW + "-1"]},
                                                               **{p: [TOOLKIT_OLD, TOOLKIT_NEW] for p in TOOLKIT}))
        node_exec(FIRST, "sh", "-c", "echo 'deb [trusted=yes] http://10.250.0.6:8080/%s ./' > "
                  "/etc/apt/sources.list.d/%s.list" % (FAKE_APT, FAKE_APT))
        node_exec(FIRST, "apt-get", "update", "-qq", "-o", "Dir::Etc::sourcelist=sources.list.d/%s.list" % FAKE_APT,
                  "-o", "Dir::Etc::sourceparts=-", "-o", "APT::Get::List-Cleanup=0", timeout=120)
        node_exec(FIRST, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-qq",
                  "cuda-drivers=%s-1" % OLD, *["%s=%s" % (p, TOOLKIT_OLD) for p in TOOLKIT], timeout=120)
        info["pkgs_before"] = _installed(FIRST)
        info["containerd_before"] = _containerd_started(FIRST)
        info["third"] = _upgrade("preinstalled", prom, "--limit", FIRST, **PREINSTALLED)
        info["pkgs_after"] = _installed(FIRST)
        info["containerd_after"] = _containerd_started(FIRST)
        info["after_third"] = _node(FIRST)
        info["fourth"] = _upgrade("preinstalled-rerun", prom, "--limit", FIRST, **PREINSTALLED)
        yield info
    finally:
        node_exec(FIRST, "sh", "-c", "rm -f /etc/apt/sources.list.d/%s.list; dpkg --purge cuda-drivers %s >/dev/null 2>&1"
                  % (FAKE_APT, " ".join(TOOLKIT)), check=False)
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


def test_preinstalled_mode_upgrades_the_packages_restarts_containerd_and_passes_the_gate(gsu):
    assert gsu["pkgs_before"] == dict({"cuda-drivers": OLD + "-1"}, **{p: TOOLKIT_OLD for p in TOOLKIT}), gsu["pkgs_before"]
    rc, out = gsu["third"]
    assert rc == 0, "preinstalled run failed (log %s): %s" % (LOGS / "gpu-stack-preinstalled.log", out[-4000:])
    assert gsu["pkgs_after"] == dict({"cuda-drivers": NEW + "-1"}, **{p: TOOLKIT_NEW for p in TOOLKIT}), gsu["pkgs_after"]
    assert "RUNNING HANDLER [gpuops.cluster.gpu_stack_upgrade : Restart what uses the toolkit]" in out, out[-4000:]
    assert gsu["containerd_after"] != gsu["containerd_before"], "containerd was not restarted"
    assert gsu["after_third"] == {"driver": NEW, "state": "upgrade-done", "unschedulable": False}, gsu["after_third"]
    rc, out = gsu["fourth"]
    assert rc == 0 and "%s is already at driver %s and healthy" % (FIRST, NEW) in out, out[-4000:]
    changed = re.search(r"%s : ok=\d+ changed=(\d+)" % FIRST, out)
    assert changed and changed.group(1) == "0", out[-3000:]
