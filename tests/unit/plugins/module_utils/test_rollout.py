"""Unit tests of the canary state machine (plugins/module_utils/rollout.py).

The clock, the VirtualService and the gate are in-memory stand-ins here: these tests pin the
weights math and the state transitions; tests/integration/test_canary_rollout.py runs the same
core against a real kube-apiserver, Prometheus and TorchServe.
"""

import pytest

from ansible_collections.gpuops.cluster.plugins.module_utils import rollout as r


class World(object):
    """Clock + route + scripted gate decisions for one rollout."""

    def __init__(self, decisions=None, canary=0, state=None, hooks=None):
        self.t = 1000.0
        self.weights = {"stable": 100 - canary, "canary": canary}
        self.state = state
        self.decisions = list(decisions or [])
        self.writes = []
        self.scaled = []
        self.hooks = hooks or {}
        self.hook_calls = []
        self.promoted = []
        self.restored = []

    def now(self):
        return self.t

    def sleep(self, s):
        self.t += s

    def read_route(self):
        return dict(self.weights), (dict(self.state) if self.state else None)

    def write_route(self, stable, canary, state, dry_run=False):
        assert stable + canary == 100
        self.writes.append((stable, canary, state["phase"], dry_run))
        if not dry_run:
            self.weights = {"stable": stable, "canary": canary}
            self.state = dict(state)

    def gate(self, variables):
        self.variables = variables
        d = self.decisions.pop(0) if self.decisions else "pass"
        if isinstance(d, Exception):
            raise d
        return {"decision": d, "checks": [{"name": "sr", "status": {"pass": "pass", "fail": "fail",
                                                                     "hold": "no_data"}[d], "value": 99.0}]}

    def webhook(self, hook, payload):
        self.hook_calls.append((hook["name"], payload["phase"]))
        res = self.hooks.get(hook["name"], True)
        if isinstance(res, list):
            res = res.pop(0) if res else True
        return res, "HTTP 200" if res else "HTTP 500"

    def scale(self, direction):
        self.scaled.append(direction)

    def promote(self, state):
        self.promoted.append(state["revision"])
        return {"deployment": "resnet-stable", "template": {"image": "v1"}}

    def restore(self, previous):
        self.restored.append(previous)
        return previous

    def rollout(self, **cfg):
        base = {"revision": "2.0", "namespace": "serving", "interval": 2, "threshold": 2, "step_weight": 20,
                "max_weight": 60, "progress_deadline": 30}
        base.update(cfg)
        return r.Rollout(base, read_route=self.read_route, write_route=self.write_route, gate=self.gate,
                         webhook=self.webhook, scale=self.scale, promote=self.promote, restore=self.restore,
                         now=self.now, sleep=self.sleep)


@pytest.mark.parametrize("cfg,current,expected", [
    ({"step_weight": 20, "max_weight": 50}, 0, 20),
    ({"step_weight": 20, "max_weight": 50}, 40, 50),   # capped, Flagger would overshoot to 60
    ({"step_weight": 20, "max_weight": 50}, 50, 50),
    ({"step_weights": [1, 5, 25, 80]}, 0, 1),
    ({"step_weights": [1, 5, 25, 80]}, 5, 25),
    ({"step_weights": [1, 5, 25, 80]}, 7, 25),         # observed weight between steps: next step up
    ({"step_weights": [1, 5, 25, 80]}, 80, 80),
])
def test_next_weight(cfg, current, expected):
    cfg = r.validate_config(dict(cfg, revision="x"))
    assert r.next_weight(cfg, current) == expected


@pytest.mark.parametrize("cfg,msg", [
    ({}, "revision is required"),
    ({"revision": "x", "step_weight": 10, "step_weights": [10]}, "not both"),
    ({"revision": "x", "step_weights": [10, 5]}, "strictly increasing"),
    ({"revision": "x", "step_weights": [10, 50], "max_weight": 40}, "conflicts"),
    ({"revision": "x", "threshold": 0}, "threshold"),
    ({"revision": "x", "interval": 10, "progress_deadline": 5}, "at least one interval"),
    ({"revision": "x", "webhooks": [{"name": "a", "url": "http://x", "type": "bogus"}]}, "type must be"),
])
def test_validate_config_rejects(cfg, msg):
    with pytest.raises(r.RolloutConfigError, match=msg):
        r.validate_config(cfg)


def test_healthy_rollout_promotes_step_by_step():
    w = World()
    res = w.rollout().run()
    assert res["status"] == "promoted"
    canary_weights = [c for (_s, c, _p, _d) in w.writes]
    assert canary_weights == [20, 40, 60, 100, 100, 0]  # 100 twice: the way back is saved before the wait
    assert [p for (_s, _c, p, _d) in w.writes][-2:] == ["promoting", "promoted"]
    assert w.promoted == ["2.0"] and w.scaled == ["up", "down"]
    assert w.state["phase"] == "promoted" and w.state["previous_stable"]["template"] == {"image": "v1"}
    actions = [e["action"] for e in res["progress"]]
    assert actions == ["advance", "advance", "advance", "analysis_passed", "promote", "promoted"]
    assert w.variables["interval"] == "2s" and w.variables["namespace"] == "serving"


def test_failed_checks_roll_back_at_threshold_in_the_same_iteration():
    w = World(decisions=["pass", "fail", "fail"])
    res = w.rollout(threshold=2).run()
    assert res["status"] == "rolled_back" and "threshold reached (2)" in res["reason"]
    assert w.weights == {"stable": 100, "canary": 0} and w.scaled[-1] == "down"
    # t=0 pre-rollout -> 20%, t=2 pass -> 40%, t=4 fail, t=6 fail -> rollback at once (Flagger: t=8)
    assert res["progress"][-1]["elapsed"] == 6.0


def test_failure_then_recovery_does_not_roll_back_below_threshold():
    w = World(decisions=["pass", "fail", "pass", "pass", "pass"])
    res = w.rollout(threshold=2).run()
    assert res["status"] == "promoted" and res["failed_checks"] == 1


def test_hold_halts_without_counting_and_deadline_rolls_back():
    w = World(decisions=["hold"] * 50)
    res = w.rollout(on_no_data="hold", progress_deadline=10).run()
    assert res["status"] == "rolled_back" and "progress deadline" in res["reason"]
    assert res["failed_checks"] == 0
    assert max(c for (_s, c, _p, _d) in w.writes) == 20


def test_gate_exception_is_a_failed_check_never_a_pass():
    w = World(decisions=["pass", RuntimeError("prometheus down"), RuntimeError("prometheus down")])
    res = w.rollout().run()
    assert res["status"] == "rolled_back"
    assert res["progress"][-2]["checks"][0]["status"] == "error"


def test_pre_rollout_hook_failures_count_and_roll_back():
    hooks = [{"name": "smoke", "url": "http://h", "type": "pre-rollout"}]
    w = World(hooks={"smoke": False})
    res = w.rollout(webhooks=hooks).run()
    assert res["status"] == "rolled_back" and "pre-rollout" in res["reason"]
    assert max(c for (_s, c, _p, _d) in w.writes) == 0


def test_confirm_promotion_holds_until_approved():
    hooks = [{"name": "approve", "url": "http://h", "type": "confirm-promotion"}]
    w = World(hooks={"approve": [False, False, True]})
    res = w.rollout(webhooks=hooks).run()
    assert res["status"] == "promoted"
    assert [e["action"] for e in res["progress"]].count("hold") == 2


def test_rollback_webhook_aborts():
    hooks = [{"name": "abort", "url": "http://h", "type": "rollback"}]
    w = World(hooks={"abort": [False, False, True]})
    res = w.rollout(webhooks=hooks).run()
    assert res["status"] == "rolled_back" and "rollback webhook" in res["reason"]


def test_resume_continues_from_observed_weight_and_failed_checks():
    state = {"revision": "2.0", "phase": "progressing", "failed_checks": 1, "iteration": 2, "canary_weight": 40}
    w = World(canary=40, state=state, decisions=["fail"])
    res = w.rollout(threshold=2).run()
    # one more failure reaches the threshold carried over in the annotation
    assert res["status"] == "rolled_back" and res["failed_checks"] == 2
    assert res["progress"][0]["action"] == "resume"


def test_resume_without_state_continues_from_weight():
    w = World(canary=40)
    res = w.rollout().run()
    assert res["status"] == "promoted"
    assert [c for (_s, c, _p, _d) in w.writes][:2] == [60, 100]


def test_finished_revision_is_a_noop():
    state = {"revision": "2.0", "phase": "promoted", "failed_checks": 0, "iteration": 4}
    w = World(state=state)
    res = w.rollout().run()
    assert res["status"] == "promoted" and res["changed"] is False and w.writes == []


def test_check_mode_plan_writes_only_dry_run():
    w = World()
    res = w.rollout().plan()
    assert res["status"] == "planned" and res["weights"] == {"stable": 80, "canary": 20}
    assert w.writes == [(80, 20, "progressing", True)] and w.weights["canary"] == 0


def test_rollback_after_promotion_restores_previous_stable():
    w = World()
    w.rollout().run()
    res = w.rollout().rollback_now()
    assert res["status"] == "rolled_back" and "after promotion" in res["reason"]
    assert w.restored == [{"deployment": "resnet-stable", "template": {"image": "v1"}}]
    res2 = w.rollout().rollback_now()
    assert res2["changed"] is False and "already" in res2["reason"]


def test_a_live_concurrent_run_is_refused_and_a_stale_one_resumed():
    state = {"revision": "2.0", "phase": "progressing", "failed_checks": 0, "iteration": 2, "canary_weight": 40,
             "run_id": "other", "updated": 1000.0 - 3}
    w = World(canary=40, state=state)
    with pytest.raises(r.RolloutConfigError, match="another canary_rollout run"):
        w.rollout().run()
    assert w.writes == []
    w.t = 1000.0 + 60  # the other run stopped writing a while ago: resume
    res = w.rollout().run()
    assert res["status"] == "promoted" and res["progress"][0]["action"] == "resume"


def test_a_manual_rollback_during_the_run_stops_it():
    w = World()
    ro = w.rollout()
    real_gate = w.gate

    def gate_then_operator_rolls_back(variables):
        res = real_gate(variables)
        if w.weights["canary"] == 40:
            other = w.rollout()
            other.rollback_now()
        return res
    ro.gate = gate_then_operator_rolls_back
    res = ro.run()
    assert res["status"] == "rolled_back" and "another run" in res["reason"]
    assert w.weights == {"stable": 100, "canary": 0}


# -- the harder engine (issue 11): one class of input per test ---------------------------------------

@pytest.mark.parametrize("cfg,msg", [
    ({"step_weight": 0}, "step_weight must be an integer between 1 and 100, got 0"),   # never replaced by 10
    ({"step_weight": -5}, "step_weight"),
    ({"step_weight": 101}, "step_weight"),
    ({"step_weight": True}, "step_weight"),
    ({"step_weights": []}, "step_weights is empty"),
    ({"step_weights": [0, 10]}, "strictly increasing"),
    ({"max_weight": 0}, "max_weight must be an integer between 1 and 100, got 0"),
    ({"max_weight": -1}, "max_weight"),
    ({"threshold": 0}, "threshold must be an integer of 1 or more, got 0"),
    ({"threshold": -2}, "threshold"),
    ({"threshold": 1.5}, "threshold"),
    ({"interval": 0}, "interval must be more than 0 seconds, got 0"),
    ({"interval": -1}, "interval"),
    ({"interval": float("nan")}, "interval"),
    ({"progress_deadline": 0}, "at least one interval"),
    ({"progress_deadline": -60}, "at least one interval"),
])
def test_every_number_is_validated_and_zero_is_not_a_default(cfg, msg):
    with pytest.raises(r.RolloutConfigError, match=msg.replace("(", "\\(")):
        r.validate_config(dict(cfg, revision="x"))


def test_invalid_numbers_fail_before_anything_is_read_or_written():
    w = World()
    with pytest.raises(r.RolloutConfigError):
        w.rollout(step_weight=0)
    assert w.writes == [] and w.scaled == []


def no_data_gate(variables):
    """on_no_data: pass lets a gate without any data pass: nothing proves the canary served."""
    return {"decision": "pass", "checks": [{"name": "sr", "kind": "metric", "status": "no_data", "value": None}]}


def test_a_canary_that_never_received_traffic_is_never_promoted():
    w = World()
    ro = w.rollout()
    ro.gate = no_data_gate
    res = ro.run()
    assert res["status"] == "rolled_back" and "progress deadline" in res["reason"], res["reason"]
    assert w.promoted == [] and max(c for (_s, c, _p, _d) in w.writes) == 60
    holds = [e for e in res["progress"] if e["action"] == "hold"]
    assert holds and "never served" in holds[0]["message"]


def test_readiness_checks_alone_are_no_proof_of_traffic():
    w = World()
    ro = w.rollout()
    ro.gate = lambda v: {"decision": "pass", "checks": [
        {"name": "dep", "kind": "deployment_available", "status": "pass", "value": 1}]}
    assert ro.run()["status"] == "rolled_back" and w.promoted == []


def test_a_canary_that_is_not_running_is_never_promoted():
    w = World()
    ro = w.rollout()
    ro.canary_ready = lambda: {"ready": False, "message": "Deployment serving/resnet-canary is scaled to 0"}
    res = ro.run()
    assert res["status"] == "rolled_back" and w.promoted == []
    assert "not promoted: the canary is not running" in res["reason"] and "scaled to 0" in res["reason"]


def test_a_running_canary_with_traffic_is_promoted():
    w = World()
    ro = w.rollout()
    ro.canary_ready = lambda: {"ready": True, "message": "ok"}
    res = ro.run()
    assert res["status"] == "promoted" and res["state"]["traffic_seen"] >= 1


def test_a_failed_wait_during_promotion_restores_stable_at_100_with_its_previous_template():
    w = World()
    ro = w.rollout()

    def wait_stable():
        # the way back is already in the annotation when the wait fails
        assert w.state["phase"] == "promoting" and w.state["previous_stable"]["template"] == {"image": "v1"}
        raise RuntimeError("Deployment serving/resnet-stable not available after 300s")
    ro.wait_stable = wait_stable
    res = ro.run()
    assert res["status"] == "rolled_back"
    assert "promotion failed" in res["reason"] and "previous template was restored" in res["reason"]
    assert w.restored == [{"deployment": "resnet-stable", "template": {"image": "v1"}}]
    assert w.weights == {"stable": 100, "canary": 0} and w.state["phase"] == "rolled_back"
    assert w.state["previous_stable"] is None and w.scaled[-1] == "down"


def test_a_failed_restore_after_a_failed_promotion_is_resumable_by_rollback():
    w = World()
    ro = w.rollout()
    ro.wait_stable = lambda: (_ for _ in ()).throw(RuntimeError("wait failed"))
    ro.restore_fn = lambda previous: (_ for _ in ()).throw(RuntimeError("apiserver gone"))
    with pytest.raises(r.RolloutAborted, match="run operation: rollback"):
        ro.run()
    assert w.state["phase"] == "promoting" and w.state["previous_stable"]["template"] == {"image": "v1"}
    res = w.rollout().rollback_now()
    assert res["status"] == "rolled_back" and "unfinished promotion" in res["reason"]
    assert w.restored and w.weights == {"stable": 100, "canary": 0}


def test_a_write_that_gives_up_leaves_a_resumable_state():
    w = World(decisions=["pass", "pass"])
    ro = w.rollout()
    real_write = w.write_route
    calls = []

    def write(stable, canary, state, dry_run=False):
        calls.append(canary)
        if len(calls) == 2:
            raise RuntimeError("VirtualService serving/resnet kept changing under us: 9 write conflicts")
        return real_write(stable, canary, state, dry_run)
    ro.write_route = write
    with pytest.raises(r.RolloutAborted) as err:
        ro.run()
    msg = str(err.value)
    assert "kept changing" in msg and "re-run the same task to resume" in msg and "operation: rollback" in msg
    assert w.state["phase"] == "progressing" and w.weights == {"stable": 80, "canary": 20}
    again = w.rollout().run()  # resumes from 20% (no live-run refusal: the annotation is old enough)
    assert again["progress"][0]["action"] == "resume" and again["status"] == "promoted"
