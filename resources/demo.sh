#!/usr/bin/env bash
# The Kiln demo: builds the default guest if it is missing, builds kiln-vmm, and boots the guest
# with its console on this terminal. It powers itself off once user space is up.
#
#   resources/demo.sh            boot, print the kernel log, the marker and the boot time, exit
#   resources/demo.sh --shell    boot the busybox initramfs into an interactive shell instead
#   resources/demo.sh -- ARGS    pass further options to kiln-vmm (e.g. -- --vcpus 2)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

initrd=initramfs.cpio
cmdline="console=ttyS0"
if [[ "${1:-}" == "--shell" ]]; then
  initrd=initramfs-busybox.cpio
  cmdline="console=ttyS0 quiet kiln.action=shell"
  shift
fi
[[ "${1:-}" == "--" ]] && shift

guest=$(resources/guest/build.sh)
cargo build --release -p vmm >&2
target=${CARGO_TARGET_DIR:-$root/target}
echo "kiln demo: booting $guest/vmlinux (guest ring 0 may be emulated on this host: expect 30-60 s)" >&2
exec "$target/release/kiln-vmm" --kernel "$guest/vmlinux" --initrd "$guest/$initrd" \
  --cmdline "$cmdline" --boot-timer "$@"
