"""Secrets given to the canary modules never appear in their output: a check's ``token``, a webhook's
``headers`` and ``prometheus_headers`` are ``no_log`` through the shared specs of
plugins/module_utils/canary_spec.py. Runs the modules with ansible-playbook (JSON callback: results,
``invocation.module_args``, warnings, messages) and greps everything printed for the secret values.
Also: the shared specs refuse a misspelt key in a check or a webhook instead of ignoring it.
"""

import json
import secrets

import pytest

from tests.integration import canary_support as cs
from tests.testbed.common import free_port as closed_port  # a port nobody listens on


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nolog")
    port = closed_port()
    tokens = {k: "%s-%s" % (k, secrets.token_hex(8)) for k in ("check", "hook", "prom", "gate")}
    checks = [{"name": "ready", "kind": "torchserve_ready", "management_url": "http://127.0.0.1:%d" % port,
               "model": "m", "version": "1", "token": tokens["check"]},
              {"name": "up", "query": "up", "threshold_range": {"min": 1}}]
    common = {"prometheus_url": "http://127.0.0.1:%d" % port, "prometheus_timeout": 2,
              "prometheus_headers": {"Authorization": "Bearer " + tokens["prom"]}}
    tasks = [
        # fails at the kubeconfig after option parsing: module_args are in the result
        {"name": "rollout", "ignore_errors": True, "gpuops.cluster.canary_rollout": dict(
            common, kubeconfig=str(tmp / "missing"), namespace="n", virtual_service="vs", revision="2",
            checks=checks, webhooks=[{"name": "smoke", "url": "http://127.0.0.1:%d/" % port,
                                      "headers": {"Authorization": "Bearer " + tokens["hook"]}}])},
        # runs its checks for real against closed ports: messages and check results are in the output
        {"name": "gate", "gpuops.cluster.canary_gate": dict(
            common, checks=[dict(checks[0], token=tokens["gate"]), checks[1]])},
        {"name": "typo_check", "ignore_errors": True, "gpuops.cluster.canary_gate": dict(
            common, checks=[{"name": "up", "query": "up", "treshold_range": {"min": 1}}])},
        {"name": "typo_hook", "ignore_errors": True, "gpuops.cluster.canary_rollout": dict(
            common, kubeconfig=str(tmp / "missing"), namespace="n", virtual_service="vs", revision="2",
            checks=checks[1:], webhooks=[{"name": "smoke", "url": "http://x/", "timout": 3}])},
    ]
    pb = cs.write_playbook(tmp / "nolog.yml", tasks)
    out = cs.run_playbook(pb, {}, tmp, timeout=300)
    out["tokens"] = tokens
    return out


def test_secrets_never_appear_in_the_output(run):
    assert {"rollout", "gate"} <= set(run["tasks"]), run["stderr"] + run["stdout"][-3000:]
    rollout, gate = run["tasks"]["rollout"], run["tasks"]["gate"]
    # the grep below is meaningful: the arguments and the check results are in the output
    assert rollout.get("failed") and "does not exist" in rollout["msg"], rollout
    args = rollout["invocation"]["module_args"]
    assert args["checks"][0]["name"] == "ready" and args["webhooks"][0]["name"] == "smoke", args
    assert gate["decision"] == "fail" and len(gate["checks"]) == 2, gate
    assert gate["invocation"]["module_args"]["checks"][0]["management_url"].startswith("http://127.0.0.1:")
    printed = run["stdout"] + run["stderr"]
    for name, value in run["tokens"].items():
        assert value not in printed, "%s secret leaked into the output" % name
    assert "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER" in json.dumps(args) or "********" in json.dumps(args)


@pytest.mark.parametrize("task, key", [("typo_check", "treshold_range"), ("typo_hook", "timout")])
def test_a_misspelt_key_is_refused(run, task, key):
    res = run["tasks"][task]
    assert res.get("failed") and "Unsupported parameters" in res["msg"] and key in res["msg"], res
