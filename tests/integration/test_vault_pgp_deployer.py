"""roles/vault against a real OpenBao: PGP-encrypted key shares at init, and the deployer token's
keep / replace / renew paths (roles/vault/tasks/deployer.yml).

Real components: the ``bao`` server of the OpenBao test bed (tests/testbed/openbao.py), a raft node
started UNINITIALISED and sealed (the role under test initialises it), and GnuPG with three throwaway
operator keys (RSA, no passphrase), each in its own GNUPGHOME.

The playbooks run the role's own task files: assert, status, init and unseal in main.yml's order, then
configure.yml's block (its header - no_log, the token and CA in the uri defaults - read from
configure.yml) with only its deployer step: the rest of configure.yml (PKI, KV, policies, the Raft/audit
checks) is molecule's and costs ~20 CPU s a run. tls.yml and install.yml are left out: the test bed runs
the server. The seam: the node's API address is the role's own options (vault_node_address,
vault_api_port) and the CA path on the node, ``_vault_ca_on_node``, is the test bed's CA (extra var).

Runs (one ansible-playbook each, in order):
  init     PGP init (3 shares, threshold 2, root token encrypted too): stops at the role's
           "Refuse to go on without keys" with the decrypt instructions.
  converge two of the operators' decrypted shares and the root token as vault_unseal_keys / vault_token:
           the role unseals the node and creates the deployer token (0600 file).
  again    deployer step again: changed=0, same token, same file.
  replace  after the deployer token was revoked: a new working token replaces it.
  renew    a deployer token with less than half its period left: renewed, kept.
  missing  the token file deleted: a new working token, kept 0600, nothing revoked.
  expired  an expired token in the file: replaced by a working one, nothing revoked.
No run's output holds a decrypted share, the root token or a deployer token.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import jinja2
import pytest
import yaml

from tests.testbed.common import require_binary, run_json_playbook, write_private
from tests.testbed.openbao import OpenBao

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
HOST = "bao-pgp"  # the inventory host (the only one of vault_group)
OPERATORS = ("op1", "op2", "op3")
SHARES, THRESHOLD = 3, 2
ROLE_FILES = ["assert.yml", "status.yml", "init.yml", "unseal.yml"]
INGRESS_PATH = "platform/istio/ingress"  # vault_ingress_kv_path's default


def _role_policy() -> str:
    """The platform-deployer policy HCL exactly as roles/vault renders it with its defaults."""
    defaults = yaml.safe_load((REPO / "roles/vault/defaults/main.yml").read_text())
    tmpl = yaml.safe_load((REPO / "roles/vault/vars/main.yml").read_text())["_vault_deployer_policy_hcl"]
    return jinja2.Template(tmpl).render(**{k: defaults[k] for k in
                                           ("vault_kv_mount", "vault_mesh_ca_kv_path", "vault_ingress_kv_path")})


class _Uninitialised(OpenBao):
    """The test bed's raft node, left uninitialised and sealed: the role under test initialises it."""

    def _initialize(self) -> None:
        return None


# -- GnuPG: one throwaway operator key per GNUPGHOME ---------------------------------------------
def _gpg(home: Path, *args: str, data: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--quiet", "--no-tty", *args], input=data,
                          capture_output=True, timeout=120, check=check)


def _operator_key(home: Path, name: str) -> dict:
    home.mkdir(mode=0o700)
    params = (f"Key-Type: RSA\nKey-Length: 2048\nKey-Usage: sign,encrypt\nName-Real: {name}\n"
              f"Name-Email: {name}@gpuops.test\nExpire-Date: 0\n%no-protection\n%transient-key\n%commit\n")
    _gpg(home, "--gen-key", data=params.encode())
    colons = _gpg(home, "--with-colons", "--list-keys").stdout.decode()
    keyid = next(line.split(":")[4] for line in colons.splitlines() if line.startswith("pub:"))
    public = _gpg(home, "--export", keyid).stdout
    assert public, f"gpg exported no public key for {name}"
    return {"home": home, "keyid": keyid.upper(), "b64": base64.b64encode(public).decode()}


def _decrypt(home: Path, b64: str) -> subprocess.CompletedProcess:
    return _gpg(home, "--decrypt", data=base64.b64decode(b64), check=False)


def _recipient(home: Path, b64: str) -> str:
    """The key id a PGP message is encrypted to (gpg --list-packets, no decryption)."""
    out = _gpg(home, "--list-packets", "--list-only", data=base64.b64decode(b64), check=False)
    text = (out.stdout + out.stderr).decode()
    line = next((x for x in text.splitlines() if ":pubkey enc packet:" in x), "")
    return line.rsplit("keyid", 1)[-1].strip().upper() if line else ""


# -- ansible-playbook ----------------------------------------------------------------------------
def _run(work: Path, name: str, playbook: str, extra_vars: dict) -> dict:
    """One ansible-playbook run (JSON callback); results by task name for HOST and localhost."""
    d = work / name
    d.mkdir()
    vars_file = d / "vars.json"
    fd = os.open(str(vars_file), os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(extra_vars, fh)
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_NOCOLOR="1",
               ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_LOCALHOST_WARNING="0")
    argv = ["timeout", "600", "ansible-playbook", "-i", str(work / "hosts.yml"), str(work / playbook),
            "-e", f"@{vars_file}"]
    out = run_json_playbook(argv, env, d, HOST)
    out["output"] = out["stdout"] + out["stderr"]
    return out


def _brief(r: dict) -> str:
    failed = [f"{n}: {x.get('msg')}" for n, rs in r["tasks"].items() for x in rs if x.get("failed")]
    changed = [n for n, rs in r["tasks"].items() if any(x.get("changed") for x in rs)]
    return f"rc={r['rc']} stats={r['stats']} failed={failed} changed={changed}\ntail: {r['output'][-1500:]}"


def _changed(r: dict) -> list:
    return [n for n, rs in r["tasks"].items() if any(x.get("changed") for x in rs)]


def _playbooks(work: Path, api: str) -> None:
    """role.yml: the role's API task files as main.yml orders them, then configure.yml's block with only
    its deployer step. deployer.yml: that block alone, after the facts assert.yml and unseal.yml leave.
    The block's header (no_log, vars, module_defaults with the token and CA) is read from configure.yml,
    so the deployer tasks run in exactly the context the role gives them."""
    header = yaml.safe_load((REPO / "roles/vault/tasks/configure.yml").read_text())[0]
    block = {"name": "configure.yml's block, its deployer step only",
             **{k: header[k] for k in ("run_once", "delegate_to", "no_log", "vars", "module_defaults")},
             "block": [{"name": "deployer step", "ansible.builtin.include_role": {
                 "name": "gpuops.cluster.vault", "tasks_from": "deployer.yml"}}]}
    files = {"name": "vault role task file", "ansible.builtin.include_role": {
        "name": "gpuops.cluster.vault", "tasks_from": "{{ item }}"}, "loop": ROLE_FILES}
    facts = {"name": "the facts assert.yml and unseal.yml leave (active node, API map, token)",
             "ansible.builtin.set_fact": {"_vault_active": HOST, "_vault_api_of": {HOST: api},
                                          "_vault_root_token": "{{ vault_token }}"},
             "no_log": True}
    # the block's no_log is "{{ vault_no_log }}", read before the role's defaults load: its default here
    play = {"name": "vault role API steps against the test bed's node", "hosts": "kube_control_plane",
            "gather_facts": False, "vars": {"vault_no_log": True}}
    (work / "role.yml").write_text(yaml.safe_dump([dict(play, tasks=[files, block])], sort_keys=False))
    (work / "deployer.yml").write_text(yaml.safe_dump([dict(play, tasks=[facts, block])], sort_keys=False))


def _read_token(path: Path) -> str:
    return path.read_text().strip() if path.is_file() else ""


@pytest.fixture(scope="module")
def pgp_vault(tmp_path_factory, keep_logs):
    if shutil.which("gpg") is None:
        pytest.fail("gpg is missing: apt-get install gnupg (the PGP key-share test needs GnuPG)")
    work = tmp_path_factory.mktemp("vault-pgp")
    ops = {n: _operator_key(work / f"gnupg-{n}", n) for n in OPERATORS}
    ctl = work / "controller"
    ctl.mkdir(mode=0o700)
    bao = _Uninitialised(mode="raft", key_shares=SHARES, key_threshold=THRESHOLD, name="openbao-pgp")
    bao.auto_unseal = False
    bao.start()
    try:
        (work / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {"kube_control_plane": {"hosts": {
            HOST: {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}}}))
        _playbooks(work, bao.addr)
        base = {"vault_node_address": "127.0.0.1", "vault_api_port": bao.port, "_vault_ca_on_node": bao.ca_cert,
                "vault_controller_dir": str(ctl), "vault_binary_src": require_binary("bao"),
                "vault_key_shares": SHARES, "vault_key_threshold": THRESHOLD,
                "vault_pgp_keys": [ops[n]["b64"] for n in OPERATORS],
                "vault_root_token_pgp_key": ops["op1"]["b64"]}
        runs = {"init": _run(work, "init", "role.yml", base)}
        init = json.loads((ctl / "init.json").read_text()) if (ctl / "init.json").is_file() else {}
        shares = [_decrypt(ops[n]["home"], b64) for n, b64 in zip(OPERATORS, init.get("keys_base64", []))]
        root = _decrypt(ops["op1"]["home"], init["root_token"]) if init.get("root_token") else None
        plain = [s.stdout.decode().strip() for s in shares if s.returncode == 0]
        root_token = root.stdout.decode().strip() if root is not None and root.returncode == 0 else ""
        assert len(plain) == SHARES and root_token, (f"decryption failed: {[s.stderr for s in shares]} "
                                                     f"{root.stderr if root else 'no root token'}; {_brief(runs['init'])}")
        # the operators hand two of the three decrypted shares and the root token to the next run
        ops_vars = dict(base, vault_unseal_keys=plain[1:], vault_token=root_token)
        token_file = ctl / "platform-deployer.token"
        root_client = bao.client(token=root_token)
        marker = "-----BEGIN CERTIFICATE----- marker " + base64.b16encode(os.urandom(4)).decode()
        runs["converge"] = _run(work, "converge", "role.yml", ops_vars)
        # what configure.yml leaves before its deployer step: KV v2, the deployer policy (the role's HCL),
        # an ingress certificate entry (a marker here) for the token to read
        if not bao.is_sealed():
            bao.enable_kv_v2("secret", token=root_token)
            root_client.sys.create_or_update_policy(name="platform-deployer", policy=_role_policy())
            root_client.secrets.kv.v2.create_or_update_secret(path=INGRESS_PATH, secret={"tls.crt": marker},
                                                              mount_point="secret")
        tokens = {"made": _read_token(token_file)}
        stats = {"made": token_file.stat() if token_file.is_file() else None}
        lookups = {"made": root_client.auth.token.lookup(tokens["made"])["data"] if tokens["made"] else {}}
        def deployer_run(name, token_key=None):
            """One deployer.yml run; the token file's token and stat after it, under ``token_key``."""
            runs[name] = _run(work, name, "deployer.yml", ops_vars)
            key = token_key or name
            tokens[key] = _read_token(token_file)
            stats[key] = token_file.stat() if token_file.is_file() else None

        def deployer_token(max_ttl):
            """A token as the role makes it, but with an explicit max TTL under its period."""
            return root_client.auth.token.create_orphan(
                policies=["platform-deployer"], no_default_policy=True, period="768h", explicit_max_ttl=max_ttl,
                renewable=True)["auth"]["client_token"]

        deployer_run("again")
        if tokens["again"]:
            root_client.auth.token.revoke(tokens["again"])
        deployer_run("replace")
        # a deployer token with less than half its period left: an explicit max TTL (24h) under the
        # 768h period makes one without waiting; the role renews it and keeps it
        short = deployer_token("24h")
        write_private(token_file, short)
        stats["short"] = token_file.stat()
        tokens["short"] = short
        deployer_run("renew")
        lookups["renew"] = root_client.auth.token.lookup(short)["data"]
        # the file gone (a new controller, a wiped directory): a new token is made and kept
        token_file.unlink()
        deployer_run("missing")
        # an expired token in the file (explicit max TTL 2 s, waited out until the server refuses it)
        tokens["expired"] = deployer_token("2s")
        write_private(token_file, tokens["expired"])
        _wait_refused(root_client, tokens["expired"])
        deployer_run("expired", token_key="after_expired")
        for n, r in runs.items():
            print(f"vault pgp/deployer run {n}: rc={r['rc']} wall={r['wall']}s cpu={r['cpu']}s "
                  f"changed={r['stats'].get('changed')}")
        yield {"bao": bao, "ops": ops, "init": init, "shares": shares, "plain": plain, "root_token": root_token,
               "runs": runs, "tokens": tokens, "stats": stats, "lookups": lookups, "token_file": token_file, "ingress_marker": marker,
               "ctl": ctl}
    finally:
        bao.stop()
        bao.cleanup(keep_logs=keep_logs())
        for op in ops.values():
            subprocess.run(["gpgconf", "--homedir", str(op["home"]), "--kill", "gpg-agent"], capture_output=True,
                           timeout=30, check=False)


# -- PGP key shares ------------------------------------------------------------------------------
def test_pgp_init_stops_for_the_operators_with_nothing_usable_in_the_clear(pgp_vault):
    r, init = pgp_vault["runs"]["init"], pgp_vault["init"]
    assert r["tasks"]["Initialise (sys/init; shares PGP-encrypted when vault_pgp_keys is given)"][0]["changed"], _brief(r)
    # sealed, and only encrypted shares: the role stops and says how to go on
    assert r["rc"] != 0, _brief(r)
    msg = r["tasks"]["Refuse to go on without keys when a node is sealed"][0]["msg"]
    assert "PGP-encrypted" in msg and "vault_unseal_keys" in msg and "gpg -d" in msg, msg
    assert init["pgp"] is True and init["root_token_pgp"] is True
    mode = stat.S_IMODE((pgp_vault["ctl"] / "init.json").stat().st_mode)
    assert mode == 0o600, oct(mode)
    # every share, and the root token, is a PGP message (a public-key encrypted session key packet first)
    assert len(init["keys_base64"]) == SHARES
    for b64 in init["keys_base64"] + [init["root_token"]]:
        first = base64.b64decode(b64)[0]
        tag = first & 0x3F if first & 0x40 else (first >> 2) & 0x0F  # new or old packet format
        assert first & 0x80 and tag == 1, f"not a PGP public-key encrypted session key packet: {first:#x}"
    for secret in pgp_vault["plain"] + [pgp_vault["root_token"]]:
        assert secret not in json.dumps(init)


def test_each_share_is_for_its_operator_only(pgp_vault):
    ops, init = pgp_vault["ops"], pgp_vault["init"]
    for i, name in enumerate(OPERATORS):
        b64 = init["keys_base64"][i]
        assert _recipient(ops[name]["home"], b64) == ops[name]["keyid"][-16:]
        assert pgp_vault["shares"][i].returncode == 0, pgp_vault["shares"][i].stderr
        other = OPERATORS[(i + 1) % len(OPERATORS)]
        refused = _decrypt(ops[other]["home"], b64)
        assert refused.returncode != 0 and not refused.stdout, f"{other} decrypted {name}'s share"
    # what the operators get: the share in hex (33 bytes: a Shamir share of the 32-byte key), all different
    assert all(len(p) == 66 and int(p, 16) >= 0 for p in pgp_vault["plain"]), [len(p) for p in pgp_vault["plain"]]
    assert len(set(pgp_vault["plain"])) == SHARES


def test_decrypted_shares_unseal_and_the_root_token_works(pgp_vault):
    r, bao = pgp_vault["runs"]["converge"], pgp_vault["bao"]
    assert r["rc"] == 0, _brief(r)
    unsealed = r["tasks"]["Unseal a sealed node that has data"][0]["results"]
    assert [x.get("changed") for x in unsealed] == [True] * THRESHOLD, _brief(r)
    health = bao.health()
    assert health["initialized"] and not health["sealed"], health
    assert bao.client(token=pgp_vault["root_token"]).lookup_token()["data"]["policies"] == ["root"]


def test_no_plaintext_share_or_token_in_any_output(pgp_vault):
    # the shares as the operators decrypt them (hex) and in the base64 form sys/unseal takes too
    shares = pgp_vault["plain"] + [base64.b64encode(bytes.fromhex(p)).decode() for p in pgp_vault["plain"]]
    secrets = shares + [pgp_vault["root_token"]] + [t for t in pgp_vault["tokens"].values() if t]
    assert len(secrets) >= 2 * SHARES + 1 + 3
    for name, r in pgp_vault["runs"].items():
        for s in secrets:
            assert s not in r["output"], f"a secret ({len(s)} chars) is in the output of run {name}"


def _wait_refused(client, token: str, timeout: float = 30.0) -> None:
    """Until the server refuses to look the token up (expired)."""
    import hvac
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.auth.token.lookup(token)
        except hvac.exceptions.Forbidden:
            return
        time.sleep(0.5)
    raise AssertionError(f"the token did not expire within {timeout}s")


# -- the deployer token --------------------------------------------------------------------------
CREATE = "Create the deployer token (orphan, periodic, only the deployer policy)"
RENEW = "Renew the deployer token (less than half its period left)"
KEEP = "Keep the deployer token on the controller (0600)"
REVOKE = "Revoke the token it replaces (one with other policies or period)"


def _mode(st) -> int:
    return stat.S_IMODE(st.st_mode)


def test_deployer_token_is_made_private_and_least_privilege(pgp_vault):
    r = pgp_vault["runs"]["converge"]
    assert r["rc"] == 0 and _changed(r)[-2:] == [CREATE, KEEP], _brief(r)
    assert pgp_vault["tokens"]["made"] and _mode(pgp_vault["stats"]["made"]) == 0o600
    data = pgp_vault["lookups"]["made"]
    assert data["policies"] == ["platform-deployer"] and data["orphan"] and data["period"] == 768 * 3600, data


def test_second_run_keeps_a_valid_deployer_token(pgp_vault):
    r, st = pgp_vault["runs"]["again"], pgp_vault["stats"]
    assert r["rc"] == 0 and r["stats"]["changed"] == 0, _brief(r)
    assert r["tasks"][CREATE][0].get("skipped") and r["tasks"][RENEW][0].get("skipped"), _brief(r)
    assert pgp_vault["tokens"]["again"] == pgp_vault["tokens"]["made"]
    assert (st["again"].st_ino, st["again"].st_mtime_ns) == (st["made"].st_ino, st["made"].st_mtime_ns)
    assert _mode(st["again"]) == 0o600


def test_revoked_deployer_token_is_replaced_by_a_working_one(pgp_vault):
    import hvac
    r, bao = pgp_vault["runs"]["replace"], pgp_vault["bao"]
    assert r["rc"] == 0 and _changed(r) == [CREATE, KEEP], _brief(r)
    old, new = pgp_vault["tokens"]["again"], pgp_vault["tokens"]["replace"]
    assert new and new != old and _mode(pgp_vault["stats"]["replace"]) == 0o600
    root = bao.client(token=pgp_vault["root_token"])
    me = root.auth.token.lookup(new)["data"]
    assert me["policies"] == ["platform-deployer"] and me["orphan"] and me["period"] == 768 * 3600, me
    with pytest.raises(hvac.exceptions.Forbidden):  # the revoked one stays gone
        root.auth.token.lookup(old)
    # the new token works: it reads what the role's deployer policy names, and nothing else
    c = bao.client(token=new)
    got = c.secrets.kv.v2.read_secret_version(path=INGRESS_PATH, mount_point="secret", raise_on_deleted_version=True)
    assert got["data"]["data"] == {"tls.crt": pgp_vault["ingress_marker"]}
    with pytest.raises(hvac.exceptions.Forbidden):
        c.secrets.kv.v2.read_secret_version(path="torchserve/x", mount_point="secret", raise_on_deleted_version=True)
    with pytest.raises(hvac.exceptions.Forbidden):
        c.auth.token.create(policies=["platform-deployer"])


def test_deployer_token_short_of_half_its_period_is_renewed_and_kept(pgp_vault):
    r, st = pgp_vault["runs"]["renew"], pgp_vault["stats"]
    assert r["rc"] == 0 and _changed(r) == [RENEW], _brief(r)
    assert pgp_vault["tokens"]["renew"] == pgp_vault["tokens"]["short"]
    assert st["renew"].st_mtime_ns == st["short"].st_mtime_ns and _mode(st["renew"]) == 0o600
    assert pgp_vault["lookups"]["renew"]["last_renewal_time"], pgp_vault["lookups"]["renew"]


def _assert_working_deployer_token(pgp_vault, token: str) -> None:
    import hvac
    bao = pgp_vault["bao"]
    me = bao.client(token=pgp_vault["root_token"]).auth.token.lookup(token)["data"]
    assert me["policies"] == ["platform-deployer"] and me["orphan"] and me["period"] == 768 * 3600, me
    c = bao.client(token=token)
    got = c.secrets.kv.v2.read_secret_version(path=INGRESS_PATH, mount_point="secret", raise_on_deleted_version=True)
    assert got["data"]["data"] == {"tls.crt": pgp_vault["ingress_marker"]}
    with pytest.raises(hvac.exceptions.Forbidden):
        c.secrets.kv.v2.read_secret_version(path="torchserve/x", mount_point="secret", raise_on_deleted_version=True)


@pytest.mark.parametrize("run,new_key,old_key", [
    # the controller lost the file: the role cannot know the old token, so it makes a new one (the
    # old one lives on until its period ends unrenewed)
    ("missing", "missing", "renew"),
    # an expired token in the file (the server refuses to look it up): there is nothing to revoke
    ("expired", "after_expired", "expired"),
], ids=["token-file-missing", "token-expired"])
def test_a_lost_or_expired_token_is_replaced_by_a_working_one_and_nothing_is_revoked(pgp_vault, run, new_key, old_key):
    r, tokens = pgp_vault["runs"][run], pgp_vault["tokens"]
    assert r["rc"] == 0 and _changed(r) == [CREATE, KEEP], _brief(r)
    assert r["tasks"][REVOKE][0].get("skipped"), _brief(r)
    new = tokens[new_key]
    assert new and new != tokens[old_key] and _mode(pgp_vault["stats"][new_key]) == 0o600
    _assert_working_deployer_token(pgp_vault, new)
