# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""PromQL templates, safe rendering, and a minimal Prometheus HTTP API client.

Templates use ``{{ name }}`` placeholders. Rendering is a plain substitution,
not Jinja: unknown placeholders are an error, and values substituted into label
matchers are checked so a variable cannot break out of its quotes.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import math
import re
import socket
import ssl
import threading

try:  # Python 3
    from http.client import HTTPConnection, HTTPSConnection
    from urllib.parse import urlencode, urlsplit
except ImportError:  # pragma: no cover
    from httplib import HTTPConnection, HTTPSConnection  # type: ignore
    from urllib import urlencode  # type: ignore
    from urlparse import urlsplit  # type: ignore

PLACEHOLDER = re.compile(r"{{\s*([A-Za-z_][A-Za-z0-9_]*)\s*}}")
# a value is inserted inside "..." of a label matcher or as a range: no quotes,
# backslashes, braces or newlines.
SAFE_VALUE = re.compile(r'^[^"\\{}\n\r]*$')
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")

# Istio's standard metrics exactly as Flagger's istio observer queries them
# (fluxcd/flagger pkg/metrics/observers/istio.go).
ISTIO_SUCCESS_RATE = (
    'sum(rate(istio_requests_total{reporter="destination",'
    'destination_workload_namespace="{{ namespace }}",destination_workload=~"{{ target }}",'
    'response_code!~"5.*"}[{{ interval }}])) / sum(rate(istio_requests_total{reporter="destination",'
    'destination_workload_namespace="{{ namespace }}",destination_workload=~"{{ target }}"}'
    '[{{ interval }}])) * 100'
)
ISTIO_DURATION = (
    'histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket{reporter="destination",'
    'destination_workload_namespace="{{ namespace }}",destination_workload=~"{{ target }}"}'
    '[{{ interval }}])) by (le))'
)
ISTIO_VOLUME = (
    'sum(increase(istio_requests_total{reporter="destination",'
    'destination_workload_namespace="{{ namespace }}",destination_workload=~"{{ target }}"}[{{ interval }}]))'
)

# Per-version metrics emitted by the collection's TorchServe handler (TorchServe itself has
# no per-version error counter). Series and labels: see docs/gates.md.
TS_REQUESTS = 'gpuops_requests_total{model_name="{{ model }}",model_version="{{ version }}"}'
TS_ERRORS = 'gpuops_errors_total{model_name="{{ model }}",model_version="{{ version }}"}'
TS_LATENCY_BUCKET = 'gpuops_latency_seconds_bucket{model_name="{{ model }}",model_version="{{ version }}"}'

TORCHSERVE_SUCCESS_RATE = (
    '(1 - (sum(increase(' + TS_ERRORS + '[{{ interval }}])) or vector(0)) / sum(increase(' + TS_REQUESTS
    + '[{{ interval }}]))) * 100'
)
TORCHSERVE_ERROR_RATE = (
    '(sum(increase(' + TS_ERRORS + '[{{ interval }}])) or vector(0)) / sum(increase(' + TS_REQUESTS
    + '[{{ interval }}])) * 100'
)
# the handler's histogram is in seconds; the gate works in milliseconds like Flagger's request-duration
TORCHSERVE_LATENCY_P99 = (
    'histogram_quantile(0.99, sum(rate(' + TS_LATENCY_BUCKET + '[{{ interval }}])) by (le)) * 1000'
)
TORCHSERVE_VOLUME = 'sum(increase(' + TS_REQUESTS + '[{{ interval }}]))'

# name -> (query, request-volume query used for min_request_volume)
BUILTIN_TEMPLATES = {
    "request-success-rate": (ISTIO_SUCCESS_RATE, ISTIO_VOLUME),
    "request-duration": (ISTIO_DURATION, ISTIO_VOLUME),
    "torchserve-success-rate": (TORCHSERVE_SUCCESS_RATE, TORCHSERVE_VOLUME),
    "torchserve-error-rate": (TORCHSERVE_ERROR_RATE, TORCHSERVE_VOLUME),
    "torchserve-latency-p99": (TORCHSERVE_LATENCY_P99, TORCHSERVE_VOLUME),
}


class TemplateError(ValueError):
    """A template names a variable nobody gave, or a value is unsafe."""


class PrometheusError(RuntimeError):
    """Prometheus could not be reached or answered with an error."""


class PrometheusUnreachable(PrometheusError):
    """No connection to Prometheus (refused, no route, DNS, TLS handshake, connect timeout)."""


class PrometheusSlow(PrometheusError):
    """Connected, but the whole answer did not arrive within the timeout."""


def placeholders(template):
    return sorted(set(PLACEHOLDER.findall(template)))


def render(template, variables):
    """Substitute ``{{ name }}`` placeholders; unknown names and unsafe values raise."""
    missing = [n for n in placeholders(template) if n not in variables or variables[n] is None]
    if missing:
        raise TemplateError("query template needs variable(s) %s; give them in the check's "
                            "'variables' or the module's 'variables'" % ", ".join(missing))

    def _sub(match):
        name = match.group(1)
        value = str(variables[name])
        if name == "interval":
            if not DURATION.match(value):
                raise TemplateError("interval %r is not a Prometheus duration such as 30s or 1m" % value)
        elif not SAFE_VALUE.match(value):
            raise TemplateError("variable %s=%r contains a quote, backslash, brace or newline" % (name, value))
        return value

    return PLACEHOLDER.sub(_sub, template)


def parse_value(result):
    """Single float from a /api/v1/query ``data`` object, or None when there are no values.

    NaN (e.g. 0/0 when no requests were made) counts as no values, as in Flagger.
    More than one series is an error: a gate must reduce to one number.
    """
    rtype = result.get("resultType")
    res = result.get("result")
    if rtype == "scalar":
        value = float(res[1])
    elif rtype == "vector":
        if not res:
            return None
        if len(res) > 1:
            raise PrometheusError("query returned %d series; aggregate it (e.g. sum(...)) to one value" % len(res))
        value = float(res[0]["value"][1])
    else:
        raise PrometheusError("unsupported result type %r; use an instant vector or scalar query" % rtype)
    if math.isnan(value):
        return None
    return value


# Options of every module that queries Prometheus (documented by the gpuops.cluster.prometheus doc
# fragment). Header values usually carry a bearer token: no_log masks them.
PROMETHEUS_ARG_SPEC = {
    "prometheus_url": {"type": "str"},
    "prometheus_timeout": {"type": "float", "default": 10},
    "prometheus_headers": {"type": "dict", "default": {}, "no_log": True},
    "prometheus_validate_certs": {"type": "bool", "default": True},
    "prometheus_ca_path": {"type": "path"},
}


def prometheus_argument_spec():
    """A fresh copy of PROMETHEUS_ARG_SPEC to merge into a module's argument_spec."""
    return dict((name, dict(opt)) for name, opt in PROMETHEUS_ARG_SPEC.items())


def prometheus_errors(params):
    """Messages for connection options that cannot work (a timeout of 0 or less), to fail before any change."""
    timeout = params.get("prometheus_timeout")
    if timeout is not None and (math.isnan(timeout) or timeout <= 0):
        return ["prometheus_timeout must be more than 0 seconds, got %r" % (timeout,)]
    return []


def prometheus_settings(params):
    """The connection settings in module ``params`` as the dict ``run_gate`` takes, or None without a URL."""
    if not params.get("prometheus_url"):
        return None
    timeout = params.get("prometheus_timeout")
    return {"url": params["prometheus_url"], "timeout": 10 if timeout is None else timeout,
            "headers": params.get("prometheus_headers") or {},
            "validate_certs": params.get("prometheus_validate_certs", True) is not False,
            "ca_path": params.get("prometheus_ca_path")}


def client_from_settings(settings, opener=None):
    """A PrometheusClient from a ``prometheus_settings`` dict (url required, the rest optional)."""
    return PrometheusClient(settings["url"], timeout=settings.get("timeout", 10), headers=settings.get("headers"),
                            validate_certs=settings.get("validate_certs", True), ca_path=settings.get("ca_path"),
                            opener=opener)


def client_from_params(params, opener=None):
    """A PrometheusClient for module ``params`` (prometheus_url required)."""
    s = prometheus_settings(params)
    if s is None:
        raise PrometheusError("prometheus_url is required")
    return client_from_settings(s, opener=opener)


class PrometheusClient:
    """GET /api/v1/query with an injectable opener (for tests).

    ``timeout`` bounds the whole request (connect, send, every byte of the answer), not one socket
    read: a server trickling its answer cannot stall the caller. When it runs out, the error tells
    ``PrometheusUnreachable`` (no connection was made) from ``PrometheusSlow`` (connected, the answer
    was not complete in time).
    """

    def __init__(self, url, timeout=10, headers=None, validate_certs=True, ca_path=None, opener=None):
        if not url:
            raise PrometheusError("prometheus url is empty")
        if timeout is None or math.isnan(timeout) or timeout <= 0:
            raise PrometheusError("prometheus timeout must be more than 0 seconds, got %r" % (timeout,))
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.headers = dict(headers or {})
        self.validate_certs = validate_certs
        self.ca_path = ca_path
        self._opener = opener

    def _http_get(self, url, headers, timeout, progress):
        """One GET over http.client; ``progress["connected"]`` is set once the TCP (and TLS) connection is up."""
        parts = urlsplit(url)
        if parts.scheme == "https":
            ctx = ssl.create_default_context(cafile=self.ca_path)
            if not self.validate_certs:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            conn = HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=ctx)
        elif parts.scheme == "http":
            conn = HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        else:
            raise PrometheusError("prometheus url %s: scheme must be http or https" % self.url)
        try:
            try:
                conn.connect()
            except (OSError, IOError) as exc:
                raise PrometheusUnreachable("prometheus at %s unreachable: %s" % (self.url, exc))
            progress["connected"] = True
            try:
                conn.request("GET", "%s?%s" % (parts.path, parts.query), headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.read()
            except socket.timeout:
                # the socket's own timeout can fire a moment before the caller's deadline: the same
                # "connected, no complete answer in time", never a broken answer
                raise PrometheusSlow("prometheus at %s is slow: connected, but no complete answer within %ss"
                                     % (self.url, timeout))
        finally:
            conn.close()

    def _fetch(self, url):
        """(status, body) within ``timeout`` seconds in all, or PrometheusUnreachable / PrometheusSlow."""
        box, progress = {}, {"connected": self._opener is not None}

        def work():
            try:
                if self._opener is not None:
                    box["answer"] = self._opener(url, self.headers, self.timeout)
                else:
                    box["answer"] = self._http_get(url, self.headers, self.timeout, progress)
            except Exception as exc:  # pylint: disable=broad-except
                # handed to the caller below
                box["error"] = exc

        worker = threading.Thread(target=work, name="prometheus-query")
        worker.daemon = True  # a stalled read never keeps the module process alive
        worker.start()
        worker.join(self.timeout)
        if worker.is_alive():
            if progress["connected"]:
                raise PrometheusSlow("prometheus at %s is slow: connected, but no complete answer within %ss"
                                     % (self.url, self.timeout))
            raise PrometheusUnreachable("prometheus at %s unreachable: no connection within %ss"
                                        % (self.url, self.timeout))
        if "error" in box:
            exc = box["error"]
            if isinstance(exc, PrometheusError):
                raise exc
            if progress["connected"] and self._opener is None:
                raise PrometheusError("prometheus at %s broke off the answer: %s" % (self.url, exc))
            raise PrometheusUnreachable("prometheus at %s unreachable: %s" % (self.url, exc))
        return box["answer"]

    def query(self, promql):
        """Evaluate an instant query; returns float or None (no values)."""
        return parse_value(self.query_data(promql))

    def query_vector(self, promql):
        """Evaluate an instant query; returns [(labels, float)] for every series (NaN kept out)."""
        data = self.query_data(promql)
        if data.get("resultType") != "vector":
            raise PrometheusError("expected an instant vector, got %r" % data.get("resultType"))
        out = []
        for series in data.get("result", []):
            value = float(series["value"][1])
            if not math.isnan(value):
                out.append((series.get("metric", {}), value))
        return out

    def query_data(self, promql):
        """The ``data`` object of /api/v1/query; raises PrometheusError on any failure."""
        url = "%s/api/v1/query?%s" % (self.url, urlencode({"query": promql}))
        status, body = self._fetch(url)  # network errors of any kind raise: never a pass
        try:
            doc = json.loads(body.decode("utf-8") if isinstance(body, bytes) else body)
        except ValueError:
            raise PrometheusError("prometheus answered HTTP %s with a non-JSON body" % status)
        if status != 200 or doc.get("status") != "success":
            raise PrometheusError("query failed (HTTP %s): %s: %s" % (
                status, doc.get("errorType", "error"), doc.get("error", body)))
        return doc["data"]
