"""The cluster tier: one lab bring-up per pytest session (docs/testing.md "Cluster tier").

The tests here bring up six privileged podman nodes and a kubeadm cluster (minutes of CPU). They
run only when selected with ``-m cluster`` (scripts/test's cluster stream), never as part of a
stream that merely does not exclude them."""

import os
import time

import pytest

from tests.cluster.lab import (LAB, CURRENT_VERSION, PREVIOUS_VERSION, cluster_version, host_sysctls,
                               lab_exists, lab_running, record, run, site)


def pytest_collection_modifyitems(config, items):
    if "cluster" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="the cluster tier runs only with -m cluster (it brings up the whole lab)")
    for item in items:
        if item.get_closest_marker("cluster"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def lab():
    """The lab with the cluster built by site.yml (first run measured), shared by every module of the tier.

    ``GPUOPS_LAB_REUSE=1``: use a running lab (and leave it running). ``GPUOPS_LAB_KEEP=1``: leave the lab
    this session brought up running (for a day of work on it); otherwise ``scripts/lab down`` at the end."""
    before = host_sysctls()
    reuse = os.environ.get("GPUOPS_LAB_REUSE") == "1" and lab_running()
    keep = os.environ.get("GPUOPS_LAB_KEEP") == "1"
    # the registry's log outlives it (scripts/registry keeps it): only this session's lines count
    t0 = time.time()
    info = {"host_sysctls_before": before, "reused": reuse, "t0": t0,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t0)) if not reuse else ""}
    if not reuse and lab_exists() and not lab_exists(running=True):
        # only stopped lab nodes (a teardown that failed, a lifetime that ran out): no cluster runs in
        # them any more; removed (recorded) so the tier can bring up its own
        down = run(["scripts/lab", "down"], timeout=600, check=False)
        record("stopped lab nodes found before the bring-up: scripts/lab down rc %d" % down.returncode)
    if not reuse and lab_exists():
        # never take down (or silently build over) somebody's running lab cluster
        pytest.fail("a lab already exists (scripts/lab status): the cluster tier brings up its own. Take it "
                    "down with `scripts/lab down`, or set GPUOPS_LAB_REUSE=1 to run the checks on it.")
    # The version the lab runs: a new lab comes up at the previous minor, so that
    # test_cluster_upgrade.py upgrades it (GPUOPS_LAB_START=current: at the inventory's, the upgrade
    # test then skips); a reused lab stays at the version it runs.
    if reuse:
        LAB["version"] = cluster_version() or CURRENT_VERSION
    else:
        LAB["version"] = CURRENT_VERSION if os.environ.get("GPUOPS_LAB_START") == "current" else PREVIOUS_VERSION
    info["start_version"] = LAB["version"]
    try:
        if not reuse:
            t0 = time.monotonic()
            run(["scripts/lab", "up"], timeout=1800)
            info["lab_up"] = time.monotonic() - t0
            record("scripts/lab up %.0f s" % info["lab_up"])
        info["first"] = site("first")
        record("site.yml first run %.0f s at v%s%s" % (info["first"][0], LAB["version"], " (reused lab)" if reuse else ""))
        yield info
    finally:
        if not reuse and not keep:
            down = run(["scripts/lab", "down"], timeout=600, check=False)
            if down.returncode != 0:
                # a lab left behind makes the next bring-up refuse to start: say so loudly, with the log
                record("scripts/lab down FAILED (rc %d): %s" % (down.returncode, (down.stdout + down.stderr)[-1500:]))
