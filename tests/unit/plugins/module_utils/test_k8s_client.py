"""Transient-error retries of the shared Kubernetes client helpers (no server needed)."""

import pytest
import urllib3
from kubernetes.client.rest import ApiException

from ansible_collections.gpuops.cluster.plugins.module_utils import k8s_client as k


class Flaky:
    """Raises the given errors in turn, then returns 'ok'."""

    def __init__(self, *errors):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return ("ok", args, kwargs)


@pytest.mark.parametrize("exc, transient", [
    (ApiException(status=429), True),
    (ApiException(status=500), True),
    (ApiException(status=503), True),
    (ApiException(status=504), True),
    (ApiException(status=403), False),
    (ApiException(status=404), False),
    (ApiException(status=409), False),
    (ApiException(status=422), False),
    (urllib3.exceptions.ProtocolError("Connection aborted."), True),
    (urllib3.exceptions.ReadTimeoutError(None, "/apis", "Read timed out."), True),
    (ConnectionResetError(), True),
    (ValueError("bad weights"), False),
])
def test_is_transient(exc, transient):
    assert k.is_transient(exc) is transient


def test_transient_errors_are_retried_with_backoff():
    slept = []
    fn = Flaky(ApiException(status=500), ApiException(status=429), urllib3.exceptions.ProtocolError("reset"))
    retries = []
    out = k.retry_transient(fn, attempts=6, sleep=slept.append,
                            on_retry=lambda e, a, d: retries.append((a, d)))(1, x=2)
    assert out == ("ok", (1,), {"x": 2})
    assert fn.calls == 4
    assert slept == [0.5, 1.0, 2.0]
    assert retries == [(1, 0.5), (2, 1.0), (3, 2.0)]


def test_backoff_is_capped():
    slept = []
    fn = Flaky(*[ApiException(status=503)] * 6)
    k.retry_transient(fn, attempts=7, sleep=slept.append)()
    assert slept == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_gives_up_after_the_attempts_with_the_last_error():
    slept = []
    fn = Flaky(*[ApiException(status=503)] * 10)
    with pytest.raises(ApiException) as err:
        k.retry_transient(fn, attempts=3, sleep=slept.append)()
    assert err.value.status == 503 and fn.calls == 3 and len(slept) == 2


@pytest.mark.parametrize("status", [403, 404, 409, 422])
def test_client_errors_are_never_retried(status):
    fn = Flaky(ApiException(status=status))
    with pytest.raises(ApiException):
        k.retry_transient(fn, attempts=5, sleep=lambda s: pytest.fail("must not sleep"))()
    assert fn.calls == 1


def test_backoff_with_jitter_stays_in_the_upper_half_and_stops_at_the_time_limit():
    clock = [0.0]
    b = k.Backoff(1.0, 8.0, timeout=10, jitter=True, now=lambda: clock[0], rand=lambda: 0.0)
    delays = []
    while True:
        d = b.next_delay()
        if d is None:
            break
        delays.append(d)
        clock[0] += d
    assert delays == [0.5, 1.0, 2.0, 4.0] and clock[0] == 7.5  # the next (4.0) would end after 10 s


def test_transient_retries_stop_at_the_time_limit():
    clock = [0.0]

    def sleep(s):
        clock[0] += s
    fn = Flaky(*[ApiException(status=503)] * 50)
    with pytest.raises(ApiException):
        k.retry_transient(fn, attempts=None, timeout=20, sleep=sleep, now=lambda: clock[0])()
    assert clock[0] == 19.5 and fn.calls == 8  # 0.5+1+2+4+4+4+4 = 19.5, the next 4 s would pass 20


@pytest.mark.parametrize("exc, words", [
    (k.K8sClientError("kubeconfig /x does not exist"), "kubeconfig /x does not exist"),
    (ApiException(status=403, reason="Forbidden"), "VirtualService n/vs: Kubernetes API error: HTTP 403 Forbidden"),
    (urllib3.exceptions.MaxRetryError(None, "/apis", "refused"), "VirtualService n/vs: cannot reach the Kubernetes API"),
    (ConnectionRefusedError("refused"), "cannot reach the Kubernetes API server: refused"),
])
def test_one_error_path_for_api_failures(exc, words):
    assert words in k.k8s_error_message(exc, "VirtualService n/vs")


def test_other_errors_are_not_api_failures():
    assert k.k8s_error_message(ValueError("bug")) is None


def test_fail_on_k8s_error_gives_the_status_code_of_an_http_answer():
    calls = []

    class Module(object):
        def fail_json(self, **kw):
            calls.append(kw)
            raise SystemExit(1)
    with pytest.raises(SystemExit):
        k.fail_on_k8s_error(Module(), ApiException(status=422, reason="Unprocessable"), "Deployment n/d")
    assert calls[0]["status_code"] == 422 and calls[0]["msg"].startswith("Deployment n/d: Kubernetes API error")
    with pytest.raises(SystemExit):
        k.fail_on_k8s_error(Module(), ValueError("bug"))
    assert calls[1]["msg"] == "unexpected error: bug" and "ValueError: bug" in calls[1]["exception"]


def test_the_split_modules_are_the_same_objects():
    from ansible_collections.gpuops.cluster.plugins.module_utils import k8s_connection, k8s_errors
    assert k.get_api_client is k8s_connection.get_api_client and k.retry_transient is k8s_errors.retry_transient
