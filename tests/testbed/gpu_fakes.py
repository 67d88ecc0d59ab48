"""HARDWARE FAKES for the GPU stack upgrade (playbooks/gpu_stack_upgrade.yml): no GPU, no DCGM and no
NVIDIA driver run on these machines. Shared by tests/integration/test_gpu_stack_upgrade.py (kube-apiserver
+ kwok test bed) and tests/cluster/test_gpu_stack.py (the lab cluster); nothing of it is product code.

- ``FakeDcgmExporter``: dcgm-exporter's /metrics text (DCGM_FI_DEV_GPU_TEMP, DCGM_FI_DEV_XID_ERRORS per
  GPU, with the exporter's ``Hostname`` label) from a thread on 127.0.0.1, for a real Prometheus to
  scrape; bounded lifetime (it shuts itself down after LIFETIME s), stopped by ``stop()``;
- ``fake_nvidia_apt_repo``: a flat apt repository of empty packages named like NVIDIA's (cuda-drivers, the
  container toolkit's four) at the versions asked, for preinstalled mode's apt step: each installs one
  file under /usr/share/doc/<name>/ saying it is a FAKE, and nothing else (no kernel module, no library);
- ``DriverStandIn``: GPU feature discovery (the node's driver-version label) and, in operator mode, the
  GPU operator's upgrade controller (the upgrade-state label), acting only on a node the playbook has
  cordoned, through any API server (``api`` is an object whose ``api_client()`` gives a kubernetes
  ApiClient: the test bed's KubeCluster, or ``KubeconfigApi``).
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import subprocess
import tempfile
import threading
import time
from pathlib import Path

OLD, NEW = "580.95.05", "595.91.07"
DRIVER_LABEL = "nvidia.com/cuda.driver-version.full"
STATE_LABEL = "nvidia.com/gpu-driver-upgrade-state"
TEST_LABEL = "gpuops.io/gsu-test"          # the nodes a DriverStandIn acts on carry it ("true")
GPUS = 8
LIFETIME = 600


def fake_nvidia_apt_repo(dest, packages):
    """FAKE NVIDIA packages: ``packages`` {name: [version, ...]} as empty .debs in the flat apt repository
    ``dest`` (Packages, Packages.gz; no Release file: a source line with [trusted=yes] reads it). Built with
    dpkg-deb, indexed here (the fields dpkg-scanpackages writes); idempotent (a .deb already there is kept)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    stanzas = []
    for name, versions in sorted(packages.items()):
        for version in versions:
            deb = dest / ("%s_%s_all.deb" % (name, version))
            control = ("Package: %s\nVersion: %s\nArchitecture: all\nMaintainer: gpuops.cluster tests <tests@gpuops.invalid>\n"
                       "Section: misc\nPriority: optional\nDescription: FAKE stand-in for NVIDIA's %s (gpuops.cluster tests)\n"
                       " Installs nothing but this note: no driver, no kernel module, no library.\n" % (name, version, name))
            if not deb.exists():
                with tempfile.TemporaryDirectory() as tmp:
                    root = Path(tmp) / "pkg"
                    (root / "DEBIAN").mkdir(parents=True)
                    (root / "DEBIAN" / "control").write_text(control)
                    doc = root / "usr" / "share" / "doc" / name
                    doc.mkdir(parents=True)
                    (doc / "FAKE").write_text("FAKE %s %s: a gpuops.cluster test package, not NVIDIA's\n" % (name, version))
                    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)],
                                   check=True, capture_output=True)
            data = deb.read_bytes()
            fields = control.split("Description:", 1)
            stanzas.append("%sFilename: ./%s\nSize: %d\nMD5sum: %s\nSHA1: %s\nSHA256: %s\nDescription:%s" % (
                fields[0], deb.name, len(data), hashlib.md5(data).hexdigest(), hashlib.sha1(data).hexdigest(),
                hashlib.sha256(data).hexdigest(), fields[1]))
    index = "\n".join(stanzas).encode()
    (dest / "Packages").write_bytes(index)
    (dest / "Packages.gz").write_bytes(gzip.compress(index, mtime=0))
    return dest


class KubeconfigApi:
    """``api_client()`` from a kubeconfig file (the lab's admin.conf), for DriverStandIn."""

    def __init__(self, kubeconfig):
        self.kubeconfig = str(kubeconfig)

    def api_client(self):
        from kubernetes import config
        return config.new_client_from_config(config_file=self.kubeconfig)


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
    it sets the driver label (and, on a node of ``operator``, the upgrade state, through
    validation-required to upgrade-done). Records every node it saw cordoned and the most cordoned
    at one time. Event-driven (a watch on the test's nodes, re-listed every second), so it reacts
    within milliseconds of a cordon and costs nothing while nothing changes."""

    def __init__(self, api, nodes, operator=()):
        super().__init__(daemon=True)
        self.api, self.nodes, self.operator = api, list(nodes), set(operator)
        self.seen: list = []
        self.max_cordoned = 0
        self.cordoned: dict = {}
        self.halt = threading.Event()
        self.ready = threading.Event()

    def _on(self, core, node):
        name = node.metadata.name
        if name not in self.nodes:
            return
        labels = node.metadata.labels or {}
        self.cordoned[name] = bool(node.spec.unschedulable)
        self.max_cordoned = max(self.max_cordoned, sum(self.cordoned.values()))
        if not node.spec.unschedulable:
            return
        if name not in self.seen:
            self.seen.append(name)
        operator = name in self.operator
        if labels.get(DRIVER_LABEL) == NEW and (not operator or labels.get(STATE_LABEL) == "upgrade-done"):
            return
        if operator and labels.get(STATE_LABEL) != "validation-required":
            new = {STATE_LABEL: "validation-required"}
        else:
            new = {DRIVER_LABEL: NEW, STATE_LABEL: "upgrade-done"} if operator else {DRIVER_LABEL: NEW}
        core.patch_node(name, {"metadata": {"labels": new}})   # its event brings the next step

    def run(self):
        from kubernetes import client, watch
        with self.api.api_client() as api:
            core = client.CoreV1Api(api)
            deadline = time.monotonic() + LIFETIME
            while not self.halt.is_set() and time.monotonic() < deadline:
                listed = core.list_node(label_selector=TEST_LABEL + "=true")
                for node in listed.items:
                    self._on(core, node)
                self.ready.set()
                w = watch.Watch()
                try:
                    for ev in w.stream(core.list_node, label_selector=TEST_LABEL + "=true",
                                       resource_version=listed.metadata.resource_version, timeout_seconds=1):
                        if ev["type"] in ("ADDED", "MODIFIED"):
                            self._on(core, ev["object"])
                        if self.halt.is_set():
                            w.stop()
                except client.ApiException:     # e.g. 410 Gone: list again
                    continue

    def start(self):
        super().start()
        self.ready.wait(timeout=30)

    def stop(self):
        self.halt.set()
        self.join(timeout=10)
