"""TorchServe test-bed component: real TorchServe 0.12 (Java frontend + Python workers) on 127.0.0.1.

    ts = TorchServe().start()                      # token auth off, model API on, prometheus metrics
    ts.register("1.0")                             # healthy version, waits for workers READY
    ts.register("2.0", fail_rate=0.5)              # half of its requests answer HTTP 500
    ts.register("3.0", delay_ms=300)               # slow version
    status, body = ts.predict("2.0", [1, 2, 3, 4])  # (500, {...}) or (200, {"version": "2.0", ...})
    ts.set_default("1.0"); ts.unregister("3.0")
    ts.set_faults("1.0", fail_rate=1.0)            # change a running version's faults (no reload)
    ts.info["metrics_target"]                      # host:port for Prometheus

Needs scripts/build/torchserve.sh (its own venv $GPUOPS_CACHE/torchserve-venv with pinned torch,
torchserve, torch-model-archiver, pyyaml) and Java 11+. Archives of model ``classifier`` are built
on demand by tests/testbed/model/build.py (cached by content hash) and copied into this
instance's own model store. Each instance has its own TMPDIR/TEMP (TorchServe keeps its pid file
and worker sockets there), log dir and config.properties in its work dir.

Readiness: TorchServe's /ping answers before any model is loaded, so ``register`` waits on the
management API until the version's workers report status READY.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from tests.testbed.common import Component, TestbedError, free_port, require_binary, wait_for
from tests.testbed.model import build as model_build

METRICS_CONFIG = Path(model_build.__file__).resolve().parent / "metrics.yaml"


def http(method: str, url: str, body: Any = None, headers: Optional[Dict[str, str]] = None,
         timeout: float = 60.0) -> Tuple[int, Any]:
    """One HTTP call; returns (status, parsed JSON body or text). Never raises on HTTP errors."""
    data = None
    hdrs = dict(headers or {})
    if body is not None:
        data = body if isinstance(body, (bytes, bytearray)) else json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    text = raw.decode("utf-8", errors="replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


class TorchServe(Component):
    """Real TorchServe with the test classifier model.

    kwargs: token_auth (False; True turns TorchServe's token authorization on and exposes
    ``info["key_file"]``), model_name ("classifier"), startup_timeout (s), load_timeout (s),
    heap ("512m", JVM -Xmx), plus Component's name/workdir/lifetime.
    info: inference_url, management_url, metrics_url, metrics_target, key_file, model_store, ...
    """

    kind = "torchserve"

    def __init__(self, token_auth: bool = False, model_name: str = model_build.MODEL_NAME,
                 startup_timeout: float = 180.0, load_timeout: float = 300.0, heap: str = "512m",
                 **kwargs):
        super().__init__(**kwargs)
        self.token_auth = token_auth
        self.model_name = model_name
        self.startup_timeout = startup_timeout
        self.load_timeout = load_timeout
        self.heap = heap
        self._overrides: Dict[str, Dict[str, Any]] = {}

    # -- lifecycle ----------------------------------------------------------
    def _start(self) -> None:
        torchserve = model_build.ts_bin("torchserve")
        require_binary("java", hint="apt-get install openjdk-17-jre-headless")
        wd = self.workdir
        store, tmp, logs = wd / "model-store", wd / "tmp", wd / "logs"
        for d in (store, tmp, logs):
            d.mkdir(parents=True, exist_ok=True)
        key_file = wd / "key_file.json"
        if key_file.exists():  # a stale key from an earlier run must not be picked up
            key_file.unlink()
        # gRPC cannot be switched off in 0.12 and defaults to 7070/7071: give it free ports too,
        # or a second instance on the machine dies with "Failed to bind to address 127.0.0.1:7070".
        ports = {k: free_port() for k in ("inference", "management", "metrics", "grpc_inference",
                                          "grpc_management")}
        overrides = wd / "overrides.json"
        self._write_overrides(overrides)
        props = {
            "inference_address": f"http://127.0.0.1:{ports['inference']}",
            "management_address": f"http://127.0.0.1:{ports['management']}",
            "metrics_address": f"http://127.0.0.1:{ports['metrics']}",
            "grpc_inference_address": "127.0.0.1",
            "grpc_management_address": "127.0.0.1",
            "grpc_inference_port": str(ports["grpc_inference"]),
            "grpc_management_port": str(ports["grpc_management"]),
            "model_store": str(store),
            "workflow_store": str(store),
            "metrics_mode": "prometheus",
            "metrics_config": str(METRICS_CONFIG),
            # TorchServe 0.12 defaults: token auth ON, model API OFF.
            "disable_token_authorization": "false" if self.token_auth else "true",
            "enable_model_api": "true",
            "enable_envvars_config": "false",
            "install_py_dep_per_model": "false",
            "disable_system_metrics": "true",
            "default_workers_per_model": "1",
            "default_response_timeout": "120",
            "number_of_netty_threads": "2",
            "netty_client_threads": "2",
            "job_queue_size": "100",
            "vmargs": f"-Xmx{self.heap} -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:+ExitOnOutOfMemoryError",
        }
        (wd / "config.properties").write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        env = {"TMPDIR": str(tmp), "TEMP": str(tmp), "TMP": str(tmp),
               "LOG_LOCATION": str(logs), "METRICS_LOCATION": str(logs),
               "GPUOPS_TS_OVERRIDES": str(overrides), "PYTHONUNBUFFERED": "1"}
        argv = [str(torchserve), "--start", "--foreground", "--ncs",
                "--ts-config", str(wd / "config.properties"), "--model-store", str(store)]
        proc = self.spawn("torchserve", argv, env=env, cwd=wd)
        base = {k: f"http://127.0.0.1:{p}" for k, p in ports.items() if not k.startswith("grpc")}
        self.info.update({
            "inference_url": base["inference"], "management_url": base["management"],
            "metrics_url": f"{base['metrics']}/metrics", "metrics_target": f"127.0.0.1:{ports['metrics']}",
            "ports": ports, "model_name": self.model_name, "model_store": str(store),
            "token_auth": self.token_auth, "key_file": str(key_file) if self.token_auth else None,
            "logs": str(logs), "overrides": str(overrides), "pid": proc.pid,
        })
        if self.token_auth:
            wait_for(key_file.exists, self.startup_timeout, "torchserve key_file.json", procs=[proc])
        wait_for(lambda: self._mgmt("GET", "/models", timeout=3)[0] == 200, self.startup_timeout,
                 "torchserve management API", procs=[proc])
        wait_for(lambda: http("GET", f"{base['inference']}/ping", headers=self._auth("inference"),
                              timeout=3)[0] == 200,
                 self.startup_timeout, "torchserve /ping", procs=[proc])

    # -- auth ---------------------------------------------------------------
    def keys(self) -> Dict[str, str]:
        """{"management": key, "inference": key} from key_file.json (token_auth=True only)."""
        if not self.token_auth:
            return {}
        data = json.loads(Path(str(self.info["key_file"])).read_text())
        return {kind: data[kind]["key"] for kind in ("management", "inference") if kind in data}

    def _auth(self, kind: str) -> Dict[str, str]:
        if not self.token_auth:
            return {}
        return {"Authorization": f"Bearer {self.keys()[kind]}"}

    def _mgmt(self, method: str, path: str, timeout: float = 60.0, auth: bool = True) -> Tuple[int, Any]:
        return http(method, f"{self.info['management_url']}{path}",
                    headers=self._auth("management") if auth else None, timeout=timeout)

    # -- fault overrides ----------------------------------------------------
    def _write_overrides(self, path: Optional[Path] = None) -> None:
        path = Path(path or str(self.info["overrides"]))
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._overrides, indent=2, sort_keys=True))
        os.replace(tmp, path)  # the handler never sees a half-written file

    def set_faults(self, version: str, fail_rate: Optional[float] = None,
                   delay_ms: Optional[int] = None) -> None:
        """Override a running version's faults (the handler re-reads the file per request).

        ``set_faults(v)`` with no values removes the override (back to the archive's config).
        """
        cur = {k: v for k, v in self._overrides.get(str(version), {}).items() if k == "load_gate"}
        if fail_rate is not None:
            if not 0.0 <= float(fail_rate) <= 1.0:
                raise ValueError(f"fail_rate {fail_rate!r} must be between 0 and 1")
            cur["fail_rate"] = float(fail_rate)
        if delay_ms is not None:
            if int(delay_ms) < 0:
                raise ValueError(f"delay_ms {delay_ms!r} must be >= 0")
            cur["delay_ms"] = int(delay_ms)
        if cur:
            self._overrides[str(version)] = cur
        else:
            self._overrides.pop(str(version), None)
        self._write_overrides()

    # -- model management ---------------------------------------------------
    def describe(self, version: Optional[str] = None) -> Optional[List[dict]]:
        """Management API description of the model (one version or all); None if not registered."""
        path = f"/models/{self.model_name}/{version}" if version else f"/models/{self.model_name}/all"
        status, body = self._mgmt("GET", path, timeout=10)
        if status == 404:
            return None
        if status != 200:
            raise TestbedError(f"GET {path}: HTTP {status}: {body}")
        return body

    def ready_workers(self, version: str) -> int:
        """Number of the version's workers whose status is READY (0 when not registered)."""
        desc = self.describe(version) or []
        return sum(1 for m in desc for w in m.get("workers", []) if w.get("status") == "READY")

    def register(self, version: str, fail_rate: float = 0.0, delay_ms: int = 0, initial_workers: int = 1,
                 wait: bool = True, load_gate: Optional[Path] = None) -> Dict[str, Any]:
        """Register model version ``version`` with these faults; wait until its workers are READY.

        ``load_gate``: the workers' initialize() blocks until that file exists (tests observe a
        version that is still loading); use with wait=False, then create the file.
        Registering a version that is already registered from the same archive is a no-op
        (``existing`` True); from a different archive it is an error.
        Returns {"version", "archive", "load_seconds" (None when wait=False), "existing"}.
        """
        version = str(version)
        archive = model_build.build_archive(version, fail_rate, delay_ms, model_name=self.model_name)
        store = Path(str(self.info["model_store"]))
        if not (store / archive.name).exists():
            shutil.copy2(archive, store / f".{archive.name}.tmp")
            os.replace(store / f".{archive.name}.tmp", store / archive.name)
        existing = self.describe(version)
        if existing:  # shared session fixture: registering the same archive twice is a no-op
            url = existing[0].get("modelUrl")
            if url != archive.name:
                raise TestbedError(f"{self.model_name} {version} is already registered from {url}, not "
                                   f"{archive.name} (other faults?): unregister it first or pick another version")
            if wait:
                self.wait_ready(version, initial_workers)
            return {"version": version, "archive": str(archive), "load_seconds": 0.0, "existing": True}
        if load_gate is not None:
            self._overrides.setdefault(version, {})["load_gate"] = str(load_gate)
            self._write_overrides()
        query = urllib.parse.urlencode({"url": archive.name, "initial_workers": int(initial_workers),
                                        "synchronous": "false"})
        t0 = time.monotonic()
        status, body = self._mgmt("POST", f"/models?{query}", timeout=120)
        if status not in (200, 202):
            raise TestbedError(f"registering {self.model_name} {version} ({archive.name}) failed: "
                               f"HTTP {status}: {body}\n{self.procs[0].tail() if self.procs else ''}")
        result: Dict[str, Any] = {"version": version, "archive": str(archive), "load_seconds": None,
                                  "existing": False}
        if wait:
            self.wait_ready(version, initial_workers)
            result["load_seconds"] = round(time.monotonic() - t0, 2)
        return result

    def wait_ready(self, version: str, workers: int = 1, timeout: Optional[float] = None) -> None:
        """Wait until ``workers`` workers of ``version`` are READY (management API, not /ping)."""
        wait_for(lambda: self.ready_workers(version) >= workers, timeout or self.load_timeout,
                 f"{self.model_name} {version}: {workers} worker(s) READY", interval=0.5, procs=self.procs)

    def unregister(self, version: str, timeout: float = 120.0) -> None:
        status, body = self._mgmt("DELETE", f"/models/{self.model_name}/{version}", timeout=timeout)
        if status not in (200, 202):
            hint = ""
            if status == 403 and "default version" in str(body):
                hint = " (TorchServe keeps the default version while others exist: set_default() another first)"
            raise TestbedError(f"unregistering {self.model_name} {version}: HTTP {status}: {body}{hint}")
        wait_for(lambda: self.describe(version) is None, timeout, f"{self.model_name} {version} unregistered",
                 procs=self.procs)
        self._overrides.pop(str(version), None)
        self._write_overrides()

    def set_default(self, version: str) -> None:
        status, body = self._mgmt("PUT", f"/models/{self.model_name}/{version}/set-default")
        if status != 200:
            raise TestbedError(f"set-default {self.model_name} {version}: HTTP {status}: {body}")

    def default_version(self) -> Optional[str]:
        """The version answering /predictions/<model> (None when nothing is registered)."""
        status, body = self._mgmt("GET", f"/models/{self.model_name}", timeout=10)
        if status != 200 or not body:
            return None
        return str(body[0].get("modelVersion"))

    # -- inference / metrics -------------------------------------------------
    def predict(self, version: Optional[str], payload: Any = None, timeout: float = 120.0) -> Tuple[int, Any]:
        """POST /predictions/<model>[/<version>] (None: the default version) -> (status, body)."""
        path = f"/predictions/{self.model_name}" + (f"/{version}" if version else "")
        return http("POST", f"{self.info['inference_url']}{path}",
                    body=[0.5, -1.0, 2.0, 0.1] if payload is None else payload,
                    headers=self._auth("inference"), timeout=timeout)

    def metrics_text(self) -> str:
        status, body = http("GET", str(self.info["metrics_url"]), timeout=10)
        if status != 200:
            raise TestbedError(f"GET {self.info['metrics_url']}: HTTP {status}: {body}")
        return str(body)
