#!/usr/bin/env bash
# Builds the Debian 12 golden image: a 1 GiB ext4 root filesystem from Debian's packages
# (debootstrap), booted by Kiln's own guest kernel, with busybox init, kiln-nocloud applying the
# NoCloud seed and dropbear as the SSH server (why not systemd, cloud-init and OpenSSH: README.md).
#
#   resources/guest/debian/build.sh            build if missing; print the output folder
#   resources/guest/debian/build.sh --force    rebuild even when cached
#
# Output: debian.ext4 (sparse), version.txt (also /etc/kiln-image-version in the image),
# packages.txt (every package and version). Two cached stages: the debootstrapped tree (keyed by
# the package list and the mirror's Release date; ~3 minutes) and the image (keyed by that, the
# files in rootfs/ and kiln-nocloud, built here statically). Needs root and deb.debian.org (or
# $KILN_DEBIAN_MIRROR). Not byte-reproducible: the mirror moves; the versions are recorded.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root_dir=$(cd "$here/../../.." && pwd)
force=0
[[ "${1:-}" == "--force" ]] && force=1
log() { echo "debian-build: $*" >&2; }
# shellcheck source=../../lib/cache.sh
source "$here/../../lib/cache.sh"

MIRROR=${KILN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
# busybox-static: init, getty, udhcpc and the boot script's applets (static: cheap to start);
# dropbear-bin: the SSH server; passwd (useradd), sudo, ca-certificates, netbase: what users of
# a Debian cloud image expect.
INCLUDE=busybox-static,dropbear-bin,sudo,ca-certificates,netbase,passwd,login
SIZE=1G

[[ $(id -u) -eq 0 ]] || { log "debootstrap needs root"; exit 1; }
for tool in debootstrap:debootstrap mke2fs:e2fsprogs curl:curl; do
  command -v "${tool%%:*}" >/dev/null ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${tool#*:}" >&2
done

# Stage 1: the Debian tree, as a tar archive (ownership and modes kept).
bootstrap() { # OUT_DIR
  local work root
  work=$(mktemp -d "$(cache_root)/.debian-bootstrap.XXXXXX")
  root=$work/root
  log "debootstrap $SUITE from $MIRROR (about 3 minutes)"
  debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$root" "$MIRROR" >&2
  chroot "$root" apt-get clean
  rm -rf "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
    "$root"/var/log/*.log "$root"/var/cache/debconf/*-old "$root"/tmp/*
  chroot "$root" dpkg-query -W -f='${Package} ${Version}\n' > "$work/packages.txt"
  cat "$root/etc/debian_version" > "$work/debian_version"
  tar --numeric-owner --xattrs -C "$root" -cf "$work/rootfs.tar" .
  rm -rf "$root" "$1"
  mv "$work" "$1"
}

# Stage 2: Kiln's boot files, kiln-nocloud and kiln-ctrl-alt-del on top, then the ext4 image.
assemble() { # BASE_DIR NOCLOUD_BINARY OUT_DIR VERSION
  local base=$1 nocloud=$2 out=$3 version=$4 work root
  work=$(mktemp -d "$(cache_root)/.debian-image.XXXXXX")
  root=$work/root
  mkdir -p "$root"
  tar --numeric-owner --xattrs -C "$root" -xf "$base/rootfs.tar"
  cp -a "$here/rootfs/." "$root/"
  ln -sf /bin/busybox "$root/sbin/init"
  install -D -m 755 -s "$nocloud" "$root/usr/lib/kiln/kiln-nocloud"
  command -v musl-gcc >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y \
    --no-install-recommends musl-tools >&2
  musl-gcc -static -Os -Wall -Wextra -Werror -o "$root/usr/lib/kiln/kiln-ctrl-alt-del" \
    "$here/kiln-ctrl-alt-del.c"
  strip "$root/usr/lib/kiln/kiln-ctrl-alt-del"
  ln -sf /bin/busybox "$root/usr/lib/kiln/login"
  # The default user is made here, not at first boot: useradd (dynamically linked, PAM) takes
  # about 30 s in a guest whose kernel is emulated. No password (keys only); kiln-nocloud adds
  # its keys and sudo rule when the seed asks for the default user, as cloud-init would.
  chroot "$root" useradd -m -s /bin/bash -G sudo -p '*' debian
  # The root filesystem is the whole disk (Kiln's kernel adds root=/dev/vda).
  echo '/dev/vda / ext4 defaults,errors=remount-ro 0 1' > "$root/etc/fstab"
  echo debian > "$root/etc/hostname"
  printf '127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n' > "$root/etc/hosts"
  : > "$root/etc/machine-id"
  echo "$version" > "$root/etc/kiln-image-version"
  mkdir -p "$out.tmp"
  mke2fs -q -t ext4 -L debian-root -d "$root" "$out.tmp/debian.ext4" "$SIZE" >&2
  e2fsck -fn "$out.tmp/debian.ext4" >&2
  echo "$version" > "$out.tmp/version.txt"
  cp "$base/packages.txt" "$out.tmp/"
  rm -rf "$work" "$out"
  mv "$out.tmp" "$out"
}

# The mirror's Release date: a new point release or security update makes a new image.
release=$(curl -fsS "$MIRROR/dists/$SUITE/Release" | sed -n 's/^Date: //p') ||
  { log "cannot reach $MIRROR"; exit 1; }
base_key=$( { declare -f bootstrap; echo "$INCLUDE $MIRROR $SUITE $release"; } | sha256sum | cut -c1-16)
base="$(cache_root)/debian-12-base-$base_key"
if [[ $force -eq 1 || ! -f "$base/rootfs.tar" ]]; then
  bootstrap "$base"
fi

# $KILN_NOCLOUD: a static kiln-nocloud already built (resources/lib/static-disk-copy.sh makes
# it; the cluster's load-images passes it, since a cargo build of its own could wait forever on
# the build folder of the cargo test that called it). Else built here.
nocloud=${KILN_NOCLOUD:-}
if [[ -z "$nocloud" ]]; then
  log "building kiln-nocloud (static)"
  "$root_dir/resources/lib/static-disk-copy.sh" "${CARGO_TARGET_DIR:-$root_dir/target}" >&2
  nocloud=${CARGO_TARGET_DIR:-$root_dir/target}/release/kiln-nocloud-static
fi
[[ -x "$nocloud" ]] || { log "no kiln-nocloud at $nocloud"; exit 1; }

version="debian-12 $(cat "$base/debian_version") $(date -u -d "$release" +%Y%m%d)"
key=$( { echo "$base_key $SIZE $version"; declare -f assemble; sha256sum "$nocloud" | cut -d' ' -f1;
  cat "$here/kiln-ctrl-alt-del.c" "$here/../init/kiln-keyboard.h" | sha256sum | cut -d' ' -f1
  (cd "$here/rootfs" && find . -type f | sort | xargs sha256sum); } | sha256sum | cut -c1-16)
out="$(cache_root)/debian-12-$key"
if [[ $force -eq 1 || ! -f "$out/debian.ext4" ]]; then
  assemble "$base" "$nocloud" "$out" "$version"
  log "built $version: $(du -h --apparent-size "$out/debian.ext4" | cut -f1) ($(du -h "$out/debian.ext4" | cut -f1) used)"
fi
echo "$out"
