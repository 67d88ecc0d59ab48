# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Connection options shared by every gpuops.cluster module that queries Prometheus."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    DOCUMENTATION = r"""
options:
  prometheus_url:
    description:
      - Base URL of the Prometheus HTTP API, for example C(http://prometheus.monitoring:9090)
        (C(/api/v1/query) is appended).
    type: str
  prometheus_timeout:
    description:
      - Seconds one query may take in all, from connecting to the last byte of the answer (not one socket
        read), more than 0. When it runs out, the error says whether Prometheus was V(unreachable) (no
        connection) or V(slow) (connected, the answer did not arrive in time).
    type: float
    default: 10
  prometheus_headers:
    description:
      - Extra HTTP headers sent with every query, for example an C(Authorization) header with a
        bearer token for a Prometheus behind an authenticating proxy.
      - The values are treated as secrets and masked in the output.
    type: dict
    default: {}
  prometheus_validate_certs:
    description: Verify the TLS certificate of an C(https) Prometheus.
    type: bool
    default: true
  prometheus_ca_path:
    description: PEM file of the CA that signed the certificate of an C(https) Prometheus (a private CA).
    type: path
"""
