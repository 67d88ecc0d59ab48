#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: traffic_split
short_description: Set the weights between subsets of an Istio VirtualService http route
version_added: "0.1.0"
description:
  - Sets the traffic weights of one http route of an Istio C(VirtualService) between subsets of
    its C(DestinationRule), for example C(stable=90, canary=10).
  - Validates the request before writing, weights are integers from 0 to 100 adding up to 100 and
    every subset must be defined by a C(DestinationRule) for the route's host.
  - Writes with the C(resourceVersion) it read (optimistic concurrency); on an HTTP 409 conflict it
    re-reads the object and retries, at most O(max_retries) times.
  - Refuses a C(VirtualService) owned or annotated by Flagger or Argo Rollouts, which would revert
    the change, unless O(force=true).
  - Destinations of the route that are not in O(weights) keep their entry with weight 0; subsets in
    O(weights) that the route does not list yet are appended with the route's host.
  - A destination that carries traffic must be named in O(weights) (with V(0) to drain it), or the change
    is refused, unless O(zero_unnamed=true). So a typo in a subset name never silently takes traffic away.
author:
  - gpuops.cluster contributors (@gpuops)
extends_documentation_fragment:
  - gpuops.cluster.k8s_auth
attributes:
  check_mode:
    support: full
    description: Check mode sends the replace as a server-side dry run (C(dryRun=All)), so admission and RBAC are checked.
  diff_mode:
    support: full
    description: The diff shows the weights of the route before and after.
options:
  name:
    description: Name of the C(VirtualService).
    type: str
    required: true
  namespace:
    description: Namespace of the C(VirtualService) and its C(DestinationRule)s.
    type: str
    required: true
  route:
    description:
      - The http route to change, by its C(name) or by its index in C(spec.http) (as a string of digits).
      - May be omitted when the C(VirtualService) has a single http route.
    type: str
  weights:
    description:
      - Mapping of subset name to integer weight (0-100); the weights must add up to 100.
    type: dict
    required: true
  force:
    description:
      - Change a C(VirtualService) even though Flagger or Argo Rollouts manages it.
    type: bool
    default: false
  zero_unnamed:
    description:
      - Set destinations of the route that O(weights) does not name to 0 even when they carry traffic now.
      - Without it such a request fails and names those destinations.
    type: bool
    default: false
  max_retries:
    description:
      - Most retries after a write conflict (HTTP 409) and, separately, after a transient API error (HTTP 429,
        500, 502, 503, 504, a dropped connection or a read timeout), 0 or more. Retries wait an exponential
        backoff with jitter (conflicts from 0.05 s, transient errors from 0.5 s, doubling), a warning per
        transient retry, and stop at O(retry_timeout) whatever this count.
      - Every try re-reads the C(VirtualService) and writes an absolute state with its resourceVersion,
        so a retry never applies a change twice. Other 4xx answers (RBAC, validation) are never retried.
    type: int
    default: 5
  retry_timeout:
    description: Seconds after which no further retry starts (see O(max_retries)), more than 0.
    type: float
    default: 30
  api_version:
    description: Version of the C(networking.istio.io) API to use.
    type: str
    default: v1
    choices: [v1, v1beta1, v1alpha3]
"""

EXAMPLES = r"""
- name: Send 10% of the traffic to the canary model version
  gpuops.cluster.traffic_split:
    namespace: serving
    name: resnet
    route: primary
    weights:
      stable: 90
      canary: 10

- name: Everything back to stable, with a token of a restricted ServiceAccount
  gpuops.cluster.traffic_split:
    host: https://10.0.0.10:6443
    api_key: "{{ canary_sa_token }}"
    ca_cert: /etc/kubernetes/pki/ca.crt
    namespace: serving
    name: resnet
    weights: {stable: 100, canary: 0}
"""

RETURN = r"""
previous_weights:
  description: Weights of the route before the change, by subset.
  returned: success
  type: dict
  sample: {stable: 100, canary: 0}
weights:
  description: Weights of the route after the change (or that the change would set in check mode).
  returned: success
  type: dict
  sample: {stable: 90, canary: 10}
route:
  description: Name (or C(#index) when unnamed) of the http route that was changed.
  returned: success
  type: str
  sample: primary
host:
  description: Destination host of the route.
  returned: success
  type: str
  sample: resnet.serving.svc.cluster.local
conflicts:
  description: Number of HTTP 409 write conflicts that were retried.
  returned: success
  type: int
  sample: 0
resource_version:
  description: C(resourceVersion) of the written object (unchanged when nothing was written).
  returned: success
  type: str
  sample: "48213"
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gpuops.cluster.plugins.module_utils.canary_spec import numeric_errors
from ansible_collections.gpuops.cluster.plugins.module_utils.k8s_connection import (
    get_api_client, k8s_auth_argument_spec, require_kubernetes)
from ansible_collections.gpuops.cluster.plugins.module_utils.k8s_errors import fail_on_k8s_error, retry_warning
from ansible_collections.gpuops.cluster.plugins.module_utils.traffic import (
    IstioRoutes, TrafficError, set_traffic_retrying)


def main():
    argument_spec = k8s_auth_argument_spec()
    argument_spec.update(
        name=dict(type="str", required=True),
        namespace=dict(type="str", required=True),
        route=dict(type="str"),
        weights=dict(type="dict", required=True),
        force=dict(type="bool", default=False),
        zero_unnamed=dict(type="bool", default=False),
        max_retries=dict(type="int", default=5),
        retry_timeout=dict(type="float", default=30),
        api_version=dict(type="str", default="v1", choices=["v1", "v1beta1", "v1alpha3"]),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    require_kubernetes(module)
    p = module.params
    errors = numeric_errors(p, {"max_retries": ">=0", "retry_timeout": ">0"})
    if errors:
        module.fail_json(msg="; ".join(errors))
    try:
        routes = IstioRoutes(get_api_client(p), api_version=p["api_version"])
        res = set_traffic_retrying(routes, p["namespace"], p["name"], p["weights"], route=p["route"],
                                   force=p["force"], dry_run=module.check_mode, max_retries=p["max_retries"],
                                   transient_retries=p["max_retries"], on_retry=retry_warning(module.warn),
                                   zero_unnamed=p["zero_unnamed"], retry_timeout=p["retry_timeout"])
    except TrafficError as exc:
        module.fail_json(msg=str(exc))
    except Exception as exc:  # pylint: disable=broad-except
        fail_on_k8s_error(module, exc, what="VirtualService %s/%s" % (p["namespace"], p["name"]))

    obj = res.get("object") or {}
    result = dict(
        changed=res["changed"],
        previous_weights=res["before"],
        weights=res["after"],
        route=res["route_name"] or "#%d" % res["route_index"],
        host=res["host"],
        conflicts=res["conflicts"],
        resource_version=(obj.get("metadata") or {}).get("resourceVersion"),
    )
    if module._diff:
        result["diff"] = dict(before={"weights": res["before"]}, after={"weights": res["after"]},
                              before_header="%s/%s route %s" % (p["namespace"], p["name"], result["route"]),
                              after_header="%s/%s route %s" % (p["namespace"], p["name"], result["route"]))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
