#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: canary_rollout
short_description: Drive an Istio canary release to promotion or rollback with Flagger's semantics
version_added: "0.1.0"
description:
  - Runs a whole canary analysis from the control node, the way Flagger's scheduler does, without
    a controller in the cluster. Every O(interval) seconds it evaluates the health checks
    (M(gpuops.cluster.canary_gate) semantics) and webhooks, moves the canary weight of an Istio
    C(VirtualService) route one step up when they pass, counts failed checks and rolls back when they
    reach O(threshold) or when no step was made for O(progress_deadline) seconds.
  - At O(max_weight) a passing iteration promotes, the canary takes 100%, the stable Deployment is
    rewritten to the canary's pod spec (its own labels are kept), then the stable subset takes 100%
    again and the canary Deployment is scaled to 0.
  - Rollback sends 100% to the stable subset and scales the canary Deployment to 0. It works even when the
    canary subset has left the C(DestinationRule) or the canary Deployment is gone.
  - When the stable Deployment does not become ready after promotion, its previous pod template is put back
    and the stable subset takes 100% again (RV(status=rolled_back), RV(reason) says so).
  - Every number is checked before anything changes (0 and negatives included); 0 is never replaced by a default.
  - The state (revision, phase, failed checks, iteration, previous stable pod template) is kept in the
    C(gpuops.io/canary-state) annotation of the C(VirtualService), updated at every iteration, so a
    re-run after an interruption resumes where it stopped, and a re-run of a finished revision changes
    nothing.
  - A module cannot stream output while it runs. Each progress entry is appended, as one JSON line, to
    O(progress_log) on the host running the module (follow it with C(tail -f)), is logged to the
    host's syslog/journal, and is visible live in the state annotation of the C(VirtualService). All
    entries are returned in RV(progress) at the end.
author:
  - gpuops.cluster contributors (@gpuops)
extends_documentation_fragment:
  - gpuops.cluster.k8s_auth
  - gpuops.cluster.prometheus
  - gpuops.cluster.canary_checks
  - gpuops.cluster.canary_webhooks
attributes:
  check_mode:
    support: full
    description: Reports what the first iteration would do and sends that weight change as a server-side dry run.
  diff_mode:
    support: full
    description: The diff shows the canary weight and phase before and after.
options:
  operation:
    description:
      - V(run) analyses and promotes or rolls back the release O(revision).
      - V(rollback) sends 100% to stable and scales the canary to 0 at once; when the last rollout was
        promoted, it first restores the stable Deployment's previous pod template from the state annotation.
    type: str
    choices: [run, rollback]
    default: run
  namespace:
    description: Namespace of the C(VirtualService), its C(DestinationRule) and the Deployments.
    type: str
    required: true
  virtual_service:
    description: Name of the C(VirtualService) whose route is shifted.
    type: str
    required: true
  route:
    description: Name or index of the http route (may be omitted when there is only one).
    type: str
  stable_subset:
    description: C(DestinationRule) subset of the stable version.
    type: str
    default: stable
  canary_subset:
    description: C(DestinationRule) subset of the canary version.
    type: str
    default: canary
  revision:
    description:
      - Identifies the release under test, for example the new model version C(2.0). Required for V(run).
      - A rollout whose state annotation has the same revision is resumed, or left alone when finished.
    type: str
  restart:
    description: Analyse O(revision) again even though its state annotation says it finished.
    type: bool
    default: false
  stable_deployment:
    description: Deployment serving the stable subset; promotion copies the canary's pod spec into it.
    type: str
  canary_deployment:
    description: Deployment serving the canary subset; scaled up at the start when at 0, scaled to 0 at the end.
    type: str
  canary_replicas:
    description: Replicas given to O(canary_deployment) when it is at 0 when the rollout starts, 1 or more.
    type: int
    default: 1
  wait_timeout:
    description: Seconds to wait for the stable Deployment to be ready after promotion or restore, more than 0.
    type: int
    default: 300
  interval:
    description: Seconds between two iterations (Flagger's C(analysis.interval)), more than 0.
    type: float
    default: 60
  threshold:
    description: Failed checks after which the rollout is rolled back (Flagger's C(analysis.threshold)), 1 or more.
    type: int
    default: 5
  step_weight:
    description: Canary weight added by each successful iteration, 1 to 100. Default 10 unless O(step_weights) is set.
    type: int
  step_weights:
    description: Explicit canary weights to go through, for example V([1, 5, 25, 50]); replaces O(step_weight).
    type: list
    elements: int
  max_weight:
    description: Canary weight at which a passing iteration promotes. Default 50, or the last of O(step_weights).
    type: int
  progress_deadline:
    description: Seconds without a step (held or failing iterations) after which the rollout is rolled back, at least O(interval).
    type: float
    default: 600
  on_no_data:
    description:
      - What a check without data does. V(fail) (Flagger's behaviour) counts a failed check, V(hold) halts
        advancement without counting (O(progress_deadline) still applies), V(pass) lets it pass.
    type: str
    choices: [fail, hold, pass]
    default: fail
  on_error:
    description: What a check that could not be evaluated (Prometheus down) does; never a pass.
    type: str
    choices: [fail, hold]
    default: fail
  checks:
    description:
      - Health checks evaluated at every iteration, the same as O(gpuops.cluster.canary_gate#module:checks).
      - Required for V(run).
      - A canary is promoted only when at least one metric check has returned data at a canary weight above
        0% during the rollout (it served traffic) and, with O(canary_deployment), when that Deployment runs
        and is available; otherwise the final iteration holds (no traffic) or counts a failed check (not running).
  model:
    description: Value of C({{ model }}) in query templates (the TorchServe model name).
    type: str
  target:
    description: Value of C({{ target }}) in query templates. Defaults to O(canary_deployment).
    type: str
  metrics_interval:
    description: Value of C({{ interval }}) in query templates. Defaults to O(interval) as a Prometheus duration.
    type: str
  variables:
    description:
      - More query template variables. C({{ namespace }}) and C({{ version }}) (= O(revision)) are always set.
    type: dict
    default: {}
  progress_log:
    description: File on the host running the module to append each progress entry to as a JSON line.
    type: path
  force:
    description: Change a C(VirtualService) even though Flagger or Argo Rollouts manages it.
    type: bool
    default: false
  max_retries:
    description:
      - Most retries of one Kubernetes API write after a write conflict (HTTP 409) with another writer, and,
        separately, of an API call that failed transiently (HTTP 429, 500, 502, 503, 504, a dropped connection
        or a read timeout). Other errors (403, 404, 422) are not retried. Each transient retry is reported
        as a warning.
      - Retries wait an exponential backoff with jitter (conflicts from 0.05 s, transient errors from 0.5 s,
        doubling) and stop at O(retry_timeout) whatever this count.
      - 0 or more.
    type: int
    default: 5
  retry_timeout:
    description:
      - Seconds after which no further retry of one API call starts (see O(max_retries)), more than 0.
      - A rollout that gives up leaves its state annotation at the last completed step; re-running the same
        task resumes from there, O(operation=rollback) sends 100% to stable.
    type: float
    default: 30
  api_version:
    description: Version of the C(networking.istio.io) API to use.
    type: str
    default: v1
    choices: [v1, v1beta1, v1alpha3]
notes:
  - >-
    Run it on the control node (C(delegate_to: localhost) or a play on localhost) with C(async) larger than
    the worst case C(progress_deadline + threshold * interval) if the SSH connection may drop.
  - The RBAC the connecting identity needs is listed in the collection's C(docs/canary.md).
seealso:
  - module: gpuops.cluster.canary_gate
  - module: gpuops.cluster.traffic_split
"""

EXAMPLES = r"""
- name: Canary the new model version, 10% more every minute up to 50%, then promote
  gpuops.cluster.canary_rollout:
    namespace: serving
    virtual_service: resnet
    revision: "2.0"
    stable_deployment: resnet-stable
    canary_deployment: resnet-canary
    interval: 60
    threshold: 5
    step_weight: 10
    max_weight: 50
    prometheus_url: http://prometheus.monitoring:9090
    model: resnet
    checks:
      - name: success-rate
        template: torchserve-success-rate
        threshold_range: {min: 99}
        min_request_volume: 20
      - name: latency-p99
        template: torchserve-latency-p99
        threshold_range: {max: 500}
    progress_log: /var/log/gpuops/canary-resnet.jsonl
  register: canary

- name: Roll back now (after a promotion this restores the previous stable version)
  gpuops.cluster.canary_rollout:
    operation: rollback
    namespace: serving
    virtual_service: resnet
    stable_deployment: resnet-stable
    canary_deployment: resnet-canary
"""

RETURN = r"""
status:
  description: V(promoted), V(rolled_back), V(planned) (check mode) or V(failed) (the rollout could not continue).
  returned: always
  type: str
  sample: promoted
reason:
  description: Why the rollout ended that way.
  returned: always
  type: str
  sample: failed checks threshold reached (2)
failed_checks:
  description: Failed checks counted for this revision.
  returned: always
  type: int
  sample: 0
iterations:
  description: Successful iterations.
  returned: always
  type: int
  sample: 6
weights:
  description: Final weights of the stable and canary subsets.
  returned: always
  type: dict
  sample: {stable: 100, canary: 0}
progress:
  description: One entry per iteration and per transition.
  returned: always
  type: list
  elements: dict
  sample:
    - {time: "2026-11-25T14:02:03Z", elapsed: 0.0, iteration: 1, weight: 0, new_weight: 10, action: advance,
       decision: pass, failed_checks: 0, checks: [], message: ""}
state:
  description: The state annotation as written at the end.
  returned: always
  type: dict
duration:
  description: Seconds the module ran.
  returned: always
  type: float
restored:
  description:
    - O(operation=rollback) after a promotion, the stable Deployment and the pod template that was put back
      (C(deployment), C(changed)); the template is also in the returned RV(state) before the rollback.
  returned: when O(operation=rollback)
  type: dict
"""

import json
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url
from ansible_collections.gpuops.cluster.plugins.module_utils.canary_spec import (
    check_argument_spec, check_list_errors, numeric_errors, webhook_argument_spec)
from ansible_collections.gpuops.cluster.plugins.module_utils.k8s_client import DeploymentOps
from ansible_collections.gpuops.cluster.plugins.module_utils.k8s_connection import (
    get_api_client, k8s_auth_argument_spec, require_kubernetes)
from ansible_collections.gpuops.cluster.plugins.module_utils.k8s_errors import (
    fail_on_k8s_error, retry_transient, retry_warning)
from ansible_collections.gpuops.cluster.plugins.module_utils.traffic import (
    IstioRoutes, TrafficError, set_traffic)
from ansible_collections.gpuops.cluster.plugins.module_utils.rollout import (
    STATE_ANNOTATION, Rollout, RolloutAborted, RolloutConfigError, parse_state, route_subset_weights)
from ansible_collections.gpuops.cluster.plugins.module_utils.gate import GateConfigError, run_gate, validate_checks
from ansible_collections.gpuops.cluster.plugins.module_utils.promql import (
    prometheus_argument_spec, prometheus_errors, prometheus_settings)

# every number of the module, checked before anything changes (None: not given)
NUMBER_RULES = {"canary_replicas": ">=1", "wait_timeout": ">0", "interval": ">0", "threshold": ">=1",
                "step_weight": "1..100", "max_weight": "1..100", "progress_deadline": ">0", "max_retries": ">=0",
                "retry_timeout": ">0"}


def option_errors(p):
    """Messages for every option value that cannot work, before the module touches anything."""
    errors = numeric_errors(p, NUMBER_RULES) + prometheus_errors(p)
    errors += ["step_weights[%d] must be between 1 and 100, got %r" % (i, w)
               for i, w in enumerate(p.get("step_weights") or []) if not 1 <= w <= 100]
    errors += check_list_errors(p.get("checks"), p.get("webhooks"))
    return errors


def argument_spec():
    spec = k8s_auth_argument_spec()
    spec.update(prometheus_argument_spec())
    spec.update(
        operation=dict(type="str", default="run", choices=["run", "rollback"]),
        namespace=dict(type="str", required=True),
        virtual_service=dict(type="str", required=True),
        route=dict(type="str"),
        stable_subset=dict(type="str", default="stable"),
        canary_subset=dict(type="str", default="canary"),
        revision=dict(type="str"),
        restart=dict(type="bool", default=False),
        stable_deployment=dict(type="str"),
        canary_deployment=dict(type="str"),
        canary_replicas=dict(type="int", default=1),
        wait_timeout=dict(type="int", default=300),
        interval=dict(type="float", default=60),
        threshold=dict(type="int", default=5),
        step_weight=dict(type="int"),
        step_weights=dict(type="list", elements="int"),
        max_weight=dict(type="int"),
        progress_deadline=dict(type="float", default=600),
        on_no_data=dict(type="str", default="fail", choices=["fail", "hold", "pass"]),
        on_error=dict(type="str", default="fail", choices=["fail", "hold"]),
        checks=check_argument_spec(),
        model=dict(type="str"),
        target=dict(type="str"),
        metrics_interval=dict(type="str"),
        variables=dict(type="dict", default={}),
        webhooks=webhook_argument_spec(),
        progress_log=dict(type="path"),
        force=dict(type="bool", default=False),
        max_retries=dict(type="int", default=5),
        retry_timeout=dict(type="float", default=30),
        api_version=dict(type="str", default="v1", choices=["v1", "v1beta1", "v1alpha3"]),
    )
    return spec


def post_webhook(hook, payload):
    """POST the JSON payload; (ok, message) with ok for a 2xx answer."""
    try:
        headers = {"Content-Type": "application/json"}
        headers.update(hook.get("headers") or {})
        timeout = hook.get("timeout")
        resp = open_url(hook["url"], data=json.dumps(payload), method="POST", headers=headers,
                        timeout=10 if timeout is None else timeout)
        code = resp.getcode()
        return 200 <= code < 300, "HTTP %d" % code
    except Exception as exc:  # HTTPError (non-2xx), URLError, timeouts
        code = getattr(exc, "code", None)
        return False, ("HTTP %s" % code) if code else str(exc)


def build_rollout(module, api_client, emit, now=time.time, sleep=time.sleep, before_replace=None):
    """The Rollout core wired to the real API, Prometheus and webhooks (also used by the tests)."""
    p = module.params if hasattr(module, "params") else module
    routes = IstioRoutes(api_client, api_version=p["api_version"])
    ns, vs_name = p["namespace"], p["virtual_service"]
    stable, canary = p["stable_subset"], p["canary_subset"]

    def read_route():
        vs = routes.get_virtual_service(ns, vs_name)
        if vs is None:
            raise TrafficError("VirtualService %s/%s not found" % (ns, vs_name))
        weights = route_subset_weights(vs, p["route"], stable, canary)
        return weights, parse_state(vs)

    def write_route(stable_w, canary_w, state, dry_run=False):
        def mutate(vs):
            ann = vs.setdefault("metadata", {}).setdefault("annotations", {})
            ann[STATE_ANNOTATION] = json.dumps(state, sort_keys=True, separators=(",", ":"))
            return vs
        if canary_w == 0:
            # all to stable names the stable subset only: it must work even when the canary subset has
            # left the DestinationRule (its destination, if any, is kept at 0)
            weights = {stable: 100}
        else:
            weights = {stable: stable_w, canary: canary_w}
        res = set_traffic(routes, ns, vs_name, weights, route=p["route"], force=p["force"], dry_run=dry_run,
                          max_retries=p["max_retries"], retry_timeout=p["retry_timeout"], mutate=mutate,
                          before_replace=before_replace, zero_unnamed=canary_w == 0, sleep=sleep)
        return res["changed"]

    deployments = DeploymentOps(api_client, ns, p["stable_deployment"], p["canary_deployment"],
                                canary_replicas=p["canary_replicas"], wait_timeout=p["wait_timeout"],
                                sleep=sleep, now=now, max_retries=p["max_retries"],
                                retry_timeout=p["retry_timeout"])
    prom = prometheus_settings(p)
    checks = [dict((k, v) for k, v in c.items() if v is not None) for c in (p.get("checks") or [])]

    def gate(variables):
        return run_gate(checks, variables, prom, k8s_client=api_client, on_no_data=p["on_no_data"],
                        on_error=p["on_error"])

    variables = {"version": p["revision"]}
    for key in ("model",):
        if p.get(key):
            variables[key] = p[key]
    if p.get("target") or p.get("canary_deployment"):
        variables["target"] = p.get("target") or p["canary_deployment"]
    if p.get("metrics_interval"):
        variables["interval"] = p["metrics_interval"]
    variables.update(p.get("variables") or {})
    cfg = dict(name=vs_name, namespace=ns, revision=p["revision"] or "manual-rollback",
               restart=p["restart"], interval=p["interval"], threshold=p["threshold"],
               step_weight=p["step_weight"], step_weights=p["step_weights"], max_weight=p["max_weight"],
               progress_deadline=p["progress_deadline"], on_no_data=p["on_no_data"], on_error=p["on_error"],
               webhooks=[dict((k, v) for k, v in h.items() if v is not None) for h in p["webhooks"] or []],
               variables=variables)

    # A rollout runs for many intervals: one throttled (429) or failed (5xx, dropped connection) API
    # call must not abort it half-way. Every call below is safe to repeat (reads, or writes of an
    # absolute state from a fresh read), so transient errors are retried with backoff.
    on_retry = retry_warning(module.warn) if hasattr(module, "warn") else None

    def retried(fn):
        return retry_transient(fn, attempts=p["max_retries"] + 1, sleep=sleep, on_retry=on_retry,
                               timeout=p["retry_timeout"], jitter=True) if fn else None

    return Rollout(cfg, read_route=retried(read_route), write_route=retried(write_route), gate=gate,
                   webhook=post_webhook,
                   scale=retried(deployments.scale_canary if p["canary_deployment"] else None),
                   promote=retried(deployments.promote if p["stable_deployment"] else None),
                   restore=retried(deployments.restore if p["stable_deployment"] else None),
                   wait_stable=deployments.wait_stable if p["stable_deployment"] else None,
                   canary_ready=retried(deployments.canary_status if p["canary_deployment"] else None),
                   emit=emit, now=now, sleep=sleep), checks


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(), supports_check_mode=True,
        required_if=[("operation", "run", ("revision", "checks"))],
        mutually_exclusive=[("step_weight", "step_weights")],
    )
    require_kubernetes(module)
    p = module.params
    errors = option_errors(p)
    if errors:
        module.fail_json(msg="; ".join(errors))

    log_file = [None]

    def emit(entry):
        line = json.dumps(entry, sort_keys=True)
        module.log("canary_rollout %s/%s: %s" % (p["namespace"], p["virtual_service"], line))
        if p["progress_log"]:
            if log_file[0] is None:
                log_file[0] = open(p["progress_log"], "a")
            log_file[0].write(line + "\n")
            log_file[0].flush()

    try:
        api_client = get_api_client(p)
        rollout, checks = build_rollout(module, api_client, emit)
        if p["operation"] == "run":
            validate_checks(checks)
            if any((c.get("kind") or "metric") == "metric" for c in checks) and not p["prometheus_url"]:
                module.fail_json(msg="metric checks need prometheus_url")
        before = rollout.read_route()
        if not module.check_mode:
            # preflight: a dry-run write of what is there now checks RBAC and admission before the
            # rollout touches anything (scaling, restoring), so a missing right fails cleanly
            # (a rollback checks the write it will make: all to stable)
            canary_now = before[0]["canary"] if p["operation"] == "run" else 0
            rollout.write_route(100 - canary_now, canary_now, dict(before[1] or {}, preflight=time.time()),
                                dry_run=True)
        if p["operation"] == "run":
            res = rollout.plan() if module.check_mode else rollout.run()
        else:
            res = rollout.rollback_now(dry_run=module.check_mode)
    except RolloutAborted as exc:
        r = exc.result
        module.fail_json(msg=str(exc), status="failed", reason=r["reason"], progress=r["progress"],
                         failed_checks=r["failed_checks"], iterations=r["iterations"], weights=r["weights"])
    except (RolloutConfigError, GateConfigError, TrafficError) as exc:
        module.fail_json(msg=str(exc))
    except Exception as exc:  # pylint: disable=broad-except
        fail_on_k8s_error(module, exc, what="VirtualService %s/%s" % (p["namespace"], p["virtual_service"]))
    finally:
        if log_file[0] is not None:
            log_file[0].close()

    if module.check_mode:
        changed = "nothing to do" not in res["reason"]
    else:
        changed = bool(res["changed"])
    out = dict(changed=changed, status=res["status"], reason=res["reason"], failed_checks=res["failed_checks"],
               iterations=res["iterations"], weights=res["weights"], progress=res["progress"], state=res["state"],
               duration=res["duration"], restored=res.get("restored"))
    if module._diff:
        b_weights, b_state = before
        out["diff"] = dict(
            before={"weights": b_weights, "phase": (b_state or {}).get("phase")},
            after={"weights": res["weights"], "phase": (res["state"] or {}).get("phase")})
    module.exit_json(**out)


if __name__ == "__main__":
    main()
