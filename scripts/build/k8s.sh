#!/usr/bin/env bash
# Build the Kubernetes API test bed binaries from source with the Go toolchain, into $GPUOPS_BIN:
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok, kubectl, kubeadm, kubelet,
#   kube-proxy, etcdctl, etcdutl
# (kube-scheduler binds the test bed's Pods to the fake kwok GPU nodes, honouring nodeSelector and
# nvidia.com/gpu requests). kwok's upstream default Stage manifests (node-initialize, heartbeat with
# lease, pod ready/complete/delete) are copied unchanged to $GPUOPS_CACHE/share/kwok/VERSION/stages.
# (kubeadm/kubelet only feed the kubernetes_packages role's air-gapped mirror tests; built last;
# kube-proxy only feeds the air-gap bundle's image, scripts/build/cluster-images.sh; etcdctl/etcdutl
# only feed the mirror's etcd release tarball, scripts/build/k8s-mirror.sh, for the etcd backup and
# restore roles).
#
# Idempotent: each binary has a stamp file ($GPUOPS_BIN/.stamps/NAME) holding what it was built from;
# a binary is rebuilt only when it is missing or its stamp differs. A warm run is a fast no-op.
# Sources come from the Go module proxy only (GOPROXY); builds happen in small wrapper modules under
# $GPUOPS_CACHE/build/k8s (never in the repo), which pin every k8s.io staging module to one version.
#
#   bash scripts/build/k8s.sh                 all binaries
#   bash scripts/build/k8s.sh etcd kwok       only the named ones
#   K8S_BUILD_SKIP=kubelet bash scripts/build/k8s.sh   skip some (space separated)
#
# Times and sizes of each build are appended to $GPUOPS_CACHE/build/k8s/build-times.tsv.
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "$0")/../env.sh"

# ---- pinned versions -----------------------------------------------------------------------------
K8S_VERSION="v1.36.3"                     # k8s.io/kubernetes
K8S_STAGING_VERSION="v0.36.3"             # every k8s.io/<staging> module of that release
ETCD_VERSION="v3.6.8"                     # go.etcd.io/etcd/server/v3 (what k8s v1.36.3's go.mod uses)
KWOK_VERSION="v0.8.0"                     # sigs.k8s.io/kwok
# Staging modules listed in k8s.io/kubernetes v1.36.3 go.mod's replace block. sample-cli-plugin is
# not published on the module proxy and nothing we build imports it.
K8S_STAGING_MODULES=(
  api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
  cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api
  cri-client cri-streaming csi-translation-lib dynamic-resource-allocation endpointslice externaljwt
  kms kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics
  mount-utils pod-security-admission sample-apiserver sample-controller streaming
)
ALL_BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok kubectl kubeadm kubelet kube-proxy
              etcdctl etcdutl)
BUILD_ROOT="$GPUOPS_CACHE/build/k8s"
# K8S_RELEASE=prev: the previous minor (pins in scripts/build/k8s-releases.env), built beside the
# current one and never over it: own binaries ($GPUOPS_CACHE/bin-vX, stamps in it), own wrapper
# modules and lock ($GPUOPS_CACHE/build/k8s-vX), only the binaries an upgrade needs (no kwok).
case "${K8S_RELEASE:-current}" in
  current) ;;
  prev)
    # shellcheck source=scripts/build/k8s-releases.env
    source "$(dirname "$0")/k8s-releases.env"
    K8S_VERSION="$K8S_PREV_VERSION"
    K8S_STAGING_VERSION="$K8S_PREV_STAGING_VERSION"
    ETCD_VERSION="$K8S_PREV_ETCD_VERSION"
    K8S_STAGING_MODULES=("${K8S_PREV_STAGING_MODULES[@]}")
    ALL_BINARIES=("${K8S_PREV_BINARIES[@]}")
    GPUOPS_BIN="$GPUOPS_CACHE/bin-$K8S_VERSION"
    BUILD_ROOT="$GPUOPS_CACHE/build/k8s-$K8S_VERSION" ;;
  *) printf 'k8s.sh: ERROR: K8S_RELEASE must be current or prev, not %s\n' "$K8S_RELEASE" >&2; exit 2 ;;
esac

GO="${GO:-/usr/local/go/bin/go}"
STAMPS="$GPUOPS_BIN/.stamps"
TIMES="$BUILD_ROOT/build-times.tsv"
mkdir -p "$BUILD_ROOT" "$STAMPS"
# One build at a time (scripts/build/k8s-mirror.sh calls this script too): a second caller waits,
# then finds the stamps up to date.
exec 9>"$BUILD_ROOT/.lock"
if ! flock -n 9; then
  printf '==> [k8s.sh %s] another k8s.sh build is running; waiting for it\n' "$(date +%T)"
  flock 9
fi

export GOTOOLCHAIN=local                  # never download another toolchain
export CGO_ENABLED=0                      # static binaries, like the upstream release builds
export GOFLAGS="-trimpath -buildvcs=false -mod=mod"
export GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"

log() { printf '==> [k8s.sh %s] %s\n' "$(date +%T)" "$*"; }
die() { printf 'k8s.sh: ERROR: %s\n' "$*" >&2; exit 1; }

[ -x "$GO" ] || die "Go toolchain not found at $GO (need go >= 1.26 for kubernetes $K8S_VERSION)"
GO_VERSION="$("$GO" env GOVERSION)"

# k8s ldflags: what hack/lib/version.sh stamps, so `kube-apiserver --version` says v1.36.3.
k8s_ldflags() {
  local major minor flags="-s -w" pkg
  major="${K8S_VERSION#v}"; major="${major%%.*}"
  minor="${K8S_VERSION#v*.}"; minor="${minor%%.*}"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=2026-07-22T18:07:38Z"
  done
  printf '%s' "$flags"
}

# Wrapper module: $1 dir, $2 module path it requires, $3 version, $4 "k8s" to pin staging modules,
# $5 optional extra replace lines ("module => module version", one a line).
wrapper_module() {
  local dir="$1" req="$2" ver="$3" pin="${4:-}" extra="${5:-}" m
  mkdir -p "$dir"
  {
    printf '// generated by scripts/build/k8s.sh: do not edit\nmodule gpuops.local/build/%s\n\n' "$(basename "$dir")"
    printf 'go 1.26.0\n\nrequire %s %s\n' "$req" "$ver"
    if [ "$pin" = k8s ]; then
      printf '\nreplace (\n'
      for m in "${K8S_STAGING_MODULES[@]}"; do
        printf '\tk8s.io/%s => k8s.io/%s %s\n' "$m" "$m" "$K8S_STAGING_VERSION"
      done
      printf ')\n'
    fi
    if [ -n "$extra" ]; then
      printf '\nreplace (\n'
      printf '%s\n' "$extra" | sed 's/^/\t/'
      printf ')\n'
    fi
  } > "$dir/go.mod.want"
  # Only touch go.mod (and drop go.sum) when the wanted header changed: keeps warm runs cheap.
  if ! cmp -s "$dir/go.mod.want" "$dir/go.mod.base" 2>/dev/null; then
    cp "$dir/go.mod.want" "$dir/go.mod"
    cp "$dir/go.mod.want" "$dir/go.mod.base"
    rm -f "$dir/go.sum"
  fi
}

# build_one NAME MODULE_DIR MODULE VERSION PACKAGE LDFLAGS STAMP
build_one() {
  local name="$1" dir="$2" mod="$3" ver="$4" pkg="$5" ldflags="$6" stamp="$7" out="$GPUOPS_BIN/$1"
  local t0 t1 size got
  if [ -x "$out" ] && [ -f "$STAMPS/$name" ] && [ "$(cat "$STAMPS/$name")" = "$stamp" ]; then
    log "$name up to date ($stamp)"
    return 0
  fi
  log "building $name from $pkg ($stamp)"
  t0=$(date +%s)
  (
    cd "$dir"
    # pkg@version: a bare `go get pkg` would upgrade to the newest release.
    nice -n 10 "$GO" get "$pkg@$ver" 2>&1 | grep -v '^go: downloading' || true
    nice -n 10 "$GO" build -ldflags "$ldflags" -o "$out.tmp" "$pkg"
  ) || { rm -f "$out.tmp"; die "go build of $name ($pkg) failed; see the output above"; }
  # Prove the binary embeds the pinned module version (guards against a silent upgrade).
  got="$("$GO" version -m "$out.tmp" | awk -v m="$mod" '($1 == "dep" || $1 == "mod") && $2 == m {print $3}')"
  if [ "$got" != "$ver" ]; then
    rm -f "$out.tmp"
    die "$name was built from $mod ${got:-<unknown>} instead of the pinned $ver"
  fi
  mv -f "$out.tmp" "$out"
  printf '%s' "$stamp" > "$STAMPS/$name"
  t1=$(date +%s)
  size=$(stat -c %s "$out")
  printf '%s\t%s\t%s\t%ss\t%s bytes\t%s\n' "$(date -u +%FT%TZ)" "$name" "$stamp" "$((t1 - t0))" "$size" "$(nproc) cpus" >> "$TIMES"
  log "built $name in $((t1 - t0))s ($((size / 1024 / 1024)) MiB)"
}

# The kwok binary refuses to start without Stage objects (kwokctl normally supplies them): keep the
# upstream defaults, unchanged, next to the binary for tests/testbed/k8s.py.
kwok_stages() {
  local dest="$GPUOPS_CACHE/share/kwok/$KWOK_VERSION/stages" src f
  src="$(cd "$BUILD_ROOT/kwok" && "$GO" list -m -f '{{.Dir}}' sigs.k8s.io/kwok)/kustomize/stage"
  mkdir -p "$dest"
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    [ -f "$src/$f" ] || die "kwok $KWOK_VERSION has no default stage $f"
    cmp -s "$src/$f" "$dest/$(basename "$f")" || install -m 0644 "$src/$f" "$dest/$(basename "$f")"
  done
}

# "module => module version" for every module kubernetes' wrapper selected (staging ones excluded:
# they are pinned by wrapper_module already).
k8s_dependency_pins() {
  (cd "$BUILD_ROOT/kubernetes" && "$GO" list -m -f \
    '{{if and (not .Main) (not .Replace)}}{{.Path}} => {{.Path}} {{.Version}}{{end}}' all) \
    | grep -v -e '^k8s.io/kubernetes ' -e '^$' || true
}

build_binary() {
  local name="$1" ld
  ld="$(k8s_ldflags)"
  case "$name" in
    etcd)
      wrapper_module "$BUILD_ROOT/etcd" go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
      build_one etcd "$BUILD_ROOT/etcd" go.etcd.io/etcd/server/v3 "$ETCD_VERSION" \
        go.etcd.io/etcd/server/v3 "-s -w" \
        "go.etcd.io/etcd/server/v3@$ETCD_VERSION $GO_VERSION" ;;
    etcdctl|etcdutl)
      # the etcd release's two client tools (one module each), at the server's pinned version
      wrapper_module "$BUILD_ROOT/$name" "go.etcd.io/etcd/$name/v3" "$ETCD_VERSION"
      build_one "$name" "$BUILD_ROOT/$name" "go.etcd.io/etcd/$name/v3" "$ETCD_VERSION" \
        "go.etcd.io/etcd/$name/v3" "-s -w" \
        "go.etcd.io/etcd/$name/v3@$ETCD_VERSION $GO_VERSION" ;;
    kube-apiserver|kube-controller-manager|kube-scheduler|kubectl|kubeadm|kubelet|kube-proxy)
      wrapper_module "$BUILD_ROOT/kubernetes" k8s.io/kubernetes "$K8S_VERSION" k8s
      build_one "$name" "$BUILD_ROOT/kubernetes" k8s.io/kubernetes "$K8S_VERSION" \
        "k8s.io/kubernetes/cmd/$name" "$ld" \
        "k8s.io/kubernetes@$K8S_VERSION staging@$K8S_STAGING_VERSION $GO_VERSION" ;;
    kwok)
      [ "${K8S_RELEASE:-current}" = current ] || die "kwok is built for the current release only"
      # kwok v0.8.0 asks for k8s.io/* v0.36.1; pin it to the same staging release as the cluster.
      # It also asks for slightly newer golang.org/x/*, grpc, otel... than kubernetes v1.36.3 does,
      # which would recompile the whole k8s.io client stack (~25 min on 2 busy cores). First try
      # with every shared module pinned to the kubernetes wrapper's selection (reuses the build
      # cache); if kwok does not compile that way, fall back to kwok's own versions.
      local s_pinned="sigs.k8s.io/kwok@$KWOK_VERSION deps-of-k8s.io/kubernetes@$K8S_VERSION $GO_VERSION"
      local s_own="sigs.k8s.io/kwok@$KWOK_VERSION staging@$K8S_STAGING_VERSION $GO_VERSION"
      local have pins=""
      have="$(cat "$STAMPS/kwok" 2>/dev/null || true)"
      if [ -x "$GPUOPS_BIN/kwok" ] && { [ "$have" = "$s_pinned" ] || [ "$have" = "$s_own" ]; }; then
        log "kwok up to date ($have)"
        kwok_stages
        return 0
      fi
      [ -f "$BUILD_ROOT/kubernetes/go.sum" ] && pins="$(k8s_dependency_pins)"
      if [ -n "$pins" ]; then
        wrapper_module "$BUILD_ROOT/kwok" sigs.k8s.io/kwok "$KWOK_VERSION" k8s "$pins"
        if ( build_one kwok "$BUILD_ROOT/kwok" sigs.k8s.io/kwok "$KWOK_VERSION" \
               sigs.k8s.io/kwok/cmd/kwok "-s -w" "$s_pinned" ); then
          kwok_stages
          return 0
        fi
        log "kwok does not build with kubernetes' dependency versions; using its own"
      fi
      wrapper_module "$BUILD_ROOT/kwok" sigs.k8s.io/kwok "$KWOK_VERSION" k8s
      build_one kwok "$BUILD_ROOT/kwok" sigs.k8s.io/kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok \
        "-s -w" "$s_own"
      kwok_stages ;;
    *) die "unknown binary '$name' (known: ${ALL_BINARIES[*]})" ;;
  esac
}

wanted=("$@")
[ ${#wanted[@]} -eq 0 ] && wanted=("${ALL_BINARIES[@]}")
for b in "${wanted[@]}"; do
  case " ${K8S_BUILD_SKIP:-} " in *" $b "*) log "skipping $b (K8S_BUILD_SKIP)"; continue ;; esac
  build_binary "$b"
done
present=()
for b in "${wanted[@]}"; do [ -x "$GPUOPS_BIN/$b" ] && present+=("$b"); done
log "done, in $GPUOPS_BIN: ${present[*]}"
