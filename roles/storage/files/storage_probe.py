#!/usr/bin/python3
# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Read-only storage probe for gpuops.cluster.storage: prints one JSON document.

One remote call instead of ~25 (lsblk, nvme-cli, wipefs -n per device, mdadm --detail per
array, pvs/vgs/lvs, blkid -p per LV, fstab, mounts, mount point modes). Never writes.

Usage: storage_probe.py JSON   with JSON = {"mdadm_conf": PATH, "paths": [mount points whose mode
to report], "claims": [every device path the inventory names, in any form]}.

Every device is keyed by its canonical kernel path (realpath: /dev/disk/by-id/... -> /dev/nvme1n1),
and ``resolve`` maps each claimed name to that path (null when it does not exist), so the guard
on the controller compares like with like. ``signatures`` holds {types, error} for every disk,
partition, md array and claimed block device: a device wipefs could not read has an ``error``
and no types, and the guard refuses it (it never counts as clean).
Python 3.5+ (runs on the node).
"""
import glob
import json
import os
import stat
import subprocess
import sys


def run(argv):
    try:
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = p.communicate()
        return p.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    except OSError as exc:
        return 127, "", str(exc)


def jrun(argv, default):
    rc, out, _err = run(argv)
    if rc != 0 or not out.strip():
        return default
    try:
        return json.loads(out)
    except ValueError:
        return default


def read_ends(path, size=1 << 20):
    """Read the first and last MiB (where partition tables, filesystem, md and LVM signatures live):
    None when readable, else the error. wipefs finds nothing, and exits 0, on a device whose reads
    fail, so the probe checks that the device can be read at all."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            for offset in sorted(set([0, max(0, end - size)])):
                os.lseek(fd, offset, os.SEEK_SET)
                os.read(fd, size)
        finally:
            os.close(fd)
    except OSError as exc:
        return "reading %s failed: %s" % (path, exc)
    return None


def read_signatures(path):
    """{types: [...], error: None} from wipefs --no-act (reads only), or {types: [], error: msg}."""
    unreadable = read_ends(path)
    if unreadable:
        return {"types": [], "error": unreadable}
    rc, out, err = run(["wipefs", "--no-act", "--json", path])
    if rc != 0:
        return {"types": [], "error": "wipefs --no-act %s exited %d: %s" % (path, rc, (err or out).strip())}
    if not out.strip():
        return {"types": [], "error": None}
    try:
        data = json.loads(out)
    except ValueError:
        return {"types": [], "error": "wipefs --no-act %s printed no JSON: %s" % (path, out.strip()[:200])}
    return {"types": sorted(set(s.get("type") for s in data.get("signatures", []) if s.get("type"))),
            "error": None}


def is_block(path):
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def walk(devices):
    for dev in devices or []:
        yield dev
        yield from walk(dev.get("children"))


def main():
    args = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    mdadm_conf = args.get("mdadm_conf") or "/etc/mdadm/mdadm.conf"
    paths = args.get("paths") or []
    claims = args.get("claims") or []
    res = {"errors": []}
    res["lsblk"] = jrun(["lsblk", "--json", "--bytes", "--output",
                         "NAME,PATH,TYPE,SIZE,MODEL,SERIAL,FSTYPE,PTTYPE,MOUNTPOINT,TRAN"], None)
    if res["lsblk"] is None:
        res["errors"].append("lsblk --json failed (util-linux too old?)")
        res["lsblk"] = {"blockdevices": []}
    for dev in walk(res["lsblk"].get("blockdevices")):
        dev["real"] = os.path.realpath(dev.get("path") or "/dev/" + dev["name"])
    res["nvme"] = jrun(["nvme", "list", "--output-format=json"], {})
    # claimed names (symlinks, by-id, by-path, by-partuuid, partitions) -> canonical device path
    res["resolve"] = dict((c, os.path.realpath(c) if os.path.exists(c) else None) for c in claims)
    # signatures of every disk and partition, and of every claimed block device (wipefs -n only reads)
    to_read = set(d["real"] for d in walk(res["lsblk"].get("blockdevices")) if d.get("type") in ("disk", "part"))
    to_read.update(r for r in res["resolve"].values() if r and is_block(r))
    res["md"], res["md_brief"], res["md_real"] = {}, {}, {}
    for link in sorted(glob.glob("/dev/md/*")):
        name = os.path.basename(link)
        rc, out, _err = run(["mdadm", "--detail", "--export", link])
        if rc == 0:
            res["md"][name] = out
            rc, out, _err = run(["mdadm", "--detail", "--brief", link])
            res["md_brief"][name] = ([l for l in out.splitlines() if l.startswith("ARRAY")] + [""])[0]
            res["md_real"][name] = os.path.realpath(link)
            to_read.add(res["md_real"][name])
    res["signatures"] = dict((p, read_signatures(p)) for p in sorted(to_read))
    # a failed pvs/lvs must not read as "no PVs, no LVs" (every LV would look new): it fails the run
    pvs = jrun(["pvs", "--reportformat", "json", "--options", "pv_name,vg_name"], None)
    if pvs is None:
        res["errors"].append("pvs --reportformat json failed")
        pvs = {"report": [{"pv": []}]}
    res["pvs"] = dict((os.path.realpath(p["pv_name"]), p["vg_name"]) for p in pvs["report"][0]["pv"])
    res["vgs"] = {}
    for pv, vg in res["pvs"].items():
        if vg:
            res["vgs"].setdefault(vg, []).append(pv)
    lvs = jrun(["lvs", "--reportformat", "json", "--options", "vg_name,lv_name,lv_path,lv_size", "--units", "b"], None)
    if lvs is None:
        res["errors"].append("lvs --reportformat json failed")
        lvs = {"report": [{"lv": []}]}
    res["lvs"] = {}
    for lv in lvs["report"][0]["lv"]:
        path = lv.get("lv_path") or "/dev/%s/%s" % (lv["vg_name"], lv["lv_name"])
        rc, out, _err = run(["blkid", "--probe", "--output", "export", path])
        tags = dict(l.split("=", 1) for l in out.splitlines() if "=" in l) if rc == 0 else {}
        sig = read_signatures(path)
        res["lvs"]["%s/%s" % (lv["vg_name"], lv["lv_name"])] = {
            "path": path, "real": os.path.realpath(path), "size": lv.get("lv_size"), "fstype": tags.get("TYPE"),
            "uuid": tags.get("UUID"), "signatures": sig["types"], "signature_error": sig["error"]}
    try:
        with open(mdadm_conf) as f:
            res["mdadm_conf"] = f.read().splitlines()
    except (IOError, OSError):
        res["mdadm_conf"] = []
    try:
        with open("/etc/fstab") as f:
            res["fstab"] = [l.split() for l in f.read().splitlines() if l.strip() and not l.lstrip().startswith("#")]
    except (IOError, OSError):
        res["fstab"] = []
    res["mounts"] = {}
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 4:
                res["mounts"][parts[1].replace("\\040", " ")] = {
                    "source": parts[0], "real": os.path.realpath(parts[0]), "fstype": parts[2]}
    res["modes"] = {}
    for p in paths:
        try:
            res["modes"][p] = "%04o" % stat.S_IMODE(os.stat(p).st_mode)
        except OSError:
            res["modes"][p] = None
    print(json.dumps(res))


if __name__ == "__main__":
    main()
