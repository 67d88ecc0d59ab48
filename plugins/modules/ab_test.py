#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: ab_test
short_description: Compare two model versions under a fixed traffic split and name a winner only when significant
version_added: 0.1.0
description:
  - Compares two versions' error ratio with a two-proportion z-test and their latency with Welch's
    t-test or a Mann-Whitney U test, at the requested confidence, and returns the p-values.
  - A winner is named only when a difference is statistically significant; when one version is
    better on errors and the other on latency, no winner is named (RV(reason=conflict)).
  - Data comes from Prometheus (the per-version metrics of the collection's TorchServe handler,
    C(gpuops_requests_total), C(gpuops_errors_total), C(gpuops_latency_seconds_bucket)) or is given
    directly in O(data). With Prometheus, latency is compared with Mann-Whitney U over the histogram
    buckets (a histogram has no raw samples for a t-test).
  - The split itself is set beforehand with M(gpuops.cluster.traffic_split) and kept fixed while the
    test runs; this module only measures and decides, so it never changes anything.
  - Pure Python statistics (no scipy needed on the controller).
author:
  - gpuops.cluster contributors (@gpuops)
extends_documentation_fragment:
  - gpuops.cluster.prometheus
notes:
  - O(prometheus_url), O(model) and O(versions) are required unless O(data) is given; with O(data),
    the Prometheus options are not used (so C(module_defaults) for the C(prometheus) action group do not get in the way).
attributes:
  check_mode:
    support: full
    description: Only reads.
  diff_mode:
    support: none
    description: Nothing changes.
options:
  model:
    description: TorchServe model name (label C(model_name)).
    type: str
  versions:
    description: The two versions to compare (label C(model_version)); the first is "A".
    type: list
    elements: str
  window:
    description: Prometheus range over which to count, for example C(10m).
    type: str
    default: 10m
  data:
    description:
      - Two entries given directly instead of Prometheus, each with C(name), C(requests), C(errors)
        and optionally C(latencies) (list of samples in ms).
    type: list
    elements: dict
  confidence:
    description: Confidence level; a difference is significant when its p-value < 1 - confidence.
    type: float
    default: 0.95
  latency_test:
    description: Test for latency samples given in O(data); Prometheus histograms always use Mann-Whitney U.
    type: str
    choices: [welch, mann-whitney]
    default: welch
  min_requests:
    description: Fewer requests than this for either version gives RV(reason=insufficient_data) and no winner.
    type: int
    default: 100
  min_latency_effect:
    description:
      - Smallest latency difference that can name a winner, as the rank-biserial correlation of the two
        versions' latencies (0 to 1; the effect size of Mann-Whitney U). V(0.1) means one version is
        slower in at least 55% of request pairs (a small effect); V(0.3) is medium, V(0.5) large.
      - With hundreds of requests, a few milliseconds of scheduling noise on a busy node are
        statistically significant without mattering; such a difference gives RV(reason=negligible_effect)
        and no winner on latency. V(0) names a winner on significance alone.
    type: float
    default: 0.1
"""

EXAMPLES = r"""
- name: Fix a 50/50 split
  gpuops.cluster.traffic_split:
    namespace: serving
    name: classifier
    weights: {v1: 50, v2: 50}

- name: Which version is better?
  gpuops.cluster.ab_test:
    prometheus_url: http://prometheus.monitoring:9090
    model: classifier
    versions: ["1.0", "2.0"]
    window: 30m
    confidence: 0.99
  register: ab

- name: Report
  ansible.builtin.debug:
    msg: "winner={{ ab.winner }} p(errors)={{ ab.errors.p_value }}"
"""

RETURN = r"""
winner:
  description: Name of the significantly better version, or null.
  returned: always
  type: str
significant:
  description: True when a winner is named.
  returned: always
  type: bool
reason:
  description:
    - V(significant), V(not_significant), V(conflict), V(insufficient_data), or V(negligible_effect)
      (latency differs significantly, but by less than O(min_latency_effect), and errors do not).
  returned: always
  type: str
errors:
  description: Two-proportion z-test result (statistic, p_value, rate_a, rate_b, significant, better).
  returned: when both versions have enough requests
  type: dict
latency:
  description:
    - Latency test result (test, statistic, p_value, significant, better), null without latency data.
    - C(effect) is the rank-biserial correlation (positive when A is slower), C(negligible) is true when
      the difference is significant but smaller than O(min_latency_effect).
  returned: when both versions have enough requests
  type: dict
versions:
  description: The data compared, per version.
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpuops.cluster.plugins.module_utils.abtest import collect_from_prometheus, run_ab
from ansible_collections.gpuops.cluster.plugins.module_utils.canary_spec import numeric_errors
from ansible_collections.gpuops.cluster.plugins.module_utils.promql import (
    PrometheusError, TemplateError, client_from_params, prometheus_argument_spec, prometheus_errors)
from ansible_collections.gpuops.cluster.plugins.module_utils.stats import StatsError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            prometheus_argument_spec(),
            model=dict(type="str"),
            versions=dict(type="list", elements="str"),
            window=dict(type="str", default="10m"),
            data=dict(type="list", elements="dict"),
            confidence=dict(type="float", default=0.95),
            latency_test=dict(type="str", choices=["welch", "mann-whitney"], default="welch"),
            min_requests=dict(type="int", default=100),
            min_latency_effect=dict(type="float", default=0.1),
        ),
        supports_check_mode=True,
    )
    p = module.params
    errors = numeric_errors(p, {"confidence": "(0,1)", "min_requests": ">=1", "min_latency_effect": "0..1"})
    if p["data"] is None:
        errors += prometheus_errors(p)
        missing = [k for k in ("prometheus_url", "model", "versions") if not p.get(k)]
        if missing:
            errors.append("without data, %s %s required" % (" and ".join(missing),
                                                            "is" if len(missing) == 1 else "are"))
    if errors:
        module.fail_json(msg="; ".join(errors))
    try:
        if p["data"] is not None:
            if len(p["data"]) != 2:
                module.fail_json(msg="data needs exactly two entries (A and B)")
            data = []
            for i, d in enumerate(p["data"]):
                missing = [k for k in ("name", "requests", "errors") if k not in d]
                if missing:
                    module.fail_json(msg="data[%d] lacks %s" % (i, ", ".join(missing)))
                data.append(dict(name=str(d["name"]), requests=int(d["requests"]), errors=int(d["errors"]),
                                 latencies=[float(x) for x in d.get("latencies") or []]))
        else:
            if len(p["versions"]) != 2:
                module.fail_json(msg="versions needs exactly two entries (A and B)")
            prom = client_from_params(p)
            data = collect_from_prometheus(prom, p["model"], p["versions"], p["window"])
        res = run_ab(data, p["confidence"], p["min_requests"], latency_test=p["latency_test"],
                     min_latency_effect=p["min_latency_effect"])
    except (PrometheusError, TemplateError, StatsError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, **res)


if __name__ == "__main__":
    main()
