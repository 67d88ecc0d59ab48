#!/usr/bin/env python3
"""TorchServe with the torchserve role's tuned configuration against TorchServe's defaults.

    source scripts/env.sh && python scripts/bench/torchserve_tuning.py \
        [--concurrency 1,4,16,32] [--seconds 8] [--rounds 4] [--warmup 2] [--model-hidden 512] \
        [--set torchserve_workers=1]

Same model archive on both sides (the test bed's ``classifier``, tests/testbed/model: the tiny
Linear(4->2) the tests serve, or with ``--model-hidden H`` an MLP 4-H-H-H-2 whose forward pass costs
about a millisecond at H=512, like a small real model), same machine, one run: two
TorchServe 0.12 instances on 127.0.0.1 (bounded lifetime, stopped by PID at the end), both up for
the whole run. At each concurrency both are warmed up, then measured in ``--rounds`` alternating
slices (default, tuned, tuned, default, default, tuned...) of ``seconds / rounds`` each, so a change
of the (shared) machine's load during the run hits both sides alike. Closed-loop clients on
keep-alive connections, each cycling through 64 different inputs; every answer is compared, byte
for byte, with the answer the default server (batch size 1) gave to that input alone before the
load: a batched answer that differs is counted (``wrong``) and makes the run fail.

- ``default``: TorchServe's own defaults. Only what every instance here needs is set: addresses and
  ports on 127.0.0.1, the model store, ``metrics_mode=prometheus`` and the handler's metrics config,
  token authorization off (an auth header is not tuning). The model is loaded with TorchServe's
  defaults (batch size 1, no batch delay, workers = number of CPUs).
- ``tuned``: ``roles/torchserve/templates/config.properties.j2`` rendered with the role's defaults
  (``roles/torchserve/defaults/main.yml``: batch size, batch delay, workers, netty threads, queue,
  system metrics, JVM options), exactly what the init container writes in a pod; only the addresses
  differ. Plus the container's OMP_NUM_THREADS/MKL_NUM_THREADS as the role sets them
  (``torchserve_torch_threads``, 0 = CPU limit / workers) for a pod whose limit is this machine's CPUs.

``--same-threads`` is an ablation: the default side gets the tuned side's thread count too (so it is
no longer TorchServe's defaults), which isolates what config.properties and batching do.

``--set key=value`` (repeatable) overrides one of the role's defaults on the tuned side, to explore
(e.g. ``--set torchserve_workers=1``); the figures in docs/serving.md are without it.

Printed: throughput (requests/s) and p50/p95/p99 latency per concurrency for both, the ratios
tuned/default, whether the target (>= 2x throughput at equal or better p95) is met at each
concurrency, and the verdict at the highest one (exit 0 when met there and every answer was right,
1 otherwise: the figures are printed either way). Results also go to
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
# 64 different inputs (deterministic), so a batch mixes requests whose answers differ
PAYLOADS = [json.dumps([round(((i * 37 + k * 11) % 97) / 9.7 - 5.0, 3) for k in range(4)]).encode()
            for i in range(64)]


def tuned_properties(ports, store, overrides=None):
    """The role's config.properties with its defaults (as the pod's init container renders it)."""
    defaults = dict(yaml.safe_load((ROLE / "defaults" / "main.yml").read_text()), **(overrides or {}))
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True)
    # Ansible's bool filter (the template uses it), for a plain Jinja environment
    env.filters["bool"] = lambda v: v if isinstance(v, bool) else str(v).strip().lower() in ("yes", "on", "1", "true", "y")
    tpl = env.from_string((ROLE / "templates" / "config.properties.j2").read_text())
    params = dict(defaults, torchserve_model=MODEL, _torchserve_bind="127.0.0.1", _torchserve_ports=ports,
                  _torchserve_model_store_dir=str(store), _torchserve_metrics_config=str(METRICS_CONFIG))
    return tpl.render(**params).replace("@MODEL_VERSION@", VERSION), defaults


def torch_threads(defaults, cpus):
    """torchserve_torch_threads as the role resolves it: 0 = CPU limit / workers, at least 1."""
    threads = int(defaults.get("torchserve_torch_threads", 0))
    return threads if threads > 0 else max(1, int(cpus) // max(1, int(defaults["torchserve_workers"])))


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

    def __init__(self, flavour, archive, overrides=None, **kw):
        super().__init__(name=f"torchserve-bench-{flavour}", lifetime=1800, **kw)
        self.flavour, self.archive, self.overrides = flavour, archive, overrides

    def _start(self):
        wd = self.workdir
        store, tmp, logs = wd / "model-store", wd / "tmp", wd / "logs"
        for d in (store, tmp, logs):
            d.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.archive, store / f"{MODEL}.mar")
        ports = {k: free_port() for k in ("inference", "management", "metrics", "grpc_inference", "grpc_management")}
        env = {"TMPDIR": str(tmp), "TEMP": str(tmp), "TMP": str(tmp), "LOG_LOCATION": str(logs),
               "METRICS_LOCATION": str(logs), "PYTHONUNBUFFERED": "1"}
        if self.flavour == "tuned":
            text, defaults = tuned_properties(ports, store, self.overrides)
            # the container's OMP_NUM_THREADS/MKL_NUM_THREADS as the role sets them, for a pod whose
            # CPU limit is this machine's CPUs
            threads = torch_threads(defaults, os.cpu_count())
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
            self.info["torch_threads"] = threads
        else:
            text = default_properties(ports, store)
            if self.overrides and self.overrides.get("threads"):  # --same-threads (ablation)
                env.update(OMP_NUM_THREADS=str(self.overrides["threads"]), MKL_NUM_THREADS=str(self.overrides["threads"]))
                self.info["torch_threads"] = self.overrides["threads"]
        (wd / "config.properties").write_text(text)
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


def expected_answers(addr):
    """The answer to each input sent alone (one request at a time, so a batch of one)."""
    conn = http.client.HTTPConnection(*addr, timeout=60)
    out = []
    for body in PAYLOADS:
        conn.request("POST", f"/predictions/{MODEL}", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise SystemExit(f"expected answers: HTTP {resp.status} {data[:200]!r}")
        out.append(data)
    conn.close()
    return out


def load(addr, concurrency, seconds, expected, measure=True):
    """Closed loop: ``concurrency`` clients, each on its own keep-alive connection, for ``seconds``.

    Returns the latencies (s) of the successful requests, the number of failed ones and the number
    of answers that differ from ``expected`` (counted, and not in the latencies)."""
    stop_at = time.monotonic() + seconds
    lat, counts, lock = [], {"errors": 0, "wrong": 0}, threading.Lock()

    def client(n):
        conn = http.client.HTTPConnection(*addr, timeout=60)
        mine, bad, wrong, i = [], 0, 0, n
        while True:
            t0 = time.monotonic()
            if t0 >= stop_at:
                break
            k = i % len(PAYLOADS)
            i += 1
            try:
                conn.request("POST", f"/predictions/{MODEL}", body=PAYLOADS[k],
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                ok, data = False, None
                conn.close()
                conn = http.client.HTTPConnection(*addr, timeout=60)
            t1 = time.monotonic()
            if not ok:
                bad += 1
            elif data != expected[k]:
                wrong += 1
            else:
                mine.append(t1 - t0)
        conn.close()
        with lock:
            lat.extend(mine)
            counts["errors"] += bad
            counts["wrong"] += wrong

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (lat, counts) if measure else None


def summary(lat, counts, seconds):
    lat = sorted(lat)

    def pct(p):
        return round(lat[min(len(lat) - 1, int(p / 100.0 * len(lat)))] * 1000, 2) if lat else None
    return {"requests": len(lat), "errors": counts["errors"], "wrong": counts["wrong"],
            "rps": round(len(lat) / seconds, 1), "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99)}


def measure_level(servers, c, seconds, rounds, warmup, expected):
    """Both servers at concurrency ``c``: warm-up, then alternating slices (ABBA order)."""
    for flavour in ("default", "tuned"):
        load(servers[flavour].info["inference"], c, warmup, expected, measure=False)
    acc = {f: ([], {"errors": 0, "wrong": 0}) for f in ("default", "tuned")}
    order = ("default", "tuned")
    for r in range(rounds):
        for flavour in (order if r % 2 == 0 else order[::-1]):
            lat, counts = load(servers[flavour].info["inference"], c, seconds / rounds, expected)
            acc[flavour][0].extend(lat)
            for k, v in counts.items():
                acc[flavour][1][k] += v
    return {f: summary(lat, counts, seconds) for f, (lat, counts) in acc.items()}


def verdict(ratio):
    """Target: >= 2x throughput at equal or better p95."""
    return bool(ratio["throughput"] and ratio["throughput"] >= 2.0 and ratio["p95"] is not None
                and ratio["p95"] <= 1.0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", default="1,4,16,32")
    ap.add_argument("--seconds", type=float, default=8.0, help="measured seconds per server and concurrency")
    ap.add_argument("--rounds", type=int, default=4, help="alternating slices the seconds are cut in")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per server and concurrency")
    ap.add_argument("--model-hidden", type=int, default=0, metavar="H",
                    help="serve the MLP 4-H-H-H-2 (make_model.py) instead of the tiny classifier, on both sides")
    ap.add_argument("--same-threads", action="store_true",
                    help="ablation: give the default side the tuned side's OMP_NUM_THREADS too (not TorchServe's "
                    "defaults any more: isolates config.properties and batching)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a role default on the tuned side (exploration)")
    args = ap.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # the default side must get torch's own choice
        os.environ.pop(var, None)
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("torchserve_"):
            ap.error(f"--set {item!r}: use torchserve_<name>=<value>")
        overrides[key] = yaml.safe_load(value)
    archive = Path(model_build.build_archive(VERSION, model_name=MODEL, hidden=args.model_hidden))
    servers = {}
    results = {"machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}, "overrides": overrides,
               "model": {"archive": archive.name, "hidden": args.model_hidden},
               "same_threads": args.same_threads, "levels": {}}
    try:
        same = {"threads": torch_threads(dict(yaml.safe_load((ROLE / "defaults" / "main.yml").read_text()),
                                              **overrides), os.cpu_count())} if args.same_threads else None
        servers["default"] = BenchTorchServe("default", archive, same).start()
        servers["tuned"] = BenchTorchServe("tuned", archive, overrides).start()
        for flavour, srv in servers.items():
            print(f"{flavour}: started in {srv.info['startup_seconds']} s, model {srv.info['model']}, "
                  f"torch threads {srv.info.get('torch_threads', 'torch default')}", flush=True)
        expected = expected_answers(servers["default"].info["inference"])
        for c in levels:
            row = measure_level(servers, c, args.seconds, args.rounds, args.warmup, expected)
            d, t = row["default"], row["tuned"]
            row["ratio"] = {
                "throughput": round(t["rps"] / d["rps"], 2) if d["rps"] else None,
                "p95": round(t["p95_ms"] / d["p95_ms"], 2) if d["p95_ms"] and t["p95_ms"] else None,
                "p99": round(t["p99_ms"] / d["p99_ms"], 2) if d["p99_ms"] and t["p99_ms"] else None,
            }
            row["target_met"] = verdict(row["ratio"])
            row["loadavg"] = os.getloadavg()[0]
            results["levels"][c] = row
            print(f"c={c:>3}  default {d['rps']:>7} rps p95 {d['p95_ms']} p99 {d['p99_ms']} ms "
                  f"err {d['errors']} wrong {d['wrong']} | tuned {t['rps']:>7} rps p95 {t['p95_ms']} "
                  f"p99 {t['p99_ms']} ms err {t['errors']} wrong {t['wrong']} | tuned/default: "
                  f"throughput x{row['ratio']['throughput']}, p95 x{row['ratio']['p95']}, "
                  f"p99 x{row['ratio']['p99']} | target met: {row['target_met']} | "
                  f"load {row['loadavg']:.1f}", flush=True)
    finally:
        for s in servers.values():
            s.stop()
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["models"] = {f: s.info.get("model") for f, s in servers.items()}
    wrong = sum(r[f]["wrong"] for r in results["levels"].values() for f in ("default", "tuned"))
    met = results["levels"][max(levels)]["target_met"]
    results["wrong_answers"], results["target_met"] = wrong, met
    out = CACHE / "bench" / "torchserve_tuning.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"load average {results['machine']['loadavg_start']} -> {results['machine']['loadavg_end']}; {out}")
    print(f"answers differing from the unbatched answer: {wrong}")
    print(f"target (>= 2x throughput at equal or better p95) met at c={max(levels)}: {met} "
          f"(met at c={[c for c, r in results['levels'].items() if r['target_met']]})")
    return 0 if met and not wrong else 1


if __name__ == "__main__":
    sys.exit(main())
