#!/usr/bin/env bash
# Build the lab's node image: localhost/gpuops-node:bookworm (scripts/build/node-image.sh) plus the
# Debian packages a Kubernetes node needs at run time and the host-sysctl shield unit (docs/lab.md).
# containerd, kubeadm, kubelet and kubectl are NOT in the image: the collection's roles install them
# from the local artifact mirror, as on a real air-gapped site.
#
#   scripts/build/lab-node-image.sh            build if missing or if the recipe/base changed (else no-op)
#   scripts/build/lab-node-image.sh --force    rebuild
#
# Idempotent: the image carries io.gpuops.recipe=<sha256 of this script + base image id>.
# Environment: GPUOPS_LAB_NODE_IMAGE (default localhost/gpuops-lab-node:bookworm).
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "$0")/../env.sh"
export CONTAINERS_CONF="${GPUOPS_CONTAINERS_CONF:-$GPUOPS_REPO/molecule/containers.conf}"

BASE="${GPUOPS_NODE_IMAGE:-localhost/gpuops-node:bookworm}"
IMAGE="${GPUOPS_LAB_NODE_IMAGE:-localhost/gpuops-lab-node:bookworm}"
# iptables/conntrack/ipset/ethtool/socat: kubelet, kube-proxy and kube-router preflight and data
# path; keepalived: the API server VIP; runc: containerd's runtime; python3-debian/gnupg: the
# kubernetes_packages role's deb822 repository; ebtables: kubeadm preflight; chrony: os_baseline's
# time sync. Every Debian package a node needs at run time is here: the image keeps no Debian apt
# source (an air-gapped site's nodes reach only its own mirrors; the lab's: the artifact mirror).
PACKAGES=(iptables conntrack ipset ethtool socat ebtables keepalived runc python3-debian gnupg
          ca-certificates curl chrony)
# Units a lab node does not need, masked to save host-global inotify instances (docs/lab.md
# "inotify budget"): fs.inotify.max_user_instances (128 here) counts root's instances across every
# user namespace, so the six nodes share it with each other and with the rest of the machine.
# dbus and logind hold one each; each ask-password .path unit holds one in systemd (PID 1).
# No role talks to dbus (systemctl reaches PID 1 over its private socket).
MASKED=(dbus.service dbus.socket systemd-logind.service
        systemd-ask-password-console.path systemd-ask-password-wall.path)
log() { printf '==> [lab-node-image %s] %s\n' "$(date +%T)" "$*"; }

bash "$GPUOPS_REPO/scripts/build/node-image.sh"
base_id=$(podman image inspect --format '{{.Id}}' "$BASE")
recipe=$( (cat "$0"; echo "$base_id") | sha256sum | cut -c1-16)
have=$(podman image inspect --format '{{ index .Labels "io.gpuops.recipe" }}' "$IMAGE" 2>/dev/null || true)
if [ "${1:-}" != --force ] && [ "$have" = "$recipe" ]; then
  log "$IMAGE up to date ($recipe)"
  exit 0
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/etc/systemd/system" "$ctx/etc/sysctl.d" "$ctx/usr/local/sbin"

# The host-sysctl shield. A privileged node shares the host's kernel: the kubelet (KernelTunableModify)
# writes vm.overcommit_memory, kernel.panic, kernel.panic_on_oops and checks vm.panic_on_oom and
# kernel.keys.root_max{keys,bytes}; kube-proxy may write nf_conntrack_max. These are host-global.
# Before containerd and the kubelet start, each of those /proc/sys files is shadowed (inside this
# node's mount namespace only) by a bind-mounted regular file holding the value the kubelet wants,
# so its writes land in that file and the host keeps its settings. tests/cluster reads the host's.
cat > "$ctx/usr/local/sbin/gpuops-sysctl-shield" <<'SH'
#!/bin/sh
# gpuops lab: shadow host-global sysctls (see /etc/systemd/system/gpuops-sysctl-shield.service)
set -eu
dir=/run/gpuops-sysctl-shield
mkdir -p "$dir"
for kv in vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 \
          kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000 \
          net/netfilter/nf_conntrack_max=keep net/nf_conntrack_max=keep; do
  k=${kv%%=*} v=${kv#*=}
  [ -e "/proc/sys/$k" ] || continue
  mountpoint -q "/proc/sys/$k" && continue
  f="$dir/$(echo "$k" | tr / _)"
  if [ "$v" = keep ]; then cat "/proc/sys/$k" > "$f"; else echo "$v" > "$f"; fi
  mount --bind "$f" "/proc/sys/$k"
done
# The node's own per-network-namespace settings. systemd-sysctl is masked in this image: it would
# apply every /etc/sysctl.d file (os_baseline's included) to the SHARED kernel at each boot.
sysctl -q -p /etc/sysctl.d/90-gpuops-lab-k8s.conf
SH
chmod 0755 "$ctx/usr/local/sbin/gpuops-sysctl-shield"
cat > "$ctx/etc/systemd/system/gpuops-sysctl-shield.service" <<'UNIT'
# gpuops lab: keep the kubelet and kube-proxy in this privileged node from changing the HOST's
# kernel settings (docs/lab.md "The sysctl shield").
[Unit]
Description=gpuops lab: shadow host-global sysctls before containerd and the kubelet start
DefaultDependencies=no
Before=containerd.service kubelet.service sysinit.target systemd-sysctl.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/gpuops-sysctl-shield

[Install]
WantedBy=sysinit.target
UNIT
# Per-network-namespace settings of the node itself (never the host's), applied by the shield unit.
cat > "$ctx/etc/sysctl.d/90-gpuops-lab-k8s.conf" <<'CONF'
net.ipv4.ip_forward = 1
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
CONF
cat > "$ctx/Containerfile" <<CF
FROM $BASE
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
      ${PACKAGES[*]} >/dev/null && apt-get clean && rm -rf /var/log/*.log /var/lib/apt/lists/* \\
 && { systemctl disable keepalived.service chrony.service >/dev/null 2>&1 || true; } \\
 && rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \\
 && printf '#!/bin/sh\\n# gpuops lab: maintainer scripts start no service (the roles start what they configure)\\nexit 101\\n' \\
      > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d
COPY etc/ /etc/
COPY usr/ /usr/
RUN systemctl enable gpuops-sysctl-shield.service && systemctl mask systemd-sysctl.service \\
 && systemctl mask ${MASKED[*]}
LABEL io.gpuops.recipe=$recipe
CF
log "building $IMAGE from $BASE"
t0=$(date +%s)
nice -n 10 podman build --pull=never -q -t "$IMAGE" "$ctx" >/dev/null
log "built $IMAGE in $(( $(date +%s) - t0 ))s"
