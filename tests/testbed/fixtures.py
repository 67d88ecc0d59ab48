"""Session fixtures for the test-bed components.

Every fixture starts its component once per session, stops it by PID at the
end and keeps its logs when any test failed.
"""

import contextlib
import importlib

import pytest


@contextlib.contextmanager
def running(module: str, cls: str, keep_logs, **kwargs):
    comp = getattr(importlib.import_module(module), cls)(**kwargs)
    comp.start()
    try:
        yield comp
    finally:
        comp.stop()
        comp.cleanup(keep_logs=keep_logs())


@pytest.fixture(scope="session")
def prometheus_factory(keep_logs):
    """Call with a scrape-target list to get a running Prometheus (see tests/testbed/prometheus.py)."""
    started = []

    def _make(**kwargs):
        comp = importlib.import_module("tests.testbed.prometheus").Prometheus(**kwargs)
        comp.start()
        started.append(comp)
        return comp
    yield _make
    for comp in started:
        comp.stop()
        comp.cleanup(keep_logs=keep_logs())


@pytest.fixture(scope="session")
def torchserve(keep_logs):
    with running("tests.testbed.torchserve", "TorchServe", keep_logs) as comp:
        yield comp


@pytest.fixture(scope="session")
def k8s(keep_logs):
    with running("tests.testbed.k8s", "KubeCluster", keep_logs) as comp:
        yield comp


@pytest.fixture(scope="session")
def openbao_dev(keep_logs):
    with running("tests.testbed.openbao", "OpenBao", keep_logs, mode="dev") as comp:
        yield comp


@pytest.fixture(scope="session")
def openbao_raft(keep_logs):
    with running("tests.testbed.openbao", "OpenBao", keep_logs, mode="raft") as comp:
        yield comp
