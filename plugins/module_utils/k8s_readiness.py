# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""When is a Deployment ready? One rule for every gpuops.cluster module (pure, dicts in and out).

The rule is ``kubectl rollout status``'s, plus availability:

- the controller has seen the latest spec (``status.observedGeneration >= metadata.generation``);
- the rollout did not exceed its progress deadline (condition ``Progressing`` with reason
  ``ProgressDeadlineExceeded`` fails at once, no point waiting);
- every wanted replica runs the current template (``updatedReplicas >= spec.replicas``);
- no replica of an old template is left (``status.replicas <= updatedReplicas``);
- every wanted replica is available (``availableReplicas >= spec.replicas``).

``require_running=True`` also refuses a Deployment scaled to 0: it is "ready" with nothing running,
which is not enough for a canary that must have served.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


def deployment_readiness(obj, require_running=False):
    """dict(ready, failed, desired, updated, available, message) for a Deployment given as a JSON dict.
    ``failed`` is True when waiting longer cannot help (progress deadline exceeded)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    name = "%s/%s" % (meta.get("namespace", "?"), meta.get("name", "?"))
    desired = spec.get("replicas", 1)
    desired = 1 if desired is None else int(desired)
    updated = int(status.get("updatedReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    current = int(status.get("replicas") or 0)
    observed = status.get("observedGeneration") or 0
    generation = meta.get("generation") or 0
    out = {"ready": False, "failed": False, "desired": desired, "updated": updated, "available": available}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            out.update(failed=True, message="Deployment %s exceeded its progress deadline: %s"
                       % (name, cond.get("message") or "no message"))
            return out
    if observed < generation:
        out["message"] = "Deployment %s: generation %s not observed yet (observed %s)" % (name, generation, observed)
    elif updated < desired:
        out["message"] = "Deployment %s: %d of %d replicas updated" % (name, updated, desired)
    elif current > updated:
        out["message"] = "Deployment %s: %d old replica(s) pending termination" % (name, current - updated)
    elif available < desired:
        out["message"] = "Deployment %s: %d of %d updated replicas available" % (name, available, desired)
    elif require_running and desired < 1:
        out["message"] = "Deployment %s is scaled to 0: nothing runs" % name
    else:
        out["ready"] = True
        out["message"] = "Deployment %s: %d/%d available, %d updated" % (name, available, desired, updated)
    return out
