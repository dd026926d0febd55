#!/usr/bin/env bash
# Kiln's full test suite: formatting, lints, unit tests, and end-to-end tests that boot real
# guests on this machine's KVM. Builds the guest first if it is missing (cached).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

[[ -r /dev/kvm && -w /dev/kvm ]] || { echo "test: /dev/kvm is missing or not accessible" >&2; exit 1; }
# The virtio end-to-end tests check images with e2fsprogs and build a network namespace with
# iproute2 (which needs root, as CI runs); busybox pings from the host side; dosfstools checks
# the launcher's NoCloud seeds; the Kubernetes test puts a block volume on a loop device.
missing=()
for tool in ip:iproute2 e2fsck:e2fsprogs busybox:busybox-static sha256sum:coreutils fsck.vfat:dosfstools losetup:mount; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if ((${#missing[@]})); then
  [[ $(id -u) -eq 0 ]] || { echo "test: missing ${missing[*]} (apt-get install them)" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2
fi
# The Firecracker Go SDK compatibility test builds a Go program (modules from the Go proxy).
command -v go >/dev/null || { echo "test: needs Go (the Firecracker SDK test builds with it)" >&2; exit 1; }
guest=$(resources/guest/build.sh)
target=${CARGO_TARGET_DIR:-$root/target}

cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo build --release --workspace
# The dev cluster's CSI driver: kubernetes-csi's sanity suite and its clone tests (they
# bind-mount and attach loop devices, so as root, as CI runs).
(cd resources/cluster/csi-hostpath && gofmt -l . | grep . && exit 1; go vet . && go test -count=1 .)
# Kiln's images pack kiln-disk-copy linked statically (it runs inside containerDisk images).
resources/lib/static-disk-copy.sh "$target"
KILN_GUEST_DIR=$guest KILN_VMM=$target/release/kiln-vmm cargo test --release --workspace
# The live API socket against its OpenAPI document, fuzzed (installs schemathesis from PyPI once).
KILN_VMM=$target/release/kiln-vmm resources/api/schemathesis.sh
