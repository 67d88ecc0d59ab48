"""The cluster tier: one lab bring-up per pytest session (docs/testing.md "Cluster tier").

The tests here bring up six privileged podman nodes and a kubeadm cluster (minutes of CPU). They
run only when selected with ``-m cluster`` (scripts/test's cluster stream), never as part of a
stream that merely does not exclude them."""

import os
import time

import pytest

from tests.cluster.lab import host_sysctls, lab_exists, lab_running, record, run, site


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
    if not reuse and lab_exists():
        # never take down (or silently build over) somebody's lab cluster
        pytest.fail("a lab already exists (scripts/lab status): the cluster tier brings up its own. Take it "
                    "down with `scripts/lab down`, or set GPUOPS_LAB_REUSE=1 to run the checks on it.")
    try:
        if not reuse:
            t0 = time.monotonic()
            run(["scripts/lab", "up"], timeout=1800)
            info["lab_up"] = time.monotonic() - t0
            record("scripts/lab up %.0f s" % info["lab_up"])
        info["first"] = site("first")
        record("site.yml first run %.0f s%s" % (info["first"][0], " (reused lab)" if reuse else ""))
        yield info
    finally:
        if not reuse and not keep:
            run(["scripts/lab", "down"], timeout=600, check=False)
