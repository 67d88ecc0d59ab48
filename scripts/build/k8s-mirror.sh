#!/usr/bin/env bash
# Lay out a local air-gapped artifact mirror under $GPUOPS_CACHE/mirror, with the same paths the
# upstream download sites use, so the container_runtime and kubernetes_packages roles can be tested
# against it exactly as a site mirror would be used:
#
#   mirror/release/vX.Y.Z/bin/linux/amd64/{kubeadm,kubelet,kubectl}{,.sha256}    (dl.k8s.io layout)
#   mirror/containerd/vA.B.C/containerd-A.B.C-linux-amd64.tar.gz{,.sha256sum}    (release layout)
#   mirror/core:/stable:/vX.Y/deb/{InRelease,Release,Release.gpg,Release.key,Packages{,.gz}}
#   mirror/core:/stable:/vX.Y/deb/amd64/{kubeadm,kubelet,kubectl}_X.Y.Z-1.1_amd64.deb
#                                    (pkgs.k8s.io apt layout: flat repo, suite "/", signed by a local
#                                     test key made here; .debs packed from the Go-built binaries)
#   mirror/etcd/vA.B.C/etcd-vA.B.C-linux-amd64.tar.gz{,.sha256sum}              (etcd release layout:
#                                    etcd-vA.B.C-linux-amd64/{etcd,etcdctl,etcdutl}; the etcd backup and
#                                    restore roles install etcdctl/etcdutl from it)
#   mirror/openbao/A.B.C/linux/amd64/bao{,.sha256}                              (the OpenBao server of
#                                    scripts/build/openbao.sh; version pinned once: vault_version in
#                                    roles/vault/defaults/main.yml; .sha256 is the bare hex digest)
#   mirror/SHA256SUMS                                                           (all of the above)
#
# kubeadm/kubelet/kubectl are the Go-built binaries of scripts/build/k8s.sh ($GPUOPS_BIN), which is
# run first (it is a no-op when they are up to date). containerd is built here from the Go module
# proxy (github.com/containerd/containerd/v2, CGO off, no_btrfs) and packed in the upstream tarball
# layout (bin/containerd, bin/containerd-shim-runc-v2, bin/ctr). Nothing is downloaded from GitHub.
#
# Idempotent: each artifact has a stamp; a warm run only re-checks them.
#
#   bash scripts/build/k8s-mirror.sh                 everything
#   bash scripts/build/k8s-mirror.sh containerd      only the containerd tarball
#   bash scripts/build/k8s-mirror.sh kubernetes      only the kubernetes binaries
#   bash scripts/build/k8s-mirror.sh etcd            only the etcd release tarball (k8s.sh etcd etcdctl etcdutl)
#   bash scripts/build/k8s-mirror.sh apt             only the signed apt repository (needs kubernetes)
#   bash scripts/build/k8s-mirror.sh openbao         only the OpenBao server binary
#   GPUOPS_K8S_BIN_DIR=DIR bash scripts/build/k8s-mirror.sh kubernetes   use binaries already in DIR
#   bash scripts/build/k8s-mirror.sh serve DIR [LIFETIME]   serve $GPUOPS_CACHE/mirror over HTTP on
#        127.0.0.1 (free port, bounded lifetime, default 1800 s) with the test-bed plumbing; prints the
#        URL and writes DIR/state.json (+ DIR/url)
#   bash scripts/build/k8s-mirror.sh stop DIR        stop that server by PID (from DIR/state.json)
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "$0")/../env.sh"

CONTAINERD_VERSION="${GPUOPS_CONTAINERD_VERSION:-v2.3.7}"
K8S_VERSION="${GPUOPS_K8S_VERSION:-v1.36.3}"
# K8S_RELEASE=prev: the previous minor (pins in scripts/build/k8s-releases.env) beside the current
# one: its own release dir (release/vX) and per-minor apt repository (core:/stable:/vX.Y), from
# `K8S_RELEASE=prev k8s.sh`'s $GPUOPS_CACHE/bin-vX. Parts: kubernetes, apt (the default).
PREV_BIN=""
if [ "${K8S_RELEASE:-current}" = prev ]; then
  # shellcheck source=scripts/build/k8s-releases.env
  source "$(dirname "$0")/k8s-releases.env"
  K8S_VERSION="$K8S_PREV_VERSION"
  PREV_BIN="$GPUOPS_CACHE/bin-$K8S_VERSION"
fi
ETCD_VERSION="v3.6.8"                     # = scripts/build/k8s.sh ETCD_VERSION (kubeadm v1.36.3's etcd)
ARCH=amd64
GO="${GO:-/usr/local/go/bin/go}"
MIRROR="$GPUOPS_CACHE/mirror"
BUILD="$GPUOPS_CACHE/build/mirror"
TIMES="$BUILD/build-times.tsv"
mkdir -p "$MIRROR" "$BUILD"

export GOTOOLCHAIN=local
export CGO_ENABLED=0
export GOFLAGS="-trimpath -buildvcs=false -mod=mod"
export GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"

log() { printf '==> [k8s-mirror %s] %s\n' "$(date +%T)" "$*"; }
die() { printf 'k8s-mirror.sh: ERROR: %s\n' "$*" >&2; exit 1; }

containerd_tarball() {
  local v="${CONTAINERD_VERSION#v}" dir="$MIRROR/containerd/$CONTAINERD_VERSION"
  local tgz="$dir/containerd-$v-linux-$ARCH.tar.gz" stamp src out t0 t1 gover
  gover="$("$GO" env GOVERSION)"
  stamp="github.com/containerd/containerd/v2@$CONTAINERD_VERSION $gover no_btrfs"
  if [ -f "$tgz" ] && [ -f "$tgz.sha256sum" ] && [ "$(cat "$tgz.stamp" 2>/dev/null)" = "$stamp" ]; then
    log "containerd $CONTAINERD_VERSION tarball up to date"
    return 0
  fi
  [ -x "$GO" ] || die "Go toolchain not found at $GO"
  log "building containerd $CONTAINERD_VERSION from the Go module proxy (CGO off, no_btrfs)"
  t0=$(date +%s)
  # The module zip (not go install: containerd's go.mod has replace directives).
  src="$(cd "$BUILD" && "$GO" mod download -json "github.com/containerd/containerd/v2@$CONTAINERD_VERSION" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [ -d "$src" ] || die "go mod download github.com/containerd/containerd/v2@$CONTAINERD_VERSION gave no source dir"
  rm -rf "$BUILD/containerd-src" "$BUILD/containerd-out"
  cp -r "$src" "$BUILD/containerd-src"
  chmod -R u+w "$BUILD/containerd-src"
  out="$BUILD/containerd-out/bin"
  mkdir -p "$out"
  local ld="-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION"
  ld+=" -X github.com/containerd/containerd/v2/version.Revision=gpuops-mirror"
  ld+=" -X github.com/containerd/containerd/v2/version.Package=github.com/containerd/containerd/v2"
  (
    cd "$BUILD/containerd-src"
    for cmd in containerd containerd-shim-runc-v2 ctr; do
      nice -n 10 "$GO" build -tags "no_btrfs urfave_cli_no_docs" -ldflags "$ld" -o "$out/$cmd" "./cmd/$cmd"
    done
  ) || die "go build of containerd $CONTAINERD_VERSION failed; see the output above"
  mkdir -p "$dir"
  tar -C "$BUILD/containerd-out" --owner=0 --group=0 --mtime='2026-01-01 00:00:00' -czf "$tgz.tmp" bin
  mv -f "$tgz.tmp" "$tgz"
  (cd "$dir" && sha256sum "$(basename "$tgz")" > "$(basename "$tgz").sha256sum")
  printf '%s' "$stamp" > "$tgz.stamp"
  rm -rf "$BUILD/containerd-src"
  t1=$(date +%s)
  printf '%s\tcontainerd-%s.tar.gz\t%ss\t%s bytes\n' "$(date -u +%FT%TZ)" "$CONTAINERD_VERSION" \
    "$((t1 - t0))" "$(stat -c %s "$tgz")" >> "$TIMES"
  log "containerd tarball: $tgz ($(( $(stat -c %s "$tgz") / 1024 / 1024 )) MiB, $((t1 - t0))s)"
}

# The etcd release tarball (upstream name and layout) from k8s.sh's Go-built etcd, etcdctl, etcdutl.
etcd_tarball() {
  local dir="$MIRROR/etcd/$ETCD_VERSION" base="etcd-$ETCD_VERSION-linux-$ARCH" tgz stamp b
  tgz="$dir/$base.tar.gz"
  bash "$GPUOPS_REPO/scripts/build/k8s.sh" etcd etcdctl etcdutl
  stamp="$(for b in etcd etcdctl etcdutl; do sha256sum "$GPUOPS_BIN/$b" | cut -d' ' -f1; done | tr '\n' ' ')"
  if [ -f "$tgz" ] && [ -f "$tgz.sha256sum" ] && [ "$(cat "$tgz.stamp" 2>/dev/null)" = "$stamp" ]; then
    log "etcd $ETCD_VERSION tarball up to date"
    return 0
  fi
  rm -rf "${BUILD:?}/${base:?}" && mkdir -p "$BUILD/$base" "$dir"
  for b in etcd etcdctl etcdutl; do install -m 0755 "$GPUOPS_BIN/$b" "$BUILD/$base/$b"; done
  tar -C "$BUILD" --owner=0 --group=0 --mtime='2026-01-01 00:00:00' -czf "$tgz.tmp" "$base"
  mv -f "$tgz.tmp" "$tgz"
  (cd "$dir" && sha256sum "$(basename "$tgz")" > "$(basename "$tgz").sha256sum")
  printf '%s' "$stamp" > "$tgz.stamp"
  rm -rf "${BUILD:?}/$base"
  log "etcd tarball: $tgz ($(( $(stat -c %s "$tgz") / 1024 / 1024 )) MiB)"
}

kubernetes_binaries() {
  local dir="$MIRROR/release/$K8S_VERSION/bin/linux/$ARCH" b have src="${GPUOPS_K8S_BIN_DIR:-${PREV_BIN:-$GPUOPS_BIN}}"
  # GPUOPS_K8S_BIN_DIR: take already-built binaries from there instead of running k8s.sh
  [ -n "${GPUOPS_K8S_BIN_DIR:-}" ] || K8S_RELEASE="${PREV_BIN:+prev}" bash "$GPUOPS_REPO/scripts/build/k8s.sh" kubectl kubeadm kubelet
  mkdir -p "$dir"
  for b in kubeadm kubelet kubectl; do
    [ -x "$src/$b" ] || die "$src/$b missing (scripts/build/k8s.sh builds it)"
    have="$("$src/$b" --version 2>/dev/null || "$src/$b" version -o short 2>/dev/null || "$src/$b" version --client 2>/dev/null || true)"
    case "$have" in *"$K8S_VERSION"*) ;; *) die "$src/$b is not $K8S_VERSION: '$have'" ;; esac
    if ! cmp -s "$src/$b" "$dir/$b"; then
      cp -f "$src/$b" "$dir/$b.tmp" && mv -f "$dir/$b.tmp" "$dir/$b"
    fi
    # dl.k8s.io serves the bare hex digest in <binary>.sha256
    sha256sum "$dir/$b" | cut -d' ' -f1 > "$dir/$b.sha256.tmp"
    cmp -s "$dir/$b.sha256.tmp" "$dir/$b.sha256" || mv -f "$dir/$b.sha256.tmp" "$dir/$b.sha256"
    rm -f "$dir/$b.sha256.tmp"
  done
  log "kubernetes $K8S_VERSION binaries in $dir"
}

# A signed flat apt repository with the pkgs.k8s.io layout, from the Go-built binaries.
# The .debs carry the same files as the upstream packages (binary, kubelet unit, kubeadm drop-in);
# their Depends name only Debian packages (no kubernetes-cni/cri-tools in this mirror).
apt_repo() {
  local ver="${K8S_VERSION#v}" minor rel="1.1" repo gh="$BUILD/gnupg" stamp b
  minor="$(printf '%s' "$ver" | cut -d. -f1,2)"
  repo="$MIRROR/core:/stable:/v$minor/deb"
  stamp="$ver-$rel $(cd "$MIRROR/release/$K8S_VERSION/bin/linux/$ARCH" && cat kubeadm.sha256 kubelet.sha256 kubectl.sha256 | sha256sum | cut -c1-16)"
  if [ -f "$repo/InRelease" ] && [ "$(cat "$repo/.stamp" 2>/dev/null)" = "$stamp" ]; then
    log "apt repository $repo up to date"
    return 0
  fi
  command -v gpg >/dev/null || die "gpg not found (apt-get install gnupg)"
  mkdir -p "$repo/$ARCH" "$gh"
  chmod 700 "$gh"
  if ! gpg --homedir "$gh" --batch --list-secret-keys gpuops-mirror >/dev/null 2>&1; then
    log "creating the local test signing key (no passphrase, test use only)"
    gpg --homedir "$gh" --batch --passphrase '' --quick-gen-key \
      'gpuops test apt mirror (NOT for production) <gpuops-mirror@invalid>' rsa3072 sign 1y
  fi
  gpg --homedir "$gh" --batch --armor --export gpuops-mirror > "$repo/Release.key"
  for b in kubeadm kubelet kubectl; do
    local root="$BUILD/deb/$b" deps desc
    rm -rf "$root"; mkdir -p "$root/DEBIAN" "$root/usr/bin"
    cp "$MIRROR/release/$K8S_VERSION/bin/linux/$ARCH/$b" "$root/usr/bin/$b"
    case "$b" in
      kubelet)
        deps="iptables, iproute2, mount, ethtool, conntrack, socat"
        desc="Kubernetes Node Agent"
        mkdir -p "$root/usr/lib/systemd/system"
        cat > "$root/usr/lib/systemd/system/kubelet.service" <<'UNIT'
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
UNIT
        ;;
      kubeadm)
        deps="kubelet (>= 1.19.0), kubectl (>= 1.13.0)"
        desc="Command-line utility for administering a Kubernetes cluster"
        mkdir -p "$root/usr/lib/systemd/system/kubelet.service.d"
        cat > "$root/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf" <<'UNIT'
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
UNIT
        ;;
      kubectl) deps=""; desc="Command-line utility for interacting with a Kubernetes cluster" ;;
    esac
    {
      printf 'Package: %s\nVersion: %s-%s\nArchitecture: %s\n' "$b" "$ver" "$rel" "$ARCH"
      printf 'Maintainer: gpuops.cluster test mirror <gpuops-mirror@invalid>\n'
      printf 'Installed-Size: %s\nSection: admin\nPriority: optional\n' "$(du -sk "$root/usr" | cut -f1)"
      [ -n "$deps" ] && printf 'Depends: %s\n' "$deps"
      printf 'Homepage: https://kubernetes.io\nDescription: %s\n' "$desc"
      printf ' Built by gpuops.cluster scripts/build/k8s-mirror.sh from Go-built %s %s.\n' "$b" "$K8S_VERSION"
    } > "$root/DEBIAN/control"
    nice -n 10 dpkg-deb --root-owner-group -Zgzip -z1 --build "$root" "$repo/$ARCH/${b}_${ver}-${rel}_${ARCH}.deb" >/dev/null
  done
  # Packages and Release (what dpkg-scanpackages / apt-ftparchive would write).
  "$GPUOPS_VENV/bin/python" - "$repo" "$ARCH" <<'PY'
import gzip, hashlib, subprocess, sys, time
from pathlib import Path
repo, arch = Path(sys.argv[1]), sys.argv[2]
entries = []
for deb in sorted((repo / arch).glob("*.deb")):
    data = deb.read_bytes()
    control = subprocess.run(["dpkg-deb", "-f", str(deb)], check=True, capture_output=True, text=True).stdout.rstrip("\n")
    entries.append(control + f"\nFilename: {arch}/{deb.name}\nSize: {len(data)}\n"
                   f"MD5sum: {hashlib.md5(data).hexdigest()}\nSHA1: {hashlib.sha1(data).hexdigest()}\n"
                   f"SHA256: {hashlib.sha256(data).hexdigest()}\n")
packages = "\n".join(entries).encode()
(repo / "Packages").write_bytes(packages)
(repo / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
lines = {"MD5Sum": hashlib.md5, "SHA1": hashlib.sha1, "SHA256": hashlib.sha256}
release = [f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S UTC', time.gmtime())}", f"Architectures: {arch}"]
for field, fn in lines.items():
    release.append(f"{field}:")
    for name in ("Packages", "Packages.gz"):
        blob = (repo / name).read_bytes()
        release.append(f" {fn(blob).hexdigest()} {len(blob)} {name}")
(repo / "Release").write_text("\n".join(release) + "\n")
PY
  rm -f "$repo/InRelease" "$repo/Release.gpg"
  gpg --homedir "$gh" --batch --yes --local-user gpuops-mirror --clearsign -o "$repo/InRelease" "$repo/Release"
  gpg --homedir "$gh" --batch --yes --local-user gpuops-mirror -abs -o "$repo/Release.gpg" "$repo/Release"
  printf '%s' "$stamp" > "$repo/.stamp"
  rm -rf "$BUILD/deb"
  log "apt repository (pkgs.k8s.io layout) in $repo"
}

# The OpenBao server (roles/vault installs it from here with a sha256 check): the binary
# scripts/build/openbao.sh built (a no-op when it is current), at the role's pinned version.
openbao_binary() {
  local v dir have
  v="$(sed -n 's/^vault_version: *"\{0,1\}\([0-9.]*\)"\{0,1\}.*/\1/p' "$GPUOPS_REPO/roles/vault/defaults/main.yml")"
  [ -n "$v" ] || die "no vault_version in roles/vault/defaults/main.yml"
  bash "$GPUOPS_REPO/scripts/build/openbao.sh"
  have="$("$GPUOPS_BIN/bao" version 2>/dev/null || true)"
  case "$have" in *"v$v "*|*"v$v") ;; *) die "$GPUOPS_BIN/bao is not v$v (roles/vault vault_version): '$have'" ;; esac
  dir="$MIRROR/openbao/$v/linux/$ARCH"
  mkdir -p "$dir"
  cmp -s "$GPUOPS_BIN/bao" "$dir/bao" || { cp -f "$GPUOPS_BIN/bao" "$dir/bao.tmp" && mv -f "$dir/bao.tmp" "$dir/bao"; }
  sha256sum "$dir/bao" | cut -d' ' -f1 > "$dir/bao.sha256.tmp"
  cmp -s "$dir/bao.sha256.tmp" "$dir/bao.sha256" || mv -f "$dir/bao.sha256.tmp" "$dir/bao.sha256"
  rm -f "$dir/bao.sha256.tmp"
  log "openbao $v binary in $dir"
}

# A temporary file of its own: two molecule scenarios may serve the mirror at the same moment.
sums() {
  local tmp
  tmp="$(mktemp "$MIRROR/.SHA256SUMS.XXXXXX")"
  (cd "$MIRROR" && find . -type f \( -name 'kube*' -o -name '*.tar.gz' -o -name bao \) ! -name '*.sha256*' ! -name '*.stamp' \
     -printf '%P\n' | sort | xargs -r sha256sum > "$tmp" && chmod 0644 "$tmp" && mv -f "$tmp" SHA256SUMS) || { rm -f "$tmp"; return 1; }
}

# serve/stop: a static HTTP server for tests (molecule scenarios of container_runtime and
# kubernetes_packages), run through tests/testbed/common.py (Proc under `timeout`, stop by PID).
serve() {
  local dir="${1:?usage: k8s-mirror.sh serve DIR [LIFETIME]}" lifetime="${2:-1800}"
  [ -d "$MIRROR" ] || die "no mirror at $MIRROR: run scripts/build/k8s-mirror.sh first"
  sums
  cd "$GPUOPS_REPO"
  "$GPUOPS_VENV/bin/python" - "$dir" "$lifetime" "$MIRROR" <<'PY'
import sys, urllib.request
from pathlib import Path
from tests.testbed.common import Component, free_port, wait_for

class MirrorServer(Component):
    kind = "artifact-mirror"
    def __init__(self, root, **kw):
        super().__init__(**kw)
        self.root = root
    def _start(self):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        p = self.spawn("http", [sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                                "--directory", self.root, str(port)])
        wait_for(lambda: urllib.request.urlopen(url + "/SHA256SUMS", timeout=2).status == 200,
                 30, f"artifact mirror on {url}", procs=[p])
        self.info.update(url=url, port=port, root=self.root)

workdir, lifetime, root = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
srv = MirrorServer(root, name="artifact-mirror", workdir=workdir, lifetime=lifetime).start()
(workdir / "url").write_text(srv.info["url"])
print(srv.info["url"])
PY
}

stop_server() {
  local dir="${1:?usage: k8s-mirror.sh stop DIR}"
  cd "$GPUOPS_REPO"
  "$GPUOPS_VENV/bin/python" -c 'import sys; from pathlib import Path; from tests.testbed.common import stop_from_state; print("stopped" if stop_from_state(Path(sys.argv[1])) else "not running")' "$dir"
}

case "${1:-}" in
  serve) shift; serve "$@"; exit 0 ;;
  stop) shift; stop_server "$@"; exit 0 ;;
esac

# The previous minor's Go build (long, cold) runs before the lock, so it never holds up a run for
# the current release; under the lock it is then a no-op.
if [ -n "$PREV_BIN" ] && [ -z "${GPUOPS_K8S_BIN_DIR:-}" ]; then
  K8S_RELEASE=prev bash "$GPUOPS_REPO/scripts/build/k8s.sh" kubectl kubeadm kubelet
fi

# One build at a time (setup and a by-hand run, or `make lab` beside `make test`): a second caller
# waits, then finds the stamps up to date.
exec 9>"$BUILD/.lock"
if ! flock -n 9; then
  log "another k8s-mirror.sh build is running; waiting for it"
  flock 9
fi

parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(containerd kubernetes apt etcd openbao)
if [ -n "$PREV_BIN" ]; then
  [ "$*" = "" ] && parts=(kubernetes apt)
  for p in "${parts[@]}"; do
    case "$p" in kubernetes|apt) ;; *) die "K8S_RELEASE=prev builds only the parts kubernetes and apt, not '$p'" ;; esac
  done
fi
for p in "${parts[@]}"; do
  case "$p" in
    containerd) containerd_tarball ;;
    kubernetes) kubernetes_binaries ;;
    apt) apt_repo ;;
    etcd) etcd_tarball ;;
    openbao) openbao_binary ;;
    *) die "unknown part '$p' (known: containerd kubernetes apt etcd openbao)" ;;
  esac
done
sums
log "mirror ready: $MIRROR"
