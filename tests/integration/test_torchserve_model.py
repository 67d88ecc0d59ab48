"""torchserve_model against a real TorchServe 0.12 management API (token auth on and off)."""

import shutil
from pathlib import Path

import pytest

from tests.integration.canary_support import run_playbook, write_playbook
from tests.testbed.model import build as model_build

pytestmark = pytest.mark.integration
MODEL = "classifier"


def stage_archive(ts, version):
    """Put a .mar for ``version`` into the server's model store (as a deploy pipeline would)."""
    archive = model_build.build_archive(version, 0.0, 0, model_name=MODEL)
    dest = Path(ts.info["model_store"]) / archive.name
    if not dest.exists():
        shutil.copy2(archive, dest)
    return archive.name


def run(tmp_path, args, check=False, name="ts"):
    pb = write_playbook(tmp_path / f"{name}.yml", [{"name": name, "gpuops.cluster.torchserve_model": args}])
    res = run_playbook(pb, {}, tmp_path, check=check)
    assert name in res["tasks"], res["stderr"] + res["stdout"][-2000:]
    return res["tasks"][name]


def test_register_scale_default_unregister(torchserve, tmp_path):
    ts = torchserve
    ts.register("50.0")  # another version: the first registered one becomes the default
    url = stage_archive(ts, "51.0")
    base = dict(management_url=ts.info["management_url"], model=MODEL, version="51.0")

    planned = run(tmp_path, dict(base, url=url), check=True)
    assert planned["changed"] and planned["actions"] == ["register"]
    assert ts.describe("51.0") is None, "check mode must not register"

    out = run(tmp_path, dict(base, url=url))
    assert out["changed"] and out["actions"] == ["register"]
    assert out["version"]["ready_workers"] >= 1 and ts.ready_workers("51.0") >= 1

    again = run(tmp_path, dict(base, url=url))
    assert again["changed"] is False and again["actions"] == []

    scaled = run(tmp_path, dict(base, min_workers=2, max_workers=2))
    assert scaled["actions"] == ["scale"] and scaled["version"]["ready_workers"] == 2
    assert ts.ready_workers("51.0") == 2

    old_default = ts.default_version()
    assert old_default != "51.0"
    made_default = run(tmp_path, dict(base, state="default", min_workers=2, max_workers=2))
    assert made_default["actions"] == ["set_default"] and made_default["default_version"] == "51.0"
    assert ts.default_version() == "51.0"

    refused = run(tmp_path, dict(base, state="absent"))
    assert refused.get("failed") and "set another default first" in refused["msg"]
    assert ts.describe("51.0") is not None
    back = run(tmp_path, dict(base, version=old_default, state="default"))
    assert back["actions"] == ["set_default"] and ts.default_version() == old_default

    gone = run(tmp_path, dict(base, state="absent"))
    assert gone["changed"] and gone["actions"] == ["unregister"]
    assert ts.describe("51.0") is None
    assert run(tmp_path, dict(base, state="absent"))["changed"] is False


def test_register_without_url_says_what_to_do(torchserve, tmp_path):
    out = run(tmp_path, dict(management_url=torchserve.info["management_url"], model=MODEL, version="39.0"))
    assert out.get("failed") and "give url" in out["msg"]


@pytest.fixture(scope="module")
def ts_token(keep_logs):
    from tests.testbed.torchserve import TorchServe
    comp = TorchServe(name="torchserve-token", token_auth=True).start()
    yield comp
    comp.stop()
    comp.cleanup(keep_logs=keep_logs())


def test_token_auth(ts_token, tmp_path):
    url = stage_archive(ts_token, "32.0")
    base = dict(management_url=ts_token.info["management_url"], model=MODEL, version="32.0", url=url)
    denied = run(tmp_path, base, name="denied")
    assert denied.get("failed") and "token authorization is on" in denied["msg"]
    ok = run(tmp_path, dict(base, token_file=ts_token.info["key_file"]), name="ok")
    assert ok["changed"] and ok["version"]["ready_workers"] >= 1
