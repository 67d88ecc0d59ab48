#!/usr/bin/env bash
# Setup part `k8s-prev` (in scripts/setup's default since 2026-11-30: the cluster tier brings the lab
# up at this minor and upgrades it with playbooks/upgrade.yml): the previous Kubernetes minor, pinned in
# scripts/build/k8s-releases.env, built beside the current release and never over it:
#   $GPUOPS_CACHE/bin-v1.35.4/          kubeadm kubelet kubectl kube-proxy kube-scheduler
#                                       kube-controller-manager kube-apiserver etcd (stamps in .stamps/)
#   mirror/release/v1.35.4/...          release binaries (dl.k8s.io layout)
#   mirror/core:/stable:/v1.35/deb/     the v1.35 apt repository (pkgs.k8s.io layout, per minor)
#   bundle/images/*_v1.35.4.tar (+ etcd 3.6.6-0)   control-plane images; manifest.json "previous"
# Everything runs under `nice -n 19` (the lab cluster and the tests keep the CPU). Idempotent: a
# warm run only re-checks stamps. The measured cold cost is in docs/measurements.md.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export K8S_RELEASE=prev
nice -n 19 bash "$here/k8s.sh"
nice -n 19 bash "$here/k8s-mirror.sh"
nice -n 19 bash "$here/cluster-images.sh"
