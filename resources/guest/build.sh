#!/usr/bin/env bash
# Builds Kiln's guest (kernel, initramfs, rootfs) from Debian packages, cached by a hash of the inputs.
#
#   resources/guest/build.sh            build if missing; print the output folder on stdout
#   resources/guest/build.sh --force    rebuild even when cached
#
# Outputs in the printed folder: vmlinux (PVH ELF), bzImage, config; initramfs.cpio (only the
# static kiln-init: fast to unpack), initramfs-busybox.cpio (kiln-init plus busybox, for a shell),
# rootfs.ext4 (kiln-init as /sbin/init, busybox, kiln-iobench, kiln-dhcpflood), kiln-tiny (a
# few-KB guest kernel for control-plane tests); inputs.txt. Cache root: $KILN_CACHE, else /var/cache/kiln when writable,
# else ~/.cache/kiln. Installs missing Debian packages when run as root.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
force=0
[[ "${1:-}" == "--force" ]] && force=1

log() { echo "guest-build: $*" >&2; }

# shellcheck source=../lib/cache.sh
source "$here/../lib/cache.sh"

PACKAGES=(linux-source-6.1 busybox-static build-essential flex bison bc libelf-dev libssl-dev
  cpio xz-utils e2fsprogs patch musl-tools)

ensure_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  if [[ $(id -u) -ne 0 ]]; then
    log "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})"
    exit 1
  fi
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
    { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2; }
}

pkg_version() { dpkg-query -W -f='${Version}' "$1"; }

# Reproducibility settings live inside the build functions, whose text is part of each cache key.

build_kernel() { # $1 = output folder
  local out=$1 work
  # Reproducible: fixed build identity and timestamp.
  export KBUILD_BUILD_TIMESTAMP="1970-01-01" KBUILD_BUILD_USER=kiln KBUILD_BUILD_HOST=kiln
  work=$(mktemp -d "$(cache_root)/.kernel-build.XXXXXX")
  log "kernel: unpacking linux-source-6.1 $(pkg_version linux-source-6.1) in $work"
  tar -C "$work" -xf /usr/src/linux-source-6.1.tar.xz
  local src="$work/linux-source-6.1"
  for p in "$here"/patches/*.patch; do
    log "kernel: applying $(basename "$p")"
    patch -s -p1 -d "$src" < "$p"
  done
  make -s -C "$src" tinyconfig >&2
  (cd "$src" && scripts/kconfig/merge_config.sh -m .config "$here/config.fragment" >/dev/null)
  make -s -C "$src" olddefconfig >&2
  # Every requested option must have survived olddefconfig: a silently dropped one is a build error.
  local bad=0 line
  while read -r line; do
    [[ "$line" =~ ^(CONFIG_[A-Z0-9_]+)=(.*)$ ]] || continue
    local key=${BASH_REMATCH[1]} want=${BASH_REMATCH[2]}
    if [[ "$want" == n ]]; then
      grep -q "^$key=" "$src/.config" && { log "kernel: $key is set but the fragment asks n"; bad=1; }
    else
      grep -qx "$key=$want" "$src/.config" || { log "kernel: $key=$want did not survive olddefconfig"; bad=1; }
    fi
  done < "$here/config.fragment"
  ((bad == 0)) || exit 1
  log "kernel: building with $(nproc) jobs (about 3-4 minutes on 2 cores)"
  make -s -C "$src" -j"$(nproc)" bzImage >&2
  mkdir -p "$out.tmp"
  cp "$src/vmlinux" "$src/arch/x86/boot/bzImage" "$out.tmp/"
  cp "$src/.config" "$out.tmp/config"
  rm -rf "$work" "$out"
  mv "$out.tmp" "$out"
}

# Writes an uncompressed, reproducible newc cpio of folder $1 to $2.
make_cpio() {
  find "$1" -exec touch -h -d @0 {} +
  (cd "$1" && find . -mindepth 1 | LC_ALL=C sort |
    cpio --quiet --reproducible -o -H newc --owner=0:0) > "$2"
}

build_userspace() { # $1 = output folder
  local out=$1 work tree
  work=$(mktemp -d "$(cache_root)/.userspace-build.XXXXXX")
  mkdir -p "$out.tmp"
  musl-gcc -static -Os -Wall -Wextra -Werror -o "$work/kiln-init" "$here/init/kiln-init.c"
  musl-gcc -static -O2 -Wall -Wextra -Werror -o "$work/kiln-iobench" "$here/tools/kiln-iobench.c"
  musl-gcc -static -O2 -Wall -Wextra -Werror -o "$work/kiln-dhcpflood" \
    "$here/tools/kiln-dhcpflood.c"
  strip "$work/kiln-init" "$work/kiln-iobench" "$work/kiln-dhcpflood"
  # kiln-tiny: a freestanding guest kernel of a few KB (control-plane tests, scale benchmarks).
  gcc -O2 -Wall -Wextra -Werror -ffreestanding -fno-pic -no-pie -static -nostdlib -mno-red-zone \
    -mgeneral-regs-only -fno-stack-protector -fno-asynchronous-unwind-tables \
    -Wl,-Ttext-segment=0x200000 -Wl,--build-id=none -o "$out.tmp/kiln-tiny" "$here/tiny/kiln-tiny.c"
  strip "$out.tmp/kiln-tiny"

  # Minimal initramfs: kiln-init alone.
  tree="$work/minimal"
  mkdir -p "$tree"/{sbin,proc,sys,dev}
  install -m 0755 "$work/kiln-init" "$tree/sbin/kiln-init"
  ln -s sbin/kiln-init "$tree/init"
  make_cpio "$tree" "$out.tmp/initramfs.cpio"

  # Busybox tree: the initramfs variant with a shell, and the ext4 root filesystem.
  tree="$work/busybox"
  mkdir -p "$tree"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,root,etc,mnt,run,var/lib/kiln}
  cp /bin/busybox "$tree/bin/busybox"
  local applet
  for applet in $(/bin/busybox --list-full); do
    [[ -e "$tree/$applet" ]] || ln -s /bin/busybox "$tree/$applet"
  done
  # Kiln's init and power-off helpers replace busybox's (there is no ACPI to power off with).
  rm -f "$tree/sbin/poweroff" "$tree/sbin/halt" "$tree/sbin/init"
  install -m 0755 "$work/kiln-init" "$tree/sbin/kiln-init"
  install -m 0755 "$here"/rootfs/sbin/* "$tree/sbin/"
  install -D -m 0755 "$here/rootfs/etc/udhcpc/default.script" "$tree/etc/udhcpc/default.script"
  install -m 0755 "$work/kiln-iobench" "$tree/usr/bin/kiln-iobench"
  install -m 0755 "$work/kiln-dhcpflood" "$tree/usr/bin/kiln-dhcpflood"
  ln -s poweroff "$tree/sbin/halt"
  ln -s kiln-init "$tree/sbin/init"
  echo "root:x:0:0:root:/root:/bin/sh" > "$tree/etc/passwd"
  echo "kiln" > "$tree/etc/hostname"
  ln -s sbin/kiln-init "$tree/init"
  make_cpio "$tree" "$out.tmp/initramfs-busybox.cpio"
  rm -f "$tree/init"
  # Reproducible: fixed UUID, hash seed and time (mke2fs reads E2FSPROGS_FAKE_TIME=0 as unset).
  # mke2fs copies ctime and atime from the source files, which cannot be pinned there (ctime is
  # always "now", reading updates atime), so debugfs resets them afterwards.
  E2FSPROGS_FAKE_TIME=1 mkfs.ext4 -q -F -L kiln-root -U 6b696c6e-0000-4000-8000-726f6f746673 \
    -E root_owner=0:0,hash_seed=6b696c6e-0000-4000-8000-686173680000 \
    -d "$tree" "$out.tmp/rootfs.ext4" 64M >&2
  (cd "$tree" && find . -mindepth 1 | LC_ALL=C sort | sed 's|^\.||'; echo /; echo /lost+found) |
    awk '{ printf "sif %s ctime 1\nsif %s atime 1\n", $0, $0 }' > "$work/fix-times"
  E2FSPROGS_FAKE_TIME=1 debugfs -w -f "$work/fix-times" "$out.tmp/rootfs.ext4" >/dev/null 2>&1
  rm -rf "$work" "$out"
  mv "$out.tmp" "$out"
}

main() {
  ensure_packages
  local root; root=$(cache_root)
  mkdir -p "$root"
  exec 9>"$root/.guest-build.lock"
  flock 9

  local kinputs uinputs khash uhash
  kinputs=$( { echo "linux-source-6.1 $(pkg_version linux-source-6.1)"; declare -f build_kernel
              sha256sum "$here/config.fragment" "$here"/patches/*.patch | sed "s#$here/##"; } )
  uinputs=$( { for p in busybox-static e2fsprogs musl-tools gcc; do echo "$p $(pkg_version $p)"; done
              declare -f make_cpio build_userspace; (cd "$here" && find rootfs init tools tiny -type f | LC_ALL=C sort | xargs sha256sum); } )
  khash=$(sha256sum <<<"$kinputs" | cut -c1-16)
  uhash=$(sha256sum <<<"$uinputs" | cut -c1-16)
  local kdir="$root/kernel-$khash" udir="$root/userspace-$uhash" gdir="$root/guest-$khash-$uhash"
  if ((force)); then rm -rf "$kdir" "$udir" "$gdir"; fi

  [[ -f "$kdir/vmlinux" ]] || build_kernel "$kdir"
  [[ -f "$udir/initramfs.cpio" ]] || build_userspace "$udir"
  if [[ ! -f "$gdir/inputs.txt" ]]; then
    rm -rf "$gdir.tmp"; mkdir -p "$gdir.tmp"
    ln "$kdir"/{vmlinux,bzImage,config} "$udir"/{initramfs.cpio,initramfs-busybox.cpio,rootfs.ext4,kiln-tiny} "$gdir.tmp/" 2>/dev/null ||
      cp "$kdir"/{vmlinux,bzImage,config} "$udir"/{initramfs.cpio,initramfs-busybox.cpio,rootfs.ext4,kiln-tiny} "$gdir.tmp/"
    printf '%s\n---\n%s\n' "$kinputs" "$uinputs" | grep -v '^ ' > "$gdir.tmp/inputs.txt"
    rm -rf "$gdir"; mv "$gdir.tmp" "$gdir"
    log "guest ready in $gdir"
  fi
  echo "$gdir"
}

main "$@"
