# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Pure logic of the day-2 roles that drain nodes (kubeadm_upgrade, gpu_stack_upgrade); no I/O.

``blocking_pdbs(pdbs, pods)``
    The PodDisruptionBudgets that block a drain, as ``namespace/name`` in the order the API listed
    them, each once: budgets allowing no disruption now (``status.disruptionsAllowed`` 0 or absent)
    whose ``spec.selector.matchLabels`` select a pod still on the node (``pods``: the node's pods).
    ``matchExpressions`` are not evaluated: such a budget is named when it is at its limit in a
    namespace of those pods. Used in the roles' stop messages.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


def _meta(obj):
    return (obj or {}).get("metadata") or {}


def blocking_pdbs(pdbs, pods):
    out = []
    for pdb in pdbs or []:
        if ((pdb.get("status") or {}).get("disruptionsAllowed") or 0) != 0:
            continue
        meta = _meta(pdb)
        selector = ((pdb.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        name = "%s/%s" % (meta.get("namespace"), meta.get("name"))
        for pod in pods or []:
            labels = _meta(pod).get("labels") or {}
            if (_meta(pod).get("namespace") == meta.get("namespace")
                    and all(labels.get(k) == v for k, v in selector.items()) and name not in out):
                out.append(name)
    return out


class FilterModule(object):
    """Filters of the draining day-2 roles."""

    def filters(self):
        return {"blocking_pdbs": blocking_pdbs}
