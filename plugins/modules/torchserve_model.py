#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: torchserve_model
short_description: Register, scale, set as default or unregister a TorchServe model version
version_added: 0.1.0
description:
  - Manages one version of a model through the TorchServe management API, idempotently;
    it describes the version first and only acts when the state differs.
  - Waits until the version's workers are V(READY) (the management API's view; C(/ping) is healthy
    before models load and is never used for readiness).
  - Supports TorchServe's token authorization (on by default since 0.11) with the management key,
    given directly or read from the server's key file.
author:
  - gpuops.cluster contributors (@gpuops)
attributes:
  check_mode:
    support: full
    description: Reads the current state and reports what would change, without calling write APIs.
  diff_mode:
    support: full
    description: Shows the version's workers and the model's default version before and after.
options:
  management_url:
    description: TorchServe management API URL, for example C(http://torchserve.serving:8081).
    type: str
    required: true
  model:
    description: Model name.
    type: str
    required: true
  version:
    description: Model version (the C(--version) given to torch-model-archiver).
    type: str
    required: true
  state:
    description:
      - V(present) registers the version if missing and scales it to O(min_workers)/O(max_workers).
      - V(default) does the same and makes it the model's default version.
      - V(absent) unregisters it. Unregistering the default version while other versions exist is
        refused; make another version the default first.
    type: str
    choices: [present, default, absent]
    default: present
  url:
    description: Model archive to register, a C(.mar) name in the server's model store or an http(s) URL.
    type: str
  min_workers:
    description: Minimum (and initial) number of workers.
    type: int
    default: 1
  max_workers:
    description: Maximum number of workers.
    type: int
  batch_size:
    description: Inference batch size set at registration.
    type: int
  max_batch_delay:
    description: Batching delay in milliseconds set at registration.
    type: int
  response_timeout:
    description: Worker response timeout in seconds set at registration.
    type: int
  wait_timeout:
    description: Seconds to wait for O(min_workers) workers to become READY.
    type: int
    default: 300
  token:
    description: Management key for token authorization.
    type: str
  token_file:
    description: TorchServe key file (C(key_file.json); older C(key_file.txt) also understood) to read the management key from.
    type: path
  timeout:
    description: Seconds for each management API call.
    type: int
    default: 60
"""

EXAMPLES = r"""
- name: Serve classifier 2.0 next to the stable version, two workers
  gpuops.cluster.torchserve_model:
    management_url: http://127.0.0.1:8081
    model: classifier
    version: "2.0"
    url: classifier-2.0.mar
    min_workers: 2
    token_file: /var/lib/torchserve/key_file.json

- name: Promote it to the default version
  gpuops.cluster.torchserve_model:
    management_url: http://127.0.0.1:8081
    model: classifier
    version: "2.0"
    state: default

- name: Retire the old version
  gpuops.cluster.torchserve_model:
    management_url: http://127.0.0.1:8081
    model: classifier
    version: "1.0"
    state: absent
"""

RETURN = r"""
actions:
  description: Management API calls made (or that would be made in check mode).
  returned: always
  type: list
  elements: str
  sample: [register, set_default]
version:
  description: The version after the change (null when absent).
  returned: always
  type: dict
  sample: {version: "2.0", url: classifier-2.0.mar, min_workers: 2, max_workers: 2, ready_workers: 2, workers: 2}
default_version:
  description: The model's default version after the change.
  returned: always
  type: str
  sample: "2.0"
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpuops.cluster.plugins.module_utils.canary_spec import numeric_errors
from ansible_collections.gpuops.cluster.plugins.module_utils.torchserve import (
    TorchServeClient, TorchServeError, plan, read_management_key, summarize)


def run(module, client):
    p = module.params
    model, version = p["model"], p["version"]
    current = client.describe(model, version)
    default = client.default_version(model)
    others = [v.get("modelVersion") for v in client.versions(model) if v.get("modelVersion") != version]
    actions = plan(p["state"], model, version, current, default,
                   dict(url=p["url"], min_workers=p["min_workers"], max_workers=p["max_workers"],
                        other_versions=others))
    before = {"version": summarize(current), "default_version": default}
    if module.check_mode or not actions:
        after_version = summarize(current)
        if module.check_mode and "register" in actions:
            after_version = {"version": version, "url": p["url"], "min_workers": p["min_workers"]}
        if module.check_mode and "unregister" in actions:
            after_version = None
        after_default = version if "set_default" in actions else default
        return actions, before, {"version": after_version, "default_version": after_default}
    for action in actions:
        if action == "register":
            client.register(model, p["url"], initial_workers=p["min_workers"], batch_size=p["batch_size"],
                            max_batch_delay=p["max_batch_delay"], response_timeout=p["response_timeout"])
            if p["max_workers"] is not None:
                client.scale(model, version, p["min_workers"], p["max_workers"])
        elif action == "scale":
            client.scale(model, version, p["min_workers"], p["max_workers"])
        elif action == "set_default":
            client.set_default(model, version)
        elif action == "unregister":
            client.unregister(model, version)
    if p["state"] == "absent":
        desc = None
    else:
        desc = client.wait_ready(model, version, p["min_workers"], p["wait_timeout"]) if p["min_workers"] > 0 \
            else client.describe(model, version)
    return actions, before, {"version": summarize(desc), "default_version": client.default_version(model)}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            management_url=dict(type="str", required=True),
            model=dict(type="str", required=True),
            version=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "default", "absent"], default="present"),
            url=dict(type="str"),
            min_workers=dict(type="int", default=1),
            max_workers=dict(type="int"),
            batch_size=dict(type="int"),
            max_batch_delay=dict(type="int"),
            response_timeout=dict(type="int"),
            wait_timeout=dict(type="int", default=300),
            token=dict(type="str", no_log=True),
            token_file=dict(type="path"),
            timeout=dict(type="int", default=60),
        ),
        mutually_exclusive=[("token", "token_file")],
        supports_check_mode=True,
    )
    p = module.params
    errors = numeric_errors(p, {"min_workers": ">=0", "max_workers": ">=0", "batch_size": ">=1",
                                "max_batch_delay": ">=0", "response_timeout": ">0", "wait_timeout": ">0",
                                "timeout": ">0"})
    if p["max_workers"] is not None and p["max_workers"] < p["min_workers"]:
        errors.append("max_workers (%d) must be at least min_workers (%d)" % (p["max_workers"], p["min_workers"]))
    if errors:
        module.fail_json(msg="; ".join(errors))
    token = p["token"]
    try:
        if p["token_file"]:
            token = read_management_key(p["token_file"])
        client = TorchServeClient(p["management_url"], token=token, timeout=p["timeout"])
        actions, before, after = run(module, client)
    except (TorchServeError, IOError, OSError) as exc:
        module.fail_json(msg=str(exc))
    result = dict(changed=bool(actions), actions=actions, version=after["version"],
                  default_version=after["default_version"])
    if module._diff:
        result["diff"] = dict(before=before, after=after)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
