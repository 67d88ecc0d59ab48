"""Unit tests of plugins/filter/storage_plan.py, the pure planning core of roles/storage."""

import json

from plugins.filter import storage_plan as sp


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


# --- the guard on canonical paths (issue 8: a by-id name of a disk with ext4 read as clean) -----------

DISK_LSBLK = {"blockdevices": [
    {"name": "nvme0n1", "path": "/dev/nvme0n1", "real": "/dev/nvme0n1", "type": "disk", "size": 2 * G, "serial": "A0", "tran": "nvme"},
    {"name": "nvme1n1", "path": "/dev/nvme1n1", "real": "/dev/nvme1n1", "type": "disk", "size": 2 * G, "serial": "A1", "tran": "nvme"},
    {"name": "nvme2n1", "path": "/dev/nvme2n1", "real": "/dev/nvme2n1", "type": "disk", "size": 2 * G, "serial": "C2", "tran": "nvme",
     "children": [{"name": "nvme2n1p1", "path": "/dev/nvme2n1p1", "real": "/dev/nvme2n1p1", "type": "part"},
                  {"name": "nvme2n1p2", "path": "/dev/nvme2n1p2", "real": "/dev/nvme2n1p2", "type": "part"}]},
]}
BY_ID = "/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_A1"
BY_PATH = "/dev/disk/by-path/pci-0000:01:00.0-nvme-1"
BY_PARTUUID = "/dev/disk/by-partuuid/0b6c1a5e-0001"
RESOLVE = {BY_ID: "/dev/nvme1n1", BY_PATH: "/dev/nvme0n1", BY_PARTUUID: "/dev/nvme2n1p1",
           "/dev/nvme1n1": "/dev/nvme1n1", "/dev/nvme0n1": "/dev/nvme0n1", "/dev/nvme2n1p2": "/dev/nvme2n1p2",
           "/dev/nvme2n1": "/dev/nvme2n1", "/dev/disk/by-id/gone": None, "/dev/mapper/bad": "/dev/dm-3",
           "/dev/shm/file": "/dev/shm/file"}


def sig(*types, error=None):
    return {"types": list(types), "error": error}


CLEAN = {"/dev/nvme0n1": sig(), "/dev/nvme1n1": sig(), "/dev/nvme2n1": sig("PMBR", "gpt"),
         "/dev/nvme2n1p1": sig(), "/dev/nvme2n1p2": sig()}


def guard(vgs, signatures, force=(), arrays=(), pvs=None, md=None, probed_vgs=None):
    sel = sp.storage_select_devices(list(arrays), DISK_LSBLK, None, RESOLVE,
                                    [RESOLVE[d] for vg in vgs for d in vg.get("devices", []) if RESOLVE.get(d)])
    claims = sp.storage_claims(sel["arrays"], vgs, RESOLVE, {})
    res = sp.storage_guard(claims, signatures, md or {}, pvs or {}, list(force), RESOLVE, DISK_LSBLK, vgs,
                           probed_vgs or {})
    return sel, res


def test_guard_by_id_symlink_to_a_disk_with_ext4_is_refused():
    """The issue 8 defect, first with the filter as it was called before (literal names): the
    by-id name has no signature entry, which the old guard read as clean."""
    sigs = dict(CLEAN, **{"/dev/nvme1n1": sig("ext4")})
    _sel, res = guard([{"name": "vg1", "devices": [BY_ID]}], sigs)
    assert len(res["errors"]) == 1, res["errors"]
    assert res["errors"][0].startswith("%s (-> /dev/nvme1n1) carries ext4 signature(s)" % BY_ID)
    assert res["pv_create"] == [] and res["vg_create"] == [] and res["wipe"] == [] and res["plan"] == []
    # a literal name the probe never read is refused too (no entry), never clean
    res = sp.storage_guard([{"device": BY_ID, "owner": "vg1", "kind": "pv"}], {"/dev/nvme1n1": sig("ext4")})
    assert "has no entry in the storage probe" in res["errors"][0]


def test_guard_forced_by_another_name_of_the_same_device():
    sigs = dict(CLEAN, **{"/dev/nvme1n1": sig("ext4")})
    # forced by its plain name, claimed by its by-id name (and the other way round): same device
    for claimed, forced in ((BY_ID, "/dev/nvme1n1"), ("/dev/nvme1n1", BY_ID)):
        _sel, res = guard([{"name": "vg1", "devices": [claimed]}], sigs, force=[forced])
        assert res["errors"] == [] and res["wipe"] == res["wipe_pvs"] == ["/dev/nvme1n1"], res
        assert res["pv_create"] == [{"path": "/dev/nvme1n1", "given": claimed, "vg": "vg1", "verdict": "wipe"}]
        assert res["vg_create"] == [{"name": "vg1", "pvs": ["/dev/nvme1n1"], "pe_size": "4M"}]
        assert any(p.startswith("WIPE /dev/nvme1n1 (") and "ext4" in p for p in res["plan"]), res["plan"]


def test_guard_every_path_form_resolves_to_the_probed_device():
    vgs = [{"name": "vgp", "devices": [BY_PATH, BY_ID, BY_PARTUUID, "/dev/nvme2n1p2"]}]
    _sel, res = guard(vgs, CLEAN)
    assert res["errors"] == [], res["errors"]
    assert [p["path"] for p in res["pv_create"]] == ["/dev/nvme0n1", "/dev/nvme1n1", "/dev/nvme2n1p1", "/dev/nvme2n1p2"]
    assert res["vg_create"][0]["pvs"] == ["/dev/nvme0n1", "/dev/nvme1n1", "/dev/nvme2n1p1", "/dev/nvme2n1p2"]
    assert "create PV on /dev/nvme2n1p1 (given as %s) (clean per probe) for volume group vgp" % BY_PARTUUID in res["plan"]
    assert "create PV on /dev/nvme2n1p2 (clean per probe) for volume group vgp" in res["plan"]
    # converged: LVM reports the canonical paths, nothing left to do under any name
    pvs = dict((d, "vgp") for d in res["vg_create"][0]["pvs"])
    sigs = dict((d, sig("LVM2_member")) for d in pvs)
    _sel, res = guard(vgs, dict(CLEAN, **sigs), pvs=pvs, probed_vgs={"vgp": sorted(pvs)})
    assert res["errors"] == [] and res["pv_create"] == res["vg_create"] == res["vg_extend"] == res["plan"] == []
    assert set(v["verdict"] for v in res["detail"].values()) == {"ours"}


def test_guard_array_members_by_symlink_and_partition():
    arrays = [{"name": "data", "level": 1, "devices": [BY_PATH, BY_ID]},
              {"name": "parts", "level": 1, "devices": [BY_PARTUUID, "/dev/nvme2n1p2"]}]
    sel, res = guard([], CLEAN, arrays=arrays)
    assert sel["errors"] == [] and res["errors"] == []
    assert sel["arrays"][0]["devices"] == ["/dev/nvme0n1", "/dev/nvme1n1"]
    assert sel["arrays"][0]["given"] == [BY_PATH, BY_ID]
    assert sel["arrays"][1]["devices"] == ["/dev/nvme2n1p1", "/dev/nvme2n1p2"]
    assert res["create"] == ["data", "parts"]
    # an existing array whose members were named by symlink is ours (mdadm reports kernel names)
    md = {"data": "MD_LEVEL=raid1\nMD_DEVICE_dev_nvme0n1_DEV=/dev/nvme0n1\nMD_DEVICE_dev_nvme1n1_DEV=/dev/nvme1n1\n"}
    sigs = dict(CLEAN, **{"/dev/nvme0n1": sig("linux_raid_member"), "/dev/nvme1n1": sig("linux_raid_member")})
    sel, res = guard([], sigs, arrays=arrays[:1], md=md)
    assert res["errors"] == [] and res["create"] == [] and sp.storage_check_existing(sel["arrays"], md) == []


def test_guard_refuses_unknown_unreadable_and_unprobed_devices():
    sigs = dict(CLEAN, **{"/dev/dm-3": sig(error="reading /dev/dm-3 failed: [Errno 5] Input/output error"),
                          "/dev/nvme0n1": sig(error="wipefs --no-act /dev/nvme0n1 exited 1: probing failed")})
    vgs = [{"name": "vg1", "devices": ["/dev/disk/by-id/gone", "/dev/mapper/bad", "/dev/shm/file", BY_PATH]}]
    _sel, res = guard(vgs, sigs)
    errs = "\n".join(res["errors"])
    assert "/dev/disk/by-id/gone does not exist on this node" in errs
    assert "could not read the signatures of /dev/mapper/bad (-> /dev/dm-3) (reading /dev/dm-3 failed" in errs
    assert "could not read the signatures of %s (-> /dev/nvme0n1) (wipefs --no-act" % BY_PATH in errs
    assert "/dev/shm/file has no entry in the storage probe" in errs
    assert len(res["errors"]) == 4 and res["pv_create"] == [] and res["vg_create"] == []
    # a probe error is never overridden by the force flag
    _sel, res = guard(vgs[:1] and [{"name": "vg1", "devices": ["/dev/mapper/bad"]}], sigs, force=["/dev/mapper/bad"])
    assert "could not read" in res["errors"][0] and res["wipe"] == []
    # the probe's legacy entries: a missing reading (None) or unparsable output is an error, not clean
    for raw in (None, "not json"):
        res = sp.storage_guard([{"device": "/dev/nvme0n1", "owner": "d", "kind": "md"}], {"/dev/nvme0n1": raw})
        assert "could not read the signatures" in res["errors"][0], raw


def test_guard_refuses_same_device_twice_and_disk_with_its_partition():
    _sel, res = guard([{"name": "a", "devices": [BY_ID]}, {"name": "b", "devices": ["/dev/nvme1n1"]}], CLEAN)
    assert any("/dev/nvme1n1 is claimed twice" in e for e in res["errors"]), res["errors"]
    sigs = dict(CLEAN, **{"/dev/nvme2n1": sig()})
    _sel, res = guard([{"name": "a", "devices": ["/dev/nvme2n1", BY_PARTUUID]}], sigs)
    assert any("is a partition of /dev/nvme2n1, which is claimed too" in e for e in res["errors"]), res["errors"]
    # an array member named twice under two names
    sel, _res = guard([], CLEAN, arrays=[{"name": "d", "level": 1, "devices": [BY_ID, "/dev/nvme1n1"]}])
    assert any("listed twice under different names" in e for e in sel["errors"]), sel["errors"]
    # a selector never picks a disk a volume group names (by any name)
    sel, _res = guard([{"name": "a", "devices": [BY_ID]}], CLEAN,
                      arrays=[{"name": "s", "level": 1, "selector": {"transport": "nvme", "count": 2}}])
    assert sel["arrays"][0]["devices"] == ["/dev/nvme0n1", "/dev/nvme2n1"]


def test_force_list_only_names_devices_in_use():
    sigs = dict(CLEAN, **{"/dev/nvme1n1": sig("ext4")})
    _sel, res = guard([{"name": "vg1", "devices": ["/dev/nvme0n1"]}], sigs, force=[BY_ID, "/dev/disk/by-id/gone"])
    errs = "\n".join(res["errors"])
    assert "storage_force_wipe_devices: /dev/disk/by-id/gone does not exist" in errs
    assert "storage_force_wipe_devices lists %s (-> /dev/nvme1n1), which no array or volume group uses" % BY_ID in errs
    assert res["wipe"] == [] and res["pv_create"] == []


def test_guard_vg_extend_and_new_array_pvs():
    vgs = [{"name": "vg1", "devices": ["/dev/nvme0n1", BY_ID]}, {"name": "vgmd", "arrays": ["data"]}]
    pvs = {"/dev/nvme0n1": "vg1", "/dev/nvme9n1": "vg1"}
    sigs = dict(CLEAN, **{"/dev/nvme0n1": sig("LVM2_member")})
    _sel, res = guard(vgs, sigs, pvs=pvs, probed_vgs={"vg1": ["/dev/nvme0n1", "/dev/nvme9n1"]})
    assert res["errors"] == []
    assert res["vg_extend"] == [{"name": "vg1", "pvs": ["/dev/nvme1n1"]}]
    assert res["vg_create"] == [{"name": "vgmd", "pvs": ["/dev/md/data"], "pe_size": "4M"}]
    assert {"path": "/dev/md/data", "given": "/dev/md/data", "vg": "vgmd", "verdict": "new"} in res["pv_create"]
    assert "never removes PVs" in res["warnings"][0] and "/dev/nvme9n1" in res["warnings"][0]


def test_guard_lvs_only_clears_new_or_blank_logical_volumes():
    lvs = [{"name": "new", "vg": "vg"}, {"name": "done", "vg": "vg", "fstype": "ext4"},
           {"name": "blank", "vg": "vg"}, {"name": "gpt", "vg": "vg"}, {"name": "other", "vg": "vg"},
           {"name": "bad", "vg": "vg"}, {"name": "later", "vg": "pending"}]
    probed = {"vg/done": {"fstype": "ext4", "signatures": ["ext4"]},
              "vg/blank": {"fstype": None, "signatures": []},
              "vg/gpt": {"fstype": None, "signatures": ["PMBR", "gpt"]},
              "vg/other": {"fstype": "ext4", "signatures": ["ext4"]},
              "vg/bad": {"fstype": None, "signatures": [], "signature_error": "wipefs exited 1"}}
    res = sp.storage_guard_lvs(lvs, probed, ["pending"])
    errs = "\n".join(res["errors"])
    assert "/dev/vg/gpt carries PMBR, gpt signature(s)" in errs
    assert "/dev/vg/other carries ext4 signature(s), not the xfs filesystem" in errs
    assert "could not read the signatures of /dev/vg/bad" in errs
    assert len(res["errors"]) == 3 and res["mkfs"] == []
    res = sp.storage_guard_lvs([l for l in lvs if l["name"] in ("new", "done", "blank", "later")], probed, ["pending"])
    assert res["errors"] == [] and [l["name"] for l in res["mkfs"]] == ["new", "blank"]
    assert res["plan"] == ["create xfs filesystem on /dev/vg/new (new logical volume)",
                           "create xfs filesystem on /dev/vg/blank (existing logical volume, clean per probe)"]
