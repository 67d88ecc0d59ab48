"""Platform roles on the real kube-apiserver + kwok test bed: the helm_release mechanism, istio and
gpu_operator, run through ansible-playbook (playbooks/platform.yml) with a real Helm 3 built from the
Go module proxy and the upstream charts in ../shared/charts.

What is real: kube-apiserver (CRD schema validation, admission, RBAC), kube-controller-manager,
kube-scheduler, Helm and its release records, the charts. What is not: there is no kubelet, no
container runtime and no Envoy -- kwok moves the charts' Pods to Running/Ready, so istiod, the
gateway, the GPU operator and its operands never run; the GPU nodes are kwok fakes advertising
``nvidia.com/gpu`` (hardware fake). Checks stop at "accepted by the apiserver and reported ready".
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.testbed.common import (SHARED, free_port, kill_group, private_stdin, require_binary,
                                  run_json_playbook)

# the module fixture runs the platform playbook three times (helm --wait on a loaded 2-core box)
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
PLATFORM = REPO / "playbooks" / "platform.yml"
HELM_HINT = "run `bash scripts/build/helm.sh` (scripts/setup helm)"
ISTIO_CRDS = 15
# every ansible-playbook output of this module, for the no_log grep
OUTPUTS: list = []


# -- plumbing --------------------------------------------------------------------------------------
def _pki():
    """A root CA, the mesh intermediate (what Vault's PKI would issue) and an ingress certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject, key, issuer, issuer_key, ca, sans=()):
        b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=2))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False)
        return b.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()

    def pem(key):
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()

    root_key, ca_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    return {
        "root_cert": cert("gpuops test root", root_key, "gpuops test root", root_key, True),
        "ca_cert": cert("gpuops mesh intermediate", ca_key, "gpuops test root", root_key, True),
        "ca_key": pem(ca_key),
        "ingress_cert": cert("models.gpuops.test", leaf_key, "gpuops test root", root_key, False,
                             ["models.gpuops.test"]),
        "ingress_key": pem(leaf_key),
    }


def _helm_env(home: Path) -> dict:
    return {"HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data")}


def run(playbook: Path, workdir: Path, inventory: Path, extra_vars: dict, check=False, timeout=900) -> dict:
    """ansible-playbook (JSON callback) with a private stdin; results by task name, stats, CPU."""
    workdir.mkdir(parents=True, exist_ok=True)
    vars_file = workdir / f"vars-{time.time_ns()}.json"
    vars_file.write_text(json.dumps(extra_vars))
    env = dict(os.environ)
    env.update({"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json", "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_LOCALHOST_WARNING": "0"})
    env.update(_helm_env(workdir.parent / "helm-home"))
    argv = ["timeout", str(timeout), "ansible-playbook", "-i", str(inventory), str(playbook), "-e", f"@{vars_file}"]
    if check:
        argv += ["--check", "--diff"]
    out = run_json_playbook(argv, env, workdir, "localhost")
    OUTPUTS.append(out["stdout"] + out["stderr"])
    return out


def brief(res: dict) -> str:
    failed = [f"{name}: {r.get('msg')}" for name, rs in res["tasks"].items() for r in rs if r.get("failed")]
    changed = [name for name, rs in res["tasks"].items() if any(r.get("changed") for r in rs)]
    return (f"rc={res['rc']} stats={res['stats']} failed={failed} changed={changed}\n"
            f"stderr tail: {res['stderr'][-1500:]}")


def inventory(path: Path, gpu_hosts: dict) -> Path:
    """localhost (the controller) plus GPU hosts that are only read (never connected to)."""
    inv = {"all": {"hosts": {"localhost": {"ansible_connection": "local",
                                           "ansible_python_interpreter": sys.executable}},
                   "children": {"gpu_nodes": {"hosts": gpu_hosts}}}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(inv))
    return path


def helm_list(kubeconfig: str, home: Path) -> dict:
    env = dict(os.environ, KUBECONFIG=kubeconfig, **_helm_env(home))
    out = subprocess.run([require_binary("helm", HELM_HINT), "list", "-A", "-o", "json"], capture_output=True,
                         text=True, env=env, check=True, timeout=60)
    return {(r["namespace"], r["name"]): r for r in json.loads(out.stdout)}


def custom(api, group, version, ns, plural, name):
    from kubernetes import client
    return client.CustomObjectsApi(api).get_namespaced_custom_object(group, version, ns, plural, name)


# -- the platform, installed once for the module --------------------------------------------------
@pytest.fixture(scope="module")
def platform(k8s, tmp_path_factory):
    require_binary("helm", HELM_HINT)
    work = tmp_path_factory.mktemp("platform")
    pki = _pki()
    gpu_hosts = {n: {"gpuops_gpu": {"product": "NVIDIA-H100-80GB-HBM3", "count": 8}}
                 for n in ("gpu-node-0", "gpu-node-1", "gpu-node-2")}
    gpu_hosts["gpu-node-1"]["gpu_operator_node_mig_config"] = "all-disabled"
    inv = inventory(work / "hosts.yml", gpu_hosts)
    xvars = {
        "gpuops_kubeconfig": k8s.kubeconfig, "gpuops_helm_binary": require_binary("helm", HELM_HINT),
        "gpuops_chart_dir": str(SHARED / "charts"), "gpuops_helm_source": "bundle",
        # no istiod answers webhooks here, and the apiserver would dial its Service off-host
        "istio_webhooks": False, "istio_gateway_service_type": "NodePort",
        "istio_ca_cert": pki["ca_cert"], "istio_ca_key": pki["ca_key"], "istio_root_cert": pki["root_cert"],
        "istio_ingress_tls_cert": pki["ingress_cert"], "istio_ingress_tls_key": pki["ingress_key"],
        "istio_ingress_hosts": ["models.gpuops.test"],
        "gpu_operator_allocatable_timeout": 120, "gpu_operator_allocatable_delay": 2,
        # tests/integration/test_monitoring.py runs the monitoring role on its own test bed
        "gpuops_skip_layers": {"monitoring": "proven by tests/integration/test_monitoring.py"},
    }
    runs = {}
    runs["first"] = run(PLATFORM, work / "first", inv, xvars)
    assert runs["first"]["rc"] == 0, brief(runs["first"])
    runs["second"] = run(PLATFORM, work / "second", inv, xvars)
    runs["check"] = run(PLATFORM, work / "check", inv, xvars, check=True)
    for name, r in runs.items():
        print(f"platform run {name}: rc={r['rc']} wall={r['wall']}s cpu={r['cpu']}s changed={r['stats'].get('changed')}")
    yield {"runs": runs, "pki": pki, "work": work, "vars": xvars, "inventory": inv, "helm_home": work / "helm-home"}


def test_first_run_deploys_every_release_once(platform, k8s):
    releases = helm_list(k8s.kubeconfig, platform["helm_home"])
    for key, chart in {("istio-system", "istio-base"): "base-1.30.3", ("istio-system", "istiod"): "istiod-1.30.3",
                       ("istio-ingress", "istio-ingressgateway"): "gateway-1.30.3",
                       ("gpu-operator", "gpu-operator"): "gpu-operator-v26.7.0"}.items():
        assert key in releases, f"release {key} missing: {sorted(releases)}"
        assert releases[key]["status"] == "deployed" and releases[key]["chart"] == chart, releases[key]
        # revision 1 after three runs: neither the second run nor check mode upgraded anything
        assert releases[key]["revision"] == "1", releases[key]


def test_second_run_and_check_mode_change_nothing(platform):
    first, second, check = (platform["runs"][k] for k in ("first", "second", "check"))
    assert first["stats"]["changed"] > 0, brief(first)
    for r in (second, check):
        assert r["rc"] == 0, brief(r)
        assert r["stats"]["changed"] == 0, brief(r)
    helm_tasks = [n for n in second["tasks"] if n.startswith("Helm release ")]
    assert len(helm_tasks) == 4, helm_tasks
    assert all(not res.get("changed") for n in helm_tasks for res in second["tasks"][n])


def test_istio_crds_established_and_owned_by_the_base_release(platform, k8s):
    from kubernetes import client
    with k8s.api_client() as api:
        crds = [c for c in client.ApiextensionsV1Api(api).list_custom_resource_definition().items
                if c.spec.group.endswith("istio.io")]
    assert len(crds) == ISTIO_CRDS
    for c in crds:
        assert any(x.type == "Established" and x.status == "True" for x in c.status.conditions), c.metadata.name
        assert (c.metadata.annotations or {}).get("meta.helm.sh/release-name") == "istio-base", c.metadata.name
    # the test bed applied them without Helm: the first run adopted them, the second had nothing to adopt
    adopted = platform["runs"]["first"]["tasks"]["Mark existing objects as owned by release istio-base"]
    assert sum(1 for r in adopted for x in r.get("results", []) if x.get("changed")) == ISTIO_CRDS


def test_mesh_objects_are_accepted_and_schema_validation_is_live(platform, k8s):
    from kubernetes import client
    from kubernetes.client.rest import ApiException
    with k8s.api_client() as api:
        pa = custom(api, "security.istio.io", "v1", "istio-system", "peerauthentications", "default")
        tel = custom(api, "telemetry.istio.io", "v1", "istio-system", "telemetries", "mesh-default")
        gw = custom(api, "networking.istio.io", "v1", "istio-ingress", "gateways", "gpuops-ingress")
        assert pa["spec"] == {"mtls": {"mode": "STRICT"}}
        assert tel["spec"]["metrics"] == [{"providers": [{"name": "prometheus"}]}]
        https = [s for s in gw["spec"]["servers"] if s["port"]["protocol"] == "HTTPS"][0]
        assert https["tls"] == {"mode": "SIMPLE", "credentialName": "gpuops-ingress-tls"}
        assert https["hosts"] == ["models.gpuops.test"]
        assert gw["spec"]["selector"] == {"istio": "ingressgateway"}
        # the gateway Deployment the Gateway selects carries that label
        dep = client.AppsV1Api(api).read_namespaced_deployment("istio-ingressgateway", "istio-ingress")
        assert dep.spec.template.metadata.labels.get("istio") == "ingressgateway"
        # the same CRD rejects a bad object: validation is the upstream schema, not a rubber stamp
        bad = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
               "metadata": {"name": "bad", "namespace": "istio-system"}, "spec": {"mtls": {"mode": "SOMETIMES"}}}
        with pytest.raises(ApiException) as exc:
            client.CustomObjectsApi(api).create_namespaced_custom_object(
                "security.istio.io", "v1", "istio-system", "peerauthentications", bad, dry_run="All")
        assert exc.value.status == 422


def test_ca_and_tls_secrets_hold_the_pems_given(platform, k8s):
    from kubernetes import client
    pki = platform["pki"]
    with k8s.api_client() as api:
        core = client.CoreV1Api(api)
        ca = core.read_namespaced_secret("cacerts", "istio-system").data
        tls = core.read_namespaced_secret("gpuops-ingress-tls", "istio-ingress")
    dec = {k: base64.b64decode(v).decode() for k, v in ca.items()}
    assert dec["ca-cert.pem"] == pki["ca_cert"] and dec["ca-key.pem"] == pki["ca_key"]
    assert dec["root-cert.pem"] == pki["root_cert"]
    assert dec["cert-chain.pem"] == pki["ca_cert"].strip() + "\n" + pki["root_cert"].strip() + "\n"
    assert tls.type == "kubernetes.io/tls"
    assert base64.b64decode(tls.data["tls.key"]).decode() == pki["ingress_key"]


def test_gpu_operator_values_reach_the_cluster_policy(platform, k8s):
    from kubernetes import client
    with k8s.api_client() as api:
        cp = client.CustomObjectsApi(api).get_cluster_custom_object("nvidia.com", "v1", "clusterpolicies",
                                                                   "cluster-policy")
        core = client.CoreV1Api(api)
        dp = core.read_namespaced_config_map("gpuops-device-plugin-config", "gpu-operator").data
        mig = core.read_namespaced_config_map("gpuops-mig-parted-config", "gpu-operator").data
        nodes = {n: core.read_node(n).metadata.labels for n in ("gpu-node-0", "gpu-node-1", "gpu-node-2")}
    spec = cp["spec"]
    assert spec["toolkit"]["enabled"] is False            # container_runtime is the only containerd writer
    assert spec["driver"]["enabled"] is True and spec["driver"]["version"] == "595.91.07"
    assert spec["mig"]["strategy"] == "single"
    assert spec["devicePlugin"]["config"] == {"name": "gpuops-device-plugin-config", "default": "default"}
    assert spec["migManager"]["config"]["name"] == "gpuops-mig-parted-config"
    # the exporter runs; its ServiceMonitor is the monitoring role's (one owner), not the chart's
    assert spec["dcgmExporter"]["enabled"] is True and spec["dcgmExporter"]["serviceMonitor"]["enabled"] is False
    ts = yaml.safe_load(dp["time-sliced-4"])
    assert ts["sharing"]["timeSlicing"]["resources"] == [{"name": "nvidia.com/gpu", "replicas": 4}]
    assert yaml.safe_load(mig["config.yaml"])["mig-configs"]["all-1g.10gb"][0]["mig-devices"] == {"1g.10gb": 7}
    for labels in nodes.values():
        assert labels["nvidia.com/mig.config"] == "all-disabled"
        assert labels["nvidia.com/device-plugin.config"] == "default"
    check = platform["runs"]["first"]["tasks"]["Check every GPU node's allocatable nvidia.com resources"][0]
    assert check.get("failed") is not True and "gpu-node-0, gpu-node-1, gpu-node-2" in check["msg"]


def test_allocatable_check_names_each_node_that_does_not_match(platform, k8s):
    """FAKE GPUs: the kwok nodes advertise 8; the inventory says 4 for one node and names a node
    that does not exist. Only the check runs (tasks_from), with a short timeout."""
    work = platform["work"] / "allocatable"
    inv = inventory(work / "hosts.yml", {
        "gpu-node-0": {"gpuops_gpu": {"count": 8}},
        "gpu-node-1": {"gpuops_gpu": {"count": 4}},
        "gpu-node-2": {"gpuops_gpu": {"count": 8}, "gpu_operator_node_device_plugin_config": "time-sliced-4"},
        "gpu-node-404": {"gpuops_gpu": {"count": 8}}})
    pb = work / "check.yml"
    pb.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "Only the allocatable check", "ansible.builtin.include_role": {
            "name": "gpuops.cluster.gpu_operator", "tasks_from": "allocatable.yml"}}]}]))
    r = run(pb, work, inv, {"gpuops_kubeconfig": k8s.kubeconfig, "gpu_operator_allocatable_timeout": 4,
                            "gpu_operator_allocatable_delay": 2})
    assert r["rc"] != 0, brief(r)
    msg = r["tasks"]["Check every GPU node's allocatable nvidia.com resources"][0]["msg"]
    assert "3 GPU node(s)" in msg, msg
    assert "gpu-node-1 (host gpu-node-1) advertises allocatable nvidia.com/gpu 8 (inventory: 4" in msg
    assert "gpu-node-2 (host gpu-node-2) advertises allocatable nvidia.com/gpu 8 (inventory: 32" in msg
    assert "gpu-node-404 (host gpu-node-404): no such Node" in msg
    assert "gpu-node-0 (" not in msg


def test_toolkit_and_container_runtime_may_not_both_write_the_dropin(platform, k8s):
    work = platform["work"] / "toolkit"
    inv = inventory(work / "hosts.yml", {"gpu-node-0": {"gpuops_gpu": {"count": 8}},
                                         "gpu-node-1": {"gpuops_gpu": {"count": 8},
                                                        "container_runtime_nvidia_enabled": False}})
    pb = work / "toolkit.yml"
    pb.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "Validate only", "ansible.builtin.include_role": {
            "name": "gpuops.cluster.gpu_operator", "tasks_from": "assert.yml", "public": True}},
        {"name": "Show values", "ansible.builtin.debug": {"var": "_gpu_operator_values.toolkit"}}]}]))
    r = run(pb, work, inv, {"gpuops_kubeconfig": k8s.kubeconfig, "gpu_operator_toolkit_enabled": True})
    assert r["rc"] != 0
    msg = r["tasks"]["Check that the toolkit and container_runtime do not both write the nvidia drop-in"][0]["msg"]
    assert "container_runtime_nvidia_enabled: false for gpu-node-0 " in msg, msg
    # with container_runtime's drop-in off everywhere, the toolkit gets the env that avoids the clash
    inv = inventory(work / "hosts2.yml", {"gpu-node-0": {"gpuops_gpu": {"count": 8},
                                                         "container_runtime_nvidia_enabled": False}})
    r = run(pb, work, inv, {"gpuops_kubeconfig": k8s.kubeconfig, "gpu_operator_toolkit_enabled": True})
    assert r["rc"] == 0, brief(r)
    toolkit = r["tasks"]["Show values"][0]["_gpu_operator_values.toolkit"]
    env = {e["name"]: e["value"] for e in toolkit["env"]}
    assert toolkit["enabled"] is True
    assert env["RUNTIME_CONFIG_SOURCE"] == "file"
    assert env["RUNTIME_DROP_IN_CONFIG"] == "/etc/containerd/conf.d/99-nvidia.toml"
    assert env["CONTAINERD_CONFIG"] == "/etc/containerd/config.toml"


# -- the mechanism alone: values Helm would round-trip differently, and the repository source -----
PROBE_CHART = {
    "Chart.yaml": "apiVersion: v2\nname: gpuops-probe\nversion: 0.1.0\nappVersion: \"1.0\"\n",
    "templates/cm.yaml": ("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\n"
                          "data:\n  values.json: {{ toJson .Values | quote }}\n"),
}
# values whose type or spelling could change between Ansible, PyYAML and Helm's JSON/Go YAML, and
# that helm_values_canonical accepts
PROBE_VALUES = """
      replicas: 3
      ratio: 2.0
      half: 0.5
      big: 12345678901
      enabled: true
      nothing: null
      version: "1.30"
      octal: "0755"
      yes_string: "yes"
      on_string: "on"
      date_string: "2026-01-02"
      date: 2026-01-02
      empty: ""
      empty_map: {}
      empty_list: []
      nested: {a: [1, 2.0, {b: "true"}], c: {"d.e": "f"}}
      multiline: |
        line one
        line two
"""


def _probe_playbook(path: Path, chart: Path, ns: str, extra: str = "") -> Path:
    path.write_text(f"""
- hosts: localhost
  gather_facts: false
  vars:
    probe_values:{PROBE_VALUES}{extra}
  tasks:
    - name: Probe release
      ansible.builtin.include_role:
        name: gpuops.cluster.helm_release
      vars:
        helm_release_name: probe
        helm_release_namespace: {ns}
        helm_release_chart: gpuops-probe
        helm_release_chart_version: 0.1.0
        helm_release_chart_file: {chart}
        helm_release_values: "{{{{ probe_values }}}}"
""")
    return path


def test_values_that_round_trip_differently_cause_no_false_change(platform, k8s):
    work = platform["work"] / "probe"
    chart = work / "chart"
    for rel, text in PROBE_CHART.items():
        (chart / rel).parent.mkdir(parents=True, exist_ok=True)
        (chart / rel).write_text(text)
    ns = k8s.fresh_namespace("helm-probe")
    xv = {"gpuops_kubeconfig": k8s.kubeconfig, "gpuops_helm_binary": require_binary("helm", HELM_HINT)}
    inv = inventory(work / "hosts.yml", {})
    pb = _probe_playbook(work / "probe.yml", chart, ns)
    first = run(pb, work, inv, xv)
    assert first["rc"] == 0 and first["stats"]["changed"] == 1, brief(first)
    second = run(pb, work, inv, xv)
    check = run(pb, work, inv, xv, check=True)
    for r in (second, check):
        assert r["rc"] == 0 and r["stats"]["changed"] == 0, brief(r)
    # a real change is still one: check mode reports it without making it, then a run makes it
    pb2 = _probe_playbook(work / "probe2.yml", chart, ns, "\n      more: 1")
    check2 = run(pb2, work, inv, xv, check=True)
    assert check2["rc"] == 0 and check2["stats"]["changed"] == 1, brief(check2)
    assert helm_list(k8s.kubeconfig, platform["helm_home"])[(ns, "probe")]["revision"] == "1"
    changed = run(pb2, work, inv, xv)
    assert changed["rc"] == 0 and changed["stats"]["changed"] == 1, brief(changed)
    rel = helm_list(k8s.kubeconfig, platform["helm_home"])[(ns, "probe")]
    assert rel["revision"] == "2", rel


def test_values_helm_would_record_differently_upstream_false_change_and_our_refusal(platform, k8s):
    """kubernetes.core.helm alone: "y" is written unquoted, Helm records a boolean, and every run
    "upgrades" (the false change). helm_release refuses the value before anything runs."""
    work = platform["work"] / "raw"
    chart = work / "chart"
    for rel, text in PROBE_CHART.items():
        (chart / rel).parent.mkdir(parents=True, exist_ok=True)
        (chart / rel).write_text(text)
    ns = k8s.fresh_namespace("helm-raw")
    helm = require_binary("helm", HELM_HINT)
    inv = inventory(work / "hosts.yml", {})
    raw = work / "raw.yml"
    raw.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "Raw module", "kubernetes.core.helm": {
            "name": "raw", "release_namespace": ns, "chart_ref": str(chart), "binary_path": helm,
            "kubeconfig": k8s.kubeconfig, "release_values": {"answer": "y"}}}]}]))
    runs = [run(raw, work, inv, {}) for _ in range(2)]
    assert all(r["rc"] == 0 for r in runs), brief(runs[-1])
    assert runs[1]["stats"]["changed"] == 1, "upstream no longer reports a false change: " + brief(runs[1])
    rel = helm_list(k8s.kubeconfig, platform["helm_home"])[(ns, "raw")]
    assert rel["revision"] == "2", rel
    ours = work / "ours.yml"
    ours.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "Ours", "ansible.builtin.include_role": {"name": "gpuops.cluster.helm_release"},
         "vars": {"helm_release_name": "ours", "helm_release_namespace": ns, "helm_release_chart": "gpuops-probe",
                  "helm_release_chart_version": "0.1.0", "helm_release_chart_file": str(chart),
                  "helm_release_values": {"answer": "y"}}}]}]))
    r = run(ours, work, inv, {"gpuops_kubeconfig": k8s.kubeconfig, "gpuops_helm_binary": helm})
    assert r["rc"] != 0
    assert "values.answer string 'y' would reach Helm as a bool" in r["stdout"], brief(r)
    assert (ns, "ours") not in helm_list(k8s.kubeconfig, platform["helm_home"])


@pytest.fixture
def chart_repo(tmp_path):
    """A Helm repository on 127.0.0.1 (python http.server, bounded lifetime, stopped by PID) serving
    the gateway chart tarball from ../shared/charts with an index made by `helm repo index`."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(SHARED / "charts" / "gateway-1.30.3.tgz", root)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    subprocess.run([require_binary("helm", HELM_HINT), "repo", "index", str(root), "--url", url], check=True,
                   capture_output=True, timeout=60)
    with private_stdin() as stdin:
        proc = subprocess.Popen(["timeout", "600", sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                                 str(port), "--directory", str(root)], stdin=stdin, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        import urllib.request
        while True:
            try:
                with urllib.request.urlopen(url + "/index.yaml", timeout=2) as r:  # noqa: S310 - loopback
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        # the whole group: killing `timeout` alone orphaned the server, outliving its bound
        kill_group(proc.pid, grace=5)
        proc.wait(timeout=10)


def test_repository_source_installs_the_same_chart_with_the_same_options(platform, k8s, chart_repo):
    work = platform["work"] / "repo"
    ns = k8s.fresh_namespace("helm-repo")
    pb = work / "repo.yml"
    work.mkdir(parents=True, exist_ok=True)
    pb.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "Gateway from a Helm repository", "ansible.builtin.include_role": {
            "name": "gpuops.cluster.helm_release"},
         "vars": {"helm_release_name": "repo-gw", "helm_release_namespace": ns, "helm_release_chart": "gateway",
                  "helm_release_chart_version": "1.30.3", "helm_release_source": "repository",
                  "helm_release_repo_name": "gpuops-test", "helm_release_repo_url": chart_repo,
                  "helm_release_values": {"service": {"type": "ClusterIP"}}}}]}]))
    inv = inventory(work / "hosts.yml", {})
    xv = {"gpuops_kubeconfig": k8s.kubeconfig, "gpuops_helm_binary": require_binary("helm", HELM_HINT)}
    first = run(pb, work, inv, xv)
    assert first["rc"] == 0, brief(first)
    second = run(pb, work, inv, xv)
    assert second["rc"] == 0 and second["stats"]["changed"] == 0, brief(second)
    rel = helm_list(k8s.kubeconfig, platform["helm_home"])[(ns, "repo-gw")]
    assert rel["status"] == "deployed" and rel["chart"] == "gateway-1.30.3" and rel["revision"] == "1"


def test_no_private_key_in_any_playbook_output(platform):
    """no_log proof: every playbook output of this module (JSON callback: all task results, args
    and diffs) is searched for the private keys passed in, raw and base64-encoded."""
    pki = platform["pki"]
    assert len(OUTPUTS) >= 4
    for key in (pki["ca_key"], pki["ingress_key"]):
        body = [line for line in key.splitlines() if line and not line.startswith("-----")]
        needles = [line for line in body if len(line) >= 20]
        needles.append(base64.b64encode(key.encode()).decode()[:40])
        for out in OUTPUTS:
            for needle in needles:
                assert needle not in out, "a private key appears in a playbook output"
