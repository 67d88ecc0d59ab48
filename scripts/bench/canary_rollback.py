#!/usr/bin/env python3
"""Canary rollback benchmark on the test bed: how fast does a fault roll back, and do healthy
releases ever roll back by mistake?

    source scripts/env.sh && nice -n 10 python scripts/bench/canary_rollback.py [--interval 2] \
        [--threshold 2] [--faulty-runs 5] [--healthy-runs 5] [--fail-rate 0.5]

Starts its own test bed (kube-apiserver + kwok, TorchServe, Prometheus scraping every second) from
tests/testbed, all on 127.0.0.1 with a bounded lifetime, stopped by PID at the end.
For each run the canary_rollout engine (the module's own wiring, ``build_rollout``, in-process) drives a
fresh VirtualService while ``canary_support.LoadGenerator`` plays the mesh (no Envoy here: it reads the
weights from the apiserver and sends each TorchServe version its share).

- faulty runs: the canary version is healthy until the canary weight reaches ``--fault-at`` %, then the
  handler starts failing ``--fail-rate`` of its requests (``TorchServe.set_faults``, no reload). Measured:
  fault onset -> the moment an independent watcher sees the VirtualService at 100 % stable.
- healthy runs: a healthy canary all the way; any rollback is a false rollback.

Target (exit 0 when met, with no false rollback and no missed fault): fault onset -> 100 % stable within
``threshold x interval`` plus one query and one write (the slowest measured), what the settings allow:
the fault is seen at the next tick, and the check that reaches the threshold rolls back in its iteration.
Printed next to Flagger at the same settings: Flagger counts one failed check per interval and rolls
back at the tick after the failed checks reach the threshold, i.e. ``threshold x interval`` after the
first failed check (plus the wait for that first check).
Results also go to $GPUOPS_CACHE/bench/canary_rollback.json.
"""

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def params_for(spec, **values):
    """Module parameters as AnsibleModule would give them: every option, defaults applied."""
    p = {}
    for name, opt in spec.items():
        p[name] = opt.get("default")
    p.update(values)
    return p


class Watcher(threading.Thread):
    """Polls the VirtualService every 50 ms and records when the canary weight changes."""

    def __init__(self, client, ns, name):
        super().__init__(daemon=True)
        self.client, self.ns, self.name = client, ns, name
        self.events = []
        self.stop_evt = threading.Event()

    def run(self):
        from tests.integration import canary_support as cs
        last = None
        self.errors = []
        while not self.stop_evt.is_set():
            try:
                w = cs.read_weights(self.client, self.ns, self.name)["canary"]
            except Exception as exc:  # a failed poll is reported, it must not end the watch
                self.errors.append(repr(exc))
                self.stop_evt.wait(0.05)
                continue
            if w != last:
                self.events.append((time.time(), w))
                last = w
            self.stop_evt.wait(0.05)
        # one last look: the rollout's final write happened before stop() (upper bound, +1 poll)
        try:
            w = cs.read_weights(self.client, self.ns, self.name)["canary"]
            if w != last:
                self.events.append((time.time(), w))
        except Exception as exc:
            self.errors.append(repr(exc))


def rollback_target(threshold, interval, faulty_rows):
    """The rollback time the settings allow: the fault shows at the next tick at the latest (one
    interval), then ``threshold - 1`` more failed checks one interval apart, the last of which rolls
    back in the same iteration: ``threshold x interval``, plus that iteration's query and write (the
    slowest of each seen in the faulty runs)."""
    query_s = max([r.get("query_s_max", 0.0) for r in faulty_rows] or [0.0])
    write_s = max([r.get("write_s_max", 0.0) for r in faulty_rows] or [0.0])
    return {"target_s": round(threshold * interval + query_s + write_s, 3), "query_s": query_s, "write_s": write_s}


def one_run(bed, idx, args, faulty):
    from ansible_collections.gpuops.cluster.plugins.modules import canary_rollout as mod
    from tests.integration import canary_support as cs
    k8s, ts, prom, client = bed
    app = "bench-%s-%d" % ("f" if faulty else "h", idx)
    version = "9%d.%d" % (1 if faulty else 2, idx)
    ns = k8s.fresh_namespace("bench")
    cs.apply_all(client, ns, cs.canary_objects(app, "90.0", version, canary_replicas=0))
    ts.register(version)
    success = {"name": "success-rate", "template": "torchserve-success-rate",
               "threshold_range": {"min": args.min_success}, "min_request_volume": 1}
    params = params_for(mod.argument_spec(), kubeconfig=k8s.kubeconfig, namespace=ns, virtual_service=app,
                        revision=version, stable_deployment=app + "-stable", canary_deployment=app + "-canary",
                        model="classifier", prometheus_url=prom.url, interval=args.interval,
                        threshold=args.threshold, step_weight=args.step_weight, max_weight=args.max_weight,
                        progress_deadline=120, metrics_interval=args.metrics_interval, checks=[success],
                        on_no_data=args.on_no_data)
    rollout, _checks = mod.build_rollout(params, client, emit=None)
    timings = {"query": [], "save": []}

    def timed(fn, key):
        def call(*a, **kw):
            t = time.monotonic()
            try:
                return fn(*a, **kw)
            finally:
                timings[key].append(time.monotonic() - t)
        return call
    # one query = one gate evaluation (every check's PromQL); one write = the state save (the read that
    # checks for another run's rollback, then the VirtualService write)
    rollout.gate = timed(rollout.gate, "query")
    rollout._save = timed(rollout._save, "save")
    load = cs.LoadGenerator(client, ns, app, lambda v: ts.predict(v, timeout=30)[0] < 500, rps=args.rps)
    watcher = Watcher(client, ns, app)
    result, fault_at = {}, {}

    def injector():
        while "status" not in result:
            if cs.read_weights(client, ns, app)["canary"] >= args.fault_at:
                ts.set_faults(version, fail_rate=args.fail_rate)
                fault_at["t"] = time.time()
                return
            time.sleep(0.05)

    load.start()
    watcher.start()
    inj = threading.Thread(target=injector, daemon=True) if faulty else None
    try:
        if inj:
            inj.start()
        result.update(rollout.run())
    finally:
        watcher.stop_evt.set()
        watcher.join(5)
        load.stop()
        if faulty:
            ts.set_faults(version)
    row = {"run": idx, "faulty": faulty, "status": result["status"], "reason": result["reason"],
           "failed_checks": result["failed_checks"], "duration_s": result["duration"]}
    row["watch_errors"] = len(getattr(watcher, "errors", []))
    row["query_s_max"] = round(max(timings["query"]), 3) if timings["query"] else 0.0
    row["write_s_max"] = round(max(timings["save"]), 3) if timings["save"] else 0.0
    if faulty and "t" not in fault_at:
        row["note"] = "fault never injected (canary never reached --fault-at)"
    if faulty and "t" in fault_at:
        back = [t for t, w in watcher.events if w == 0 and t > fault_at["t"]]
        if back:
            row["fault_to_stable_s"] = round(back[0] - fault_at["t"], 3)
            row["fault_to_stable_intervals"] = round(row["fault_to_stable_s"] / args.interval, 2)
        else:
            row["note"] = "watcher saw no return to 0 after the fault: %s" % watcher.events[-3:]
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--threshold", type=int, default=2)
    ap.add_argument("--step-weight", type=int, default=10)
    ap.add_argument("--max-weight", type=int, default=50)
    ap.add_argument("--metrics-interval", default="4s")
    ap.add_argument("--min-success", type=float, default=95.0)
    ap.add_argument("--on-no-data", default="hold", choices=["fail", "hold", "pass"],
                    help="hold: a canary that just got its first requests has no samples for 1-2 short "
                         "intervals; fail (Flagger's default) would count those as failed checks")
    ap.add_argument("--fault-at", type=int, default=20)
    ap.add_argument("--fail-rate", type=float, default=0.5)
    ap.add_argument("--rps", type=float, default=20.0)
    ap.add_argument("--faulty-runs", type=int, default=5)
    ap.add_argument("--healthy-runs", type=int, default=5)
    args = ap.parse_args()

    from tests.testbed.k8s import KubeCluster
    from tests.testbed.prometheus import Prometheus
    from tests.testbed.torchserve import TorchServe

    comps = []
    t0 = time.time()
    try:
        k8s = KubeCluster(name="bench-k8s", lifetime=3600, gpu_nodes=2).start()
        comps.append(k8s)
        ts = TorchServe(name="bench-torchserve", lifetime=3600).start()
        comps.append(ts)
        ts.register("90.0")
        ts.set_default("90.0")
        prom = Prometheus(name="bench-prometheus", lifetime=3600, targets=[ts.info["metrics_target"]],
                          scrape_interval="1s").start()
        comps.append(prom)
        client = k8s.api_client()
        bed = (k8s, ts, prom, client)
        setup_s = round(time.time() - t0, 1)
        rows = []
        for i in range(args.faulty_runs):
            rows.append(one_run(bed, i, args, faulty=True))
            print(json.dumps(rows[-1]), flush=True)
        for i in range(args.healthy_runs):
            rows.append(one_run(bed, i, args, faulty=False))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        for c in reversed(comps):
            c.stop()
            c.cleanup(keep_logs=False)

    faulty = [r for r in rows if r["faulty"]]
    healthy = [r for r in rows if not r["faulty"]]
    times = [r["fault_to_stable_s"] for r in faulty if "fault_to_stable_s" in r]
    missed = [r for r in faulty if r["status"] != "rolled_back"]
    false_rb = [r for r in healthy if r["status"] != "promoted"]
    flagger = args.threshold * args.interval
    target = rollback_target(args.threshold, args.interval, faulty)
    summary = {
        "settings": vars(args), "testbed_setup_s": setup_s,
        "fault_to_stable_s": {"min": min(times), "median": statistics.median(times), "max": max(times)}
        if times else None,
        "fault_to_stable_intervals_max": round(max(times) / args.interval, 2) if times else None,
        "faults_not_rolled_back": len(missed), "false_rollbacks": len(false_rb), "healthy_runs": len(healthy),
        "flagger_threshold_x_interval_s": flagger,
        "flagger_worst_case_s": flagger + args.interval,
        "target_s": target["target_s"], "query_s_max": target["query_s"], "write_s_max": target["write_s"],
        "target_met": bool(times) and max(times) <= target["target_s"] and not false_rb and not missed,
        "runs": rows,
    }
    out = Path(os.environ.get("GPUOPS_CACHE", str(Path.home() / ".cache" / "gpuops"))) / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "canary_rollback.json").write_text(json.dumps(summary, indent=2))
    print()
    print("settings: interval %ss, threshold %d, step %d%%, max %d%%, window %s, on_no_data %s, "
          "fault %.0f%% 5xx at %d%% canary" % (args.interval, args.threshold, args.step_weight, args.max_weight,
                                                args.metrics_interval, args.on_no_data, args.fail_rate * 100,
                                                args.fault_at))
    if times:
        print("fault onset -> 100%% stable: min %.2fs  median %.2fs  max %.2fs  (max %.2f intervals)"
              % (min(times), statistics.median(times), max(times), max(times) / args.interval))
    print("target: threshold x interval + one query + one write = %d x %.1fs + %.3fs + %.3fs = %.2fs"
          % (args.threshold, args.interval, target["query_s"], target["write_s"], target["target_s"]))
    print("Flagger at the same settings: threshold x interval = %.1fs after the first failed check, "
          "rollback at the next tick: up to %.1fs" % (flagger, flagger + args.interval))
    print("faults not rolled back: %d/%d   false rollbacks: %d/%d healthy runs"
          % (len(missed), len(faulty), len(false_rb), len(healthy)))
    print("target met: %s   (details: %s)" % (summary["target_met"], out / "canary_rollback.json"))
    return 0 if summary["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
