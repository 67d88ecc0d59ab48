#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: canary_gate
short_description: Evaluate canary health checks (Prometheus metrics, TorchServe and Deployment readiness)
version_added: 0.1.0
description:
  - Evaluates a list of checks once and returns a decision, with Flagger's analysis semantics.
  - Metric checks run a PromQL query (a built-in template or your own) and compare the single
    value with O(checks[].threshold_range).
  - Readiness checks read the TorchServe management API (the version's workers are V(READY); C(/ping)
    is healthy before models load, so it is never used) or a Deployment's available replicas.
  - No values (empty result, NaN, request volume below O(checks[].min_request_volume)) is C(no_data),
    handled by O(on_no_data). Prometheus unreachable or a query error is C(error) and is never a pass.
  - The module only reads, so it runs fully in check mode and never reports C(changed).
author:
  - gpuops.cluster contributors (@gpuops)
extends_documentation_fragment:
  - gpuops.cluster.k8s_auth
  - gpuops.cluster.prometheus
  - gpuops.cluster.canary_checks
attributes:
  check_mode:
    support: full
    description: Only reads; check mode evaluates the gate for real.
  diff_mode:
    support: none
    description: Nothing is changed, so there is no diff.
options:
  namespace:
    description: Value of C({{ namespace }}) in query templates.
    type: str
  target:
    description: Value of C({{ target }}) in query templates (the canary workload, a regex for Istio templates).
    type: str
  interval:
    description: Value of C({{ interval }}) in query templates, a Prometheus duration.
    type: str
    default: 1m
  version:
    description: Value of C({{ version }}) in query templates (the model version under test).
    type: str
  model:
    description: Value of C({{ model }}) in the TorchServe templates (the model name).
    type: str
  variables:
    description: More template variables, available as C({{ name }}).
    type: dict
    default: {}
  on_no_data:
    description:
      - What a check without data does to the decision.
      - V(fail) (Flagger's behaviour, the default) counts it as a failed check; V(hold) stops advancing
        without counting a failure; V(pass) lets the gate pass.
    type: str
    choices: [fail, hold, pass]
    default: fail
  on_error:
    description: What a check that could not be evaluated (Prometheus down, query error) does. Never a pass.
    type: str
    choices: [fail, hold]
    default: fail
  fail_on_gate:
    description: Fail the task when the decision is V(fail) (the checks are still returned).
    type: bool
    default: false
  checks:
    description:
      - The checks to evaluate, in order (see the suboptions).
    required: true
notes:
  - Metric checks need Prometheus; readiness checks of kind V(deployment_available) need the
    Kubernetes connection options and the C(kubernetes) Python library.
seealso:
  - module: gpuops.cluster.canary_rollout
"""

EXAMPLES = r"""
- name: Is the new model version healthy?
  gpuops.cluster.canary_gate:
    prometheus_url: http://prometheus.monitoring:9090
    namespace: serving
    target: classifier-canary
    model: classifier
    version: "2.0"
    interval: 1m
    on_no_data: hold
    checks:
      - name: success-rate
        template: torchserve-success-rate
        threshold_range: {min: 99}
        min_request_volume: 50
      - name: latency-p99
        template: torchserve-latency-p99
        threshold_range: {max: 500}
      - name: workers
        kind: torchserve_ready
        management_url: http://classifier-canary.serving:8081
        model: classifier
        version: "2.0"
  register: gate

- name: Istio metrics, as Flagger queries them
  gpuops.cluster.canary_gate:
    prometheus_url: http://prometheus.istio-system:9090
    namespace: serving
    target: classifier-canary
    checks:
      - {name: request-success-rate, template: request-success-rate, threshold_range: {min: 99}}
      - {name: request-duration, template: request-duration, threshold_range: {max: 500}}
    fail_on_gate: true
"""

RETURN = r"""
decision:
  description: V(pass), V(fail) or V(hold) (stop advancing without counting a failure).
  returned: always
  type: str
  sample: pass
passed:
  description: True when the decision is V(pass).
  returned: always
  type: bool
checks:
  description: One result per check.
  returned: always
  type: list
  elements: dict
  sample:
    - {name: success-rate, kind: metric, status: pass, value: 99.7, threshold_range: {min: 99}, message: ""}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpuops.cluster.plugins.module_utils.canary_spec import check_argument_spec, check_list_errors
from ansible_collections.gpuops.cluster.plugins.module_utils.gate import GateConfigError, run_gate
from ansible_collections.gpuops.cluster.plugins.module_utils.k8s_connection import (
    get_api_client, k8s_auth_argument_spec, require_kubernetes)
from ansible_collections.gpuops.cluster.plugins.module_utils.k8s_errors import fail_on_k8s_error
from ansible_collections.gpuops.cluster.plugins.module_utils.promql import (
    prometheus_argument_spec, prometheus_errors, prometheus_settings)


def argument_spec():
    spec = k8s_auth_argument_spec()
    spec.update(prometheus_argument_spec())
    spec.update(
        namespace=dict(type="str"),
        target=dict(type="str"),
        interval=dict(type="str", default="1m"),
        version=dict(type="str"),
        model=dict(type="str"),
        variables=dict(type="dict", default={}),
        on_no_data=dict(type="str", choices=["fail", "hold", "pass"], default="fail"),
        on_error=dict(type="str", choices=["fail", "hold"], default="fail"),
        fail_on_gate=dict(type="bool", default=False),
        checks=check_argument_spec(required=True),
    )
    return spec


def template_variables(params):
    variables = dict((k, params[k]) for k in ("namespace", "target", "interval", "version", "model")
                     if params.get(k) is not None)
    variables.update(params.get("variables") or {})
    return variables


def clean_checks(checks):
    return [dict((k, v) for k, v in c.items() if v is not None) for c in checks]


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    p = module.params
    checks = clean_checks(p["checks"])
    errors = prometheus_errors(p) + check_list_errors(checks)
    if errors:
        module.fail_json(msg="; ".join(errors))
    k8s = None
    if any(c.get("kind") == "deployment_available" for c in checks):
        require_kubernetes(module)
        try:
            k8s = get_api_client(p)
        except Exception as exc:  # pylint: disable=broad-except
            fail_on_k8s_error(module, exc)
    prom = prometheus_settings(p)
    try:
        result = run_gate(checks, template_variables(p), prom, k8s_client=k8s,
                          on_no_data=p["on_no_data"], on_error=p["on_error"])
    except GateConfigError as exc:
        module.fail_json(msg=str(exc))
    out = dict(changed=False, decision=result["decision"], passed=result["decision"] == "pass",
               checks=result["checks"])
    if p["fail_on_gate"] and result["decision"] == "fail":
        failed = [c for c in result["checks"] if c["status"] != "pass"]
        module.fail_json(msg="canary gate failed: " + "; ".join(
            "%s: %s %s" % (c["name"], c["status"], c["message"]) for c in failed), **out)
    module.exit_json(**out)


if __name__ == "__main__":
    main()
