#!/usr/bin/env bash
# Kiln's demo: a virtual machine as a Kubernetes object. On this machine (as root) it brings up
# the development cluster (building it the first time), builds Kiln and pushes its images to the
# cluster's registry, installs Kiln (kubectl apply -k resources/deploy), applies an example VM,
# waits for it to run, shows `kubectl get vm,vmi` and the guest's console, and leaves it running
# with the commands to try next. Run it again at any time: every step is idempotent.
#
#   resources/demo.sh                  the VM of resources/examples/vm-containerdisk.yaml
#   resources/demo.sh EXAMPLE.yaml     another example (its first VM)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
[[ $(id -u) -eq 0 ]] || { echo "demo: run as root (the cluster's node components and the guest build need it)" >&2; exit 1; }
example=${1:-resources/examples/vm-containerdisk.yaml}
vm=$(awk '/^kind: VirtualMachine$/{f=1} f && /^  name:|^metadata: \{name:/{print; exit}' "$example" |
  sed -E 's/.*name: *([a-z0-9-]+).*/\1/')
[[ -n "$vm" ]] || { echo "demo: no VirtualMachine in $example" >&2; exit 1; }

cluster=resources/cluster/cluster
say "The development cluster (the first time it is built from source: about 15 minutes)"
kubeconfig=$("$cluster" up)
export KUBECONFIG=$kubeconfig
bins=$(cat "$(dirname "$kubeconfig")/bin-folder")
target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
export PATH=$bins:$target/release:$PATH

say "Kiln's images, built from this checkout and pushed to the cluster's registry"
"$cluster" load-images

say "Installing Kiln: kubectl apply -k resources/deploy"
kubectl apply --server-side --force-conflicts -k resources/deploy >&2
kubectl -n kiln-system rollout status deploy/kiln-controller --timeout=180s >&2

say "A VM: kubectl apply -f $example"
kubectl apply -f "$example" >&2
kubectl wait "vm/$vm" --for=jsonpath='{.status.printableStatus}'=Running --timeout=300s >&2
kubectl get vm,vmi "$vm"
pod=$(kubectl get vmi "$vm" -o jsonpath='{.status.launcherPod}')
say "Its console (kubectl logs $pod), until the guest's marker"
for _ in $(seq 1 300); do
  kubectl logs "$pod" -c compute 2>/dev/null | grep -q KILN_GUEST_OK && break
  sleep 1
done
kubectl logs "$pod" -c compute | grep -v '^[0-9-]*T[0-9:.]*Z ' | tail -20
say "Booted: the guest signalled its boot, so the VM is Ready, with its measured BOOT time"
kubectl wait "vm/$vm" --for=condition=Ready --timeout=300s >&2
kubectl get vm,vmi "$vm"

cat >&2 <<MSG

The VM keeps running. Next, in this shell:

  export KUBECONFIG=$KUBECONFIG PATH=$bins:$target/release:\$PATH
  kubectl get vm,vmi                 # STATUS, READY, and the guest's BOOT time
  kubectl kiln console $vm           # its serial console (a shell); Ctrl-] leaves it
  kubectl kiln pause vm $vm          # ... and unpause
  kubectl kiln stop $vm              # the guest shuts down; the pod goes
  kubectl kiln start $vm
  kubectl delete vm $vm
  resources/cluster/cluster down     # stops the whole cluster
MSG
