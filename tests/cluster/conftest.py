"""The cluster tier: one lab bring-up per pytest session (docs/testing.md "Cluster tier").

The tests here bring up six privileged podman nodes and a kubeadm cluster (minutes of CPU). They
run only when selected with ``-m cluster`` (scripts/test's cluster stream), never as part of a
stream that merely does not exclude them."""

import pytest


def pytest_collection_modifyitems(config, items):
    if "cluster" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="the cluster tier runs only with -m cluster (it brings up the whole lab)")
    for item in items:
        if item.get_closest_marker("cluster"):
            item.add_marker(skip)
