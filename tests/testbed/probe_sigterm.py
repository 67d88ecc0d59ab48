"""Probe run by tests/integration/test_testbed_lifecycle.py in a child pytest: it starts a real
Prometheus through the session fixture, says where it runs, and waits to be killed."""

import os
import time
from pathlib import Path


def test_hold_a_server_until_terminated(prometheus_factory):
    prom = prometheus_factory(name="prometheus-probe")
    out = Path(os.environ["GPUOPS_PROBE_OUT"])
    out.with_suffix(".tmp").write_text(str(prom.info["config"]))
    os.replace(out.with_suffix(".tmp"), out)
    time.sleep(600)  # the parent sends SIGTERM long before
