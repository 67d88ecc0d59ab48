# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Kubernetes API errors of gpuops.cluster modules (one job: classify, retry, report).

- ``is_transient(exc)``: can a retry cure it (HTTP 429/5xx, a dropped connection, a read timeout)?
- ``Backoff``: exponential delays with optional jitter, bounded by a number of tries and by time.
- ``retry_transient(fn, ...)``: ``fn`` retried on transient errors with a ``Backoff``.
- ``k8s_error_message(exc)`` / ``fail_on_k8s_error(module, exc, what)``: the one error path every
  module takes for a failure of the API (``K8sClientError``, ``ApiException``, unreachable server,
  anything else), so the same failure reads the same in every module.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import random
import time
import traceback

from ansible_collections.gpuops.cluster.plugins.module_utils.k8s_connection import ApiException, K8sClientError


def connection_error_message(exc):
    """A message for a failure to reach the API server (refused, DNS, TLS), or None for other errors."""
    try:
        import urllib3
    except ImportError:  # pragma: no cover
        return None
    if isinstance(exc, urllib3.exceptions.HTTPError):
        reason = getattr(exc, "reason", None) or exc
        return "cannot reach the Kubernetes API server: %s" % reason
    if isinstance(exc, ConnectionError):
        return "cannot reach the Kubernetes API server: %s" % exc
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


class Backoff(object):
    """Delays between tries: ``base`` doubling up to ``cap``; with ``jitter`` each delay is drawn
    uniformly from [delay/2, delay] ("equal jitter"), so two writers that collided once do not
    collide again in lockstep. ``next_delay()`` returns None when the next try would exceed
    ``tries`` (None: no limit) or start after ``timeout`` seconds (None: no limit) from the first."""

    def __init__(self, base=0.5, cap=4.0, tries=None, timeout=None, jitter=False, now=time.monotonic,
                 rand=random.random):
        self.base, self.cap, self.tries, self.timeout = base, cap, tries, timeout
        self.jitter, self.now, self.rand = jitter, now, rand
        self.started = now()
        self.tried = 1  # the first try is under way
        self._delay = base

    def elapsed(self):
        return self.now() - self.started

    def next_delay(self):
        if self.tries is not None and self.tried >= self.tries:
            return None
        delay = self._delay
        if self.jitter:
            delay = delay / 2.0 + self.rand() * delay / 2.0
        if self.timeout is not None and self.elapsed() + delay > self.timeout:
            return None
        self.tried += 1
        self._delay = min(self._delay * 2, self.cap)
        return delay


def retry_transient(fn, attempts=5, base_delay=0.5, max_delay=4.0, sleep=time.sleep, on_retry=None,
                    timeout=None, jitter=False, now=time.monotonic, rand=random.random):
    """``fn`` wrapped so that transient API errors (see ``is_transient``) are retried with exponential
    backoff, ``attempts`` calls in all (None: no limit; 0.5 + 1 + 2 + 4 s of waits for 5) and no retry
    starting after ``timeout`` seconds (None: no limit). Other errors, and the last transient one,
    propagate unchanged. ``on_retry(exc, attempt, delay)`` is told about each retry.
    Only for calls that are safe to repeat: reads, and writes that set an absolute state from a fresh read."""
    def wrapper(*args, **kwargs):
        backoff = Backoff(base_delay, max_delay, tries=None if attempts is None else max(1, attempts),
                          timeout=timeout, jitter=jitter, now=now, rand=rand)
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # pylint: disable=broad-except
                if not is_transient(exc):
                    raise
                delay = backoff.next_delay()
                if delay is None:
                    raise
                if on_retry is not None:
                    on_retry(exc, attempt, delay)
                sleep(delay)
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


def k8s_error_message(exc, what=None):
    """The message for a failure of the Kubernetes API, the same in every module, or None when ``exc``
    is not an API failure (a bug, a validation error of the module's own).
    ``what`` names the object being handled, for example ``VirtualService serving/resnet``."""
    prefix = ("%s: " % what) if what else ""
    if isinstance(exc, K8sClientError):  # says itself what it is about (credentials, a Deployment...)
        return str(exc)
    if isinstance(exc, ApiException):
        return "%sKubernetes API error: %s" % (prefix, api_error_message(exc))
    unreachable = connection_error_message(exc)
    if unreachable:
        return "%s%s" % (prefix, unreachable)
    return None


def fail_on_k8s_error(module, exc, what=None, **extra):
    """``module.fail_json`` for any exception reaching a module's top level: API failures get
    ``k8s_error_message`` (plus ``status_code`` for an HTTP answer), anything else is reported as an
    unexpected error with its traceback."""
    msg = k8s_error_message(exc, what)
    if msg is None:
        module.fail_json(msg="unexpected error: %s" % exc,
                         exception="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), **extra)
    if isinstance(exc, ApiException):
        extra.setdefault("status_code", exc.status)
    module.fail_json(msg=msg, **extra)
