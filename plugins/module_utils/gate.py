# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Canary health gate: metric checks (PromQL) and readiness checks, Flagger-style.

Interface used by the rollout core (module_utils/rollout.py)::

    run_gate(checks, variables, prometheus, k8s_client=None, http=None, on_no_data="fail")
      -> {"decision": "pass"|"fail"|"hold",
          "checks": [{"name", "kind", "status": "pass"|"fail"|"no_data"|"error",
                      "value", "threshold_range", "message"}]}

Rules:
- a metric value outside ``threshold_range`` fails the check;
- no values (empty result, NaN, or request volume below ``min_request_volume``)
  is ``no_data``; ``on_no_data`` (per check or global) turns it into a failed,
  held or passed gate — Flagger halts advancement and counts it as a failure,
  which is ``fail`` here and the default;
- Prometheus unreachable or a query error is ``error`` and is NEVER a pass:
  the decision is ``fail`` (or ``hold`` with ``on_error: hold``);
- decision: fail if any check fails/errors(fail), else hold if any holds,
  else pass.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

from ansible_collections.gpuops.cluster.plugins.module_utils.promql import (
    BUILTIN_TEMPLATES, PrometheusError, TemplateError, client_from_settings, render)
from ansible_collections.gpuops.cluster.plugins.module_utils.torchserve import (
    TorchServeClient, TorchServeError, read_management_key, ready_workers)

CHECK_KINDS = ("metric", "torchserve_ready", "deployment_available")
NO_DATA_CHOICES = ("fail", "hold", "pass")
ERROR_CHOICES = ("fail", "hold")


class GateConfigError(ValueError):
    """A check is malformed: the user must fix the task."""


def _kind(check):
    kind = check.get("kind")
    if kind:
        return kind
    if check.get("query") or check.get("template"):
        return "metric"
    raise GateConfigError("check %r: give kind, or a query/template for a metric check" % check.get("name"))


def validate_checks(checks):
    """Raise GateConfigError with a message that says what to fix."""
    if not checks:
        raise GateConfigError("no checks given: a gate without checks would always pass")
    names = set()
    for i, check in enumerate(checks):
        name = check.get("name")
        if not name:
            raise GateConfigError("check #%d has no name" % i)
        if name in names:
            raise GateConfigError("check name %r is used twice" % name)
        names.add(name)
        kind = _kind(check)
        if kind not in CHECK_KINDS:
            raise GateConfigError("check %r: kind %r is not one of %s" % (name, kind, ", ".join(CHECK_KINDS)))
        if check.get("on_no_data") not in (None,) + NO_DATA_CHOICES:
            raise GateConfigError("check %r: on_no_data must be one of %s" % (name, ", ".join(NO_DATA_CHOICES)))
        if kind == "metric":
            if bool(check.get("query")) == bool(check.get("template")):
                raise GateConfigError("check %r: give exactly one of query or template" % name)
            if check.get("template") and check["template"] not in BUILTIN_TEMPLATES:
                raise GateConfigError("check %r: template %r unknown; built-in: %s" % (
                    name, check["template"], ", ".join(sorted(BUILTIN_TEMPLATES))))
            tr = check.get("threshold_range") or {}
            if tr.get("min") is None and tr.get("max") is None:
                raise GateConfigError("check %r: threshold_range needs min and/or max" % name)
            if tr.get("min") is not None and tr.get("max") is not None and tr["min"] > tr["max"]:
                raise GateConfigError("check %r: threshold_range min %s > max %s" % (name, tr["min"], tr["max"]))
            mrv = check.get("min_request_volume")
            if mrv and not (check.get("template") or check.get("volume_query")):
                raise GateConfigError("check %r: min_request_volume needs a template or a volume_query" % name)
        elif kind == "torchserve_ready":
            for key in ("management_url", "model", "version"):
                if not check.get(key):
                    raise GateConfigError("check %r: torchserve_ready needs %s" % (name, key))
        elif kind == "deployment_available":
            for key in ("namespace", "deployment"):
                if not check.get(key):
                    raise GateConfigError("check %r: deployment_available needs %s" % (name, key))


def in_range(value, threshold_range):
    lo, hi = threshold_range.get("min"), threshold_range.get("max")
    return (lo is None or value >= lo) and (hi is None or value <= hi)


def _result(check, kind, status, value=None, message=""):
    return {"name": check["name"], "kind": kind, "status": status, "value": value,
            "threshold_range": check.get("threshold_range"), "message": message}


def evaluate_metric(check, variables, prom):
    merged = dict(variables)
    merged.update(check.get("variables") or {})
    if check.get("interval"):
        merged["interval"] = check["interval"]
    try:
        if check.get("template"):
            query_t, volume_t = BUILTIN_TEMPLATES[check["template"]]
        else:
            query_t, volume_t = check["query"], check.get("volume_query")
        query = render(query_t, merged)
        volume_q = render(volume_t, merged) if (volume_t and check.get("min_request_volume")) else None
    except TemplateError as exc:
        raise GateConfigError("check %r: %s" % (check["name"], exc))
    if prom is None:
        return _result(check, "metric", "error", message="no prometheus configured for a metric check")
    try:
        if volume_q is not None:
            volume = prom.query(volume_q)
            if volume is None or volume < check["min_request_volume"]:
                return _result(check, "metric", "no_data", value=None, message=(
                    "request volume %s below min_request_volume %s" % (
                        "none" if volume is None else round(volume, 3), check["min_request_volume"])))
        value = prom.query(query)
    except PrometheusError as exc:
        return _result(check, "metric", "error", message=str(exc))
    if value is None:
        return _result(check, "metric", "no_data", message="no values found for query")
    ok = in_range(value, check["threshold_range"])
    return _result(check, "metric", "pass" if ok else "fail", value=value,
                   message="" if ok else "value %s outside %s" % (round(value, 4), check["threshold_range"]))


def evaluate_torchserve_ready(check, http=None):
    token = check.get("token")
    try:
        if not token and check.get("token_file"):
            token = read_management_key(check["token_file"])
        client = TorchServeClient(check["management_url"], token=token, timeout=check.get("timeout", 10),
                                  opener=http)
        desc = client.describe(check["model"], str(check["version"]))
    except (TorchServeError, IOError, OSError) as exc:
        return _result(check, "torchserve_ready", "error", message=str(exc))
    want = int(check.get("min_ready_workers", 1))
    if desc is None:
        return _result(check, "torchserve_ready", "fail", value=0,
                       message="%s/%s is not registered" % (check["model"], check["version"]))
    have = ready_workers(desc)
    return _result(check, "torchserve_ready", "pass" if have >= want else "fail", value=have,
                   message="%d/%d workers READY" % (have, want))


def evaluate_deployment(check, k8s_client):
    """The Deployment's readiness by the collection's one rule (``k8s_readiness``)."""
    if k8s_client is None:
        return _result(check, "deployment_available", "error", message="no Kubernetes client configured")
    try:
        from kubernetes.client import AppsV1Api
    except ImportError as exc:  # pragma: no cover
        return _result(check, "deployment_available", "error", message="kubernetes library missing: %s" % exc)
    from ansible_collections.gpuops.cluster.plugins.module_utils.k8s_errors import k8s_error_message
    from ansible_collections.gpuops.cluster.plugins.module_utils.k8s_readiness import deployment_readiness
    what = "Deployment %s/%s" % (check["namespace"], check["deployment"])
    try:
        resp = AppsV1Api(k8s_client).read_namespaced_deployment(check["deployment"], check["namespace"],
                                                                _preload_content=False)
        dep = json.loads(resp.data)
    except Exception as exc:  # an unreadable Deployment is an error, never a pass
        return _result(check, "deployment_available", "error", message=k8s_error_message(exc, what) or
                       "%s: %s" % (what, exc))
    ready = deployment_readiness(dep, require_running=True)
    return _result(check, "deployment_available", "pass" if ready["ready"] else "fail", value=ready["available"],
                   message=ready["message"])


def decide(results, checks, on_no_data="fail", on_error="fail"):
    by_name = dict((c["name"], c) for c in checks)
    decision = "pass"
    for res in results:
        check = by_name.get(res["name"], {})
        if res["status"] == "fail":
            outcome = "fail"
        elif res["status"] == "error":
            outcome = check.get("on_error") or on_error
            if outcome not in ERROR_CHOICES:  # an error is never a pass
                outcome = "fail"
        elif res["status"] == "no_data":
            outcome = check.get("on_no_data") or on_no_data
        else:
            outcome = "pass"
        if outcome == "fail":
            decision = "fail"
        elif outcome == "hold" and decision == "pass":
            decision = "hold"
    return decision


def run_gate(checks, variables, prometheus, k8s_client=None, http=None, on_no_data="fail", on_error="fail"):
    """Evaluate every check once and decide. ``prometheus``: dict(url=..., timeout=..., headers=...),
    a PrometheusClient, or None."""
    validate_checks(checks)
    prom = prometheus
    if isinstance(prometheus, dict):
        prom = client_from_settings(prometheus)
    results = []
    for check in checks:
        kind = _kind(check)
        if kind == "metric":
            results.append(evaluate_metric(check, variables, prom))
        elif kind == "torchserve_ready":
            results.append(evaluate_torchserve_ready(check, http=http))
        else:
            results.append(evaluate_deployment(check, k8s_client))
    return {"decision": decide(results, checks, on_no_data, on_error), "checks": results}
