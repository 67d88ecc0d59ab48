# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Connection options shared by every gpuops.cluster module that talks to the Kubernetes API."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    DOCUMENTATION = r"""
options:
  kubeconfig:
    description:
      - Path to a kubeconfig file.
      - When neither O(kubeconfig) nor O(host) is given, the in-cluster service account is tried
        first, then C(KUBECONFIG) / C(~/.kube/config).
      - Can also be set with the E(K8S_AUTH_KUBECONFIG) environment variable.
    type: path
  context:
    description:
      - Name of a context in the kubeconfig file. Defaults to the kubeconfig's current context.
      - Can also be set with the E(K8S_AUTH_CONTEXT) environment variable.
    type: str
  host:
    description:
      - URL of the Kubernetes API server, for example C(https://10.0.0.10:6443).
      - Overrides the server of the kubeconfig. With O(api_key) or O(client_cert)/O(client_key)
        no kubeconfig is read at all.
      - Can also be set with the E(K8S_AUTH_HOST) environment variable.
    type: str
  api_key:
    description:
      - Bearer token used to authenticate, for example a ServiceAccount token.
      - Can also be set with the E(K8S_AUTH_API_KEY) environment variable.
    type: str
  validate_certs:
    description:
      - Whether to verify the API server's TLS certificate.
      - Can also be set with the E(K8S_AUTH_VERIFY_SSL) environment variable.
      - When not set, the kubeconfig's setting (or V(true)) applies.
    type: bool
    aliases: [verify_ssl]
  ca_cert:
    description:
      - Path to the CA bundle that signed the API server's certificate (full chain).
      - Can also be set with the E(K8S_AUTH_SSL_CA_CERT) environment variable.
    type: path
    aliases: [ssl_ca_cert]
  client_cert:
    description:
      - Path to a client certificate used to authenticate.
      - Can also be set with the E(K8S_AUTH_CERT_FILE) environment variable.
    type: path
    aliases: [cert_file]
  client_key:
    description:
      - Path to the private key of O(client_cert).
      - Can also be set with the E(K8S_AUTH_KEY_FILE) environment variable.
    type: path
    aliases: [key_file]
  proxy:
    description:
      - URL of an HTTP proxy for the API connection. Proxy environment variables such as
        E(HTTPS_PROXY) are not used.
      - Can also be set with the E(K8S_AUTH_PROXY) environment variable.
    type: str
  request_timeout:
    description:
      - Seconds one API request may take to connect, and to each read of its answer, before it fails
        as a transient error (retried like an HTTP 503, within the module's retry budget). The
        Kubernetes client first retries a timed-out request 3 times itself.
      - When not set, 30 seconds. The Kubernetes client's own default is no limit, so a request to an
        API server that stopped answering would wait forever.
      - Can also be set with the E(K8S_AUTH_REQUEST_TIMEOUT) environment variable.
    type: float
requirements:
  - kubernetes (Python library) >= 24.2.0
notes:
  - The same environment variables as M(kubernetes.core.k8s) are honoured, so existing
    C(K8S_AUTH_*) settings and C(module_defaults) carry over.
"""
