# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Pure core of gpuops.cluster.traffic_split: weights of an Istio VirtualService http route.

Everything except ``IstioRoutes`` and ``set_traffic`` is pure (dicts in, dicts out) so unit tests
call it directly. ``set_traffic`` does the read -> validate -> replace(resourceVersion) loop,
retrying on HTTP 409 conflicts, against anything that looks like ``IstioRoutes``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import random
import time

ISTIO_GROUP = "networking.istio.io"
DEFAULT_API_VERSION = "v1"

# Keys that mark a VirtualService as managed by another progressive-delivery controller.
FOREIGN_OWNER_KINDS = (("flagger.app", "Canary"), ("argoproj.io", "Rollout"))
FOREIGN_KEY_MARKERS = ("flagger.app", "flagger.kubernetes.io", "argo-rollouts.argoproj.io")
FOREIGN_MANAGERS = ("flagger", "argo-rollouts", "argo-rollouts-controller")


class TrafficError(Exception):
    """A request that cannot be applied as asked; the message tells the user what to fix."""


class ConflictError(Exception):
    """The object changed between our read and our write (HTTP 409)."""


def find_route(vs, route):
    """Index of the http route selected by name (str) or index (int / digit string)."""
    routes = (vs.get("spec") or {}).get("http") or []
    name = _vs_name(vs)
    if not routes:
        raise TrafficError("VirtualService %s has no spec.http routes" % name)
    if route is None:
        if len(routes) == 1:
            return 0
        raise TrafficError("VirtualService %s has %d http routes (%s): set route to a name or an index"
                           % (name, len(routes), ", ".join(_route_label(r, i) for i, r in enumerate(routes))))
    if isinstance(route, int) or (isinstance(route, str) and route.isdigit()):
        idx = int(route)
        if idx < 0 or idx >= len(routes):
            raise TrafficError("route index %d out of range: VirtualService %s has %d http routes"
                               % (idx, name, len(routes)))
        return idx
    for idx, r in enumerate(routes):
        if r.get("name") == route:
            return idx
    raise TrafficError("no http route named %r in VirtualService %s (routes: %s)"
                       % (route, name, ", ".join(_route_label(r, i) for i, r in enumerate(routes))))


def _route_label(route, idx):
    return route.get("name") or "#%d" % idx


def _vs_name(vs):
    meta = vs.get("metadata") or {}
    return "%s/%s" % (meta.get("namespace", "?"), meta.get("name", "?"))


def route_weights(http_route):
    """{subset: weight} of a route. Istio: a lone destination without weight gets 100."""
    dests = http_route.get("route") or []
    out = {}
    for d in dests:
        subset = (d.get("destination") or {}).get("subset")
        if subset is None:
            raise TrafficError("route %s has a destination without subset (host %s): traffic_split "
                               "works on DestinationRule subsets" % (
                                   http_route.get("name") or "?", (d.get("destination") or {}).get("host")))
        if subset in out:
            raise TrafficError("route %s lists subset %s twice" % (http_route.get("name") or "?", subset))
        w = d.get("weight")
        out[subset] = int(w) if w is not None else (100 if len(dests) == 1 else 0)
    return out


def route_host(http_route):
    """The destination host of a route (all destinations must share it)."""
    hosts = set((d.get("destination") or {}).get("host") for d in http_route.get("route") or [])
    hosts.discard(None)
    if len(hosts) > 1:
        raise TrafficError("route %s sends to several hosts (%s): weights between subsets need one host"
                           % (http_route.get("name") or "?", ", ".join(sorted(hosts))))
    return hosts.pop() if hosts else None


def validate_weights(weights):
    """Errors (list of str) for a {subset: weight} request: ints 0..100 summing to 100."""
    errors = []
    if not isinstance(weights, dict) or not weights:
        return ["weights must be a non-empty mapping of subset name to integer weight"]
    total = 0
    for subset, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, int):
            if isinstance(w, str) and w.strip().isdigit():
                w = int(w)
            else:
                errors.append("weight of subset %s must be an integer, got %r" % (subset, w))
                continue
        if w < 0 or w > 100:
            errors.append("weight of subset %s must be between 0 and 100, got %d" % (subset, w))
        total += w
    if not errors and total != 100:
        errors.append("weights must add up to 100, they add up to %d (%s)"
                      % (total, ", ".join("%s=%s" % kv for kv in sorted(weights.items()))))
    return errors


def normalize_weights(weights):
    return dict((str(k), int(v)) for k, v in weights.items())


def host_matches(dr_host, host, namespace):
    """Istio short names: 'svc' == 'svc.<ns>' == 'svc.<ns>.svc' == 'svc.<ns>.svc.cluster.local'."""
    def expand(h):
        parts = h.split(".")
        if len(parts) == 1:
            return "%s.%s" % (h, namespace)
        return ".".join(parts[:2])
    if not dr_host or not host:
        return False
    if dr_host == host:
        return True
    if "*" in dr_host or "*" in host:
        return False
    return expand(dr_host) == expand(host)


def destination_rule_subsets(destination_rules, host, namespace):
    """Subset names defined for ``host`` by the DestinationRules of a namespace."""
    subsets = set()
    for dr in destination_rules:
        spec = dr.get("spec") or {}
        if host_matches(spec.get("host"), host, namespace):
            for s in spec.get("subsets") or []:
                if s.get("name"):
                    subsets.add(s["name"])
    return subsets


def foreign_owner(obj):
    """Why ``obj`` belongs to Flagger / Argo Rollouts, or None."""
    meta = obj.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        group = (ref.get("apiVersion") or "").split("/")[0]
        for g, kind in FOREIGN_OWNER_KINDS:
            if group == g and ref.get("kind") == kind:
                return "owned by %s %s (%s)" % (kind, ref.get("name"), ref.get("apiVersion"))
    for where in ("annotations", "labels"):
        for key, value in (meta.get(where) or {}).items():
            if any(m in key for m in FOREIGN_KEY_MARKERS):
                return "%s %s=%s" % (where[:-1], key, value)
            if key == "app.kubernetes.io/managed-by" and str(value).lower() in FOREIGN_MANAGERS:
                return "label %s=%s" % (key, value)
    return None


def apply_weights(vs, route_index, weights):
    """A deep copy of ``vs`` whose route has exactly ``weights`` (missing subsets are added,
    subsets not in ``weights`` keep their destination with weight 0)."""
    new = copy.deepcopy(vs)
    http_route = new["spec"]["http"][route_index]
    dests = http_route.setdefault("route", [])
    host = route_host(http_route)
    seen = set()
    for d in dests:
        subset = (d.get("destination") or {}).get("subset")
        seen.add(subset)
        d["weight"] = int(weights.get(subset, 0))
    for subset in sorted(set(weights) - seen):
        if host is None:
            raise TrafficError("cannot add subset %s: the route has no destination host" % subset)
        dests.append({"destination": {"host": host, "subset": subset}, "weight": int(weights[subset])})
    return new


def plan(vs, route, weights, destination_rules, force=False, zero_unnamed=False):
    """Validate a request against the observed objects.

    A destination of the route that carries traffic and is not named in ``weights`` would lose it
    silently: refused unless ``zero_unnamed``.

    Returns dict(route_index, host, before, after, changed, new_vs).
    Raises TrafficError with a message that says what to fix.
    """
    errors = validate_weights(weights)
    if errors:
        raise TrafficError("; ".join(errors))
    weights = normalize_weights(weights)
    owner = foreign_owner(vs)
    if owner and not force:
        raise TrafficError("VirtualService %s is managed by another controller (%s): it would undo "
                           "this change; set force: true only if that controller is gone"
                           % (_vs_name(vs), owner))
    idx = find_route(vs, route)
    http_route = vs["spec"]["http"][idx]
    before = route_weights(http_route)
    host = route_host(http_route)
    namespace = (vs.get("metadata") or {}).get("namespace")
    known = destination_rule_subsets(destination_rules, host, namespace)
    missing = sorted(set(weights) - known)
    if missing:
        raise TrafficError("subset(s) %s not defined by any DestinationRule for host %s in namespace %s "
                           "(defined: %s)" % (", ".join(missing), host, namespace,
                                              ", ".join(sorted(known)) or "none"))
    # a subset not mentioned keeps its destination at 0: a subset that carries traffic now would
    # silently lose its share, so the caller must name it (with 0 to drain it) or say zero_unnamed
    unnamed = sorted(s for s, w in before.items() if s not in weights and w > 0)
    if unnamed and not zero_unnamed:
        raise TrafficError("the route sends traffic to subset(s) %s, which weights does not name: the change "
                           "would set them to 0; name them (with weight 0 to drain them) or set "
                           "zero_unnamed: true" % ", ".join("%s (%d%%)" % (s, before[s]) for s in unnamed))
    after = dict((s, 0) for s in before)
    after.update(weights)
    new_vs = apply_weights(vs, idx, weights)
    return {"route_index": idx, "route_name": http_route.get("name"), "host": host,
            "before": before, "after": after, "changed": before != after, "new_vs": new_vs}


class IstioRoutes(object):
    """VirtualService / DestinationRule access over the Kubernetes API (CustomObjectsApi)."""

    def __init__(self, api_client, api_version=DEFAULT_API_VERSION):
        from ansible_collections.gpuops.cluster.plugins.module_utils.k8s_client import CustomObjects
        self.objects = CustomObjects(api_client)
        self.version = api_version

    def get_virtual_service(self, namespace, name):
        return self.objects.get(ISTIO_GROUP, self.version, "virtualservices", namespace, name)

    def list_destination_rules(self, namespace):
        return self.objects.list(ISTIO_GROUP, self.version, "destinationrules", namespace)

    def replace_virtual_service(self, namespace, name, body, dry_run=False):
        from ansible_collections.gpuops.cluster.plugins.module_utils.k8s_connection import ApiException
        try:
            return self.objects.replace(ISTIO_GROUP, self.version, "virtualservices", namespace, name,
                                        body, dry_run=dry_run)
        except ApiException as exc:
            if exc.status == 409:
                raise ConflictError(str(exc.reason))
            raise


def set_traffic(routes, namespace, name, weights, route=None, force=False, dry_run=False,
                max_retries=5, mutate=None, before_replace=None, zero_unnamed=False, retry_timeout=30.0,
                sleep=time.sleep, now=time.monotonic, rand=random.random):
    """Read, plan and replace with the read resourceVersion; on 409 re-read and retry.

    Conflicts are retried after a jittered exponential backoff (0.05 s doubling up to 2 s, each delay
    drawn from its upper half), at most ``max_retries`` times (None: no limit) and never starting a
    retry after ``retry_timeout`` seconds, so a steady concurrent writer is outlasted and a lasting one
    ends in a TrafficError within a known time.
    ``mutate(vs) -> vs`` optionally changes more of the object in the same write (the rollout
    state annotation). ``before_replace(attempt)`` is a test hook run between read and write.
    Returns the plan plus ``attempts``, ``conflicts`` and the written (or dry-run) object.
    """
    from ansible_collections.gpuops.cluster.plugins.module_utils.k8s_errors import Backoff
    backoff = Backoff(0.05, 2.0, tries=None if max_retries is None else max_retries + 1, timeout=retry_timeout,
                      jitter=True, now=now, rand=rand)
    conflicts = 0
    attempt = 0
    while True:
        attempt += 1
        vs = routes.get_virtual_service(namespace, name)
        if vs is None:
            raise TrafficError("VirtualService %s/%s not found" % (namespace, name))
        drs = routes.list_destination_rules(namespace)
        result = plan(vs, route, weights, drs, force=force, zero_unnamed=zero_unnamed)
        new_vs = result.pop("new_vs")
        if mutate is not None:
            new_vs = mutate(new_vs)
        result["attempts"] = attempt
        result["conflicts"] = conflicts
        if new_vs == vs:
            result["changed"] = False
            result["object"] = vs
            return result
        result["changed"] = True
        if before_replace is not None:
            before_replace(attempt)
        try:
            result["object"] = routes.replace_virtual_service(namespace, name, new_vs, dry_run=dry_run)
            return result
        except ConflictError:
            conflicts += 1
        delay = backoff.next_delay()
        if delay is None:
            raise TrafficError("VirtualService %s/%s kept changing under us: %d write conflicts (HTTP 409) in "
                               "%.1f s; another controller may be rewriting it" % (
                                   namespace, name, conflicts, backoff.elapsed()))
        sleep(delay)


def set_traffic_retrying(routes, namespace, name, weights, transient_retries=5, on_retry=None, sleep=None, **kwargs):
    """``set_traffic``, with transient API errors (HTTP 429/5xx, a dropped connection, a read
    timeout; see ``k8s_errors.is_transient``) retried with exponential backoff, ``transient_retries``
    retries at most (None: no limit) within ``retry_timeout`` seconds. Safe to repeat: each try re-reads the object and writes an absolute state with
    its resourceVersion. 4xx answers (RBAC, validation) and TrafficError are never retried."""
    from ansible_collections.gpuops.cluster.plugins.module_utils.k8s_errors import retry_transient
    extra = {} if sleep is None else {"sleep": sleep}
    timeout = kwargs.get("retry_timeout", 30.0)
    run = retry_transient(set_traffic, attempts=None if transient_retries is None else transient_retries + 1,
                          on_retry=on_retry, timeout=timeout, **extra)
    return run(routes, namespace, name, weights, sleep=sleep or time.sleep, **kwargs)
