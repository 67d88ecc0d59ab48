# -*- coding: utf-8 -*-
# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Pure core of gpuops.cluster.canary_rollout: Flagger's canary state machine.

Nothing here talks to a network: the caller injects

- ``now()`` (seconds, wall clock) and ``sleep(seconds)``;
- ``read_route() -> ({"stable": w, "canary": w}, state-or-None)`` and
  ``write_route(stable_weight, canary_weight, state, dry_run=False)`` (the VirtualService);
- ``gate(variables) -> {"decision": "pass"|"fail"|"hold", "checks": [...]}`` (gate.run_gate);
- ``webhook(hook, payload) -> (ok, message)``;
- optional ``scale(replicas)`` for the canary workload, ``promote(state) -> previous`` which makes
  the stable workload run the canary's version and returns what it replaced, and
  ``restore(previous)`` which puts the previous stable version back;
- optional ``emit(entry)`` called with every progress entry as it happens.

Semantics (fluxcd/flagger pkg/controller/scheduler.go), one iteration per ``interval``:

1. a ``rollback`` webhook answering 2xx rolls back (manual abort);
2. failed checks >= ``threshold`` or no progress for ``progress_deadline`` seconds -> rollback;
3. first iteration at weight 0: ``pre-rollout`` webhooks (a failure counts as a failed check);
   later iterations: ``rollout`` webhooks then the gate (metrics); fail -> failed check, hold -> wait;
4. success: canary weight moves one step (``step_weight`` or the next of ``step_weights``), capped
   at ``max_weight``; at ``max_weight`` a passing iteration runs ``confirm-promotion`` webhooks
   (a failure holds) and promotes: canary 100%, stable rewritten to the canary's version,
   stable 100%, canary scaled to 0, ``post-rollout`` webhooks.
Rollback: stable 100%, canary scaled to 0, ``post-rollout`` webhooks.

Differences from Flagger, on purpose: the failed check that reaches ``threshold`` rolls back in the
same iteration (Flagger waits for the next tick), and a step never overshoots ``max_weight``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import math
import time

STATE_ANNOTATION = "gpuops.io/canary-state"
STATE_SCHEMA = 1
TERMINAL_PHASES = ("promoted", "rolled_back")
WEBHOOK_TYPES = ("pre-rollout", "rollout", "confirm-promotion", "post-rollout", "rollback")
NO_DATA_CHOICES = ("fail", "hold", "pass")
ERROR_CHOICES = ("fail", "hold")


class RolloutConfigError(ValueError):
    """The rollout options are inconsistent: the message says what to fix."""


class _RolledBackElsewhere(Exception):
    def __init__(self, state, weights):
        Exception.__init__(self, state.get("reason"))
        self.state = state
        self.weights = weights


class RolloutAborted(RuntimeError):
    """The rollout could not continue (API failure...); ``result`` holds the progress so far."""

    def __init__(self, message, result):
        RuntimeError.__init__(self, message)
        self.result = result


def _is_number(value, integer=False):
    if isinstance(value, bool) or value is None:
        return False
    if integer:
        return isinstance(value, int)
    return isinstance(value, (int, float)) and not math.isnan(value) and not math.isinf(value)


def validate_config(cfg):
    """Check and complete a config dict; returns a new dict with defaults applied.

    Every number is checked, 0 and negatives included, before anything is changed; a default only
    fills an option that was not given (None), never a 0."""
    c = dict(cfg)
    for key, default in (("threshold", 5), ("interval", 60), ("progress_deadline", 600), ("on_no_data", "fail"),
                         ("on_error", "fail"), ("webhooks", []), ("variables", {})):
        if c.get(key) is None:
            c[key] = default
    for key in ("step_weight", "step_weights", "max_weight"):
        c.setdefault(key, None)
    if not c.get("revision"):
        raise RolloutConfigError("revision is required: it names the canary release (e.g. the new model version) "
                                 "so that an interrupted rollout can be resumed and a finished one is not re-run")
    if c["step_weight"] is not None and c["step_weights"] is not None:
        raise RolloutConfigError("give step_weight or step_weights, not both")
    if c["step_weights"] is not None and not c["step_weights"]:
        raise RolloutConfigError("step_weights is empty: give the canary weights to go through, e.g. [5, 25, 50]")
    if c["step_weight"] is None and c["step_weights"] is None:
        c["step_weight"] = 10
    if c["step_weight"] is not None and not (_is_number(c["step_weight"], True) and 1 <= c["step_weight"] <= 100):
        raise RolloutConfigError("step_weight must be an integer between 1 and 100, got %r" % (c["step_weight"],))
    if c["step_weights"]:
        sw = list(c["step_weights"])
        if not all(_is_number(w, True) for w in sw) or any(w < 1 or w > 100 for w in sw) or sw != sorted(set(sw)):
            raise RolloutConfigError("step_weights must be strictly increasing integers between 1 and 100, got %s" % sw)
        c["step_weights"] = sw
        if c["max_weight"] is not None and c["max_weight"] != sw[-1]:
            raise RolloutConfigError("max_weight (%s) conflicts with the last of step_weights (%s): drop max_weight"
                                     % (c["max_weight"], sw[-1]))
    if c["max_weight"] is None:
        c["max_weight"] = c["step_weights"][-1] if c["step_weights"] else 50
    if not (_is_number(c["max_weight"], True) and 1 <= c["max_weight"] <= 100):
        raise RolloutConfigError("max_weight must be an integer between 1 and 100, got %r" % (c["max_weight"],))
    if not (_is_number(c["threshold"], True) and c["threshold"] >= 1):
        raise RolloutConfigError("threshold must be an integer of 1 or more, got %r" % (c["threshold"],))
    if not (_is_number(c["interval"]) and c["interval"] > 0):
        raise RolloutConfigError("interval must be more than 0 seconds, got %r" % (c["interval"],))
    if not (_is_number(c["progress_deadline"]) and c["progress_deadline"] >= c["interval"]):
        raise RolloutConfigError("progress_deadline (%rs) must be at least one interval (%ss)"
                                 % (c["progress_deadline"], c["interval"]))
    if c["on_no_data"] not in NO_DATA_CHOICES:
        raise RolloutConfigError("on_no_data must be one of %s" % ", ".join(NO_DATA_CHOICES))
    if c["on_error"] not in ERROR_CHOICES:
        raise RolloutConfigError("on_error must be one of %s" % ", ".join(ERROR_CHOICES))
    names = set()
    for hook in c["webhooks"]:
        if not hook.get("name") or not hook.get("url"):
            raise RolloutConfigError("every webhook needs a name and a url, got %r" % (hook,))
        if hook.get("type", "rollout") not in WEBHOOK_TYPES:
            raise RolloutConfigError("webhook %s: type must be one of %s" % (hook["name"], ", ".join(WEBHOOK_TYPES)))
        if hook["name"] in names:
            raise RolloutConfigError("webhook name %s is used twice" % hook["name"])
        names.add(hook["name"])
    return c


def max_weight(cfg):
    if cfg.get("step_weights"):
        return min(100, cfg["step_weights"][-1])
    return int(cfg["max_weight"])


def next_weight(cfg, current):
    """Canary weight after one successful step from ``current`` (Flagger's nextStepWeight,
    capped at max_weight)."""
    top = max_weight(cfg)
    if current >= top:
        return top
    if cfg.get("step_weights"):
        for w in cfg["step_weights"]:
            if w > current:
                return min(w, top)
        return top
    return min(current + int(cfg["step_weight"]), top)


def format_duration(seconds):
    """Seconds as a Prometheus duration (rounded up to whole seconds)."""
    s = int(seconds)
    if s < seconds:
        s += 1
    return "%ds" % max(1, s)


class Rollout(object):
    """One canary release driven to promotion or rollback."""

    def __init__(self, cfg, read_route, write_route, gate, webhook=None, scale=None, promote=None,
                 restore=None, emit=None, now=time.time, sleep=time.sleep, wait_stable=None, canary_ready=None):
        self.cfg = validate_config(cfg)
        self.wait_stable = wait_stable
        self.canary_ready = canary_ready
        self.read_route = read_route
        self.write_route = write_route
        self.gate = gate
        self.webhook = webhook
        self.scale = scale
        self.promote_fn = promote
        self.restore_fn = restore
        self.emit = emit
        self.now = now
        self.sleep = sleep
        self.progress = []
        self.started = None
        self.changed = False
        self.run_id = "%x-%x" % (int(self.now() * 1000), id(self) & 0xffffff)

    def live_window(self):
        """A run that wrote its state more recently than this is considered alive."""
        return max(3 * float(self.cfg["interval"]), 10.0)

    # -- helpers ---------------------------------------------------------
    def _tick(self):
        """Wait for the next iteration on a fixed cadence (like Flagger's ticker): the time an
        iteration takes does not push the following ones later."""
        self._next_tick += float(self.cfg["interval"])
        delay = self._next_tick - self.now()
        if delay > 0:
            self.sleep(delay)
        else:  # an iteration overran the interval: start the next one now, no burst to catch up
            self._next_tick = self.now()

    def _hooks(self, kind):
        return [h for h in self.cfg["webhooks"] if h.get("type", "rollout") == kind]

    def _payload(self, phase, hook):
        return {"name": self.cfg.get("name") or self.cfg["revision"], "namespace": self.cfg.get("namespace"),
                "phase": phase, "revision": self.cfg["revision"], "metadata": hook.get("metadata") or {}}

    def _call_hooks(self, kind, phase):
        """(all_ok, [messages]) for the webhooks of one type; no webhook = ok."""
        msgs, ok_all = [], True
        for hook in self._hooks(kind):
            if self.webhook is None:
                raise RolloutConfigError("webhooks are configured but no webhook caller was given")
            try:
                ok, msg = self.webhook(hook, self._payload(phase, hook))
            except Exception as exc:  # a broken hook is a failed hook, never a pass
                ok, msg = False, "%s" % exc
            msgs.append("%s webhook %s: %s" % (kind, hook["name"], "ok" if ok else "failed: %s" % msg))
            ok_all = ok_all and ok
        return ok_all, msgs

    def _record(self, state, weight, action, decision=None, checks=None, message="", new_weight=None):
        t = self.now()
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)),
            "elapsed": round(t - self.started, 3),
            "iteration": state["iteration"],
            "weight": weight,
            "new_weight": weight if new_weight is None else new_weight,
            "action": action,
            "decision": decision,
            "failed_checks": state["failed_checks"],
            "checks": [{"name": c.get("name"), "status": c.get("status"), "value": c.get("value"),
                        "message": c.get("message")} for c in (checks or [])],
            "message": message,
        }
        self.progress.append(entry)
        if self.emit is not None:
            self.emit(entry)
        return entry

    def _save(self, state, stable_w, canary_w, dry_run=False):
        if not dry_run and self.started is not None:
            # an operator's rollback (operation: rollback / playbooks/rollback.yml) wins over this run
            obs_w, observed = self.read_route()
            if observed and observed.get("run_id") not in (None, self.run_id) \
                    and observed.get("phase") == "rolled_back" and state.get("phase") != "rolled_back":
                raise _RolledBackElsewhere(observed, obs_w)
        state["updated"] = self.now()
        state["run_id"] = self.run_id
        state["canary_weight"] = canary_w
        self.write_route(stable_w, canary_w, state, dry_run=dry_run)
        if not dry_run:
            self.changed = True

    def _result(self, state, status, reason, weights):
        return {"status": status, "reason": reason, "revision": self.cfg["revision"],
                "failed_checks": state.get("failed_checks", 0), "iterations": state.get("iteration", 0),
                "weights": weights, "progress": self.progress, "state": state, "changed": self.changed,
                "duration": round(self.now() - (self.started or self.now()), 3)}

    def _variables(self, state):
        v = {"namespace": self.cfg.get("namespace"), "interval": format_duration(self.cfg["interval"]),
             "revision": self.cfg["revision"]}
        v.update(self.cfg.get("variables") or {})
        return v

    def _new_state(self, observed_canary):
        t = self.now()
        return {"schema": STATE_SCHEMA, "revision": self.cfg["revision"], "phase": "progressing",
                "failed_checks": 0, "iteration": 0, "canary_weight": observed_canary, "started": t,
                "updated": t, "reason": ""}

    # -- public ----------------------------------------------------------
    def plan(self):
        """Check mode: what the first iteration would do, with a dry-run write of the weights."""
        self.started = self.now()
        weights, state = self.read_route()
        if state and state.get("revision") == self.cfg["revision"] and state.get("phase") in TERMINAL_PHASES \
                and not self.cfg.get("restart"):
            return self._result(state, state["phase"],
                                "already %s (state annotation); nothing to do" % state["phase"], weights)
        resumed = bool(state and state.get("revision") == self.cfg["revision"])
        st = dict(state) if resumed else self._new_state(weights["canary"])
        cur = weights["canary"]
        if cur == 0 and st["iteration"] == 0:
            target = next_weight(self.cfg, 0)
            msg = "would run %d pre-rollout webhook(s) and move the canary to %d%%" % (
                len(self._hooks("pre-rollout")), target)
        elif cur >= max_weight(self.cfg):
            target = cur
            msg = "would evaluate the gate at %d%% and promote when it passes" % cur
        else:
            target = next_weight(self.cfg, cur)
            msg = "would evaluate the gate at %d%% and move the canary to %d%% when it passes" % (cur, target)
        st["canary_weight"] = target
        self._save(st, 100 - target, target, dry_run=True)
        self._record(st, cur, "plan", new_weight=target, message=msg)
        return self._result(st, "planned", msg, {"stable": 100 - target, "canary": target})

    def run(self):
        self.started = self.now()
        cfg = self.cfg
        weights, state = self.read_route()
        if state and state.get("revision") == cfg["revision"] and state.get("phase") in TERMINAL_PHASES \
                and not cfg.get("restart"):
            return self._result(state, state["phase"], "already %s (state annotation); nothing to do"
                                % state["phase"], weights)
        if state and state.get("phase") in ("progressing", "promoting") and state.get("run_id") \
                and not state.get("stopped") \
                and state.get("run_id") != self.run_id and state.get("updated") \
                and self.now() - float(state["updated"]) < self.live_window():
            raise RolloutConfigError(
                "another canary_rollout run (%s) is driving this VirtualService: it wrote its state %.1fs ago; "
                "stop it (killing ansible-playbook can leave the module process running on the control node) "
                "or wait %ss" % (state["run_id"], self.now() - float(state["updated"]), self.live_window()))
        if state and state.get("revision") == cfg["revision"] and state.get("phase") not in TERMINAL_PHASES:
            state = dict(state)
            state.pop("stopped", None)
            msg = "resuming %s at canary weight %d%% with %d failed check(s) from the state annotation" % (
                state.get("phase"), weights["canary"], state.get("failed_checks", 0))
            self._record(state, weights["canary"], "resume", message=msg)
            if state.get("phase") == "promoting":
                return self._promote(state, weights["canary"])
        else:
            state = self._new_state(weights["canary"])
            if weights["canary"] > 0:
                # a rollout interrupted before it wrote its state, or weights set by hand
                state["iteration"] = 1
                self._record(state, weights["canary"], "resume",
                             message="no state for revision %s; continuing from the observed canary weight %d%%"
                             % (cfg["revision"], weights["canary"]))
            if self.scale is not None:
                self.scale("up")
        state["phase"] = "progressing"
        last_progress = self.now()
        self._next_tick = self.now()
        top = max_weight(cfg)
        try:
            while True:
                canary_w = weights["canary"]

                # 1. manual rollback
                ok_rb, msgs = self._call_hooks("rollback", "Progressing")
                if self._hooks("rollback") and ok_rb:
                    return self._rollback(state, canary_w, "rollback webhook answered 2xx: " + "; ".join(msgs))
                # 2. threshold and deadline
                if state["failed_checks"] >= int(cfg["threshold"]):
                    return self._rollback(state, canary_w, "failed checks threshold reached (%d)"
                                          % state["failed_checks"])
                if self.now() - last_progress > float(cfg["progress_deadline"]):
                    return self._rollback(state, canary_w, "progress deadline exceeded: no step in %ss"
                                          % cfg["progress_deadline"])
                # 3. analysis
                if canary_w == 0 and state["iteration"] == 0:
                    ok, msgs = self._call_hooks("pre-rollout", "Progressing")
                    if not ok:
                        state["failed_checks"] += 1
                        self._save(state, 100 - canary_w, canary_w)
                        self._record(state, canary_w, "failed_check", decision="fail", message="; ".join(msgs))
                        if state["failed_checks"] >= int(cfg["threshold"]):
                            return self._rollback(state, canary_w, "pre-rollout webhook failed %d time(s)"
                                                  % state["failed_checks"])
                        self._tick()
                        continue
                    gate_res = {"decision": "pass", "checks": []}
                else:
                    ok, msgs = self._call_hooks("rollout", "Progressing")
                    if not ok:
                        gate_res = {"decision": "fail", "checks": []}
                    else:
                        try:
                            gate_res = self.gate(self._variables(state))
                        except Exception as exc:  # an exploding gate is a failed check, never a pass
                            gate_res = {"decision": "fail", "checks": [
                                {"name": "gate", "status": "error", "value": None, "message": str(exc)}]}
                    decision = gate_res.get("decision")
                    if decision not in ("pass", "fail", "hold"):
                        decision = "fail"
                    if canary_w > 0 and _saw_traffic(gate_res.get("checks")):
                        state["traffic_seen"] = state.get("traffic_seen", 0) + 1
                    if decision == "fail":
                        state["failed_checks"] += 1
                        self._save(state, 100 - canary_w, canary_w)
                        self._record(state, canary_w, "failed_check", decision="fail",
                                     checks=gate_res.get("checks"), message="; ".join(msgs))
                        if state["failed_checks"] >= int(cfg["threshold"]):
                            return self._rollback(state, canary_w, "failed checks threshold reached (%d)"
                                                  % state["failed_checks"])
                        self._tick()
                        continue
                    if decision == "hold":
                        self._save(state, 100 - canary_w, canary_w)
                        self._record(state, canary_w, "hold", decision="hold", checks=gate_res.get("checks"),
                                     message="advancement halted: %s" % _summary(gate_res.get("checks")))
                        self._tick()
                        continue
                state["iteration"] += 1
                # 4. advance or promote
                if canary_w < top:
                    new_w = next_weight(cfg, canary_w)
                    self._save(state, 100 - new_w, new_w)
                    self._record(state, canary_w, "advance", decision="pass", checks=gate_res.get("checks"),
                                 new_weight=new_w, message="; ".join(msgs))
                    weights = {"stable": 100 - new_w, "canary": new_w}
                    last_progress = self.now()
                    self._tick()
                    continue
                # 5. a canary that never ran or never served is not promoted, whatever the checks said
                refusal = self._promotion_refusal(state)
                if refusal is not None:
                    kind, why = refusal
                    if kind == "fail":
                        state["failed_checks"] += 1
                    self._save(state, 100 - canary_w, canary_w)
                    self._record(state, canary_w, "failed_check" if kind == "fail" else "hold", decision=kind,
                                 checks=gate_res.get("checks"), message="not promoted: " + why)
                    if state["failed_checks"] >= int(cfg["threshold"]):
                        return self._rollback(state, canary_w, "not promoted: %s" % why)
                    self._tick()
                    continue
                ok, msgs2 = self._call_hooks("confirm-promotion", "WaitingPromotion")
                if not ok:
                    self._save(state, 100 - canary_w, canary_w)
                    self._record(state, canary_w, "hold", decision="pass", checks=gate_res.get("checks"),
                                 message="waiting for promotion: " + "; ".join(msgs2))
                    self._tick()
                    continue
                self._record(state, canary_w, "analysis_passed", decision="pass", checks=gate_res.get("checks"),
                             message="; ".join(msgs + msgs2))
                return self._promote(state, canary_w)
        except _RolledBackElsewhere as other:
            self._record(other.state, weights["canary"], "rolled_back", new_weight=0,
                         message="stopped: rolled back by another run: %s" % other.state.get("reason"))
            return self._result(other.state, "rolled_back", "rolled back by another run: %s"
                                % other.state.get("reason"), other.weights)
        except (RolloutConfigError, RolloutAborted):
            raise
        except Exception as exc:
            # best effort: mark the state as stopped so a re-run resumes at once instead of waiting for
            # this run's liveness window; when even that write fails, the hint says how long to wait
            marked = self._mark_stopped(state, weights, exc)
            hint = resume_hint(state, weights, None if marked else self.live_window())
            state["reason"] = "%s; %s" % (exc, hint)
            raise RolloutAborted("rollout of %s stopped: %s; %s" % (cfg["revision"], exc, hint),
                                 self._result(state, "failed", state["reason"], weights))

    def _mark_stopped(self, state, weights, exc):
        try:
            stopped = dict(state, stopped=True, reason="stopped: %s" % exc)
            self._save(stopped, weights["stable"], weights["canary"])
            return True
        except Exception:  # pylint: disable=broad-except
            # the original error is the one reported
            return False

    def _promotion_refusal(self, state):
        """None when the canary may be promoted, else ("fail"|"hold", why): a canary Deployment that is
        not running and available counts as a failed check; no evidence that the canary ever served
        traffic (no metric check returned data at a canary weight above 0) holds, so the progress
        deadline ends a rollout that never gets traffic."""
        if self.canary_ready is not None:
            ready = self.canary_ready()
            if not ready.get("ready"):
                return "fail", "the canary is not running: %s" % ready.get("message")
        if not state.get("traffic_seen"):
            return "hold", ("no metric check has seen the canary's traffic yet (no data at a canary weight above "
                            "0%): a canary that never served is never promoted")
        return None

    def _promote(self, state, canary_w):
        """Canary 100%, stable rewritten to the canary's version and waited for, stable 100%. When the
        rewrite or the wait fails, the stable's previous template is put back and the stable takes
        100% again (status rolled_back, the reason says so); when that fails too, RolloutAborted
        leaves phase ``promoting`` and the previous template in the state for ``operation: rollback``."""
        state["phase"] = "promoting"
        self._save(state, 0, 100)
        self._record(state, canary_w, "promote", new_weight=100, message="canary takes 100% while the stable "
                     "workload is rewritten to the new version")
        try:
            if self.promote_fn is not None:
                previous = self.promote_fn(state)
                if previous is not None and not state.get("previous_stable"):
                    state["previous_stable"] = previous
                    self._save(state, 0, 100)  # the way back is recorded before the wait
            if self.wait_stable is not None and self.promote_fn is not None:
                self.wait_stable()
        except _RolledBackElsewhere:
            raise
        except Exception as exc:  # pylint: disable=broad-except
            return self._undo_promotion(state, exc)
        state["phase"] = "promoted"
        state["reason"] = "analysis passed at %d%%" % max_weight(self.cfg)
        self._save(state, 100, 0)
        if self.scale is not None:
            self.scale("down")
        _ok, msgs = self._call_hooks("post-rollout", "Succeeded")
        self._record(state, 100, "promoted", new_weight=0,
                     message="stable now runs %s and takes 100%%%s" % (
                         self.cfg["revision"], ("; " + "; ".join(msgs)) if msgs else ""))
        return self._result(state, "promoted", state["reason"], {"stable": 100, "canary": 0})

    def _undo_promotion(self, state, cause):
        previous = state.get("previous_stable")
        restored = None
        if previous and self.restore_fn is not None:
            try:
                restored = self.restore_fn(previous)
            except Exception as exc:  # pylint: disable=broad-except
                state["reason"] = ("promotion failed (%s) and restoring the previous stable template failed (%s); "
                                   "the canary still takes 100%%: run operation: rollback to restore the stable "
                                   "version from the state annotation" % (cause, exc))
                self._record(state, 100, "promotion_failed", new_weight=100, message=state["reason"])
                raise RolloutAborted("rollout of %s: %s" % (self.cfg["revision"], state["reason"]),
                                     self._result(state, "failed", state["reason"], {"stable": 0, "canary": 100}))
        state["phase"] = "rolled_back"
        state["previous_stable"] = None
        if previous:
            state["reason"] = ("promotion failed (%s): the stable Deployment's previous template was restored and "
                               "the stable version takes 100%% again" % cause)
        else:
            state["reason"] = ("promotion failed (%s) before the stable Deployment was rewritten: the stable "
                               "version takes 100%% again" % cause)
        self._save(state, 100, 0)
        if self.scale is not None:
            self.scale("down")
        _ok, msgs = self._call_hooks("post-rollout", "Failed")
        self._record(state, 100, "rolled_back", new_weight=0,
                     message=state["reason"] + (("; " + "; ".join(msgs)) if msgs else ""))
        res = self._result(state, "rolled_back", state["reason"], {"stable": 100, "canary": 0})
        if isinstance(restored, dict):
            res["restored"] = dict(restored, template=previous.get("template"))
        return res

    def _rollback(self, state, canary_w, reason):
        state["phase"] = "rolled_back"
        state["reason"] = reason
        self._save(state, 100, 0)
        if self.scale is not None:
            self.scale("down")
        _ok, msgs = self._call_hooks("post-rollout", "Failed")
        self._record(state, canary_w, "rolled_back", new_weight=0,
                     message=reason + (("; " + "; ".join(msgs)) if msgs else ""))
        return self._result(state, "rolled_back", reason, {"stable": 100, "canary": 0})

    def rollback_now(self, dry_run=False):
        """Instant rollback: stable 100%, canary scaled to 0; after a promotion, the previous stable
        version recorded in the state annotation is restored first."""
        self.started = self.now()
        weights, state = self.read_route()
        state = dict(state or self._new_state(weights["canary"]))
        restored = None
        if state.get("phase") in ("promoted", "promoting") and state.get("previous_stable"):
            if self.restore_fn is None:
                raise RolloutConfigError("the last rollout was promoted; restoring the previous stable version "
                                         "needs the stable workload (stable_deployment)")
            if not dry_run:
                restored = self.restore_fn(state["previous_stable"])
                if isinstance(restored, dict):
                    restored = dict(restored, template=state["previous_stable"].get("template"))
            reason = "rolled back after %s: previous stable version restored" % (
                "promotion" if state.get("phase") == "promoted" else "an unfinished promotion")
            state["previous_stable"] = None
        elif state.get("phase") == "rolled_back" and weights == {"stable": 100, "canary": 0}:
            return self._result(state, "rolled_back", "already rolled back; nothing to do", weights)
        else:
            reason = "manual rollback"
        state["phase"] = "rolled_back"
        state["reason"] = reason
        self._save(state, 100, 0, dry_run=dry_run)
        if self.scale is not None and not dry_run:
            self.scale("down")
        self._record(state, weights["canary"], "rolled_back", new_weight=0, message=reason)
        res = self._result(state, "rolled_back", reason, {"stable": 100, "canary": 0})
        res["restored"] = restored
        return res


def parse_state(obj):
    """The state annotation of a VirtualService as a dict, or None (absent or unreadable)."""
    ann = ((obj.get("metadata") or {}).get("annotations") or {}).get(STATE_ANNOTATION)
    if not ann:
        return None
    try:
        state = json.loads(ann)
    except ValueError:
        return None
    return state if isinstance(state, dict) else None


def route_subset_weights(vs, route, stable_subset, canary_subset):
    """{"stable": w, "canary": w} of the selected http route of a VirtualService dict."""
    from ansible_collections.gpuops.cluster.plugins.module_utils.traffic import find_route, route_weights
    weights = route_weights(vs["spec"]["http"][find_route(vs, route)])
    extra = sorted(s for s, w in weights.items() if w and s not in (stable_subset, canary_subset))
    if extra:
        raise RolloutConfigError("the route also sends traffic to subset(s) %s; a canary rollout shifts weight "
                                 "between %s and %s only" % (", ".join(extra), stable_subset, canary_subset))
    if stable_subset not in weights and canary_subset not in weights:
        raise RolloutConfigError("the route sends to neither subset %s nor %s (it has: %s)"
                                 % (stable_subset, canary_subset, ", ".join(sorted(weights))))
    return {"stable": weights.get(stable_subset, 0), "canary": weights.get(canary_subset, 0)}


def _saw_traffic(checks):
    """True when a metric check returned a value: the canary served requests in the window."""
    return any((c.get("kind") or "metric") == "metric" and c.get("status") in ("pass", "fail")
               and c.get("value") is not None for c in checks or [])


def resume_hint(state, weights, wait=None):
    """What a user can do after a rollout stopped half-way: the state annotation is the resume point."""
    return ("the state annotation keeps phase %s at canary weight %s%% with %s failed check(s): re-run the same "
            "task%s to resume from there, or run operation: rollback to send 100%% to stable"
            % (state.get("phase"), (weights or {}).get("canary"), state.get("failed_checks", 0),
               (" after %ss" % wait) if wait else ""))


def _summary(checks):
    parts = []
    for c in checks or []:
        parts.append("%s=%s%s" % (c.get("name"), c.get("status"),
                                  "" if c.get("value") is None else "(%s)" % round(c["value"], 3)))
    return ", ".join(parts) or "no checks"
