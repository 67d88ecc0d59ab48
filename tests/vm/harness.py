"""QEMU VM harness for the storage and network roles.

A ``VM`` is a test-bed Component: a Debian bookworm guest (image from
scripts/build/vm-image.sh, cached under $GPUOPS_CACHE/vm) booted from a qcow2
overlay so the base image stays clean, with

- NVMe disks (``-device nvme``) behind pcie-root-ports on machine q35, each a
  sparse qcow2 in the work dir, ``detect-zeroes=unmap``;
- eth0: user-mode (slirp) net with an SSH hostfwd on 127.0.0.1:<free port>;
- eth1, eth2: extra user-mode NICs without forwarding (bond members; VLAN
  frames on them go nowhere: there is no peer switch, so LACP cannot negotiate).

qemu runs under tests/testbed/common.Proc (``timeout`` bounds its lifetime)
and is stopped by PID. KVM here is PVM and cannot run a stock guest kernel, so
the accelerator is TCG unless GPUOPS_VM_ACCEL says otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import yaml

from tests.testbed.common import (CACHE, REPO, Component, TestbedError, free_port, mitogen_strategy_env,
                                  private_stdin, require_binary, wait_for)

VM_DIR = CACHE / "vm"
BUILD_SCRIPT = REPO / "scripts" / "build" / "vm-image.sh"
PLAYBOOKS = Path(__file__).resolve().parent / "playbooks"
RECAP = re.compile(r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
                   r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)", re.M)


def ensure_image() -> Dict[str, Path]:
    """Build (or confirm, fast no-op) the guest image; return its paths."""
    paths = {k: VM_DIR / v for k, v in
             {"base": "base.qcow2", "kernel": "vmlinuz", "initrd": "initrd.img", "key": "id_ed25519"}.items()}
    res = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True)
    if res.returncode != 0:
        raise TestbedError(f"{BUILD_SCRIPT} failed (rc={res.returncode}):\n{res.stdout}\n{res.stderr}")
    for p in paths.values():
        if not p.exists():
            raise TestbedError(f"{p} missing after {BUILD_SCRIPT}")
    return paths


class PlaybookResult:
    def __init__(self, argv: List[str], rc: int, output: str, seconds: float):
        self.argv = argv
        self.rc = rc
        self.output = output
        self.seconds = seconds
        self.recap: Dict[str, Dict[str, int]] = {}
        for m in RECAP.finditer(output):
            self.recap[m.group("host")] = {k: int(m.group(k)) for k in ("ok", "changed", "unreachable", "failed")}

    def stats(self, host: str = "vm") -> Dict[str, int]:
        if host not in self.recap:
            raise AssertionError(f"no PLAY RECAP for {host} (rc={self.rc}):\n{self.output[-4000:]}")
        return self.recap[host]

    def __repr__(self) -> str:
        return f"PlaybookResult(rc={self.rc}, recap={self.recap}, {self.seconds:.0f}s)"


class VM(Component):
    kind = "vm"

    def __init__(self, nvme: Sequence[Dict[str, str]] = (), extra_nics: int = 2, memory_mb: int = 1024,
                 cpus: int = 1, accel: Optional[str] = None, boot_timeout: Optional[float] = None, **kwargs):
        super().__init__(**kwargs)
        # each NVMe: {"serial": "...", "size": "1G"} -> /dev/nvme<i>n1 in the guest (order = bus order)
        self.nvme = list(nvme)
        self.extra_nics = extra_nics
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.accel = accel or os.environ.get("GPUOPS_VM_ACCEL", "tcg")
        # TCG on a shared 2-core host: cold boot measured 40-65 s idle, several minutes under load
        self.boot_timeout = boot_timeout or float(os.environ.get("GPUOPS_VM_BOOT_TIMEOUT", "600"))
        self.ssh_port = 0
        self.key: Optional[Path] = None

    # -- lifecycle ---------------------------------------------------------
    def _start(self) -> None:
        qemu = require_binary("qemu-system-x86_64", "apt-get install qemu-system-x86")
        qemu_img = require_binary("qemu-img", "apt-get install qemu-utils")
        t0 = time.monotonic()
        img = ensure_image()
        self.info["image_check_seconds"] = round(time.monotonic() - t0, 2)
        self.key = img["key"]
        root = self.workdir / "root.qcow2"
        subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(img["base"]), str(root)],
                       check=True)
        self.ssh_port = free_port()
        argv: List[str] = [
            qemu, "-machine", f"q35,accel={self.accel}", "-cpu", os.environ.get("GPUOPS_VM_CPU", "max" if self.accel == "tcg" else "host"),
            "-smp", str(self.cpus), "-m", str(self.memory_mb), "-display", "none", "-no-reboot",
            "-serial", f"file:{self.workdir / 'console.log'}",
            "-monitor", f"unix:{self.workdir / 'monitor.sock'},server,nowait",
            "-kernel", str(img["kernel"]), "-initrd", str(img["initrd"]),
            "-append", "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1",
            "-drive", f"file={root},if=virtio,format=qcow2,discard=unmap,detect-zeroes=unmap,cache=unsafe",
            "-netdev", f"user,id=mgmt,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22",
            "-device", "virtio-net-pci,netdev=mgmt,mac=52:54:00:6a:00:10",
            "-device", "virtio-rng-pci",
        ]
        for i in range(self.extra_nics):
            argv += ["-netdev", f"user,id=n{i + 1},restrict=on",
                     "-device", f"virtio-net-pci,netdev=n{i + 1},mac=52:54:00:6a:00:{i + 0x11:02x}"]
        for i, disk in enumerate(self.nvme):
            path = self.workdir / f"nvme{i}.qcow2"
            subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(path), disk.get("size", "1G")], check=True)
            argv += ["-device", f"pcie-root-port,id=rp{i},chassis={i + 1},slot={i + 1}",
                     "-drive", f"file={path},if=none,id=nvd{i},format=qcow2,discard=unmap,detect-zeroes=unmap,cache=unsafe",
                     "-device", f"nvme,drive=nvd{i},serial={disk['serial']},bus=rp{i}"]
        t1 = time.monotonic()
        proc = self.spawn("qemu", argv)
        self.info.update({"ssh_port": self.ssh_port, "host": "127.0.0.1", "key": str(self.key),
                          "accel": self.accel, "console": str(self.workdir / "console.log")})
        wait_for(lambda: self.ssh("true", timeout=20, tries=1).returncode == 0, self.boot_timeout,
                 f"ssh on the VM (127.0.0.1:{self.ssh_port}); console: {self.workdir / 'console.log'}",
                 interval=2, procs=[proc])
        self.info["boot_seconds"] = round(time.monotonic() - t1, 1)

    @classmethod
    def attach(cls, workdir: Path) -> "VM":
        """Use a VM that is already running (its state.json), e.g. one kept from an earlier run:
        GPUOPS_VM_ATTACH=<workdir>. The caller does not own it and must not stop it."""
        state = json.loads((Path(workdir) / "state.json").read_text())
        vm = cls(name=state["name"], workdir=Path(workdir))
        vm.info = state["info"]
        vm.ssh_port = int(state["info"]["ssh_port"])
        vm.key = Path(state["info"]["key"])
        vm.info["attached"] = True
        return vm

    # -- access --------------------------------------------------------------
    def ssh_args(self) -> List[str]:
        return ["-i", str(self.key), "-p", str(self.ssh_port), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]

    # ssh's own failures before the session starts (the command never ran), seen when a TCG guest
    # under load answers its first connections after boot slowly: safe to try again
    NOT_CONNECTED = ("during banner exchange", "kex_exchange_identification", "Connection refused",
                     "Connection timed out")

    def ssh(self, command: str, timeout: float = 120, check: bool = False, tries: int = 3) -> subprocess.CompletedProcess:
        for attempt in range(1, tries + 1):
            with private_stdin() as stdin:  # ssh leaves its stdin non-blocking when killed
                res = subprocess.run(["ssh"] + self.ssh_args() + ["root@127.0.0.1", command],
                                     stdin=stdin, capture_output=True, text=True, timeout=timeout)
            if res.returncode != 255 or not any(m in res.stderr for m in self.NOT_CONNECTED) or attempt == tries:
                break
            time.sleep(3)
        if check and res.returncode != 0:
            raise AssertionError(f"ssh {command!r} rc={res.returncode}\n{res.stdout}\n{res.stderr}")
        return res

    def json(self, command: str):
        return json.loads(self.ssh(command, check=True).stdout)

    def write_inventory(self, host_vars: dict, path: Optional[Path] = None) -> Path:
        path = path or self.workdir / "inventory.yml"
        hv = {"ansible_host": "127.0.0.1", "ansible_port": self.ssh_port, "ansible_user": "root",
              "ansible_ssh_private_key_file": str(self.key), "ansible_python_interpreter": "/usr/bin/python3"}
        hv.update(host_vars)
        inv = {"all": {"children": {"k8s_cluster": {"children": {"kube_node": {"hosts": {"vm": hv}}}}}}}
        path.write_text(yaml.safe_dump(inv, sort_keys=False))
        return path

    def playbook(self, playbook: str, inventory: Path, extra_vars: Optional[dict] = None,
                 check: bool = False, tag: str = "run", timeout: float = 1200,
                 mitogen: bool = False) -> PlaybookResult:
        """ansible-playbook against the guest. ``mitogen``: the lab's Mitogen strategy
        (scripts/lab-ansible), one Python in the guest for the whole run instead of one per task
        (a Python start costs ~8 s of emulated CPU under TCG); GPUOPS_VM_MITOGEN=0 turns it off."""
        argv = [str(Path(os.environ.get("GPUOPS_VENV", str(CACHE / "venv"))) / "bin" / "ansible-playbook"),
                "-i", str(inventory), str(PLAYBOOKS / playbook)]
        if extra_vars:
            ev = self.workdir / f"extra-{tag}.json"
            ev.write_text(json.dumps(extra_vars))
            argv += ["-e", f"@{ev}"]
        if check:
            argv += ["--check", "--diff"]
        env = dict(os.environ)
        env.update({
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            # a TCG guest whose QEMU runs niced beside the suite's other streams (scripts/test,
            # GPUOPS_VM_NICE) answered a new SSH connection after more than 30 s once: "Connection
            # timed out during banner exchange" before a task had started. 60 s for the handshake,
            # and 30 s of unanswered keepalives before a connection counts as lost.
            "ANSIBLE_TIMEOUT": "60",
            "ANSIBLE_SSH_ARGS": ("-o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile=/dev/null "
                                 "-o StrictHostKeyChecking=no -o ServerAliveInterval=5 -o ServerAliveCountMax=6"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.workdir / "cp"),
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_NOCOLOR": "1",
            # per-task wall times in each ansible-<tag>.log: where the emulated CPU goes
            "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks",
            "PROFILE_TASKS_TASK_OUTPUT_LIMIT": "25",
        })
        if mitogen and os.environ.get("GPUOPS_VM_MITOGEN", "1") != "0":
            env.update(mitogen_strategy_env())
            # Mitogen's connect timeout covers SSH and its bootstrap (a Python start and its core's
            # import in the emulated guest), not SSH alone: under load 30 s was short once
            # ("Connection timed out" on the first remote task)
            env["ANSIBLE_TIMEOUT"] = os.environ.get("GPUOPS_VM_MITOGEN_TIMEOUT", "300")
        t0 = time.monotonic()
        log = self.workdir / f"ansible-{tag}.log"
        # streamed to the log file so a slow run can be followed with tail -f
        with open(log, "w") as f, private_stdin() as stdin:
            f.write(" ".join(shlex.quote(a) for a in argv) + "\n")
            f.flush()
            res = subprocess.run(argv, stdin=stdin, stdout=f, stderr=subprocess.STDOUT, text=True, env=env,
                                 timeout=timeout, cwd=str(REPO))
        out = log.read_text(errors="replace")
        return PlaybookResult(argv, res.returncode, out, time.monotonic() - t0)


def record_timing(name: str, seconds: float) -> None:
    """Append a measured number to $GPUOPS_CACHE/vm/timings.jsonl (docs/testing/vm.md quotes them)."""
    VM_DIR.mkdir(parents=True, exist_ok=True)
    with open(VM_DIR / "timings.jsonl", "a") as f:
        f.write(json.dumps({"name": name, "seconds": round(seconds, 1),
                            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
