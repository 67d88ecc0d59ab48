# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Pure logic of the Secrets encryption-at-rest roles (kubeadm_control_plane, encryption_key_rotation); no I/O.

``encryption_stale_keys(kvs, provider, key_name)``
    The etcd keys (decoded, e.g. ``/registry/secrets/default/db``) of ``kvs`` (the ``kvs`` list of an
    etcd v3 ``/v3/kv/range`` answer: base64 ``key`` and ``value``) whose stored value is not encrypted
    with the key ``key_name`` of ``provider`` (``secretbox``, ``aescbc``, ``aesgcm``): the value does not
    start with ``k8s:enc:<provider>:v1:<key_name>:``. A value that is not valid base64 counts as stale.
    Sorted, each once.

``encryption_next_key_name(current)``
    The name of the key that replaces ``current`` in a rotation: ``gpuops-N`` becomes ``gpuops-N+1``;
    any other name gets ``-2`` appended (``site-key`` -> ``site-key-2``). Key names must differ: the
    API server finds the key of a stored value by the name in its prefix.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import binascii
import re


def _b64(text):
    try:
        return base64.b64decode(text or "", validate=True)
    except (binascii.Error, ValueError, TypeError):
        return None


def encryption_stale_keys(kvs, provider, key_name):
    prefix = ("k8s:enc:%s:v1:%s:" % (provider, key_name)).encode()
    stale = set()
    for kv in kvs or []:
        key = _b64(kv.get("key"))
        value = _b64(kv.get("value"))
        name = key.decode("utf-8", "replace") if key is not None else repr(kv.get("key"))
        if value is None or not value.startswith(prefix):
            stale.add(name)
    return sorted(stale)


def encryption_next_key_name(current):
    current = str(current or "").strip()
    m = re.match(r"^(.*)-(\d+)$", current)
    if m:
        return "%s-%d" % (m.group(1), int(m.group(2)) + 1)
    return (current or "gpuops") + "-2"


class FilterModule(object):
    """Filters of the Secrets encryption-at-rest roles."""

    def filters(self):
        return {
            "encryption_stale_keys": encryption_stale_keys,
            "encryption_next_key_name": encryption_next_key_name,
        }
