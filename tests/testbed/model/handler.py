"""TorchServe handler of the test classifier: fault injection + per-version metrics.

Runs inside a TorchServe worker (torch, ts importable). Exactly one class in this module:
TorchServe instantiates it and calls ``initialize(context)`` then ``handle(data, context)``.

Faults, from the model-config yaml of the archive (torch-model-archiver ``--config-file``),
section ``handler`` (read from ``context.model_yaml_config``), so each version has its own:

    handler:
      fail_rate: 0.5   # fraction 0..1 of requests answered with HTTP 500
      delay_ms: 200    # added latency per request

Runtime override (no re-registration): the JSON file named by $GPUOPS_TS_OVERRIDES, keyed by
model version, e.g. ``{"2.0": {"fail_rate": 1.0, "delay_ms": 0}}``, re-read when it changes.
A ``load_gate`` path there, or in the archive's ``handler`` section, makes ``initialize`` wait until
that file exists (tests use it to observe a version whose workers are still loading).

Failures are spread deterministically: after n requests exactly floor(n * fail_rate) failed
(error diffusion), so tests get the configured fraction without randomness.

Metrics (custom metrics API, declared in metrics.yaml; Prometheus series on TorchServe's
metrics port, labels model_name, model_version and Hostname added by the frontend):
    gpuops_requests_total    counter   every request the handler saw (success or failure)
    gpuops_errors_total      counter   requests the handler failed (HTTP 5xx)
    gpuops_batches_total     counter   batches (handle() calls): requests_total / batches_total is
                                       the mean batch size, > 1 only when TorchServe batched
    gpuops_latency_seconds   histogram handler latency in seconds (incl. delay_ms), buckets are
                                       the Prometheus client defaults 5 ms .. 10 s
The counters are emitted with 0 when the worker loads, so the series exist before traffic.
"""

import json
import logging
import os
import time

import torch
from ts.metrics.metric_type_enum import MetricTypes
from ts.utils.util import PredictionException

logger = logging.getLogger(__name__)

REQUESTS = "gpuops_requests_total"
ERRORS = "gpuops_errors_total"
BATCHES = "gpuops_batches_total"
LATENCY = "gpuops_latency_seconds"
DIMENSIONS = ["model_name", "model_version"]
LOAD_GATE_TIMEOUT_S = 900


def _faults(base, overrides_path, version, cache):
    """fail_rate/delay_ms/load_gate for this version: archive config, then the override file."""
    out = dict(base)
    if not overrides_path:
        return out
    try:
        mtime = os.stat(overrides_path).st_mtime_ns
    except OSError:
        return out
    if cache.get("mtime") != mtime:
        try:
            with open(overrides_path) as f:
                cache["data"] = json.load(f)
            cache["mtime"] = mtime
        except (OSError, ValueError) as exc:  # half-written file: keep the last good one
            logger.warning("gpuops: cannot read overrides %s: %s", overrides_path, exc)
    out.update((cache.get("data") or {}).get(version) or {})
    return out


def _features(row):
    """One request body -> list of 4 floats. Accepts [..], {"data": [..]} or {"instances": [[..]]}."""
    body = row.get("body") if isinstance(row, dict) else row
    if body is None and isinstance(row, dict):
        body = row.get("data")
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8")
    if isinstance(body, str):
        body = json.loads(body) if body.strip() else [0.0, 0.0, 0.0, 0.0]
    if isinstance(body, dict):
        body = body.get("data", body.get("instances"))
        if isinstance(body, list) and body and isinstance(body[0], list):
            body = body[0]
    if not isinstance(body, list) or len(body) != 4:
        raise PredictionException("expected a JSON list of 4 numbers, or {\"data\": [4 numbers]}", 400)
    return [float(x) for x in body]


class ClassifierHandler:
    """Fault-injecting handler with per-version request/error/latency metrics."""

    def __init__(self):
        self.initialized = False
        self.model = None
        self.model_name = ""
        self.version = ""
        self.base = {"fail_rate": 0.0, "delay_ms": 0}
        self.overrides_path = os.environ.get("GPUOPS_TS_OVERRIDES", "")
        self._override_cache = {}
        self.seen = 0
        self.failed = 0
        self.metrics = None

    def initialize(self, context):
        manifest = context.manifest or {}
        model = manifest.get("model", {})
        self.model_name = context.model_name or model.get("modelName", "")
        self.version = str(model.get("modelVersion", ""))
        cfg = (context.model_yaml_config or {}).get("handler") or {}
        self.base = {"fail_rate": float(cfg.get("fail_rate", 0.0)), "delay_ms": int(cfg.get("delay_ms", 0))}
        gate = (cfg.get("load_gate")
                or _faults(self.base, self.overrides_path, self.version, self._override_cache).get("load_gate"))
        if gate:
            deadline = time.monotonic() + LOAD_GATE_TIMEOUT_S
            logger.info("gpuops: %s %s waits for load gate %s", self.model_name, self.version, gate)
            while not os.path.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.2)
        model_dir = context.system_properties.get("model_dir")
        serialized = model.get("serializedFile")
        self.model = torch.jit.load(os.path.join(model_dir, serialized), map_location="cpu")
        self.model.eval()
        with torch.no_grad():  # warm up TorchScript's profiling executor: first calls are slow
            for _ in range(3):
                self.model(torch.zeros(1, 4))
        self.metrics = context.metrics
        dims = [self.model_name, self.version]
        self._metric(REQUESTS, "Count", MetricTypes.COUNTER).add_or_update(0, dims)
        self._metric(ERRORS, "Count", MetricTypes.COUNTER).add_or_update(0, dims)
        self._metric(BATCHES, "Count", MetricTypes.COUNTER).add_or_update(0, dims)
        self._metric(LATENCY, "Seconds", MetricTypes.HISTOGRAM)
        logger.info("gpuops: loaded %s %s with faults %s", self.model_name, self.version, self.base)
        self.initialized = True

    def _metric(self, name, unit, metric_type):
        """The metric declared in metrics.yaml (the worker loads it), or add it to the cache."""
        try:
            return self.metrics.get_metric(name, metric_type)
        except Exception:  # MetricsCacheKeyError: not declared (e.g. another metrics_config)
            return self.metrics.add_metric_to_cache(name, unit, DIMENSIONS, metric_type)

    def _should_fail(self, fail_rate):
        self.seen += 1
        if int(self.seen * fail_rate) > self.failed:
            self.failed += 1
            return True
        return False

    def handle(self, data, context):
        """One batch (a list of requests) -> one answer per request, in order.

        The valid requests of the batch go through ONE forward pass (their features stacked
        into an [n, 4] tensor, the output split per row); the model is batch-invariant
        (make_model.py), so a request's answer does not depend on the batch it came in. A
        request that fails (fault injection: 500, bad body: 400) fails alone: its status is set
        per request (context.set_response_status(code, phrase, idx)) with the body TorchServe
        gives a raised PredictionException; a batch of one raises it, as before. delay_ms is added once per batch (the forward pass of a
        slow model), which at batch size 1 is once per request.
        """
        t0 = time.monotonic()
        dims = [self.model_name, self.version]
        faults = _faults(self.base, self.overrides_path, self.version, self._override_cache)
        fail_rate = min(max(float(faults.get("fail_rate", 0.0)), 0.0), 1.0)
        delay_ms = max(int(faults.get("delay_ms", 0)), 0)
        if delay_ms:
            time.sleep(delay_ms / 1000.0)
        out = [None] * len(data)
        rows, idxs, refusals = [], [], {}
        for idx, row in enumerate(data):
            try:
                if self._should_fail(fail_rate):
                    raise PredictionException(
                        f"gpuops fault injection: {self.model_name} {self.version} fail_rate={fail_rate}", 500)
                rows.append(_features(row))
                idxs.append(idx)
            except PredictionException as exc:
                refusals[idx] = exc
        try:
            if rows:
                with torch.no_grad():
                    probs = self.model(torch.tensor(rows, dtype=torch.float32)).tolist()
                for idx, p in zip(idxs, probs):
                    out[idx] = {"model": self.model_name, "version": self.version,
                                "probabilities": p, "class": int(p.index(max(p)))}
        except Exception:
            refusals.update((idx, None) for idx in idxs)  # the forward pass failed: all of it
            raise
        finally:
            server_errors = sum(1 for exc in refusals.values() if exc is None or exc.error_code >= 500)
            self.metrics.get_metric(REQUESTS, MetricTypes.COUNTER).add_or_update(len(data), dims)
            self.metrics.get_metric(ERRORS, MetricTypes.COUNTER).add_or_update(server_errors, dims)
            self.metrics.get_metric(BATCHES, MetricTypes.COUNTER).add_or_update(1, dims)
            latency = self.metrics.get_metric(LATENCY, MetricTypes.HISTOGRAM)
            elapsed = time.monotonic() - t0
            for _ in data:  # one observation per request: each waited for the whole batch
                latency.add_or_update(elapsed, dims)
        if len(data) == 1 and refusals:
            raise refusals[0]
        for idx, exc in refusals.items():
            # the same status and bytes as TorchServe's answer to a raised PredictionException
            context.set_response_status(exc.error_code, exc.message, idx)
            context.set_response_content_type(idx, "application/json")
            out[idx] = json.dumps({"code": exc.error_code, "type": "InternalServerException",
                                   "message": exc.message}, indent=2) + "\n"
        return out
