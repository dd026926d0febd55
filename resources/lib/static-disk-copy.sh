#!/usr/bin/env bash
# Builds kiln-disk-copy linked statically (it runs inside containerDisk images, which carry no
# libraries) as TARGET_DIR/release/kiln-disk-copy-static, and kiln-nocloud (it runs inside the
# Debian guest image) as TARGET_DIR/release/kiln-nocloud-static. A separate --target keeps their
# artefacts apart from the normal build's.
#
#   resources/lib/static-disk-copy.sh TARGET_DIR
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
target=$1
cd "$root"
CARGO_TARGET_DIR=$target RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --quiet -p kiln-disk-copy -p kiln-nocloud --target x86_64-unknown-linux-gnu
cp "$target/x86_64-unknown-linux-gnu/release/kiln-disk-copy" "$target/release/kiln-disk-copy-static"
cp "$target/x86_64-unknown-linux-gnu/release/kiln-nocloud" "$target/release/kiln-nocloud-static"
