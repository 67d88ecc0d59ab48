# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Option specs shared by the canary modules, and the checks of their numeric options.

``CHECK_SPEC`` (a health check, ``checks`` of canary_gate and canary_rollout) and ``WEBHOOK_SPEC``
(``webhooks`` of canary_rollout) are the only definitions of those suboptions; their documentation
is the ``gpuops.cluster.canary_checks`` / ``gpuops.cluster.canary_webhooks`` doc fragments.
Secrets (a check's ``token``, a webhook's ``headers``) are ``no_log``: Ansible masks their values
everywhere in the module's output, and unknown keys (typos) are refused.

``numeric_errors(values, rules)`` checks numbers before a module changes anything: 0 and negative
values are refused or accepted by rule, never replaced by a default.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import math

TEMPLATE_CHOICES = ["request-success-rate", "request-duration", "torchserve-success-rate",
                    "torchserve-error-rate", "torchserve-latency-p99"]

CHECK_SPEC = dict(
    name=dict(type="str", required=True),
    kind=dict(type="str", choices=["metric", "torchserve_ready", "deployment_available"]),
    template=dict(type="str", choices=TEMPLATE_CHOICES),
    query=dict(type="str"),
    volume_query=dict(type="str"),
    threshold_range=dict(type="dict", options=dict(min=dict(type="float"), max=dict(type="float"))),
    min_request_volume=dict(type="float"),
    interval=dict(type="str"),
    variables=dict(type="dict"),
    on_no_data=dict(type="str", choices=["fail", "hold", "pass"]),
    on_error=dict(type="str", choices=["fail", "hold"]),
    management_url=dict(type="str"),
    model=dict(type="str"),
    version=dict(type="str"),
    min_ready_workers=dict(type="int", default=1),
    token=dict(type="str", no_log=True),
    token_file=dict(type="path"),
    timeout=dict(type="float", default=10),
    namespace=dict(type="str"),
    deployment=dict(type="str"),
)

WEBHOOK_SPEC = dict(
    name=dict(type="str", required=True),
    type=dict(type="str", default="rollout",
              choices=["pre-rollout", "rollout", "confirm-promotion", "post-rollout", "rollback"]),
    url=dict(type="str", required=True),
    timeout=dict(type="float", default=10),
    metadata=dict(type="dict"),
    headers=dict(type="dict", no_log=True),
)

# rule -> (test, wording)
_RULES = {
    ">0": (lambda v: v > 0, "more than 0"),
    ">=0": (lambda v: v >= 0, "0 or more"),
    ">=1": (lambda v: v >= 1, "1 or more"),
    "0..1": (lambda v: 0 <= v <= 1, "between 0 and 1"),
    "(0,1)": (lambda v: 0 < v < 1, "between 0 and 1 (both excluded)"),
    "1..100": (lambda v: 1 <= v <= 100, "between 1 and 100"),
}

CHECK_NUMBERS = {"min_request_volume": ">=0", "min_ready_workers": ">=1", "timeout": ">0"}
WEBHOOK_NUMBERS = {"timeout": ">0"}


def check_argument_spec(required=False):
    """The ``checks`` option (list of CHECK_SPEC dicts) for a module's argument_spec."""
    spec = dict(type="list", elements="dict", options=copy.deepcopy(CHECK_SPEC))
    if required:
        spec["required"] = True
    return spec


def webhook_argument_spec():
    """The ``webhooks`` option (list of WEBHOOK_SPEC dicts) for a module's argument_spec."""
    return dict(type="list", elements="dict", default=[], options=copy.deepcopy(WEBHOOK_SPEC))


def numeric_errors(values, rules, where=""):
    """Messages for the numbers of ``values`` (a dict) that break their rule; None values are not set
    and pass. ``rules``: {option: one of ">0", ">=0", ">=1", "0..1", "(0,1)", "1..100"}."""
    errors = []
    for name in sorted(rules):
        value = values.get(name)
        if value is None:
            continue
        test, wording = _RULES[rules[name]]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not test(value):
            errors.append("%s%s must be %s, got %r" % (where, name, wording, value))
    return errors


def check_list_errors(checks, webhooks=None):
    """Numeric errors of every check and webhook, each naming its entry."""
    errors = []
    for i, check in enumerate(checks or []):
        errors += numeric_errors(check, CHECK_NUMBERS, "checks[%d] (%s): " % (i, check.get("name")))
    for i, hook in enumerate(webhooks or []):
        errors += numeric_errors(hook, WEBHOOK_NUMBERS, "webhooks[%d] (%s): " % (i, hook.get("name")))
    return errors
