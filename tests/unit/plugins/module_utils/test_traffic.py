"""Unit tests of the pure traffic_split core (plugins/module_utils/traffic.py)."""

import pytest

from ansible_collections.gpuops.cluster.plugins.module_utils import traffic as t


def vs(routes, **meta):
    m = {"name": "resnet", "namespace": "serving", "resourceVersion": "7"}
    m.update(meta)
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": m,
            "spec": {"hosts": ["resnet"], "http": routes}}


def route(name, **weights):
    r = {"route": [{"destination": {"host": "resnet", "subset": s}, "weight": w} for s, w in weights.items()]}
    if name:
        r["name"] = name
    return r


DR = [{"spec": {"host": "resnet.serving.svc.cluster.local",
                "subsets": [{"name": "stable", "labels": {"version": "v1"}},
                            {"name": "canary", "labels": {"version": "v2"}}]}},
      {"spec": {"host": "other", "subsets": [{"name": "blue"}]}}]


@pytest.mark.parametrize("weights,msg", [
    ({"stable": 90, "canary": 20}, "add up to 100, they add up to 110"),
    ({"stable": 101, "canary": -1}, "between 0 and 100"),
    ({"stable": 50.5, "canary": 49.5}, "must be an integer"),
    ({"stable": True, "canary": 99}, "must be an integer"),
    ({}, "non-empty"),
])
def test_validate_weights_rejects(weights, msg):
    errors = t.validate_weights(weights)
    assert errors and msg in "; ".join(errors)


def test_validate_weights_accepts_digit_strings():
    assert t.validate_weights({"stable": "90", "canary": 10}) == []


def test_find_route_by_name_index_and_single():
    v = vs([route("a", stable=100), route("b", stable=100)])
    assert t.find_route(v, "b") == 1
    assert t.find_route(v, "0") == 0
    assert t.find_route(v, 1) == 1
    with pytest.raises(t.TrafficError, match="2 http routes"):
        t.find_route(v, None)
    with pytest.raises(t.TrafficError, match="no http route named 'c'"):
        t.find_route(v, "c")
    with pytest.raises(t.TrafficError, match="out of range"):
        t.find_route(v, "5")
    assert t.find_route(vs([route(None, stable=100)]), None) == 0


def test_route_weights_lone_destination_defaults_to_100():
    r = {"route": [{"destination": {"host": "resnet", "subset": "stable"}}]}
    assert t.route_weights(r) == {"stable": 100}


def test_route_weights_requires_subsets():
    with pytest.raises(t.TrafficError, match="without subset"):
        t.route_weights({"route": [{"destination": {"host": "resnet"}}]})


@pytest.mark.parametrize("dr_host,host,ok", [
    ("resnet", "resnet", True),
    ("resnet.serving.svc.cluster.local", "resnet", True),
    ("resnet.serving", "resnet.serving.svc.cluster.local", True),
    ("resnet.other.svc.cluster.local", "resnet", False),
    ("other", "resnet", False),
])
def test_host_matches(dr_host, host, ok):
    assert t.host_matches(dr_host, host, "serving") is ok


def test_plan_changes_weights_and_keeps_everything_else():
    v = vs([route("primary", stable=100, canary=0)])
    v["spec"]["http"][0]["timeout"] = "5s"
    res = t.plan(v, "primary", {"stable": 90, "canary": 10}, DR)
    assert res["before"] == {"stable": 100, "canary": 0}
    assert res["after"] == {"stable": 90, "canary": 10}
    assert res["changed"] is True
    new = res["new_vs"]
    assert new["spec"]["http"][0]["timeout"] == "5s"
    assert new["metadata"]["resourceVersion"] == "7"  # optimistic concurrency: written with what we read
    assert [d["weight"] for d in new["spec"]["http"][0]["route"]] == [90, 10]
    assert v["spec"]["http"][0]["route"][0]["weight"] == 100  # input not mutated


def test_plan_is_idempotent():
    v = vs([route("primary", stable=90, canary=10)])
    res = t.plan(v, "primary", {"stable": 90, "canary": 10}, DR)
    assert res["changed"] is False and res["new_vs"] == v


def test_plan_adds_missing_subset_and_zeroes_unmentioned_only_when_asked():
    v = vs([route("primary", stable=100)])
    with pytest.raises(t.TrafficError, match=r"subset\(s\) stable \(100%\), which weights does not name.*zero_unnamed"):
        t.plan(v, None, {"canary": 100}, DR)
    res = t.plan(v, None, {"canary": 100}, DR, zero_unnamed=True)
    assert res["after"] == {"stable": 0, "canary": 100}
    dests = res["new_vs"]["spec"]["http"][0]["route"]
    assert dests[1] == {"destination": {"host": "resnet", "subset": "canary"}, "weight": 100}
    # naming it with 0 is explicit too; an unnamed destination already at 0 is no loss
    assert t.plan(v, None, {"canary": 100, "stable": 0}, DR)["after"] == {"stable": 0, "canary": 100}
    v0 = vs([route("primary", stable=100, canary=0)])
    assert t.plan(v0, None, {"stable": 100}, DR)["changed"] is False


def test_plan_rejects_unknown_subset():
    v = vs([route("primary", stable=100)])
    with pytest.raises(t.TrafficError, match="subset\\(s\\) blue not defined .*\\(defined: canary, stable\\)"):
        t.plan(v, None, {"stable": 50, "blue": 50}, DR)


@pytest.mark.parametrize("meta,why", [
    ({"ownerReferences": [{"apiVersion": "flagger.app/v1beta1", "kind": "Canary", "name": "resnet"}]},
     "owned by Canary resnet"),
    ({"ownerReferences": [{"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": "r"}]},
     "owned by Rollout r"),
    ({"annotations": {"argo-rollouts.argoproj.io/managed-by-rollouts": "r"}}, "managed-by-rollouts"),
    ({"labels": {"app.kubernetes.io/managed-by": "flagger"}}, "managed-by=flagger"),
])
def test_foreign_owner_refused_unless_forced(meta, why):
    v = vs([route("primary", stable=100, canary=0)], **meta)
    assert why in t.foreign_owner(v)
    with pytest.raises(t.TrafficError, match="managed by another controller"):
        t.plan(v, None, {"stable": 90, "canary": 10}, DR)
    assert t.plan(v, None, {"stable": 90, "canary": 10}, DR, force=True)["changed"]


def test_foreign_owner_ignores_unrelated_owners():
    v = vs([route("primary", stable=100)], ownerReferences=[
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"}], labels={"app": "flagger-demo"})
    assert t.foreign_owner(v) is None


class FlakyRoutes(object):
    """In-memory stand-in for IstioRoutes whose writes first fail with the given API errors."""

    def __init__(self, failures):
        self.obj = vs([route("primary", stable=100, canary=0)])
        self.failures = list(failures)
        self.reads = 0

    def get_virtual_service(self, namespace, name):
        self.reads += 1
        return self.obj

    def list_destination_rules(self, namespace):
        return DR

    def replace_virtual_service(self, namespace, name, body, dry_run=False):
        if self.failures:
            raise self.failures.pop(0)
        self.obj = body
        return body


def test_transient_api_errors_are_retried_with_backoff_and_a_warning():
    from kubernetes.client.rest import ApiException
    from ansible_collections.gpuops.cluster.plugins.module_utils.k8s_client import retry_warning
    routes = FlakyRoutes([ApiException(status=503, reason="Service Unavailable"), ConnectionResetError("reset")])
    warnings, sleeps = [], []
    res = t.set_traffic_retrying(routes, "serving", "resnet", {"stable": 80, "canary": 20}, transient_retries=3,
                                 on_retry=retry_warning(warnings.append), sleep=sleeps.append)
    assert res["changed"] and t.route_weights(routes.obj["spec"]["http"][0]) == {"stable": 80, "canary": 20}
    assert sleeps == [0.5, 1.0] and routes.reads == 3  # every try re-reads
    assert "HTTP 503" in warnings[0] and "attempt 1" in warnings[0] and "reset" in warnings[1]


@pytest.mark.parametrize("status", [403, 422])
def test_client_errors_are_not_retried(status):
    from kubernetes.client.rest import ApiException
    routes = FlakyRoutes([ApiException(status=status)])
    sleeps = []
    with pytest.raises(ApiException):
        t.set_traffic_retrying(routes, "serving", "resnet", {"stable": 80, "canary": 20}, sleep=sleeps.append)
    assert sleeps == [] and routes.reads == 1


def test_transient_retries_are_bounded():
    from kubernetes.client.rest import ApiException
    routes = FlakyRoutes([ApiException(status=500)] * 5)
    sleeps = []
    with pytest.raises(ApiException):
        t.set_traffic_retrying(routes, "serving", "resnet", {"stable": 80, "canary": 20}, transient_retries=2,
                               sleep=sleeps.append)
    assert len(sleeps) == 2 and routes.reads == 3


class Clock(object):
    def __init__(self):
        self.t = 0.0
        self.sleeps = []

    def now(self):
        return self.t

    def sleep(self, s):
        self.sleeps.append(s)
        self.t += s


def test_conflicts_are_retried_with_growing_jittered_backoff_until_the_writer_pauses():
    """A steady concurrent writer: 6 conflicts in a row, then our write gets through."""
    routes = FlakyRoutes([t.ConflictError("conflict")] * 6)
    clock = Clock()
    res = t.set_traffic(routes, "serving", "resnet", {"stable": 80, "canary": 20}, max_retries=None,
                        retry_timeout=30, sleep=clock.sleep, now=clock.now, rand=lambda: 0.5)
    assert res["changed"] and res["conflicts"] == 6 and routes.reads == 7
    # 0.05 s doubling, each drawn from the upper half of its step (rand 0.5 -> 3/4 of the step)
    assert clock.sleeps == pytest.approx([0.0375, 0.075, 0.15, 0.3, 0.6, 1.2])


def test_jitter_spreads_the_delays():
    delays = set()
    for r in (0.0, 0.3, 0.99):
        clock = Clock()
        t.set_traffic(FlakyRoutes([t.ConflictError("c")]), "serving", "resnet", {"stable": 80, "canary": 20},
                      sleep=clock.sleep, now=clock.now, rand=lambda r=r: r)
        delays.add(round(clock.sleeps[0], 4))
    assert len(delays) == 3 and all(0.025 <= d <= 0.05 for d in delays)


def test_conflicts_are_bounded_by_time_and_the_error_says_so():
    routes = FlakyRoutes([t.ConflictError("conflict")] * 1000)
    clock = Clock()
    with pytest.raises(t.TrafficError, match=r"kept changing under us: \d+ write conflicts \(HTTP 409\) in [0-9.]+ s"):
        t.set_traffic(routes, "serving", "resnet", {"stable": 80, "canary": 20}, max_retries=None,
                      retry_timeout=10, sleep=clock.sleep, now=clock.now, rand=lambda: 1.0)
    assert clock.t <= 10 and clock.t > 5 and max(clock.sleeps) == 2.0


def test_conflicts_are_bounded_by_count_too():
    routes = FlakyRoutes([t.ConflictError("conflict")] * 10)
    clock = Clock()
    with pytest.raises(t.TrafficError, match="3 write conflicts"):
        t.set_traffic(routes, "serving", "resnet", {"stable": 80, "canary": 20}, max_retries=2,
                      sleep=clock.sleep, now=clock.now)
    assert len(clock.sleeps) == 2


def test_all_to_stable_works_when_the_canary_subset_left_the_destination_rule():
    routes = FlakyRoutes([])
    routes.obj = vs([route("primary", stable=60, canary=40)])
    only_stable = [{"spec": {"host": "resnet", "subsets": [{"name": "stable", "labels": {"version": "v1"}}]}}]
    routes.list_destination_rules = lambda ns: only_stable
    with pytest.raises(t.TrafficError, match="canary not defined"):
        t.set_traffic(routes, "serving", "resnet", {"stable": 100, "canary": 0})
    res = t.set_traffic(routes, "serving", "resnet", {"stable": 100}, zero_unnamed=True)
    assert res["after"] == {"stable": 100, "canary": 0}
