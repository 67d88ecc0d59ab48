#!/usr/bin/env bash
# Build the TorchServe test bed, idempotently (a warm run is a fast no-op):
#   1. download the pinned wheels once into $GPUOPS_CACHE/wheels (torch is the PyPI CUDA build,
#      ~2.8 GiB with its nvidia-* dependencies; it runs on CPU);
#   2. create $GPUOPS_CACHE/torchserve-venv (its own venv, NOT the main one) and install the
#      wheels offline (--no-index --find-links);
#   3. build the preset model archives (model "classifier", versions 1.0/2.0/3.0) into
#      $GPUOPS_CACHE/model-store, cached by content hash (tests/testbed/model/build.py).
#
# Env knobs: GPUOPS_CACHE (see scripts/env.sh), TS_FORCE=1 rebuilds the venv from the cached wheels.
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "$0")/../env.sh"
log() { printf '==> [torchserve %s] %s\n' "$(date +%T)" "$*"; }

TS_VENV="$GPUOPS_CACHE/torchserve-venv"
WHEELS="$GPUOPS_CACHE/wheels"
# torchserve 0.12.0 supports torch 2.4.x; pyyaml is needed by torchserve but not declared by it.
# Every transitive dependency is pinned too, so the offline install is reproducible.
LOCK=(
  torch==2.4.1 torchserve==0.12.0 torch-model-archiver==0.12.0 pyyaml==6.0.2 numpy==1.26.4
  triton==3.0.0
  nvidia-cublas-cu12==12.1.3.1 nvidia-cuda-cupti-cu12==12.1.105 nvidia-cuda-nvrtc-cu12==12.1.105
  nvidia-cuda-runtime-cu12==12.1.105 nvidia-cudnn-cu12==9.1.0.70 nvidia-cufft-cu12==11.0.2.54
  nvidia-curand-cu12==10.3.2.106 nvidia-cusolver-cu12==11.4.5.107 nvidia-cusparse-cu12==12.1.0.106
  nvidia-nccl-cu12==2.20.5 nvidia-nvjitlink-cu12==12.9.86 nvidia-nvtx-cu12==12.1.105
  enum-compat==0.0.3 filelock==4.3.1 fsspec==2026.9.0 jinja2==3.1.6 markupsafe==3.0.4 mpmath==1.3.0
  networkx==3.6.1 packaging==26.4 pillow==13.0.0 psutil==7.2.2 sympy==1.14.0
  typing-extensions==4.16.0 wheel==0.48.0
)
WANT=$(printf '%s\n' "${LOCK[@]}" | sha256sum | cut -c1-16)

command -v java >/dev/null || { echo "java not found: TorchServe's frontend needs Java 17 (apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
[ "${java_major:-0}" -ge 11 ] || { echo "Java ${java_major:-?} found, TorchServe 0.12 needs >= 11 (17 recommended)" >&2; exit 1; }

# -- 1. venv (python3 of the host) ---------------------------------------------------------
if [ ! -x "$TS_VENV/bin/python" ]; then
  log "creating venv $TS_VENV"
  python3 -m venv "$TS_VENV"
fi

# -- 2. wheels, downloaded once ------------------------------------------------------------
mkdir -p "$WHEELS"
if [ "$(cat "$WHEELS/.torchserve.lock" 2>/dev/null)" = "$WANT" ]; then
  log "wheels cached in $WHEELS"
else
  log "downloading pinned wheels into $WHEELS (torch CUDA build, ~2.8 GiB)"
  t0=$(date +%s)
  nice -n 10 "$TS_VENV/bin/python" -m pip download -q --only-binary=:all: --no-deps -d "$WHEELS" "${LOCK[@]}"
  echo "$WANT" > "$WHEELS/.torchserve.lock"
  log "downloaded in $(( $(date +%s) - t0 ))s, $(du -sh "$WHEELS" | cut -f1)"
fi

# -- 3. offline install ----------------------------------------------------------------------
if [ "${TS_FORCE:-0}" != 1 ] && [ "$(cat "$TS_VENV/.lock" 2>/dev/null)" = "$WANT" ]; then
  log "torchserve venv up to date"
else
  log "installing torch + torchserve into $TS_VENV (offline, from $WHEELS)"
  t0=$(date +%s)
  nice -n 10 "$TS_VENV/bin/python" -m pip install -q --no-index --find-links "$WHEELS" "${LOCK[@]}"
  "$TS_VENV/bin/python" -c 'import torch, ts, yaml, model_archiver; print("torch", torch.__version__)'
  echo "$WANT" > "$TS_VENV/.lock"
  log "installed in $(( $(date +%s) - t0 ))s, venv $(du -sh "$TS_VENV" | cut -f1)"
fi

# -- 4. preset model archives (content-hash cached; a warm run only hashes files) ---------------
log "model archives"
cd "$GPUOPS_REPO"
"$TS_VENV/bin/python" -m tests.testbed.model.build --presets
