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
