"""playbooks/rotate_vault_secrets.yml's role (vault_secret_rotation) on a real OpenBao: the test bed's TLS Raft
node (tests/testbed/openbao.py), KV v2, a rotator token with read and update on the rotated subtree only (in a
0600 file, like a site gives it) and a workload token that only reads.

Proves: check mode writes nothing; a rotation writes one new version per secret with new values for the named
keys only (letters and digits, the asked length), every other key kept; the workload's token, created before the
rotation, reads the new version and still the previous one; every refusal (a path that does not exist, a key the
secret does not hold, a token file others can read, a value shorter than 16) stops before anything is written and
says what to fix; no output holds a value or a token. The lab run (tests/cluster/test_vault.py) adds the
workload's Kubernetes login. A concurrent writer (the check-and-set failing) is not simulated here."""

from __future__ import annotations

import os
import string
import uuid

import pytest
import yaml

from tests.integration.test_istio_vault import kv_v2_client
from tests.integration.test_platform_helm import brief, inventory, run
from tests.testbed.common import write_private

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def kv(openbao_raft, tmp_path_factory):
    bao = openbao_raft
    c = kv_v2_client(bao)
    uid = uuid.uuid4().hex[:8]
    sub = "rot-%s" % uid
    c.sys.create_or_update_policy(name="rotator-" + uid, policy=(
        'path "secret/data/%s/*" { capabilities = ["read", "update"] }' % sub))
    c.sys.create_or_update_policy(name="reader-" + uid, policy=(
        'path "secret/data/%s/*" { capabilities = ["read"] }' % sub))
    rotator = c.auth.token.create(policies=["rotator-" + uid], no_default_policy=True, ttl="1h")["auth"]["client_token"]
    reader = c.auth.token.create(policies=["reader-" + uid], ttl="1h")["auth"]["client_token"]
    work = tmp_path_factory.mktemp("vault-rotation")
    pb = work / "rotate.yml"
    pb.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False,
                                   "roles": [{"role": "gpuops.cluster.vault_secret_rotation"}]}]))
    yield {"bao": bao, "root": c, "sub": sub, "work": work, "pb": pb, "inv": inventory(work / "hosts.yml", {}),
           "rotator": rotator, "reader": reader, "outputs": [],
           "token_file": write_private(work / "rotator.token", rotator)}


def play(kv, secrets, check=False, **extra):
    xv = {"vault_secret_rotation_url": kv["bao"].addr, "vault_secret_rotation_ca_cert": str(kv["bao"].ca_cert),
          "vault_secret_rotation_token_file": str(kv["token_file"]), "vault_secret_rotation_secrets": secrets, **extra}
    res = run(kv["pb"], kv["work"], kv["inv"], xv, check=check, timeout=300)
    kv["outputs"].append(res["stdout"] + res["stderr"])
    return res


def messages(res):
    return " ".join(str(r.get("msg", "")) for rs in res["tasks"].values() for r in rs)


def version(kv, path, n=None):
    return kv["root"].secrets.kv.v2.read_secret_version(path=path, mount_point="secret", version=n,
                                                        raise_on_deleted_version=True)["data"]


def test_rotation_writes_one_new_version_and_the_workload_reads_both(kv):
    db, api = "%s/db" % kv["sub"], "%s/api" % kv["sub"]
    old_db = {"password": "old-" + uuid.uuid4().hex, "user": "serving", "host": "db.serving"}
    old_api = {"token": "old-" + uuid.uuid4().hex, "note": "kept"}
    kv["root"].secrets.kv.v2.create_or_update_secret(path=db, secret=old_db, mount_point="secret")
    kv["root"].secrets.kv.v2.create_or_update_secret(path=api, secret=old_api, mount_point="secret")
    secrets = [{"path": db, "keys": ["password"]}, {"path": api, "keys": ["token"], "length": 48}]

    res = play(kv, secrets, check=True)
    assert res["rc"] == 0, brief(res)
    assert "Check mode: would write a new version of %s (now version 1; new values for password)" % db in messages(res)
    assert version(kv, db)["metadata"]["version"] == 1 and version(kv, api)["metadata"]["version"] == 1

    res = play(kv, secrets)
    assert res["rc"] == 0, brief(res)
    assert "secret/%s (version 1 -> 2, new password)" % db in messages(res)
    new_db, new_api = version(kv, db), version(kv, api)
    assert new_db["metadata"]["version"] == 2 and new_api["metadata"]["version"] == 2
    pw, tok = new_db["data"]["password"], new_api["data"]["token"]
    assert pw != old_db["password"] and len(pw) == 32 and set(pw) <= set(string.ascii_letters + string.digits)
    assert tok != old_api["token"] and len(tok) == 48
    assert {k: v for k, v in new_db["data"].items() if k != "password"} == {"user": "serving", "host": "db.serving"}
    assert new_api["data"]["note"] == "kept"
    # the workload's token (made before the rotation) reads the new version and still the previous one
    reader = kv["bao"].client(token=kv["reader"])
    assert reader.secrets.kv.v2.read_secret_version(path=db, mount_point="secret",
                                                    raise_on_deleted_version=True)["data"]["data"]["password"] == pw
    assert reader.secrets.kv.v2.read_secret_version(path=db, mount_point="secret", version=1,
                                                    raise_on_deleted_version=True)["data"]["data"] == old_db
    for out in kv["outputs"]:
        for value in (pw, tok, kv["rotator"], old_db["password"]):
            assert value not in out


@pytest.mark.parametrize("case", ["missing-path", "missing-key", "open-token-file", "short"])
def test_every_refusal_stops_before_anything_is_written(kv, case):
    path = "%s/refuse-%s" % (kv["sub"], case)
    kv["root"].secrets.kv.v2.create_or_update_secret(path=path, secret={"password": "p-" + uuid.uuid4().hex},
                                                     mount_point="secret")
    secrets, extra, expect = [{"path": path, "keys": ["password"]}], {}, ""
    if case == "missing-path":
        secrets = [{"path": path, "keys": ["password"]}, {"path": "%s/nowhere" % kv["sub"], "keys": ["password"]}]
        expect = "%s/nowhere: " % kv["sub"]
    elif case == "missing-key":
        secrets = [{"path": path, "keys": ["password", "pasword"]}]
        expect = "%s: no key pasword" % path
    elif case == "open-token-file":
        loose = kv["work"] / "loose.token"
        loose.write_text(kv["rotator"] + "\n")
        os.chmod(loose, 0o644)
        extra = {"vault_secret_rotation_token_file": str(loose)}
        expect = "has mode 0644: chmod 0600 it"
    else:
        secrets = [{"path": path, "keys": ["password"], "length": 8}]
        expect = "lengths of at least 16 (too short: ['%s']" % path
    res = play(kv, secrets, **extra)
    assert res["rc"] != 0, brief(res)
    out = messages(res)
    assert "STOP:" in out and expect in out and "Nothing was" in out, out[-2000:]
    assert version(kv, path)["metadata"]["version"] == 1
