#!/usr/bin/python3
# Copyright: (c) 2026, gpuops.cluster contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Node side of gpuops.cluster.network's commit-confirm apply, in one call.

Argument: base64 of a JSON bundle {token, dir, state_dir, rollback_seconds, backend,
files: {path: content}, stale: [paths], group, mode, apply_sh, rollback_sh}.
Steps: back up the config dir (tar), write apply/rollback scripts, arm the transient rollback
timer (systemd-run --on-active), write the changed files, remove stale ones, then start
apply.sh in a detached transient unit so a dropped SSH session cannot interrupt it.
Prints a JSON result. Python 3.5+.
"""
import base64
import grp
import json
import os
import subprocess
import sys


def run(argv, check=True):
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = p.communicate()[0].decode("utf-8", "replace")
    if check and p.returncode != 0:
        raise RuntimeError("%s failed (rc=%d): %s" % (" ".join(argv), p.returncode, out))
    return p.returncode, out


def write(path, content, mode, gid):
    tmp = path + ".gpuops-tmp"
    with open(tmp, "w") as f:
        f.write(content)
    os.chmod(tmp, mode)
    os.chown(tmp, 0, gid)
    os.rename(tmp, path)


def main():
    b = json.loads(base64.b64decode(sys.argv[1]).decode("utf-8"))
    token, cdir, sdir = b["token"], b["dir"], b["state_dir"]
    os.makedirs(sdir, mode=0o700, exist_ok=True)
    backup = os.path.join(sdir, "backup-%s.tar" % token)
    run(["tar", "-C", cdir, "-cpf", backup, "."])
    write(os.path.join(sdir, "apply.sh"), b["apply_sh"], 0o700, 0)
    write(os.path.join(sdir, "rollback.sh"), b["rollback_sh"], 0o700, 0)
    # an earlier run's timer must not fire into this change
    run(["systemctl", "stop", "gpuops-network-rollback.timer", "gpuops-network-rollback.service"], check=False)
    run(["systemctl", "reset-failed", "gpuops-network-rollback.timer", "gpuops-network-rollback.service"], check=False)
    run(["systemd-run", "--unit=gpuops-network-rollback", "--on-active=%ds" % int(b["rollback_seconds"]),
         "--timer-property=AccuracySec=1s", "/bin/sh", os.path.join(sdir, "rollback.sh")])
    gid = grp.getgrnam(b["group"]).gr_gid
    for path, content in sorted(b["files"].items()):
        write(path, content, int(b["mode"], 8), gid)
    for path in b["stale"]:
        if os.path.exists(path):
            os.unlink(path)
    run(["systemd-run", "--unit=gpuops-network-apply-%s" % token, "--collect", "/bin/sh",
         os.path.join(sdir, "apply.sh"), token])
    print(json.dumps({"changed": True, "backup": backup, "written": sorted(b["files"]), "removed": b["stale"]}))


if __name__ == "__main__":
    main()
