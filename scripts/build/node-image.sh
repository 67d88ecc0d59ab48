#!/usr/bin/env bash
# Build the podman "node" image used by molecule scenarios and scripts/lab:
# a Debian bookworm rootfs with systemd as PID 1 (debootstrap -> tar -> podman import).
#
#   scripts/build/node-image.sh            build if missing or if the recipe changed (else no-op)
#   scripts/build/node-image.sh --force    rebuild the rootfs and re-import
#
# Idempotent: the image carries the label io.gpuops.recipe=<sha256 of the recipe below>; when the
# local image has the same label nothing is done. The rootfs tarball is cached as
# $GPUOPS_CACHE/node-image/gpuops-node-bookworm-<hash>.tar and .deb files in
# $GPUOPS_CACHE/node-image/debs, so a re-import after `podman rmi` needs no network.
#
# Environment: GPUOPS_NODE_IMAGE (default localhost/gpuops-node:bookworm),
#              GPUOPS_DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "$0")/../env.sh"

IMAGE="${GPUOPS_NODE_IMAGE:-localhost/gpuops-node:bookworm}"
SUITE=bookworm
MIRROR="${GPUOPS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PACKAGES=(systemd systemd-sysv dbus python3 python3-apt sudo iproute2 kmod procps
          ca-certificates gnupg curl)
# Units that cannot work (or only produce failures/noise) inside a container.
MASK_UNITS=(getty.target console-getty.service getty@tty1.service serial-getty@console.service
            systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket
            systemd-udev-trigger.service systemd-udev-settle.service
            sys-kernel-debug.mount sys-kernel-tracing.mount sys-kernel-config.mount
            sys-fs-fuse-connections.mount systemd-remount-fs.service systemd-firstboot.service
            apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer)

WORK="$GPUOPS_CACHE/node-image"
ROOTFS="$GPUOPS_CACHE/node-rootfs"
DEBS="$WORK/debs"
mkdir -p "$WORK" "$DEBS"
log() { printf '==> [node-image %s] %s\n' "$(date +%T)" "$*"; }

customize() {  # $1 = rootfs; runs after debootstrap, before the tarball is made
  local r="$1"
  cat > "$r/etc/apt/sources.list" <<SRC
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
SRC
  for u in "${MASK_UNITS[@]}"; do ln -sfn /dev/null "$r/etc/systemd/system/$u"; done
  # Every container gets its own machine-id at boot (systemd writes a transient one).
  : > "$r/etc/machine-id"
  rm -f "$r/var/lib/dbus/machine-id" "$r/etc/hostname"
  # Plain `systemd` target: no graphical/rescue, nothing waiting on a console.
  ln -sfn /lib/systemd/system/multi-user.target "$r/etc/systemd/system/default.target"
  # A sudo-capable unprivileged user for roles that test become.
  chroot "$r" /usr/sbin/useradd --create-home --shell /bin/bash --groups sudo gpuops 2>/dev/null || true
  echo 'gpuops ALL=(ALL) NOPASSWD:ALL' > "$r/etc/sudoers.d/gpuops"
  chmod 0440 "$r/etc/sudoers.d/gpuops"
  # Fresh package lists so roles' apt tasks work offline-fast; drop downloaded .debs.
  chroot "$r" /usr/bin/apt-get update -qq
  chroot "$r" /usr/bin/apt-get clean
  rm -rf "$r/var/log/"*.log "$r/var/cache/apt/"*.bin "$r/tmp/"*
}

RECIPE="v1|$SUITE|$MIRROR|${PACKAGES[*]}|${MASK_UNITS[*]}|$(declare -f customize)"
HASH=$(printf '%s' "$RECIPE" | sha256sum | cut -c1-16)
TARBALL="$WORK/gpuops-node-$SUITE-$HASH.tar"

exec 9>"$WORK/.lock"
flock 9   # one build at a time (lab and molecule may call this concurrently)

FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

have=$(podman image inspect --format '{{ index .Config.Labels "io.gpuops.recipe" }}' "$IMAGE" 2>/dev/null || true)
if [ "$FORCE" = 0 ] && [ "$have" = "$HASH" ]; then
  log "$IMAGE is up to date (recipe $HASH): nothing to do"
  exit 0
fi

t0=$(date +%s)
if [ "$FORCE" = 1 ] || [ ! -s "$TARBALL" ]; then
  command -v debootstrap >/dev/null || { echo "debootstrap missing: run scripts/setup base" >&2; exit 1; }
  [ "$(id -u)" = 0 ] || { echo "debootstrap needs root" >&2; exit 1; }
  log "debootstrap $SUITE into $ROOTFS (packages: ${PACKAGES[*]})"
  rm -rf "$ROOTFS"
  pkgs=$(IFS=,; echo "${PACKAGES[*]}")
  nice -n 10 debootstrap --variant=minbase --include="$pkgs" --cache-dir="$DEBS" \
    "$SUITE" "$ROOTFS" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
    || { tail -30 "$WORK/debootstrap.log" >&2; exit 1; }
  customize "$ROOTFS"
  log "creating $TARBALL"
  rm -f "$WORK"/gpuops-node-"$SUITE"-*.tar
  tar -C "$ROOTFS" --numeric-owner --xattrs -cf "$TARBALL.part" .
  mv "$TARBALL.part" "$TARBALL"
else
  log "reusing cached rootfs tarball $TARBALL"
fi

log "podman import -> $IMAGE"
podman import \
  --change 'CMD ["/sbin/init"]' \
  --change 'ENV container=podman' \
  --change 'STOPSIGNAL SIGRTMIN+3' \
  --change "LABEL io.gpuops.recipe=$HASH" \
  --change "LABEL io.gpuops.role=node" \
  --message "gpuops node image $SUITE recipe $HASH" \
  "$TARBALL" "$IMAGE" >/dev/null
t1=$(date +%s)
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
log "built $IMAGE in $((t1 - t0))s, image size $((size / 1024 / 1024)) MiB, tarball $(du -m "$TARBALL" | cut -f1) MiB"
printf '%s build_seconds=%s size_bytes=%s recipe=%s\n' "$(date -u +%FT%TZ)" "$((t1 - t0))" "$size" "$HASH" >> "$WORK/builds.log"
