"""Prometheus test-bed component: the real Prometheus binary on 127.0.0.1, generated config.

    prom = Prometheus(targets=["127.0.0.1:8082", {"target": "127.0.0.1:9000",
                                                   "labels": {"version": "2.0"}}]).start()
    prom.wait_for_series('gpuops_requests_total{ModelVersion="2.0"}', timeout=30)
    prom.query('sum by (ModelVersion) (gpuops_errors_total)')  # -> [{"metric": {...}, "value": 3.0}]
    prom.kill()   # SIGKILL by PID: simulate Prometheus dying mid-rollout
    prom.restart()  # same port, same TSDB

Binary: $GPUOPS_CACHE/bin/prometheus or Debian's /usr/bin/prometheus (package ``prometheus``).
The config (prometheus.yml) and the TSDB live in the component's work dir.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Dict, Iterable, List, Optional, Union

from tests.testbed.common import Component, TestbedError, free_port, require_binary, wait_for

Target = Union[str, Dict[str, object]]

_TARGET_KEYS = {"target", "targets", "labels", "job", "metrics_path", "scheme"}


def _http_json(url: str, data: Optional[bytes] = None, timeout: float = 10.0) -> dict:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if data is not None:
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read().decode())
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        try:
            return json.loads(body)
        except ValueError:
            raise TestbedError(f"{url}: HTTP {exc.code}: {body[:500]}") from exc


def scrape_configs(targets: Iterable[Target], scrape_interval: str, job: str = "testbed") -> List[dict]:
    """Group targets into scrape_configs, one per (job, metrics_path, scheme).

    A target is ``"host:port"`` or a dict with ``target`` (or ``targets``: list), optional
    ``labels`` (dict), ``job``, ``metrics_path`` (default /metrics) and ``scheme`` (default http).
    """
    groups: Dict[tuple, dict] = {}
    for t in targets:
        if isinstance(t, str):
            t = {"target": t}
        if not isinstance(t, dict):
            raise ValueError(f"scrape target {t!r}: use 'host:port' or a dict with 'target'")
        unknown = set(t) - _TARGET_KEYS
        if unknown:
            raise ValueError(f"scrape target {t!r}: unknown keys {sorted(unknown)}; "
                             f"allowed: {sorted(_TARGET_KEYS)}")
        addrs = list(t.get("targets") or []) + ([t["target"]] if t.get("target") else [])
        if not addrs:
            raise ValueError(f"scrape target {t!r} names no 'target'")
        key = (str(t.get("job", job)), str(t.get("metrics_path", "/metrics")), str(t.get("scheme", "http")))
        sc = groups.setdefault(key, {
            "job_name": key[0], "metrics_path": key[1], "scheme": key[2],
            "scrape_interval": scrape_interval, "scrape_timeout": scrape_interval,
            "static_configs": []})
        static = {"targets": [str(a) for a in addrs]}
        if t.get("labels"):
            static["labels"] = {str(k): str(v) for k, v in dict(t["labels"]).items()}
        sc["static_configs"].append(static)
    # several groups may share a job name: Prometheus needs unique job_name values
    seen: Dict[str, int] = {}
    for sc in groups.values():
        n = seen.get(sc["job_name"], 0)
        seen[sc["job_name"]] = n + 1
        if n:
            sc["job_name"] = f"{sc['job_name']}-{n}"
    return list(groups.values())


class Prometheus(Component):
    """Real Prometheus scraping ``targets`` every ``scrape_interval``.

    kwargs: targets (list of 'host:port' or dicts, see scrape_configs), scrape_interval ("1s"),
    evaluation_interval ("1s"), retention ("2h"), rule_files (list of paths, optional),
    startup_timeout (seconds), plus Component's name/workdir/lifetime.
    info: url, port, config, tsdb, pid.
    """

    kind = "prometheus"

    def __init__(self, targets: Optional[Iterable[Target]] = None, scrape_interval: str = "1s",
                 evaluation_interval: str = "1s", retention: str = "2h",
                 rule_files: Optional[List[str]] = None, startup_timeout: float = 60.0, **kwargs):
        super().__init__(**kwargs)
        self.targets: List[Target] = list(targets or [])
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.retention = retention
        self.rule_files = list(rule_files or [])
        self.startup_timeout = startup_timeout
        self.port: Optional[int] = None
        self.killed = False

    # -- config -------------------------------------------------------------
    def render_config(self) -> dict:
        cfg = {
            "global": {"scrape_interval": self.scrape_interval,
                       "evaluation_interval": self.evaluation_interval,
                       "external_labels": {"testbed": self.name}},
            "scrape_configs": scrape_configs(self.targets, self.scrape_interval),
        }
        if self.rule_files:
            cfg["rule_files"] = [str(r) for r in self.rule_files]
        return cfg

    def write_config(self) -> None:
        path = self.workdir / "prometheus.yml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.render_config(), indent=2) + "\n")  # JSON is valid YAML
        os.replace(tmp, path)

    # -- lifecycle ----------------------------------------------------------
    def _start(self) -> None:
        binary = require_binary("prometheus", hint="apt-get install prometheus (scripts/setup base)")
        if self.port is None:  # a restart keeps its port, so scrapers/clients keep working
            self.port = free_port()
        tsdb = self.workdir / "data"
        tsdb.mkdir(parents=True, exist_ok=True)
        self.write_config()
        argv = [binary,
                f"--config.file={self.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={tsdb}",
                f"--storage.tsdb.retention.time={self.retention}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--log.level=info"]
        proc = self.spawn("prometheus", argv)
        url = f"http://127.0.0.1:{self.port}"
        self.info.update({"url": url, "port": self.port, "config": str(self.workdir / "prometheus.yml"),
                          "tsdb": str(tsdb), "pid": proc.pid, "binary": binary})
        wait_for(lambda: self._ready(), self.startup_timeout, "prometheus /-/ready", procs=[proc])
        self.killed = False

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
            return resp.status == 200

    @property
    def url(self) -> str:
        return str(self.info["url"])

    def kill(self) -> None:
        """SIGKILL Prometheus by PID (no clean shutdown): simulates it dying mid-rollout."""
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                p.popen.wait(timeout=10)
            except Exception:  # noqa: BLE001 - best effort reap
                pass
        self.killed = True
        self.info["killed"] = True

    def restart(self) -> "Prometheus":
        """Start again on the same port with the same TSDB (after kill() or stop())."""
        self.stop()
        self.info.pop("killed", None)
        return self.start()  # type: ignore[return-value]

    def set_targets(self, targets: Iterable[Target]) -> None:
        """Replace the scrape targets and hot-reload the running server (/-/reload)."""
        self.targets = list(targets)
        self.write_config()
        req = urllib.request.Request(f"{self.url}/-/reload", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            if resp.status != 200:
                raise TestbedError(f"prometheus reload failed: HTTP {resp.status}")

    # -- HTTP API -----------------------------------------------------------
    def query(self, promql: str, at: Optional[float] = None) -> List[dict]:
        """Instant query. Returns [{"metric": {labels}, "value": float, "timestamp": float}, ...]."""
        params = {"query": promql}
        if at is not None:
            params["time"] = str(at)
        body = _http_json(f"{self.url}/api/v1/query", data=urllib.parse.urlencode(params).encode())
        if body.get("status") != "success":
            raise TestbedError(f"query {promql!r} failed: {body.get('errorType')}: {body.get('error')}")
        data = body["data"]
        rtype, result = data["resultType"], data["result"]
        if rtype in ("scalar", "string"):
            return [{"metric": {}, "value": float(result[1]), "timestamp": float(result[0])}]
        if rtype == "matrix":
            return [{"metric": r["metric"], "values": [(float(t), float(v)) for t, v in r["values"]]}
                    for r in result]
        return [{"metric": r["metric"], "value": float(r["value"][1]), "timestamp": float(r["value"][0])}
                for r in result]

    def query_value(self, promql: str) -> Optional[float]:
        """The single value of an instant query, None when it returns no series."""
        res = self.query(promql)
        if len(res) > 1:
            raise TestbedError(f"query {promql!r} returned {len(res)} series, expected at most one: {res}")
        return res[0]["value"] if res else None

    def wait_for_series(self, promql: str, timeout: float = 60.0,
                        predicate: Optional[Callable[[List[dict]], bool]] = None) -> List[dict]:
        """Poll ``promql`` until it returns series (and ``predicate(result)`` holds); return them."""
        last: List[List[dict]] = []

        def check() -> bool:
            last[:] = [self.query(promql)]
            return bool(last[0]) and (predicate is None or predicate(last[0]))
        try:
            wait_for(check, timeout, f"prometheus series {promql!r}", interval=0.5, procs=self.procs)
        except TestbedError as exc:
            raise TestbedError(f"{exc}\nlast result: {last[0] if last else 'none'}") from None
        return last[0]

    def targets_status(self) -> List[dict]:
        """Active scrape targets with their health ('up'/'down'/'unknown') and last error."""
        body = _http_json(f"{self.url}/api/v1/targets?state=active")
        return [{"scrapeUrl": t["scrapeUrl"], "health": t["health"], "lastError": t.get("lastError", ""),
                 "labels": t.get("labels", {})} for t in body["data"]["activeTargets"]]

    def wait_for_targets_up(self, timeout: float = 60.0) -> List[dict]:
        """Wait until every configured target has been scraped successfully."""
        res: List[List[dict]] = []

        def check() -> bool:
            ts = self.targets_status()
            res[:] = [ts]
            return bool(ts) and all(t["health"] == "up" for t in ts)
        wait_for(check, timeout, "all prometheus targets up", interval=0.5, procs=self.procs)
        return res[0]
