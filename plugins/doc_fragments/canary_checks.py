# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""The health checks of canary_gate and canary_rollout (plugins/module_utils/canary_spec.py CHECK_SPEC)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    DOCUMENTATION = r"""
options:
  checks:
    description:
      - The health checks, evaluated in order. Unknown keys are refused.
    type: list
    elements: dict
    suboptions:
      name:
        description: Unique name of the check.
        type: str
        required: true
      kind:
        description: Type of check. Defaults to V(metric) when O(checks[].query) or O(checks[].template) is set.
        type: str
        choices: [metric, torchserve_ready, deployment_available]
      template:
        description:
          - A built-in query. V(request-success-rate) and V(request-duration) are Flagger's Istio queries
            (percent of non-5xx requests; p99 in milliseconds) over C(istio_requests_total) and
            C(istio_request_duration_milliseconds_bucket).
          - V(torchserve-success-rate), V(torchserve-error-rate) (percent) and V(torchserve-latency-p99)
            (milliseconds) use the per-version metrics of the collection's TorchServe handler
            (C(gpuops_requests_total), C(gpuops_errors_total), C(gpuops_latency_seconds_bucket) with labels
            C(model_name) and C(model_version)).
        type: str
        choices: [request-success-rate, request-duration, torchserve-success-rate, torchserve-error-rate,
                  torchserve-latency-p99]
      query:
        description: Your own PromQL returning one value; C({{ name }}) placeholders are substituted.
        type: str
      volume_query:
        description: PromQL returning the request count used with O(checks[].min_request_volume) for a custom query.
        type: str
      threshold_range:
        description: Pass when C(min <= value <= max); either bound may be omitted, not both.
        type: dict
        suboptions:
          min:
            description: Lowest passing value.
            type: float
          max:
            description: Highest passing value.
            type: float
      min_request_volume:
        description: Fewer requests than this in the interval makes the check C(no_data). 0 or more.
        type: float
      interval:
        description: Overrides the C({{ interval }}) template variable for this check.
        type: str
      variables:
        description: Template variables for this check only.
        type: dict
      on_no_data:
        description: Overrides the module's O(on_no_data) for this check.
        type: str
        choices: [fail, hold, pass]
      on_error:
        description: Overrides the module's O(on_error) for this check.
        type: str
        choices: [fail, hold]
      management_url:
        description: TorchServe management API URL (V(torchserve_ready)).
        type: str
      model:
        description: TorchServe model name (V(torchserve_ready)).
        type: str
      version:
        description: TorchServe model version (V(torchserve_ready)).
        type: str
      min_ready_workers:
        description: Workers that must be V(READY) (V(torchserve_ready)), 1 or more.
        type: int
        default: 1
      token:
        description:
          - TorchServe management key when token authorization is on.
          - A secret, masked in the module's output.
        type: str
      token_file:
        description: TorchServe key file (C(key_file.json)) to read the management key from.
        type: path
      timeout:
        description: Seconds for the whole TorchServe management API call (V(torchserve_ready)), more than 0.
        type: float
        default: 10
      namespace:
        description: Namespace of the Deployment (V(deployment_available)).
        type: str
      deployment:
        description:
          - Name of the Deployment (V(deployment_available)). It passes when the Deployment has observed its
            latest spec, every wanted replica is updated and available, no old replica is left, and it is not
            scaled to 0 (the same rule as the readiness waits of M(gpuops.cluster.canary_rollout)).
        type: str
"""
