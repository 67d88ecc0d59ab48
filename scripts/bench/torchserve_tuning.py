#!/usr/bin/env python3
"""TorchServe with the torchserve role's tuned configuration against TorchServe's defaults.

    source scripts/env.sh && nice -n 10 python scripts/bench/torchserve_tuning.py \
        [--concurrency 1,4,16,32] [--seconds 8] [--warmup 2]

Same model (the test bed's ``classifier`` archive, tests/testbed/model), same machine, one run: two
TorchServe 0.12 instances on 127.0.0.1 (bounded lifetime, stopped by PID at the end), measured one
after the other at each concurrency (default, tuned, default, tuned... so both see the same machine
load), closed-loop clients on keep-alive connections.

- ``default``: TorchServe's own defaults. Only what every instance here needs is set: addresses and
  ports on 127.0.0.1, the model store, ``metrics_mode=prometheus`` and the handler's metrics config,
  token authorization off (an auth header is not tuning). The model is loaded with TorchServe's
  defaults (batch size 1, no batch delay, workers = number of CPUs).
- ``tuned``: ``roles/torchserve/templates/config.properties.j2`` rendered with the role's defaults
  (``roles/torchserve/defaults/main.yml``: batch size, batch delay, workers, netty threads, queue,
  JVM options), exactly what the init container writes in a pod; only the addresses differ.

Printed: throughput (requests/s) and p50/p95/p99 latency per concurrency for both, and the ratios
tuned/default. Target: >= 2x throughput at equal or better p95 (exit 0 when met at the highest
concurrency, 1 otherwise: the figures are printed either way). Results also go to
$GPUOPS_CACHE/bench/torchserve_tuning.json. Not part of ``make test``.
"""

import argparse
import http.client
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

# pylint: disable=wrong-import-position
import jinja2  # noqa: E402  (the main venv has it: Ansible's dependency)
import yaml  # noqa: E402

from tests.testbed.common import CACHE, Component, free_port, wait_for  # noqa: E402
from tests.testbed.model import build as model_build  # noqa: E402
from tests.testbed.torchserve import METRICS_CONFIG, http as ts_http  # noqa: E402

ROLE = REPO / "roles" / "torchserve"
MODEL, VERSION = "classifier", "1.0"
PAYLOAD = json.dumps([1.0, 2.0, 3.0, 4.0]).encode()


def tuned_properties(ports, store):
    """The role's config.properties with its defaults (as the pod's init container renders it)."""
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True)
    tpl = env.from_string((ROLE / "templates" / "config.properties.j2").read_text())
    params = dict(defaults, torchserve_model=MODEL, _torchserve_bind="127.0.0.1", _torchserve_ports=ports,
                  _torchserve_model_store_dir=str(store), _torchserve_metrics_config=str(METRICS_CONFIG))
    return tpl.render(**params).replace("@MODEL_VERSION@", VERSION), defaults


def default_properties(ports, store):
    lines = {
        "inference_address": f"http://127.0.0.1:{ports['inference']}",
        "management_address": f"http://127.0.0.1:{ports['management']}",
        "metrics_address": f"http://127.0.0.1:{ports['metrics']}",
        "grpc_inference_address": "127.0.0.1", "grpc_management_address": "127.0.0.1",
        "grpc_inference_port": ports["grpc_inference"], "grpc_management_port": ports["grpc_management"],
        "model_store": str(store), "load_models": f"{MODEL}.mar",
        "metrics_mode": "prometheus", "metrics_config": str(METRICS_CONFIG),
        "disable_token_authorization": "true",
    }
    return "".join(f"{k}={v}\n" for k, v in lines.items())


class BenchTorchServe(Component):
    kind = "torchserve-bench"

    def __init__(self, flavour, archive, **kw):
        super().__init__(name=f"torchserve-bench-{flavour}", lifetime=1800, **kw)
        self.flavour, self.archive = flavour, archive

    def _start(self):
        wd = self.workdir
        store, tmp, logs = wd / "model-store", wd / "tmp", wd / "logs"
        for d in (store, tmp, logs):
            d.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.archive, store / f"{MODEL}.mar")
        ports = {k: free_port() for k in ("inference", "management", "metrics", "grpc_inference", "grpc_management")}
        if self.flavour == "tuned":
            text, _defaults = tuned_properties(ports, store)
        else:
            text = default_properties(ports, store)
        (wd / "config.properties").write_text(text)
        env = {"TMPDIR": str(tmp), "TEMP": str(tmp), "TMP": str(tmp), "LOG_LOCATION": str(logs),
               "METRICS_LOCATION": str(logs), "PYTHONUNBUFFERED": "1"}
        argv = [str(model_build.ts_bin("torchserve")), "--start", "--foreground", "--ncs",
                "--ts-config", str(wd / "config.properties"), "--model-store", str(store)]
        proc = self.spawn("torchserve", argv, env=env, cwd=wd)
        self.info.update(ports=ports, config=text, inference=("127.0.0.1", ports["inference"]),
                         management=f"http://127.0.0.1:{ports['management']}")

        def ready():
            status, body = ts_http("GET", f"{self.info['management']}/models/{MODEL}/{VERSION}", timeout=3)
            return status == 200 and any(w.get("status") == "READY" for d in body for w in d.get("workers", []))
        wait_for(ready, 300, f"{self.flavour} TorchServe: {MODEL} {VERSION} READY", procs=[proc])
        _s, body = ts_http("GET", f"{self.info['management']}/models/{MODEL}/{VERSION}", timeout=5)
        self.info["model"] = {k: body[0].get(k) for k in ("batchSize", "maxBatchDelay", "minWorkers", "maxWorkers")}


def load(addr, concurrency, seconds, warmup):
    """Closed loop: ``concurrency`` clients, each on its own keep-alive connection."""
    stop_at = time.monotonic() + warmup + seconds
    measure_from = time.monotonic() + warmup
    lat, errors, lock = [], [0], threading.Lock()

    def client():
        conn = http.client.HTTPConnection(*addr, timeout=60)
        mine, bad = [], 0
        while True:
            t0 = time.monotonic()
            if t0 >= stop_at:
                break
            try:
                conn.request("POST", f"/predictions/{MODEL}", body=PAYLOAD,
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(*addr, timeout=60)
            t1 = time.monotonic()
            if t0 >= measure_from:
                if ok:
                    mine.append(t1 - t0)
                else:
                    bad += 1
        conn.close()
        with lock:
            lat.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat.sort()

    def pct(p):
        return round(lat[min(len(lat) - 1, int(p / 100.0 * len(lat)))] * 1000, 2) if lat else None
    return {"requests": len(lat), "errors": errors[0], "rps": round(len(lat) / seconds, 1),
            "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", default="1,4,16,32")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    args = ap.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    archive = Path(model_build.build_archive(VERSION, model_name=MODEL))
    servers = {}
    results = {"machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}, "levels": {}}
    try:
        for flavour in ("default", "tuned"):
            servers[flavour] = BenchTorchServe(flavour, archive).start()
            print(f"{flavour}: started in {servers[flavour].info['startup_seconds']} s, model {servers[flavour].info['model']}",
                  flush=True)
        for c in levels:
            row = {}
            for flavour in ("default", "tuned"):
                row[flavour] = load(servers[flavour].info["inference"], c, args.seconds, args.warmup)
            d, t = row["default"], row["tuned"]
            row["ratio"] = {
                "throughput": round(t["rps"] / d["rps"], 2) if d["rps"] else None,
                "p95": round(t["p95_ms"] / d["p95_ms"], 2) if d["p95_ms"] and t["p95_ms"] else None,
                "p99": round(t["p99_ms"] / d["p99_ms"], 2) if d["p99_ms"] and t["p99_ms"] else None,
            }
            results["levels"][c] = row
            print(f"c={c:>3}  default {d['rps']:>7} rps p95 {d['p95_ms']} p99 {d['p99_ms']} ms err {d['errors']} | "
                  f"tuned {t['rps']:>7} rps p95 {t['p95_ms']} p99 {t['p99_ms']} ms err {t['errors']} | "
                  f"tuned/default: throughput x{row['ratio']['throughput']}, p95 x{row['ratio']['p95']}, "
                  f"p99 x{row['ratio']['p99']}", flush=True)
    finally:
        for s in servers.values():
            s.stop()
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["models"] = {f: s.info.get("model") for f, s in servers.items()}
    top = results["levels"][max(levels)]["ratio"]
    met = bool(top["throughput"] and top["throughput"] >= 2.0 and top["p95"] is not None and top["p95"] <= 1.0)
    results["target_met"] = met
    out = CACHE / "bench" / "torchserve_tuning.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"load average {results['machine']['loadavg_start']} -> {results['machine']['loadavg_end']}; {out}")
    print(f"target (>= 2x throughput at equal or better p95, c={max(levels)}) met: {met}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
