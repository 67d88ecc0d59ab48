# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Pure planning logic of the storage role (controller side, no I/O).

Two filters, both pure functions over data the role gathered on the node:

``storage_select_devices(arrays, lsblk, nvme)``
    Resolve every array's member list (explicit ``devices`` or a ``selector``
    on model/serial/size) against the discovered disks.

``storage_guard(claims, signatures, md_state, pvs, force)``
    Decide for every claimed device whether it may be used: a device that
    carries a partition table, filesystem, md or LVM signature is refused
    unless it is listed in ``force`` or the signature is the one we put there
    ourselves (member of the same md array / PV of the same VG).

Both return plain dicts so the role can ``assert`` on ``errors`` and unit
tests can call them directly.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

RAID_MIN_DEVICES = {0: 2, 1: 2, 10: 2}


def _walk(devices, parent=None):
    for dev in devices or []:
        yield dev, parent
        yield from _walk(dev.get("children"), dev)


def _dev_path(dev):
    return dev.get("path") or "/dev/" + dev.get("name", "")


def _nvme_index(nvme):
    """Map /dev path -> {model, serial, size} from ``nvme list -o json`` (nvme-cli 1.x/2.x)."""
    out = {}
    for d in (nvme or {}).get("Devices", []) or []:
        path = d.get("DevicePath")
        if not path:
            continue
        out[path] = {
            "model": (d.get("ModelNumber") or "").strip(),
            "serial": (d.get("SerialNumber") or "").strip(),
            "size": d.get("PhysicalSize"),
        }
    return out


def discovered_disks(lsblk, nvme=None):
    """Whole disks from ``lsblk -J -b`` enriched with nvme-cli data; sorted by path."""
    nv = _nvme_index(nvme)
    disks = []
    for dev in (lsblk or {}).get("blockdevices", []) or []:
        if dev.get("type") != "disk":
            continue
        path = _dev_path(dev)
        info = nv.get(path, {})
        children = [c for c, _parent in _walk(dev.get("children"))]
        disks.append({
            "path": path,
            "name": dev.get("name"),
            "model": (info.get("model") or dev.get("model") or "").strip(),
            "serial": (info.get("serial") or dev.get("serial") or "").strip(),
            "size": int(dev.get("size") or info.get("size") or 0),
            "transport": dev.get("tran") or ("nvme" if path.startswith("/dev/nvme") else ""),
            "fstype": dev.get("fstype"),
            "pttype": dev.get("pttype"),
            "children": [{"path": _dev_path(c), "type": c.get("type"),
                          "mountpoint": c.get("mountpoint")} for c in children],
            "mountpoint": dev.get("mountpoint"),
        })
    return sorted(disks, key=lambda d: d["path"])


def _matches(disk, sel):
    if sel.get("transport") and disk["transport"] != sel["transport"]:
        return False
    if sel.get("model") and not re.search(sel["model"], disk["model"]):
        return False
    serials = sel.get("serials")
    if serials and disk["serial"] not in serials:
        return False
    if sel.get("serial") and not re.search(sel["serial"], disk["serial"]):
        return False
    gib = disk["size"] / float(1 << 30)
    if sel.get("min_size_gb") is not None and gib < float(sel["min_size_gb"]):
        return False
    if sel.get("max_size_gb") is not None and gib > float(sel["max_size_gb"]):
        return False
    return True


def storage_select_devices(arrays, lsblk, nvme=None):
    """Resolve member devices of every array. Returns {arrays: [...], errors: [...], disks: [...]}."""
    disks = discovered_disks(lsblk, nvme)
    by_path = dict((d["path"], d) for d in disks)
    errors = []
    resolved = []
    taken = {}
    # explicit device lists first, so selectors never steal a device named elsewhere
    for arr in arrays or []:
        for dev in arr.get("devices") or []:
            taken.setdefault(dev, arr["name"])
    for arr in arrays or []:
        name = arr["name"]
        level = int(arr["level"])
        if arr.get("devices"):
            devices = list(arr["devices"])
            for dev in devices:
                if dev not in by_path:
                    errors.append("storage_arrays[%s]: device %s is not a whole disk on this node "
                                  "(found: %s)" % (name, dev, ", ".join(sorted(by_path)) or "none"))
                elif taken.get(dev) != name:
                    errors.append("storage_arrays[%s]: device %s is also listed in array %s"
                                  % (name, dev, taken[dev]))
        else:
            sel = arr.get("selector") or {}
            cands = [d["path"] for d in disks
                     if _matches(d, sel) and d["path"] not in taken
                     and not d["mountpoint"]
                     and not any(c["mountpoint"] for c in d["children"] if c["type"] == "part")]
            count = sel.get("count")
            if count is not None:
                if len(cands) < int(count):
                    errors.append("storage_arrays[%s]: selector %r matched %d free disk(s) (%s), need %d"
                                  % (name, sel, len(cands), ", ".join(cands) or "none", int(count)))
                cands = cands[:int(count)]
            devices = cands
            for dev in devices:
                taken[dev] = name
        need = RAID_MIN_DEVICES.get(level)
        if need is None:
            errors.append("storage_arrays[%s]: level %s unsupported (0, 1 or 10)" % (name, level))
        elif len(devices) < need:
            errors.append("storage_arrays[%s]: RAID%d needs at least %d devices, got %d (%s)"
                          % (name, level, need, len(devices), ", ".join(devices) or "none"))
        elif level == 10 and len(devices) % 2:
            errors.append("storage_arrays[%s]: RAID10 needs an even number of devices, got %d"
                          % (name, len(devices)))
        resolved.append(dict(arr, devices=devices, level=level, path="/dev/md/" + name))
    return {"arrays": resolved, "errors": errors, "disks": disks}


def parse_wipefs(stdout):
    """Signature types from ``wipefs --no-act --json DEV`` output ('' when none)."""
    import json
    if not stdout or not stdout.strip():
        return []
    data = json.loads(stdout)
    return sorted(set(s.get("type") for s in data.get("signatures", []) if s.get("type")))


def parse_mdadm_export(stdout):
    """``mdadm --detail --export`` -> {level, devices: [...], uuid, name}."""
    kv = {}
    for line in (stdout or "").splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            kv[k.strip()] = v.strip()
    members = sorted(v for k, v in kv.items() if k.startswith("MD_DEVICE_") and k.endswith("_DEV"))
    level = kv.get("MD_LEVEL", "")
    m = re.match(r"raid(\d+)$", level)
    return {"level": int(m.group(1)) if m else level, "devices": members,
            "uuid": kv.get("MD_UUID"), "name": kv.get("MD_NAME")}


def storage_guard(claims, signatures, md_state=None, pvs=None, force=None):
    """Decide which claimed devices may be used.

    claims:     list of {device, owner, kind: md|pv, array/vg name}
    signatures: {device: wipefs stdout or list of types}
    md_state:   {array name: mdadm --detail --export stdout} for arrays that exist
    pvs:        {device: vg name} from pvs
    force:      devices the user allowed to wipe
    Returns {errors, wipe: [devices], create: [array names], existing: [array names], detail}.
    """
    force = set(force or [])
    pvs = pvs or {}
    md = dict((k, parse_mdadm_export(v) if isinstance(v, str) else v) for k, v in (md_state or {}).items())
    errors, wipe, detail = [], [], {}
    for c in claims or []:
        dev = c["device"]
        raw = (signatures or {}).get(dev)
        sigs = parse_wipefs(raw) if isinstance(raw, str) else sorted(raw or [])
        ours = False
        if c["kind"] == "md":
            info = md.get(c["owner"])
            ours = bool(info) and dev in info["devices"]
        elif c["kind"] == "pv":
            ours = pvs.get(dev) == c["owner"]
        detail[dev] = {"signatures": sigs, "ours": ours, "owner": c["owner"]}
        if ours or not sigs:
            continue
        if dev in force:
            wipe.append(dev)
            continue
        errors.append("%s carries %s signature(s) and is not part of %s %s; refusing to touch it. "
                      "Check it is the right disk (wipefs -n %s), then either wipe it yourself or add it "
                      "to storage_force_wipe_devices to let the role wipe it (destroys its data)."
                      % (dev, ", ".join(sigs), "array" if c["kind"] == "md" else "volume group",
                         c["owner"], dev))
    create = []
    seen = set()
    for c in claims or []:
        if c["kind"] == "md" and c["owner"] not in md and c["owner"] not in seen:
            create.append(c["owner"])
            seen.add(c["owner"])
    return {"errors": errors, "wipe": sorted(set(wipe)), "create": create,
            "existing": sorted(md), "detail": detail}


def storage_check_existing(arrays, md_state):
    """Errors for arrays that exist with a different level or member set than configured."""
    errors = []
    for arr in arrays or []:
        raw = (md_state or {}).get(arr["name"])
        if not raw:
            continue
        info = parse_mdadm_export(raw) if isinstance(raw, str) else raw
        if info["level"] != int(arr["level"]):
            errors.append("array %s exists as RAID%s but storage_arrays asks for RAID%s; the role never "
                          "reshapes or recreates an array: fix the inventory or migrate by hand"
                          % (arr["name"], info["level"], arr["level"]))
        elif sorted(arr["devices"]) != info["devices"]:
            errors.append("array %s exists with members %s but storage_arrays resolves to %s; the role "
                          "never adds/removes members: fix the inventory or use mdadm --manage by hand"
                          % (arr["name"], ", ".join(info["devices"]), ", ".join(sorted(arr["devices"]))))
    return errors


def storage_lvs_needing_fs(lvs, probed):
    """LVs whose filesystem is not already the requested type (new LVs, or a mismatch the
    filesystem module must report)."""
    out = []
    for lv in lvs or []:
        info = (probed or {}).get("%s/%s" % (lv["vg"], lv["name"])) or {}
        if info.get("fstype") != lv.get("fstype", "xfs"):
            out.append(lv)
    return out


def storage_modes_differ(lvs, modes):
    """LVs whose mount point mode differs from the requested one."""
    out = []
    for lv in lvs or []:
        want = "%04o" % int(str(lv["mode"]), 8)
        if (modes or {}).get(lv["mountpoint"]) != want:
            out.append(lv)
    return out


class FilterModule(object):
    def filters(self):
        return {
            "storage_select_devices": storage_select_devices,
            "storage_guard": storage_guard,
            "storage_check_existing": storage_check_existing,
            "storage_parse_mdadm_export": parse_mdadm_export,
            "storage_lvs_needing_fs": storage_lvs_needing_fs,
            "storage_modes_differ": storage_modes_differ,
        }
