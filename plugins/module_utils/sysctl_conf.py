# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Pure core of the ``sysctl_conf`` module: one sysctl.d file and the live values, in one pass.

The module replaces a loop of ``ansible.posix.sysctl`` calls (one module run per key per host) with
one run per host: it renders the whole file, reads each key under /proc/sys once, and writes only
the keys whose live value differs and that the caller allows to be applied. No Ansible import here:
the unit tests call these functions with a temporary directory as ``proc_root``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:/-]*$")
HEADER = "# Managed by gpuops.cluster (sysctl_conf): local changes are overwritten.\n"


class SysctlError(Exception):
    """An invalid request: names or values the kernel's sysctl syntax cannot carry."""


def key_path(proc_root, name):
    """/proc/sys path of a dotted key. As in sysctl(8), '/' in a key stands for a '.' inside one path
    element (an interface name such as eth0.100): net.ipv4.conf.eth0/100.rp_filter."""
    parts = [p.replace("/", ".") for p in name.split(".")]
    return os.path.join(proc_root, *parts)


def normalize(value):
    """Compare values as the kernel prints them: fields separated by single spaces."""
    return " ".join(str(value).split())


def validate(settings):
    """Names and values that can be written to a sysctl.d file; returns the list of problems."""
    problems = []
    for name, value in settings.items():
        if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name or name.endswith("."):
            problems.append("invalid sysctl name %r" % (name,))
            continue
        if value is None:
            continue
        if isinstance(value, bool):
            problems.append("%s: a boolean is ambiguous, give 0 or 1" % name)
        elif isinstance(value, (dict, list, tuple)):
            problems.append("%s: value must be a string or a number, got %s" % (name, type(value).__name__))
        elif "\n" in str(value) or normalize(value) == "":
            problems.append("%s: empty or multi-line value" % name)
    return problems


def render(settings):
    """The file's content: every key with a value (None drops a key), sorted, one 'key = value' a line."""
    lines = ["%s = %s\n" % (name, normalize(value)) for name, value in sorted(settings.items()) if value is not None]
    return HEADER + "".join(lines)


def read_file(path):
    try:
        with open(path, "r") as fh:
            return fh.read()
    except (IOError, OSError):
        return None


def is_writable(path):
    """What the kernel will let this process write (a read-only /proc/sys mount in a container says no)."""
    return os.access(path, os.W_OK)


def plan(settings, proc_root="/proc/sys", apply_pattern=None, apply_only_writable=False, writable=is_writable):
    """Read the live values and decide, per key, what happens.

    Returns a dict with ``missing`` (keys this kernel does not have), ``apply`` ({key: (current, wanted)}
    for keys to write now), ``in_sync`` (keys already at their value), ``not_applied`` ({key: reason}
    for keys only persisted). A key is applied when it exists, has a value, matches ``apply_pattern``
    (a regex; None = every key) and, with ``apply_only_writable``, is writable here."""
    pattern = re.compile(apply_pattern) if apply_pattern else None
    result = {"missing": [], "apply": {}, "in_sync": [], "not_applied": {}}
    for name in sorted(settings):
        value = settings[name]
        if value is None:
            continue
        path = key_path(proc_root, name)
        if not os.path.exists(path):
            result["missing"].append(name)
            continue
        if pattern is not None and not pattern.search(name):
            result["not_applied"][name] = "not applied here (does not match %s)" % apply_pattern
            continue
        if apply_only_writable and not writable(path):
            result["not_applied"][name] = "not writable here"
            continue
        current = read_file(path)
        if current is None:
            result["not_applied"][name] = "unreadable"
            continue
        if normalize(current) == normalize(value):
            result["in_sync"].append(name)
        else:
            result["apply"][name] = (normalize(current), normalize(value))
    return result


def write_atomic(path, content, mode=0o644):
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, ".%s.gpuops-tmp" % os.path.basename(path))
    with open(tmp, "w") as fh:
        fh.write(content)
    os.chmod(tmp, mode)
    os.rename(tmp, path)


def apply_values(to_apply, proc_root="/proc/sys"):
    """Write each key's value under /proc/sys; returns {key: error} for the writes the kernel refused."""
    errors = {}
    for name, (_current, wanted) in sorted(to_apply.items()):
        try:
            with open(key_path(proc_root, name), "w") as fh:
                fh.write(wanted + "\n")
        except (IOError, OSError) as exc:
            errors[name] = str(exc)
    return errors
