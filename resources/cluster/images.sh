# OCI image archives for the development cluster, built here without a registry or a container
# engine (sourced by `cluster`; needs $here, $state, cache_root, log, die):
#   pause_image        registry.k8s.io/pause: Kubernetes' own build/pause/linux/pause.c, static
#   busybox_image      kiln.local/busybox:dev: Debian's busybox-static, every applet linked
#   provisioner_image  kiln.local/local-path-provisioner: rancher's, from its Go module
#   coredns_image      registry.k8s.io/coredns/coredns at the version Kubernetes' own DNS addon
#                      names, from CoreDNS's Go module
#   kiln_vmm_image     kiln.local/kiln-vmm: the release kiln-vmm and the libraries it links
# Each prints the archive's path. Archives go to $state/images.

PAUSE_IMAGE=registry.k8s.io/pause:3.10
LOCAL_PATH_VERSION=v0.0.30
PROVISIONER_IMAGE=kiln.local/local-path-provisioner:$LOCAL_PATH_VERSION
BUSYBOX_IMAGE=kiln.local/busybox:dev

# pack ROOTFS NAME ENTRYPOINT_JSON OUT: one reproducible layer of ROOTFS as the OCI archive OUT;
# removes ROOTFS and prints OUT.
pack() {
  local rootfs=$1 name=$2 entrypoint=$3 out=$4 layer
  mkdir -p "$(dirname "$out")"
  layer=$(mktemp)
  chmod 755 "$rootfs"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$rootfs" -cf "$layer" .
  "$here/oci-image.sh" "$layer" "$name" "$entrypoint" "$out.tmp"
  mv "$out.tmp" "$out"
  rm -rf "$layer" "$rootfs"
  echo "$out"
}

go_bin() { # go_bin MODULE VERSION BINARY [LDFLAGS]: `go install`s MODULE@VERSION once; prints it
  command -v go >/dev/null || export PATH=$PATH:/usr/local/go/bin
  local module=$1 version=$2 bin=$3 ldflags=${4:-} key out
  key=$( { echo "$module@$version $ldflags"; go version; } | sha256sum | cut -c1-12)
  out="$(cache_root)/$bin-$version-$key"
  if [[ ! -x "$out/$bin" ]]; then
    log "building $module@$version"
    rm -rf "$out.tmp"
    GOBIN="$out.tmp" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w $ldflags" \
      "$module@$version" >&2
    rm -rf "$out" && mv "$out.tmp" "$out"
  fi
  echo "$out/$bin"
}

# k8s_source: the k8s.io/kubernetes module folder (build/pause, cluster/addons), looked up once
# per run: load_images sets K8S_SOURCE for the image builders it runs in subshells.
K8S_SOURCE=
k8s_source() {
  command -v go >/dev/null || export PATH=$PATH:/usr/local/go/bin
  if [[ -z "$K8S_SOURCE" ]]; then
    K8S_SOURCE=$(cd / && go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" |
      sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
    [[ -d "$K8S_SOURCE" ]] || die "cannot fetch k8s.io/kubernetes@v$K8S_VERSION"
  fi
  echo "$K8S_SOURCE"
}

# coredns_manifest: Kubernetes' CoreDNS addon (cluster/addons/dns/coredns/coredns.yaml.sed)
coredns_manifest() { echo "$(k8s_source)/cluster/addons/dns/coredns/coredns.yaml.sed"; }

pause_image() {
  local out=$state/images/pause.tar work
  [[ -f "$out" ]] && { echo "$out"; return; }
  work=$(mktemp -d)
  musl-gcc -static -Os -o "$work/pause" "$(k8s_source)/build/pause/linux/pause.c" \
    -DVERSION=3.10-kiln >&2
  strip "$work/pause"
  pack "$work" "$PAUSE_IMAGE" '["/pause"]' "$out"
}

busybox_image() {
  local out=$state/images/busybox.tar work a
  [[ -f "$out" ]] && { echo "$out"; return; }
  command -v busybox >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y \
    --no-install-recommends busybox-static >&2
  work=$(mktemp -d)
  mkdir -p "$work/bin" "$work/tmp"
  cp "$(command -v busybox)" "$work/bin/busybox"
  for a in $(busybox --list); do [[ -e "$work/bin/$a" ]] || ln -s busybox "$work/bin/$a"; done
  pack "$work" "$BUSYBOX_IMAGE" '["/bin/sh"]' "$out"
}

provisioner_image() {
  local out=$state/images/local-path-provisioner-$LOCAL_PATH_VERSION.tar work bin
  [[ -f "$out" ]] && { echo "$out"; return; }
  bin=$(go_bin github.com/rancher/local-path-provisioner "$LOCAL_PATH_VERSION" \
    local-path-provisioner "-X main.VERSION=$LOCAL_PATH_VERSION")
  work=$(mktemp -d)
  mkdir -p "$work/usr/bin" "$work/tmp"
  cp "$bin" "$work/usr/bin/"
  pack "$work" "$PROVISIONER_IMAGE" '["/usr/bin/local-path-provisioner"]' "$out"
}

coredns_image() {
  local version out work bin
  version=$(sed -n 's#.*image: registry.k8s.io/coredns/coredns:\(v[0-9.]*\).*#\1#p' \
    "$(coredns_manifest)")
  [[ -n "$version" ]] || die "no CoreDNS image in $(coredns_manifest)"
  out=$state/images/coredns-$version.tar
  [[ -f "$out" ]] && { echo "$out"; return; }
  bin=$(go_bin github.com/coredns/coredns "$version" coredns)
  work=$(mktemp -d)
  cp "$bin" "$work/coredns"
  pack "$work" "registry.k8s.io/coredns/coredns:$version" '["/coredns"]' "$out"
}

# kiln_vmm_image: the release kiln-vmm ($KILN_VMM, else cargo's, built if missing or stale) with
# the shared libraries it links, tagged with its version; the launcher image of Kiln's VM pods.
kiln_vmm_image() {
  local root target bin version out work lib
  bin=${KILN_VMM:-}
  if [[ -z "$bin" ]]; then
    root=$(cd "$here/../.." && pwd)
    command -v cargo >/dev/null || export PATH=$PATH:$HOME/.cargo/bin
    command -v cargo >/dev/null || die "building kiln-vmm needs cargo (or set KILN_VMM)"
    (cd "$root" && cargo build --release --quiet --bin kiln-vmm) >&2
    target=$(cd "$root" && cargo metadata --format-version 1 --no-deps |
      sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    bin=$target/release/kiln-vmm
  fi
  [[ -x "$bin" ]] || die "no kiln-vmm at $bin"
  version=$("$bin" --version | awk '{print $2}')
  out=$state/images/kiln-vmm.tar
  work=$(mktemp -d)
  mkdir -p "$work/usr/bin" "$work/tmp"
  cp "$bin" "$work/usr/bin/kiln-vmm"
  for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    mkdir -p "$work$(dirname "$lib")"
    cp -L "$lib" "$work$lib"
  done
  pack "$work" "kiln.local/kiln-vmm:$version" '["/usr/bin/kiln-vmm"]' "$out"
}
