#!/usr/bin/env bash
# Build (once) the cached Debian root image that box tests boot with
# systemd-nspawn. The box has no network, so everything bootstrap would
# install is put in here from the host; bootstrap then finds it present and
# skips apt. Prints the image path. The build goes to a temporary directory
# that is renamed into place only when complete, so an interrupted build is
# never mistaken for a cached image.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${SITEOPS_BOX_CACHE:-/var/cache/siteops-box}
mirror=${SITEOPS_BOX_MIRROR:-http://deb.debian.org/debian}
suite=${SITEOPS_BOX_SUITE:-bookworm}   # trixie: Debian 13
packages=$(grep -v '^#' "$here/image-packages.txt" | xargs)
key=$(cat "$0" "$here/image-packages.txt" | sha256sum | cut -c1-12)
image="$cache/$suite-$key"

if [ -d "$image" ]; then
    echo "$image"
    exit 0
fi

mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.build-XXXXXX")
chmod 755 "$tmp"   # mktemp makes it 0700: services could not reach /
cleanup() { umount -R "$tmp/proc" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

echo "box image: debootstrap into $tmp" >&2
debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,iproute2,ca-certificates \
    "$suite" "$tmp" "$mirror" >&2

# Services must not start inside the chroot while packages install.
printf '#!/bin/sh\nexit 101\n' > "$tmp/usr/sbin/policy-rc.d"
chmod 755 "$tmp/usr/sbin/policy-rc.d"
mount -t proc proc "$tmp/proc"
echo "box image: installing $packages" >&2
chroot "$tmp" env DEBIAN_FRONTEND=noninteractive apt-get install -y \
    --no-install-recommends $packages >&2

# pnpm has no Debian 12 package and the box has no network: install the npm
# tarball fetched on the host.
pack=$(mktemp -d)
(cd "$pack" && npm pack --silent pnpm@9 >/dev/null)
cp "$pack"/pnpm-*.tgz "$tmp/tmp/pnpm.tgz"
rm -rf "$pack"
chroot "$tmp" npm install -g --offline /tmp/pnpm.tgz >&2
rm -f "$tmp/tmp/pnpm.tgz"

umount "$tmp/proc"
rm -f "$tmp/usr/sbin/policy-rc.d"
chroot "$tmp" apt-get clean
# rsyslog is there for the log drains' tests (the box has no network to install
# it): off, as on a host that never had a drain, until the first drain starts it.
chroot "$tmp" systemctl disable --quiet rsyslog.service
# A root password is not needed: tests enter the box with nsenter.
echo siteops-box > "$tmp/etc/hostname"
printf '127.0.0.1 localhost siteops-box\n::1 localhost\n' > "$tmp/etc/hosts"
# A throwaway SSH host key pair and an operator key so `sshd -t` passes and
# bootstrap's lock-out guard sees an authorized key.
mkdir -p "$tmp/root/.ssh"
chmod 700 "$tmp/root/.ssh"
ssh-keygen -q -t ed25519 -N '' -C box-operator -f "$tmp/root/.ssh/id_ed25519"
cp "$tmp/root/.ssh/id_ed25519.pub" "$tmp/root/.ssh/authorized_keys"
chmod 600 "$tmp/root/.ssh/authorized_keys"

trap - EXIT
mv "$tmp" "$image"
echo "$image"
