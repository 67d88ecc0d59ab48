"""The OpenBao test bed against the real ``bao`` server (no fakes): dev and raft modes.

Run: python -m pytest -m integration tests/integration/test_testbed_openbao.py
Needs $GPUOPS_CACHE/bin/bao (scripts/setup openbao).
"""

from __future__ import annotations

import secrets
import ssl
import stat
import urllib.error
import urllib.request
from pathlib import Path

import pytest

hvac = pytest.importorskip("hvac")
requests = pytest.importorskip("requests")

from tests.testbed.openbao import OpenBao  # noqa: E402

pytestmark = pytest.mark.integration


def _uid() -> str:
    return secrets.token_hex(4)


# -- dev mode ---------------------------------------------------------------

def test_dev_server_info(openbao_dev):
    info = openbao_dev.info
    assert info["addr"].startswith("http://127.0.0.1:")
    assert info["token"] and info["token"] != "root"  # random root token, not the default
    assert "OpenBao" in info["version"] or "Bao" in info["version"]
    assert openbao_dev.client().is_authenticated()


def test_dev_kv_v2_write_read(openbao_dev):
    c = openbao_dev.client()
    path, value = f"it/{_uid()}", {"password": secrets.token_urlsafe(12)}
    c.secrets.kv.v2.create_or_update_secret(path=path, secret=value, mount_point="secret")
    c.secrets.kv.v2.create_or_update_secret(path=path, secret={**value, "v": "2"}, mount_point="secret")
    got = c.secrets.kv.v2.read_secret_version(path=path, mount_point="secret", raise_on_deleted_version=True)
    assert got["data"]["data"] == {**value, "v": "2"}
    assert got["data"]["metadata"]["version"] == 2
    first = c.secrets.kv.v2.read_secret_version(path=path, version=1, mount_point="secret",
                                                raise_on_deleted_version=True)
    assert first["data"]["data"] == value


def test_dev_wrong_token_is_denied(openbao_dev):
    bad = openbao_dev.client(token="not-a-token-" + _uid())
    assert not bad.is_authenticated()
    with pytest.raises(hvac.exceptions.Forbidden):
        bad.secrets.kv.v2.read_secret_version(path="anything", mount_point="secret",
                                              raise_on_deleted_version=True)
    resp = requests.get(f"{openbao_dev.addr}/v1/secret/data/anything",
                        headers={"X-Vault-Token": "not-a-token"}, timeout=10)
    assert resp.status_code == 403


# -- raft mode --------------------------------------------------------------

def test_raft_initialized_unsealed_active(openbao_raft):
    h = openbao_raft.health()
    assert h["initialized"] is True
    assert h["sealed"] is False
    assert h["standby"] is False
    info = openbao_raft.info
    assert info["addr"].startswith("https://127.0.0.1:")
    assert len(info["unseal_keys"]) == info["key_shares"] == 1
    assert info["root_token"]
    assert openbao_raft.client().is_authenticated()
    # the server really uses raft storage in its work dir
    raft_cfg = openbao_raft.client().sys.read_raft_config()
    servers = raft_cfg["data"]["config"]["servers"]
    assert [s["leader"] for s in servers] == [True]
    assert (Path(info["data_dir"]) / "raft" / "raft.db").exists()


def test_raft_tls_is_verified_against_generated_ca(openbao_raft):
    url = f"{openbao_raft.addr}/v1/sys/health"
    # without our CA the certificate must not be trusted
    with pytest.raises(urllib.error.URLError) as exc:
        urllib.request.urlopen(url, timeout=10, context=ssl.create_default_context())
    assert isinstance(exc.value.reason, ssl.SSLCertVerificationError)
    ctx = ssl.create_default_context(cafile=openbao_raft.ca_cert)
    with urllib.request.urlopen(url, timeout=10, context=ctx) as resp:
        assert resp.status == 200


def test_raft_secrets_files_are_private(openbao_raft):
    wd = openbao_raft.workdir
    assert stat.S_IMODE(wd.stat().st_mode) == 0o700
    assert stat.S_IMODE(openbao_raft.init_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((wd / "tls" / "server-key.pem").stat().st_mode) == 0o600


def test_raft_kv_v2_mount_write_read(openbao_raft):
    c = openbao_raft.client()
    mount = f"kv-{_uid()}"
    openbao_raft.enable_kv_v2(mount)
    tune = c.sys.read_mount_configuration(path=mount)
    assert tune["data"]["options"]["version"] == "2"
    c.secrets.kv.v2.create_or_update_secret(path="db/creds", secret={"user": "u", "pw": "p1"},
                                            mount_point=mount)
    got = c.secrets.kv.v2.read_secret_version(path="db/creds", mount_point=mount,
                                              raise_on_deleted_version=True)
    assert got["data"]["data"] == {"user": "u", "pw": "p1"}


def test_raft_wrong_token_is_denied(openbao_raft):
    bad = openbao_raft.client(token="s.invalid" + _uid())
    with pytest.raises(hvac.exceptions.Forbidden):
        bad.sys.list_mounted_secrets_engines()
    resp = requests.get(f"{openbao_raft.addr}/v1/sys/mounts", headers={"X-Vault-Token": "s.invalid"},
                        verify=openbao_raft.ca_cert, timeout=10)
    assert resp.status_code == 403


def test_raft_restart_comes_back_sealed_and_keeps_data(openbao_raft):
    c = openbao_raft.client()
    mount = f"persist-{_uid()}"
    openbao_raft.enable_kv_v2(mount)
    c.secrets.kv.v2.create_or_update_secret(path="keep", secret={"k": "before-restart"}, mount_point=mount)
    old_pid, old_addr = openbao_raft.info["pid"], openbao_raft.addr

    openbao_raft.restart(unseal=False)
    assert openbao_raft.info["pid"] != old_pid
    assert openbao_raft.addr == old_addr
    assert openbao_raft.is_sealed()
    with pytest.raises(hvac.exceptions.VaultDown):  # 503: sealed
        openbao_raft.client().secrets.kv.v2.read_secret_version(path="keep", mount_point=mount,
                                                                raise_on_deleted_version=True)

    openbao_raft.unseal()  # the stored keys from init.json
    assert not openbao_raft.is_sealed()
    got = openbao_raft.client().secrets.kv.v2.read_secret_version(path="keep", mount_point=mount,
                                                                  raise_on_deleted_version=True)
    assert got["data"]["data"] == {"k": "before-restart"}


def test_raft_seal_then_unseal(openbao_raft):
    openbao_raft.seal()
    assert openbao_raft.is_sealed()
    with pytest.raises(hvac.exceptions.VaultDown):
        openbao_raft.client().sys.list_mounted_secrets_engines()
    openbao_raft.unseal()
    assert "sys/" in openbao_raft.client().sys.list_mounted_secrets_engines()["data"]


def test_raft_three_shares_threshold_two(tmp_path, keep_logs):
    """3 key shares / threshold 2: one key is not enough, two are; wrong keys are rejected."""
    bao = OpenBao(mode="raft", key_shares=3, key_threshold=2, name="openbao-raft-3of2",
                  workdir=tmp_path / "bao", lifetime=600)
    try:
        bao.start()
        assert len(bao.unseal_keys) == 3
        assert not bao.is_sealed()
        bao.restart(unseal=False)
        assert bao.is_sealed()
        c = bao.client(token="")
        status = c.sys.submit_unseal_key(key=bao.unseal_keys[2])
        assert status["sealed"] is True and status["progress"] == 1
        c.sys.submit_unseal_key(reset=True)
        # a random share combined with a real one does not open the barrier
        c.sys.submit_unseal_key(key=secrets.token_hex(33))
        with pytest.raises((hvac.exceptions.InvalidRequest, hvac.exceptions.InternalServerError)):
            c.sys.submit_unseal_key(key=bao.unseal_keys[1])
        assert bao.is_sealed()
        bao.unseal(keys=[bao.unseal_keys[2], bao.unseal_keys[0]])
        assert not bao.is_sealed()
        assert bao.client().is_authenticated()
    finally:
        bao.stop()
        bao.cleanup(keep_logs=keep_logs())


def test_dev_and_raft_do_not_share_a_workdir(openbao_dev, openbao_raft):
    assert openbao_dev.workdir != openbao_raft.workdir
    assert openbao_dev.rss_kib() > 0 and openbao_raft.rss_kib() > 0


def test_raft_workdir_is_resumed_by_a_new_component(tmp_path, keep_logs):
    """What `scripts/testbed down` + `up` does: a new object on the old work dir keeps ports and data."""
    wd = tmp_path / "bao"
    first = OpenBao(mode="raft", name="openbao-raft-resume", workdir=wd, lifetime=600)
    second = OpenBao(mode="raft", name="openbao-raft-resume", workdir=wd, lifetime=600)
    try:
        first.start()
        first.enable_kv_v2("kv")
        first.client().secrets.kv.v2.create_or_update_secret(path="p", secret={"a": "1"}, mount_point="kv")
        addr, token = first.addr, first.token
        first.stop()
        second.start()
        assert (second.addr, second.token) == (addr, token)
        assert not second.is_sealed()
        got = second.client().secrets.kv.v2.read_secret_version(path="p", mount_point="kv",
                                                                raise_on_deleted_version=True)
        assert got["data"]["data"] == {"a": "1"}
    finally:
        first.stop()
        second.stop()
        second.cleanup(keep_logs=keep_logs())
