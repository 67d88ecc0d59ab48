#!/usr/bin/env bash
# The air-gap bundle's container images and binaries, built here from pinned sources, in one layout
# under $GPUOPS_CACHE/bundle (docs/airgap.md):
#
#   bundle/images/<registry>_<path>_<tag>.tar   one OCI image archive per image (upstream names)
#   bundle/bin/cni/vX/cni-plugins-linux-amd64-vX.tgz{,.sha256}   CNI plugins (GitHub release layout)
#   bundle/bin/release, bundle/bin/containerd   -> $GPUOPS_CACHE/mirror (scripts/build/k8s-mirror.sh)
#   bundle/apt/core:                            -> $GPUOPS_CACHE/mirror/core: (pkgs.k8s.io layout)
#   (GPUOPS_BUNDLE and GPUOPS_MIRROR move the bundle and the mirror it points at: docs/airgap.md)
#   bundle/charts                               -> ../shared/charts (Helm charts, by reference)
#   bundle/manifest.json                        every artifact with its version and sha256 digest
#                                               (images: the manifest digest a registry serves)
#
# Versions are pinned once, in roles/container_images/defaults/main.yml (read here with the venv's
# PyYAML + Jinja2). Sources: the Go module proxy only (CoreDNS, CNI plugins, distribution's
# registry, kube-router: each built from its own module source, CGO off), $GPUOPS_BIN for the
# Kubernetes and etcd binaries (scripts/build/k8s.sh, kube-proxy included), gcc -static for pause
# (scripts/lib/pause.c), Debian's busybox-static for the test-pod image. FROM-scratch images are
# written by scripts/lib/oci_image.py; kube-proxy and kube-router need iptables/ipset/conntrack
# userland and are built with podman from localhost/gpuops-node:bookworm + Debian packages (one
# shared base, so their big layer is stored once per node), then normalised by oci_image.py.
#
# Idempotent: every binary and archive has a stamp of what it was built from; a warm run re-checks
# stamps and rewrites nothing. Go builds run under `nice -n ${GPUOPS_BUILD_NICE:-15}`.
#
#   bash scripts/build/cluster-images.sh         everything
#   bash scripts/build/cluster-images.sh binaries|images|bundle   one step (images needs binaries)
#   K8S_RELEASE=prev bash scripts/build/cluster-images.sh   the previous minor's control-plane images
#        (scripts/build/k8s-releases.env: kube-apiserver, -controller-manager, -scheduler, kube-proxy,
#        and etcd when its tag differs) from $GPUOPS_CACHE/bin-vX into the same bundle/images; the
#        bundle step lists them in manifest.json under "previous" whenever they are all there
#        ("images" stays the current release's, as the container_images role and scripts/registry read it)
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "$0")/../env.sh"
export CONTAINERS_CONF="${GPUOPS_CONTAINERS_CONF:-$GPUOPS_REPO/molecule/containers.conf}"

VERSIONS_FILE="$GPUOPS_REPO/roles/container_images/defaults/main.yml"
BUILD="$GPUOPS_CACHE/build/cluster-images"
BUNDLE="${GPUOPS_BUNDLE:-$GPUOPS_CACHE/bundle}"
MIRROR="${GPUOPS_MIRROR:-$GPUOPS_CACHE/mirror}"     # scripts/build/k8s-mirror.sh's artifact mirror
OUT="$BUILD/bin"                      # Go-built binaries, one directory per module
STAMPS="$BUILD/.stamps"
TIMES="$BUILD/build-times.tsv"
CHARTS_DIR="${GPUOPS_CHARTS_DIR:-$GPUOPS_REPO/../shared/charts}"
NODE_IMAGE="${GPUOPS_NODE_IMAGE:-localhost/gpuops-node:bookworm}"
NETBASE_IMAGE=localhost/gpuops-netbase:bookworm
NETBASE_PACKAGES=(iptables ipset conntrack iproute2 ipvsadm curl ca-certificates)
OCI=("$GPUOPS_VENV/bin/python" "$GPUOPS_REPO/scripts/lib/oci_image.py")
NICE=(nice -n "${GPUOPS_BUILD_NICE:-15}")
GO="${GO:-/usr/local/go/bin/go}"
ARCH=amd64
mkdir -p "$BUILD" "$OUT" "$STAMPS" "$BUNDLE/images" "$BUNDLE/bin" "$BUNDLE/apt"
# shellcheck source=scripts/build/k8s-releases.env
source "$(dirname "$0")/k8s-releases.env"     # the previous minor's pins (K8S_PREV_*)
PREV_BIN="$GPUOPS_CACHE/bin-$K8S_PREV_VERSION"
if [ "${K8S_RELEASE:-current}" = prev ]; then
  # its Go build (long, cold) before the lock: a run for the current release never waits for it
  K8S_RELEASE=prev bash "$GPUOPS_REPO/scripts/build/k8s.sh" etcd kube-apiserver kube-controller-manager kube-scheduler kube-proxy
fi
exec 9>"$BUILD/.lock"
if ! flock -n 9; then
  printf '==> [cluster-images %s] another cluster-images.sh is running; waiting for it\n' "$(date +%T)"
  flock 9
fi

export GOTOOLCHAIN=local CGO_ENABLED=0
export GOFLAGS="-trimpath -buildvcs=false -mod=mod"
export GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"

log() { printf '==> [cluster-images %s] %s\n' "$(date +%T)" "$*"; }
die() { printf 'cluster-images.sh: ERROR: %s\n' "$*" >&2; exit 1; }

# ---- pinned versions, from the role defaults ---------------------------------------------------
# Shell variables V_<key> for every container_images_*_version, and IMAGES lines "name ref".
V_cni_plugins="" V_registry="" V_kube_router="" V_coredns="" V_pause="" V_busybox="" V_etcd=""
load_versions() {
  local out
  out="$("$GPUOPS_VENV/bin/python" - "$VERSIONS_FILE" <<'PY'
import re, shlex, sys
import jinja2, yaml
raw = yaml.safe_load(open(sys.argv[1]))
env = jinja2.Environment(undefined=jinja2.StrictUndefined)
scalars = {k: v for k, v in raw.items() if isinstance(v, str) and "{{" not in v}
def render(v):
    return env.from_string(v).render(**scalars) if isinstance(v, str) else v
for k, v in sorted(raw.items()):
    m = re.fullmatch(r"container_images_(\w+)_version", k)
    if m:
        print(f"V_{m.group(1)}={shlex.quote(str(v))}")
lines = []
for img in raw["container_images_list"]:
    lines.append(f"{img['name']} {render(img['image'])}:{render(img['tag'])}")
print("IMAGES=" + shlex.quote("\n".join(lines)))
PY
)" || die "cannot read the pinned versions from $VERSIONS_FILE"
  eval "$out"
}
load_versions
GO_VERSION="$("$GO" env GOVERSION)"

# ---- Go builds from module sources ------------------------------------------------------------
# go_build NAME MODULE VERSION LDFLAGS OUT:PKG...  (builds in a copy of the module's own source, so
# its go.mod/go.sum and replace directives are what upstream releases are built with)
go_build() {
  local name="$1" mod="$2" ver="$3" ld="$4" stamp t0 src dir spec missing=0
  shift 4
  stamp="$mod@$ver $GO_VERSION $ld $*"
  for spec in "$@"; do [ -x "$OUT/$name/${spec%%:*}" ] || missing=1; done
  if [ "$missing" = 0 ] && [ "$(cat "$STAMPS/$name" 2>/dev/null)" = "$stamp" ]; then
    log "$name $ver up to date"
    return 0
  fi
  [ -x "$GO" ] || die "Go toolchain not found at $GO"
  log "building $name from $mod@$ver (module proxy, nice)"
  t0=$(date +%s)
  mkdir -p "$BUILD/dl"
  [ -f "$BUILD/dl/go.mod" ] || printf 'module gpuops.local/build/dl\n\ngo 1.26.0\n' > "$BUILD/dl/go.mod"
  src="$(cd "$BUILD/dl" && "$GO" mod download -json "$mod@$ver" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [ -d "$src" ] || die "go mod download $mod@$ver gave no source directory"
  dir="$BUILD/src/$name"
  rm -rf "${dir:?}" "${OUT:?}/${name:?}"
  mkdir -p "$BUILD/src" "$OUT/$name"
  cp -r "$src" "$dir"
  chmod -R u+w "$dir"
  for spec in "$@"; do
    (cd "$dir" && "${NICE[@]}" "$GO" build -ldflags "$ld" -o "$OUT/$name/${spec%%:*}" "${spec#*:}") \
      || die "go build of $name (${spec#*:} in $mod@$ver) failed; see the output above"
  done
  rm -rf "$dir"
  printf '%s' "$stamp" > "$STAMPS/$name"
  printf '%s\t%s\t%s\t%ss\t%s\n' "$(date -u +%FT%TZ)" "$name" "$mod@$ver" "$(( $(date +%s) - t0 ))" \
    "load $(cut -d' ' -f1 /proc/loadavg)" >> "$TIMES"
  log "built $name in $(( $(date +%s) - t0 ))s"
}

check_version() {  # check_version BINARY WANT ARGS...: the binary must report WANT
  local bin="$1" want="$2" got
  shift 2
  got="$("$bin" "$@" 2>&1 | head -n 3 || true)"
  case "$got" in *"$want"*) ;; *) die "$bin does not report version $want: '$got'" ;; esac
}

build_pause() {  # build_pause VERSION DIR STAMP: the static pause (scripts/lib/pause.c) at VERSION in DIR/pause
  local version="$1" dir="$2" stamp="$STAMPS/$3" pstamp
  pstamp="$(sha256sum "$GPUOPS_REPO/scripts/lib/pause.c" | cut -c1-16) $version $(gcc -dumpversion 2>/dev/null || echo nogcc)"
  if [ ! -x "$dir/pause" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$pstamp" ]; then
    command -v gcc >/dev/null || die "gcc not found (apt-get install gcc libc6-dev)"
    mkdir -p "$dir"
    gcc -Os -Wall -Wextra -Werror -static -DPAUSE_VERSION="\"$version\"" -o "$dir/pause.tmp" \
      "$GPUOPS_REPO/scripts/lib/pause.c"
    strip "$dir/pause.tmp" && mv -f "$dir/pause.tmp" "$dir/pause"
    printf '%s' "$pstamp" > "$stamp"
    log "built pause $version (gcc -static)"
  fi
  check_version "$dir/pause" "$version" -v
}

build_binaries() {
  local ld
  go_build cni github.com/containernetworking/plugins "$V_cni_plugins" \
    "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$V_cni_plugins" \
    bridge:./plugins/main/bridge loopback:./plugins/main/loopback host-local:./plugins/ipam/host-local \
    portmap:./plugins/meta/portmap
  check_version "$OUT/cni/bridge" "$V_cni_plugins"
  go_build registry github.com/distribution/distribution/v3 "v$V_registry" \
    "-s -w -X github.com/distribution/distribution/v3/version.version=v$V_registry -X github.com/distribution/distribution/v3/version.revision=gpuops" \
    registry:./cmd/registry
  check_version "$OUT/registry/registry" "v$V_registry" --version
  ld="-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$V_kube_router"
  ld+=" -X github.com/cloudnativelabs/kube-router/v2/pkg/version.BuildDate=2026-01-01T00:00:00Z"
  go_build kube-router github.com/cloudnativelabs/kube-router/v2 "$V_kube_router" "$ld" kube-router:./cmd/kube-router
  check_version "$OUT/kube-router/kube-router" "$V_kube_router" --version
  go_build coredns github.com/coredns/coredns "$V_coredns" \
    "-s -w -X github.com/coredns/coredns/coremain.GitCommit=gpuops" coredns:.
  check_version "$OUT/coredns/coredns" "CoreDNS-${V_coredns#v}" -version
  build_pause "$V_pause" "$OUT/pause" pause
  # busybox: Debian's busybox-static of the pinned upstream version
  if [ ! -x "$OUT/busybox/busybox" ] || [ "$(cat "$STAMPS/busybox" 2>/dev/null)" = "" ]; then
    local deb dv
    rm -rf "$BUILD/busybox-deb" && mkdir -p "$BUILD/busybox-deb" "$OUT/busybox"
    (cd "$BUILD/busybox-deb" && apt-get download busybox-static >/dev/null 2>&1) \
      || die "apt-get download busybox-static failed (run apt-get update?)"
    deb="$(ls "$BUILD"/busybox-deb/busybox-static_*.deb)"
    dv="$(dpkg-deb -f "$deb" Version)"
    case "$dv" in "1:$V_busybox-"*) ;; *) die "Debian's busybox-static is $dv, not the pinned $V_busybox" ;; esac
    dpkg-deb -x "$deb" "$BUILD/busybox-deb/root"
    install -m 0755 "$BUILD/busybox-deb/root/bin/busybox" "$OUT/busybox/busybox"
    printf '%s' "busybox-static $dv" > "$STAMPS/busybox"
    rm -rf "$BUILD/busybox-deb"
  fi
  check_version "$OUT/busybox/busybox" "v$V_busybox" --help
  # Kubernetes + etcd: scripts/build/k8s.sh (waits on its lock when setup is running it)
  bash "$GPUOPS_REPO/scripts/build/k8s.sh" etcd kube-apiserver kube-controller-manager kube-scheduler kube-proxy
  # The CNI plugins tarball, in the GitHub release layout
  local cdir="$BUNDLE/bin/cni/$V_cni_plugins" tgz
  tgz="$cdir/cni-plugins-linux-$ARCH-$V_cni_plugins.tgz"
  if [ ! -f "$tgz" ] || [ "$(cat "$tgz.stamp" 2>/dev/null)" != "$(cat "$STAMPS/cni")" ]; then
    mkdir -p "$cdir"
    tar -C "$OUT/cni" --owner=0 --group=0 --mtime='2026-01-01 00:00:00' --sort=name -cf - \
      bridge host-local loopback portmap | gzip -n -6 > "$tgz.tmp"
    mv -f "$tgz.tmp" "$tgz"
    (cd "$cdir" && sha256sum "$(basename "$tgz")" > "$(basename "$tgz").sha256")
    cp "$STAMPS/cni" "$tgz.stamp"
    log "CNI plugins tarball $tgz"
  fi
}

# ---- images ---------------------------------------------------------------------------------------
archive_of() {  # REF -> path of its archive in the bundle
  local ref="$1" name tag
  name="${ref%:*}"; tag="${ref##*:}"
  printf '%s/images/%s_%s.tar' "$BUNDLE" "$(printf '%s' "$name" | tr '/' '_')" "$tag"
}

ref_of() {  # NAME -> pinned reference from the role defaults
  local line
  line="$(printf '%s\n' "$IMAGES" | awk -v n="$1" '$1 == n {print $2}')"
  [ -n "$line" ] || die "image '$1' is not in container_images_list ($VERSIONS_FILE)"
  printf '%s' "$line"
}

inputs_hash() {  # files... -> short hash of their contents + the image tool
  sha256sum "$@" "$GPUOPS_REPO/scripts/lib/oci_image.py" | cut -d' ' -f1 | sha256sum | cut -c1-32
}

# scratch_image NAME STAMP_INPUT_FILES -- oci_image.py build arguments...
scratch_image() {
  local name="$1" ref out stamp files=()
  shift
  while [ "$1" != -- ]; do files+=("$1"); shift; done
  shift
  ref="$(ref_of "$name")"; out="$(archive_of "$ref")"
  stamp="$ref $(inputs_hash "${files[@]}") $*"
  if [ -f "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$stamp" ]; then
    log "$ref up to date"
    return 0
  fi
  "${OCI[@]}" build "$out" --ref "$ref" "$@" > /dev/null
  printf '%s' "$stamp" > "$out.stamp"
  log "wrote $ref ($(( $(stat -c %s "$out") / 1024 / 1024 )) MiB)"
}

netbase_image() {
  local node_id stamp ctx="$BUILD/ctx/netbase"
  node_id="$(podman image inspect --format '{{.Id}}' "$NODE_IMAGE" 2>/dev/null)" \
    || bash "$GPUOPS_REPO/scripts/build/node-image.sh"
  node_id="$(podman image inspect --format '{{.Id}}' "$NODE_IMAGE")"
  stamp="$node_id ${NETBASE_PACKAGES[*]}"
  if podman image exists "$NETBASE_IMAGE" && [ "$(cat "$STAMPS/netbase" 2>/dev/null)" = "$stamp" ]; then
    return 0
  fi
  log "building $NETBASE_IMAGE ($NODE_IMAGE + ${NETBASE_PACKAGES[*]})"
  mkdir -p "$ctx"
  cat > "$ctx/Containerfile" <<EOF
# generated by scripts/build/cluster-images.sh: base of the kube-proxy and kube-router images
FROM $NODE_IMAGE
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
      ${NETBASE_PACKAGES[*]} >/dev/null && apt-get clean && rm -rf /var/lib/apt/lists/*
EOF
  podman build --pull=never -q -f "$ctx/Containerfile" -t "$NETBASE_IMAGE" "$ctx" >/dev/null
  printf '%s' "$stamp" > "$STAMPS/netbase"
}

# podman_image NAME CONTEXT_FILES... : FROM netbase, files copied to the paths in $ctx/Containerfile
podman_image() {   # [CTX]: another context dir (the previous minor's kube-proxy)
  local name="$1" ctx="${2:-$BUILD/ctx/$1}" ref out stamp base_id local_tag
  ref="$(ref_of "$name")"; out="$(archive_of "$ref")"
  netbase_image
  base_id="$(podman image inspect --format '{{.Id}}' "$NETBASE_IMAGE")"
  stamp="$ref $base_id $(cd "$ctx" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-32)"
  if [ -f "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$stamp" ]; then
    log "$ref up to date"
    return 0
  fi
  local_tag="localhost/gpuops-$name:${ref##*:}"
  podman build --pull=never -q -f "$ctx/Containerfile" -t "$local_tag" "$ctx" >/dev/null
  rm -f "$BUILD/podman-save.tar"
  podman save -q --format oci-archive -o "$BUILD/podman-save.tar" "$local_tag" >/dev/null
  "${NICE[@]}" "${OCI[@]}" normalize "$BUILD/podman-save.tar" "$out" --ref "$ref" > /dev/null
  rm -f "$BUILD/podman-save.tar"
  printf '%s' "$stamp" > "$out.stamp"
  log "wrote $ref ($(( $(stat -c %s "$out") / 1024 / 1024 )) MiB, from $local_tag)"
}

build_images() {
  local k b applets=() a t0
  t0=$(date +%s)
  for b in kube-apiserver kube-controller-manager kube-scheduler; do
    scratch_image "$b" "$GPUOPS_BIN/$b" -- --add "$GPUOPS_BIN/$b:/usr/local/bin/$b"
  done
  scratch_image etcd "$GPUOPS_BIN/etcd" -- --add "$GPUOPS_BIN/etcd:/usr/local/bin/etcd" \
    --dir /var/lib/etcd:700
  scratch_image pause "$OUT/pause/pause" -- --add "$OUT/pause/pause:/pause" --entrypoint '["/pause"]'
  scratch_image coredns "$OUT/coredns/coredns" -- --add "$OUT/coredns/coredns:/coredns" \
    --entrypoint '["/coredns"]' --expose 53/tcp --expose 53/udp
  # busybox: the binary plus a link per applet at its usual path (busybox --list-full)
  while read -r a; do
    [ "$a" = bin/busybox ] || applets+=(--link "/$a:/bin/busybox")
  done < <("$OUT/busybox/busybox" --list-full)
  scratch_image busybox "$OUT/busybox/busybox" -- --add "$OUT/busybox/busybox:/bin/busybox" \
    "${applets[@]}" --cmd '["sh"]'
  # distribution's registry, laid out as the upstream image (config in /etc/distribution)
  mkdir -p "$BUILD/ctx/registry"
  cat > "$BUILD/ctx/registry/config.yml" <<'EOF'
# gpuops.cluster site registry (scripts/registry): plain HTTP on :5000 inside its podman network
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: /var/lib/registry
  delete:
    enabled: false
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
EOF
  scratch_image registry "$OUT/registry/registry" "$BUILD/ctx/registry/config.yml" -- \
    --add "$OUT/registry/registry:/bin/registry" --add "$BUILD/ctx/registry/config.yml:/etc/distribution/config.yml:644" \
    --entrypoint '["registry"]' --cmd '["serve", "/etc/distribution/config.yml"]' \
    --env OTEL_TRACES_EXPORTER=none --expose 5000/tcp --volume /var/lib/registry --dir /var/lib/registry
  # kube-proxy: iptables/ip6tables/ipset/conntrack userland (kubeadm's DaemonSet runs /usr/local/bin/kube-proxy)
  mkdir -p "$BUILD/ctx/kube-proxy"
  install -m 0755 "$GPUOPS_BIN/kube-proxy" "$BUILD/ctx/kube-proxy/kube-proxy"
  cat > "$BUILD/ctx/kube-proxy/Containerfile" <<EOF
# generated by scripts/build/cluster-images.sh
FROM $NETBASE_IMAGE
COPY kube-proxy /usr/local/bin/kube-proxy
ENTRYPOINT ["/usr/local/bin/kube-proxy"]
CMD []
EOF
  podman_image kube-proxy
  # kube-router: laid out as upstream's image (binary, cni-install, CNI plugins in /usr/libexec/cni)
  k="$BUILD/ctx/kube-router"
  mkdir -p "$k/cni"
  install -m 0755 "$OUT/kube-router/kube-router" "$k/kube-router"
  for b in bridge host-local loopback portmap; do install -m 0755 "$OUT/cni/$b" "$k/cni/$b"; done
  cat > "$k/cni-install" <<'EOF'
#!/bin/sh
# Install the CNI plugins kube-router's conflist uses into the host's /opt/cni/bin (mounted at
# ${HOST_BIN_PATH:-/opt/cni/bin}) unless present: what upstream's image-assets/cni-install does.
set -eu
src="${LOCAL_BIN_PATH:-/usr/libexec/cni}"; dst="${HOST_BIN_PATH:-/opt/cni/bin}"
mkdir -p "$dst"
for b in bridge portmap host-local loopback; do
  if [ -x "$dst/$b" ]; then echo "CNI binary $dst/$b present"; continue; fi
  install -m 755 "$src/$b" "$dst/$b" && echo "installed $dst/$b"
done
EOF
  chmod 0755 "$k/cni-install"
  cat > "$k/Containerfile" <<EOF
# generated by scripts/build/cluster-images.sh
FROM $NETBASE_IMAGE
COPY kube-router cni-install /usr/local/bin/
COPY cni/ /usr/libexec/cni/
RUN mkdir -p /var/lib/gobgp
WORKDIR /root
ENTRYPOINT ["/usr/local/bin/kube-router"]
CMD []
EOF
  podman_image kube-router
  log "images checked in $(( $(date +%s) - t0 ))s"
}

# The previous minor's control-plane images (K8S_RELEASE=prev), same layout and tools as above.
# etcd and pause only when their tags differ (pause is the same scripts/lib/pause.c at the tag kubeadm
# pins: kubeadm's preflight pulls it even though containerd's sandbox image is the current one);
# CoreDNS is not rebuilt (k8s-releases.env says why).
build_images_prev() {
  local b t0 IMAGES GPUOPS_BIN="$PREV_BIN" names=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy)
  t0=$(date +%s)
  IMAGES="$(for b in "${names[@]}"; do printf '%s registry.k8s.io/%s:%s\n' "$b" "$b" "$K8S_PREV_VERSION"; done)"
  if [ "$K8S_PREV_ETCD_IMAGE_TAG" != "$V_etcd" ]; then
    IMAGES+=$'\n'"etcd registry.k8s.io/etcd:$K8S_PREV_ETCD_IMAGE_TAG"
  fi
  if [ "$K8S_PREV_PAUSE_VERSION" != "$V_pause" ]; then
    IMAGES+=$'\n'"pause registry.k8s.io/pause:$K8S_PREV_PAUSE_VERSION"
    local pdir="$OUT/pause-$K8S_PREV_PAUSE_VERSION"
    build_pause "$K8S_PREV_PAUSE_VERSION" "$pdir" "pause-$K8S_PREV_PAUSE_VERSION"
    scratch_image pause "$pdir/pause" -- --add "$pdir/pause:/pause" --entrypoint '["/pause"]'
  fi
  for b in kube-apiserver kube-controller-manager kube-scheduler; do
    check_version "$GPUOPS_BIN/$b" "$K8S_PREV_VERSION" --version
    scratch_image "$b" "$GPUOPS_BIN/$b" -- --add "$GPUOPS_BIN/$b:/usr/local/bin/$b"
  done
  if [ "$K8S_PREV_ETCD_IMAGE_TAG" != "$V_etcd" ]; then
    check_version "$GPUOPS_BIN/etcd" "${K8S_PREV_ETCD_VERSION#v}" --version
    scratch_image etcd "$GPUOPS_BIN/etcd" -- --add "$GPUOPS_BIN/etcd:/usr/local/bin/etcd" --dir /var/lib/etcd:700
  fi
  check_version "$GPUOPS_BIN/kube-proxy" "$K8S_PREV_VERSION" --version
  mkdir -p "$BUILD/ctx/kube-proxy-$K8S_PREV_VERSION"
  install -m 0755 "$GPUOPS_BIN/kube-proxy" "$BUILD/ctx/kube-proxy-$K8S_PREV_VERSION/kube-proxy"
  cp "$BUILD/ctx/kube-proxy/Containerfile" "$BUILD/ctx/kube-proxy-$K8S_PREV_VERSION/Containerfile" 2>/dev/null \
    || die "no $BUILD/ctx/kube-proxy/Containerfile: build the current release's images first"
  podman_image kube-proxy "$BUILD/ctx/kube-proxy-$K8S_PREV_VERSION"
  log "previous minor's images ($K8S_PREV_VERSION) checked in $(( $(date +%s) - t0 ))s"
}

# ---- the bundle's links and manifest.json ------------------------------------------------------------
build_bundle() {
  if [ ! -f "$MIRROR/SHA256SUMS" ]; then
    [ -z "${GPUOPS_MIRROR:-}" ] || die "no artifact mirror at $MIRROR (no SHA256SUMS)"
    log "no artifact mirror yet: running scripts/build/k8s-mirror.sh"
    bash "$GPUOPS_REPO/scripts/build/k8s-mirror.sh"
  fi
  ln -sfn "$(realpath --relative-to="$BUNDLE/bin" "$MIRROR/release")" "$BUNDLE/bin/release"
  ln -sfn "$(realpath --relative-to="$BUNDLE/bin" "$MIRROR/containerd")" "$BUNDLE/bin/containerd"
  [ ! -d "$MIRROR/openbao" ] || ln -sfn "$(realpath --relative-to="$BUNDLE/bin" "$MIRROR/openbao")" "$BUNDLE/bin/openbao"
  ln -sfn "$(realpath --relative-to="$BUNDLE/apt" "$MIRROR/core:")" "$BUNDLE/apt/core:"
  # charts by reference: a link to the charts directory, unless the bundle has its own charts/
  if [ -d "$CHARTS_DIR" ] && { [ -L "$BUNDLE/charts" ] || [ ! -e "$BUNDLE/charts" ]; }; then
    ln -sfn "$(cd "$CHARTS_DIR" && pwd -P)" "$BUNDLE/charts"
  fi
  "$GPUOPS_VENV/bin/python" - "$BUNDLE" "$VERSIONS_FILE" "$GPUOPS_REPO" "$K8S_PREV_VERSION" "$K8S_PREV_ETCD_IMAGE_TAG" \
    "$K8S_PREV_PAUSE_VERSION" <<'PY'
import hashlib, json, os, subprocess, sys
from pathlib import Path
bundle, versions_file, repo = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
prev_k8s, prev_etcd, prev_pause = sys.argv[4], sys.argv[5], sys.argv[6]
sys.path.insert(0, str(repo / "scripts" / "lib"))
import jinja2, yaml
import oci_image

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

def cached_sha256(path):
    """sha256 of a big file, cached next to the manifest by (size, mtime)."""
    st = path.stat()
    key = f"{path}:{st.st_size}:{st.st_mtime_ns}"
    if key not in cache:
        cache[key] = sha256(path)
    used[key] = cache[key]
    return cache[key]

cache_file = bundle / ".sha256-cache.json"
cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
used = {}
raw = yaml.safe_load(versions_file.read_text())
scalars = {k: v for k, v in raw.items() if isinstance(v, str) and "{{" not in v}
env = jinja2.Environment(undefined=jinja2.StrictUndefined)
versions = {k: v for k, v in sorted(raw.items()) if k.endswith("_version")}
def image_entry(iname, ref, nodes):
    """The manifest entry of `ref`'s image archive (archive_of), which must hold `ref`."""
    name, tag = ref.rsplit(":", 1)
    archive = archive_of(ref)
    info = oci_image.cmd_inspect(type("A", (), {"archive": str(archive)})())
    if info["ref"] != ref:
        sys.exit(f"cluster-images.sh: ERROR: {archive} holds {info['ref']}, expected {ref}")
    registry, _, path = name.partition("/")
    if registry == "docker.io" and "/" not in path:
        path = "library/" + path
    return {"name": iname, "ref": ref, "registry": registry, "repository": path, "tag": tag,
            "nodes": nodes, "digest": info["digest"], "mediaType": info["mediaType"],
            "config": info["config"], "platform": info["platform"],
            "size": sum(layer["size"] for layer in info["layers"]),
            "archive": str(archive.relative_to(bundle)), "archive_sha256": cached_sha256(archive)}

def archive_of(ref):
    name, tag = ref.rsplit(":", 1)
    return bundle / "images" / f"{name.replace('/', '_')}_{tag}.tar"

images = []
for img in raw["container_images_list"]:
    ref = f"{env.from_string(img['image']).render(**scalars)}:{env.from_string(img['tag']).render(**scalars)}"
    if not archive_of(ref).exists():
        sys.exit(f"cluster-images.sh: ERROR: {archive_of(ref)} missing (run the images step)")
    images.append(image_entry(img["name"], ref, img["nodes"]))
# Workload images built by their own parts (scripts/build/torchserve-image.sh): listed under
# "workloads" once their archive exists (a cold setup builds them in the other lane), pushed to the
# site registry with the rest, never pre-pulled on every node.
workloads = []
ts = oci_image.full_ref(yaml.safe_load((repo / "roles" / "torchserve" / "defaults" / "main.yml").read_text())["torchserve_image"])
for wname, ref in (("torchserve", ts),):
    if not archive_of(ref).exists():
        print(f"workload image {ref} not in the bundle yet (scripts/build/torchserve-image.sh)")
        continue
    workloads.append(image_entry(wname, ref, "none"))
binaries = []
mirror = bundle / "bin"
k8s = versions["container_images_kubernetes_version"]
for b in ("kubeadm", "kubelet", "kubectl"):
    p = mirror / "release" / f"v{k8s}" / "bin" / "linux" / "amd64" / b
    binaries.append({"name": b, "version": f"v{k8s}", "path": str(p.relative_to(bundle)), "sha256": cached_sha256(p)})
for p in sorted((mirror / "containerd").glob("v*/containerd-*-linux-amd64.tar.gz")):
    binaries.append({"name": "containerd", "version": p.parent.name, "path": str(p.relative_to(bundle)),
                     "sha256": cached_sha256(p)})
for p in sorted((mirror / "openbao").glob("*/linux/amd64/bao")):   # roles/vault (vault_version)
    binaries.append({"name": "openbao", "version": p.parents[2].name, "path": str(p.relative_to(bundle)),
                     "sha256": cached_sha256(p)})
cni = versions["container_images_cni_plugins_version"]
p = mirror / "cni" / cni / f"cni-plugins-linux-amd64-{cni}.tgz"
binaries.append({"name": "cni-plugins", "version": cni, "path": str(p.relative_to(bundle)), "sha256": cached_sha256(p),
                 "contents": ["bridge", "host-local", "loopback", "portmap"]})
apt = []
minor = ".".join(k8s.split(".")[:2])
repo_dir = bundle / "apt" / "core:" / "stable:" / f"v{minor}" / "deb"
files = sorted(f for f in repo_dir.rglob("*") if f.is_file() and not f.name.startswith("."))
apt.append({"name": "kubernetes", "version": f"v{minor}", "layout": "pkgs.k8s.io (flat, suite /)",
            "path": str(repo_dir.relative_to(bundle)) + "/",
            "files": [{"path": str(f.relative_to(bundle)), "sha256": cached_sha256(f)} for f in files]})
charts = []
cdir = bundle / "charts"
if cdir.is_dir():
    for p in sorted(cdir.glob("*.tgz")):
        stem = p.name[:-4]
        cname, _, cver = stem.rpartition("-")   # NAME-VERSION.tgz (helm package naming)
        charts.append({"name": cname, "version": cver, "path": f"charts/{p.name}", "source": str(p.resolve()),
                       "sha256": cached_sha256(p)})
manifest = {"schemaVersion": 1, "kind": "gpuops.cluster/airgap-bundle",
            "versions_file": str(versions_file.relative_to(repo)), "versions": versions,
            "images": images, "workloads": workloads, "binaries": binaries, "apt": apt, "charts": charts}
# The previous minor (scripts/build/k8s-releases.env, K8S_RELEASE=prev builds), listed only when
# every one of its artifacts is there; "images" above stays the current release's.
def previous_release():
    refs = [(n, f"registry.k8s.io/{n}:{prev_k8s}") for n in ("kube-apiserver", "kube-controller-manager",
                                                             "kube-scheduler", "kube-proxy")]
    if prev_etcd != versions["container_images_etcd_version"]:
        refs.append(("etcd", f"registry.k8s.io/etcd:{prev_etcd}"))
    if prev_pause != versions["container_images_pause_version"]:
        refs.append(("pause", f"registry.k8s.io/pause:{prev_pause}"))
    out = {"kubernetes": prev_k8s, "images": [], "binaries": [], "apt": []}
    for n, ref in refs:
        name, tag = ref.rsplit(":", 1)
        archive = bundle / "images" / f"{name.replace('/', '_')}_{tag}.tar"
        if not archive.exists():
            return None
        info = oci_image.cmd_inspect(type("A", (), {"archive": str(archive)})())
        registry, _, path = name.partition("/")
        out["images"].append({"name": n, "ref": ref, "registry": registry, "repository": path, "tag": tag,
                              "digest": info["digest"], "mediaType": info["mediaType"], "config": info["config"],
                              "platform": info["platform"], "size": sum(layer["size"] for layer in info["layers"]),
                              "archive": str(archive.relative_to(bundle)), "archive_sha256": cached_sha256(archive)})
    for b in ("kubeadm", "kubelet", "kubectl"):
        p = mirror / "release" / prev_k8s / "bin" / "linux" / "amd64" / b
        if not p.exists():
            return None
        out["binaries"].append({"name": b, "version": prev_k8s, "path": str(p.relative_to(bundle)), "sha256": cached_sha256(p)})
    pminor = ".".join(prev_k8s.lstrip("v").split(".")[:2])
    pdir = bundle / "apt" / "core:" / "stable:" / f"v{pminor}" / "deb"
    pfiles = sorted(f for f in pdir.rglob("*") if f.is_file() and not f.name.startswith("."))
    if not pfiles:
        return None
    out["apt"].append({"name": "kubernetes", "version": f"v{pminor}", "layout": "pkgs.k8s.io (flat, suite /)",
                       "path": str(pdir.relative_to(bundle)) + "/",
                       "files": [{"path": str(f.relative_to(bundle)), "sha256": cached_sha256(f)} for f in pfiles]})
    return out
prev = previous_release()
if prev:
    manifest["previous"] = [prev]
text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
out = bundle / "manifest.json"
if not out.exists() or out.read_text() != text:
    out.with_suffix(".tmp").write_text(text)
    os.replace(out.with_suffix(".tmp"), out)
    print(f"manifest.json written: {len(images)} images, {len(workloads)} workload images, {len(binaries)} binaries, "
          f"{sum(len(a['files']) for a in apt)} apt files, {len(charts)} charts")
else:
    print(f"manifest.json up to date: {len(images)} images, {len(binaries)} binaries, {len(charts)} charts")
cache_file.write_text(json.dumps(used, indent=0, sort_keys=True))
PY
}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(binaries images bundle)
if [ "${K8S_RELEASE:-current}" = prev ]; then
  # the previous minor: its images, then the manifest (its binaries were built before the lock)
  [ "$*" = "" ] && steps=(images bundle)
  for s in "${steps[@]}"; do
    case "$s" in
      images) build_images_prev ;;
      bundle) build_bundle ;;
      *) die "K8S_RELEASE=prev has the steps images and bundle, not '$s'" ;;
    esac
  done
  log "bundle ready (with $K8S_PREV_VERSION): $BUNDLE"
  exit 0
fi
for s in "${steps[@]}"; do
  case "$s" in
    binaries) build_binaries ;;
    images) build_images ;;
    bundle) build_bundle ;;
    *) die "unknown step '$s' (known: binaries images bundle)" ;;
  esac
done
log "bundle ready: $BUNDLE"
