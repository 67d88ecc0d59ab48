"""Unit tests of plugins/filter/drain.py: which PodDisruptionBudgets the day-2 stop messages name."""

from plugins.filter.drain import blocking_pdbs


def pdb(ns, name, allowed, labels=None):
    spec = {"selector": {"matchLabels": labels}} if labels is not None else {}
    return {"metadata": {"namespace": ns, "name": name}, "spec": spec, "status": {"disruptionsAllowed": allowed}}


def pod(ns, labels):
    return {"metadata": {"namespace": ns, "labels": labels}}


PODS = [pod("serving", {"app": "resnet", "track": "stable"}), pod("serving", {"app": "bert"}),
        pod("monitoring", {"app": "prometheus"})]


def test_a_budget_at_its_limit_selecting_a_pod_on_the_node_is_named_once():
    pdbs = [pdb("serving", "resnet", 0, {"app": "resnet"}),
            pdb("serving", "resnet-stable", 0, {"app": "resnet", "track": "stable"})]
    pods = PODS + [pod("serving", {"app": "resnet"})]
    assert blocking_pdbs(pdbs, pods) == ["serving/resnet", "serving/resnet-stable"]


def test_budgets_with_room_other_namespaces_and_other_labels_are_not_named():
    pdbs = [pdb("serving", "resnet", 1, {"app": "resnet"}), pdb("other", "resnet", 0, {"app": "resnet"}),
            pdb("serving", "gpt", 0, {"app": "gpt"}), pdb("serving", "canary", 0, {"app": "resnet", "track": "canary"})]
    assert blocking_pdbs(pdbs, PODS) == []


def test_no_status_counts_as_no_disruption_allowed_and_no_match_labels_select_the_namespace():
    unobserved = {"metadata": {"namespace": "monitoring", "name": "prom"},
                  "spec": {"selector": {"matchLabels": {"app": "prometheus"}}}}
    assert blocking_pdbs([unobserved, pdb("serving", "all", 0, {})], PODS) == ["monitoring/prom", "serving/all"]
    assert blocking_pdbs([pdb("serving", "expr-only", 0)], PODS) == ["serving/expr-only"]


def test_nothing_listed_names_nothing():
    assert blocking_pdbs(None, PODS) == []
    assert blocking_pdbs([pdb("serving", "resnet", 0, {"app": "resnet"})], None) == []
