#!/usr/bin/python3
# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Read-only storage probe for gpuops.cluster.storage: prints one JSON document.

One remote call instead of ~25 (lsblk, nvme-cli, wipefs -n per disk, mdadm --detail per
array, pvs/vgs/lvs, blkid -p per LV, fstab, mounts, mount point modes). Never writes.
Usage: storage_probe.py MDADM_CONF [PATH ...]   (PATHs: mount points whose mode to report)
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


def main():
    mdadm_conf = sys.argv[1] if len(sys.argv) > 1 else "/etc/mdadm/mdadm.conf"
    paths = sys.argv[2:]
    res = {"errors": []}
    res["lsblk"] = jrun(["lsblk", "--json", "--bytes", "--output",
                         "NAME,PATH,TYPE,SIZE,MODEL,SERIAL,FSTYPE,PTTYPE,MOUNTPOINT,TRAN"], None)
    if res["lsblk"] is None:
        res["errors"].append("lsblk --json failed (util-linux too old?)")
        res["lsblk"] = {"blockdevices": []}
    res["nvme"] = jrun(["nvme", "list", "--output-format=json"], {})
    # signatures of every whole disk (wipefs --no-act only reads)
    res["wipefs"] = {}
    for dev in res["lsblk"].get("blockdevices", []):
        if dev.get("type") == "disk":
            path = dev.get("path") or "/dev/" + dev["name"]
            rc, out, err = run(["wipefs", "--no-act", "--json", path])
            res["wipefs"][path] = out if rc == 0 else ""
            if rc != 0:
                res["errors"].append("wipefs -n %s: %s" % (path, err.strip()))
    res["md"], res["md_brief"], res["md_real"] = {}, {}, {}
    for link in sorted(glob.glob("/dev/md/*")):
        name = os.path.basename(link)
        rc, out, _err = run(["mdadm", "--detail", "--export", link])
        if rc == 0:
            res["md"][name] = out
            rc, out, _err = run(["mdadm", "--detail", "--brief", link])
            res["md_brief"][name] = ([l for l in out.splitlines() if l.startswith("ARRAY")] + [""])[0]
            res["md_real"][name] = os.path.realpath(link)
    pvs = jrun(["pvs", "--reportformat", "json", "--options", "pv_name,vg_name"], {"report": [{"pv": []}]})
    res["pvs"] = dict((os.path.realpath(p["pv_name"]), p["vg_name"]) for p in pvs["report"][0]["pv"])
    res["vgs"] = {}
    for pv, vg in res["pvs"].items():
        if vg:
            res["vgs"].setdefault(vg, []).append(pv)
    lvs = jrun(["lvs", "--reportformat", "json", "--options", "vg_name,lv_name,lv_path,lv_size", "--units", "b"],
               {"report": [{"lv": []}]})
    res["lvs"] = {}
    for lv in lvs["report"][0]["lv"]:
        path = lv.get("lv_path") or "/dev/%s/%s" % (lv["vg_name"], lv["lv_name"])
        rc, out, _err = run(["blkid", "--probe", "--output", "export", path])
        tags = dict(l.split("=", 1) for l in out.splitlines() if "=" in l) if rc == 0 else {}
        res["lvs"]["%s/%s" % (lv["vg_name"], lv["lv_name"])] = {
            "path": path, "real": os.path.realpath(path), "size": lv.get("lv_size"), "fstype": tags.get("TYPE"), "uuid": tags.get("UUID")}
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
