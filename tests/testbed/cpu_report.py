"""pytest plugin: CPU seconds per test (this process + the subprocesses it waited for).

Wall time is what --durations shows; on a 2-core machine running the VM tier beside the rest,
CPU seconds say what a test really costs the suite. Session servers (kube-apiserver, TorchServe,
Prometheus...) are counted where they are waited for (at teardown). Printed at the end with
``--cpu-report N`` (the N costliest tests and the total per test module); off by default.

Under pytest-xdist (the nodes stream runs on two workers) each worker measures its tests and sends
the figures with the test's teardown report (``user_properties``); the controller prints them.
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


_KEY = "gpuops_cpu_report"


def _is_worker(config) -> bool:
    return hasattr(config, "workerinput")


class _Recorder:
    def __init__(self):
        self.per_test = {}
        self.started = (time.monotonic(), _cpu())
        self._t0 = {}

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        self._t0[item.nodeid] = (time.monotonic(), _cpu())
        yield
        t0, c0 = self._t0.pop(item.nodeid)
        self.per_test.setdefault(item.nodeid, (time.monotonic() - t0, _cpu() - c0))

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        if call.when == "teardown" and item.nodeid in self._t0 and _is_worker(item.config):
            t0, c0 = self._t0[item.nodeid]
            outcome.get_result().user_properties.append((_KEY, (time.monotonic() - t0, _cpu() - c0)))

    def pytest_runtest_logreport(self, report):
        # the controller of an xdist run: the figures a worker measured
        if report.when == "teardown":
            for key, value in getattr(report, "user_properties", ()):
                if key == _KEY:
                    self.per_test[report.nodeid] = tuple(value)

    def pytest_terminal_summary(self, terminalreporter, config):
        n = config.getoption("--cpu-report")
        wall, cpu = time.monotonic() - self.started[0], _cpu() - self.started[1]
        tr = terminalreporter
        tr.section(f"CPU report ({os.cpu_count()} cpus)")
        tr.write_line(f"session: wall {wall:.0f} s, CPU {cpu:.0f} s (self + waited-for children)")
        workers = getattr(config.option, "numprocesses", None)
        if workers:
            tr.write_line(f"tests on {workers} xdist workers: CPU {sum(c for _, c in self.per_test.values()):.0f} s "
                          "(each worker's own count; the session line counts the workers once they exit)")
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
