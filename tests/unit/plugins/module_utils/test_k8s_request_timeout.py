"""Every API request of get_api_client's client is bounded (request_timeout), against a real socket on
127.0.0.1 that accepts connections and never answers: what a control plane that stops answering
mid-request looks like to the client. Without the bound the client library waits forever."""

import socket
import threading
import time

import pytest
import urllib3

from ansible_collections.gpuops.cluster.plugins.module_utils import k8s_client as k


@pytest.fixture
def silent_server():
    """A listening socket on 127.0.0.1 that never reads or answers (the kernel completes the TCP
    handshake from the backlog). Closed at the end of the test."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    try:
        yield "http://127.0.0.1:%d" % srv.getsockname()[1]
    finally:
        srv.close()


def _timed_out(exc):
    """urllib3's read timeout, raised as it is or (after urllib3's own retries) as the reason of a
    MaxRetryError."""
    if isinstance(exc, urllib3.exceptions.MaxRetryError):
        exc = exc.reason
    return isinstance(exc, urllib3.exceptions.TimeoutError)


def _call_in_thread(fn, limit=20.0):
    """Run fn in a daemon thread; return (exception raised or None, seconds). A hung call fails the test
    after `limit` seconds instead of hanging the suite."""
    box = {}

    def target():
        t0 = time.monotonic()
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - the exception is the result under test
            box["exc"] = exc
        box["seconds"] = time.monotonic() - t0
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), "the API request was still waiting after %s s: it is not bounded" % limit
    return box.get("exc"), box["seconds"]


def test_a_request_to_a_silent_api_server_times_out_as_a_transient_error(silent_server):
    client = k.get_api_client({"host": silent_server, "api_key": "not-a-secret", "request_timeout": 0.5})
    exc, seconds = _call_in_thread(lambda: k.CustomObjects(client).get(
        "networking.istio.io", "v1", "virtualservices", "default", "vs"))
    assert _timed_out(exc), repr(exc)
    assert k.is_transient(exc)
    assert seconds < 10


def test_a_call_of_its_own_timeout_wins_over_the_client_default(silent_server):
    client = k.get_api_client({"host": silent_server, "api_key": "not-a-secret", "request_timeout": 600})
    api = k.CustomObjects(client).api
    exc, seconds = _call_in_thread(lambda: api.get_namespaced_custom_object(
        "networking.istio.io", "v1", "default", "virtualservices", "vs", _request_timeout=(0.5, 0.5)))
    assert _timed_out(exc), repr(exc)
    assert seconds < 10


def test_the_default_is_30_seconds_and_the_environment_can_set_it(monkeypatch):
    params = {"host": "https://api.example:6443", "api_key": "not-a-secret"}
    monkeypatch.delenv("K8S_AUTH_REQUEST_TIMEOUT", raising=False)
    assert k.get_api_client(params).request_timeout == k.DEFAULT_REQUEST_TIMEOUT == 30.0
    monkeypatch.setenv("K8S_AUTH_REQUEST_TIMEOUT", "7.5")
    assert k.get_api_client(params).request_timeout == 7.5
    assert k.get_api_client(dict(params, request_timeout=3)).request_timeout == 3.0


@pytest.mark.parametrize("value", [0, -1, "soon"])
def test_a_timeout_that_is_not_a_positive_number_is_refused(value):
    with pytest.raises(k.K8sClientError, match="request_timeout must be a number of seconds above 0"):
        k.get_api_client({"host": "https://api.example:6443", "api_key": "x", "request_timeout": value})
