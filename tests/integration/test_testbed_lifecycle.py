"""Test-bed plumbing: a pytest run that is terminated (CI's time limit, ``kill PID``) still stops
the servers it started, through the fixtures' finalizers (tests/conftest.py turns SIGTERM into
KeyboardInterrupt); children get a stdin of their own (tests/testbed/common.py private_stdin)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.testbed.common import private_stdin

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def processes_naming(text):
    """PIDs whose command line contains ``text``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def test_sigterm_stops_the_servers_of_a_run(tmp_path):
    out = tmp_path / "probe"
    child = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/testbed/probe_sigterm.py"],
        cwd=REPO, env=dict(os.environ, GPUOPS_PROBE_OUT=str(out)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not out.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert out.exists(), "the probe never started its Prometheus:\n" + (
            child.communicate(timeout=60)[0] if child.poll() is not None else "(still running)")
        config = out.read_text()
        assert processes_naming(config), "the probe's Prometheus is not running"
        child.send_signal(signal.SIGTERM)
        output = child.communicate(timeout=90)[0]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    deadline = time.monotonic() + 30
    while processes_naming(config) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = processes_naming(config)
    for pid in left:  # do not leave them to their lifetime bound if the test fails
        os.kill(pid, signal.SIGKILL)
    assert "KeyboardInterrupt" in output, output
    assert not left, "SIGTERM left the probe's Prometheus running: PIDs %s\n%s" % (left, output)


# What a killed ssh leaves on the stdin it was given (CI: the VM tier's ssh wait for a booting guest,
# then "Ansible requires blocking IO on stdin/stdout/stderr" from the next ansible-playbook).
SET_NON_BLOCKING = [sys.executable, "-c", "import os; os.set_blocking(0, False)"]


def ansible_version(stdin):
    return subprocess.run(["ansible-playbook", "--version"], stdin=stdin, capture_output=True, text=True,
                          timeout=120, check=False)


def test_a_private_stdin_keeps_a_non_blocking_flag_from_reaching_ansible():
    with open(os.devnull, "rb") as shared:  # the trap: one open /dev/null (like subprocess.DEVNULL) for two children
        subprocess.run(SET_NON_BLOCKING, stdin=shared, check=True)
        trapped = ansible_version(shared)
    assert trapped.returncode != 0 and "requires blocking IO" in trapped.stdout + trapped.stderr, trapped
    with private_stdin() as stdin:
        subprocess.run(SET_NON_BLOCKING, stdin=stdin, check=True)
    with private_stdin() as stdin:
        ok = ansible_version(stdin)
    assert ok.returncode == 0 and "ansible-playbook [core" in ok.stdout, ok
