#!/usr/bin/env python3
"""Write and inspect OCI image archives (oci-archive: an OCI image layout in a tar), without a
registry, a daemon or podman storage. Used by scripts/build/cluster-images.sh for the air-gap
bundle ($GPUOPS_CACHE/bundle/images); see docs/airgap.md.

  oci_image.py build OUT.tar --ref REGISTRY/PATH:TAG [--add SRC:DEST[:MODE]]... [--link DEST:TARGET]...
                [--dir PATH[:MODE]]... [--entrypoint JSON] [--cmd JSON] [--env K=V]... [--label K=V]...
                [--expose PORT/PROTO]... [--volume PATH]... [--workdir DIR] [--user USER]
      A FROM-scratch, single-layer image (static binaries): /tmp (1777), /etc/passwd and
      /etc/group (root, nobody) plus what is added.
  oci_image.py normalize IN.tar OUT.tar --ref REGISTRY/PATH:TAG [--zstd-above BYTES]
      Rewrite an archive written by `podman save --format oci-archive`: layers gzip-compressed
      (deterministically), the image named REF; config and layer contents unchanged. Layers bigger
      than BYTES (uncompressed) are zstd-compressed instead (the zstd CLI, 2 threads, level 3,
      streamed: a multi-GiB layer never sits in memory; containerd >= 1.5 and the registry take it).
  oci_image.py inspect ARCHIVE.tar
      JSON on stdout: ref, manifest digest/size/media type, config digest, layers, platform.

Every archive holds exactly one image, so `skopeo copy oci-archive:FILE docker://...` needs no
reference and the manifest digest printed by `inspect` is the digest a registry serves after
`skopeo copy --preserve-digests` (layers are already compressed: nothing is rewritten).
Output is reproducible: fixed timestamps, uid/gid 0, sorted entries, gzip without mtime.
The index carries both `io.containerd.image.name` (full reference; `ctr images import` uses it)
and `org.opencontainers.image.ref.name` (the tag, per the OCI image-layout spec).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZ = "application/vnd.docker.image.rootfs.diff.tar.gzip"
EPOCH = 1767225600          # 2026-01-01T00:00:00Z: every timestamp the tool writes
CREATED = "2026-01-01T00:00:00Z"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CHUNK = 1 << 20


class ImageError(Exception):
    """A bad input archive or argument; the message says what to fix."""


def split_ref(ref: str) -> tuple[str, str]:
    """'registry.k8s.io/coredns/coredns:v1.14.2' -> ('registry.k8s.io/coredns/coredns', 'v1.14.2')."""
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag or not name or "@" in ref:
        raise ImageError(f"image reference must be NAME:TAG with a registry host, got {ref!r}")
    if "/" not in name or "." not in name.split("/", 1)[0]:
        raise ImageError(f"image reference must start with a registry host (e.g. docker.io/...), got {ref!r}")
    return name, tag


def full_ref(ref: str) -> str:
    """An image reference with its registry host: 'pytorch/torchserve:0.12.0-gpu' ->
    'docker.io/pytorch/torchserve:0.12.0-gpu' (a first component without '.' or ':' is not a host)."""
    first = ref.split("/", 1)[0]
    return ref if "/" in ref and ("." in first or ":" in first) else "docker.io/" + ref


def _json_bytes(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Blobs:
    """Blobs of one image layout being written, kept as files in a temporary directory."""

    def __init__(self, tmp: Path):
        self.dir = tmp / "blobs" / "sha256"
        self.dir.mkdir(parents=True)

    def add_bytes(self, data: bytes, media_type: str) -> dict:
        d = _digest(data)
        (self.dir / d.split(":", 1)[1]).write_bytes(data)
        return {"mediaType": media_type, "digest": d, "size": len(data)}

    def add_gzip_layer(self, raw) -> tuple[dict, str]:
        """Compress the uncompressed layer stream `raw`; returns (descriptor, diff_id)."""
        diff = hashlib.sha256()
        tmp = self.dir / ".layer.tmp"
        with open(tmp, "wb") as out:
            with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz:
                while True:
                    chunk = raw.read(CHUNK)
                    if not chunk:
                        break
                    diff.update(chunk)
                    gz.write(chunk)
        return self._store_layer(tmp, MT_LAYER_GZ, diff)

    def add_zstd_layer(self, raw) -> tuple[dict, str]:
        """Like add_gzip_layer, through `zstd -3 -T2` (deterministic for a fixed level and thread count)."""
        diff = hashlib.sha256()
        tmp = self.dir / ".layer.tmp"
        with open(tmp, "wb") as out:
            proc = subprocess.Popen(["zstd", "-q", "-3", "-T2", "-c"], stdin=subprocess.PIPE, stdout=out)
            try:
                while True:
                    chunk = raw.read(CHUNK)
                    if not chunk:
                        break
                    diff.update(chunk)
                    proc.stdin.write(chunk)
            finally:
                proc.stdin.close()
                rc = proc.wait()
        if rc != 0:
            raise ImageError(f"zstd failed (rc {rc}): is the zstd CLI installed (apt-get install zstd)?")
        return self._store_layer(tmp, MT_LAYER_ZSTD, diff)

    def _store_layer(self, tmp: Path, media_type: str, diff) -> tuple[dict, str]:
        """The compressed layer written to `tmp` becomes the blob named by its digest; returns
        (descriptor, diff_id) with `diff` the sha256 of the uncompressed stream."""
        comp = hashlib.sha256()
        with open(tmp, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                comp.update(chunk)
        size = tmp.stat().st_size
        tmp.rename(self.dir / comp.hexdigest())
        return ({"mediaType": media_type, "digest": "sha256:" + comp.hexdigest(), "size": size},
                "sha256:" + diff.hexdigest())


def write_layout(tmp: Path, blobs: Blobs, manifest: dict, ref: str, out: Path) -> dict:
    """Write manifest + index + oci-layout and tar the layout into `out` (atomically)."""
    name, tag = split_ref(ref)
    mdesc = blobs.add_bytes(_json_bytes(manifest), MT_MANIFEST)
    mdesc["annotations"] = {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": tag}
    index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [mdesc]}
    files = {"oci-layout": _json_bytes({"imageLayoutVersion": "1.0.0"}), "index.json": _json_bytes(index)}
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    with tarfile.open(part, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("blobs", "blobs/sha256"):
            tar.addfile(_tarinfo(d, tarfile.DIRTYPE, 0o755))
        for blob in sorted(p for p in blobs.dir.iterdir() if not p.name.startswith(".")):
            info = _tarinfo(f"blobs/sha256/{blob.name}", tarfile.REGTYPE, 0o644, blob.stat().st_size)
            with open(blob, "rb") as f:
                tar.addfile(info, f)
        for fname, data in files.items():
            tar.addfile(_tarinfo(fname, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
    os.replace(part, out)
    return {"ref": ref, "name": name, "tag": tag, "digest": mdesc["digest"], "size": mdesc["size"],
            "mediaType": MT_MANIFEST}


def _tarinfo(name: str, kind: bytes, mode: int, size: int = 0, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, EPOCH
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.linkname = linkname
    return info


def _parse_kv(items, what):
    out = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise ImageError(f"{what} must be KEY=VALUE, got {item!r}")
        out[k] = v
    return out


def scratch_layer(args) -> bytes:
    """The uncompressed layer of a FROM-scratch image as bytes (static binaries: a few 100 MB max)."""
    entries: dict[str, tuple] = {}

    def add_dir(path, mode=0o755):
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            if p and p not in entries:
                entries[p] = ("dir", mode if i == len(parts) else 0o755)

    add_dir("tmp", 0o1777)
    add_dir("etc")
    entries["etc/passwd"] = ("data", 0o644, b"root:x:0:0:root:/root:/sbin/nologin\n"
                             b"nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n")
    entries["etc/group"] = ("data", 0o644, b"root:x:0:\nnogroup:x:65534:\n")
    for spec in args.dir or []:
        path, _, mode = spec.partition(":")
        add_dir(path, int(mode, 8) if mode else 0o755)
    for spec in args.add or []:
        parts = spec.split(":")
        if len(parts) not in (2, 3) or not parts[1].startswith("/"):
            raise ImageError(f"--add must be SRC:/DEST[:MODE], got {spec!r}")
        src = Path(parts[0])
        if not src.is_file():
            raise ImageError(f"--add source {src} is not a file")
        dest = parts[1].strip("/")
        mode = int(parts[2], 8) if len(parts) == 3 else (0o755 if os.access(src, os.X_OK) else 0o644)
        add_dir(os.path.dirname(dest))
        entries[dest] = ("file", mode, src)
    for spec in args.link or []:
        dest, sep, target = spec.partition(":")
        if not sep or not dest.startswith("/") or not target:
            raise ImageError(f"--link must be /DEST:TARGET, got {spec!r}")
        add_dir(os.path.dirname(dest.strip("/")))
        entries[dest.strip("/")] = ("link", 0o777, target)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(entries):
            kind, mode, *rest = entries[path]
            if kind == "dir":
                tar.addfile(_tarinfo(path + "/", tarfile.DIRTYPE, mode))
            elif kind == "link":
                tar.addfile(_tarinfo(path, tarfile.SYMTYPE, mode, linkname=rest[0]))
            elif kind == "data":
                tar.addfile(_tarinfo(path, tarfile.REGTYPE, mode, len(rest[0])), io.BytesIO(rest[0]))
            else:
                src = rest[0]
                with open(src, "rb") as f:
                    tar.addfile(_tarinfo(path, tarfile.REGTYPE, mode, src.stat().st_size), f)
    return buf.getvalue()


def cmd_build(args) -> dict:
    split_ref(args.ref)
    env = {"PATH": DEFAULT_PATH, **_parse_kv(args.env, "--env")}
    cfg = {"Env": [f"{k}={v}" for k, v in env.items()], "WorkingDir": args.workdir or "/"}
    for key, val in (("Entrypoint", args.entrypoint), ("Cmd", args.cmd)):
        if val is not None:
            parsed = json.loads(val)
            if not (isinstance(parsed, list) and all(isinstance(x, str) for x in parsed)):
                raise ImageError(f"--{key.lower()} must be a JSON list of strings, got {val!r}")
            cfg[key] = parsed
    if args.user:
        cfg["User"] = args.user
    labels = _parse_kv(args.label, "--label")
    if labels:
        cfg["Labels"] = labels
    if args.expose:
        cfg["ExposedPorts"] = {p: {} for p in args.expose}
    if args.volume:
        cfg["Volumes"] = {v: {} for v in args.volume}
    with tempfile.TemporaryDirectory(dir=Path(args.out).parent, prefix=".oci-") as t:
        tmp = Path(t)
        blobs = Blobs(tmp)
        layer, diff_id = blobs.add_gzip_layer(io.BytesIO(scratch_layer(args)))
        config = {"created": CREATED, "architecture": "amd64", "os": "linux", "config": cfg,
                  "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                  "history": [{"created": CREATED, "created_by": "gpuops.cluster scripts/lib/oci_image.py build"}]}
        cdesc = blobs.add_bytes(_json_bytes(config), MT_CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": cdesc, "layers": [layer]}
        return write_layout(tmp, blobs, manifest, args.ref, Path(args.out))


def _read_layout(tar: tarfile.TarFile):
    """(index, manifest descriptor, manifest, manifest bytes) of a one-image archive."""
    def blob(digest):
        algo, _, hexd = digest.partition(":")
        member = tar.extractfile(f"blobs/{algo}/{hexd}")
        if member is None:
            raise ImageError(f"blob {digest} missing from the archive")
        return member

    try:
        index = json.load(tar.extractfile("index.json"))
    except KeyError as exc:
        raise ImageError("not an OCI archive: no index.json") from exc
    mans = index.get("manifests", [])
    if len(mans) != 1:
        raise ImageError(f"the archive must hold exactly one image, it holds {len(mans)}")
    mdesc = mans[0]
    if mdesc.get("mediaType") not in (MT_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json"):
        raise ImageError(f"unsupported manifest media type {mdesc.get('mediaType')}")
    raw = blob(mdesc["digest"]).read()
    if _digest(raw) != mdesc["digest"]:
        raise ImageError(f"manifest digest mismatch for {mdesc['digest']}")
    return index, mdesc, json.loads(raw), raw, blob


def cmd_normalize(args) -> dict:
    split_ref(args.ref)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(args.input) as tar, tempfile.TemporaryDirectory(dir=out.parent, prefix=".oci-") as t:
        _, _, manifest, _, blob = _read_layout(tar)
        blobs = Blobs(Path(t))
        cfg_raw = blob(manifest["config"]["digest"]).read()
        cfg = json.loads(cfg_raw)
        cdesc = blobs.add_bytes(cfg_raw, MT_CONFIG)
        layers = []
        for i, desc in enumerate(manifest["layers"]):
            if desc["mediaType"] in (MT_LAYER, DOCKER_LAYER):
                big = args.zstd_above is not None and desc["size"] > args.zstd_above
                new, diff_id = (blobs.add_zstd_layer if big else blobs.add_gzip_layer)(blob(desc["digest"]))
                if diff_id != cfg["rootfs"]["diff_ids"][i]:
                    raise ImageError(f"layer {i} does not match the config's diff_id")
            elif desc["mediaType"] in (MT_LAYER_GZ, DOCKER_LAYER_GZ, MT_LAYER_ZSTD):
                data = blob(desc["digest"]).read()
                new = blobs.add_bytes(data, MT_LAYER_ZSTD if desc["mediaType"] == MT_LAYER_ZSTD else MT_LAYER_GZ)
            else:
                raise ImageError(f"unsupported layer media type {desc['mediaType']}")
            layers.append(new)
        new_manifest = {"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": cdesc, "layers": layers}
        return write_layout(Path(t), blobs, new_manifest, args.ref, out)


def cmd_inspect(args) -> dict:
    with tarfile.open(args.archive) as tar:
        _, mdesc, manifest, raw, blob = _read_layout(tar)
        cfg = json.loads(blob(manifest["config"]["digest"]).read())
    ann = mdesc.get("annotations", {})
    return {"ref": ann.get("io.containerd.image.name", ""), "tag": ann.get("org.opencontainers.image.ref.name", ""),
            "digest": mdesc["digest"], "size": len(raw), "mediaType": manifest.get("mediaType", mdesc["mediaType"]),
            "config": manifest["config"]["digest"], "platform": f"{cfg.get('os')}/{cfg.get('architecture')}",
            "layers": [{"digest": layer["digest"], "size": layer["size"], "mediaType": layer["mediaType"]}
                       for layer in manifest["layers"]],
            "entrypoint": cfg.get("config", {}).get("Entrypoint"), "cmd": cfg.get("config", {}).get("Cmd")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="FROM-scratch single-layer image")
    b.add_argument("out")
    b.add_argument("--ref", required=True)
    b.add_argument("--add", action="append", metavar="SRC:DEST[:MODE]")
    b.add_argument("--link", action="append", metavar="DEST:TARGET")
    b.add_argument("--dir", action="append", metavar="PATH[:MODE]")
    b.add_argument("--entrypoint")
    b.add_argument("--cmd")
    b.add_argument("--env", action="append", metavar="K=V")
    b.add_argument("--label", action="append", metavar="K=V")
    b.add_argument("--expose", action="append", metavar="PORT/PROTO")
    b.add_argument("--volume", action="append", metavar="PATH")
    b.add_argument("--workdir")
    b.add_argument("--user")
    n = sub.add_parser("normalize", help="gzip layers and rename an oci-archive from podman save")
    n.add_argument("input")
    n.add_argument("out")
    n.add_argument("--ref", required=True)
    n.add_argument("--zstd-above", type=int, metavar="BYTES",
                   help="zstd-compress the layers bigger than BYTES (default: gzip every layer)")
    i = sub.add_parser("inspect", help="print the archive's image facts as JSON")
    i.add_argument("archive")
    args = p.parse_args(argv)
    try:
        result = {"build": cmd_build, "normalize": cmd_normalize, "inspect": cmd_inspect}[args.command](args)
    except (ImageError, OSError, tarfile.TarError, ValueError) as exc:
        print(f"oci_image.py: ERROR: {exc}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout, indent=2, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
