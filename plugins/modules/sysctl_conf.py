#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: sysctl_conf
short_description: Persist a set of sysctls in one sysctl.d file and apply the live values in one pass
version_added: 0.2.0
description:
  - Writes every key of O(settings) to one C(/etc/sysctl.d) file (sorted, C(key = value)) and writes the
    live value under C(/proc/sys) of each key that differs, in a single module run per host.
  - It replaces a loop of M(ansible.posix.sysctl) calls (one module run per key), with the same result and
    one remote Python start instead of one per key.
  - Keys the kernel does not have are reported in RV(missing) and fail the task unless
    O(fail_on_missing=false).
  - Which keys are applied now can be narrowed (O(apply_pattern), O(apply_only_writable)); in a container,
    only the network namespace's keys are the container's own; the others are only persisted.
author:
  - gpuops.cluster contributors (@gpuops)
attributes:
  check_mode:
    support: full
    description: Reports what would be written, writes nothing.
  diff_mode:
    support: full
    description: The file's content before and after, and each live value that would change.
options:
  settings:
    description:
      - Keys (dotted, as in sysctl(8); C(/) inside a key stands for a C(.) in an interface name) and
        their values. A value of V(null) drops the key from the file (the live value is left alone).
    type: dict
    required: true
  path:
    description: The sysctl.d file this module owns (its whole content).
    type: path
    required: true
  apply:
    description: Write the live values now (V(false) only persists them for the next boot).
    type: bool
    default: true
  apply_pattern:
    description: Only keys matching this regular expression are applied now (for example V(^net\\.)).
    type: str
  apply_only_writable:
    description: Only keys writable here are applied now; the others are only persisted.
    type: bool
    default: false
  fail_on_missing:
    description: Fail when a key does not exist on this kernel (a module to load, a typo).
    type: bool
    default: true
"""

EXAMPLES = r"""
- name: Kubernetes networking sysctls, persisted and applied
  gpuops.cluster.sysctl_conf:
    path: /etc/sysctl.d/90-gpuops.conf
    settings:
      net.ipv4.ip_forward: 1
      net.bridge.bridge-nf-call-iptables: 1
      vm.max_map_count: 262144

- name: In a container, apply only the network namespace's keys
  gpuops.cluster.sysctl_conf:
    path: /etc/sysctl.d/90-gpuops.conf
    settings: "{{ my_sysctls }}"
    apply_pattern: '^net\.'
    apply_only_writable: true
    fail_on_missing: false
"""

RETURN = r"""
file_changed:
  description: Whether the file's content changed (or would).
  returned: always
  type: bool
applied:
  description: Keys whose live value was (or would be) written, with the value before and after.
  returned: always
  type: dict
  sample: {"net.ipv4.ip_forward": {"before": "0", "after": "1"}}
missing:
  description: Keys this kernel does not have.
  returned: always
  type: list
  elements: str
not_applied:
  description: Keys only persisted, with the reason.
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpuops.cluster.plugins.module_utils import sysctl_conf as core


def main():
    module = AnsibleModule(
        argument_spec=dict(
            settings=dict(type="dict", required=True),
            path=dict(type="path", required=True),
            apply=dict(type="bool", default=True),
            apply_pattern=dict(type="str"),
            apply_only_writable=dict(type="bool", default=False),
            fail_on_missing=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    p = module.params
    problems = core.validate(p["settings"])
    if problems:
        module.fail_json(msg="Fix these sysctl settings: " + "; ".join(problems))

    wanted = core.render(p["settings"])
    before = core.read_file(p["path"])
    file_changed = before != wanted
    plan = core.plan(p["settings"], apply_pattern=p["apply_pattern"],
                     apply_only_writable=p["apply_only_writable"])
    to_apply = plan["apply"] if p["apply"] else {}
    result = dict(
        changed=file_changed or bool(to_apply),
        file_changed=file_changed,
        applied=dict((k, {"before": v[0], "after": v[1]}) for k, v in to_apply.items()),
        missing=plan["missing"],
        not_applied=plan["not_applied"] if p["apply"] else dict((k, "apply=false") for k in p["settings"]),
    )
    if module._diff:
        live_before = "".join("%s = %s\n" % (k, v[0]) for k, v in sorted(to_apply.items()))
        live_after = "".join("%s = %s\n" % (k, v[1]) for k, v in sorted(to_apply.items()))
        result["diff"] = [
            dict(before_header=p["path"], after_header=p["path"], before=before or "", after=wanted),
            dict(before_header="/proc/sys (live)", after_header="/proc/sys (live)", before=live_before,
                 after=live_after),
        ]
    if plan["missing"] and p["fail_on_missing"]:
        module.fail_json(msg="These sysctls do not exist on this kernel: %s. Load the module that provides them "
                         "(net.bridge.* needs br_netfilter) or drop them from the settings (value null)."
                         % ", ".join(plan["missing"]), **result)
    if module.check_mode:
        module.exit_json(**result)
    if file_changed:
        try:
            core.write_atomic(p["path"], wanted)
        except (IOError, OSError) as exc:
            module.fail_json(msg="Cannot write %s: %s" % (p["path"], exc), **result)
    errors = core.apply_values(to_apply)
    if errors:
        module.fail_json(msg="The kernel refused these values: %s" % "; ".join(
            "%s (%s)" % (k, v) for k, v in sorted(errors.items())), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
