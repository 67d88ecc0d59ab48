"""The air-gap bundle and the site registry, for real: scripts/registry starts the Go-built
distribution registry (the bundle's own image) in a podman container on a throwaway podman
network, pushes every image of $GPUOPS_CACHE/bundle with skopeo, and the registry must then serve
exactly the manifest digests of bundle/manifest.json. The container_images role checks the same
registry (and refuses a manifest whose digest differs). Pulls by containerd inside lab nodes are
proved by the cluster tier (the lab pulls everything through this registry).

Run: python -m pytest -m integration tests/integration/test_airgap.py
Needs scripts/setup cluster-images (the bundle), podman and skopeo.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import jinja2
import pytest
import yaml

from tests.testbed.common import private_stdin

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts" / "lib"))
import oci_image  # noqa: E402

pytestmark = pytest.mark.integration

CACHE = Path(os.environ.get("GPUOPS_CACHE", Path.home() / ".cache" / "gpuops"))
BUNDLE = Path(os.environ.get("GPUOPS_BUNDLE", CACHE / "bundle"))
ACCEPT = ("application/vnd.oci.image.manifest.v1+json,application/vnd.oci.image.index.v1+json,"
          "application/vnd.docker.distribution.manifest.v2+json")
PODMAN_ENV = {"CONTAINERS_CONF": str(REPO / "molecule" / "containers.conf")}


def _run(argv, env=None, check=True, timeout=300):
    with private_stdin() as stdin:
        proc = subprocess.run(["timeout", str(timeout), *argv], stdin=stdin, capture_output=True, text=True,
                              env={**os.environ, **PODMAN_ENV, **(env or {})}, cwd=str(REPO), check=False)
    if check:
        assert proc.returncode == 0, f"{argv} rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def manifest():
    path = BUNDLE / "manifest.json"
    if not path.is_file():
        pytest.fail(f"no air-gap bundle at {BUNDLE}: run scripts/setup cluster-images")
    return json.loads(path.read_text())


def _free_subnet():
    """A 10.251.N.0/24 no podman network uses (the lab uses 10.250.0.0/24)."""
    out = _run(["podman", "network", "ls", "--format", "{{.Name}}"]).stdout.split()
    used = set()
    for net in out:
        info = json.loads(_run(["podman", "network", "inspect", net]).stdout)
        used.update(json.dumps(info).split('"'))
    for n in range(10, 250):
        if f"10.251.{n}.0/24" not in used:
            return f"10.251.{n}"
    pytest.fail("no free 10.251.N.0/24 subnet for the test network")


@pytest.fixture(scope="module")
def registry(manifest, tmp_path_factory):
    """The site registry, up on a throwaway network; stopped and removed afterwards."""
    net = f"gpuops-airgap-{os.getpid()}"
    prefix = _free_subnet()
    ip = f"{prefix}.5"
    store = tmp_path_factory.mktemp("registry") / "store"
    env = {"GPUOPS_REGISTRY_STORAGE": str(store)}
    _run(["podman", "network", "create", "--subnet", f"{prefix}.0/24", "--gateway", f"{prefix}.1", net])
    try:
        up = _run([str(REPO / "scripts" / "registry"), "up", net, ip, "600"], env=env)
        yield {"net": net, "ip": ip, "url": f"http://{ip}:5000", "env": env, "up": up.stdout, "store": store}
    finally:
        _run([str(REPO / "scripts" / "registry"), "down", net], env=env, check=False)
        _run(["podman", "network", "rm", "-f", net], check=False)


def _get(url, accept=ACCEPT):
    req = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.headers, resp.read()


def test_bundle_matches_the_pinned_versions_and_its_archives(manifest):
    """manifest.json lists every image of the role defaults, and each archive is what it says."""
    defaults = yaml.safe_load((REPO / "roles" / "container_images" / "defaults" / "main.yml").read_text())
    scalars = {k: v for k, v in defaults.items() if isinstance(v, str) and "{{" not in v}
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    want = {env.from_string(i["image"]).render(**scalars) + ":" + env.from_string(i["tag"]).render(**scalars)
            for i in defaults["container_images_list"]}
    have = {i["ref"] for i in manifest["images"]}
    assert have == want
    assert "registry.k8s.io/kube-apiserver:v" + defaults["container_images_kubernetes_version"] in have
    for img in manifest["images"]:
        info = oci_image.cmd_inspect(type("A", (), {"archive": str(BUNDLE / img["archive"])})())
        assert (info["ref"], info["digest"], info["config"]) == (img["ref"], img["digest"], img["config"])
        assert info["platform"] == "linux/amd64"
        assert all(layer["mediaType"].endswith("+gzip") for layer in info["layers"]), img["ref"]
    # the workload images (scripts/build/torchserve-image.sh): the torchserve role's pinned image,
    # its multi-GiB Python layer zstd-compressed, the rest gzip
    ts_image = yaml.safe_load((REPO / "roles" / "torchserve" / "defaults" / "main.yml").read_text())["torchserve_image"]
    assert [w["ref"] for w in manifest["workloads"]] == ["docker.io/" + ts_image]
    for img in manifest["workloads"]:
        info = oci_image.cmd_inspect(type("A", (), {"archive": str(BUNDLE / img["archive"])})())
        assert (info["ref"], info["digest"], info["config"]) == (img["ref"], img["digest"], img["config"])
        assert {layer["mediaType"].rsplit("+", 1)[1] for layer in info["layers"]} == {"gzip", "zstd"}, info["layers"]
    for section in ("binaries", "charts"):
        for art in manifest[section]:
            assert len(art["sha256"]) == 64 and art["version"], art
    cni = next(b for b in manifest["binaries"] if b["name"] == "cni-plugins")
    assert hashlib.sha256((BUNDLE / cni["path"]).read_bytes()).hexdigest() == cni["sha256"]


def _served_images(manifest):
    """What scripts/registry pushes: the bundle's images, its workload images (TorchServe) and the
    previous Kubernetes minor's (manifest "previous", scripts/build/k8s-prev.sh: the cluster tier
    brings the lab up at that minor)."""
    return manifest["images"] + manifest["workloads"] + [i for p in manifest.get("previous", []) for i in p["images"]]


def test_registry_serves_every_bundle_digest(manifest, registry):
    assert len(_served_images(manifest)) > len(manifest["images"]), "the bundle lists no previous minor"
    for img in _served_images(manifest):
        headers, body = _get(f"{registry['url']}/v2/{img['repository']}/manifests/{img['tag']}")
        assert headers["Docker-Content-Digest"] == img["digest"], img["ref"]
        assert "sha256:" + hashlib.sha256(body).hexdigest() == img["digest"], img["ref"]
        served = json.loads(body)
        assert served["config"]["digest"] == img["config"], img["ref"]
    # one config blob, fetched and checked end to end
    pause = next(i for i in manifest["images"] if i["name"] == "pause")
    _, cfg = _get(f"{registry['url']}/v2/{pause['repository']}/blobs/{pause['config']}", accept="*/*")
    assert "sha256:" + hashlib.sha256(cfg).hexdigest() == pause["config"]
    assert json.loads(cfg)["config"]["Entrypoint"] == ["/pause"]
    # repository paths are the upstream ones without the registry host
    _, cat = _get(f"{registry['url']}/v2/_catalog?n=100", accept="application/json")
    assert {"kube-apiserver", "coredns/coredns", "cloudnativelabs/kube-router", "library/busybox"} <= \
        set(json.loads(cat)["repositories"])


def test_second_up_pushes_nothing_and_the_access_log_shows_requests(manifest, registry):
    assert f"({len(_served_images(manifest))} pushed now)" in registry["up"], registry["up"]  # fresh storage
    again = _run([str(REPO / "scripts" / "registry"), "up", registry["net"], registry["ip"], "600"],
                 env=registry["env"])
    assert "already running" in again.stdout and "(0 pushed now)" in again.stdout, again.stdout
    log = _run([str(REPO / "scripts" / "registry"), "log", registry["net"]], env=registry["env"]).stdout
    assert '"HEAD /v2/kube-apiserver/manifests/v' in log
    assert '"PUT /v2/coredns/coredns/manifests/' in log
    name = f"gpuops-registry-{registry['net']}"
    insp = json.loads(_run(["podman", "container", "inspect", name]).stdout)[0]
    assert insp["Config"]["Labels"]["io.gpuops.kind"] == "site-registry"
    assert insp["Config"]["Timeout"] == 600  # bounded lifetime (podman run --timeout)
    assert _run(["podman", "port", name]).stdout.strip() == ""  # nothing published on the host
    assert all(not v for v in (insp["HostConfig"]["PortBindings"] or {}).values())


def test_down_leaves_a_container_without_our_label(manifest, registry):
    net = f"gpuops-airgap-other-{os.getpid()}"
    ref = next(i["ref"] for i in manifest["images"] if i["name"] == "registry")
    # the image declares VOLUME /var/lib/registry: a tmpfs there instead of an anonymous volume,
    # which `podman rm` would leave behind (one empty volume per run, found 2026-12-01)
    _run(["podman", "create", "--name", f"gpuops-registry-{net}", "--pull=never",
          "--tmpfs", "/var/lib/registry", ref])
    try:
        out = _run([str(REPO / "scripts" / "registry"), "down", net], env=registry["env"]).stdout
        assert "not a gpuops registry" in out
        assert _run(["podman", "container", "exists", f"gpuops-registry-{net}"], check=False).returncode == 0
    finally:
        _run(["podman", "rm", "-f", f"gpuops-registry-{net}"], check=False)


def test_role_checks_the_registry_against_the_bundle(manifest, registry, tmp_path):
    """The role passes against the registry with the real manifest, and refuses a manifest whose
    CoreDNS digest differs from what the registry serves (one ansible-playbook run for both)."""
    bad = json.loads(json.dumps(manifest))
    core = next(i for i in bad["images"] if i["name"] == "coredns")
    core["digest"] = "sha256:" + "0" * 64
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    common = {"container_images_registry_url": registry["url"], "container_images_prepull": False}
    role = "gpuops.cluster.container_images"
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "Check the registry against the bundle", "ansible.builtin.include_role": {"name": role},
         "vars": {**common, "container_images_bundle_manifest": str(BUNDLE / "manifest.json")}},
        {"name": "A wrong digest must be refused", "block": [
            {"name": "Check against a manifest with a wrong CoreDNS digest", "ansible.builtin.include_role": {"name": role},
             "vars": {**common, "container_images_bundle_manifest": str(tmp_path / "bad.json"),
                      "container_images_list": [{"name": "coredns", "image": core["ref"].rsplit(":", 1)[0],
                                                 "tag": core["tag"], "nodes": "all"}]}},
            {"name": "Not refused", "ansible.builtin.fail": {"msg": "WRONG DIGEST ACCEPTED"}}],
         "rescue": [{"name": "Refused", "ansible.builtin.debug": {"msg": "WRONG DIGEST REFUSED"}}]}]}]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play, sort_keys=False))
    proc = _run(["ansible-playbook", "-i", "localhost,", "-c", "local",
                 "-e", f"ansible_python_interpreter={sys.executable}", str(tmp_path / "play.yml")],
                env={"ANSIBLE_NOCOLOR": "1"}, check=False)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:]
    assert "WRONG DIGEST REFUSED" in out and "WRONG DIGEST ACCEPTED" not in out, out[-4000:]
    assert "with the bundle digest sha256:" + "0" * 64 in out, out[-4000:]
    assert "rescued=1" in out


def test_oci_tool_is_reproducible_and_refuses_bad_refs(tmp_path):
    payload = tmp_path / "hello"
    payload.write_text("#!/bin/sh\necho hello\n")
    payload.chmod(0o755)
    args = ["build", "--ref", "registry.example.org/t/hello:1", "--add", f"{payload}:/usr/local/bin/hello",
            "--entrypoint", '["/usr/local/bin/hello"]']
    tool = [sys.executable, str(REPO / "scripts" / "lib" / "oci_image.py")]
    a = _run([*tool, args[0], str(tmp_path / "a.tar"), *args[1:]])
    b = _run([*tool, args[0], str(tmp_path / "b.tar"), *args[1:]])
    assert json.loads(a.stdout)["digest"] == json.loads(b.stdout)["digest"]
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    bad = _run([*tool, "build", str(tmp_path / "c.tar"), "--ref", "hello:1"], check=False)
    assert bad.returncode == 1 and "registry host" in bad.stderr
