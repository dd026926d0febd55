#!/bin/sh
# Runs kiln-vmm's end-to-end tests with every kiln-vmm traced by strace under the permissive
# filter, then derives the allow-lists from what each thread called (README.md in this folder).
# Usage: resources/seccomp/trace-tests.sh OUT.json   (as root; KILN_GUEST_DIR as for the tests)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:?usage: trace-tests.sh OUT.json}
work=$(mktemp -d)
target=${CARGO_TARGET_DIR:-$root/target}
# The workspace build, as CI and the README build it: Cargo unifies dependency features across
# the members (tokio gets `signal` from the controller), and they change what kiln-vmm calls.
cargo build --release -q --workspace --manifest-path "$root/Cargo.toml"
cat > "$work/kiln-vmm" <<EOS
#!/bin/sh
case " \$* " in *" --no-seccomp "*|*" --seccomp-filter "*) set -- "\$@";; *) set -- --seccomp-filter "$here/permissive.json" "\$@";; esac
exec strace -f -ff -qq -o "$work/trace/t" -- "$target/release/kiln-vmm" "\$@"
EOS
chmod +x "$work/kiln-vmm"
mkdir "$work/trace"
# Tests that look at the kiln-vmm process itself fail under strace; their calls still count.
KILN_VMM="$work/kiln-vmm" cargo test --release -q --no-fail-fast -p kiln-tests \
  --manifest-path "$root/Cargo.toml" --test tiny_guests --test api_lifecycle \
  --test api_robustness --test virtio_devices --test firecracker_sdk --test linux_boot \
  > "$work/tests.log" 2>&1 || true
python3 "$here/derive.py" "$work/trace" > "$out"
echo "traced $(ls "$work/trace" | wc -l) threads; wrote $out (test log: $work/tests.log)"
