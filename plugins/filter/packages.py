# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Which wanted Debian packages a node still lacks, read from one ``dpkg-query`` call; no I/O.

The node roles (os_baseline, container_runtime, kubernetes_packages) run ``apt`` only for what is
missing: an ``apt`` task that finds nothing to do still loads the apt cache (seconds per node, the
slowest tasks of a converged site run). Each role runs the command ``dpkg_query_argv`` builds (rc 1
when dpkg has never heard of one of the packages) and passes its output to the readers below.

``dpkg_query_argv(names)``
    ``dpkg-query --show --showformat=DPKG_QUERY_FORMAT NAME...``: per package its name, the
    selection and status letters (``${db:Status-Abbrev}``) and the installed version, tab-separated.

``dpkg_installed(stdout)``
    The names dpkg reports installed (status letter ``i``: ``ii`` or, held, ``hi``), in output order.
``dpkg_missing(stdout, wanted)``
    The entries of ``wanted`` not satisfied, in their order. An entry is an apt spec: ``name`` (any
    installed version) or ``name=VERSION`` where VERSION may hold shell wildcards, as apt takes it
    (``kubeadm=1.36.3-*``): satisfied only when that version is the installed one.
``dpkg_held(stdout)``
    The names whose selection is ``hold`` (``apt upgrade`` leaves them alone).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import fnmatch

DPKG_QUERY_FORMAT = "${Package}\t${db:Status-Abbrev}\t${Version}\n"


def _parse(stdout):
    """name -> (selection letter, status letter, version); lines that are not ours are ignored."""
    out = {}
    for line in (stdout or "").splitlines():
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0] or len(fields[1]) < 2:
            continue
        out[fields[0]] = (fields[1][0], fields[1][1], fields[2].strip() if len(fields) > 2 else "")
    return out


def dpkg_query_argv(names):
    return ["dpkg-query", "--show", "--showformat=" + DPKG_QUERY_FORMAT] + [str(n) for n in names or []]


def dpkg_installed(stdout):
    return [name for name, (_want, status, _version) in _parse(stdout).items() if status == "i"]


def dpkg_missing(stdout, wanted):
    found = _parse(stdout)
    missing = []
    for spec in wanted or []:
        name, _sep, version = str(spec).partition("=")
        want, status, installed = found.get(name, ("", "", ""))
        if status != "i" or (version and not fnmatch.fnmatchcase(installed, version)):
            missing.append(spec)
    return missing


def dpkg_held(stdout):
    return [name for name, (want, _status, _version) in _parse(stdout).items() if want == "h"]


class FilterModule(object):
    """dpkg-query readers of the node roles."""

    def filters(self):
        return {"dpkg_query_argv": dpkg_query_argv, "dpkg_installed": dpkg_installed,
                "dpkg_missing": dpkg_missing, "dpkg_held": dpkg_held}
