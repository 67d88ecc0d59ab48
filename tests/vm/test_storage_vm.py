"""roles/storage on a QEMU guest with seven emulated NVMe drives: md RAID1 + RAID0, LVM, xfs/ext4, mounts,
and the guard: devices named by every path form (by-path and by-id symlinks, plain /dev/nvmeXnY, a
partition, a by-partuuid symlink) are resolved to what the probe read, a disk with a filesystem
named by its by-id symlink is refused (the data-loss defect of issue 8), a device the probe cannot
read (a device-mapper `error` target) and a name that does not exist stop the run.

The NVMe drives are QEMU's emulated controllers (a fake for the real drives: model
"QEMU NVMe Ctrl", serials set by the test); md, LVM, device-mapper, filesystems and mounts are real.
"""

import json
import time

import pytest

from tests.vm.harness import record_timing

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(3600)]

SERIALS = ["GPUOPSA0", "GPUOPSA1", "GPUOPSB0", "GPUOPSB1"]
# raw PVs of vg_paths, each named by another path form
PATH_SERIALS = ["GPUOPSC0", "GPUOPSC1", "GPUOPSC2"]


@pytest.fixture(scope="module")
def vm(vm_factory):
    vm = vm_factory("vm-storage", nvme=[{"serial": s, "size": "2G"} for s in SERIALS]
                    + [{"serial": s, "size": "1G"} for s in PATH_SERIALS])
    if not vm.info.get("attached"):
        record_timing("vm_cold_boot_to_ssh", vm.info["boot_seconds"])
    return vm


def by_serial(vm):
    data = vm.json("lsblk --json --nodeps --output PATH,SERIAL,TYPE")
    return {d["serial"]: d["path"] for d in data["blockdevices"] if d.get("serial")}


def signatures(vm, dev):
    out = vm.ssh(f"wipefs --no-act --json {dev}", check=True).stdout
    return sorted(s["type"] for s in json.loads(out)["signatures"]) if out.strip() else []


def link_to(vm, directory, dev):
    """A udev symlink in /dev/disk/<directory> that resolves to dev."""
    out = vm.ssh(f"for l in /dev/disk/{directory}/*; do [ \"$(readlink -f \"$l\")\" = {dev} ] && echo \"$l\"; done; true",
                 check=True).stdout.split()
    assert out, f"no /dev/disk/{directory} link to {dev}: " + vm.ssh(f"ls -l /dev/disk/{directory}").stdout
    return sorted(out)[0]


def pv_map(vm):
    return {p["pv_name"]: p["vg_name"] for p in vm.json("pvs --reportformat json -o pv_name,vg_name")["report"][0]["pv"]}


def storage_vars(devs, force=(), paths=None, extra_vgs=()):
    """paths: the names vg_paths and the RAID1 use (see test); extra_vgs: more volume groups."""
    paths = paths or {}
    return {
        "storage_assume_clean": True,
        "storage_install_packages": False,  # the image has them; apt in TCG costs a minute per run
        "storage_force_wipe_devices": list(force),
        "storage_arrays": [
            {"name": "data", "level": 1, "devices": [paths.get("a0", devs["GPUOPSA0"]), devs["GPUOPSA1"]]},
            {"name": "scratch", "level": 0, "selector": {"transport": "nvme", "serial": "^GPUOPSB", "count": 2}},
        ],
        "storage_volume_groups": [{"name": "vg_gpu", "arrays": ["data"]},
                                  {"name": "vg_scratch", "arrays": ["scratch"]}]
        + ([{"name": "vg_paths", "devices": paths["vg_paths"]}] if paths.get("vg_paths") else [])
        + list(extra_vgs),
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
    assert set(SERIALS + PATH_SERIALS) <= set(devs), devs
    a1, b0 = devs["GPUOPSA1"], devs["GPUOPSB0"]
    c0, c1, c2 = devs["GPUOPSC0"], devs["GPUOPSC1"], devs["GPUOPSC2"]
    # Pre-existing data: a filesystem on one RAID1 member, a GPT on one RAID0 member, a filesystem on
    # the disk vg_paths names by its by-id symlink; C2 gets two empty GPT partitions.
    vm.ssh(f"mkfs.ext4 -q -F -L precious {a1} && sgdisk -o {b0} >/dev/null && mkfs.ext4 -q -F -L precious2 {c0}"
           f" && sgdisk -o -n 1:0:+400M -n 2:0:0 {c2} >/dev/null && udevadm settle --timeout=60", check=True)
    c2p1, c2p2 = f"{c2}p1", f"{c2}p2"
    assert signatures(vm, a1) == ["ext4"] and signatures(vm, c0) == ["ext4"]
    assert "gpt" in signatures(vm, b0)
    # every path form: the RAID1 names A0 by its by-path link; vg_paths names C0 by its by-id link,
    # C1 plainly, C2's first partition by its by-partuuid link and the second plainly
    a0_path = link_to(vm, "by-path", devs["GPUOPSA0"])
    c0_id = link_to(vm, "by-id", c0)
    c2p1_uuid = link_to(vm, "by-partuuid", c2p1)
    paths = {"a0": a0_path, "vg_paths": [c0_id, c1, c2p1_uuid, c2p2]}
    inv = vm.write_inventory({})

    def storage_play(extra_vars, tag, **kwargs):
        # through Mitogen: one Python in the guest per run (docs/testing/vm.md)
        return vm.playbook("storage.yml", inv, extra_vars, tag=tag, mitogen=True, **kwargs)

    def untouched():
        assert signatures(vm, a1) == ["ext4"] and "gpt" in signatures(vm, b0)
        assert signatures(vm, c0) == ["ext4"], "the filesystem named by its by-id link was destroyed"
        assert vm.ssh("ls /dev/md/ 2>/dev/null | wc -l", check=True).stdout.strip() == "0"
        assert " : active" not in vm.ssh("cat /proc/mdstat", check=True).stdout
        assert pv_map(vm) == {}

    # 1. without the force flag: refuses every device with data, by whatever name, touches nothing
    r = storage_play(storage_vars(devs, paths=paths), tag="refuse")
    assert r.rc != 0 and r.stats()["failed"] == 1, r.output[-3000:]
    assert f"{a1} carries ext4" in r.output and "storage_force_wipe_devices" in r.output, r.output[-3000:]
    assert f"{b0} carries" in r.output
    assert f"{c0_id} (-> {c0}) carries ext4" in r.output, r.output[-3000:]
    untouched()

    # 2. the issue 8 case: every other dirty disk forced, the by-id one not. Before the fix the guard
    # looked the by-id name up in the probe's lsblk-keyed signatures, found nothing, called it clean,
    # and community.general.lvg ran pvcreate -f on it (changed, ext4 gone).
    r = storage_play(storage_vars(devs, [a1, b0], paths=paths), tag="refuse-by-id")
    assert r.rc != 0 and r.stats()["failed"] == 1, r.output[-3000:]
    assert f"{c0_id} (-> {c0}) carries ext4" in r.output, r.output[-3000:]
    assert f"{a1} carries" not in r.output
    untouched()

    # 3. a device the probe cannot read (device-mapper `error` target: every read fails) and a name
    # that does not exist: both stop the run before anything is written
    vm.ssh("modprobe dm_mod; dmsetup create gpuops_bad --table '0 204800 error' && udevadm settle --timeout=60", check=True)
    bad_real = vm.ssh("readlink -f /dev/mapper/gpuops_bad", check=True).stdout.strip()
    force = [a1, b0, c0_id]
    try:
        r = storage_play(storage_vars(devs, force, paths=paths, extra_vgs=[
            {"name": "vg_bad", "devices": ["/dev/mapper/gpuops_bad", "/dev/disk/by-id/nvme-gpuops-no-such-disk"]}]),
            tag="refuse-unreadable")
    finally:
        vm.ssh("dmsetup remove gpuops_bad", check=True)
    assert r.rc != 0 and r.stats()["failed"] == 1, r.output[-3000:]
    assert f"could not read the signatures of /dev/mapper/gpuops_bad (-> {bad_real})" in r.output, r.output[-3000:]
    assert "a device that cannot be read never counts as clean" in r.output
    assert "/dev/disk/by-id/nvme-gpuops-no-such-disk does not exist on this node" in r.output, r.output[-3000:]
    untouched()

    # 4. check mode with the force flag: lists the destructive steps as such, still touches nothing
    r = storage_play(storage_vars(devs, force, paths=paths), check=True, tag="check-first")
    assert r.rc == 0, r.output[-3000:]
    assert r.stats()["changed"] > 0
    for line in (f"WOULD WIPE {c0} (given as {c0_id}; signatures ext4",
                 f"WOULD WIPE {a1} (signatures ext4",
                 f"WOULD create PV on {c1} (clean per probe)",
                 f"WOULD create PV on {c2p1} (given as {c2p1_uuid}) (clean per probe)",
                 f"WOULD create PV on {c2p2} (clean per probe)",
                 f"WOULD create md array /dev/md/data on {a0_path} (-> {devs['GPUOPSA0']}) (clean per probe)"):
        assert line in " ".join(r.output.split()), (line, r.output[-6000:])
    untouched()

    # 5. with the force flag: builds everything
    t0 = time.monotonic()
    # under TCG on a loaded host the first converge (incl. update-initramfs) has taken 1032 s
    r = storage_play(storage_vars(devs, force, paths=paths), tag="converge", timeout=2400)
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
    # vg_paths: every path form became a PV on the device it names
    pvs = pv_map(vm)
    assert {p for p, v in pvs.items() if v == "vg_paths"} == {c0, c1, c2p1, c2p2}, pvs
    assert c2 not in pvs and "gpt" in signatures(vm, c2), "the partitioned disk itself is untouched"

    # 6. second converge: nothing to do (symlink names compare equal to the PVs LVM reports)
    t0 = time.monotonic()
    r = storage_play(storage_vars(devs, force, paths=paths), tag="idempotent")
    record_timing("storage_reconverge", time.monotonic() - t0)
    assert r.rc == 0, r.output[-3000:]
    assert r.stats()["changed"] == 0, r.output[-6000:]

    # 7. check mode on the converged node: nothing would change, nothing is listed as destructive
    r = storage_play(storage_vars(devs, force, paths=paths), check=True, tag="check-converged")
    assert r.rc == 0, r.output[-3000:]
    assert r.stats()["changed"] == 0, r.output[-6000:]
    assert "WOULD " not in r.output, r.output[-6000:]
