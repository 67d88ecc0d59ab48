#!/usr/bin/env bash
# Build the OpenBao server binary (`bao`) from source via the Go module proxy into $GPUOPS_BIN/bao.
#
# Why this is not a plain `go install`: the main module's go.mod says
# `module github.com/openbao/openbao` (no /v2) while its release tags are v2.x, so the proxy serves
# no semver version of it; it only serves a pseudo-version naming the release commit. Its go.mod
# also replaces github.com/openbao/openbao/{api,sdk}/v2 with nested directories (./api, ./sdk) that
# module zips exclude. We therefore download the release commit's pseudo-version plus the api/v2 and
# sdk/v2 modules at the matching release version, copy the source under $GPUOPS_CACHE/build and
# rewrite the go.mod to use the downloaded modules. See docs/testing/openbao.md for what was tried.
#
# Idempotent: a version stamp next to the binary makes a second run a fast no-op.
#   OPENBAO_FORCE=1 scripts/build/openbao.sh   rebuild anyway
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "$0")/../env.sh"

# Pinned release: OpenBao v2.4.0 = commit f9407a27fbee45f62ba521bba2bf1e2360c61031 (2025-08-28).
OPENBAO_VERSION="2.4.0"
OPENBAO_COMMIT="f9407a27fbee45f62ba521bba2bf1e2360c61031"
OPENBAO_PSEUDO="v0.0.0-20250828202315-f9407a27fbee"
OPENBAO_API_VERSION="v2.4.0"          # github.com/openbao/openbao/api/v2, as required by that go.mod
OPENBAO_SDK_VERSION="v2.4.0"          # github.com/openbao/openbao/sdk/v2
OPENBAO_K8S_AUTH_VERSION="v2.0.1"     # github.com/openbao/openbao/api/auth/kubernetes/v2 (indirect)
# Upstream release builds (Makefile `bin`, goreleaser.linux.yaml) use CGO_ENABLED=0 and the single
# build tag `ui`; the UI is not needed here, so no tags.
OPENBAO_TAGS=""

GO="${GO:-/usr/local/go/bin/go}"
MAIN_MOD="github.com/openbao/openbao"
STAMP_WANT="openbao ${OPENBAO_VERSION} ${OPENBAO_COMMIT} api=${OPENBAO_API_VERSION} sdk=${OPENBAO_SDK_VERSION} tags=${OPENBAO_TAGS} $("$GO" env GOVERSION)"
OUT="$GPUOPS_BIN/bao"
STAMP="$GPUOPS_BIN/.bao.stamp"
log() { printf '==> [openbao %s] %s\n' "$(date +%T)" "$*"; }

if [ -z "${OPENBAO_FORCE:-}" ] && [ -x "$OUT" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_WANT" ]; then
  log "up to date: $OUT ($STAMP_WANT)"
  exit 0
fi

# Everything Go downloads or caches stays under $GPUOPS_CACHE.
export GOMODCACHE="$GPUOPS_CACHE/go/mod"
export GOCACHE="$GPUOPS_CACHE/go/cache"
export GOTOOLCHAIN=local
export CGO_ENABLED=0
export GOFLAGS="-mod=mod"
mkdir -p "$GOMODCACHE" "$GOCACHE" "$GPUOPS_CACHE/build"

# `go mod download -json` prints the module's directory in the module cache.
mod_dir() {
  local json dir
  json=$(cd "$GPUOPS_CACHE/build" && "$GO" mod download -json "$1")
  dir=$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
  if [ -z "$dir" ] || [ ! -d "$dir" ]; then
    printf 'cannot download %s:\n%s\n' "$1" "$json" >&2
    exit 1
  fi
  printf '%s\n' "$dir"
}

t0=$(date +%s)
log "downloading $MAIN_MOD@$OPENBAO_PSEUDO (v$OPENBAO_VERSION) and api/sdk $OPENBAO_API_VERSION/$OPENBAO_SDK_VERSION"
src=$(mod_dir "$MAIN_MOD@$OPENBAO_PSEUDO")
api=$(mod_dir "$MAIN_MOD/api/v2@$OPENBAO_API_VERSION")
sdk=$(mod_dir "$MAIN_MOD/sdk/v2@$OPENBAO_SDK_VERSION")
mod_dir "$MAIN_MOD/api/auth/kubernetes/v2@$OPENBAO_K8S_AUTH_VERSION" >/dev/null

# Fresh writable copy of the source (the module cache is read-only).
work="$GPUOPS_CACHE/build/openbao-$OPENBAO_VERSION"
rm -rf "$work"
cp -r "$src" "$work"
chmod -R u+w "$work"
cd "$work"

# Rewrite the replace directives that point into directories absent from the module zip:
#  - api/v2, sdk/v2: the downloaded release modules (kept as a replace so the version is explicit);
#  - api/auth/{approle,userpass}/v2: only imported by *_test.go files; their pinned v2.0.0 was never
#    published, so they are dropped from the build graph;
#  - api/auth/kubernetes/v2: the published v2.0.1 it already requires;
#  - github.com/boltdb/bolt => ./helper/stubbolt (a nested module, also excluded): no non-test
#    package imports bolt, the real v1.3.1 satisfies the module graph.
"$GO" mod edit \
  -dropreplace="$MAIN_MOD/api/v2" \
  -dropreplace="$MAIN_MOD/sdk/v2" \
  -dropreplace="$MAIN_MOD/api/auth/approle/v2" \
  -dropreplace="$MAIN_MOD/api/auth/userpass/v2" \
  -dropreplace="$MAIN_MOD/api/auth/kubernetes/v2" \
  -dropreplace=github.com/boltdb/bolt \
  -droprequire="$MAIN_MOD/api/auth/approle/v2" \
  -droprequire="$MAIN_MOD/api/auth/userpass/v2" \
  -replace="$MAIN_MOD/api/v2=$MAIN_MOD/api/v2@$OPENBAO_API_VERSION" \
  -replace="$MAIN_MOD/sdk/v2=$MAIN_MOD/sdk/v2@$OPENBAO_SDK_VERSION"
log "api/v2 from $api"
log "sdk/v2 from $sdk"

log "building (nice -n 10, -trimpath, CGO_ENABLED=0, tags='${OPENBAO_TAGS}')"
tb=$(date +%s)
nice -n 10 "$GO" build -trimpath -tags "$OPENBAO_TAGS" \
  -ldflags "-s -w -X $MAIN_MOD/version.fullVersion=$OPENBAO_VERSION -X $MAIN_MOD/version.GitCommit=$OPENBAO_COMMIT -X $MAIN_MOD/version.BuildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  -o "$OUT.tmp" .
mv "$OUT.tmp" "$OUT"
printf '%s\n' "$STAMP_WANT" > "$STAMP"
t1=$(date +%s)
size=$(stat -c %s "$OUT")
log "built $OUT: $("$OUT" version) ; $((size / 1024 / 1024)) MiB ($size bytes); compile $((t1 - tb)) s, total $((t1 - t0)) s"
