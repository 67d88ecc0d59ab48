"""The platform layers on the lab cluster (issue 10): what site.yml's platform play left on a real
kubeadm cluster, and the GPU operator's allocatable gate on real nodes.

What the lab proves: each chart rendered by Helm and accepted by a real API server with real
admission (RBAC, schema validation of every object), the CRDs Established, the roles' own objects,
one owner per scrape target. What it does not: the charts' images are not built here (istiod, Envoy,
the GPU operator, Prometheus, Grafana), so those Pods never start (docs/lab.md "Platform layers").
The GPUs are FAKES: the allocatable gate reads a status patch standing in for the device plugin."""

import base64
import json
import os
import textwrap
import time

import hvac
import pytest

from tests.cluster.lab import (CACHE, CONTROL, GPU, KUBECONFIG, LOGS, VAULT_API, VAULT_CA, VAULT_SECRETS, ansible_env,
                               fake_gpus, kubectl, run)

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(1200)]

HELM = str(os.path.join(os.environ.get("GPUOPS_BIN", str(CACHE / "bin")), "helm"))


def _json(*args):
    return json.loads(kubectl(*args, "-o", "json").stdout)


def test_every_platform_release_is_deployed(lab):
    proc = run([HELM, "--kubeconfig", str(KUBECONFIG), "list", "-A", "-o", "json"], timeout=120)
    releases = {(r["namespace"], r["name"]): r for r in json.loads(proc.stdout)}
    want = {("istio-system", "istio-base"), ("istio-system", "istiod"), ("monitoring", "kube-prometheus-stack"),
            ("gpu-operator", "gpu-operator")}
    assert want <= set(releases), sorted(releases)
    for key in want:
        assert releases[key]["status"] == "deployed", (key, releases[key])


def test_platform_crds_are_established(lab):
    crds = {c["metadata"]["name"]: c for c in _json("get", "crds")["items"]}
    for name in ["peerauthentications.security.istio.io", "gateways.networking.istio.io",
                 "telemetries.telemetry.istio.io", "servicemonitors.monitoring.coreos.com",
                 "prometheusrules.monitoring.coreos.com", "clusterpolicies.nvidia.com"]:
        assert name in crds, name
        cond = {c["type"]: c["status"] for c in crds[name]["status"]["conditions"]}
        assert cond.get("Established") == "True", (name, cond)


def test_mesh_policy_and_telemetry_exist(lab):
    pa = _json("-n", "istio-system", "get", "peerauthentications.security.istio.io")["items"]
    assert any(p["spec"].get("mtls", {}).get("mode") == "STRICT" and not p["spec"].get("selector") for p in pa), pa
    tel = _json("-n", "istio-system", "get", "telemetries.telemetry.istio.io")["items"]
    assert tel, "no mesh-wide Telemetry (istio_requests_total for the canary gates)"


def test_mesh_ca_and_ingress_certificate_come_from_vault_kv(lab):
    """The istio role (istio_pki_source: vault in the lab) wrote Secret cacerts and the ingress TLS Secret
    from the vault layer's KV entries, read with the deployer token: byte for byte what KV holds."""
    init = json.loads((VAULT_SECRETS / "init.json").read_text())
    client = hvac.Client(url=VAULT_API[CONTROL[0]], token=init["root_token"], verify=str(VAULT_CA))

    def kv(path):
        return client.secrets.kv.v2.read_secret_version(path=path, mount_point="secret",
                                                        raise_on_deleted_version=True)["data"]["data"]

    def data(namespace, name):
        return {k: base64.b64decode(v).decode() for k, v in _json("-n", namespace, "get", "secret", name)["data"].items()}

    mesh = kv("platform/istio/cacerts")
    assert set(mesh) == {"ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"}, sorted(mesh)
    assert data("istio-system", "cacerts") == mesh
    ingress = kv("platform/istio/ingress")
    tls = data("istio-ingress", "gpuops-ingress-tls")
    assert tls["tls.crt"] == ingress["tls.crt"] and tls["tls.key"] == ingress["tls.key"]
    assert "BEGIN CERTIFICATE" in tls["tls.crt"]


def test_one_dcgm_service_monitor_and_the_serving_rules(lab):
    sms = _json("get", "servicemonitors.monitoring.coreos.com", "-A")["items"]
    dcgm = [s["metadata"]["name"] for s in sms
            if s["spec"].get("selector", {}).get("matchLabels", {}).get("app") == "nvidia-dcgm-exporter"]
    assert dcgm == ["gpuops-dcgm-exporter"], dcgm
    rules = _json("-n", "monitoring", "get", "prometheusrules.monitoring.coreos.com")["items"]
    alerts = {r["alert"] for pr in rules for g in pr["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert {"GpuXidError", "GpuCountDropped", "ServingErrorBudgetBurn1h", "ServingVersionLatencyP95High",
            "MeshWorkloadErrorRateHigh"} <= alerts, sorted(alerts)


def _allocatable_playbook(tmp_path):
    pb = tmp_path / "allocatable.yml"
    pb.write_text(textwrap.dedent("""\
        - name: The GPU operator's allocatable gate, alone
          hosts: localhost
          connection: local
          gather_facts: false
          tasks:
            - name: Check every GPU node's allocatable resources
              ansible.builtin.include_role:
                name: gpuops.cluster.gpu_operator
                tasks_from: allocatable
              vars:
                gpu_operator_allocatable_check: true
                gpu_operator_allocatable_timeout: 20
                gpu_operator_allocatable_delay: 2
        """))
    return pb


def test_allocatable_gate_passes_and_names_the_node_that_falls_short(lab, tmp_path):
    pb = _allocatable_playbook(tmp_path)
    env = ansible_env()
    argv = ["ansible-playbook", "-i", "inventories/lab/hosts.yml", str(pb)]
    for node in GPU:
        fake_gpus(node, 8)
    time.sleep(1)
    ok = run(argv, env=env, timeout=300, check=False)
    (LOGS / "platform-allocatable-ok.log").write_text(ok.stdout + ok.stderr)
    assert ok.returncode == 0, ok.stdout[-3000:]
    fake_gpus(GPU[1], 4)
    try:
        bad = run(argv, env=env, timeout=300, check=False)
        (LOGS / "platform-allocatable-short.log").write_text(bad.stdout + bad.stderr)
        assert bad.returncode != 0
        assert GPU[1] in bad.stdout and GPU[0] not in bad.stdout.split("FAILED")[-1].split("PLAY RECAP")[0], \
            bad.stdout[-3000:]
    finally:
        fake_gpus(GPU[1], 8)
