"""Process plumbing shared by every test-bed component.

Rules every component follows (DEVELOPERS.md):
- binds 127.0.0.1 on a free port;
- bounded lifetime: each process runs under ``timeout`` so it dies on its own
  even if the test run is killed;
- stopped by PID (the process group of that PID);
- logs stay in the component's work dir; they are kept when a test fails.

A component writes ``state.json`` into its work dir so ``scripts/testbed``
can stop it later from another shell.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("GPUOPS_CACHE", str(Path.home() / ".cache" / "gpuops")))
BIN = CACHE / "bin"
RUN_ROOT = Path(os.environ.get("GPUOPS_TESTBED_DIR", "/tmp/gpuops-testbed"))
DEFAULT_LIFETIME = int(os.environ.get("GPUOPS_TESTBED_LIFETIME", "3600"))
SHARED = Path(os.environ.get("GPUOPS_SHARED", str(REPO.parent / "shared")))


class TestbedError(RuntimeError):
    """A component could not be built, started or reached."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_private(path: Path, data) -> Path:
    """Write a secret to ``path``, mode 0600 from the start (never world-readable, not even for an
    instant; an existing file is truncated and made 0600). ``data``: bytes as they are (a key), or a
    str ending in a newline (a token or secret id: one line). Returns the path."""
    raw = data if isinstance(data, bytes) else (data if data.endswith("\n") else data + "\n").encode()
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(raw)
    os.chmod(path, 0o600)
    return Path(path)


def wait_for(check: Callable[[], bool], timeout: float, what: str,
             interval: float = 0.25, procs: Optional[List["Proc"]] = None) -> None:
    """Poll ``check`` until it returns truthy; raise with the log tail on timeout."""
    deadline = time.monotonic() + timeout
    last_exc: Optional[BaseException] = None
    while time.monotonic() < deadline:
        for p in procs or []:
            if not p.alive():
                raise TestbedError(f"{what}: process {p.name} exited early "
                                   f"(rc={p.returncode()})\n{p.tail()}")
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last_exc = exc
        time.sleep(interval)
    tails = "\n".join(p.tail() for p in procs or [])
    raise TestbedError(f"timed out after {timeout}s waiting for {what}"
                       f" (last error: {last_exc!r})\n{tails}")


@contextlib.contextmanager
def private_stdin():
    """A /dev/null opened for one child alone, to pass as its stdin.

    ssh switches the stdin it is given to non-blocking and cannot switch it back when it is killed
    (a timed-out wait for a booting guest); ansible-core then refuses to start on that stdin
    ("Ansible requires blocking IO on stdin/stdout/stderr"). An inherited stdin or
    ``subprocess.DEVNULL`` is one open file description shared by every child of the process (and
    by every pytest stream of ``scripts/test``), so the flag would travel from an ssh to a later
    ansible-playbook. A private open() is a description of its own."""
    with open(os.devnull, "rb") as devnull:
        yield devnull


def require_binary(name: str, hint: str = "run scripts/setup") -> str:
    """Path of a cached or system binary, or a clear error saying how to get it."""
    cand = BIN / name
    if cand.exists():
        return str(cand)
    found = shutil.which(name)
    if found:
        return found
    raise TestbedError(f"binary {name!r} not found in {BIN} or PATH: {hint}")


class Proc:
    """One server process under ``timeout``, in its own process group."""

    def __init__(self, name: str, argv: List[str], workdir: Path,
                 env: Optional[Dict[str, str]] = None,
                 lifetime: int = DEFAULT_LIFETIME, cwd: Optional[Path] = None):
        self.name = name
        self.argv = argv
        self.workdir = Path(workdir)
        self.log = self.workdir / f"{name}.log"
        self.lifetime = lifetime
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._logf = open(self.log, "ab")
        # timeout forwards TERM to the child, and kills it after its lifetime.
        cmd = ["timeout", "--kill-after=10", str(lifetime)] + [str(a) for a in argv]
        self.popen = subprocess.Popen(cmd, stdout=self._logf, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=full_env,
                                      cwd=str(cwd or self.workdir), start_new_session=True)
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def returncode(self) -> Optional[int]:
        return self.popen.poll()

    def tail(self, lines: int = 40) -> str:
        try:
            data = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            data = []
        return f"--- {self.log} (last {lines} lines) ---\n" + "\n".join(data)

    def stop(self, grace: float = 15.0) -> None:
        if self.alive():
            kill_group(self.pid, grace)
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._logf.close()

    def to_state(self) -> dict:
        return {"name": self.name, "pid": self.pid, "log": str(self.log)}


def kill_group(pid: int, grace: float = 15.0) -> None:
    """TERM the process group led by ``pid``; KILL it after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            # reap if it is our child
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.1)


class Component:
    """Base class: a named set of processes plus an ``info`` dict for tests.

    Subclasses implement ``_start()`` which calls ``self.spawn(...)`` and fills
    ``self.info`` (urls, ports, paths). ``start()`` / ``stop()`` are idempotent.
    """

    kind = "component"

    def __init__(self, name: Optional[str] = None, workdir: Optional[Path] = None,
                 lifetime: int = DEFAULT_LIFETIME):
        self.name = name or self.kind
        self.workdir = Path(workdir) if workdir else self._default_workdir(self.name)
        self.lifetime = lifetime
        self.procs: List[Proc] = []
        self.info: Dict[str, object] = {}
        self.started = False

    _instances: Dict[str, int] = {}
    _instances_lock = threading.Lock()

    @classmethod
    def _default_workdir(cls, name: str) -> Path:
        """``<name>-<pid>`` for the first component of that name in this process, then
        ``<name>-<pid>-2``, ``-3``...: two components must never share a work dir (measured: two
        Prometheus on one TSDB directory, the second one's scrapes and queries went to a dead port)."""
        with cls._instances_lock:
            n = cls._instances.get(name, 0) + 1
            cls._instances[name] = n
        return RUN_ROOT / (f"{name}-{os.getpid()}" if n == 1 else f"{name}-{os.getpid()}-{n}")

    # -- lifecycle -------------------------------------------------------
    def start(self) -> "Component":
        if self.started:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.info["startup_seconds"] = round(time.monotonic() - t0, 2)
        self.started = True
        self.save_state()
        return self

    def _start(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def spawn(self, name: str, argv: List[str], env: Optional[Dict[str, str]] = None,
              cwd: Optional[Path] = None) -> Proc:
        p = Proc(name, argv, self.workdir, env=env, lifetime=self.lifetime, cwd=cwd)
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()
        self.started = False
        state = self.workdir / "state.json"
        if state.exists():
            state.unlink()

    def cleanup(self, keep_logs: bool) -> None:
        """Remove the work dir unless logs should be kept (failed test)."""
        if not keep_logs and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)

    def rss_kib(self) -> int:
        """Resident memory of all processes of this component (KiB)."""
        total = 0
        for p in self.procs:
            total += _tree_rss(p.pid)
        return total

    # -- state file for the CLI -----------------------------------------
    def save_state(self) -> None:
        state = {"kind": self.kind, "name": self.name, "workdir": str(self.workdir),
                 "procs": [p.to_state() for p in self.procs], "info": self.info}
        (self.workdir / "state.json").write_text(json.dumps(state, indent=2, default=str))


def _tree_rss(pid: int) -> int:
    """Sum VmRSS of pid and all its descendants (Linux /proc)."""
    children: Dict[int, List[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(d.name))
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        cur = todo.pop()
        todo.extend(children.get(cur, []))
        try:
            for line in (Path("/proc") / str(cur) / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def stop_from_state(workdir: Path) -> bool:
    """Stop a component started by another process, from its state.json."""
    state_file = Path(workdir) / "state.json"
    if not state_file.exists():
        return False
    state = json.loads(state_file.read_text())
    for p in reversed(state.get("procs", [])):
        kill_group(int(p["pid"]))
    state_file.unlink()
    return True


def json_callback_results(stdout: str, host: str):
    """Parse the ansible.posix.json callback's output of one ansible-playbook run: every result of
    ``host`` as ``{task name without its role prefix: [result, ...]}`` and the host's stats, or None
    when the output holds no JSON document (ansible-playbook failed before the callback wrote it)."""
    try:
        doc = json.loads(stdout[stdout.index("{"):])
    except ValueError:
        return None
    tasks = {}
    for play in doc.get("plays", []):
        for task in play.get("tasks", []):
            res = (task.get("hosts") or {}).get(host)
            if res is not None:
                # "gpuops.cluster.istio : Istio namespaces" -> "Istio namespaces"
                tasks.setdefault(task["task"]["name"].split(" : ", 1)[-1], []).append(res)
    return tasks, (doc.get("stats") or {}).get(host, {})


def run_json_playbook(argv: list, env: dict, cwd, host: str) -> dict:
    """Run one ansible-playbook (``argv``; ``env`` selects the ansible.posix.json callback) on its own
    /dev/null stdin: rc, stdout, stderr, ``host``'s results by task name and its stats
    (json_callback_results; empty when the run wrote no JSON), wall and CPU seconds (the run's
    children included)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    with private_stdin() as stdin:
        proc = subprocess.run(argv, stdin=stdin, capture_output=True, text=True, env=env, cwd=str(cwd),
                              check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr, "tasks": {}, "stats": {},
           "wall": round(time.monotonic() - t0, 1),
           "cpu": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1)}
    parsed = json_callback_results(proc.stdout, host)
    if parsed is not None:
        out["tasks"], out["stats"] = parsed
    return out


def mitogen_strategy_env() -> Dict[str, str]:
    """The environment that runs ansible-playbook through the project's Mitogen strategy
    (scripts/lab-ansible/strategy_plugins/gpuops_mitogen_linear.py: Mitogen's linear strategy without
    its CPU pinning; docs/lab.md). test_gpu_stack_upgrade's bed runs and the storage VM test use it;
    molecule and scripts/lab-ansible/lab-env (the lab's runs) set the same two variables in their own
    files."""
    return {"ANSIBLE_STRATEGY_PLUGINS": str(REPO / "scripts" / "lab-ansible" / "strategy_plugins"),
            "ANSIBLE_STRATEGY": "gpuops_mitogen_linear"}
