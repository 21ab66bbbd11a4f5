#!/usr/bin/env bash
# Build (once) the cached disk image of the VM tier: the Debian 13 box image
# (tests/box/build-image.sh) plus a kernel, an initramfs, systemd-networkd with
# DHCP and a throwaway SSH key for root. QEMU boots it with a kernel of its
# own, so cgroup v2 limits, SocketBind BPF programs and sysctls really apply
# (the nspawn box cannot show them). Prints the image directory: disk.img,
# vmlinuz, initrd.img, id_ed25519. Built in a temporary directory renamed into
# place only when complete.
# With SITEOPS_VM_VAGRANT=KEYFILE (tests/vagrant), a flavour Vagrant can log
# into: rsync, and a user vagrant with that public key and password-less sudo.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${SITEOPS_BOX_CACHE:-/var/cache/siteops-box}
box=$(SITEOPS_BOX_SUITE=trixie bash "$here/../box/build-image.sh")
key=$(cat "$0" | sha256sum | cut -c1-12)
vagrant_key=${SITEOPS_VM_VAGRANT:-}
image="$cache/vm-$(basename "$box")-$key${vagrant_key:+-vagrant}"

if [ -d "$image" ]; then
    echo "$image"
    exit 0
fi

tmp=$(mktemp -d "$cache/.vm-XXXXXX")
root="$tmp/root"
cleanup() { umount -R "$root/proc" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

echo "vm image: copying $box" >&2
cp -a "$box" "$root"
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
mount -t proc proc "$root/proc"
cp /etc/resolv.conf "$root/etc/resolv.conf"
echo "vm image: installing a kernel" >&2
chroot "$root" apt-get update -q >&2
chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends linux-image-amd64 initramfs-tools ${vagrant_key:+rsync} >&2
chroot "$root" apt-get clean
umount "$root/proc"
rm -f "$root/usr/sbin/policy-rc.d"

printf '/dev/vda / ext4 defaults 0 1\n' > "$root/etc/fstab"
echo siteops-vm > "$root/etc/hostname"
printf '127.0.0.1 localhost siteops-vm\n::1 localhost\n' > "$root/etc/hosts"
mkdir -p "$root/etc/systemd/network"
printf '[Match]\nName=en*\n\n[Network]\nDHCP=yes\n' > "$root/etc/systemd/network/10-dhcp.network"
ln -sf /lib/systemd/system/systemd-networkd.service \
    "$root/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
ssh-keygen -q -t ed25519 -N '' -C vm-operator -f "$tmp/id_ed25519"
cat "$tmp/id_ed25519.pub" >> "$root/root/.ssh/authorized_keys"
if [ -n "$vagrant_key" ]; then
    chroot "$root" useradd --create-home --shell /bin/bash vagrant
    install -d -m 700 -o "$(chroot "$root" id -u vagrant)" -g "$(chroot "$root" id -g vagrant)" \
        "$root/home/vagrant/.ssh"
    install -m 600 -o "$(chroot "$root" id -u vagrant)" -g "$(chroot "$root" id -g vagrant)" \
        "$vagrant_key" "$root/home/vagrant/.ssh/authorized_keys"
    printf 'vagrant ALL=(ALL) NOPASSWD: ALL\n' > "$root/etc/sudoers.d/vagrant"
    chmod 440 "$root/etc/sudoers.d/vagrant"
fi
cp "$root"/boot/vmlinuz-* "$tmp/vmlinuz"
cp "$root"/boot/initrd.img-* "$tmp/initrd.img"

echo "vm image: making the disk" >&2
truncate -s 8G "$tmp/disk.img"
mkfs.ext4 -q -F -d "$root" "$tmp/disk.img"
rm -rf "$root"
trap - EXIT
mv "$tmp" "$image"
echo "$image"
