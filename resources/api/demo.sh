#!/usr/bin/env bash
# Drives a kiln-vmm through its HTTP API with curl, printing every request and answer: configure
# (boot source, machine, a root drive, entropy), start, watch the console, pause, resume, and
# end the guest with Ctrl-Alt-Del (its init syncs and reboots; kiln-vmm exits).
#
#   resources/api/demo.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
command -v curl >/dev/null || { echo "api demo: needs curl (apt-get install curl)" >&2; exit 1; }
guest=$(resources/guest/build.sh)
cargo build --release -p vmm >&2
target=${CARGO_TARGET_DIR:-$root/target}

work=$(mktemp -d /tmp/kiln-api-demo.XXXXXX)
vmm_pid=
cleanup() { [[ -n "$vmm_pid" ]] && kill "$vmm_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cp "$guest/rootfs.ext4" "$work/root.ext4"
sock=$work/api.sock

"$target/release/kiln-vmm" --api-sock "$sock" --id demo --boot-timer \
  --serial-out "$work/console.log" 2>"$work/vmm.log" &
vmm_pid=$!
for _ in $(seq 200); do [[ -S "$sock" ]] && break; sleep 0.01; done

api() { # METHOD PATH [JSON]
  echo "> $1 $2 ${3:-}" >&2
  local out
  out=$(curl -sS --unix-socket "$sock" -X "$1" "http://localhost$2" ${3:+-H 'Content-Type: application/json' -d "$3"} -w ' [%{http_code}]')
  echo "< $out" >&2
}

api GET /
api PUT /boot-source "{\"kernel_image_path\": \"$guest/vmlinux\", \"boot_args\": \"console=ttyS0 quiet kiln.action=hold\"}"
api PUT /machine-config '{"vcpu_count": 2, "mem_size_mib": 256}'
api PUT /drives/rootfs "{\"drive_id\": \"rootfs\", \"path_on_host\": \"$work/root.ext4\", \"is_root_device\": true, \"is_read_only\": false}"
api PUT /entropy '{}'
api PUT /machine-config '{"vcpu_count": 2, "mem_size_mib": 256, "vcpus": 4}'
api GET /vm/config
api PUT /actions '{"action_type": "InstanceStart"}'
api GET /kiln/v1/state
echo "api demo: waiting for the guest (guest ring 0 may be emulated on this host: 30-60 s)" >&2
until grep -q KILN_HOLDING "$work/console.log" 2>/dev/null; do
  kill -0 "$vmm_pid" 2>/dev/null || { cat "$work/vmm.log" >&2; exit 1; }
  sleep 1
done
sed 's/^/  console| /' "$work/console.log" | tail -3 >&2
api GET /kiln/v1/state
api PATCH /vm '{"state": "Paused"}'
api GET /
sleep 2
api PATCH /vm '{"state": "Resumed"}'
api PUT /machine-config '{"vcpu_count": 1, "mem_size_mib": 128}'
api PUT /actions '{"action_type": "SendCtrlAltDel"}'
status=0; wait "$vmm_pid" || status=$?
vmm_pid=
sed 's/^/  console| /' "$work/console.log" | tail -2 >&2
sed 's/^/  kiln-vmm| /' "$work/vmm.log" | tail -4 >&2
echo "api demo: kiln-vmm exited with status $status" >&2
