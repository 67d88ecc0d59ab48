"""The one Deployment readiness rule (plugins/module_utils/k8s_readiness.py), used by canary_rollout's
waits and canary_gate's deployment_available check."""

import pytest

from ansible_collections.gpuops.cluster.plugins.module_utils.k8s_readiness import deployment_readiness


def dep(replicas=2, generation=3, observed=3, updated=2, available=2, current=2, conditions=None):
    return {"metadata": {"namespace": "serving", "name": "resnet", "generation": generation},
            "spec": {"replicas": replicas},
            "status": {"observedGeneration": observed, "updatedReplicas": updated, "availableReplicas": available,
                       "replicas": current, "conditions": conditions or []}}


@pytest.mark.parametrize("obj,ready,words", [
    (dep(), True, "2/2 available"),
    (dep(observed=2), False, "generation 3 not observed"),
    (dep(updated=1, current=3), False, "1 of 2 replicas updated"),
    (dep(current=3), False, "1 old replica(s) pending termination"),       # the gate used to pass this
    (dep(available=1), False, "1 of 2 updated replicas available"),
    (dep(replicas=0, updated=0, available=0, current=0), True, "0/0"),
])
def test_rule(obj, ready, words):
    out = deployment_readiness(obj)
    assert out["ready"] is ready and words in out["message"], out


def test_scaled_to_zero_is_not_running():
    out = deployment_readiness(dep(replicas=0, updated=0, available=0, current=0), require_running=True)
    assert not out["ready"] and "scaled to 0" in out["message"]


def test_progress_deadline_exceeded_fails_at_once():
    cond = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
             "message": "ReplicaSet resnet-7c9 has timed out progressing."}]
    out = deployment_readiness(dep(available=1, conditions=cond))
    assert out["failed"] and not out["ready"] and "timed out progressing" in out["message"]


def test_missing_replicas_defaults_to_one_like_the_apiserver():
    obj = dep(updated=1, available=1, current=1)
    del obj["spec"]["replicas"]
    assert deployment_readiness(obj)["ready"]
