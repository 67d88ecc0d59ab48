# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Kubernetes objects as the canary modules handle them: custom resources and Deployments.

Split by job:

- ``k8s_connection``: options -> ``ApiClient`` (``K8S_AUTH_ARG_SPEC``, ``get_api_client``);
- ``k8s_errors``: transient or not, retries with backoff, the one error path of every module;
- ``k8s_readiness``: the one rule for "this Deployment is ready";
- this file: ``CustomObjects`` and ``DeploymentOps`` built on them.

The names of the first two are re-exported here, so ``from ...k8s_client import get_api_client``
keeps working.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import json
import time

from ansible_collections.gpuops.cluster.plugins.module_utils.k8s_connection import (  # noqa: F401 (re-exported)
    AUTH_PARAM_NAMES, DEFAULT_REQUEST_TIMEOUT, HAS_KUBERNETES, K8S_AUTH_ARG_SPEC, KUBERNETES_IMPORT_ERROR, ApiException, K8sClientError,
    get_api_client, k8s_auth_argument_spec, require_kubernetes)
from ansible_collections.gpuops.cluster.plugins.module_utils.k8s_errors import (  # noqa: F401 (re-exported)
    TRANSIENT_STATUSES, Backoff, api_error_message, connection_error_message, fail_on_k8s_error, is_transient,
    k8s_error_message, retry_transient, retry_warning)
from ansible_collections.gpuops.cluster.plugins.module_utils.k8s_readiness import deployment_readiness

__all__ = [
    # k8s_connection
    "AUTH_PARAM_NAMES", "DEFAULT_REQUEST_TIMEOUT", "HAS_KUBERNETES", "K8S_AUTH_ARG_SPEC", "KUBERNETES_IMPORT_ERROR", "ApiException",
    "K8sClientError", "get_api_client", "k8s_auth_argument_spec", "require_kubernetes",
    # k8s_errors
    "TRANSIENT_STATUSES", "Backoff", "api_error_message", "connection_error_message", "fail_on_k8s_error",
    "is_transient", "k8s_error_message", "retry_transient", "retry_warning",
    # this file
    "CustomObjects", "DeploymentOps",
]

try:
    import kubernetes
except ImportError:  # pragma: no cover - k8s_connection reports the missing library
    kubernetes = None


class CustomObjects(object):
    """Thin helpers over CustomObjectsApi for namespaced custom resources (Istio & co.)."""

    def __init__(self, api_client):
        self.api = kubernetes.client.CustomObjectsApi(api_client)

    def get(self, group, version, plural, namespace, name):
        """The object, or None when it does not exist (404)."""
        try:
            return self.api.get_namespaced_custom_object(group, version, namespace, plural, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, group, version, plural, namespace):
        return self.api.list_namespaced_custom_object(group, version, namespace, plural).get("items", [])

    def replace(self, group, version, plural, namespace, name, body, dry_run=False):
        kwargs = {"dry_run": "All"} if dry_run else {}
        return self.api.replace_namespaced_custom_object(group, version, namespace, plural, name, body, **kwargs)


class DeploymentOps(object):
    """What a canary rollout does to Deployments: scale the canary, promote/restore the stable pod template.

    Objects are handled as plain JSON dicts and written with the resourceVersion that was read; a write
    conflict (HTTP 409) re-reads and retries after a jittered backoff, at most ``max_retries`` times
    (None: no limit) and within ``retry_timeout`` seconds.
    """

    def __init__(self, api_client, namespace, stable=None, canary=None, canary_replicas=1,
                 wait_timeout=300, sleep=None, now=None, max_retries=5, retry_timeout=30.0):
        self.apps = kubernetes.client.AppsV1Api(api_client)
        self.namespace = namespace
        self.stable = stable
        self.canary = canary
        self.canary_replicas = canary_replicas
        self.wait_timeout = wait_timeout
        self.sleep = sleep or time.sleep
        self.now = now or time.time
        self.max_retries = max_retries
        self.retry_timeout = retry_timeout

    def read(self, name):
        resp = self.apps.read_namespaced_deployment(name, self.namespace, _preload_content=False)
        return json.loads(resp.data)

    def _replace(self, name, change):
        """Read, apply ``change(obj) -> bool (changed)``, replace; retry on 409 with backoff."""
        backoff = Backoff(0.1, 2.0, tries=None if self.max_retries is None else self.max_retries + 1,
                          timeout=self.retry_timeout, jitter=True, now=self.now)
        conflicts = 0
        while True:
            obj = self.read(name)
            if not change(obj):
                return obj, False
            try:
                resp = self.apps.replace_namespaced_deployment(name, self.namespace, obj, _preload_content=False)
                return json.loads(resp.data), True
            except ApiException as exc:
                if exc.status != 409:
                    raise
                conflicts += 1
            delay = backoff.next_delay()
            if delay is None:
                raise K8sClientError("Deployment %s/%s kept changing: %d write conflicts (HTTP 409) in %.1f s"
                                     % (self.namespace, name, conflicts, backoff.elapsed()))
            self.sleep(delay)

    def scale_canary(self, direction):
        """Scale the canary up (to ``canary_replicas`` when at 0) or down to 0. Scaling down a canary
        Deployment that no longer exists is nothing to do: a rollback must never stop on it."""
        want_up = direction == "up"

        def change(obj):
            cur = obj["spec"].get("replicas", 1)
            if want_up and cur == 0:
                obj["spec"]["replicas"] = self.canary_replicas
                return True
            if not want_up and cur != 0:
                obj["spec"]["replicas"] = 0
                return True
            return False
        try:
            return self._replace(self.canary, change)[1]
        except ApiException as exc:
            if exc.status == 404 and not want_up:
                return False
            if exc.status == 404:
                raise K8sClientError("canary Deployment %s/%s not found" % (self.namespace, self.canary))
            raise

    def canary_status(self):
        """Readiness of the canary Deployment (``k8s_readiness``), scaled to 0 counting as not ready;
        a missing Deployment is not ready either."""
        try:
            obj = self.read(self.canary)
        except ApiException as exc:
            if exc.status == 404:
                return {"ready": False, "failed": True, "available": 0,
                        "message": "canary Deployment %s/%s not found" % (self.namespace, self.canary)}
            raise
        return deployment_readiness(obj, require_running=True)

    def promote(self, state=None):
        """Copy the canary's pod template into the stable Deployment, keeping the stable's own
        template labels (the subsets select on them). Returns the stable template it replaced
        (None when it already runs the canary's template). Does not wait: see ``wait_stable``."""
        if not self.canary:
            raise K8sClientError("promotion needs canary_deployment to copy the new version from")
        canary = self.read(self.canary)
        previous = {}

        def change(obj):
            old = obj["spec"]["template"]
            new = copy.deepcopy(canary["spec"]["template"])
            new.setdefault("metadata", {})["labels"] = dict((old.get("metadata") or {}).get("labels") or {})
            if new == old:
                return False
            previous["deployment"] = self.stable
            previous["template"] = copy.deepcopy(old)
            obj["spec"]["template"] = new
            return True
        self._replace(self.stable, change)
        return previous or None

    def wait_stable(self):
        return self.wait_available(self.stable)

    def restore(self, previous):
        name = previous.get("deployment") or self.stable

        def change(obj):
            if obj["spec"]["template"] == previous["template"]:
                return False
            obj["spec"]["template"] = copy.deepcopy(previous["template"])
            return True
        _obj, changed = self._replace(name, change)
        self.wait_available(name)
        return {"deployment": name, "changed": changed}

    def wait_available(self, name):
        """Wait until ``deployment_readiness`` says ready; K8sClientError after ``wait_timeout`` seconds
        or at once when the Deployment exceeded its progress deadline."""
        deadline = self.now() + self.wait_timeout
        while True:
            obj = self.read(name)
            ready = deployment_readiness(obj)
            if ready["ready"]:
                return obj
            if ready["failed"]:
                raise K8sClientError(ready["message"])
            if self.now() > deadline:
                raise K8sClientError("not available after %ss: %s" % (self.wait_timeout, ready["message"]))
            self.sleep(1)
