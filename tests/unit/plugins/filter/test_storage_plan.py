"""Unit tests of plugins/filter/storage_plan.py, the pure planning core of roles/storage."""

import importlib.util
import json
from pathlib import Path


ROLES = Path(__file__).resolve().parents[4] / "roles"


def load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


sp = load(ROLES.parent / "plugins" / "filter" / "storage_plan.py")

G = 1 << 30
LSBLK = {"blockdevices": [
    {"name": "vda", "path": "/dev/vda", "type": "disk", "size": 4 * G, "tran": None, "mountpoint": "/"},
    {"name": "nvme0n1", "path": "/dev/nvme0n1", "type": "disk", "size": 2 * G, "model": "QEMU NVMe Ctrl", "serial": "A0", "tran": "nvme"},
    {"name": "nvme1n1", "path": "/dev/nvme1n1", "type": "disk", "size": 2 * G, "model": "QEMU NVMe Ctrl", "serial": "A1", "tran": "nvme"},
    {"name": "nvme2n1", "path": "/dev/nvme2n1", "type": "disk", "size": 4 * G, "model": "QEMU NVMe Ctrl", "serial": "B0", "tran": "nvme",
     "children": [{"name": "nvme2n1p1", "path": "/dev/nvme2n1p1", "type": "part", "mountpoint": "/boot"}]},
    {"name": "nvme3n1", "path": "/dev/nvme3n1", "type": "disk", "size": 4 * G, "model": "QEMU NVMe Ctrl", "serial": "B1", "tran": "nvme"},
]}
NVME = {"Devices": [{"DevicePath": "/dev/nvme3n1", "ModelNumber": "SAMSUNG MZ", "SerialNumber": "S3X", "PhysicalSize": 4 * G}]}


def test_select_explicit_and_selector():
    arrays = [{"name": "data", "level": 1, "devices": ["/dev/nvme0n1", "/dev/nvme1n1"]},
              {"name": "big", "level": 0, "selector": {"transport": "nvme", "min_size_gb": 3}}]
    res = sp.storage_select_devices(arrays, LSBLK, NVME)
    assert res["errors"] == ["storage_arrays[big]: RAID0 needs at least 2 devices, got 1 (/dev/nvme3n1)"]
    assert res["arrays"][0]["devices"] == ["/dev/nvme0n1", "/dev/nvme1n1"]
    # nvme-cli data wins over lsblk's model
    res = sp.storage_select_devices([{"name": "s", "level": 1, "selector": {"model": "^SAMSUNG", "count": 1}}], LSBLK, NVME)
    assert res["arrays"][0]["devices"] == ["/dev/nvme3n1"]


def test_select_count_and_unknown_device():
    res = sp.storage_select_devices([{"name": "x", "level": 10, "selector": {"serial": "^A", "count": 3}}], LSBLK)
    assert "matched 2 free disk(s)" in res["errors"][0]
    res = sp.storage_select_devices([{"name": "x", "level": 1, "devices": ["/dev/nvme9n1", "/dev/nvme0n1"]}], LSBLK)
    assert "/dev/nvme9n1 is not a whole disk" in res["errors"][0]


def wipefs(*types):
    return json.dumps({"signatures": [{"device": "x", "offset": "0x438", "type": t} for t in types]})


def test_guard_refuses_then_force():
    claims = [{"device": "/dev/nvme0n1", "owner": "data", "kind": "md"},
              {"device": "/dev/nvme1n1", "owner": "data", "kind": "md"}]
    sigs = {"/dev/nvme0n1": "", "/dev/nvme1n1": wipefs("ext4")}
    res = sp.storage_guard(claims, sigs, {}, {}, [])
    assert len(res["errors"]) == 1 and "/dev/nvme1n1 carries ext4" in res["errors"][0]
    assert "storage_force_wipe_devices" in res["errors"][0]
    res = sp.storage_guard(claims, sigs, {}, {}, ["/dev/nvme1n1"])
    assert res["errors"] == [] and res["wipe"] == ["/dev/nvme1n1"] and res["create"] == ["data"]


def test_guard_accepts_own_array_and_vg():
    md = {"data": "MD_LEVEL=raid1\nMD_DEVICES=2\nMD_DEVICE_dev_nvme0n1_DEV=/dev/nvme0n1\nMD_DEVICE_dev_nvme1n1_DEV=/dev/nvme1n1\n"}
    claims = [{"device": "/dev/nvme0n1", "owner": "data", "kind": "md"},
              {"device": "/dev/nvme1n1", "owner": "data", "kind": "md"},
              {"device": "/dev/nvme3n1", "owner": "vg1", "kind": "pv"}]
    sigs = {"/dev/nvme0n1": wipefs("linux_raid_member"), "/dev/nvme1n1": wipefs("linux_raid_member"),
            "/dev/nvme3n1": wipefs("LVM2_member")}
    res = sp.storage_guard(claims, sigs, md, {"/dev/nvme3n1": "vg1"}, [])
    assert res["errors"] == [] and res["create"] == [] and res["wipe"] == []
    # an md member of some other array is refused
    res = sp.storage_guard(claims[:1], sigs, {}, {}, [])
    assert "linux_raid_member" in res["errors"][0]
    # a PV of another VG is refused
    res = sp.storage_guard(claims[2:], sigs, {}, {"/dev/nvme3n1": "other"}, [])
    assert "LVM2_member" in res["errors"][0]


def test_existing_array_mismatch_is_refused():
    md = {"data": "MD_LEVEL=raid0\nMD_DEVICE_dev_nvme0n1_DEV=/dev/nvme0n1\nMD_DEVICE_dev_nvme1n1_DEV=/dev/nvme1n1\n"}
    errs = sp.storage_check_existing([{"name": "data", "level": 1, "devices": ["/dev/nvme0n1", "/dev/nvme1n1"]}], md)
    assert "exists as RAID0" in errs[0]
    md = {"data": "MD_LEVEL=raid1\nMD_DEVICE_dev_nvme0n1_DEV=/dev/nvme0n1\n"}
    errs = sp.storage_check_existing([{"name": "data", "level": 1, "devices": ["/dev/nvme0n1", "/dev/nvme1n1"]}], md)
    assert "never adds/removes members" in errs[0]


def test_storage_skips_work_the_probe_shows_done():
    lvs = [{"name": "a", "vg": "vg", "fstype": "xfs", "mountpoint": "/a", "mode": "0755"},
           {"name": "b", "vg": "vg", "fstype": "ext4", "mountpoint": "/b", "mode": "755"},
           {"name": "c", "vg": "vg", "mountpoint": "/c", "mode": "0700"}]
    probed = {"vg/a": {"fstype": "xfs"}, "vg/b": {"fstype": "xfs"}}
    # a: done; b: mismatch (the filesystem module must refuse it); c: new
    assert [l["name"] for l in sp.storage_lvs_needing_fs(lvs, probed)] == ["b", "c"]
    assert [l["name"] for l in sp.storage_modes_differ(lvs, {"/a": "0755", "/b": "0755", "/c": None})] == ["c"]
