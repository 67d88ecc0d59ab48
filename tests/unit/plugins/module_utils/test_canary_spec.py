"""Shared option specs and numeric checks of the canary modules (plugins/module_utils/canary_spec.py)."""

import pytest

from ansible_collections.gpuops.cluster.plugins.module_utils import canary_spec as cs


def test_secrets_are_no_log_and_the_specs_are_copies():
    assert cs.CHECK_SPEC["token"]["no_log"] is True
    assert cs.WEBHOOK_SPEC["headers"]["no_log"] is True
    spec = cs.check_argument_spec(required=True)
    assert spec["required"] and spec["options"]["token"]["no_log"]
    spec["options"]["token"]["no_log"] = False
    assert cs.CHECK_SPEC["token"]["no_log"] is True, "callers get a copy"
    assert cs.webhook_argument_spec()["options"]["headers"]["no_log"] is True


@pytest.mark.parametrize("values,rules,errors", [
    ({"a": 0}, {"a": ">0"}, ["a must be more than 0, got 0"]),
    ({"a": -1}, {"a": ">=0"}, ["a must be 0 or more, got -1"]),
    ({"a": 0}, {"a": ">=0"}, []),
    ({"a": 0}, {"a": ">=1"}, ["a must be 1 or more, got 0"]),
    ({"a": 1.0}, {"a": "(0,1)"}, ["a must be between 0 and 1 (both excluded), got 1.0"]),
    ({"a": 0.5}, {"a": "(0,1)"}, []),
    ({"a": 101}, {"a": "1..100"}, ["a must be between 1 and 100, got 101"]),
    ({"a": None}, {"a": ">0"}, []),                     # not given: the default applies
    ({"a": float("nan")}, {"a": ">0"}, ["a must be more than 0, got nan"]),
    ({"a": True}, {"a": ">0"}, ["a must be more than 0, got True"]),
])
def test_numeric_errors(values, rules, errors):
    assert cs.numeric_errors(values, rules) == errors


def test_check_and_webhook_numbers_name_their_entry():
    errors = cs.check_list_errors([{"name": "sr", "min_request_volume": -1, "timeout": 0, "min_ready_workers": 0}],
                                  [{"name": "smoke", "timeout": 0}])
    assert errors == ["checks[0] (sr): min_ready_workers must be 1 or more, got 0",
                      "checks[0] (sr): min_request_volume must be 0 or more, got -1",
                      "checks[0] (sr): timeout must be more than 0, got 0",
                      "webhooks[0] (smoke): timeout must be more than 0, got 0"]
