"""roles/storage on a QEMU guest with four emulated NVMe drives: md RAID1 + RAID0, LVM, xfs/ext4, mounts.

The NVMe drives are QEMU's emulated controllers (a fake for the real drives: model
"QEMU NVMe Ctrl", serials set by the test); md, LVM, filesystems and mounts are real.
"""

import json
import time

import pytest

from tests.vm.harness import record_timing

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(2700)]

SERIALS = ["GPUOPSA0", "GPUOPSA1", "GPUOPSB0", "GPUOPSB1"]


@pytest.fixture(scope="module")
def vm(vm_factory):
    vm = vm_factory("vm-storage", nvme=[{"serial": s, "size": "2G"} for s in SERIALS])
    if not vm.info.get("attached"):
        record_timing("vm_cold_boot_to_ssh", vm.info["boot_seconds"])
    return vm


def by_serial(vm):
    data = vm.json("lsblk --json --nodeps --output PATH,SERIAL,TYPE")
    return {d["serial"]: d["path"] for d in data["blockdevices"] if d.get("serial")}


def signatures(vm, dev):
    out = vm.ssh(f"wipefs --no-act --json {dev}", check=True).stdout
    return sorted(s["type"] for s in json.loads(out)["signatures"]) if out.strip() else []


def storage_vars(devs, force=()):
    return {
        "storage_assume_clean": True,
        "storage_install_packages": False,  # the image has them; apt in TCG costs a minute per run
        "storage_force_wipe_devices": list(force),
        "storage_arrays": [
            {"name": "data", "level": 1, "devices": [devs["GPUOPSA0"], devs["GPUOPSA1"]]},
            {"name": "scratch", "level": 0, "selector": {"transport": "nvme", "serial": "^GPUOPSB", "count": 2}},
        ],
        "storage_volume_groups": [{"name": "vg_gpu", "arrays": ["data"]},
                                  {"name": "vg_scratch", "arrays": ["scratch"]}],
        "storage_logical_volumes": [
            {"name": "containerd", "vg": "vg_gpu", "size": "30%VG", "fstype": "xfs", "mountpoint": "/var/lib/containerd"},
            {"name": "kubelet", "vg": "vg_gpu", "size": "20%VG", "fstype": "ext4", "mountpoint": "/var/lib/kubelet"},
            {"name": "models", "vg": "vg_gpu", "size": "30%VG", "fstype": "xfs",
             "mountpoint": "/var/lib/gpuops/models", "mode": "0755"},
            {"name": "localpv0", "vg": "vg_scratch", "size": "50%VG", "fstype": "xfs",
             "mountpoint": "/mnt/local-pv/pv0"},
        ],
    }


def test_storage_guard_force_build_and_idempotence(vm):
    devs = by_serial(vm)
    assert set(SERIALS) <= set(devs), devs
    a1, b0 = devs["GPUOPSA1"], devs["GPUOPSB0"]
    # Pre-existing data: a filesystem on one RAID1 member, a GPT on one RAID0 member.
    vm.ssh(f"mkfs.ext4 -q -F -L precious {a1} && sgdisk -o {b0} >/dev/null", check=True)
    assert signatures(vm, a1) == ["ext4"]
    assert "gpt" in signatures(vm, b0)
    inv = vm.write_inventory({})

    # 1. without the force flag: refuses with a message naming the device and the flag, touches nothing
    r = vm.playbook("storage.yml", inv, storage_vars(devs), tag="refuse")
    assert r.rc != 0 and r.stats()["failed"] == 1, r.output[-3000:]
    assert f"{a1} carries ext4" in r.output and "storage_force_wipe_devices" in r.output, r.output[-3000:]
    assert f"{b0} carries" in r.output
    assert signatures(vm, a1) == ["ext4"] and "gpt" in signatures(vm, b0)
    assert " : active" not in vm.ssh("cat /proc/mdstat", check=True).stdout
    assert vm.ssh("ls /dev/md/ 2>/dev/null | wc -l", check=True).stdout.strip() == "0"
    assert " : active" not in vm.ssh("cat /proc/mdstat", check=True).stdout

    force = [a1, b0]
    # 2. check mode with the force flag: reports changes, still touches nothing
    r = vm.playbook("storage.yml", inv, storage_vars(devs, force), check=True, tag="check-first")
    assert r.rc == 0, r.output[-3000:]
    assert r.stats()["changed"] > 0
    assert signatures(vm, a1) == ["ext4"] and "gpt" in signatures(vm, b0)
    assert vm.ssh("ls /dev/md/ 2>/dev/null | wc -l", check=True).stdout.strip() == "0"

    # 3. with the force flag: builds everything
    t0 = time.monotonic()
    r = vm.playbook("storage.yml", inv, storage_vars(devs, force), tag="converge")
    record_timing("storage_converge", time.monotonic() - t0)
    assert r.rc == 0, r.output[-5000:]
    assert r.stats()["changed"] > 0
    detail = vm.ssh("mdadm --detail --export /dev/md/data", check=True).stdout
    assert "MD_LEVEL=raid1" in detail and "MD_DEVICES=2" in detail, detail
    assert f"={devs['GPUOPSA0']}" in detail and f"={a1}" in detail
    detail = vm.ssh("mdadm --detail --export /dev/md/scratch", check=True).stdout
    assert "MD_LEVEL=raid0" in detail and f"={b0}" in detail and f"={devs['GPUOPSB1']}" in detail, detail
    conf = vm.ssh("cat /etc/mdadm/mdadm.conf", check=True).stdout
    assert any(l.startswith("ARRAY /dev/md/data ") for l in conf.splitlines()), conf
    assert any(l.startswith("ARRAY /dev/md/scratch ") for l in conf.splitlines()), conf
    # initramfs was rebuilt after mdadm.conf changed (handler) and carries the config
    assert "etc/mdadm/mdadm.conf" in vm.ssh("lsinitramfs /boot/initrd.img-$(uname -r) | grep mdadm.conf", check=True).stdout
    lvs = vm.json("lvs --reportformat json -o lv_name,vg_name")["report"][0]["lv"]
    assert {(l["vg_name"], l["lv_name"]) for l in lvs} == {
        ("vg_gpu", "containerd"), ("vg_gpu", "kubelet"), ("vg_gpu", "models"), ("vg_scratch", "localpv0")}
    for target, fstype in [("/var/lib/containerd", "xfs"), ("/var/lib/kubelet", "ext4"),
                           ("/var/lib/gpuops/models", "xfs"), ("/mnt/local-pv/pv0", "xfs")]:
        m = vm.json(f"findmnt --json --output TARGET,SOURCE,FSTYPE,OPTIONS --mountpoint {target}")["filesystems"][0]
        assert m["fstype"] == fstype and "noatime" in m["options"], m
    fstab = vm.ssh("cat /etc/fstab", check=True).stdout
    for target in ("/var/lib/containerd", "/var/lib/kubelet", "/var/lib/gpuops/models", "/mnt/local-pv/pv0"):
        line = [l for l in fstab.splitlines() if f" {target} " in l]
        assert line and line[0].startswith("UUID="), fstab
    assert "precious" not in vm.ssh(f"blkid -p {a1} || true").stdout

    # 4. second converge: nothing to do
    t0 = time.monotonic()
    r = vm.playbook("storage.yml", inv, storage_vars(devs, force), tag="idempotent")
    record_timing("storage_reconverge", time.monotonic() - t0)
    assert r.rc == 0, r.output[-3000:]
    assert r.stats()["changed"] == 0, r.output[-6000:]

    # 5. check mode on the converged node: nothing would change
    r = vm.playbook("storage.yml", inv, storage_vars(devs, force), check=True, tag="check-converged")
    assert r.rc == 0, r.output[-3000:]
    assert r.stats()["changed"] == 0, r.output[-6000:]
