"""The Prometheus client's timeout is a whole-request deadline and its errors tell "slow" from
"unreachable" (plugins/module_utils/promql.py). Real sockets on 127.0.0.1, one short-lived server
thread per test, closed at the end."""

import json
import socket
import threading
import time

import pytest

from ansible_collections.gpuops.cluster.plugins.module_utils import promql
from tests.testbed.common import free_port

ANSWER = json.dumps({"status": "success", "data": {"resultType": "vector",
                                                   "result": [{"metric": {}, "value": [1, "42"]}]}}).encode()


class Server(object):
    """Accepts connections on 127.0.0.1 and runs ``behave(conn)`` for each, until closed."""

    def __init__(self, behave):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.behave = behave
        self.stop = threading.Event()
        self.requests = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                self.requests.append(conn.recv(65536).decode("latin-1"))
                try:
                    self.behave(conn, self.stop)
                except OSError:
                    pass

    def close(self):
        self.stop.set()
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def serve():
    servers = []

    def start(behave):
        servers.append(Server(behave))
        return servers[-1]
    yield start
    for s in servers:
        s.close()


def answer(conn, stop):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(ANSWER)
                 + ANSWER)


def trickle(conn, stop):
    """Headers at once, then one byte of the body every 0.2 s: every socket read returns in time."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(ANSWER))
    for byte in ANSWER:
        if stop.wait(0.2):
            return
        conn.sendall(bytes([byte]))


def silent(conn, stop):
    stop.wait(10)


def test_a_normal_answer_over_a_real_socket(serve):
    srv = serve(answer)
    client = promql.PrometheusClient("http://127.0.0.1:%d/" % srv.port, timeout=5, headers={"X-Scope": "lab"})
    assert client.query('sum(up{job="a b"})') == 42.0
    assert srv.requests[0].startswith("GET /api/v1/query?query=sum%28up%7Bjob%3D%22a+b%22%7D%29 HTTP/1.1")
    assert "X-Scope: lab" in srv.requests[0]


def test_a_trickling_answer_is_cut_at_the_deadline_and_called_slow(serve):
    srv = serve(trickle)
    client = promql.PrometheusClient("http://127.0.0.1:%d" % srv.port, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(promql.PrometheusSlow, match="is slow: connected, but no complete answer within 1.0s"):
        client.query("up")
    assert time.monotonic() - started < 2.0  # one socket-read timeout would have let it run ~40 s


def test_a_silent_server_is_slow_not_unreachable(serve):
    srv = serve(silent)
    with pytest.raises(promql.PrometheusSlow):
        promql.PrometheusClient("http://127.0.0.1:%d" % srv.port, timeout=0.5).query("up")


def test_a_closed_port_is_unreachable_not_slow():
    port = free_port()  # bound and closed again: nobody listens there
    with pytest.raises(promql.PrometheusUnreachable, match="unreachable"):
        promql.PrometheusClient("http://127.0.0.1:%d" % port, timeout=2).query("up")


def test_slow_is_an_error_of_the_gate_never_a_pass(serve):
    from ansible_collections.gpuops.cluster.plugins.module_utils.gate import run_gate
    srv = serve(silent)
    res = run_gate([{"name": "up", "query": "up", "threshold_range": {"min": 1}}], {},
                   {"url": "http://127.0.0.1:%d" % srv.port, "timeout": 0.5})
    assert res["decision"] == "fail" and res["checks"][0]["status"] == "error"
    assert "slow" in res["checks"][0]["message"]


@pytest.mark.parametrize("timeout", [0, -1])
def test_a_zero_or_negative_timeout_is_refused_not_replaced(timeout):
    params = {"prometheus_url": "http://127.0.0.1:9", "prometheus_timeout": timeout}
    assert promql.prometheus_errors(params) == ["prometheus_timeout must be more than 0 seconds, got %r" % timeout]
    assert promql.prometheus_settings(params)["timeout"] == timeout
    with pytest.raises(promql.PrometheusError, match="more than 0"):
        promql.client_from_params(params)
