#!/usr/bin/env bash
# Fuzzes a live kiln-vmm API socket with schemathesis (from PyPI), driven by the OpenAPI document:
# every response must match the document, schema-violating requests must be refused, nothing may
# answer 5xx, and kiln-vmm must still serve afterwards.
#
#   resources/api/schemathesis.sh [MAX_EXAMPLES]     (default 100 per operation)
#
# kiln-vmm runs before boot (nothing to start without a kernel), in a scratch folder, and as
# `nobody` when run as root: the fuzzer sends random paths for log and metrics files, which must
# not land anywhere that matters. schemathesis speaks TCP, so socat bridges to the unix socket.
# The virtualenv is cached (keyed by the schemathesis and Python versions) beside the guest build.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
max_examples=${1:-100}
ST_VERSION=4.32.5
seed=${KILN_ST_SEED:-20261127}

log() { echo "schemathesis: $*" >&2; }

# shellcheck source=../lib/cache.sh
source "$here/../lib/cache.sh"

need=()
command -v socat >/dev/null || need+=(socat)
command -v curl >/dev/null || need+=(curl)
python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
if ((${#need[@]})); then
  [[ $(id -u) -eq 0 ]] || { log "missing: ${need[*]} (apt-get install ${need[*]})"; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2 ||
    { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2; }
fi

venv="$(cache_root)/schemathesis-$ST_VERSION-$(python3 -c 'import sys; print("py%d.%d" % sys.version_info[:2])')"
if [[ ! -f "$venv/.complete" ]]; then
  log "installing schemathesis $ST_VERSION into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis==$ST_VERSION" >&2
  touch "$venv/.complete"
fi

vmm=${KILN_VMM:-$root/target/release/kiln-vmm}
[[ -x "$vmm" ]] || { log "kiln-vmm not built: cargo build --release -p vmm"; exit 1; }
vmm=$(realpath "$vmm")
work=$(mktemp -d /tmp/kiln-schemathesis.XXXXXX)
chmod 0777 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

as_user=()
if [[ $(id -u) -eq 0 ]]; then as_user=(setpriv --reuid=nobody --regid=nogroup --clear-groups); fi
(cd "$work" && exec "${as_user[@]}" "$vmm" --api-sock "$work/api.sock" --log-level warn) \
  >"$work/vmm.out" 2>"$work/vmm.err" &
vmm_pid=$!; pids+=("$vmm_pid")
for _ in $(seq 100); do [[ -S "$work/api.sock" ]] && break; sleep 0.05; done
[[ -S "$work/api.sock" ]] || { log "kiln-vmm did not create its socket"; cat "$work/vmm.err" >&2; exit 1; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
socat "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork" "UNIX-CONNECT:$work/api.sock" &
pids+=("$!")
for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done

log "fuzzing $max_examples examples per operation (seed $seed)"
status=0
(cd "$work" && "$venv/bin/schemathesis" run "$root/resources/openapi/kiln-vmm.yaml" \
  --url "http://127.0.0.1:$port" --checks all --exclude-checks positive_data_acceptance \
  --max-examples "$max_examples" --seed "$seed" --no-color) || status=$?

# Schema-valid requests may be refused: whether a path exists or memory suffices is the host's
# state, which no schema can express (hence positive_data_acceptance is off). Everything else
# is checked. And the VMM must have survived all of it.
if ! kill -0 "$vmm_pid" 2>/dev/null; then
  log "kiln-vmm died during fuzzing:"; cat "$work/vmm.err" >&2; exit 1
fi
answer=$(curl -sf --unix-socket "$work/api.sock" http://localhost/ || true)
[[ "$answer" == *'"state":"Not started"'* ]] || { log "kiln-vmm no longer answers GET /: $answer"; exit 1; }
exit "$status"
