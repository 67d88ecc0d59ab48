#!/usr/bin/env bash
# Build the QEMU guest image used by tests/vm (roles storage and network).
#
# Output, all under $GPUOPS_CACHE/vm (outside the repo):
#   base.qcow2         Debian bookworm root disk (ext4, no partition table: root=/dev/vda)
#   vmlinuz, initrd.img  kernel + initrd copied out of the guest's own rootfs (qemu -kernel/-initrd)
#   id_ed25519[.pub]   root ssh key (test-only, generated here, never leaves the cache)
#   stamp              hash of the recipe; when it matches, a re-run is a fast no-op
#
# Usage: scripts/build/vm-image.sh [--force]
# Needs root (debootstrap, chroot), debootstrap, e2fsprogs (mkfs.ext4 -d), qemu-utils.
# Only deb.debian.org is contacted (the host's own Debian mirror).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
# shellcheck source=../env.sh
source "$REPO/scripts/env.sh"

OUT="$GPUOPS_CACHE/vm"
SUITE="${GPUOPS_VM_SUITE:-bookworm}"
MIRROR="${GPUOPS_VM_MIRROR:-http://deb.debian.org/debian}"
DISK_SIZE="${GPUOPS_VM_DISK_SIZE:-4G}"
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

# Everything the roles need in the guest (storage: mdadm lvm2 xfsprogs nvme-cli; network:
# iproute2 ifenslave systemd-networkd (in systemd) dbus for networkctl; ansible: python3).
PACKAGES=(
  systemd systemd-sysv udev dbus kmod linux-image-amd64 initramfs-tools
  openssh-server python3 python3-apt
  mdadm lvm2 xfsprogs nvme-cli e2fsprogs util-linux gdisk
  iproute2 ifenslave iputils-ping ethtool procps less
)

mkdir -p "$OUT"
[[ -f "$OUT/id_ed25519" ]] || ssh-keygen -q -t ed25519 -N '' -C gpuops-vm-test -f "$OUT/id_ed25519"

# Two cached stages: (1) the debootstrapped rootfs as a tarball, keyed by suite/mirror/packages
# (slow: ~10 min on a busy 2-core host); (2) guest configuration + disk image, keyed by this
# whole script and the ssh key (about a minute). Changing a guest tweak only redoes stage 2.
ROOTFS_HASH="$(echo "$SUITE $MIRROR ${PACKAGES[*]}" | sha256sum | cut -c1-16)"
ROOTFS_TAR="$OUT/rootfs-$ROOTFS_HASH.tar"
RECIPE_HASH="$( { cat "${BASH_SOURCE[0]}"; echo "$ROOTFS_HASH $DISK_SIZE"; cat "$OUT/id_ed25519.pub"; } \
                | sha256sum | cut -c1-16)"
if [[ $FORCE -eq 0 && -f "$OUT/stamp" && "$(cat "$OUT/stamp")" == "$RECIPE_HASH" \
      && -f "$OUT/base.qcow2" && -f "$OUT/vmlinuz" && -f "$OUT/initrd.img" ]]; then
  echo "vm-image: up to date ($OUT, recipe $RECIPE_HASH)"
  exit 0
fi

[[ $EUID -eq 0 ]] || { echo "vm-image: must run as root (debootstrap/chroot)" >&2; exit 1; }
for b in debootstrap mkfs.ext4 qemu-img chroot; do
  command -v "$b" >/dev/null || { echo "vm-image: missing $b (apt-get install debootstrap e2fsprogs qemu-utils)" >&2; exit 1; }
done

T0=$(date +%s)
WORK="$OUT/build.$$"
ROOT="$WORK/rootfs"
cleanup() {
  for m in proc sys dev/pts dev; do
    mountpoint -q "$ROOT/$m" 2>/dev/null && umount -l "$ROOT/$m" || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$ROOT"

if [[ $FORCE -eq 1 || ! -f "$ROOTFS_TAR" ]]; then
  include="$(IFS=,; echo "${PACKAGES[*]}")"
  echo "vm-image: debootstrap $SUITE into $ROOT"
  # The package cache is kept between builds: a --force rebuild does not download again.
  mkdir -p "$OUT/debs"
  nice -n 10 debootstrap --variant=minbase --cache-dir="$OUT/debs" --include="$include" \
    "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -40 "$WORK/debootstrap.log" >&2; exit 1; }
  rm -f "$OUT"/rootfs-*.tar
  tar -C "$ROOT" --numeric-owner -cpf "$ROOTFS_TAR.tmp" . && mv -f "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
  echo "vm-image: stage 1 (debootstrap) took $(( $(date +%s) - T0 ))s"
else
  echo "vm-image: reusing $ROOTFS_TAR"
  tar -C "$ROOT" --numeric-owner -xpf "$ROOTFS_TAR"
fi

echo "vm-image: configuring guest"
echo gpuops-vm >"$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 gpuops-vm\n' >"$ROOT/etc/hosts"
printf '/dev/vda / ext4 defaults,noatime,errors=remount-ro 0 1\n' >"$ROOT/etc/fstab"
install -d -m 700 "$ROOT/root/.ssh"
install -m 600 "$OUT/id_ed25519.pub" "$ROOT/root/.ssh/authorized_keys"
cat >"$ROOT/etc/ssh/sshd_config.d/gpuops-test.conf" <<'EOF'
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
EOF
# Management NIC (eth0, slirp) via DHCP as the lowest-priority fallback: the network role's
# own files (lower numbers) take precedence once it has run.
cat >"$ROOT/etc/systemd/network/99-gpuops-vm-dhcp.network" <<'EOF'
# Image default (scripts/build/vm-image.sh): DHCP on the first NIC until the network role runs.
[Match]
Name=eth0

[Network]
DHCP=ipv4
EOF
# Resync of emulated NVMe RAID eats the only CPUs: keep the md speed low by default.
printf 'dev.raid.speed_limit_max = 10000\n' >"$ROOT/etc/sysctl.d/60-gpuops-vm.conf"
# modules the roles load on demand must be loadable; make boot fast.
chroot "$ROOT" systemctl enable systemd-networkd ssh >/dev/null 2>&1
# Mask what a test guest does not need: every second of boot costs minutes under TCG on a busy host.
for u in systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
         e2scrub_reap.service mdcheck_start.timer mdcheck_continue.timer mdmonitor-oneshot.timer \
         fstrim.timer systemd-binfmt.service proc-sys-fs-binfmt_misc.automount getty@tty1.service \
         systemd-pstore.service modprobe@drm.service networking.service ifupdown-pre.service \
         ifupdown-wait-online.service nvmf-autoconnect.service; do
  chroot "$ROOT" systemctl mask "$u" >/dev/null 2>&1 || true
done
# Under TCG on a starved host the guest runs 50-100x slower than native: systemd's wall-clock
# start timeouts and service watchdogs fire (systemd-networkd was killed after 4.5 min). Relax them.
install -d "$ROOT/etc/systemd/system.conf.d"
printf '[Manager]\nDefaultTimeoutStartSec=20min\nDefaultTimeoutStopSec=2min\n' \
  >"$ROOT/etc/systemd/system.conf.d/60-gpuops-vm-slow.conf"
for u in systemd-networkd systemd-udevd systemd-journald systemd-logind systemd-resolved; do
  install -d "$ROOT/etc/systemd/system/$u.service.d"
  printf '[Service]\nWatchdogSec=0\nTimeoutStartSec=20min\n' >"$ROOT/etc/systemd/system/$u.service.d/60-gpuops-vm-slow.conf"
done
# Small initrd: only what mounting the virtio root needs (MODULES=most is 38 MiB, slow to unpack in TCG).
sed -i 's/^MODULES=.*/MODULES=list/' "$ROOT/etc/initramfs-tools/initramfs.conf"
printf '%s\n' virtio_pci virtio_blk ext4 crc32c_generic >"$ROOT/etc/initramfs-tools/modules"
for m in proc sys dev; do mount --bind "/$m" "$ROOT/$m"; done
chroot "$ROOT" update-initramfs -u -k all >"$WORK/initramfs.log" 2>&1 || { cat "$WORK/initramfs.log" >&2; exit 1; }
for m in dev sys proc; do umount "$ROOT/$m"; done
# No login on the serial console (it is a log file): boot messages only.
chroot "$ROOT" systemctl mask serial-getty@ttyS0.service >/dev/null 2>&1 || true
rm -f "$ROOT/etc/machine-id" && : >"$ROOT/etc/machine-id"
chroot "$ROOT" apt-get clean

kver="$(basename "$(ls -1 "$ROOT"/boot/vmlinuz-* | sort -V | tail -1)" | sed 's/^vmlinuz-//')"
cp "$ROOT/boot/vmlinuz-$kver" "$WORK/vmlinuz"
cp "$ROOT/boot/initrd.img-$kver" "$WORK/initrd.img"

echo "vm-image: building ext4 root ($DISK_SIZE) and qcow2"
truncate -s "$DISK_SIZE" "$WORK/root.raw"
mkfs.ext4 -q -L gpuops-root -d "$ROOT" "$WORK/root.raw"
qemu-img convert -O qcow2 "$WORK/root.raw" "$WORK/base.qcow2"
mv -f "$WORK/base.qcow2" "$OUT/base.qcow2"
mv -f "$WORK/vmlinuz" "$OUT/vmlinuz"
mv -f "$WORK/initrd.img" "$OUT/initrd.img"
echo "$kver" >"$OUT/kernel-version"
echo "$RECIPE_HASH" >"$OUT/stamp"
echo "vm-image: done in $(( $(date +%s) - T0 ))s: $OUT/base.qcow2 ($(du -h "$OUT/base.qcow2" | cut -f1) on disk), kernel $kver"
