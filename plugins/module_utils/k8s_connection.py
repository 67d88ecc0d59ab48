# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Kubernetes API connection of gpuops.cluster modules (one job: from options to an ApiClient).

``K8S_AUTH_ARG_SPEC`` is merged into a module's argument_spec (its documentation comes
from the ``gpuops.cluster.k8s_auth`` doc fragment); ``get_api_client(params)`` turns those
parameters into a ``kubernetes.client.ApiClient`` without touching the library's global
default configuration. Errors and retries: ``k8s_errors``; Deployment readiness: ``k8s_readiness``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import os
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


__all__ = ["AUTH_PARAM_NAMES", "DEFAULT_REQUEST_TIMEOUT", "HAS_KUBERNETES", "K8S_AUTH_ARG_SPEC",
           "KUBERNETES_IMPORT_ERROR", "ApiException", "K8sClientError", "get_api_client", "k8s_auth_argument_spec",
           "require_kubernetes"]

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
    "request_timeout": {"type": "float", "fallback": (env_fallback, ["K8S_AUTH_REQUEST_TIMEOUT"])},
}

# The bound on one API request (connect and each read) when the options give none. The client
# library's own default is no bound: a request to an API server that stops answering mid-way (a
# control plane lost while a rollout waits) would wait forever.
DEFAULT_REQUEST_TIMEOUT = 30.0

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


if HAS_KUBERNETES:
    class BoundedApiClient(kubernetes.client.ApiClient):
        """An ``ApiClient`` whose every request has a timeout: ``request_timeout`` seconds to connect
        and to each read, unless the call passes its own ``_request_timeout``. A request that times out raises urllib3's
        ``TimeoutError``, which ``k8s_errors.is_transient`` counts as transient."""

        def __init__(self, configuration=None, request_timeout=DEFAULT_REQUEST_TIMEOUT):
            super(BoundedApiClient, self).__init__(configuration=configuration)
            self.request_timeout = request_timeout

        def request(self, method, url, *args, **kwargs):
            # The library takes an int (a total) or a (connect, read) pair and silently ignores a
            # float: a float becomes the pair, so 0.5 or 30.0 bound the request as an int would.
            timeout = kwargs.get("_request_timeout")
            if timeout is None:
                timeout = self.request_timeout
            if isinstance(timeout, float):
                timeout = (timeout, timeout)
            kwargs["_request_timeout"] = timeout
            return super(BoundedApiClient, self).request(method, url, *args, **kwargs)


def _request_timeout(value):
    """The ``request_timeout`` option as a positive float (K8sClientError otherwise)."""
    if value is None or value == "":
        return DEFAULT_REQUEST_TIMEOUT
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1
    if seconds <= 0:
        raise K8sClientError("request_timeout must be a number of seconds above 0, got %r" % (value,))
    return seconds


def _env_bool(value):
    if isinstance(value, bool) or value is None:
        return value
    return str(value).strip().lower() not in ("0", "false", "no", "off", "")


def get_api_client(params):
    """Build a ``kubernetes.client.ApiClient`` from module parameters.

    ``params`` is a dict with the K8S_AUTH_ARG_SPEC keys (missing keys fall back to the
    ``K8S_AUTH_*`` environment variables, so unit tests and scripts can call this too).
    Every request of the returned client is bounded by ``request_timeout`` seconds (default 30).
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
        "proxy": "K8S_AUTH_PROXY", "request_timeout": "K8S_AUTH_REQUEST_TIMEOUT",
    }
    auth = {}
    for name, env in env_names.items():
        value = params.get(name) if params else None
        if value is None:
            value = os.environ.get(env)
        auth[name] = value
    if auth["validate_certs"] is not None:
        auth["validate_certs"] = _env_bool(auth["validate_certs"])
    request_timeout = _request_timeout(auth["request_timeout"])

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
    return BoundedApiClient(configuration=cfg, request_timeout=request_timeout)
