# shellcheck shell=bash
# Source me: sets up the environment every gpuops.cluster script and test uses.
#   GPUOPS_CACHE   where everything built or downloaded lives (outside the repo)
#   venv, Go-built binaries, node image tarball, torch wheels are all under it.
GPUOPS_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
export GPUOPS_REPO
export GPUOPS_CACHE="${GPUOPS_CACHE:-$HOME/.cache/gpuops}"
export GPUOPS_VENV="$GPUOPS_CACHE/venv"
export GPUOPS_BIN="$GPUOPS_CACHE/bin"
mkdir -p "$GPUOPS_CACHE" "$GPUOPS_BIN"
# The collection must be importable as ansible_collections.gpuops.cluster: a symlink in the cache.
GPUOPS_COLLECTIONS="$GPUOPS_CACHE/collections/$(printf '%s' "$GPUOPS_REPO" | md5sum | cut -c1-8)"
mkdir -p "$GPUOPS_COLLECTIONS/ansible_collections/gpuops"
ln -sfn "$GPUOPS_REPO" "$GPUOPS_COLLECTIONS/ansible_collections/gpuops/cluster"
export GPUOPS_COLLECTIONS
export ANSIBLE_COLLECTIONS_PATH="$GPUOPS_COLLECTIONS"
export ANSIBLE_ROLES_PATH="$GPUOPS_REPO/roles"
export PATH="$GPUOPS_VENV/bin:$GPUOPS_BIN:/usr/local/go/bin:$PATH"
export PYTHONPATH="$GPUOPS_REPO:$GPUOPS_COLLECTIONS${PYTHONPATH:+:$PYTHONPATH}"
export ANSIBLE_CONFIG="$GPUOPS_REPO/ansible.cfg"
