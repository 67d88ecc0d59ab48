"""playbooks/upgrade.yml's offline preflight against inventories/sample (no cluster, no host contacted).

`--tags upgrade_preflight` runs the collection's preflight and the upgrade role's inventory step
only: action plugins on the controller, so the sample inventory's unreachable addresses are never
dialled (every host's recap shows unreachable=0 and changed=0). Three runs, side by side:

- a skipped minor (1.34.2 -> 1.36.3): refused by the preflight play, naming the variable and the fix;
- a one-minor downgrade that the preflight role accepts with preflight_allow_downgrade (a rebuild):
  refused by the upgrade role's own rule (the contract's check_upgrade: upgrade.yml never
  downgrades) — so the upgrade rule is proved to run in the playbook, not only in unit tests;
- the valid step (1.35.4 -> 1.36.3): passes, and says so, so the refusals above can fail.

What a real cluster adds (facts, etcd snapshot, drains, kubeadm) is not run here: docs/day2-upgrade.md.
"""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.testbed.common import private_stdin

REPO = Path(__file__).resolve().parents[2]
CASES = {
    "skipped-minor": ["-e", "gpuops_kubernetes_current_version=1.34.2"],
    "downgrade": ["-e", "gpuops_kubernetes_current_version=1.36.3", "-e", "gpuops_kubernetes_version=1.35.4",
                  "-e", "preflight_allow_downgrade=true"],
    "valid": ["-e", "gpuops_kubernetes_current_version=1.35.4"],
}


def _run(name, extra, workdir: Path):
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
               ANSIBLE_CALLBACK_RESULT_FORMAT="json", ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0",
               ANSIBLE_LOCAL_TEMP=str(workdir / name / "ansible-tmp"))
    cmd = ["ansible-playbook", "-i", str(REPO / "inventories" / "sample" / "hosts.yml"),
           str(REPO / "playbooks" / "upgrade.yml"), "--tags", "upgrade_preflight",
           "-e", "gpuops_kubeconfig=/nonexistent/admin.conf", "-e", "gpuops_upgrade_worker_batch=100%"] + extra
    with private_stdin() as stdin:
        proc = subprocess.run(cmd, stdin=stdin, cwd=str(REPO), env=env, capture_output=True, text=True,
                              timeout=300, check=False)
    return proc.returncode, json.loads(proc.stdout), proc.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("upgrade-preflight")
    with ThreadPoolExecutor(max_workers=len(CASES)) as pool:
        futures = {name: pool.submit(_run, name, extra, workdir) for name, extra in CASES.items()}
        return {name: f.result() for name, f in futures.items()}


def _failures(doc):
    """[(play name, task name, message)] of every failed task result."""
    out = []
    for play in doc["plays"]:
        for task in play["tasks"]:
            for res in task["hosts"].values():
                if res.get("failed"):
                    out.append((play["play"]["name"], task["task"]["name"], res.get("msg", "")))
    return out


def _messages(doc):
    return [res.get("msg", "") for play in doc["plays"] for task in play["tasks"] for res in task["hosts"].values()]


def _untouched(doc):
    stats = doc["stats"]
    assert set(stats) == {"cp01", "cp02", "cp03", "gpu-a01", "gpu-a02", "gpu-b01", "gpu-b02", "gpu-c01", "gpu-c02", "cpu01"}
    for host, s in stats.items():
        assert s["unreachable"] == 0 and s["changed"] == 0, (host, s)


def test_skipped_minor_is_refused_before_any_host(runs):
    rc, doc, stderr = runs["skipped-minor"]
    assert rc != 0, stderr
    failures = _failures(doc)
    assert len(failures) == 1, failures
    play, _task, msg = failures[0]
    assert play == "Preflight - validate the inventory"
    assert "gpuops_kubernetes_version" in msg and "skips a minor" in msg and "upgrade to 1.35.x first" in msg
    # nothing after the preflight ran: no play of the upgrade itself started
    assert [p["play"]["name"] for p in doc["plays"]] == ["Preflight - validate the inventory"]
    _untouched(doc)


def test_downgrade_is_refused_by_the_upgrade_rule(runs):
    rc, doc, stderr = runs["downgrade"]
    assert rc != 0, stderr
    assert any(m.startswith("Preflight passed") for m in _messages(doc))   # the rebuild rule allowed it...
    failures = _failures(doc)
    assert len(failures) == 1, failures
    play, task, msg = failures[0]                                        # ...upgrade.yml's own rule did not
    assert play == "Upgrade preflight and etcd snapshot"
    assert "Refuse a skipped minor or a downgrade" in task
    assert "UPGRADE REFUSED before touching any host" in msg and "never downgrades" in msg
    assert '"1.36.3" or newer' in msg
    _untouched(doc)


def test_valid_step_passes_the_offline_preflight(runs):
    rc, doc, stderr = runs["valid"]
    assert rc == 0, (stderr, _failures(doc))
    assert _failures(doc) == []
    assert any("inventory step 1.35.4 -> 1.36.3 accepted" in m for m in _messages(doc))
    _untouched(doc)
