"""gpuops.cluster.traffic_split on a real kube-apiserver (test bed ``k8s``: etcd + kube-apiserver +
controllers + kwok fake GPU nodes, Istio CRDs installed, so VirtualService/DestinationRule objects
are schema-validated by the apiserver). Runs through ansible-playbook, except the 409 test which
calls the module core with a hook that writes the object between our read and our write.
"""

import pytest

from ansible_collections.gpuops.cluster.plugins.module_utils.traffic import (
    IstioRoutes, set_traffic, set_traffic_retrying)
from tests.integration import canary_support as cs

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def admin(k8s):
    client = k8s.api_client()
    yield client
    client.close()


@pytest.fixture
def ns(k8s, admin):
    name = k8s.fresh_namespace("ts")
    cs.apply_all(admin, name, cs.canary_objects("resnet", "1.0", "2.0", canary_weight=0))
    yield name
    cs.delete_namespace(admin, name)


def split(tmp_path, kubeconfig, ns, weights, check=False, **extra):
    args = dict(kubeconfig=kubeconfig, namespace=ns, name="resnet", weights=weights)
    args.update(extra)
    pb = cs.write_playbook(tmp_path / "split.yml", [{"name": "split", "gpuops.cluster.traffic_split": args}])
    res = cs.run_playbook(pb, {}, tmp_path, check=check)
    assert "split" in res["tasks"], res["stderr"] + res["stdout"][-3000:]
    return res["tasks"]["split"]


def test_sets_weights_idempotently_and_reports_previous(k8s, admin, ns, tmp_path):
    out = split(tmp_path, k8s.kubeconfig, ns, {"stable": 70, "canary": 30}, route="primary")
    assert out["changed"] is True and not out.get("failed"), out
    assert out["previous_weights"] == {"stable": 100, "canary": 0}
    assert out["weights"] == {"stable": 70, "canary": 30}
    assert cs.read_weights(admin, ns, "resnet") == {"stable": 70, "canary": 30}
    again = split(tmp_path, k8s.kubeconfig, ns, {"stable": 70, "canary": 30}, route="0")
    assert again["changed"] is False and again["previous_weights"] == {"stable": 70, "canary": 30}


def test_check_mode_is_a_server_dry_run_with_diff(k8s, admin, ns, tmp_path):
    rv = cs.get_vs(admin, ns, "resnet")["metadata"]["resourceVersion"]
    out = split(tmp_path, k8s.kubeconfig, ns, {"stable": 50, "canary": 50}, check=True)
    assert out["changed"] is True and out["weights"] == {"stable": 50, "canary": 50}, out
    assert out["diff"]["before"] == {"weights": {"stable": 100, "canary": 0}}
    vs = cs.get_vs(admin, ns, "resnet")
    assert vs["metadata"]["resourceVersion"] == rv
    assert cs.read_weights(admin, ns, "resnet") == {"stable": 100, "canary": 0}


@pytest.mark.parametrize("weights,msg", [
    ({"stable": 80, "canary": 30}, "add up to 100"),
    ({"stable": 50, "blue": 50}, "subset(s) blue not defined by any DestinationRule"),
    ({"stable": 101, "canary": -1}, "between 0 and 100"),
])
def test_invalid_requests_fail_before_writing(k8s, admin, ns, tmp_path, weights, msg):
    out = split(tmp_path, k8s.kubeconfig, ns, weights)
    assert out.get("failed") and msg in out["msg"], out
    assert cs.read_weights(admin, ns, "resnet") == {"stable": 100, "canary": 0}


def test_unknown_route_names_the_routes(k8s, ns, tmp_path):
    out = split(tmp_path, k8s.kubeconfig, ns, {"stable": 90, "canary": 10}, route="shadow")
    assert out.get("failed") and "no http route named 'shadow'" in out["msg"] and "primary" in out["msg"]


def test_conflicting_write_is_retried_with_a_fresh_read(k8s, admin, ns):
    """A real HTTP 409: between our read and our replace, another writer updates the object."""
    routes = IstioRoutes(admin)
    calls = []

    def concurrent_writer(attempt):
        calls.append(attempt)
        if attempt == 1:
            vs = cs.get_vs(admin, ns, "resnet")
            vs["metadata"].setdefault("annotations", {})["team"] = "other-writer"
            cs.apply(admin, ns, vs)

    res = set_traffic(routes, ns, "resnet", {"stable": 60, "canary": 40}, before_replace=concurrent_writer)
    assert res["conflicts"] == 1 and res["attempts"] == 2 and calls == [1, 2]
    vs = cs.get_vs(admin, ns, "resnet")
    assert cs.read_weights(admin, ns, "resnet") == {"stable": 60, "canary": 40}
    assert vs["metadata"]["annotations"]["team"] == "other-writer"  # the other write is not lost


def test_conflicts_are_bounded(k8s, admin, ns):
    routes = IstioRoutes(admin)

    def always_conflict(attempt):
        vs = cs.get_vs(admin, ns, "resnet")
        vs["metadata"].setdefault("annotations", {})["bump"] = str(attempt)
        cs.apply(admin, ns, vs)

    from ansible_collections.gpuops.cluster.plugins.module_utils.traffic import TrafficError
    with pytest.raises(TrafficError, match="3 write conflicts"):
        set_traffic(routes, ns, "resnet", {"stable": 60, "canary": 40}, max_retries=2,
                    before_replace=always_conflict)


def test_a_steady_concurrent_writer_is_outlasted_by_jittered_backoff(k8s, admin, ns):
    """Another writer updates the object between our read and our write on the first 8 tries (real HTTP
    409s from the apiserver, more than max_retries' default): the retries, bounded by time rather than
    by a count, back off and get through; the other writer's changes are kept."""
    writes = []

    def steady_writer(attempt):
        if attempt <= 8:
            vs = cs.get_vs(admin, ns, "resnet")
            vs["metadata"].setdefault("annotations", {})["other-writer"] = str(attempt)
            cs.apply(admin, ns, vs)
            writes.append(attempt)

    res = set_traffic(IstioRoutes(admin), ns, "resnet", {"stable": 70, "canary": 30}, max_retries=None,
                      retry_timeout=30, before_replace=steady_writer)
    assert res["conflicts"] == 8 and res["attempts"] == 9 and writes == list(range(1, 9)), res
    assert cs.read_weights(admin, ns, "resnet") == {"stable": 70, "canary": 30}
    assert cs.get_vs(admin, ns, "resnet")["metadata"]["annotations"]["other-writer"] == "8"


def test_an_unnamed_destination_with_traffic_is_not_zeroed_unless_asked(k8s, admin, ns, tmp_path):
    cs.apply(admin, ns, cs.virtual_service("resnet", "resnet", {"stable": 70, "canary": 30}))
    out = split(tmp_path, k8s.kubeconfig, ns, {"stable": 100})
    assert out.get("failed") and "canary (30%)" in out["msg"] and "zero_unnamed" in out["msg"], out
    assert cs.read_weights(admin, ns, "resnet") == {"stable": 70, "canary": 30}
    named = split(tmp_path, k8s.kubeconfig, ns, {"stable": 100}, zero_unnamed=True)
    assert named["changed"] and named["weights"] == {"stable": 100, "canary": 0}, named
    assert cs.read_weights(admin, ns, "resnet") == {"stable": 100, "canary": 0}


@pytest.mark.parametrize("extra,msg", [
    ({"max_retries": -1}, "max_retries must be 0 or more, got -1"),
    ({"retry_timeout": 0}, "retry_timeout must be more than 0, got 0.0"),
])
def test_invalid_numbers_fail_before_any_request(k8s, admin, ns, tmp_path, extra, msg):
    rv = cs.get_vs(admin, ns, "resnet")["metadata"]["resourceVersion"]
    out = split(tmp_path, k8s.kubeconfig, ns, {"stable": 50, "canary": 50}, **extra)
    assert out.get("failed") and msg in out["msg"], out
    assert cs.get_vs(admin, ns, "resnet")["metadata"]["resourceVersion"] == rv


def test_transient_api_error_is_retried_against_the_real_apiserver(k8s, admin, ns):
    """The first write fails with HTTP 503 before it reaches the apiserver (injected through the test
    hook); the retry re-reads, writes once, and the object holds the new weights."""
    from kubernetes.client.rest import ApiException
    from ansible_collections.gpuops.cluster.plugins.module_utils.k8s_client import retry_warning
    calls, warnings = [], []

    def unavailable_once(attempt):
        calls.append(attempt)
        if len(calls) == 1:
            raise ApiException(status=503, reason="Service Unavailable (injected)")

    rv = cs.get_vs(admin, ns, "resnet")["metadata"]["resourceVersion"]
    res = set_traffic_retrying(IstioRoutes(admin), ns, "resnet", {"stable": 90, "canary": 10},
                               on_retry=retry_warning(warnings.append), before_replace=unavailable_once)
    assert res["changed"] and len(calls) == 2, (res, calls)
    assert len(warnings) == 1 and "HTTP 503" in warnings[0], warnings
    assert cs.read_weights(admin, ns, "resnet") == {"stable": 90, "canary": 10}
    assert int(cs.get_vs(admin, ns, "resnet")["metadata"]["resourceVersion"]) > int(rv)


@pytest.mark.parametrize("meta,why", [
    ({"labels": {"app.kubernetes.io/managed-by": "flagger"}}, "managed-by=flagger"),
    ({"annotations": {"argo-rollouts.argoproj.io/managed-by-rollouts": "resnet"}}, "managed-by-rollouts"),
    ({"ownerReferences": [{"apiVersion": "flagger.app/v1beta1", "kind": "Canary", "name": "resnet",
                           "uid": "5f0c3c8e-0000-4000-8000-000000000001"}]}, "owned by Canary resnet"),
])
def test_flagger_or_argo_owned_virtualservice_is_refused_unless_forced(k8s, admin, tmp_path, meta, why):
    ns = k8s.fresh_namespace("own")
    objs = cs.canary_objects("resnet", "1.0", "2.0", **meta)
    cs.apply_all(admin, ns, objs)
    out = split(tmp_path, k8s.kubeconfig, ns, {"stable": 90, "canary": 10})
    assert out.get("failed") and "managed by another controller" in out["msg"] and why in out["msg"], out
    assert cs.read_weights(admin, ns, "resnet") == {"stable": 100, "canary": 0}
    forced = split(tmp_path, k8s.kubeconfig, ns, {"stable": 90, "canary": 10}, force=True)
    assert forced["changed"] is True, forced
    assert cs.read_weights(admin, ns, "resnet") == {"stable": 90, "canary": 10}
    cs.delete_namespace(admin, ns)


def test_rbac_documented_role_is_enough_and_without_update_fails_clearly(k8s, admin, ns, tmp_path):
    rules = cs.documented_rbac_rules()
    kc = k8s.make_sa_kubeconfig(ns, "canary-operator", rules)
    out = split(tmp_path, kc, ns, {"stable": 80, "canary": 20})
    assert out["changed"] is True and not out.get("failed"), out
    no_update = [dict(r, verbs=[v for v in r["verbs"] if v != "update"]) for r in rules]
    kc2 = k8s.make_sa_kubeconfig(ns, "read-only", no_update)
    bad = split(tmp_path, kc2, ns, {"stable": 50, "canary": 50})
    assert bad.get("failed"), bad
    assert "HTTP 403" in bad["msg"] and "cannot update resource" in bad["msg"] and "virtualservices" in bad["msg"]
    assert cs.read_weights(admin, ns, "resnet") == {"stable": 80, "canary": 20}
