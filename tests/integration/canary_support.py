"""Shared plumbing for the canary integration tests (engineer A and B) and the rollback benchmark.

- builders for the objects a canary release needs: Namespace, DestinationRule (stable/canary
  subsets selecting ``version`` labels), VirtualService (one named http route), Deployments whose pod
  template says which TorchServe model version they serve (annotation ``gpuops.io/model-version``,
  env ``MODEL_VERSION``), scheduled on the kwok fake GPU nodes;
- ``apply`` (create or replace) / ``read_weights`` / ``read_state`` on the real kube-apiserver;
- ``LoadGenerator``: there is no Envoy (and no Istio data plane) on the test bed, so this thread plays
  the mesh: it reads the VirtualService weights from the apiserver, resolves each subset to the model
  version of the Deployment its labels select, and sends each TorchServe version its share of the
  requests (smooth weighted round-robin, deterministic). A subset whose Deployment has 0 replicas gets
  no requests to TorchServe; they are counted as ``no_endpoint`` (Envoy would answer 503).
- ``run_playbook``: ansible-playbook as a subprocess with the JSON stdout callback, results parsed.

Metrics: ``istio_requests_total`` does not exist here (no Istio proxy); the gates use the per-version
series of the test TorchServe handler through canary_gate's ``torchserve-*`` templates.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Optional

from tests.testbed.common import private_stdin

REPO = Path(__file__).resolve().parents[2]
STATE_ANNOTATION = "gpuops.io/canary-state"
VERSION_ANNOTATION = "gpuops.io/model-version"
ISTIO = ("networking.istio.io", "v1")


# -- connection -------------------------------------------------------------------------------
def api_client(kubeconfig: str):
    from ansible_collections.gpuops.cluster.plugins.module_utils.k8s_client import get_api_client
    return get_api_client({"kubeconfig": str(kubeconfig)})


# -- builders ---------------------------------------------------------------------------------
def namespace(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def destination_rule(name: str, host: str, subsets: Dict[str, Dict[str, str]]) -> dict:
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": name},
            "spec": {"host": host, "subsets": [{"name": s, "labels": dict(lbl)} for s, lbl in subsets.items()]}}


def virtual_service(name: str, host: str, weights: Dict[str, int], route_name: str = "primary",
                    extra_routes: Optional[List[dict]] = None, **metadata) -> dict:
    meta = {"name": name}
    meta.update(metadata)
    http = [{"name": route_name,
             "route": [{"destination": {"host": host, "subset": s}, "weight": w} for s, w in weights.items()]}]
    http.extend(extra_routes or [])
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": meta,
            "spec": {"hosts": [host], "http": http}}


def deployment(name: str, app: str, track: str, model_version: str, replicas: int = 1,
               container: str = "torchserve", image: str = "pytorch/torchserve:0.12.0-gpu", gpus: int = 0) -> dict:
    """A TorchServe Deployment for the kwok fake nodes (tolerates every taint). ``gpus`` > 0 requests
    ``nvidia.com/gpu`` (the fake nodes have few: tests leave it at 0 so many namespaces fit)."""
    labels = {"app": app, "version": track}
    resources = {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": {VERSION_ANNOTATION: model_version}},
                "spec": {
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [{
                        "name": container, "image": image,
                        "env": [{"name": "MODEL_VERSION", "value": model_version}],
                        "resources": resources,
                    }],
                },
            },
        },
    }


def canary_objects(app: str, stable_version: str, canary_version: str, canary_weight: int = 0,
                   canary_replicas: int = 1, **vs_meta) -> List[dict]:
    """DestinationRule + VirtualService + stable/canary Deployments of one model service ``app``."""
    host = app
    return [
        destination_rule(app, host, {"stable": {"app": app, "version": "stable"},
                                     "canary": {"app": app, "version": "canary"}}),
        virtual_service(app, host, {"stable": 100 - canary_weight, "canary": canary_weight}, **vs_meta),
        deployment(f"{app}-stable", app, "stable", stable_version),
        deployment(f"{app}-canary", app, "canary", canary_version, replicas=canary_replicas),
    ]


# -- apiserver access -------------------------------------------------------------------------
def _custom(client):
    import kubernetes
    return kubernetes.client.CustomObjectsApi(client)


def _apps(client):
    import kubernetes
    return kubernetes.client.AppsV1Api(client)


def ensure_namespace(client, name: str) -> None:
    import kubernetes
    from kubernetes.client.rest import ApiException
    try:
        kubernetes.client.CoreV1Api(client).create_namespace(namespace(name))
    except ApiException as exc:
        if exc.status != 409:
            raise


def delete_namespace(client, name: str) -> None:
    """Delete a test namespace (the namespace controller removes its objects in the background)."""
    import kubernetes
    from kubernetes.client.rest import ApiException
    try:
        kubernetes.client.CoreV1Api(client).delete_namespace(name)
    except ApiException as exc:
        if exc.status != 404:
            raise


def apply(client, ns: str, obj: dict) -> dict:
    """Create ``obj`` in ``ns``, or replace it when it exists. An Istio object that carries a
    resourceVersion (it was read) is replaced with exactly that version (a concurrent writer)."""
    from kubernetes.client.rest import ApiException
    obj = copy.deepcopy(obj)
    obj["metadata"]["namespace"] = ns
    name, kind = obj["metadata"]["name"], obj["kind"]
    if kind == "Deployment":
        api = _apps(client)
        try:
            return api.create_namespaced_deployment(ns, obj).to_dict()
        except ApiException as exc:
            if exc.status != 409:
                raise
        cur = json.loads(api.read_namespaced_deployment(name, ns, _preload_content=False).data)
        obj["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"]
        return json.loads(api.replace_namespaced_deployment(name, ns, obj, _preload_content=False).data)
    plural = {"VirtualService": "virtualservices", "DestinationRule": "destinationrules"}[kind]
    api = _custom(client)
    if obj["metadata"].get("resourceVersion"):  # an object that was read: replace it as read
        return api.replace_namespaced_custom_object(ISTIO[0], ISTIO[1], ns, plural, name, obj)
    try:
        return api.create_namespaced_custom_object(ISTIO[0], ISTIO[1], ns, plural, obj)
    except ApiException as exc:
        if exc.status != 409:
            raise
    cur = api.get_namespaced_custom_object(ISTIO[0], ISTIO[1], ns, plural, name)
    obj["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"]
    return api.replace_namespaced_custom_object(ISTIO[0], ISTIO[1], ns, plural, name, obj)


def apply_all(client, ns: str, objs: List[dict]) -> None:
    ensure_namespace(client, ns)
    for obj in objs:
        apply(client, ns, obj)


def get_vs(client, ns: str, name: str) -> dict:
    return _custom(client).get_namespaced_custom_object(ISTIO[0], ISTIO[1], ns, "virtualservices", name)


def read_weights(client, ns: str, name: str, route: int = 0) -> Dict[str, int]:
    vs = get_vs(client, ns, name)
    return {d["destination"]["subset"]: int(d.get("weight", 0)) for d in vs["spec"]["http"][route]["route"]}


def read_state(client, ns: str, name: str) -> Optional[dict]:
    ann = (get_vs(client, ns, name)["metadata"].get("annotations") or {}).get(STATE_ANNOTATION)
    return json.loads(ann) if ann else None


def read_deployment(client, ns: str, name: str) -> dict:
    return json.loads(_apps(client).read_namespaced_deployment(name, ns, _preload_content=False).data)


def deployment_version(dep: dict) -> Optional[str]:
    return ((dep["spec"]["template"].get("metadata") or {}).get("annotations") or {}).get(VERSION_ANNOTATION)


# -- the mesh stand-in --------------------------------------------------------------------------
class LoadGenerator(threading.Thread):
    """Plays Envoy for one VirtualService route: see the module docstring.

    ``send(version) -> bool`` makes one real inference request to TorchServe for that model version
    and returns whether it succeeded. ``rps`` requests per second in total.
    """

    def __init__(self, client, ns: str, vs_name: str, send: Callable[[str], bool], rps: float = 20.0,
                 route: int = 0, refresh: float = 0.25, max_seconds: float = 600.0, concurrency: int = 8):
        super().__init__(daemon=True, name=f"loadgen-{vs_name}")
        self.client, self.ns, self.vs_name, self.send = client, ns, vs_name, send
        self.rps, self.route, self.refresh, self.max_seconds = rps, route, refresh, max_seconds
        self._stop_evt = threading.Event()
        self.lock = threading.Lock()
        self.sent: Dict[str, int] = {}
        self.errors: Dict[str, int] = {}
        self.no_endpoint: Dict[str, int] = {}
        self.weight_log: List[tuple] = []  # (time, {subset: weight})
        self.failure: Optional[BaseException] = None
        self._credit: Dict[str, float] = {}
        # requests go out on a small pool so a slow version does not slow the others down
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"load-{vs_name}")

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(timeout=30)
        self._pool.shutdown(wait=True)
        if self.failure is not None:
            raise RuntimeError(f"load generator failed: {self.failure!r}") from self.failure

    def _resolve(self) -> Dict[str, tuple]:
        """subset -> (weight, model version or None when no replica serves it)."""
        vs = get_vs(self.client, self.ns, self.vs_name)
        route = vs["spec"]["http"][self.route]["route"]
        weights = {d["destination"]["subset"]: int(d.get("weight", 0)) for d in route}
        drs = _custom(self.client).list_namespaced_custom_object(ISTIO[0], ISTIO[1], self.ns,
                                                                  "destinationrules")["items"]
        subsets = {}
        for dr in drs:
            for s in dr["spec"].get("subsets") or []:
                subsets[s["name"]] = s.get("labels") or {}
        deps = json.loads(_apps(self.client).list_namespaced_deployment(self.ns, _preload_content=False).data)["items"]
        out = {}
        for subset, w in weights.items():
            labels = subsets.get(subset, {})
            version = None
            for d in deps:
                tl = (d["spec"]["template"].get("metadata") or {}).get("labels") or {}
                if labels and all(tl.get(k) == v for k, v in labels.items()) and d["spec"].get("replicas", 1) > 0:
                    version = deployment_version(d)
                    break
            out[subset] = (w, version)
        with self.lock:
            self.weight_log.append((time.time(), dict(weights)))
        return out

    def _pick(self, table: Dict[str, tuple]) -> Optional[str]:
        """Smooth weighted round-robin (nginx's): deterministic shares equal to the weights."""
        total = sum(w for w, _v in table.values())
        if total <= 0:
            return None
        best = None
        for subset, (w, _v) in table.items():
            self._credit[subset] = self._credit.get(subset, 0.0) + w
            if best is None or self._credit[subset] > self._credit[best]:
                best = subset
        self._credit[best] -= total
        return best

    def run(self) -> None:
        try:
            started = time.time()
            table = self._resolve()
            next_refresh = time.time() + self.refresh
            gap = 1.0 / self.rps
            while not self._stop_evt.is_set() and time.time() - started < self.max_seconds:
                t0 = time.time()
                if t0 >= next_refresh:
                    table = self._resolve()
                    next_refresh = t0 + self.refresh
                subset = self._pick(table)
                if subset is not None:
                    _w, version = table[subset]
                    with self.lock:
                        if version is None:
                            self.no_endpoint[subset] = self.no_endpoint.get(subset, 0) + 1
                        else:
                            self.sent[version] = self.sent.get(version, 0) + 1
                    if version is not None:
                        self._pool.submit(self._one, version)
                self._stop_evt.wait(max(0.0, gap - (time.time() - t0)))
        except BaseException as exc:  # noqa: BLE001 - surfaced by stop()
            self.failure = exc

    def _one(self, version: str) -> None:
        try:
            ok = self.send(version)
        except Exception:  # noqa: BLE001 - a failed request is an error, not a crash
            ok = False
        if not ok:
            with self.lock:
                self.errors[version] = self.errors.get(version, 0) + 1

    def snapshot(self) -> dict:
        with self.lock:
            return {"sent": dict(self.sent), "errors": dict(self.errors), "no_endpoint": dict(self.no_endpoint)}


# -- ansible-playbook ---------------------------------------------------------------------------
def run_playbook(playbook: Path, extra_vars: dict, workdir: Path, env: Optional[dict] = None,
                 timeout: float = 600, check: bool = False) -> dict:
    """Run ansible-playbook with the ansible.posix.json callback; returns rc, results by task name, raw."""
    workdir.mkdir(parents=True, exist_ok=True)
    vars_file = workdir / f"vars-{time.time_ns()}.json"
    vars_file.write_text(json.dumps(extra_vars))
    full_env = dict(os.environ)
    full_env.update({"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json", "ANSIBLE_NOCOLOR": "1",
                     "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_LOCALHOST_WARNING": "0",
                     "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0"})
    full_env.update(env or {})
    argv = ["timeout", str(int(timeout)), "ansible-playbook", "-i", "localhost,", "-c", "local",
            str(playbook), "-e", f"@{vars_file}", "-e", "ansible_python_interpreter=" + _python()]
    if check:
        argv += ["--check", "--diff"]
    with private_stdin() as stdin:
        proc = subprocess.run(argv, stdin=stdin, capture_output=True, text=True, env=full_env, cwd=str(workdir),
                              check=False)
    out: Dict[str, object] = {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr, "tasks": {}}
    try:
        doc = json.loads(proc.stdout[proc.stdout.index("{"):])
    except ValueError:
        return out
    for play in doc.get("plays", []):
        for task in play.get("tasks", []):
            res = (task.get("hosts") or {}).get("localhost")
            if res is not None:
                name = task["task"]["name"]
                out["tasks"][name] = res
                if " : " in name:  # a role's task ("canary_release : Analyse ..."): also by its own name
                    out["tasks"].setdefault(name.split(" : ", 1)[1], res)
    out["stats"] = doc.get("stats")
    return out


def start_playbook(playbook: Path, extra_vars: dict, workdir: Path, env: Optional[dict] = None,
                   timeout: float = 600) -> subprocess.Popen:
    """ansible-playbook in the background, in its own process group (to be killed by PID)."""
    workdir.mkdir(parents=True, exist_ok=True)
    vars_file = workdir / f"vars-{time.time_ns()}.json"
    vars_file.write_text(json.dumps(extra_vars))
    full_env = dict(os.environ)
    full_env.update({"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json", "ANSIBLE_NOCOLOR": "1",
                     "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")})
    full_env.update(env or {})
    argv = ["timeout", str(int(timeout)), "ansible-playbook", "-i", "localhost,", "-c", "local",
            str(playbook), "-e", f"@{vars_file}", "-e", "ansible_python_interpreter=" + _python()]
    log = open(workdir / f"playbook-{time.time_ns()}.log", "wb")
    with private_stdin() as stdin:
        return subprocess.Popen(argv, stdin=stdin, stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                cwd=str(workdir), start_new_session=True)


def _python() -> str:
    import sys
    return sys.executable


def write_playbook(path: Path, tasks: List[dict], module_defaults: Optional[dict] = None) -> Path:
    """A one-play playbook on localhost (JSON is valid YAML)."""
    play = {"name": "test", "hosts": "localhost", "gather_facts": False, "tasks": tasks}
    if module_defaults:
        play["module_defaults"] = module_defaults
    path.write_text(json.dumps([play], indent=1))
    return path


def documented_rbac_rules(doc: Path = REPO / "docs" / "canary.md") -> List[dict]:
    """The Role rules of docs/canary.md (between <!-- rbac:begin --> and <!-- rbac:end -->), so the
    tests grant exactly what the user guide documents."""
    import yaml
    text = doc.read_text()
    block = text.split("<!-- rbac:begin -->", 1)[1].split("<!-- rbac:end -->", 1)[0]
    body = block.split("```yaml", 1)[1].split("```", 1)[0]
    return yaml.safe_load(body)["rules"]


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll ``check`` until truthy; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def kill_tree(pid: int) -> List[int]:
    """SIGKILL ``pid`` and all its descendants, by PID. ansible-playbook's module process runs in a
    session of its own, so killing the playbook's process group alone leaves it running."""
    import signal
    children: Dict[int, List[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    tree, todo = [], [pid]
    while todo:
        cur = todo.pop()
        tree.append(cur)
        todo.extend(children.get(cur, []))
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return tree


def brief(out: dict) -> str:
    """A module result, readable in an assert message: msg, status, reason and the last progress entries."""
    lines = ["status=%s msg=%s" % (out.get("status"), out.get("msg")), "reason=%s" % out.get("reason")]
    for entry in (out.get("progress") or [])[-6:]:
        lines.append("  %(elapsed)s s it%(iteration)s %(weight)s%% %(action)s %(decision)s: %(message)s" % entry
                     + "".join(" [%s %s %s]" % (c.get("name"), c.get("status"), c.get("message") or c.get("value"))
                               for c in entry.get("checks") or []))
    return "\n".join(lines)
