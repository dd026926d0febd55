#!/usr/bin/env bash
# Kiln's full test suite: formatting, lints, unit tests, and end-to-end tests that boot real
# guests on this machine's KVM. Builds the guest first if it is missing (cached).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

[[ -r /dev/kvm && -w /dev/kvm ]] || { echo "test: /dev/kvm is missing or not accessible" >&2; exit 1; }
guest=$(resources/guest/build.sh)
target=${CARGO_TARGET_DIR:-$root/target}

cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo build --release --workspace
KILN_GUEST_DIR=$guest KILN_VMM=$target/release/kiln-vmm cargo test --release --workspace
