"""roles/torchserve and roles/canary_release on the real test bed (docs/serving.md).

- ``k8s`` (session): real kube-apiserver (Istio + prometheus-operator CRDs), controllers, scheduler,
  kwok fake GPU nodes labelled per zone. Every object the torchserve role writes is accepted by the
  apiserver (server-side apply; the CRD schemas validate the Istio objects), the real scheduler places
  the pods on the labelled nodes across zones, kwok marks them Running. Second run: changed=0. Check
  mode: a server-side dry run that reports the change and writes nothing.
- ``torchserve`` (session): real TorchServe 0.12. The pod's own scripts (the init container's
  fetch_model.py, the probes' ready.py), read back from the ConfigMap the role wrote, are run here
  against the real archive and the real management API: that is the readiness rule of the pods.
- ``prometheus_factory``: real Prometheus scraping TorchServe. The canary_release role runs end to end
  once to a promotion (canary Deployment written by the torchserve role) and once to a rollback.

There is no kubelet or container runtime here (kwok), so no TorchServe image runs in a pod: real
readiness gating of pods and NetworkPolicy enforcement need the lab cluster (docs/serving.md).
"""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.integration import canary_support as cs

pytestmark = pytest.mark.integration

MODEL = "classifier"
STABLE, GOOD, BAD = "71.0", "72.0", "73.0"
APP = "resnet"
ROLE_TASK = "gpuops.cluster.canary_release : "


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _archive(version: str, fail_rate: float = 0.0) -> Path:
    from tests.testbed.model import build as model_build
    return Path(model_build.build_archive(version, fail_rate, 0, model_name=MODEL))


def _role_playbook(path: Path, role: str, play_vars: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump([{"name": role, "hosts": "localhost", "gather_facts": False, "vars": play_vars,
                                     "roles": [{"role": f"gpuops.cluster.{role}"}]}]))
    return path


def _run(work: Path, role: str, xvars: dict, check: bool = False, play_vars: dict = None) -> dict:
    """``play_vars`` go into the play (where a site keeps its torchserve_* settings); ``xvars`` are
    extra vars, which would override the variables canary_release passes to the torchserve role."""
    t0 = time.monotonic()
    res = cs.run_playbook(_role_playbook(work / f"{role}.yml", role, play_vars or {}), xvars, work, check=check,
                          timeout=600)
    res["wall"] = round(time.monotonic() - t0, 1)
    return res


def _brief(res: dict) -> str:
    failed = {n: r.get("msg") for n, r in res["tasks"].items() if r.get("failed")}
    return f"rc={res['rc']} stats={res.get('stats')} failed={failed}\n{res['stderr'][-2000:]}\n{res['stdout'][-3000:]}"


def _changed(res: dict) -> int:
    return sum(h.get("changed", 0) for h in (res.get("stats") or {}).values())


def _role_vars(k8s, ns: str, archives: dict, **extra) -> dict:
    v = {"torchserve_namespace": ns, "torchserve_app": APP, "torchserve_model": MODEL,
         "torchserve_stable_version": STABLE, "torchserve_archives": archives,
         "torchserve_kubeconfig": k8s.kubeconfig,
         # small requests so other tests' pods still fit on the fake nodes; GPUs are requested for real
         "torchserve_cpu_request": "500m", "torchserve_cpu_limit": "1", "torchserve_memory_request": "1Gi",
         "torchserve_memory_limit": "2Gi", "torchserve_gpus": 1,
         "torchserve_vault_enabled": True, "torchserve_vault_role": "torchserve-resnet",
         "torchserve_vault_secrets": {"model-bucket": "secret/data/serving/model-bucket"}}
    v.update(extra)
    return v


def _pods(api, ns: str, track: str) -> list:
    from kubernetes import client
    return client.CoreV1Api(api).list_namespaced_pod(ns, label_selector=f"app={APP},version={track}").items


# -- the torchserve role on the apiserver ----------------------------------------------------------
@pytest.fixture(scope="module")
def served(k8s, tmp_path_factory):
    work = tmp_path_factory.mktemp("torchserve-role")
    ns = k8s.fresh_namespace("ts")
    archive = _archive(STABLE)
    archives = {STABLE: {"url": archive.as_uri(), "sha256": _sha(archive)}}
    xvars = _role_vars(k8s, ns, archives)
    runs = {"first": _run(work / "first", "torchserve", xvars)}
    assert runs["first"]["rc"] == 0, _brief(runs["first"])
    runs["second"] = _run(work / "second", "torchserve", xvars)
    runs["check"] = _run(work / "check", "torchserve", dict(xvars, torchserve_batch_size=16), check=True)
    fresh = "ts-fresh-" + os.urandom(3).hex()
    runs["check_fresh"] = _run(work / "check-fresh", "torchserve", dict(xvars, torchserve_namespace=fresh), check=True)
    runs["refused"] = _run(work / "refused", "torchserve", dict(xvars, torchserve_replicas=2,
                                                                 torchserve_archives={}))
    for name, r in runs.items():
        print(f"torchserve role run {name}: rc={r['rc']} wall={r['wall']}s stats={r.get('stats')}")
    yield {"ns": ns, "runs": runs, "vars": xvars, "fresh": fresh, "archive": archive}


def test_objects_are_accepted_and_carry_the_role_settings(served, k8s):
    from kubernetes import client
    ns = served["ns"]
    with k8s.api_client() as api:
        apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
        co = client.CustomObjectsApi(api)
        stable = apps.read_namespaced_deployment(f"{APP}-stable", ns)
        canary = apps.read_namespaced_deployment(f"{APP}-canary", ns)
        assert stable.spec.replicas == 3 and canary.spec.replicas == 0
        pod = stable.spec.template
        c = pod.spec.containers[0]
        assert c.resources.requests["nvidia.com/gpu"] == "1" and c.resources.limits["nvidia.com/gpu"] == "1"
        assert c.resources.requests["cpu"] == "500m" and c.resources.limits["memory"] == "2Gi"
        assert c.liveness_probe.http_get.path == "/ping"
        assert c.readiness_probe._exec.command == ["python3", "/opt/gpuops/ready.py"]
        assert c.startup_probe._exec.command == ["python3", "/opt/gpuops/ready.py"]
        assert c.startup_probe.period_seconds * c.startup_probe.failure_threshold >= 900
        assert pod.spec.init_containers[0].name == "fetch-model"
        env = {e.name: e.value for e in pod.spec.init_containers[0].env}
        assert env["MODEL_SHA256"] == served["vars"]["torchserve_archives"][STABLE]["sha256"]
        assert env["MODEL_VERSION"] == STABLE and pod.metadata.annotations["gpuops.io/model-version"] == STABLE
        tsc = pod.spec.topology_spread_constraints[0]
        assert tsc.topology_key == "topology.kubernetes.io/zone" and tsc.when_unsatisfiable == "DoNotSchedule"
        assert tsc.label_selector.match_labels == {"app": APP} and tsc.match_label_keys == ["version", "pod-template-hash"]
        ann = pod.metadata.annotations
        assert ann["vault.hashicorp.com/agent-inject"] == "true" and ann["vault.hashicorp.com/role"] == "torchserve-resnet"
        assert ann["vault.hashicorp.com/agent-inject-secret-model-bucket"] == "secret/data/serving/model-bucket"
        assert core.read_namespaced_service_account(APP, ns).automount_service_account_token is True
        cm = core.read_namespaced_config_map(f"{APP}-torchserve", ns).data
        props = cm["config.properties"]
        for line in ("metrics_mode=prometheus", "disable_token_authorization=true",
                     "management_address=http://127.0.0.1:8081", "number_of_netty_threads=4"):
            assert line in props.splitlines(), props
        models = json.loads([x for x in props.splitlines() if x.startswith("models=")][0][len("models="):])
        assert models[MODEL]["@MODEL_VERSION@"]["batchSize"] == 8
        svc = core.read_namespaced_service(APP, ns)
        assert svc.spec.selector == {"app": APP}
        dr = co.get_namespaced_custom_object("networking.istio.io", "v1", ns, "destinationrules", APP)
        assert {s["name"]: s["labels"]["version"] for s in dr["spec"]["subsets"]} == {"stable": "stable",
                                                                                         "canary": "canary"}
        assert cs.read_weights(api, ns, APP) == {"stable": 100, "canary": 0}
        hpa = client.AutoscalingV2Api(api).read_namespaced_horizontal_pod_autoscaler(f"{APP}-stable", ns)
        kinds = sorted((m.type, (m.resource.name if m.resource else m.pods.metric.name)) for m in hpa.spec.metrics)
        assert kinds == [("Pods", "torchserve_requests_per_second"), ("Resource", "cpu"), ("Resource", "memory")]
        assert hpa.spec.min_replicas == 3
        pdb = client.PolicyV1Api(api).read_namespaced_pod_disruption_budget(APP, ns)
        assert pdb.spec.max_unavailable == 1
        net = client.NetworkingV1Api(api)
        deny = net.read_namespaced_network_policy("default-deny", ns)
        assert deny.spec.pod_selector.match_labels is None and sorted(deny.spec.policy_types) == ["Egress", "Ingress"]
        allow = net.read_namespaced_network_policy(f"{APP}-torchserve", ns)
        froms = [p.ports[0].port for p in allow.spec.ingress]
        assert froms == [8080, 8082]
        assert allow.spec.ingress[0]._from[0].namespace_selector.match_labels == {
            "kubernetes.io/metadata.name": "istio-system"}
        assert core.read_namespace(ns).metadata.labels["istio-injection"] == "enabled"


def test_pods_are_scheduled_across_zones_on_gpu_nodes(served, k8s):
    from kubernetes import client
    ns = served["ns"]
    with k8s.api_client() as api:
        core = client.CoreV1Api(api)
        deadline = time.monotonic() + 90
        while True:
            pods = _pods(api, ns, "stable")
            if len(pods) == 3 and all(p.status.phase == "Running" and p.spec.node_name for p in pods):
                break
            assert time.monotonic() < deadline, [(p.metadata.name, p.spec.node_name, p.status.phase) for p in pods]
            time.sleep(1)
        nodes = {p.spec.node_name: core.read_node(p.spec.node_name).metadata.labels for p in pods}
        assert all(lbl.get("nvidia.com/gpu.present") == "true" for lbl in nodes.values()), nodes
        zones = [nodes[p.spec.node_name]["topology.kubernetes.io/zone"] for p in pods]
        counts = {z: zones.count(z) for z in set(zones)}
        assert len(counts) >= 2 and max(counts.values()) - min(counts.values()) <= 1, counts
        assert _pods(api, ns, "canary") == []


def test_second_run_changes_nothing_and_check_mode_writes_nothing(served, k8s):
    runs = served["runs"]
    assert runs["second"]["rc"] == 0 and _changed(runs["second"]) == 0, _brief(runs["second"])
    check = runs["check"]
    assert check["rc"] == 0 and _changed(check) >= 1, _brief(check)
    with k8s.api_client() as api:
        from kubernetes import client
        props = client.CoreV1Api(api).read_namespaced_config_map(f"{APP}-torchserve", served["ns"]).data[
            "config.properties"]
        assert '"batchSize": 8' in props
        fresh = runs["check_fresh"]
        assert fresh["rc"] == 0, _brief(fresh)
        names = [n.metadata.name for n in client.CoreV1Api(api).list_namespace().items]
        assert served["fresh"] not in names


def test_unclear_input_is_refused_before_anything_changes(served):
    res = served["runs"]["refused"]
    assert res["rc"] != 0
    msgs = " ".join(str(r.get("msg")) + " ".join(str(i.get("msg")) for i in r.get("results", []))
                    for r in res["tasks"].values() if r.get("failed"))
    assert "torchserve_archives" in msgs, _brief(res)
    assert _changed(res) == 0


def test_pod_scripts_fetch_verify_and_gate_readiness(served, k8s, torchserve, tmp_path):
    """The init container's and the probes' scripts, as stored in the ConfigMap, run here against the
    real archive and the real TorchServe management API."""
    from kubernetes import client
    with k8s.api_client() as api:
        cm = client.CoreV1Api(api).read_namespaced_config_map(f"{APP}-torchserve", served["ns"]).data
    scripts = tmp_path / "opt"
    scripts.mkdir()
    for name in ("config.properties", "fetch_model.py", "ready.py"):
        (scripts / name).write_text(cm[name])
    archive = served["archive"]
    store, conf = tmp_path / "store", tmp_path / "conf"
    store.mkdir()
    conf.mkdir()
    base = dict(os.environ, MODEL_NAME=MODEL, MODEL_STORE=str(store), CONFIG_DIR=str(conf),
                CONFIG_TEMPLATE_DIR=str(scripts))

    def fetch(**env):
        return subprocess.run([sys.executable, str(scripts / "fetch_model.py")], env=dict(base, **env),
                              capture_output=True, text=True, timeout=60, check=False)
    ok = fetch(MODEL_VERSION=STABLE, MODEL_URL=archive.as_uri(), MODEL_SHA256=_sha(archive))
    assert ok.returncode == 0, ok.stderr
    assert _sha(store / f"{MODEL}.mar") == _sha(archive)
    assert f'"{STABLE}": {{"defaultVersion": true' in (conf / "config.properties").read_text()
    bad_sha = fetch(MODEL_VERSION=STABLE, MODEL_URL=archive.as_uri(), MODEL_SHA256="0" * 64)
    assert bad_sha.returncode != 0 and "sha256" in bad_sha.stderr and "refused" in bad_sha.stderr
    bad_version = fetch(MODEL_VERSION="70.0", MODEL_URL=archive.as_uri(), MODEL_SHA256=_sha(archive))
    assert bad_version.returncode != 0 and "holds model version '71.0'" in bad_version.stderr

    port = str(torchserve.info["ports"]["management"])

    def ready(version):
        return subprocess.run([sys.executable, str(scripts / "ready.py")], capture_output=True, text=True,
                              env=dict(os.environ, MODEL_NAME=MODEL, MODEL_VERSION=version, MANAGEMENT_PORT=port),
                              timeout=30, check=False)
    assert ready("70.0").returncode != 0  # not registered: not ready
    torchserve.register(STABLE)
    res = ready(STABLE)
    assert res.returncode == 0, res.stderr


# -- canary_release end to end ---------------------------------------------------------------------
SUCCESS = {"name": "success-rate", "template": "torchserve-success-rate", "threshold_range": {"min": 95},
           "min_request_volume": 1}
LATENCY = {"name": "latency-p99", "template": "torchserve-latency-p99", "threshold_range": {"max": 200}}


@pytest.fixture(scope="module")
def release_bed(k8s, torchserve, prometheus_factory, tmp_path_factory):
    torchserve.register(STABLE)
    previous_default = torchserve.default_version()
    prom = prometheus_factory(targets=[torchserve.info["metrics_target"]], scrape_interval="1s")
    client = k8s.api_client()
    yield k8s, torchserve, prom, client, tmp_path_factory.mktemp("canary-release")
    if previous_default:
        torchserve.set_default(previous_default)
    client.close()


def _release(bed, version, fail_rate=0.0):
    """Deploy the model with the torchserve role, then release ``version`` with canary_release while
    the mesh stand-in sends traffic by the VirtualService weights."""
    k8s, ts, prom, client, work = bed
    ns = k8s.fresh_namespace("rel")
    stable, new = _archive(STABLE), _archive(version, fail_rate)
    store = Path(str(ts.info["model_store"]))
    if not (store / new.name).exists():
        import shutil
        shutil.copy2(new, store / new.name)
    archives = {STABLE: {"url": stable.as_uri(), "sha256": _sha(stable)}}
    xvars = _role_vars(k8s, ns, archives, torchserve_vault_enabled=False, torchserve_hpa_enabled=False)
    deployed = _run(work / f"deploy-{version}", "torchserve", xvars)
    assert deployed["rc"] == 0, _brief(deployed)
    log = work / f"progress-{version}.jsonl"
    rvars = dict(canary_release_namespace=ns, canary_release_app=APP, canary_release_model=MODEL,
                 canary_release_version=version, canary_release_model_url=new.name,
                 canary_release_archive={"url": new.as_uri(), "sha256": _sha(new)},
                 canary_release_torchserve_management_url=ts.info["management_url"],
                 canary_release_prometheus_url=prom.url, canary_release_kubeconfig=k8s.kubeconfig,
                 canary_release_interval=2, canary_release_threshold=2, canary_release_step_weight=20,
                 canary_release_max_weight=60, canary_release_progress_deadline=60,
                 canary_release_metrics_interval="6s", canary_release_checks=[SUCCESS, LATENCY],
                 canary_release_on_no_data="hold", canary_release_progress_log=str(log))
    load = cs.LoadGenerator(client, ns, APP, lambda v: ts.predict(v, timeout=30)[0] < 500, rps=20)
    load.start()
    try:
        res = _run(work / f"release-{version}", "canary_release", rvars, play_vars=xvars)
    finally:
        load.stop()
    return ns, res, dict(rvars, play_vars=xvars), log, load


def test_canary_release_promotes_a_healthy_version(release_bed):
    k8s, ts, _prom, client, work = release_bed
    ns, res, rvars, log, load = _release(release_bed, GOOD)
    assert res["rc"] == 0, _brief(res)
    tasks = res["tasks"]
    out = tasks[ROLE_TASK + "Analyse the canary and promote or roll back"]
    assert out["status"] == "promoted", cs.brief(out)
    assert [e["new_weight"] for e in out["progress"] if e["action"] == "advance"] == [20, 40, 60]
    assert load.snapshot()["sent"].get(GOOD, 0) > 0
    # progress was written line by line while it ran, and the play said where to follow it
    follow = tasks[ROLE_TASK + "Say how to follow the analysis while it runs"]["msg"]
    assert f"tail -f {log}" in follow
    assert [json.loads(x)["action"] for x in log.read_text().splitlines()] == [e["action"] for e in out["progress"]]
    summary = tasks[ROLE_TASK + "Summarise the release"]["ansible_facts"]["canary_release_summary"]
    assert summary["status"] == "promoted" and summary["advances"] == [20, 40, 60]
    assert "torchserve_stable_version: " + GOOD in summary["next"]
    # the stable Deployment now runs the canary's pod spec (archive and version), labels kept
    stable = cs.read_deployment(client, ns, f"{APP}-stable")
    assert cs.deployment_version(stable) == GOOD
    assert stable["spec"]["template"]["metadata"]["labels"]["version"] == "stable"
    env = {e["name"]: e["value"] for e in stable["spec"]["template"]["spec"]["initContainers"][0]["env"]}
    assert env["MODEL_SHA256"] == rvars["canary_release_archive"]["sha256"]
    assert cs.read_deployment(client, ns, f"{APP}-canary")["spec"]["replicas"] == 0
    assert cs.read_weights(client, ns, APP) == {"stable": 100, "canary": 0}
    assert ts.default_version() == GOOD
    # the same release again: nothing changes, the canary is not scaled up again
    again = _run(work / "release-again", "canary_release", {k: v for k, v in rvars.items() if k != "play_vars"},
                 play_vars=rvars["play_vars"])
    assert again["rc"] == 0 and _changed(again) == 0, _brief(again)
    assert cs.read_deployment(client, ns, f"{APP}-canary")["spec"]["replicas"] == 0
    # the torchserve role with the promoted version as stable leaves the pods alone: the pod spec is the
    # same for both tracks, so what the promotion wrote is what the role renders (the run may report a
    # change: it takes back the server-side-apply ownership of the fields canary_rollout updated)
    before = cs.read_deployment(client, ns, f"{APP}-stable")
    settled = _run(work / "settled", "torchserve", {}, play_vars=dict(
        rvars["play_vars"], torchserve_stable_version=GOOD,
        torchserve_archives={GOOD: rvars["canary_release_archive"]}))
    assert settled["rc"] == 0, _brief(settled)
    after = cs.read_deployment(client, ns, f"{APP}-stable")
    assert after["spec"]["template"] == before["spec"]["template"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert cs.read_weights(client, ns, APP) == {"stable": 100, "canary": 0}


def test_canary_release_rolls_back_a_failing_version(release_bed):
    _k8s, ts, _prom, client, _work = release_bed
    ns, res, _rvars, _log, _load = _release(release_bed, BAD, fail_rate=0.5)
    assert res["rc"] != 0
    out = res["tasks"][ROLE_TASK + "Analyse the canary and promote or roll back"]
    assert out["status"] == "rolled_back" and "failed checks threshold reached (2)" in out["reason"], cs.brief(out)
    summary = res["tasks"][ROLE_TASK + "Summarise the release"]["ansible_facts"]["canary_release_summary"]
    assert summary["status"] == "rolled_back" and int(summary["failed_checks"]) == 2
    assert "rolled back" in res["tasks"][ROLE_TASK + "Fail the release when the canary was rolled back"]["msg"]
    assert cs.read_weights(client, ns, APP) == {"stable": 100, "canary": 0}
    assert cs.deployment_version(cs.read_deployment(client, ns, f"{APP}-stable")) == STABLE
    assert cs.read_deployment(client, ns, f"{APP}-canary")["spec"]["replicas"] == 0
    assert ts.default_version() != BAD
