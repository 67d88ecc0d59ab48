"""Fixtures for the QEMU VM tests: one guest at a time per pytest process (scripts/test runs one
process per tests/vm/test_*_vm.py file, side by side)."""

import os

import pytest

from tests.vm.harness import VM


@pytest.fixture(scope="module")
def vm_factory(request, keep_logs):
    started = []

    def _make(name, **kwargs):
        attach = os.environ.get("GPUOPS_VM_ATTACH")
        if attach:
            return VM.attach(attach)
        if started:
            raise RuntimeError("one VM at a time: stop the previous one first")
        # the guest outlives the slowest VM test's pytest timeout (3600 s), so a test that is only
        # slow ends with its own timeout and logs instead of a guest killed under it
        vm = VM(name=name, lifetime=int(os.environ.get("GPUOPS_VM_LIFETIME", "3900")), **kwargs)
        vm.start()
        started.append(vm)
        return vm
    yield _make
    for vm in started:
        vm.stop()
        vm.cleanup(keep_logs=keep_logs())
