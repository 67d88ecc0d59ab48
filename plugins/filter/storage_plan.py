# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Pure planning logic of the storage role (controller side, no I/O).

The filters are pure functions over what the role's read-only probe
(roles/storage/files/storage_probe.py) gathered on the node:

``storage_select_devices(arrays, lsblk, nvme, resolve, reserved)``
    Resolve every array's member list (explicit ``devices`` in any form -- by-id,
    by-path, by-partuuid symlinks, partitions -- or a ``selector`` on
    model/serial/size) to the canonical device paths the probe saw.

``storage_claims(arrays, volume_groups, resolve, md_real)``
    Every device the role will write to, with the name the inventory used.

``storage_guard(claims, signatures, md_state, pvs, force, resolve, lsblk, volume_groups, vgs)``
    The guard: decide for every claimed device whether it may be used. A device
    the probe did not see or could not read is refused; a device that carries a
    partition table, filesystem, md or LVM signature is refused unless it is
    listed in ``force`` (storage_force_wipe_devices, any name resolving to it) or
    the signature is the one we put there ourselves (member of the same md array
    / PV of the same VG). Its lists (wipe, create, pv_create, vg_create,
    vg_extend) are the only devices the role's writing tasks loop over.

``storage_guard_lvs(lvs, probed, pending)``
    The same for filesystems on logical volumes.

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


def _real(dev):
    """Canonical kernel path of an lsblk node (the probe adds ``real``; lsblk's PATH otherwise)."""
    return dev.get("real") or _dev_path(dev)


def discovered_disks(lsblk, nvme=None):
    """Whole disks from ``lsblk -J -b`` enriched with nvme-cli data; sorted by path."""
    nv = _nvme_index(nvme)
    disks = []
    for dev in (lsblk or {}).get("blockdevices", []) or []:
        if dev.get("type") != "disk":
            continue
        path = _real(dev)
        info = nv.get(path, nv.get(_dev_path(dev), {}))
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
            "children": [{"path": _real(c), "type": c.get("type"),
                          "mountpoint": c.get("mountpoint")} for c in children],
            "mountpoint": dev.get("mountpoint"),
        })
    return sorted(disks, key=lambda d: d["path"])


def _members_known(lsblk):
    """Canonical paths of every disk and partition lsblk shows -> parent disk path (None for disks)."""
    out = {}
    for dev, parent in _walk((lsblk or {}).get("blockdevices")):
        if dev.get("type") in ("disk", "part"):
            out[_real(dev)] = _real(parent) if parent is not None else None
    return out


def _resolve(name, resolve):
    """Canonical path of a device name as the probe resolved it on the host (identity without a map)."""
    if resolve is None:
        return name
    return resolve.get(name)


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


def storage_select_devices(arrays, lsblk, nvme=None, resolve=None, reserved=None):
    """Resolve member devices of every array. Returns {arrays: [...], errors: [...], disks: [...]}.

    ``resolve`` maps every name the inventory uses (``/dev/disk/by-id/...``, by-path, by-partuuid,
    plain paths) to the canonical path the probe saw (realpath on the host; None when it does not
    exist). Members come back as canonical paths, the names the inventory used in ``given``.
    ``reserved``: canonical paths claimed elsewhere (raw PVs), never picked by a selector.
    """
    disks = discovered_disks(lsblk, nvme)
    known = _members_known(lsblk)
    errors = []
    resolved = []
    taken = dict((r, "volume group devices") for r in (reserved or []) if r)
    # explicit device lists first, so selectors never steal a device named elsewhere
    for arr in arrays or []:
        for dev in arr.get("devices") or []:
            real = _resolve(dev, resolve)
            if real:
                taken.setdefault(real, arr["name"])
    for arr in arrays or []:
        name = arr["name"]
        level = int(arr["level"])
        if arr.get("devices"):
            given = list(arr["devices"])
            devices = []
            for dev in given:
                real = _resolve(dev, resolve)
                shown = dev if real == dev else "%s (-> %s)" % (dev, real)
                if not real:
                    errors.append("storage_arrays[%s]: device %s does not exist on this node" % (name, dev))
                    continue
                devices.append(real)
                if real not in known:
                    errors.append("storage_arrays[%s]: device %s is not a whole disk or partition on this node "
                                  "(found: %s)" % (name, shown, ", ".join(sorted(known)) or "none"))
                elif taken.get(real) != name:
                    errors.append("storage_arrays[%s]: device %s is also listed in %s"
                                  % (name, shown, "array " + taken[real] if taken[real] != "volume group devices"
                                     else taken[real]))
            if len(set(devices)) != len(devices):
                errors.append("storage_arrays[%s]: the same device is listed twice under different names (%s)"
                              % (name, ", ".join(given)))
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
            given = list(cands)
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
        resolved.append(dict(arr, devices=devices, given=given, level=level, path="/dev/md/" + name))
    return {"arrays": resolved, "errors": errors, "disks": disks}


def parse_wipefs(stdout):
    """Signature types from ``wipefs --no-act --json DEV`` output ('' when none)."""
    import json
    if not stdout or not stdout.strip():
        return []
    data = json.loads(stdout)
    return sorted(set(s.get("type") for s in data.get("signatures", []) if s.get("type")))


def _probe_entry(signatures, dev):
    """The probe's reading of a device: (present, types, error). Accepts the probe's
    {types, error} entries, raw ``wipefs --json`` output or a list of types."""
    if dev not in (signatures or {}):
        return False, [], None
    raw = signatures[dev]
    if isinstance(raw, dict):
        return True, sorted(raw.get("types") or []), raw.get("error")
    if raw is None:
        return True, [], "the probe recorded no reading"
    if isinstance(raw, str):
        try:
            return True, parse_wipefs(raw), None
        except ValueError:
            return True, [], "unparsable wipefs output"
    return True, sorted(raw), None


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


def storage_claims(arrays, volume_groups, resolve=None, md_real=None):
    """Every device the role will write to, as {device (canonical path or None), given, owner, kind}.

    arrays:        resolved arrays (``storage_select_devices(...).arrays``): members, kind ``md``
    volume_groups: ``storage_volume_groups``: raw ``devices`` (resolved through ``resolve``) and
                   ``arrays`` (the md device, kind ``pv`` with ``array`` set; ``device`` is None when
                   the array does not exist yet and is created in this run)
    """
    out = []
    for arr in arrays or []:
        given = arr.get("given") or arr["devices"]
        for dev, name in zip(arr["devices"], given):
            out.append({"device": dev, "given": name, "owner": arr["name"], "kind": "md"})
    for vg in volume_groups or []:
        for a in vg.get("arrays") or []:
            out.append({"device": (md_real or {}).get(a), "given": "/dev/md/" + a, "owner": vg["name"],
                        "kind": "pv", "array": a})
        for dev in vg.get("devices") or []:
            out.append({"device": _resolve(dev, resolve), "given": dev, "owner": vg["name"], "kind": "pv"})
    return out


def _name(c):
    dev, given = c.get("device"), c.get("given") or c.get("device")
    return given if not dev or dev == given else "%s (-> %s)" % (given, dev)


def storage_guard(claims, signatures, md_state=None, pvs=None, force=None, resolve=None, lsblk=None,
                  volume_groups=None, vgs=None):
    """Decide which claimed devices may be used; the only source of devices the role writes to.

    claims:     ``storage_claims`` output (or {device, owner, kind: md|pv} with canonical paths)
    signatures: the probe's {canonical path: {types, error}} (raw wipefs JSON or type lists accepted)
    md_state:   {array name: mdadm --detail --export stdout} for arrays that exist
    pvs:        {canonical path: vg name} from pvs
    force:      storage_force_wipe_devices (any name; resolved through ``resolve``)
    resolve:    {name: canonical path or None} from the probe (identity when omitted)
    lsblk:      the probe's lsblk tree (a claimed disk and a claimed partition of it conflict)
    volume_groups, vgs: storage_volume_groups and the probe's {vg: [canonical PVs]}: VG actions

    Verdict per device: ``clean`` (no signature per probe), ``ours`` (member of this very array /
    PV of this very VG), ``wipe`` (signature, and listed in ``force``), ``new`` (md array created in
    this run). Anything else is an error and the role stops before it writes anything: a name that
    does not exist, a device the probe has no entry for or could not read, a device claimed twice or
    together with its own partition, a signature not listed in ``force``.

    Returns {errors, warnings, wipe, wipe_members, wipe_pvs, zero_superblock, create, existing,
    pv_create, vg_create, vg_extend, plan, detail}.
    """
    pvs = pvs or {}
    md = dict((k, parse_mdadm_export(v) if isinstance(v, str) else v) for k, v in (md_state or {}).items())
    errors, warnings, detail = [], [], {}
    claims = list(claims or [])
    parents = _members_known(lsblk) if lsblk is not None else {}

    force_real = {}
    for f in force or []:
        real = _resolve(f, resolve)
        if not real:
            errors.append("storage_force_wipe_devices: %s does not exist on this node; list the exact device "
                          "to wipe" % f)
        else:
            force_real[real] = f
    claimed = set(c.get("device") for c in claims if c.get("device"))
    for real, f in sorted(force_real.items()):
        if real not in claimed:
            errors.append("storage_force_wipe_devices lists %s, which no array or volume group uses; remove it "
                          "(the list may only name devices the role is asked to use)"
                          % (f if f == real else "%s (-> %s)" % (f, real)))

    seen = {}
    for c in claims:
        dev = c.get("device")
        if not dev:
            continue
        if dev in seen:
            errors.append("%s is claimed twice (%s %s and %s %s): a device can back one array or volume group"
                          % (_name(c), seen[dev]["kind"], seen[dev]["owner"], c["kind"], c["owner"]))
        else:
            seen[dev] = c
    for dev, c in sorted(seen.items()):
        parent = parents.get(dev)
        if parent and parent in seen:
            errors.append("%s is a partition of %s, which is claimed too (%s %s); use either the disk or its "
                          "partitions" % (_name(c), parent, seen[parent]["kind"], seen[parent]["owner"]))

    verdicts = []
    for c in claims:
        dev = c.get("device")
        kind_word = "array" if c["kind"] == "md" else "volume group"
        if not dev:
            if c.get("array"):
                verdicts.append((c, "new", []))
                continue
            errors.append("%s %s: %s does not exist on this node; check the name (ls -l %s)"
                          % (kind_word, c["owner"], c.get("given"), c.get("given")))
            continue
        present, sigs, err = _probe_entry(signatures, dev)
        if not present:
            errors.append("%s %s: %s has no entry in the storage probe (not a disk, partition or block device "
                          "it read); refusing to touch it" % (kind_word, c["owner"], _name(c)))
            continue
        if err:
            errors.append("%s %s: the probe could not read the signatures of %s (%s); refusing to touch it: "
                          "a device that cannot be read never counts as clean" % (kind_word, c["owner"], _name(c), err))
            continue
        ours = False
        if c["kind"] == "md":
            info = md.get(c["owner"])
            ours = bool(info) and dev in info["devices"]
        elif c["kind"] == "pv":
            ours = pvs.get(dev) == c["owner"]
        detail[dev] = {"signatures": sigs, "ours": ours, "owner": c["owner"], "kind": c["kind"],
                       "given": c.get("given") or dev}
        if ours:
            verdicts.append((c, "ours", sigs))
        elif not sigs:
            verdicts.append((c, "clean", sigs))
        elif dev in force_real:
            verdicts.append((c, "wipe", sigs))
        else:
            errors.append("%s carries %s signature(s) and is not part of %s %s; refusing to touch it. "
                          "Check it is the right disk (wipefs -n %s), then either wipe it yourself or add it "
                          "to storage_force_wipe_devices to let the role wipe it (destroys its data)."
                          % (_name(c), ", ".join(sigs), kind_word, c["owner"], dev))
    for dev, d in detail.items():
        d["verdict"] = next((v for c, v, _s in verdicts if c.get("device") == dev), "refused")

    # the only lists the role's writing tasks loop over
    wipe = sorted(set(c["device"] for c, v, _s in verdicts if v == "wipe"))
    wipe_members = [d for d in wipe if detail[d]["kind"] == "md"]
    wipe_pvs = [d for d in wipe if detail[d]["kind"] == "pv"]
    zero_sb = [d for d in wipe if "linux_raid_member" in detail[d]["signatures"]]
    create = []
    for c in claims:
        if c["kind"] == "md" and c["owner"] not in md and c["owner"] not in create:
            create.append(c["owner"])
    reason = {"clean": "clean per probe", "wipe": "wiped first", "new": "array created in this run",
              "ours": "already in place"}
    pv_create = []
    for c, v, _s in verdicts:
        if c["kind"] == "pv" and v != "ours" and (not c.get("device") or c["device"] not in pvs):
            path = c["device"] or c["given"]
            if path not in [p["path"] for p in pv_create]:
                pv_create.append({"path": path, "given": c.get("given"), "vg": c["owner"], "verdict": v})
    vg_create, vg_extend = [], []
    ok_pv = dict(((c["owner"], c.get("device") or c["given"]), v) for c, v, _s in verdicts if c["kind"] == "pv")
    for vg in volume_groups or []:
        want = [p for (owner, p) in ok_pv if owner == vg["name"]]
        have = (vgs or {}).get(vg["name"])
        if have is None:
            if want:
                vg_create.append({"name": vg["name"], "pvs": want, "pe_size": vg.get("pe_size") or "4M"})
        else:
            missing = [p for p in want if p not in have]
            if missing:
                vg_extend.append({"name": vg["name"], "pvs": missing})
            named = set(p for (owner, p) in ok_pv if owner == vg["name"])
            extra = [p for p in have if p not in named]
            if extra:
                warnings.append("volume group %s also has PV(s) %s that storage_volume_groups does not list; "
                                "the role never removes PVs" % (vg["name"], ", ".join(sorted(extra))))

    plan = []
    for d in wipe:
        plan.append("WIPE %s (%ssignatures %s; listed in storage_force_wipe_devices): wipefs --all%s"
                    % (d, "" if detail[d]["given"] == d else "given as %s; " % detail[d]["given"],
                       ", ".join(detail[d]["signatures"]),
                       ", mdadm --zero-superblock" if d in zero_sb else ""))
    members = dict((c["device"], v) for c, v, _s in verdicts if c["kind"] == "md")
    for name in create:
        mem = [c for c in claims if c["kind"] == "md" and c["owner"] == name]
        plan.append("create md array /dev/md/%s on %s" % (name, ", ".join(
            "%s (%s)" % (_name(c), reason.get(members.get(c["device"]), "refused")) for c in mem)))
    for p in pv_create:
        shown = p["path"] if p["given"] in (None, p["path"]) else "%s (given as %s)" % (p["path"], p["given"])
        plan.append("create PV on %s (%s) for volume group %s" % (shown, reason[p["verdict"]], p["vg"]))
    for v in vg_create:
        plan.append("create volume group %s on %s" % (v["name"], ", ".join(v["pvs"])))
    for v in vg_extend:
        plan.append("extend volume group %s with %s" % (v["name"], ", ".join(v["pvs"])))
    if errors:
        wipe, wipe_members, wipe_pvs, zero_sb, create, pv_create, vg_create, vg_extend, plan = (
            [], [], [], [], [], [], [], [], [])
    return {"errors": errors, "warnings": warnings, "wipe": wipe, "wipe_members": wipe_members,
            "wipe_pvs": wipe_pvs, "zero_superblock": zero_sb, "create": create, "existing": sorted(md),
            "pv_create": pv_create, "vg_create": vg_create, "vg_extend": vg_extend, "plan": plan,
            "detail": detail}


def storage_guard_lvs(lvs, probed, pending=None):
    """Which logical volumes may get a filesystem (mkfs; the filesystem module passes mkfs its own
    force flag, so only LVs cleared here reach it).

    A new LV (not in the probe; lvcreate wipes signatures when it creates one) or an existing LV the
    probe read without any signature gets mkfs; an existing LV with the wanted filesystem is left
    alone; an existing LV with any other signature, or one the probe could not read, is an error.
    Returns {errors, mkfs: [lv], plan: [str]}.
    """
    errors, mkfs, plan = [], [], []
    for lv in lvs or []:
        if lv["vg"] in (pending or []):
            continue
        key = "%s/%s" % (lv["vg"], lv["name"])
        want = lv.get("fstype", "xfs")
        info = (probed or {}).get(key)
        if info is None:
            mkfs.append(lv)
            plan.append("create %s filesystem on /dev/%s (new logical volume)" % (want, key))
            continue
        if info.get("fstype") == want:
            continue
        if info.get("signature_error"):
            errors.append("the probe could not read the signatures of /dev/%s (%s); refusing to create a "
                          "filesystem on it" % (key, info["signature_error"]))
            continue
        sigs = sorted(set((info.get("signatures") or []) + ([info["fstype"]] if info.get("fstype") else [])))
        if sigs:
            errors.append("/dev/%s carries %s signature(s), not the %s filesystem storage_logical_volumes asks "
                          "for; the role never reformats a logical volume: fix the inventory, or wipe it yourself "
                          "(wipefs -a /dev/%s, destroys its data)" % (key, ", ".join(sigs), want, key))
            continue
        mkfs.append(lv)
        plan.append("create %s filesystem on /dev/%s (existing logical volume, clean per probe)" % (want, key))
    if errors:
        mkfs, plan = [], []
    return {"errors": errors, "mkfs": mkfs, "plan": plan}


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
            "storage_claims": storage_claims,
            "storage_guard": storage_guard,
            "storage_guard_lvs": storage_guard_lvs,
            "storage_check_existing": storage_check_existing,
            "storage_parse_mdadm_export": parse_mdadm_export,
            "storage_lvs_needing_fs": storage_lvs_needing_fs,
            "storage_modes_differ": storage_modes_differ,
        }
