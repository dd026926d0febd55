#!/usr/bin/env bash
# Builds Kubernetes' server binaries from the official sources, through the Go module proxy, and
# prints the folder that holds them: kube-apiserver, kube-controller-manager, kube-scheduler,
# kubelet, kube-proxy and kubectl, in one `go build` sharing its cache. Cached under
# $KILN_CACHE/kubernetes-<version>-<hash of this script>.
#
# The module zip of k8s.io/kubernetes omits the staging/ folder (each staging repository is a
# module of its own) and its go.mod points at staging/ with replace directives; the published
# staging modules (k8s.io/api v0.X.Y, ...) are the same code at the same tag. So the build drops
# those replace directives and requires the published modules instead.
#
#   resources/cluster/build-kubernetes.sh
set -euo pipefail
K8S_VERSION=${K8S_VERSION:-1.34.4}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { echo "build-kubernetes: $*" >&2; }

# shellcheck source=../lib/cache.sh
source "$here/../lib/cache.sh"
command -v go >/dev/null || export PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { log "needs Go"; exit 1; }

key=$( { echo "$K8S_VERSION"; go version; sha256sum < "${BASH_SOURCE[0]}"; } | sha256sum | cut -c1-12)
out="$(cache_root)/kubernetes-$K8S_VERSION-$key"
if [[ -x "$out/kubelet" ]]; then echo "$out"; exit 0; fi

work="$out.src"
rm -rf "$work"
mkdir -p "$(dirname "$work")"
log "fetching k8s.io/kubernetes@v$K8S_VERSION from the Go module proxy"
dir=$(cd "$(mktemp -d)" && go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
[[ -d "$dir" ]] || { log "download failed"; exit 1; }
cp -r "$dir" "$work"
chmod -R u+w "$work"
cd "$work"
rm -rf vendor go.work go.work.sum
minor=${K8S_VERSION#*.}
staging_version="v0.$minor"
for mod in $(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' go.mod); do
  go mod edit -dropreplace="$mod" -require="$mod@$staging_version"
done
pkg=k8s.io/component-base/version
cpkg=k8s.io/client-go/pkg/version
ldflags="-s -w"
for p in $pkg $cpkg; do
  ldflags+=" -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=${K8S_VERSION%%.*} -X $p.gitMinor=${minor%%.*}"
  ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done
mkdir -p "$out.tmp"
log "building (cold: tens of minutes on 2 cores)"
GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out.tmp/" \
  ./cmd/kube-apiserver ./cmd/kube-controller-manager ./cmd/kube-scheduler ./cmd/kubelet ./cmd/kube-proxy ./cmd/kubectl
rm -rf "$out" && mv "$out.tmp" "$out"
rm -rf "$work"
echo "$out"
