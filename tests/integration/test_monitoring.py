"""monitoring role: its rule files, their promtool tests, its Grafana dashboards and the role itself.

- every rule file passes ``promtool check rules``; the ``promtool test rules`` cases in
  tests/integration/monitoring/ pass, give every alert a case where it fires and one where it stays
  silent, and FAIL when the alert expressions are broken (each alert replaced by one that never fires:
  every alert must show up among the failures);
- the rules and every dashboard query run on a real Prometheus (Debian's) scraping the test bed's
  real TorchServe 0.12 (shared session fixtures): every rule evaluates without error, every panel
  and variable query parses and evaluates; the TorchServe-based ones return data after a few
  requests, the ones that need DCGM, Istio or kube-state-metrics series return empty results
  (no GPU, no Envoy, no kube-state-metrics here);
- the role on the real kube-apiserver + kwok test bed: kube-prometheus-stack installed from the
  chart bundle through helm_release, monitors/rules/dashboards accepted by the real CRD schemas,
  a second run and check mode change nothing, removed files are pruned, the Grafana password never
  shows in any output. kwok runs no containers: Prometheus, Grafana and the operator never start.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from tests.testbed.common import SHARED, require_binary

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "monitoring"
RULE_FILES = sorted((ROLE / "files" / "rules").glob("*.rules.yml"))
PROMTOOL_TESTS = sorted((Path(__file__).parent / "monitoring").glob("*.test.yml"))
DASHBOARDS = sorted((ROLE / "files" / "dashboards").glob("*.json"))
MODEL = "classifier"
VERSION = "81.0"  # this module's own version on the shared TorchServe
# series the test bed cannot have: DCGM (no GPU), Istio (no Envoy), kube-state-metrics, and the
# recording rules built on them
EXTERNAL = re.compile(r"\b(DCGM_\w+|istio_\w+|kube_\w+|node:dcgm_\w+|workload_version:istio_\w+)")
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}


def promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        pytest.fail("promtool not found: apt-get install prometheus (scripts/setup base)")
    return path


def alerts_of(rule_file: Path) -> list:
    doc = yaml.safe_load(rule_file.read_text())
    return [r["alert"] for g in doc["groups"] for r in g["rules"] if "alert" in r]


ALL_ALERTS = [(f.name, a) for f in RULE_FILES for a in alerts_of(f)]


def test_rule_and_test_files_exist():
    assert {f.name for f in RULE_FILES} == {"serving-slo.rules.yml", "serving.rules.yml", "gpu.rules.yml"}
    assert len(PROMTOOL_TESTS) == 3 and len(DASHBOARDS) == 3
    assert len(ALL_ALERTS) == 17, ALL_ALERTS


@pytest.mark.parametrize("rule_file", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules(rule_file):
    res = subprocess.run([promtool(), "check", "rules", str(rule_file)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_promtool_test_rules_pass():
    res = subprocess.run([promtool(), "test", "rules"] + [str(t) for t in PROMTOOL_TESTS], capture_output=True,
                         text=True, timeout=300, check=False, cwd=str(PROMTOOL_TESTS[0].parent))
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert res.stdout.count("SUCCESS") == len(PROMTOOL_TESTS), res.stdout


def _cases():
    """(test file, rule files it loads, {alertname: [exp_alerts lists]})."""
    out = []
    for t in PROMTOOL_TESTS:
        doc = yaml.safe_load(t.read_text())
        rules = [(t.parent / r).resolve() for r in doc["rule_files"]]
        by_alert: dict = {}
        for case in doc["tests"]:
            for a in case.get("alert_rule_test", []):
                by_alert.setdefault(a["alertname"], []).append(a.get("exp_alerts") or [])
        out.append((t, rules, by_alert))
    return out


def test_every_alert_has_a_firing_and_a_silent_case():
    seen: dict = {}
    loaded = set()
    for _t, rules, by_alert in _cases():
        loaded.update(rules)
        for name, exps in by_alert.items():
            seen.setdefault(name, []).extend(exps)
    assert loaded == {f.resolve() for f in RULE_FILES}, "every rule file has promtool tests"
    for _file, alert in ALL_ALERTS:
        assert alert in seen, f"{alert}: no promtool test case"
        assert any(exps for exps in seen[alert]), f"{alert}: no case where it fires"
        assert any(not exps for exps in seen[alert]), f"{alert}: no case where it stays silent"


def test_broken_alert_expressions_fail_their_promtool_tests(tmp_path):
    """Replace every alert expression with one that never fires: each alert's firing cases must fail."""
    for t, rules, by_alert in _cases():
        mutated = []
        for r in rules:
            doc = yaml.safe_load(r.read_text())
            for g in doc["groups"]:
                for rule in g["rules"]:
                    if "alert" in rule:
                        rule["expr"] = "vector(1) < 0"
            out = tmp_path / f"{t.stem}-{r.name}"
            out.write_text(yaml.safe_dump(doc))
            mutated.append(str(out))
        test_doc = yaml.safe_load(t.read_text())
        test_doc["rule_files"] = mutated
        broken = tmp_path / t.name
        broken.write_text(yaml.safe_dump(test_doc))
        res = subprocess.run([promtool(), "test", "rules", str(broken)], capture_output=True, text=True,
                             timeout=300, check=False, cwd=str(tmp_path))
        assert res.returncode != 0, f"{t.name}: promtool passed with every alert broken:\n{res.stdout}"
        failed = set(re.findall(r"alertname: (\w+),", res.stdout + res.stderr))
        expected = {name for name, exps in by_alert.items() if any(exps)}
        assert expected <= failed, f"{t.name}: alerts whose breakage no case noticed: {sorted(expected - failed)}"


# -- dashboards: static checks ----------------------------------------------------------------------
def _panels(board: dict) -> list:
    out = []
    for p in board["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return [p for p in out if p.get("type") != "row"]


def _variables(board: dict) -> dict:
    return {v["name"]: v for v in board["templating"]["list"]}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_json_is_consistent(path):
    board = json.loads(path.read_text())
    assert board["uid"].startswith("gpuops-") and board["title"].startswith("gpuops / ")
    variables = _variables(board)
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = _panels(board)
    assert len(panels) >= 6
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for p in panels:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        assert 0 <= p["gridPos"]["x"] and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            used = set(re.findall(r"\$(\w+)", t["expr"]))
            unknown = used - set(variables) - set(GRAFANA_BUILTINS)
            assert not unknown, f"{path.name} / {p['title']}: undefined variables {unknown}"


def test_dashboard_uids_are_unique():
    uids = [json.loads(p.read_text())["uid"] for p in DASHBOARDS]
    assert len(uids) == len(set(uids))


# -- rules and dashboards on a real Prometheus scraping the real TorchServe ---------------------------
def _query_range(prom, expr: str, seconds: int = 90, step: int = 3) -> dict:
    end = time.time()
    data = urllib.parse.urlencode({"query": expr, "start": end - seconds, "end": end, "step": step}).encode()
    req = urllib.request.Request(f"{prom.url}/api/v1/query_range", data=data, method="POST")
    req.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read().decode())
    except urllib.error.HTTPError as exc:  # a parse error answers 400 with a JSON body
        return json.loads(exc.read().decode())


def _finite(result: list) -> bool:
    return any(not math.isnan(float(v)) for series in result for _t, v in series["values"])


def _substitute(expr: str, variables: dict) -> str:
    def value(m):
        name = m.group(1)
        if name in GRAFANA_BUILTINS:
            return GRAFANA_BUILTINS[name]
        if name == "interval":
            return "1m"
        return ".*"  # "All" of a query variable (allValue)
    out = re.sub(r"\$(\w+)", value, expr)
    assert "$" not in out, out
    return out


def _send(ts, prom, n: int) -> None:
    """n requests to this module's version, then wait until Prometheus scraped all of them."""
    sel = f'gpuops_requests_total{{model_name="{MODEL}",model_version="{VERSION}"}}'
    before = prom.query_value(f"sum({sel})") or 0.0
    assert all(ts.predict(VERSION)[0] == 200 for _ in range(n))
    prom.wait_for_series(f"sum({sel}) >= {before + n}", timeout=60)


@pytest.fixture(scope="module")
def monitoring_bed(torchserve, prometheus_factory):
    """The shared TorchServe with one healthy version of our own, a Prometheus scraping it every
    second as job "torchserve" (the role's PodMonitor's job name) with the role's rule files loaded."""
    ts = torchserve
    ts.register(VERSION)
    prom = prometheus_factory(targets=[{"target": ts.info["metrics_target"], "job": "torchserve"}],
                              rule_files=[str(f) for f in RULE_FILES])
    prom.wait_for_series(f'gpuops_requests_total{{model_version="{VERSION}"}}', timeout=60)
    # the histogram's series appear with a version's first request: let Prometheus see them before the rest
    assert ts.predict(VERSION)[0] == 200
    prom.wait_for_series(f'gpuops_latency_seconds_bucket{{model_version="{VERSION}"}}', timeout=60)
    _send(ts, prom, 10)
    prom.wait_for_series(f'ts_inference_requests_total{{model_version="{VERSION}"}}', timeout=60)
    # the recording rules have run on the scraped requests (the p95 needs two samples of the buckets)
    prom.wait_for_series(f'model_version:gpuops_latency_seconds:p95_rate5m{{model_version="{VERSION}"}} > 0', timeout=60)
    return ts, prom


@pytest.mark.integration
def test_rules_evaluate_without_error_on_real_series(monitoring_bed):
    ts, prom = monitoring_bed
    # the SLI of our model exists and our healthy version has no errors
    ratio = prom.query(f'model_version:gpuops_request_errors:ratio_rate5m{{model_version="{VERSION}"}}')
    assert ratio and ratio[0]["value"] == 0.0, ratio
    assert prom.query(f'model:gpuops_request_errors:ratio_rate1h{{model_name="{MODEL}"}}')
    p95 = prom.query_value(f'model_version:gpuops_latency_seconds:p95_rate5m{{model_version="{VERSION}"}}')
    assert 0 < p95 < 10, p95
    with urllib.request.urlopen(f"{prom.url}/api/v1/rules", timeout=10) as resp:
        groups = json.loads(resp.read().decode())["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    loaded = {r["name"] for r in rules}
    assert {a for _f, a in ALL_ALERTS} <= loaded
    bad = [(r["name"], r.get("lastError")) for r in rules if r.get("health") != "ok"]
    assert not bad, bad
    # nothing about our healthy version fires
    assert not prom.query(f'ALERTS{{model_version="{VERSION}"}}')


@pytest.mark.integration
def test_dashboard_queries_evaluate_on_real_prometheus(monitoring_bed):
    ts, prom = monitoring_bed
    # the path below does report a query that does not parse
    assert _query_range(prom, "sum(rate(gpuops_requests_total[1m])")["status"] == "error"
    _send(ts, prom, 5)
    problems, with_data, empty = [], 0, 0
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        variables = _variables(board)
        for p in _panels(board):
            for t in p["targets"]:
                expr = _substitute(t["expr"], variables)
                body = _query_range(prom, expr)
                where = f"{path.name} / {p['title']} / {t['refId']}: {expr}"
                if body.get("status") != "success":
                    problems.append(f"{where}: {body.get('errorType')}: {body.get('error')}")
                    continue
                result = body["data"]["result"]
                if EXTERNAL.search(t["expr"]):
                    # DCGM / Istio / kube-state-metrics: parses and evaluates, nothing to show here
                    if result:
                        problems.append(f"{where}: expected no series on the test bed, got {result[:2]}")
                    empty += 1
                elif not _finite(result):
                    problems.append(f"{where}: no data from TorchServe: {result[:2]}")
                else:
                    with_data += 1
    assert not problems, "\n".join(problems)
    assert with_data >= 12 and empty >= 12, (with_data, empty)


@pytest.mark.integration
def test_dashboard_variable_queries_evaluate(monitoring_bed):
    _ts, prom = monitoring_bed
    for path in DASHBOARDS:
        for var in json.loads(path.read_text())["templating"]["list"]:
            if var["type"] != "query":
                continue
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["definition"])
            assert m, var["definition"]
            selector = _substitute(m.group(1), {})
            res = prom.query(f"count by ({m.group(2)}) ({selector})")  # raises on a parse error
            values = {r["metric"].get(m.group(2)) for r in res}
            if var["name"] == "model":
                assert MODEL in values, (path.name, var["definition"], res)
            elif var["name"] == "version":
                assert VERSION in values, (path.name, var["definition"], res)
            elif EXTERNAL.search(var["definition"]):
                assert not res, (path.name, var["definition"], res)


# -- the role on the real kube-apiserver + kwok -----------------------------------------------------
HELM_HINT = "run `bash scripts/build/helm.sh` (scripts/setup helm)"
CRDS = ("servicemonitors", "podmonitors", "prometheusrules")


def _playbook(path: Path) -> Path:
    path.write_text(yaml.safe_dump([{"name": "monitoring", "hosts": "localhost", "gather_facts": False,
                                     "roles": [{"role": "gpuops.cluster.monitoring"}]}]))
    return path


def _run(work: Path, xvars: dict, outputs: list, check: bool = False) -> dict:
    from tests.integration.canary_support import run_playbook
    home = work.parent / "helm-home"
    env = {"HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
           "HELM_DATA_HOME": str(home / "data")}
    t0 = time.monotonic()
    res = run_playbook(_playbook(work.parent / "monitoring.yml"), xvars, work, env=env, timeout=900, check=check)
    res["wall"] = round(time.monotonic() - t0, 1)
    outputs.append(res["stdout"] + res["stderr"])
    return res


def _brief(res: dict) -> str:
    failed = {n: r.get("msg") for n, r in res["tasks"].items() if r.get("failed")}
    changed = [n for n, r in res["tasks"].items() if r.get("changed")]
    return (f"rc={res['rc']} stats={res.get('stats')} failed={failed} changed={changed}\n"
            f"{res['stderr'][-1500:]}\n{res['stdout'][-3000:]}")


def _custom(api, plural: str, ns: str, name: str = None, group="monitoring.coreos.com"):
    from kubernetes import client
    co = client.CustomObjectsApi(api)
    if name:
        return co.get_namespaced_custom_object(group, "v1", ns, plural, name)
    return co.list_namespaced_custom_object(group, "v1", ns, plural)["items"]


@pytest.fixture(scope="module")
def monitoring_role(k8s, tmp_path_factory):
    helm = require_binary("helm", HELM_HINT)
    work = tmp_path_factory.mktemp("monitoring-role")
    ns = k8s.fresh_namespace("mon")
    password = "gpuops-" + uuid.uuid4().hex
    xvars = {
        "gpuops_kubeconfig": k8s.kubeconfig, "gpuops_helm_binary": helm,
        "gpuops_chart_dir": str(SHARED / "charts"), "gpuops_helm_source": "bundle",
        "monitoring_namespace": ns, "monitoring_release_name": "kps-" + ns.split("-")[1],
        "monitoring_grafana_admin_password": password,
        "monitoring_helm_timeout": "5m0s",
        # the operator's admission webhook would make the apiserver dial a kwok pod IP (off-host):
        # not here. Everything else is the role's defaults.
        "monitoring_values": {"prometheusOperator": {"admissionWebhooks": {"enabled": False}}},
    }
    outputs: list = []
    runs = {"first": _run(work / "first", xvars, outputs)}
    assert runs["first"]["rc"] == 0, _brief(runs["first"])
    runs["second"] = _run(work / "second", xvars, outputs)
    runs["check"] = _run(work / "check", xvars, outputs, check=True)
    # check mode still reports a real change (and applies nothing)
    runs["check_changed"] = _run(work / "check-changed", dict(xvars, monitoring_prometheus_retention="30d",
                                                              monitoring_torchserve_interval="30s"),
                                 outputs, check=True)
    # check mode before the first install: the namespace does not exist yet
    fresh = "mon-fresh-" + uuid.uuid4().hex[:6]
    runs["check_fresh"] = _run(work / "check-fresh", dict(xvars, monitoring_namespace=fresh,
                                                          monitoring_release_name="kps-" + fresh[-6:]),
                               outputs, check=True)
    runs["check_fresh"]["namespace"] = fresh
    for name, r in runs.items():
        print(f"monitoring run {name}: rc={r['rc']} wall={r['wall']}s changed={(r.get('stats') or {})}")
    yield {"runs": runs, "ns": ns, "vars": xvars, "work": work, "outputs": outputs, "password": password}


@pytest.mark.integration
@pytest.mark.slow
def test_role_installs_the_stack_and_its_objects(monitoring_role, k8s):
    ns = monitoring_role["ns"]
    with k8s.api_client() as api:
        # the chart's Prometheus and Alertmanager custom resources carry the role's values
        prom = _custom(api, "prometheuses", ns)
        assert len(prom) == 1, prom
        spec = prom[0]["spec"]
        assert spec["retention"] == "15d" and spec["ruleSelector"] == {} and spec["serviceMonitorSelector"] == {}
        assert spec["podMonitorSelector"] == {} and spec["ruleNamespaceSelector"] == {}
        assert spec["storage"]["volumeClaimTemplate"]["spec"]["resources"]["requests"]["storage"] == "50Gi"
        am = _custom(api, "alertmanagers", ns)
        assert len(am) == 1 and am[0]["spec"]["retention"] == "120h"
        # rules: one PrometheusRule per file, groups exactly as in the file (alert templates untouched)
        for f in RULE_FILES:
            name = "gpuops-" + f.name.replace(".rules.yml", "")
            obj = _custom(api, "prometheusrules", ns, name)
            assert obj["spec"]["groups"] == yaml.safe_load(f.read_text())["groups"], name
            assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "gpuops-monitoring"
        slo = _custom(api, "prometheusrules", ns, "gpuops-serving-slo")
        assert "{{ $labels.model_name }}" in json.dumps(slo["spec"])
        # monitors
        sm = {o["metadata"]["name"]: o for o in _custom(api, "servicemonitors", ns)}
        pm = {o["metadata"]["name"]: o for o in _custom(api, "podmonitors", ns)}
        dcgm = sm["gpuops-dcgm-exporter"]["spec"]
        assert dcgm["namespaceSelector"] == {"matchNames": ["gpu-operator"]}
        assert dcgm["selector"] == {"matchLabels": {"app": "nvidia-dcgm-exporter"}}
        assert dcgm["endpoints"][0]["port"] == "gpu-metrics" and dcgm["endpoints"][0]["honorLabels"] is True
        assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node", "action": "replace"} \
            in dcgm["endpoints"][0]["relabelings"]
        tsm = pm["gpuops-torchserve"]["spec"]
        assert tsm["namespaceSelector"] == {"any": True}
        assert tsm["podMetricsEndpoints"][0]["port"] == "metrics"
        assert sm["gpuops-istiod"]["spec"]["endpoints"][0]["port"] == "http-monitoring"
        proxies = pm["gpuops-istio-proxies"]["spec"]["podMetricsEndpoints"][0]
        assert proxies["path"] == "/stats/prometheus"
        assert proxies["metricRelabelings"] == [{"action": "keep", "sourceLabels": ["__name__"],
                                                 "regex": "istio_.*|envoy_.*"}]
        # dashboards: one ConfigMap each, labelled for the sidecar, the JSON unchanged
        from kubernetes import client
        cms = {c.metadata.name: c for c in client.CoreV1Api(api).list_namespaced_config_map(
            ns, label_selector="grafana_dashboard=1").items}
        for d in DASHBOARDS:
            cm = cms["gpuops-dashboard-" + d.stem]
            assert cm.data == {d.name: d.read_text()}  # byte for byte, final newline included
            assert cm.metadata.annotations["grafana_folder"] == "gpuops"
        # Grafana's dashboard sidecar watches that label in every namespace, files by the annotation
        deps = client.AppsV1Api(api).list_namespaced_deployment(ns).items
        grafana = [d for d in deps if d.metadata.name.endswith("grafana")]
        assert grafana, [d.metadata.name for d in deps]
        # one sidecar container per kind (dashboards, datasources): find the dashboards' one
        envs = [{e.name: e.value for e in (c.env or [])} for c in grafana[0].spec.template.spec.containers]
        dash = [e for e in envs if e.get("LABEL") == "grafana_dashboard"]
        assert len(dash) == 1, envs
        assert dash[0].get("LABEL_VALUE") == "1" and dash[0].get("FOLDER_ANNOTATION") == "grafana_folder", dash
        assert dash[0].get("NAMESPACE") == "ALL", dash


@pytest.mark.integration
@pytest.mark.slow
def test_second_run_and_check_mode_change_nothing(monitoring_role):
    runs = monitoring_role["runs"]
    assert runs["first"]["stats"]["localhost"]["changed"] > 0, _brief(runs["first"])
    for name in ("second", "check"):
        r = runs[name]
        assert r["rc"] == 0, _brief(r)
        assert r["stats"]["localhost"]["changed"] == 0, f"{name}: {_brief(r)}"
    r = runs["check_changed"]
    assert r["rc"] == 0, _brief(r)
    changed = [n.split(" : ")[-1] for n, t in r["tasks"].items() if t.get("changed")]
    assert any(n.startswith("Helm release") for n in changed), changed
    assert "ServiceMonitors and PodMonitors" in changed, changed
    # before the first install, check mode reports the release and says what it cannot compare
    r = runs["check_fresh"]
    assert r["rc"] == 0, _brief(r)
    tasks = {n.split(" : ")[-1]: t for n, t in r["tasks"].items()}
    assert any(n.startswith("Helm release") and t.get("changed") for n, t in tasks.items()), _brief(r)
    assert "not there yet" in tasks["Say what check mode cannot show"]["msg"], _brief(r)


@pytest.mark.integration
@pytest.mark.slow
def test_check_mode_applied_nothing_and_helm_revision_is_one(monitoring_role, k8s):
    ns = monitoring_role["ns"]
    with k8s.api_client() as api:
        assert _custom(api, "prometheuses", ns)[0]["spec"]["retention"] == "15d"
        pm = _custom(api, "podmonitors", ns, "gpuops-torchserve")
        assert pm["spec"]["podMetricsEndpoints"][0]["interval"] == "15s"
        from kubernetes import client
        fresh = monitoring_role["runs"]["check_fresh"]["namespace"]
        assert fresh not in {n.metadata.name for n in client.CoreV1Api(api).list_namespace().items}
    env = dict(os.environ, KUBECONFIG=k8s.kubeconfig)
    home = monitoring_role["work"] / "helm-home"
    env.update({"HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
                "HELM_DATA_HOME": str(home / "data")})
    out = subprocess.run([require_binary("helm", HELM_HINT), "list", "-n", ns, "-o", "json"], capture_output=True,
                         text=True, env=env, check=True, timeout=60)
    releases = json.loads(out.stdout)
    assert [(r["name"], r["chart"], r["status"], r["revision"]) for r in releases] == \
        [(monitoring_role["vars"]["monitoring_release_name"], "kube-prometheus-stack-88.5.3", "deployed", "1")]


@pytest.mark.integration
@pytest.mark.slow
def test_unlisted_objects_are_pruned_and_the_password_never_shows(monitoring_role, k8s):
    xvars = dict(monitoring_role["vars"], monitoring_istio_enabled=False,
                 monitoring_dashboard_files=[str(d) for d in DASHBOARDS if d.stem != "canary"],
                 monitoring_rule_files=[str(f) for f in RULE_FILES if f.name != "gpu.rules.yml"],
                 monitoring_install_chart=False)
    r = _run(monitoring_role["work"] / "prune", xvars, monitoring_role["outputs"])
    assert r["rc"] == 0, _brief(r)
    ns = monitoring_role["ns"]
    from kubernetes import client
    with k8s.api_client() as api:
        assert {o["metadata"]["name"] for o in _custom(api, "podmonitors", ns)
                if o["metadata"]["name"].startswith("gpuops-")} == {"gpuops-torchserve"}
        assert {o["metadata"]["name"] for o in _custom(api, "servicemonitors", ns)
                if o["metadata"]["name"].startswith("gpuops-")} == {"gpuops-dcgm-exporter"}
        assert {o["metadata"]["name"] for o in _custom(api, "prometheusrules", ns)
                if o["metadata"]["name"].startswith("gpuops-")} == {"gpuops-serving-slo", "gpuops-serving"}
        cms = {c.metadata.name for c in client.CoreV1Api(api).list_namespaced_config_map(
            ns, label_selector="grafana_dashboard=1").items}
        assert {c for c in cms if c.startswith("gpuops-")} == {"gpuops-dashboard-gpu-fleet", "gpuops-dashboard-serving"}
    # no_log: the Grafana admin password given to the role is in no output of any run
    assert len(monitoring_role["outputs"]) >= 5
    for out in monitoring_role["outputs"]:
        assert monitoring_role["password"] not in out


@pytest.mark.integration
def test_role_refuses_unclear_input_early(tmp_path):
    """The asserts run before any cluster call (no kubeconfig here at all)."""
    outputs: list = []
    cases = {
        "monitoring_prometheus_retention": ("2d", "slowest burn-rate window is 3 days"),
        "monitoring_prometheus_storage_size": ("50GB", "Kubernetes quantities"),
        "monitoring_torchserve_pod_labels": ({}, "would scrape every Service/pod"),
        "monitoring_rule_files": (["/nonexistent/x.rules.yml"], "Missing rule files"),
    }
    for var, (value, message) in cases.items():
        r = _run(tmp_path / var, {var: value, "gpuops_kubeconfig": "/nonexistent/kubeconfig"}, outputs)
        assert r["rc"] != 0, _brief(r)
        failed = [t for t in r["tasks"].values() if t.get("failed")]
        assert failed and message in failed[0].get("msg", ""), _brief(r)
        assert not any(n.split(" : ")[-1].startswith(("Helm", "Look up")) for n in r["tasks"]), list(r["tasks"])
