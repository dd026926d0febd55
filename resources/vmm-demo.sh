#!/usr/bin/env bash
# The standalone kiln-vmm demo: builds the default guest if it is missing, builds kiln-vmm, and boots the guest
# with its console on this terminal. It powers itself off once user space is up.
#
#   resources/vmm-demo.sh            boot, print the kernel log, the marker and the boot time, exit
#   resources/vmm-demo.sh --shell    boot the busybox initramfs into an interactive shell instead
#   resources/vmm-demo.sh --rootfs   boot a copy of rootfs.ext4 from a virtio-blk disk (with a
#                                virtio-rng device) into an interactive shell
#   resources/vmm-demo.sh -- ARGS    pass further options to kiln-vmm (e.g. -- --vcpus 2)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

guest=$(resources/guest/build.sh)
mode=${1:-}
boot=(--initrd "$guest/initramfs.cpio" --cmdline "console=ttyS0")
case "$mode" in
  --shell)
    boot=(--initrd "$guest/initramfs-busybox.cpio" --cmdline "console=ttyS0 quiet kiln.action=shell")
    shift ;;
  --rootfs)
    # The cached image is shared: the guest gets its own writable copy.
    disk=$(mktemp --tmpdir kiln-demo-rootfs.XXXXXX.ext4)
    trap 'rm -f "$disk"' EXIT
    cp "$guest/rootfs.ext4" "$disk"
    boot=(--disk "$disk,id=demo-root" --entropy --mem 256
          --cmdline "console=ttyS0 quiet root=/dev/vda rw kiln.action=shell")
    echo "kiln demo: try  cat /sys/block/vda/serial; head -c 16 /dev/hwrng | od -An -tx1; df /" >&2
    shift ;;
esac
[[ "${1:-}" == "--" ]] && shift

cargo build --release -p vmm >&2
target=${CARGO_TARGET_DIR:-$root/target}
echo "kiln demo: booting $guest/vmlinux (guest ring 0 may be emulated on this host: expect 30-60 s)" >&2
"$target/release/kiln-vmm" --kernel "$guest/vmlinux" "${boot[@]}" --boot-timer "$@"
