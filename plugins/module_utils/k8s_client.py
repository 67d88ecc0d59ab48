# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Shared Kubernetes API connection for gpuops.cluster modules.

``K8S_AUTH_ARG_SPEC`` is merged into a module's argument_spec (its documentation comes
from the ``gpuops.cluster.k8s_auth`` doc fragment); ``get_api_client(params)`` turns those
parameters into a ``kubernetes.client.ApiClient`` without touching the library's global
default configuration.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import json
import os
import time
import traceback

from ansible.module_utils.basic import env_fallback, missing_required_lib

try:
    import kubernetes
    from kubernetes.client.rest import ApiException
    HAS_KUBERNETES = True
    KUBERNETES_IMPORT_ERROR = None
except ImportError:  # pragma: no cover - exercised only without the library
    HAS_KUBERNETES = False
    KUBERNETES_IMPORT_ERROR = traceback.format_exc()

    class ApiException(Exception):  # noqa: N818 - mirrors kubernetes.client.rest
        status = None
        reason = None
        body = None


K8S_AUTH_ARG_SPEC = {
    "kubeconfig": {"type": "path", "fallback": (env_fallback, ["K8S_AUTH_KUBECONFIG"])},
    "context": {"type": "str", "fallback": (env_fallback, ["K8S_AUTH_CONTEXT"])},
    "host": {"type": "str", "fallback": (env_fallback, ["K8S_AUTH_HOST"])},
    "api_key": {"type": "str", "no_log": True, "fallback": (env_fallback, ["K8S_AUTH_API_KEY"])},
    "validate_certs": {"type": "bool", "aliases": ["verify_ssl"],
                       "fallback": (env_fallback, ["K8S_AUTH_VERIFY_SSL"])},
    "ca_cert": {"type": "path", "aliases": ["ssl_ca_cert"],
                "fallback": (env_fallback, ["K8S_AUTH_SSL_CA_CERT"])},
    "client_cert": {"type": "path", "aliases": ["cert_file"],
                    "fallback": (env_fallback, ["K8S_AUTH_CERT_FILE"])},
    "client_key": {"type": "path", "aliases": ["key_file"],
                   "fallback": (env_fallback, ["K8S_AUTH_KEY_FILE"])},
    "proxy": {"type": "str", "fallback": (env_fallback, ["K8S_AUTH_PROXY"])},
}

AUTH_PARAM_NAMES = tuple(K8S_AUTH_ARG_SPEC)


class K8sClientError(Exception):
    """The API client could not be configured (bad kubeconfig, missing credentials...)."""


def k8s_auth_argument_spec():
    """A deep copy of the shared auth spec, safe to extend in a module."""
    return copy.deepcopy(K8S_AUTH_ARG_SPEC)


def require_kubernetes(module):
    """Fail the module with Ansible's standard message when the library is missing."""
    if not HAS_KUBERNETES:
        module.fail_json(msg=missing_required_lib("kubernetes"), exception=KUBERNETES_IMPORT_ERROR)


def _env_bool(value):
    if isinstance(value, bool) or value is None:
        return value
    return str(value).strip().lower() not in ("0", "false", "no", "off", "")


def get_api_client(params):
    """Build a ``kubernetes.client.ApiClient`` from module parameters.

    ``params`` is a dict with the K8S_AUTH_ARG_SPEC keys (missing keys fall back to the
    ``K8S_AUTH_*`` environment variables, so unit tests and scripts can call this too).
    Order: explicit host + token/client cert -> no kubeconfig; explicit kubeconfig/context ->
    that file; otherwise in-cluster, then the default kubeconfig.
    """
    if not HAS_KUBERNETES:
        raise K8sClientError(missing_required_lib("kubernetes"))
    env_names = {
        "kubeconfig": "K8S_AUTH_KUBECONFIG", "context": "K8S_AUTH_CONTEXT",
        "host": "K8S_AUTH_HOST", "api_key": "K8S_AUTH_API_KEY",
        "validate_certs": "K8S_AUTH_VERIFY_SSL", "ca_cert": "K8S_AUTH_SSL_CA_CERT",
        "client_cert": "K8S_AUTH_CERT_FILE", "client_key": "K8S_AUTH_KEY_FILE",
        "proxy": "K8S_AUTH_PROXY",
    }
    auth = {}
    for name, env in env_names.items():
        value = params.get(name) if params else None
        if value is None:
            value = os.environ.get(env)
        auth[name] = value
    if auth["validate_certs"] is not None:
        auth["validate_certs"] = _env_bool(auth["validate_certs"])

    cfg = kubernetes.client.Configuration()
    self_sufficient = auth["host"] and (auth["api_key"] or (auth["client_cert"] and auth["client_key"]))
    try:
        if self_sufficient:
            pass
        elif auth["kubeconfig"] or auth["context"]:
            if auth["kubeconfig"] and not os.path.exists(auth["kubeconfig"]):
                raise K8sClientError("kubeconfig %s does not exist" % auth["kubeconfig"])
            kubernetes.config.load_kube_config(config_file=auth["kubeconfig"], context=auth["context"],
                                               client_configuration=cfg)
        else:
            try:
                kubernetes.config.load_incluster_config(client_configuration=cfg)
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config(client_configuration=cfg)
    except K8sClientError:
        raise
    except Exception as exc:  # ConfigException, yaml errors, missing files
        raise K8sClientError("cannot load Kubernetes credentials: %s" % exc)

    if auth["host"]:
        cfg.host = auth["host"].rstrip("/")
    if auth["api_key"]:
        cfg.api_key = {"authorization": "Bearer %s" % auth["api_key"]}
    if auth["validate_certs"] is not None:
        cfg.verify_ssl = auth["validate_certs"]
    if auth["ca_cert"]:
        cfg.ssl_ca_cert = auth["ca_cert"]
    if auth["client_cert"]:
        cfg.cert_file = auth["client_cert"]
    if auth["client_key"]:
        cfg.key_file = auth["client_key"]
    if auth["proxy"]:
        cfg.proxy = auth["proxy"]
    if not cfg.host:
        raise K8sClientError("no API server: set host, kubeconfig or K8S_AUTH_* variables")
    return kubernetes.client.ApiClient(configuration=cfg)


def connection_error_message(exc):
    """A message for a failure to reach the API server (refused, DNS, TLS), or None for other errors."""
    try:
        import urllib3
    except ImportError:  # pragma: no cover
        return None
    if isinstance(exc, urllib3.exceptions.HTTPError):
        reason = getattr(exc, "reason", None) or exc
        return "cannot reach the Kubernetes API server: %s" % reason
    return None


# Answers of an API server that is alive but momentarily cannot serve (throttling, an etcd
# timeout behind a 500/504, a restarting apiserver behind a load balancer): worth another try.
TRANSIENT_STATUSES = (429, 500, 502, 503, 504)


def is_transient(exc):
    """True for errors a retry can cure: HTTP 429/5xx from the API server, a dropped connection or a
    read timeout. Never for 4xx answers (RBAC, validation, not found, conflict), which a retry repeats."""
    if isinstance(exc, ApiException):
        return getattr(exc, "status", None) in TRANSIENT_STATUSES
    try:
        import urllib3
        if isinstance(exc, (urllib3.exceptions.ProtocolError, urllib3.exceptions.TimeoutError,
                            urllib3.exceptions.MaxRetryError)):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, (ConnectionError, TimeoutError))


def retry_transient(fn, attempts=5, base_delay=0.5, max_delay=4.0, sleep=time.sleep, on_retry=None):
    """``fn`` wrapped so that transient API errors (see ``is_transient``) are retried with exponential
    backoff, ``attempts`` calls in all (0.5 + 1 + 2 + 4 s of waits for 5). Other errors, and the last
    transient one, propagate unchanged. ``on_retry(exc, attempt, delay)`` is told about each retry.
    Only for calls that are safe to repeat: reads, and writes that set an absolute state from a fresh read."""
    def wrapper(*args, **kwargs):
        delay = base_delay
        for attempt in range(1, max(1, attempts) + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # pylint: disable=broad-except
                if attempt >= attempts or not is_transient(exc):
                    raise
                if on_retry is not None:
                    on_retry(exc, attempt, delay)
                sleep(delay)
                delay = min(delay * 2, max_delay)
        return None  # pragma: no cover - the loop returns or raises
    return wrapper


def retry_warning(warn):
    """``on_retry`` callback for ``retry_transient`` that reports each retry through ``warn(msg)``
    (``AnsibleModule.warn``), so a retried rollout or split says what the API server answered."""
    def on_retry(exc, attempt, delay):
        detail = api_error_message(exc) if isinstance(exc, ApiException) else str(exc)
        warn("transient Kubernetes API error (attempt %d, retrying in %.1f s): %s" % (attempt, delay, detail))
    return on_retry


def api_error_message(exc):
    """A one-line, human message for an ApiException (status, reason and the API's message)."""
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None) or ""
    detail = ""
    body = getattr(exc, "body", None)
    if body:
        try:
            if isinstance(body, bytes):
                body = body.decode("utf-8", "replace")
            detail = json.loads(body).get("message", "")
        except (ValueError, AttributeError):
            detail = str(body)[:500]
    text = "HTTP %s %s" % (status, reason)
    if detail:
        text += ": %s" % detail
    return text.strip()


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

    Objects are handled as plain JSON dicts and written with the resourceVersion that was read.
    """

    def __init__(self, api_client, namespace, stable=None, canary=None, canary_replicas=1,
                 wait_timeout=300, sleep=None, now=None, max_retries=5):
        import time as _time
        self.apps = kubernetes.client.AppsV1Api(api_client)
        self.namespace = namespace
        self.stable = stable
        self.canary = canary
        self.canary_replicas = canary_replicas
        self.wait_timeout = wait_timeout
        self.sleep = sleep or _time.sleep
        self.now = now or _time.time
        self.max_retries = max_retries

    def read(self, name):
        resp = self.apps.read_namespaced_deployment(name, self.namespace, _preload_content=False)
        return json.loads(resp.data)

    def _replace(self, name, change):
        """Read, apply ``change(obj) -> bool (changed)``, replace; retry on 409."""
        for _attempt in range(self.max_retries + 1):
            obj = self.read(name)
            if not change(obj):
                return obj, False
            try:
                resp = self.apps.replace_namespaced_deployment(name, self.namespace, obj, _preload_content=False)
                return json.loads(resp.data), True
            except ApiException as exc:
                if exc.status != 409:
                    raise
        raise K8sClientError("Deployment %s/%s kept changing: %d write conflicts in a row"
                             % (self.namespace, name, self.max_retries + 1))

    def scale_canary(self, direction):
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
        return self._replace(self.canary, change)[1]

    def promote(self, state):
        """Copy the canary's pod template into the stable Deployment, keeping the stable's own
        template labels (the subsets select on them). Returns the stable template it replaced."""
        canary = self.read(self.canary) if self.canary else None
        if canary is None:
            raise K8sClientError("promotion needs canary_deployment to copy the new version from")
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
        self.wait_available(self.stable)
        return previous or None

    def restore(self, previous):
        def change(obj):
            if obj["spec"]["template"] == previous["template"]:
                return False
            obj["spec"]["template"] = copy.deepcopy(previous["template"])
            return True
        _obj, changed = self._replace(previous.get("deployment") or self.stable, change)
        self.wait_available(previous.get("deployment") or self.stable)
        return {"deployment": previous.get("deployment") or self.stable, "changed": changed}

    def wait_available(self, name):
        deadline = self.now() + self.wait_timeout
        while True:
            obj = self.read(name)
            spec, status = obj.get("spec") or {}, obj.get("status") or {}
            want = spec.get("replicas", 1)
            gen_ok = status.get("observedGeneration", 0) >= (obj["metadata"].get("generation") or 0)
            if gen_ok and status.get("updatedReplicas", 0) >= want and status.get("availableReplicas", 0) >= want \
                    and status.get("replicas", 0) <= want:
                return obj
            if self.now() > deadline:
                raise K8sClientError(
                    "Deployment %s/%s not available after %ss: %s/%s updated, %s available, observedGeneration %s "
                    "of %s" % (self.namespace, name, self.wait_timeout, status.get("updatedReplicas", 0), want,
                               status.get("availableReplicas", 0), status.get("observedGeneration"),
                               obj["metadata"].get("generation")))
            self.sleep(1)
