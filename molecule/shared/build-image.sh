#!/bin/bash
# Build (or reuse) a Debian 12 VM image for the molecule scenarios.
#
#   molecule/shared/build-image.sh ARCH          ARCH: amd64 | arm64
#
# Prints the image directory on stdout (last line). It holds:
#   disk.qcow2   ext4 root filesystem on /dev/vda (no partition table, no bootloader)
#   vmlinuz, initrd.img   for qemu's direct kernel boot
#   id_ed25519   the SSH key root's authorized_keys trusts (VMs only listen on 127.0.0.1)
#
# Recipe: debootstrap minbase + systemd, udev, dbus-user-session, libpam-systemd, openssh-server, python3,
# python3-apt, sudo, the cloud kernel; bookworm-updates and bookworm-security applied; update_initramfs=no;
# a flat local apt repository in /opt/localrepo with the packages the roles install and their dependencies
# (skopeo and fuse-overlayfs among them; the VM has no way out).
# The image directory is keyed by a hash of this file, so any change of recipe rebuilds and reruns reuse it.
# docker-registry, apache2-utils (htpasswd) and openssl serve the pirun_registry role; the arm64 image also holds
# busybox-static:armhf (/opt/localrepo/compat/) for a 32-bit rootfs.
# Cache: $PIRUN_VM_CACHE (default ~/.cache/pirun/vm). Runs as root (debootstrap, chroot).
set -euo pipefail

arch=${1:?usage: build-image.sh amd64|arm64}
case $arch in
    amd64) kernel=linux-image-cloud-amd64 qemu_arch=x86_64 ;;
    arm64) kernel=linux-image-cloud-arm64 qemu_arch=aarch64 ;;
    *) echo "build-image: unknown architecture $arch (amd64 or arm64)" >&2; exit 2 ;;
esac
mirror=${PIRUN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security_mirror=${PIRUN_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
cache=${PIRUN_VM_CACHE:-$HOME/.cache/pirun/vm}

# Baked into the image: what the roles install, so that the VM needs no network. Keep in sync with
# roles/pirun_prereqs/defaults/main.yml (pirun_prereqs_packages) and pirun_runtime (busybox-static download).
# The rootfs builder's own package list (iputils-ping, wget, busybox, their libraries) comes from runtime/rootfs.py.
# skopeo and fuse-overlayfs bring their dependencies (containers-common, gpgme, fuse3...): apt-get below
# downloads every one the image does not have yet.
rootfs_packages=$(cd "$(dirname "$0")/../.." && python3 -c 'from runtime.rootfs import tool_packages
print(" ".join(tool_packages()))')
# The roles' packages are installed by apt (their dependencies come along); the rootfs builder's are fetched by
# name with `apt-get download` (no dependencies, and busybox and busybox-static conflict as installed packages).
localrepo_packages="slirp4netns passt uidmap python3-pyroute2 skopeo fuse-overlayfs busybox-static libcap2-bin acl
dbus-user-session libpam-systemd docker-registry apache2-utils openssl"
# The 32-bit userland of the architecture (AArch32 on arm64): its busybox-static .deb, for the rootfs of the
# compat-ABI check in verify.
case $arch in
    arm64) compat_arch=armhf ;;
    *) compat_arch= ;;
esac
base_packages="systemd-sysv,udev,dbus,dbus-user-session,libpam-systemd,openssh-server,python3,python3-apt,sudo,\
ca-certificates,iproute2,procps,kmod"

say() { printf 'build-image: %s\n' "$*" >&2; }
need() {
    for tool in "$@"; do
        command -v "$tool" >/dev/null || {
            echo "build-image: error: $tool is missing (install: scripts/apt-packages.txt, scripts/setup)" >&2
            exit 1
        }
    done
}
need debootstrap mkfs.ext4 qemu-img apt-ftparchive ssh-keygen flock sha256sum
[ "$(id -u)" = 0 ] || { echo "build-image: error: run as root (debootstrap, chroot)" >&2; exit 1; }

key=$( { cat "$0"; echo "$arch $mirror $security_mirror $rootfs_packages"; } | sha256sum | cut -c1-16)
dest=$cache/debian12-$arch-$key
if [ -f "$dest/complete" ]; then
    say "cached image $dest"
    echo "$dest"
    exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.lock-$arch"
flock 9
if [ -f "$dest/complete" ]; then       # built by a concurrent run while we waited
    echo "$dest"
    exit 0
fi

start=$(date +%s)
work=$(mktemp -d "$cache/.build-$arch.XXXXXX")
root=$work/rootfs
mounted=()
cleanup() {
    local rc=$?
    if [ "$rc" != 0 ]; then
        mkdir -p "$cache/last-failure-$arch"
        cp "$work"/*.log "$root/debootstrap/debootstrap.log" "$cache/last-failure-$arch/" 2>/dev/null || true
        echo "build-image: failed (exit $rc); logs in $cache/last-failure-$arch/" >&2
    fi
    for ((i=${#mounted[@]}-1; i>=0; i--)); do umount -l "${mounted[i]}" 2>/dev/null || true; done
    if grep -q " $work/" /proc/self/mounts; then
        echo "build-image: error: mounts left under $work: not removing it" >&2
    else
        rm -rf --one-file-system "$work"
    fi
}
trap cleanup EXIT
in_root() { LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive chroot "$root" "$@"; }
mount_api() {
    mount -t proc proc "$root/proc"; mounted+=("$root/proc")
    mount -t sysfs sysfs "$root/sys"; mounted+=("$root/sys")
    mount --bind /dev "$root/dev"; mounted+=("$root/dev")
    mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts"; mounted+=("$root/dev/pts")
}
umount_api() {
    for ((i=${#mounted[@]}-1; i>=0; i--)); do umount "${mounted[i]}"; done
    mounted=()
}

foreign=()
if [ "$(dpkg --print-architecture)" != "$arch" ]; then
    need "qemu-$qemu_arch-static"
    [ -e /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    update-binfmts --enable "qemu-$qemu_arch" >/dev/null 2>&1 || true
    grep -q '^flags: .*F' "/proc/sys/fs/binfmt_misc/qemu-$qemu_arch" 2>/dev/null || {
        echo "build-image: error: qemu-$qemu_arch is not registered in binfmt_misc with the F flag" \
             "(qemu-user-static, binfmt-support; scripts/setup registers it)" >&2
        exit 1
    }
    foreign=(--foreign)
fi

say "debootstrap bookworm $arch (minbase) into $root"
debootstrap --variant=minbase --arch="$arch" "${foreign[@]}" --include="$base_packages" \
    bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || { tail -30 "$work/debootstrap.log" >&2; exit 1; }
if [ ${#foreign[@]} -gt 0 ]; then
    say "debootstrap second stage under qemu-user"
    in_root /debootstrap/debootstrap --second-stage >"$work/debootstrap2.log" 2>&1 \
        || { tail -30 "$work/debootstrap2.log" "$root/debootstrap/debootstrap.log" >&2 2>/dev/null; exit 1; }
fi

mount_api
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"; chmod 755 "$root/usr/sbin/policy-rc.d"
cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security_mirror bookworm-security main
EOF
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$root/etc/apt/apt.conf.d/90pirun-norecommends"
say "applying bookworm-updates and bookworm-security, installing $kernel"
{
    in_root apt-get update -q
    in_root apt-get -y -q dist-upgrade
    in_root apt-get -y -q install initramfs-tools
    # Packages such as fuse3 would rebuild the initrd on install (minutes under emulation): never in this image.
    # The kernel installed next gets its initrd once, below.
    sed -i 's/^update_initramfs=.*/update_initramfs=no/' "$root/etc/initramfs-tools/update-initramfs.conf"
    grep -qx 'update_initramfs=no' "$root/etc/initramfs-tools/update-initramfs.conf"
    in_root apt-get -y -q install "$kernel"
} >"$work/apt.log" 2>&1 || { tail -30 "$work/apt.log" >&2; exit 1; }
kver=$(ls "$root/lib/modules" | sort -V | tail -1)
if [ ! -e "$root/boot/initrd.img-$kver" ]; then
    say "building the initrd for $kver"
    in_root update-initramfs -c -k "$kver" >"$work/initramfs.log" 2>&1 || { tail -30 "$work/initramfs.log" >&2; exit 1; }
fi

say "local apt repository /opt/localrepo: $(echo $localrepo_packages $rootfs_packages)"
in_root apt-get -y -q clean
# shellcheck disable=SC2086
in_root apt-get -y -q install --download-only $localrepo_packages >>"$work/apt.log" 2>&1 \
    || { tail -30 "$work/apt.log" >&2; exit 1; }
mkdir -p "$root/opt/localrepo"
# Packages already in the image are not downloaded above, but the roles may ask apt for them by name: add
# their .debs too (apt-get download fetches exactly the given names).
(cd "$root/opt/localrepo" && for p in $localrepo_packages; do
    if in_root dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        in_root sh -c "cd /opt/localrepo && apt-get download -q $p" >>"$work/apt.log" 2>&1
    fi
done)
in_root sh -c "cd /opt/localrepo && apt-get download -q $(echo $rootfs_packages)" >>"$work/apt.log" 2>&1 \
    || { tail -30 "$work/apt.log" >&2; exit 1; }
if [ -n "$compat_arch" ]; then
    # Outside the flat repository (apt would see a foreign architecture): a plain file for `runtime.rootfs --deb`.
    mkdir -p "$root/opt/localrepo/compat"
    { in_root dpkg --add-architecture "$compat_arch"
      in_root apt-get update -q
      in_root sh -c "cd /opt/localrepo/compat && apt-get download -q busybox-static:$compat_arch"
      in_root dpkg --remove-architecture "$compat_arch"
    } >>"$work/apt.log" 2>&1 || { tail -30 "$work/apt.log" >&2; exit 1; }
fi
mv "$root"/var/cache/apt/archives/*.deb "$root/opt/localrepo/" 2>/dev/null || true
(cd "$root/opt/localrepo" && apt-ftparchive packages . >Packages 2>/dev/null && gzip -9kf Packages)
echo 'deb [trusted=yes] file:/opt/localrepo ./' >"$root/etc/apt/sources.list"
rm -f "$root"/etc/apt/sources.list.d/*
in_root apt-get update -q >>"$work/apt.log" 2>&1 || { tail -30 "$work/apt.log" >&2; exit 1; }
in_root apt-get -y -q clean
umount_api
rm -f "$root/usr/sbin/policy-rc.d"

say "configuring network, SSH, console"
echo pirun-vm >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 pirun-vm\n::1 localhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
echo '/dev/vda / ext4 rw,errors=remount-ro 0 1' >"$root/etc/fstab"
# A fixed machine-id: each VM is a throwaway overlay of this image; an empty one would trigger first-boot units.
od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$root/etc/machine-id"; echo >>"$root/etc/machine-id"
mkdir -p "$root/etc/systemd/network"
printf '[Match]\nName=e*\n\n[Network]\nDHCP=ipv4\n' >"$root/etc/systemd/network/20-wired.network"
ln -sf /lib/systemd/system/systemd-networkd.service "$root/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
for unit in systemd-networkd-wait-online.service systemd-firstboot.service apt-daily.timer apt-daily-upgrade.timer \
            e2scrub_all.timer fstrim.timer man-db.timer; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
ssh-keygen -q -t ed25519 -N '' -C "pirun-molecule-$arch" -f "$work/id_ed25519"
install -d -m 700 "$root/root/.ssh"
install -m 600 "$work/id_ed25519.pub" "$root/root/.ssh/authorized_keys"
printf 'UseDNS no\nPasswordAuthentication no\nPermitRootLogin prohibit-password\n' >"$root/etc/ssh/sshd_config.d/pirun.conf"

say "making the disk"
cp "$root/boot/vmlinuz-$kver" "$work/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$work/initrd.img"
size_mb=$(( $(du -sm "$root" | cut -f1) + 1536 ))
mkfs.ext4 -q -L pirun-root -d "$root" "$work/disk.raw" "${size_mb}M"
qemu-img convert -O qcow2 "$work/disk.raw" "$work/disk.qcow2"
rm -f "$work/disk.raw"

mkdir -p "$dest"
mv "$work/disk.qcow2" "$work/vmlinuz" "$work/initrd.img" "$work/id_ed25519" "$work/id_ed25519.pub" "$dest/"
printf 'arch=%s\nkernel=%s\nbuilt=%s\nseconds=%s\n' "$arch" "$kver" "$(date -u +%FT%TZ)" "$(( $(date +%s) - start ))" \
    >"$dest/complete"
say "built $dest in $(( $(date +%s) - start )) s"
# Old images of this architecture (other recipes) are dead weight.
for old in "$cache"/debian12-"$arch"-*; do
    [ "$old" = "$dest" ] || rm -rf "$old"
done
echo "$dest"
