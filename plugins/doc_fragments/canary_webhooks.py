# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Flagger-style webhooks of canary_rollout (plugins/module_utils/canary_spec.py WEBHOOK_SPEC)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    DOCUMENTATION = r"""
options:
  webhooks:
    description:
      - Flagger-style webhooks, each answered with 2xx to pass. The JSON body is C(name, namespace, phase,
        revision, metadata). Unknown keys are refused.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Unique name of the webhook.
        type: str
        required: true
      type:
        description:
          - V(pre-rollout) runs before the first step (a failure counts as a failed check); V(rollout) before
            every analysis (a failure is a failed check); V(confirm-promotion) must pass before promotion
            (a failure holds); V(post-rollout) runs after promotion or rollback (informational);
            V(rollback) rolls back when it answers 2xx.
        type: str
        choices: [pre-rollout, rollout, confirm-promotion, post-rollout, rollback]
        default: rollout
      url:
        description: URL to POST to.
        type: str
        required: true
      timeout:
        description: Seconds to wait for the answer, more than 0.
        type: float
        default: 10
      metadata:
        description: Free-form strings sent as C(metadata).
        type: dict
      headers:
        description:
          - Extra HTTP headers, for example an C(Authorization) header with a bearer token.
          - The values are secrets, masked in the module's output.
        type: dict
"""
