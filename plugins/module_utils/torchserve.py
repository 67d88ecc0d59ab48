# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""TorchServe management API client and the idempotent model-version logic.

Pure Python (urllib), so unit tests and the modules share it. Readiness is
judged from the management API (workers READY), never from /ping, which is
healthy before any model has loaded.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import time

try:
    from urllib.parse import quote, urlencode
except ImportError:  # pragma: no cover
    from urllib import quote, urlencode  # type: ignore


class TorchServeError(RuntimeError):
    def __init__(self, msg, status=None):
        super(TorchServeError, self).__init__(msg)
        self.status = status


def read_management_key(path):
    """The management key from TorchServe's key file.

    TorchServe >= 0.11 writes key_file.json:
    ``{"management": {"key": ..., "expiration time": ...}, "inference": {...}, "API": {"key": ...}}``;
    older releases wrote key_file.txt lines ``Management Key: <key> --- Expiration time: ...``.
    """
    with open(path) as f:
        text = f.read()
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        key = (doc.get("management") or {}).get("key")
        if key:
            return key
        raise TorchServeError("key file %s has no management key" % path)
    for line in text.splitlines():
        if line.strip().lower().startswith("management key:"):
            return line.split(":", 1)[1].split("---")[0].strip()
    raise TorchServeError("key file %s has no management key" % path)


def ready_workers(description):
    return sum(1 for w in description.get("workers", []) if w.get("status") == "READY")


class TorchServeClient:
    def __init__(self, management_url, token=None, timeout=30, opener=None):
        self.base = management_url.rstrip("/")
        self.timeout = timeout
        self.headers = {"Authorization": "Bearer %s" % token} if token else {}
        self._opener = opener or self._urllib_open

    def _urllib_open(self, method, url, headers, timeout):
        from ansible.module_utils.urls import open_url
        from ansible.module_utils.six.moves.urllib.error import HTTPError
        try:
            resp = open_url(url, method=method, headers=headers, timeout=timeout)
            return resp.getcode(), resp.read()
        except HTTPError as exc:
            return exc.code, exc.read()

    def _call(self, method, path, params=None, ok=(200, 201, 202)):
        url = self.base + path
        if params:
            url += "?" + urlencode(params)
        try:
            status, body = self._opener(method, url, self.headers, self.timeout)
        except Exception as exc:
            raise TorchServeError("TorchServe management API %s unreachable: %s" % (self.base, exc))
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
        if status not in ok:
            hint = ""
            # TorchServe 0.12 answers a missing/wrong key with 400 InvalidKeyException (older: 401)
            if status in (401, 403) or (status == 400 and "InvalidKeyException" in text):
                hint = " (token authorization is on: give the management key or key file)"
            raise TorchServeError("%s %s -> HTTP %s%s: %s" % (method, path, status, hint, text.strip()[:500]),
                                  status=status)
        try:
            return json.loads(text) if text.strip() else {}
        except ValueError:
            return {"message": text}

    # -- reads ---------------------------------------------------------------
    def versions(self, model):
        """All registered versions of ``model`` (list of descriptions); [] if unknown."""
        try:
            return self._call("GET", "/models/%s/all" % quote(model, safe=""))
        except TorchServeError as exc:
            if exc.status == 404:
                return []
            raise

    def describe(self, model, version):
        try:
            res = self._call("GET", "/models/%s/%s" % (quote(model, safe=""), quote(version, safe="")))
        except TorchServeError as exc:
            if exc.status == 404:
                return None
            raise
        return res[0] if isinstance(res, list) and res else None

    def default_version(self, model):
        try:
            res = self._call("GET", "/models/%s" % quote(model, safe=""))
        except TorchServeError as exc:
            if exc.status == 404:
                return None
            raise
        return res[0].get("modelVersion") if isinstance(res, list) and res else None

    # -- writes --------------------------------------------------------------
    def register(self, model, url, initial_workers=1, batch_size=None, max_batch_delay=None,
                 response_timeout=None, handler=None):
        params = {"url": url, "model_name": model, "initial_workers": initial_workers, "synchronous": "true"}
        for k, v in (("batch_size", batch_size), ("max_batch_delay", max_batch_delay),
                     ("response_timeout", response_timeout), ("handler", handler)):
            if v is not None:
                params[k] = v
        return self._call("POST", "/models", params)

    def scale(self, model, version, min_worker, max_worker=None):
        params = {"min_worker": min_worker, "synchronous": "true"}
        if max_worker is not None:
            params["max_worker"] = max_worker
        return self._call("PUT", "/models/%s/%s" % (quote(model, safe=""), quote(version, safe="")), params)

    def set_default(self, model, version):
        return self._call("PUT", "/models/%s/%s/set-default" % (quote(model, safe=""), quote(version, safe="")))

    def unregister(self, model, version):
        return self._call("DELETE", "/models/%s/%s" % (quote(model, safe=""), quote(version, safe="")))

    def wait_ready(self, model, version, min_ready, timeout, sleep=time.sleep, clock=time.monotonic):
        """Wait until ``min_ready`` workers of the version are READY; returns the description."""
        deadline = clock() + timeout
        desc = None
        while True:
            desc = self.describe(model, version)
            if desc is not None and ready_workers(desc) >= min_ready:
                return desc
            if clock() >= deadline:
                have = ready_workers(desc) if desc else 0
                raise TorchServeError("%s/%s: %d of %d workers READY after %ss" % (
                    model, version, have, min_ready, timeout))
            sleep(1)


def summarize(desc):
    if not desc:
        return None
    return {"version": desc.get("modelVersion"), "url": desc.get("modelUrl"),
            "min_workers": desc.get("minWorkers"), "max_workers": desc.get("maxWorkers"),
            "ready_workers": ready_workers(desc), "workers": len(desc.get("workers", []))}


def plan(state, model, version, current, default, params):
    """Decide the actions to reach ``state`` for one version (pure: no I/O).

    ``current``: description of the version or None; ``default``: the model's
    current default version or None. Returns a list of action names:
    register, scale, set_default, unregister.
    """
    actions = []
    if state == "absent":
        if current is not None:
            if default == version and params.get("other_versions"):
                raise TorchServeError("%s/%s is the default version while other versions exist: set another "
                                      "default first (state=default on that version)" % (model, version))
            actions.append("unregister")
        return actions
    if current is None:
        if not params.get("url"):
            raise TorchServeError("%s/%s is not registered: give url (the .mar in the model store or an "
                                  "http(s) URL) to register it" % (model, version))
        actions.append("register")
    elif params.get("min_workers") is not None and current.get("minWorkers") != params["min_workers"]:
        actions.append("scale")
    elif params.get("max_workers") is not None and current.get("maxWorkers") != params["max_workers"]:
        actions.append("scale")
    if state == "default" and default != version:
        actions.append("set_default")
    return actions
