"""Molecule scenarios of every role, on podman systemd nodes (the issue's self-test).

Each role with ``roles/<role>/molecule/default`` gets one test, discovered at collection time:
``molecule test`` must exit 0 (destroy, syntax, create, prepare, check, converge, idempotence,
verify, destroy; see .config/molecule/config.yml) and leave none of its nodes behind.

Run: ``python -m pytest -m molecule tests/integration/test_molecule.py [-k os_baseline]``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.testbed.common import private_stdin

# podman nodes and playbook-heavy: stream 2 of scripts/test all (pytest.ini: nodes)
pytestmark = pytest.mark.nodes

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("GPUOPS_CACHE", str(Path.home() / ".cache" / "gpuops")))
LOG_DIR = Path(os.environ.get("GPUOPS_TESTBED_DIR", "/tmp/gpuops-testbed")) / "molecule"
RESULTS = CACHE / "results" / "molecule.jsonl"
# A scenario on 2 busy shared cores can take a long time: os_baseline's full sequence took
# 28-30 min at load average ~20 (every module run is several podman execs). Bounded anyway.
SCENARIO_TIMEOUT = int(os.environ.get("GPUOPS_MOLECULE_TIMEOUT", "3600"))


# The order the scenarios run in. The nodes stream of `scripts/test all` runs on two pytest-xdist
# workers (`-n 2 --dist load --maxschedchunk 1`), which hand each worker two consecutive tests at the
# start (items 1-2 to one worker, 3-4 to the other) and one at a time after that. So: longest first,
# paired so that both workers' first two take about as long (measured alone in the nodes stream,
# 2026-11-30: vault 499 s, container_runtime 373, kubernetes_packages 204, os_baseline 162,
# preflight 82). A scenario not listed runs after these, in name order. The module's other tests
# are defined below the scenarios so that they do not shift this pairing.
SCENARIO_ORDER = ["vault", "kubernetes_packages", "container_runtime", "preflight", "os_baseline"]


def _scenarios():
    found = sorted(p.parents[2].name for p in REPO.glob("roles/*/molecule/default/molecule.yml"))
    return ([r for r in SCENARIO_ORDER if r in found]
            + [r for r in found if r not in SCENARIO_ORDER])


def _platform_names(role: str):
    data = yaml.safe_load((REPO / "roles" / role / "molecule" / "default" / "molecule.yml").read_text()) or {}
    return [p["name"] for p in data.get("platforms", [])]


def _env():
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    env["ANSIBLE_ROLES_PATH"] = str(REPO / "roles")
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", os.environ.get("ANSIBLE_COLLECTIONS_PATH", ""))
    env["ANSIBLE_CONFIG"] = str(REPO / "ansible.cfg")
    env["ANSIBLE_FORCE_COLOR"] = "false"
    env["PY_COLORS"] = "0"
    env["NO_COLOR"] = "1"
    return env


@pytest.mark.molecule
@pytest.mark.slow
@pytest.mark.timeout(SCENARIO_TIMEOUT + 120)
@pytest.mark.parametrize("role", _scenarios())
def test_molecule_scenario(role):
    for binary in ("podman", "runc"):
        if not shutil.which(binary):
            pytest.fail(f"{binary} is missing: run scripts/setup base")
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"{role}.log"
    t0 = time.monotonic()
    with open(log, "wb") as out:
        try:
            with private_stdin() as stdin:
                proc = subprocess.run(
                    ["timeout", "--kill-after=30", str(SCENARIO_TIMEOUT), sys.executable, "-m", "molecule", "test"],
                    cwd=REPO / "roles" / role, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                    stdin=stdin, check=False)
        finally:
            seconds = round(time.monotonic() - t0, 1)
            # molecule killed by the timeout (or pytest) leaves its nodes running: remove them.
            with private_stdin() as stdin:
                subprocess.run(["timeout", "300", sys.executable, "-m", "molecule", "destroy"],
                               cwd=REPO / "roles" / role, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                               stdin=stdin, check=False)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as res:
        res.write(json.dumps({"role": role, "rc": proc.returncode, "seconds": seconds,
                              "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
    text = log.read_text(errors="replace")
    tail = "\n".join(text.splitlines()[-80:])
    if proc.returncode == 124:
        pytest.fail(f"molecule test of {role} timed out after {SCENARIO_TIMEOUT}s "
                    f"(GPUOPS_MOLECULE_TIMEOUT), log {log}:\n{tail}")
    assert proc.returncode == 0, f"molecule test of {role} failed (rc={proc.returncode}, {seconds}s, log {log}):\n{tail}"
    assert "Idempotence completed successfully" in text, f"{role}: idempotence step did not run:\n{tail}"
    leftovers = [n for n in _platform_names(role)
                 if subprocess.run(["podman", "container", "exists", n], check=False).returncode == 0]
    assert not leftovers, f"{role}: molecule destroy left nodes behind: {leftovers}"


def test_scenarios_are_discovered():
    """Every role with a default scenario is a test, each once (guards the glob and SCENARIO_ORDER)."""
    found = sorted(p.parents[2].name for p in REPO.glob("roles/*/molecule/default/molecule.yml"))
    assert "os_baseline" in found
    assert sorted(_scenarios()) == found
