"""gpuops.cluster.canary_rollout and playbooks/canary_rollout.yml, rollback.yml on the real test bed.

- ``k8s``: etcd + kube-apiserver + controllers + kwok fake GPU nodes (the "Pods" of the Deployments
  run nowhere: kwok only marks them Running/Ready), Istio CRDs installed;
- ``torchserve``: real TorchServe 0.12 serving model ``classifier`` in several versions, faults
  (HTTP 5xx rate, latency) injected by the test handler;
- ``prometheus_factory``: real Prometheus scraping TorchServe's metrics every second.

There is no Envoy here: ``canary_support.LoadGenerator`` reads the VirtualService weights from the
apiserver and sends each TorchServe version (the one the subset's Deployment declares) its share of
the requests. istio_requests_total does not exist on this test bed (no Istio proxy), so the gates use
canary_gate's ``torchserve-*`` templates over the handler's per-version series.
Intervals are 2 s so the suite stays fast; no assert depends on timing.
"""

import contextlib
import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from tests.integration import canary_support as cs

pytestmark = pytest.mark.integration

MODEL = "classifier"
STABLE = "31.0"
PLAYBOOKS = cs.REPO / "playbooks"
# 2 s iterations, a 6 s window. Measured on this test bed: the first one or two iterations after a
# version gets its first requests see no values yet (series not scraped twice), so the tests hold on
# no data (on_no_data: hold; the progress deadline bounds it) instead of Flagger's default "fail",
# which would roll back healthy canaries at these short intervals. test_no_traffic_* covers both.
SUCCESS = {"name": "success-rate", "template": "torchserve-success-rate", "threshold_range": {"min": 95},
           "min_request_volume": 1}
LATENCY = {"name": "latency-p99", "template": "torchserve-latency-p99", "threshold_range": {"max": 200}}


@pytest.fixture(scope="module")
def bed(k8s, torchserve, prometheus_factory):
    torchserve.register(STABLE)
    torchserve.set_default(STABLE)
    prom = prometheus_factory(targets=[torchserve.info["metrics_target"]], scrape_interval="1s")
    client = k8s.api_client()
    yield k8s, torchserve, prom, client
    client.close()


def sender(ts):
    def send(version):
        status, _body = ts.predict(version, timeout=30)
        return status < 500
    return send


@pytest.fixture
def namespaces(bed):
    """Namespaces made by a test, deleted after it."""
    made = []
    yield made
    for ns in made:
        cs.delete_namespace(bed[3], ns)


@pytest.fixture
def setup_app(bed, namespaces):
    def _setup(app, canary_version, canary_replicas=0):
        k8s, _ts, _prom, client = bed
        ns = k8s.fresh_namespace("cr")
        namespaces.append(ns)
        cs.apply_all(client, ns, cs.canary_objects(app, STABLE, canary_version, canary_replicas=canary_replicas))
        return ns
    return _setup


def archive_in_store(ts, version, fail_rate=0.0, delay_ms=0):
    """Build the model archive and put it in TorchServe's model store, unregistered: the playbook
    registers it with gpuops.cluster.torchserve_model."""
    from tests.testbed.model import build as model_build
    archive = Path(model_build.build_archive(version, fail_rate, delay_ms, model_name=MODEL))
    store = Path(str(ts.info["model_store"]))
    if not (store / archive.name).exists():
        shutil.copy2(archive, store / archive.name)
    return archive.name


def playbook_vars(bed, ns, app, version, url, **extra):
    k8s, ts, prom, _client = bed
    v = dict(canary_kubeconfig=k8s.kubeconfig, canary_namespace=ns, canary_virtual_service=app,
             canary_stable_deployment=f"{app}-stable", canary_deployment=f"{app}-canary",
             canary_model=MODEL, canary_version=version, canary_model_url=url,
             canary_torchserve_management_url=ts.info["management_url"], canary_prometheus_url=prom.url,
             canary_interval=2, canary_threshold=2, canary_step_weight=20, canary_max_weight=60,
             canary_progress_deadline=60, canary_metrics_interval="6s", canary_checks=[SUCCESS, LATENCY],
             canary_on_no_data="hold")
    v.update(extra)
    return v


def rollout_task(bed, ns, app, version, **extra):
    k8s, _ts, prom, _client = bed
    args = dict(kubeconfig=k8s.kubeconfig, namespace=ns, virtual_service=app, revision=version,
                stable_deployment=f"{app}-stable", canary_deployment=f"{app}-canary", model=MODEL,
                prometheus_url=prom.url, interval=2, threshold=2, step_weight=20, max_weight=60,
                progress_deadline=60, metrics_interval="6s", checks=[SUCCESS, LATENCY], on_no_data="hold")
    args.update(extra)
    return args


def run_rollout(tmp_path, args, check=False):
    pb = cs.write_playbook(tmp_path / f"rollout-{time.time_ns()}.yml",
                           [{"name": "rollout", "gpuops.cluster.canary_rollout": args}])
    res = cs.run_playbook(pb, {}, tmp_path, check=check)
    assert "rollout" in res["tasks"], res["stderr"] + res["stdout"][-3000:]
    return res["tasks"]["rollout"]


def actions(progress):
    return [e["action"] for e in progress]


def test_healthy_canary_is_promoted_by_the_playbook(bed, setup_app, tmp_path):
    k8s, ts, _prom, client = bed
    app, version = "resnet-ok", "32.0"
    ns = setup_app(app, version)
    url = archive_in_store(ts, version)
    load = cs.LoadGenerator(client, ns, app, sender(ts), rps=20)
    load.start()
    try:
        log = tmp_path / "progress.jsonl"
        res = cs.run_playbook(PLAYBOOKS / "canary_rollout.yml",
                              playbook_vars(bed, ns, app, version, url, canary_progress_log=str(log)), tmp_path)
    finally:
        load.stop()
    assert res["rc"] == 0, res["stdout"][-4000:] + res["stderr"]
    out = res["tasks"]["Analyse the canary and promote or roll back"]
    assert out["status"] == "promoted", cs.brief(out)
    assert [e["new_weight"] for e in out["progress"] if e["action"] == "advance"] == [20, 40, 60]
    assert actions(out["progress"])[-3:] == ["analysis_passed", "promote", "promoted"]
    # every analysed iteration saw real canary traffic through the handler metrics
    analysed = [e for e in out["progress"] if e["action"] in ("advance", "analysis_passed") and e["checks"]]
    assert analysed and all(c["status"] == "pass" for e in analysed for c in e["checks"]), analysed
    assert cs.read_weights(client, ns, app) == {"stable": 100, "canary": 0}
    stable = cs.read_deployment(client, ns, f"{app}-stable")
    assert cs.deployment_version(stable) == version
    assert stable["spec"]["template"]["metadata"]["labels"] == {"app": app, "version": "stable"}
    assert cs.read_deployment(client, ns, f"{app}-canary")["spec"]["replicas"] == 0
    assert ts.default_version() == version
    ts.set_default(STABLE)
    assert load.snapshot()["sent"].get(version, 0) > 0
    # the progress log got one JSON line per entry, as it happened
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["action"] for e in lines] == actions(out["progress"])
    # a second run of the same release changes nothing
    again = cs.run_playbook(PLAYBOOKS / "canary_rollout.yml", playbook_vars(bed, ns, app, version, url), tmp_path)
    task = again["tasks"]["Analyse the canary and promote or roll back"]
    assert again["rc"] == 0 and task["changed"] is False and task["status"] == "promoted", task
    ts.set_default(STABLE)


def test_5xx_canary_is_rolled_back_and_the_play_fails(bed, setup_app, tmp_path):
    k8s, ts, _prom, client = bed
    app, version = "resnet-5xx", "33.0"
    ns = setup_app(app, version)
    url = archive_in_store(ts, version, fail_rate=0.5)
    load = cs.LoadGenerator(client, ns, app, sender(ts), rps=20)
    load.start()
    try:
        res = cs.run_playbook(PLAYBOOKS / "canary_rollout.yml", playbook_vars(bed, ns, app, version, url), tmp_path)
    finally:
        load.stop()
    assert res["rc"] != 0
    out = res["tasks"]["Analyse the canary and promote or roll back"]
    assert out["status"] == "rolled_back" and "failed checks threshold reached (2)" in out["reason"], cs.brief(out)
    failed = [e for e in out["progress"] if e["action"] == "failed_check"]
    assert len(failed) == 2
    sr = [c for c in failed[-1]["checks"] if c["name"] == "success-rate"][0]
    assert sr["status"] == "fail" and sr["value"] < 95
    assert "rolled back" in res["tasks"]["Fail the release when the canary was rolled back"]["msg"]
    assert cs.read_weights(client, ns, app) == {"stable": 100, "canary": 0}
    assert cs.deployment_version(cs.read_deployment(client, ns, f"{app}-stable")) == STABLE
    assert cs.read_deployment(client, ns, f"{app}-canary")["spec"]["replicas"] == 0
    assert ts.default_version() == STABLE
    assert load.snapshot()["errors"].get(version, 0) > 0


def test_slow_canary_is_rolled_back_on_latency(bed, setup_app, tmp_path):
    _k8s, ts, _prom, client = bed
    app, version = "resnet-slow", "34.0"
    ns = setup_app(app, version)
    ts.register(version, delay_ms=300)
    load = cs.LoadGenerator(client, ns, app, sender(ts), rps=20)
    load.start()
    try:
        out = run_rollout(tmp_path, rollout_task(bed, ns, app, version))
    finally:
        load.stop()
    assert out["status"] == "rolled_back", cs.brief(out)
    last_fail = [e for e in out["progress"] if e["action"] == "failed_check"][-1]
    lat = [c for c in last_fail["checks"] if c["name"] == "latency-p99"][0]
    assert lat["status"] == "fail" and lat["value"] > 200
    assert cs.read_weights(client, ns, app) == {"stable": 100, "canary": 0}


@pytest.mark.parametrize("policy", ["fail", "hold", "pass"])
def test_no_traffic_follows_on_no_data(bed, setup_app, tmp_path, policy):
    """No load generator: the canary gets no requests, every metric check is no_data."""
    _k8s, ts, _prom, client = bed
    app, version = f"resnet-idle-{policy}", "35.0"
    ns = setup_app(app, version)
    ts.register(version)
    out = run_rollout(tmp_path, rollout_task(bed, ns, app, version, on_no_data=policy, progress_deadline=8))
    assert out["status"] == "rolled_back", cs.brief(out)
    no_data = [c for e in out["progress"] for c in e["checks"] if c["status"] == "no_data"]
    assert no_data
    if policy == "fail":
        assert "failed checks threshold" in out["reason"] and out["failed_checks"] == 2
    else:
        assert "progress deadline" in out["reason"] and out["failed_checks"] == 0
        assert "hold" in actions(out["progress"])
    if policy == "pass":
        # every gate passed up to max_weight, but a canary that never served is never promoted
        assert max(e["new_weight"] for e in out["progress"] if e["action"] == "advance") == 60
        assert "promote" not in actions(out["progress"])
        assert any("never served" in e["message"] for e in out["progress"] if e["action"] == "hold")
        assert cs.deployment_version(cs.read_deployment(client, ns, f"{app}-stable")) == STABLE
    else:
        assert max(e["new_weight"] for e in out["progress"] if e["action"] == "advance") == 20
    assert cs.read_weights(client, ns, app) == {"stable": 100, "canary": 0}


def test_prometheus_killed_mid_rollout_never_promotes(bed, setup_app, prometheus_factory, tmp_path):
    _k8s, ts, _prom, client = bed
    app, version = "resnet-promkill", "36.0"
    ns = setup_app(app, version)
    ts.register(version)
    doomed = prometheus_factory(targets=[ts.info["metrics_target"]], scrape_interval="1s")
    load = cs.LoadGenerator(client, ns, app, sender(ts), rps=20)
    load.start()
    result = {}
    args = rollout_task(bed, ns, app, version, prometheus_url=doomed.url, step_weight=10, max_weight=50,
                        threshold=3)
    worker = threading.Thread(target=lambda: result.update(run_rollout(tmp_path, args)))
    worker.start()
    try:
        cs.wait_until(lambda: cs.read_weights(client, ns, app)["canary"] >= 20, 120, "canary at 20%")
        doomed.kill()
        worker.join(timeout=300)
    finally:
        load.stop()
    assert not worker.is_alive()
    assert result["status"] == "rolled_back", result
    assert "promote" not in actions(result["progress"])
    errors = [c for e in result["progress"] for c in e["checks"] if c["status"] == "error"]
    assert errors, result["progress"]
    assert cs.read_weights(client, ns, app) == {"stable": 100, "canary": 0}


def test_interrupted_rollout_resumes_from_observed_weight(bed, setup_app, tmp_path):
    k8s, ts, _prom, client = bed
    app, version = "resnet-resume", "37.0"
    ns = setup_app(app, version)
    ts.register(version)
    load = cs.LoadGenerator(client, ns, app, sender(ts), rps=20)
    load.start()
    try:
        args = rollout_task(bed, ns, app, version, step_weight=20, max_weight=80)
        pb = cs.write_playbook(tmp_path / "first.yml", [{"name": "rollout", "gpuops.cluster.canary_rollout": args}])
        proc = cs.start_playbook(pb, {}, tmp_path)
        cs.wait_until(lambda: cs.read_weights(client, ns, app)["canary"] >= 40, 120, "canary at 40%")
        cs.kill_tree(proc.pid)  # the control node dies mid-rollout (module process included)
        proc.wait(timeout=30)
        interrupted = cs.read_weights(client, ns, app)["canary"]
        state = cs.read_state(client, ns, app)
        assert state["phase"] == "progressing" and state["revision"] == version
        # the killed run's state is younger than the live window (3 intervals, at least 10 s): wait it out
        cs.wait_until(lambda: time.time() - cs.read_state(client, ns, app)["updated"] > 10, 30, "stale state")
        out = run_rollout(tmp_path, args)
    finally:
        load.stop()
    assert out["status"] == "promoted", cs.brief(out)
    assert out["progress"][0]["action"] == "resume" and out["progress"][0]["weight"] == interrupted
    advances = [e["new_weight"] for e in out["progress"] if e["action"] == "advance"]
    assert all(w > interrupted for w in advances)  # never restarted from 0
    assert cs.read_weights(client, ns, app) == {"stable": 100, "canary": 0}


def test_check_mode_reports_first_step_without_changing_anything(bed, setup_app, tmp_path):
    _k8s, ts, _prom, client = bed
    app, version = "resnet-check", "32.0"
    ns = setup_app(app, version)
    before = cs.get_vs(client, ns, app)["metadata"]["resourceVersion"]
    out = run_rollout(tmp_path, rollout_task(bed, ns, app, version), check=True)
    assert out["status"] == "planned" and out["changed"] is True, cs.brief(out)
    assert "move the canary to 20%" in out["reason"]
    assert out["diff"]["before"]["weights"] == {"stable": 100, "canary": 0}
    assert cs.get_vs(client, ns, app)["metadata"]["resourceVersion"] == before
    assert cs.read_deployment(client, ns, f"{app}-canary")["spec"]["replicas"] == 0


def test_rollback_after_promotion_restores_the_previous_version(bed, setup_app, tmp_path):
    _k8s, ts, _prom, client = bed
    app, version = "resnet-undo", "38.0"
    ns = setup_app(app, version)
    url = archive_in_store(ts, version)
    load = cs.LoadGenerator(client, ns, app, sender(ts), rps=20)
    load.start()
    try:
        res = cs.run_playbook(PLAYBOOKS / "canary_rollout.yml", playbook_vars(bed, ns, app, version, url), tmp_path)
        assert res["rc"] == 0, res["stdout"][-3000:]
        assert cs.deployment_version(cs.read_deployment(client, ns, f"{app}-stable")) == version
        assert ts.default_version() == version
        back = cs.run_playbook(PLAYBOOKS / "rollback.yml", playbook_vars(bed, ns, app, version, url), tmp_path)
    finally:
        load.stop()
    assert back["rc"] == 0, back["stdout"][-3000:] + back["stderr"]
    task = back["tasks"]["Send all traffic to stable (and restore the previous stable version after a promotion)"]
    assert task["changed"] is True and "after promotion" in task["reason"], task
    assert cs.deployment_version(cs.read_deployment(client, ns, f"{app}-stable")) == STABLE
    assert cs.read_weights(client, ns, app) == {"stable": 100, "canary": 0}
    assert ts.default_version() == STABLE
    again = cs.run_playbook(PLAYBOOKS / "rollback.yml", playbook_vars(bed, ns, app, version, url), tmp_path)
    task2 = again["tasks"]["Send all traffic to stable (and restore the previous stable version after a promotion)"]
    assert again["rc"] == 0 and task2["changed"] is False, task2


def test_rbac_documented_role_runs_a_rollout(bed, setup_app, tmp_path):
    """A ServiceAccount holding exactly docs/canary.md's Role drives a rollout (gate: the canary
    Deployment is available, read with the same identity); without update on VirtualServices it fails
    with the API's 403 message."""
    k8s, ts, prom, client = bed
    app = "resnet-rbac"
    ns = setup_app(app, "32.0")
    ts.register("32.0")
    kc = k8s.make_sa_kubeconfig(ns, "canary-operator", cs.documented_rbac_rules())
    check = {"name": "canary-available", "kind": "deployment_available", "namespace": ns,
             "deployment": f"{app}-canary"}
    args = dict(kubeconfig=kc, namespace=ns, virtual_service=app, revision="32.0",
                stable_deployment=f"{app}-stable", canary_deployment=f"{app}-canary", interval=2,
                threshold=5, step_weight=50, max_weight=50, progress_deadline=60, checks=[check, SUCCESS],
                prometheus_url=prom.url, model=MODEL, metrics_interval="6s", on_no_data="hold")
    load = cs.LoadGenerator(client, ns, app, sender(ts), rps=20)
    load.start()
    try:
        out = run_rollout(tmp_path, args)
    finally:
        load.stop()
    assert out["status"] == "promoted", cs.brief(out)
    assert cs.deployment_version(cs.read_deployment(client, ns, f"{app}-stable")) == "32.0"
    rules = [dict(r, verbs=[v for v in r["verbs"] if v != "update"]) if "virtualservices" in r["resources"]
             else r for r in cs.documented_rbac_rules()]
    kc2 = k8s.make_sa_kubeconfig(ns, "no-update", rules)
    bad = run_rollout(tmp_path, dict(args, kubeconfig=kc2, operation="rollback"))
    assert bad.get("failed") and "HTTP 403" in bad["msg"] and "cannot update resource" in bad["msg"], bad


def test_transient_api_errors_do_not_stop_a_rollout(bed, setup_app):
    """Every third VirtualService write fails with HTTP 503 before it reaches the apiserver (injected
    through the engine's test hook, in-process with the module's own wiring): the rollout retries
    with backoff and still promotes. A 403 is not transient: it stops the rollout at once."""
    from kubernetes.client.rest import ApiException
    from ansible_collections.gpuops.cluster.plugins.modules import canary_rollout as mod
    k8s, ts, prom, client = bed
    app, version = "resnet-flaky", "32.0"
    ns = setup_app(app, version, canary_replicas=1)
    ts.register(version)
    calls = {"n": 0}

    def flaky(_attempt):
        calls["n"] += 1
        if calls["n"] % 3 == 1:
            raise ApiException(status=503, reason="Service Unavailable (injected)")

    params = {name: opt.get("default") for name, opt in mod.argument_spec().items()}
    params.update(kubeconfig=k8s.kubeconfig, namespace=ns, virtual_service=app, revision=version,
                  stable_deployment=f"{app}-stable", canary_deployment=f"{app}-canary", interval=1, threshold=1,
                  step_weight=50, max_weight=50, progress_deadline=120, prometheus_url=prom.url, model=MODEL,
                  metrics_interval="6s", on_no_data="hold",
                  checks=[{"name": "canary-up", "kind": "deployment_available", "namespace": ns,
                           "deployment": f"{app}-canary"}, SUCCESS])
    rollout, _checks = mod.build_rollout(params, client, emit=None, before_replace=flaky)
    load = cs.LoadGenerator(client, ns, app, sender(ts), rps=20)
    load.start()
    try:
        out = rollout.run()
    finally:
        load.stop()
    assert out["status"] == "promoted", cs.brief(out)
    assert calls["n"] >= 4 and calls["n"] % 3 != 1  # failures were injected and each was retried
    assert cs.read_weights(client, ns, app) == {"stable": 100, "canary": 0}
    assert cs.deployment_version(cs.read_deployment(client, ns, f"{app}-stable")) == version

    denied = {"n": 0}

    def forbidden(_attempt):
        denied["n"] += 1
        raise ApiException(status=403, reason="Forbidden (injected)")

    ns2 = setup_app(app, "32.1")
    params.update(namespace=ns2, revision="32.1", checks=[
        {"name": "canary-up", "kind": "deployment_available", "namespace": ns2, "deployment": f"{app}-canary"}])
    rollout, _checks = mod.build_rollout(params, client, emit=None, before_replace=forbidden)
    with pytest.raises(mod.RolloutAborted) as err:
        rollout.run()
    # the failed write, then the best-effort write marking the state stopped (refused too, so the
    # message says how long a re-run must wait before it resumes)
    assert "403" in str(err.value) and denied["n"] == 2, (str(err.value), denied)
    assert "re-run the same task after 10.0s to resume" in str(err.value)


# -- the harder engine (issue 11), where the class needs the apiserver --------------------------------

@pytest.mark.parametrize("extra,msg", [
    ({"step_weight": 0}, "step_weight must be between 1 and 100, got 0"),
    ({"canary_replicas": 0}, "canary_replicas must be 1 or more, got 0"),
    ({"interval": -1}, "interval must be more than 0, got -1.0"),
    ({"threshold": 0}, "threshold must be 1 or more, got 0"),
    ({"wait_timeout": 0}, "wait_timeout must be more than 0, got 0"),
    ({"prometheus_timeout": 0}, "prometheus_timeout must be more than 0 seconds, got 0.0"),
    ({"checks": [dict(SUCCESS, min_request_volume=-1)]}, "checks[0] (success-rate): min_request_volume must be 0"),
])
def test_invalid_numbers_fail_before_anything_changes(bed, setup_app, tmp_path, extra, msg):
    _k8s, _ts, _prom, client = bed
    app = "resnet-numbers"
    ns = setup_app(app, "32.0")
    rv = cs.get_vs(client, ns, app)["metadata"]["resourceVersion"]
    out = run_rollout(tmp_path, rollout_task(bed, ns, app, "32.0", **extra))
    assert out.get("failed") and msg in out["msg"], out
    assert cs.get_vs(client, ns, app)["metadata"]["resourceVersion"] == rv
    assert cs.read_deployment(client, ns, f"{app}-canary")["spec"]["replicas"] == 0


def test_a_canary_that_cannot_run_is_never_promoted(bed, setup_app, tmp_path):
    """The canary's pods can never be scheduled (a node selector no node has): the Deployment is never
    available, though the load generator (which plays the mesh from the Deployment's declared version)
    makes the metrics look healthy. At max_weight it counts failed checks and rolls back."""
    import kubernetes
    _k8s, ts, _prom, client = bed
    app, version = "resnet-pending", "32.0"
    ns = setup_app(app, version)
    ts.register(version)
    kubernetes.client.AppsV1Api(client).patch_namespaced_deployment(
        f"{app}-canary", ns, {"spec": {"template": {"spec": {"nodeSelector": {"gpuops.io/no-such-node": "x"}}}}})
    load = cs.LoadGenerator(client, ns, app, sender(ts), rps=20)
    load.start()
    try:
        out = run_rollout(tmp_path, rollout_task(bed, ns, app, version, step_weight=30, max_weight=30))
    finally:
        load.stop()
    assert out["status"] == "rolled_back" and "not promoted: the canary is not running" in out["reason"], cs.brief(out)
    assert "promote" not in actions(out["progress"])
    assert cs.deployment_version(cs.read_deployment(client, ns, f"{app}-stable")) == STABLE
    assert cs.read_weights(client, ns, app) == {"stable": 100, "canary": 0}


@contextlib.contextmanager
def refusing_stable_pods_of(client, ns, version):
    """A ValidatingAdmissionPolicy (and its binding to namespace ``ns``) that refuses pods of the
    stable track carrying ``version``; yields once a dry-run pod shows it refusing (the apiserver
    picks policy and binding up from its informers), deletes both afterwards."""
    import kubernetes
    adm = kubernetes.client.AdmissionregistrationV1Api(client)
    core = kubernetes.client.CoreV1Api(client)
    name = f"gpuops-test-refuse-stable-{ns}"
    ann = cs.VERSION_ANNOTATION
    adm.create_validating_admission_policy({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                                    "operations": ["CREATE"], "resources": ["pods"]}]},
            "validations": [{
                "expression": (f"!(has(object.metadata.labels) && has(object.metadata.annotations)"
                               f" && 'version' in object.metadata.labels && object.metadata.labels['version'] == 'stable'"
                               f" && '{ann}' in object.metadata.annotations"
                               f" && object.metadata.annotations['{ann}'] == '{version}')"),
                "message": f"test: the stable track may not run {version}"}]}})
    try:
        adm.create_validating_admission_policy_binding({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {"policyName": name, "validationActions": ["Deny"],
                     "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}}})
        try:
            probe = {"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"generateName": "probe-", "labels": {"version": "stable"},
                                  "annotations": {ann: version}},
                     "spec": {"containers": [{"name": "c", "image": "x"}]}}

            def refused():
                try:
                    core.create_namespaced_pod(ns, probe, dry_run="All")
                except kubernetes.client.ApiException as exc:
                    return exc.status in (403, 422) and "may not run" in (exc.body or "")
                return False
            cs.wait_until(refused, 60, "the admission policy to refuse the stable track's new pods")
            yield
        finally:
            adm.delete_validating_admission_policy_binding(name)
    finally:
        adm.delete_validating_admission_policy(name)


def test_a_promotion_whose_stable_never_gets_ready_restores_the_previous_template(bed, setup_app, tmp_path):
    """An admission policy refuses the stable Deployment's pods with the new version: after the
    canary's template is copied into it, it never becomes ready. The wait ends after wait_timeout, the
    previous template is put back (the old ReplicaSet never went away), the stable takes 100 % again,
    and the result says so.

    A ValidatingAdmissionPolicy, not a ResourceQuota of two pods: the quota controller recomputes
    `used` from its informer, which under load had not seen the canary's pod yet, and the stable's
    surge pod got in twice (2026-11-30)."""
    _k8s, ts, _prom, client = bed
    app, version = "resnet-quota", "32.0"
    ns = setup_app(app, version)
    ts.register(version)
    with refusing_stable_pods_of(client, ns, version):
        load = cs.LoadGenerator(client, ns, app, sender(ts), rps=20)
        load.start()
        try:
            out = run_rollout(tmp_path, rollout_task(bed, ns, app, version, step_weight=30, max_weight=30,
                                                     wait_timeout=8))
        finally:
            load.stop()
    assert out["status"] == "rolled_back", cs.brief(out)
    assert "promotion failed" in out["reason"] and "previous template was restored" in out["reason"], out["reason"]
    assert "promote" in actions(out["progress"]) and "promoted" not in actions(out["progress"])
    stable = cs.read_deployment(client, ns, f"{app}-stable")
    assert cs.deployment_version(stable) == STABLE
    assert cs.read_weights(client, ns, app) == {"stable": 100, "canary": 0}
    state = cs.read_state(client, ns, app)
    assert state["phase"] == "rolled_back" and not state.get("previous_stable")


def test_emergency_rollback_without_canary_subset_or_deployment(bed, setup_app, tmp_path):
    """Mid-rollout (60/40) someone removed the canary subset from the DestinationRule and deleted the
    canary Deployment: operation rollback still sends 100 % to stable."""
    import kubernetes
    _k8s, _ts, _prom, client = bed
    app = "resnet-gone"
    ns = setup_app(app, "32.0", canary_replicas=1)
    cs.apply(client, ns, cs.virtual_service(app, app, {"stable": 60, "canary": 40}))
    cs.apply(client, ns, cs.destination_rule(app, app, {"stable": {"app": app, "version": "stable"}}))
    kubernetes.client.AppsV1Api(client).delete_namespaced_deployment(f"{app}-canary", ns)
    out = run_rollout(tmp_path, dict(rollout_task(bed, ns, app, "32.0"), operation="rollback"))
    assert not out.get("failed") and out["status"] == "rolled_back", out
    assert out["weights"] == {"stable": 100, "canary": 0}
    assert cs.read_weights(client, ns, app) == {"stable": 100, "canary": 0}
    assert cs.read_state(client, ns, app)["phase"] == "rolled_back"
