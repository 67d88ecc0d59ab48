"""pytest plugin: CPU seconds per test (this process + the subprocesses it waited for).

Wall time is what --durations shows; on a 2-core machine running the VM tier beside the rest,
CPU seconds say what a test really costs the suite. Session servers (kube-apiserver, TorchServe,
Prometheus...) are counted where they are waited for (at teardown). Printed at the end with
``--cpu-report N`` (the N costliest tests and the total per test module); off by default.
"""

from __future__ import annotations

import os
import resource
import time
from collections import defaultdict

import pytest


def _cpu() -> float:
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def pytest_addoption(parser):
    parser.addoption("--cpu-report", type=int, default=0, metavar="N",
                     help="print the N tests that used the most CPU (self + waited-for children)")


class _Recorder:
    def __init__(self):
        self.per_test = {}
        self.started = (time.monotonic(), _cpu())

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        t0, c0 = time.monotonic(), _cpu()
        yield
        self.per_test[item.nodeid] = (time.monotonic() - t0, _cpu() - c0)

    def pytest_terminal_summary(self, terminalreporter, config):
        n = config.getoption("--cpu-report")
        wall, cpu = time.monotonic() - self.started[0], _cpu() - self.started[1]
        tr = terminalreporter
        tr.section(f"CPU report ({os.cpu_count()} cpus)")
        tr.write_line(f"session: wall {wall:.0f} s, CPU {cpu:.0f} s (self + waited-for children)")
        by_module = defaultdict(lambda: [0.0, 0.0, 0])
        for nodeid, (w, c) in self.per_test.items():
            m = by_module[nodeid.split("::")[0]]
            m[0] += w
            m[1] += c
            m[2] += 1
        tr.write_line("per module (wall s, CPU s, tests):")
        for mod, (w, c, k) in sorted(by_module.items(), key=lambda kv: -kv[1][1]):
            tr.write_line(f"  {c:7.1f} CPU  {w:7.1f} wall  {k:4d}  {mod}")
        tr.write_line(f"top {n} tests by CPU:")
        for nodeid, (w, c) in sorted(self.per_test.items(), key=lambda kv: -kv[1][1])[:n]:
            tr.write_line(f"  {c:7.1f} CPU  {w:7.1f} wall  {nodeid}")


def pytest_configure(config):
    if config.getoption("--cpu-report", 0):
        config.pluginmanager.register(_Recorder(), "gpuops-cpu-report")
