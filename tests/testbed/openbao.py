"""OpenBao test-bed component: the real ``bao`` server (built by scripts/build/openbao.sh).

Two modes:

``mode="dev"``
    ``bao server -dev`` on 127.0.0.1 (in-memory storage, unsealed, KV v2 at ``secret/``).
    info: addr, token (root), port, pid, mode, version.

``mode="raft"``
    A production-shaped single node: generated HCL config with integrated storage (raft) in the
    work dir, a TCP listener on 127.0.0.1 with TLS from a generated CA, api_addr/cluster_addr on
    127.0.0.1 free ports (no disable_mlock: OpenBao 2.x removed mlock and warns about the field,
    GH-363). It is initialized through the HTTP API (Shamir,
    ``key_shares``/``key_threshold``: 1/1 by default, 3/2 works too), unsealed and waited on until
    active. info: addr, ca_cert, root_token (also as ``token``), unseal_keys, key_shares,
    key_threshold, cluster_addr, data_dir, config, pid, mode, version.

    Unseal keys and the root token are test secrets: they are kept in ``init.json`` (mode 0600)
    in the work dir (mode 0700) so ``restart()`` and ``scripts/testbed`` can use them.

Helpers: client(token=None) -> hvac.Client, health(), is_sealed(), seal(), unseal(keys=None),
enable_kv_v2(mount) (mounts and waits until the engine answers),
restart(unseal=True) (stop by PID, start on the same data dir: comes back sealed; unsealed again
with the stored keys unless ``unseal=False``), rss_kib() from Component.

    bao = OpenBao(mode="raft", key_shares=3, key_threshold=2).start()
    bao.enable_kv_v2("secret")          # raft starts with no KV mount; dev has KV v2 at secret/
    c = bao.client()
    c.secrets.kv.v2.create_or_update_secret(path="x", secret={"a": "b"}, mount_point="secret")
    bao.restart(unseal=False)   # sealed now; a role under test must unseal it
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from tests.testbed.common import Component, TestbedError, free_port, require_binary, wait_for, write_private

MODES = ("dev", "raft")
BUILD_HINT = "run scripts/setup openbao (builds $GPUOPS_CACHE/bin/bao from source)"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair() -> int:
    """A free port P whose neighbour P+1 is free too (bao derives a cluster port as P+1)."""
    for _attempt in range(50):
        port = free_port()
        if port < 65535 and _port_free(port + 1):
            return port
    raise TestbedError("no free pair of adjacent TCP ports on 127.0.0.1")


def generate_tls(directory: Path, hosts: Tuple[str, ...] = ("127.0.0.1", "localhost"),
                 days: int = 2) -> Dict[str, str]:
    """A throw-away CA and a server certificate for ``hosts`` (IPs and DNS names).

    Returns paths: ca_cert, cert, key (the CA key is not kept on disk: nothing else is signed).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    not_before, not_after = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gpuops testbed OpenBao CA")])
    ca_cert = (x509.CertificateBuilder()
               .subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))

    key = ec.generate_private_key(ec.SECP256R1())
    sans: List[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))

    directory.mkdir(parents=True, exist_ok=True)
    paths = {"ca_cert": directory / "ca.pem", "cert": directory / "server.pem", "key": directory / "server-key.pem"}
    paths["ca_cert"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    write_private(paths["key"], key_pem)
    return {k: str(v) for k, v in paths.items()}


def _hcl_str(value: str) -> str:
    return json.dumps(str(value))  # a JSON string literal is a valid HCL string literal


def render_raft_config(data_dir: Path, api_port: int, cluster_port: int, tls: Dict[str, str],
                       node_id: str) -> str:
    """The server HCL of a single raft node on 127.0.0.1 with TLS."""
    return "\n".join([
        'storage "raft" {',
        f"  path    = {_hcl_str(data_dir)}",
        f"  node_id = {_hcl_str(node_id)}",
        # raft timeouts x1 instead of the default x5: the first election after init takes ~1 s
        # instead of ~7 s (also what upstream recommends for production hardware)
        "  performance_multiplier = 1",
        "}",
        "",
        'listener "tcp" {',
        f"  address         = {_hcl_str(f'127.0.0.1:{api_port}')}",
        f"  cluster_address = {_hcl_str(f'127.0.0.1:{cluster_port}')}",
        f"  tls_cert_file   = {_hcl_str(tls['cert'])}",
        f"  tls_key_file    = {_hcl_str(tls['key'])}",
        '  tls_min_version = "tls12"',
        "}",
        "",
        f"api_addr      = {_hcl_str(f'https://127.0.0.1:{api_port}')}",
        f"cluster_addr  = {_hcl_str(f'https://127.0.0.1:{cluster_port}')}",
        "ui            = false",
        'log_level     = "info"',
        "",
    ])


class OpenBao(Component):
    """A real OpenBao server, ``mode="dev"`` or ``mode="raft"`` (see module docstring).

    kwargs: mode, key_shares (1), key_threshold (1), startup_timeout (seconds, 90), plus
    Component's name/workdir/lifetime. The default name is ``openbao-<mode>`` so a dev and a
    raft server of the same test session get different work dirs.
    """

    kind = "openbao"

    def __init__(self, mode: str = "dev", key_shares: int = 1, key_threshold: int = 1,
                 startup_timeout: float = 90.0, **kwargs):
        if mode not in MODES:
            raise ValueError(f"OpenBao mode {mode!r}: use one of {MODES}")
        if not 1 <= key_threshold <= key_shares:
            raise ValueError(f"key_threshold={key_threshold} must be between 1 and key_shares={key_shares}")
        if kwargs.get("name") is None:
            kwargs["name"] = f"{self.kind}-{mode}"
        super().__init__(**kwargs)
        self.mode = mode
        self.key_shares = key_shares
        self.key_threshold = key_threshold
        self.startup_timeout = startup_timeout
        self.port: Optional[int] = None
        self.cluster_port: Optional[int] = None
        self.auto_unseal = True  # restart(unseal=False) turns it off for one start
        self._dev_token = ""

    # -- paths / secrets ----------------------------------------------------
    @property
    def init_file(self) -> Path:
        return self.workdir / "init.json"

    @property
    def addr(self) -> str:
        return str(self.info["addr"])

    @property
    def ca_cert(self) -> Optional[str]:
        ca = self.info.get("ca_cert")
        return str(ca) if ca else None

    @property
    def token(self) -> str:
        return str(self.info.get("root_token") or self.info.get("token") or "")

    @property
    def unseal_keys(self) -> List[str]:
        return list(self.info.get("unseal_keys") or [])  # type: ignore[arg-type]

    # -- lifecycle ----------------------------------------------------------
    def _start(self) -> None:
        binary = require_binary("bao", hint=BUILD_HINT)
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)  # holds test secrets (init.json, state.json)
        self.info.update({"mode": self.mode, "binary": binary, "version": self._version(binary)})
        if self.mode == "dev":
            self._start_dev(binary)
        else:
            self._start_raft(binary)

    @staticmethod
    def _version(binary: str) -> str:
        out = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=30, check=False)
        return out.stdout.strip() or out.stderr.strip()

    def _env(self) -> Dict[str, str]:
        # keep the server away from the user's ~/.vault-token and any BAO_/VAULT_ settings
        env = {"HOME": str(self.workdir), "BAO_ADDR": "", "VAULT_ADDR": "", "BAO_TOKEN": "",
               "VAULT_TOKEN": "", "BAO_DEV_ROOT_TOKEN_ID": "", "VAULT_DEV_ROOT_TOKEN_ID": ""}
        return env

    def _start_dev(self, binary: str) -> None:
        if self.port is None:
            self.port = free_port_pair()
        if not self._dev_token:
            self._dev_token = "testbed-" + secrets.token_hex(16)
        argv = [binary, "server", "-dev", f"-dev-root-token-id={self._dev_token}",
                f"-dev-listen-address=127.0.0.1:{self.port}", "-dev-no-store-token"]
        proc = self.spawn("bao", argv, env=self._env())
        self.info.update({"addr": f"http://127.0.0.1:{self.port}", "token": self._dev_token,
                          "port": self.port, "pid": proc.pid})
        wait_for(lambda: self.health().get("initialized") and not self.health().get("sealed"),
                 self.startup_timeout, "openbao dev server unsealed", procs=[proc])
        # KV v2 at secret/ is mounted by dev mode; wait until the mount answers
        wait_for(lambda: "secret/" in self.client().sys.list_mounted_secrets_engines()["data"],
                 self.startup_timeout, "openbao dev secret/ mount", procs=[proc])

    def _start_raft(self, binary: str) -> None:
        config = self.workdir / "config.hcl"
        data_dir = self.workdir / "raft"
        first = not config.exists()
        if first:
            self.port = free_port()
            self.cluster_port = free_port()
            while self.cluster_port == self.port:
                self.cluster_port = free_port()
            tls = generate_tls(self.workdir / "tls")
            data_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(data_dir, 0o700)
            config.write_text(render_raft_config(data_dir, self.port, self.cluster_port, tls,
                                                 node_id=self.name))
            layout = {"port": self.port, "cluster_port": self.cluster_port, "ca_cert": tls["ca_cert"],
                      "config": str(config), "data_dir": str(data_dir)}
            (self.workdir / "layout.json").write_text(json.dumps(layout, indent=2) + "\n")
        # a work dir left by an earlier run (scripts/testbed down, then up): same ports, same data
        layout_file = self.workdir / "layout.json"
        if not layout_file.exists():
            raise TestbedError(f"{config} exists without {layout_file}: not a work dir of this "
                               f"component version; remove {self.workdir}")
        layout = json.loads(layout_file.read_text())
        self.port, self.cluster_port = int(layout["port"]), int(layout["cluster_port"])
        self.info.update({"ca_cert": layout["ca_cert"], "config": layout["config"],
                          "data_dir": layout["data_dir"]})
        self.info.update({"addr": f"https://127.0.0.1:{self.port}",
                          "cluster_addr": f"https://127.0.0.1:{self.cluster_port}",
                          "port": self.port, "cluster_port": self.cluster_port})
        proc = self.spawn("bao", [binary, "server", f"-config={config}"], env=self._env())
        self.info["pid"] = proc.pid
        wait_for(lambda: bool(self.health()), self.startup_timeout, "openbao raft API", procs=[proc])

        if not self.health().get("initialized"):
            self._initialize()
        else:
            self._load_init()
        if self.auto_unseal:
            self.unseal()
        self.auto_unseal = True

    def _initialize(self) -> None:
        """operator init over the HTTP API; keys go to init.json (0600).

        Init (barrier keys + raft bootstrap) can take long on a loaded machine, and it cannot be
        retried once the server has done it, so the request gets the whole startup budget.
        """
        c = self.client(token="", timeout=self.startup_timeout)
        result = c.sys.initialize(secret_shares=self.key_shares, secret_threshold=self.key_threshold)
        data = {"root_token": result["root_token"], "unseal_keys": list(result["keys"]),
                "unseal_keys_b64": list(result["keys_base64"]),
                "key_shares": self.key_shares, "key_threshold": self.key_threshold}
        write_private(self.init_file, (json.dumps(data, indent=2) + "\n").encode())
        self._load_init()

    def _load_init(self) -> None:
        if not self.init_file.exists():
            raise TestbedError(f"OpenBao at {self.workdir} is initialized but {self.init_file} is "
                               f"missing: its unseal keys are lost, remove the work dir")
        data = json.loads(self.init_file.read_text())
        self.key_shares = int(data["key_shares"])
        self.key_threshold = int(data["key_threshold"])
        self.info.update({"root_token": data["root_token"], "token": data["root_token"],
                          "unseal_keys": data["unseal_keys"], "key_shares": self.key_shares,
                          "key_threshold": self.key_threshold, "init_file": str(self.init_file)})

    def restart(self, unseal: bool = True) -> "OpenBao":
        """Stop the server by PID and start it again on the same ports and data dir.

        A raft server always comes back sealed; with ``unseal=True`` (default) it is unsealed again
        with the stored keys and waited on until active, with ``unseal=False`` it is left sealed.
        A dev server has in-memory storage: it comes back empty (same root token and port).
        """
        self.stop()
        self.auto_unseal = unseal
        return self.start()  # type: ignore[return-value]

    # -- API helpers --------------------------------------------------------
    def client(self, token: Optional[str] = None, timeout: float = 30.0):
        """An hvac client for this server (root token unless ``token`` is given)."""
        import hvac
        return hvac.Client(url=self.addr, token=self.token if token is None else token,
                           verify=self.ca_cert if self.ca_cert else True, timeout=timeout)

    def health(self) -> dict:
        """GET /v1/sys/health, whatever the state (sealed/standby/uninitialized are not errors)."""
        import requests
        params = {"standbyok": "true", "sealedcode": "200", "uninitcode": "200", "perfstandbyok": "true"}
        resp = requests.get(f"{self.addr}/v1/sys/health", params=params, timeout=5,
                            verify=self.ca_cert if self.ca_cert else True)
        resp.raise_for_status()
        return resp.json()

    def is_sealed(self) -> bool:
        return bool(self.health().get("sealed"))

    def _active(self) -> bool:
        import requests
        resp = requests.get(f"{self.addr}/v1/sys/health", timeout=5,
                            verify=self.ca_cert if self.ca_cert else True)
        return resp.status_code == 200  # 200 = initialized, unsealed and active

    def enable_kv_v2(self, mount: str, token: Optional[str] = None) -> None:
        """Mount a KV v2 engine at ``mount`` and wait until it serves requests.

        A fresh KV mount first upgrades itself to versioned data in the background and refuses
        requests meanwhile ("Upgrading from non-versioned to versioned data").
        """
        c = self.client(token=token)
        c.sys.enable_secrets_engine(backend_type="kv", path=mount, options={"version": "2"})
        wait_for(lambda: c.secrets.kv.v2.read_configuration(mount_point=mount) is not None,
                 self.startup_timeout, f"KV v2 mount {mount!r} ready", procs=self.procs)

    def seal(self) -> None:
        if self.mode == "dev":
            raise TestbedError("a dev server cannot be unsealed again (no keys): seal() raft only")
        self.client().sys.seal()
        wait_for(self.is_sealed, 30, "openbao sealed", procs=self.procs)

    def unseal(self, keys: Optional[List[str]] = None) -> None:
        """Submit ``key_threshold`` unseal keys (the stored ones by default), wait until active."""
        if self.mode == "dev":
            return
        keys = list(keys if keys is not None else self.unseal_keys)[: self.key_threshold]
        if len(keys) < self.key_threshold:
            raise TestbedError(f"unseal needs {self.key_threshold} keys, got {len(keys)}")
        c = self.client(token="", timeout=self.startup_timeout)
        status: dict = {}
        for key in keys:
            status = c.sys.submit_unseal_key(key=key)
        if status.get("sealed"):
            raise TestbedError(f"still sealed after {len(keys)} keys: {status}")
        t0 = time.monotonic()
        wait_for(self._active, self.startup_timeout, "openbao raft node active", procs=self.procs)
        self.info["unseal_to_active_seconds"] = round(time.monotonic() - t0, 2)
