# OCI image archives for the development cluster, built here without a registry or a container
# engine (sourced by `cluster`; needs $here, $state, cache_root, log, die):
#   pause_image        registry.k8s.io/pause: Kubernetes' own build/pause/linux/pause.c, static
#   busybox_image      kiln.local/busybox:dev: Debian's busybox-static, every applet linked
#   provisioner_image  kiln.local/local-path-provisioner: rancher's, from its Go module
#   csi_provisioner_image  kiln.local/csi-provisioner: kubernetes-csi's external-provisioner
#                      sidecar, from its Go module (for the hostpath.csi.kiln.dev driver)
#   coredns_image      registry.k8s.io/coredns/coredns at the version Kubernetes' own DNS addon
#                      names, from CoreDNS's Go module
#   kiln_vmm_image     kiln.local/kiln-vmm: the release kiln-vmm and the libraries it links
#   kiln_launcher_image, kiln_controller_image, kiln_guest_disk_image, kiln_guest_kernel_image
#                      Kiln's own images (see their comments); kiln_build builds what they pack
# Each prints the archive's path. Archives go to $state/images.

PAUSE_IMAGE=registry.k8s.io/pause:3.10
LOCAL_PATH_VERSION=v0.0.30
PROVISIONER_IMAGE=kiln.local/local-path-provisioner:$LOCAL_PATH_VERSION
BUSYBOX_IMAGE=kiln.local/busybox:dev
CSI_PROVISIONER_VERSION=v5.3.0
CSI_PROVISIONER_IMAGE=kiln.local/csi-provisioner:$CSI_PROVISIONER_VERSION

# pack ROOTFS NAME ENTRYPOINT_JSON OUT [gzip]: one reproducible layer of ROOTFS as the OCI
# archive OUT (gzip-compressed when asked); removes ROOTFS and prints OUT.
pack() {
  local rootfs=$1 name=$2 entrypoint=$3 out=$4 compress=${5:-} layer
  mkdir -p "$(dirname "$out")"
  layer=$(mktemp)
  chmod 755 "$rootfs"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$rootfs" -cf "$layer" .
  "$here/oci-image.sh" "$layer" "$name" "$entrypoint" "$out.tmp" "$compress"
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

# module_dir MODULE@VERSION: the module's source folder in Go's module cache (downloaded once).
module_dir() {
  command -v go >/dev/null || export PATH=$PATH:/usr/local/go/bin
  (cd / && go mod download -json "$1" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
}

# go_module_bin MODULE VERSION PACKAGE BINARY [LDFLAGS]: builds PACKAGE (a folder in MODULE) in
# a copy of MODULE@VERSION's source with its own go.mod and replace directives, once; prints it.
# For modules whose commands `go install m@v` refuses (the proxy lists no versions of some).
go_module_bin() {
  command -v go >/dev/null || export PATH=$PATH:/usr/local/go/bin
  local module=$1 version=$2 package=$3 bin=$4 ldflags=${5:-} key out src work
  key=$( { echo "$module@$version $package $ldflags"; go version; } | sha256sum | cut -c1-12)
  out="$(cache_root)/$bin-$version-$key"
  if [[ ! -x "$out/$bin" ]]; then
    log "building $module@$version/$package"
    src=$(module_dir "$module@$version")
    [[ -d "$src" ]] || die "cannot fetch $module@$version"
    work=$(mktemp -d)
    cp -r "$src/." "$work" && chmod -R u+w "$work"
    rm -rf "$out.tmp" && mkdir -p "$out.tmp"
    (cd "$work" && CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags "-s -w $ldflags" \
      -o "$out.tmp/$bin" "./$package") >&2
    rm -rf "$work" "$out" && mv "$out.tmp" "$out"
  fi
  echo "$out/$bin"
}

# k8s_source: the k8s.io/kubernetes module folder (build/pause, cluster/addons), looked up once
# per run: load_images sets K8S_SOURCE for the image builders it runs in subshells.
K8S_SOURCE=
k8s_source() {
  command -v go >/dev/null || export PATH=$PATH:/usr/local/go/bin
  if [[ -z "$K8S_SOURCE" ]]; then
    K8S_SOURCE=$(module_dir "k8s.io/kubernetes@v$K8S_VERSION")
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

csi_provisioner_image() {
  local out=$state/images/csi-provisioner-$CSI_PROVISIONER_VERSION.tar work bin
  [[ -f "$out" ]] && { echo "$out"; return; }
  bin=$(go_module_bin github.com/kubernetes-csi/external-provisioner/v5 \
    "$CSI_PROVISIONER_VERSION" cmd/csi-provisioner csi-provisioner \
    "-X main.version=$CSI_PROVISIONER_VERSION")
  work=$(mktemp -d)
  mkdir -p "$work/tmp"
  cp "$bin" "$work/csi-provisioner"
  pack "$work" "$CSI_PROVISIONER_IMAGE" '["/csi-provisioner"]' "$out"
}

# csi_provisioner_rbac: the external-provisioner's own RBAC manifest (its service account,
# ClusterRole and bindings), from its module.
csi_provisioner_rbac() {
  local src
  src=$(module_dir "github.com/kubernetes-csi/external-provisioner/v5@$CSI_PROVISIONER_VERSION")
  [[ -f "$src/deploy/kubernetes/rbac.yaml" ]] || die "no rbac.yaml in external-provisioner@$CSI_PROVISIONER_VERSION"
  echo "$src/deploy/kubernetes/rbac.yaml"
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

# kiln_build: the release binaries Kiln's images pack, built once per call (cargo skips what is
# up to date): kiln-vmm, kiln-launcher, kiln-controller, kubectl-kiln, kiln-importer, and kiln-disk-copy linked
# statically as kiln-disk-copy-static (it runs inside containerDisk images, which have no
# libraries), kiln-nocloud as kiln-nocloud-static (inside the Debian image). Sets KILN_BIN to their folder and KILN_GUEST to the guest build's. Given
# $KILN_BIN (a folder already holding them, as the test suite passes) nothing is built;
# $KILN_GUEST_DIR names the guest; $KILN_VMM, when set, is the kiln-vmm packed.
KILN_BIN=${KILN_BIN:-} KILN_GUEST=${KILN_GUEST_DIR:-}
kiln_build() {
  local root target
  root=$(cd "$here/../.." && pwd)
  [[ -n "$KILN_GUEST" ]] || KILN_GUEST=$("$root/resources/guest/build.sh")
  [[ -n "$KILN_BIN" ]] && return 0
  command -v cargo >/dev/null || export PATH=$PATH:$HOME/.cargo/bin
  command -v cargo >/dev/null || die "building Kiln's images needs cargo"
  target=$(cd "$root" && cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  log "building Kiln's release binaries"
  (cd "$root" && cargo build --release --quiet --bin kiln-vmm --bin kiln-launcher --bin kiln-controller \
    --bin kubectl-kiln --bin kiln-importer) >&2
  "$root/resources/lib/static-disk-copy.sh" "$target" >&2
  KILN_BIN=$target/release
}

# with_libs BINARY ROOTFS: copies BINARY's shared libraries (ldd) into ROOTFS.
with_libs() {
  local lib
  for lib in $(ldd "$1" | grep -o '/[^ ]*'); do
    mkdir -p "$2$(dirname "$lib")"
    cp -L "$lib" "$2$lib"
  done
}

version_of() { "$1" --version | awk '{print $2}'; }

# with_ca_certificates ROOTFS: the host's CA bundle (Debian's ca-certificates), for programs that
# speak TLS to registries and image servers.
with_ca_certificates() {
  [[ -f /etc/ssl/certs/ca-certificates.crt ]] || DEBIAN_FRONTEND=noninteractive apt-get install -y \
    --no-install-recommends ca-certificates >&2
  mkdir -p "$1/etc/ssl/certs"
  cp /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/"
}

# kiln_vmm_image: the release kiln-vmm ($KILN_VMM, else the one kiln_build made) with the shared
# libraries it links, tagged with its version.
kiln_vmm_image() {
  kiln_build
  local bin=${KILN_VMM:-$KILN_BIN/kiln-vmm} out=$state/images/kiln-vmm.tar work
  [[ -x "$bin" ]] || die "no kiln-vmm at $bin"
  work=$(mktemp -d)
  mkdir -p "$work/usr/bin" "$work/tmp"
  cp "$bin" "$work/usr/bin/kiln-vmm"
  with_libs "$bin" "$work"
  pack "$work" "kiln.local/kiln-vmm:$(version_of "$bin")" '["/usr/bin/kiln-vmm"]' "$out"
}

# kiln_launcher_image: the main process of every VM pod. kiln-launcher, kiln-vmm, the static
# kiln-disk-copy (installed by the pod's first init container for the image containers), and
# Kiln's own guest kernel and initramfs (/usr/share/kiln/guest) for VMs without kernelBoot.
# nft comes with its libraries (the masquerade binding's NAT rules).
kiln_launcher_image() {
  kiln_build
  local vmm=${KILN_VMM:-$KILN_BIN/kiln-vmm} out=$state/images/kiln-launcher.tar work
  work=$(mktemp -d)
  mkdir -p "$work/usr/bin" "$work/usr/share/kiln/guest" "$work/tmp"
  cp "$KILN_BIN/kiln-launcher" "$vmm" "$work/usr/bin/"
  cp "$KILN_BIN/kiln-disk-copy-static" "$work/usr/bin/kiln-disk-copy"
  strip "$work/usr/bin/kiln-disk-copy" "$work/usr/bin/kiln-launcher"
  cp "$KILN_GUEST/vmlinux" "$KILN_GUEST/initramfs.cpio" "$work/usr/share/kiln/guest/"
  with_libs "$KILN_BIN/kiln-launcher" "$work"
  with_libs "$vmm" "$work"
  # nft (Debian's nftables) for the masquerade binding's NAT rules, run by the network init
  # container.
  command -v nft >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y \
    --no-install-recommends nftables >&2
  mkdir -p "$work/usr/sbin"
  cp "$(command -v nft)" "$work/usr/sbin/nft"
  with_libs "$work/usr/sbin/nft" "$work"
  pack "$work" "kiln.local/kiln-launcher:$(version_of "$KILN_BIN/kiln-launcher")" \
    '["/usr/bin/kiln-launcher"]' "$out"
}

# kiln_controller_image: kiln-controller (runs as any user: everything it needs is in the image).
kiln_controller_image() {
  kiln_build
  local out=$state/images/kiln-controller.tar work
  work=$(mktemp -d)
  mkdir -p "$work/usr/bin" "$work/tmp"
  cp "$KILN_BIN/kiln-controller" "$work/usr/bin/"
  strip "$work/usr/bin/kiln-controller"
  with_libs "$KILN_BIN/kiln-controller" "$work"
  with_ca_certificates "$work"
  pack "$work" "kiln.local/kiln-controller:$(version_of "$KILN_BIN/kiln-controller")" \
    '["/usr/bin/kiln-controller"]' "$out"
}

# kiln_importer_image: kiln-importer, the one process of DataVolume importer and clone pods (runs
# as user 107; everything it needs is in the image).
kiln_importer_image() {
  kiln_build
  local out=$state/images/kiln-importer.tar work
  work=$(mktemp -d)
  mkdir -p "$work/usr/bin" "$work/tmp"
  cp "$KILN_BIN/kiln-importer" "$work/usr/bin/"
  strip "$work/usr/bin/kiln-importer"
  with_libs "$KILN_BIN/kiln-importer" "$work"
  with_ca_certificates "$work"
  pack "$work" "kiln.local/kiln-importer:$(version_of "$KILN_BIN/kiln-importer")" \
    '["/usr/bin/kiln-importer"]' "$out"
}

# kiln_guest_disk_image: Kiln's guest root filesystem as a containerDisk (KubeVirt's layout: the
# one image under /disk/), kiln.local/containerdisks/kiln-guest:latest.
kiln_guest_disk_image() {
  kiln_build
  local out=$state/images/kiln-guest-disk.tar work
  work=$(mktemp -d)
  mkdir -p "$work/disk"
  cp --sparse=always "$KILN_GUEST/rootfs.ext4" "$work/disk/rootfs.img"
  pack "$work" "kiln.local/containerdisks/kiln-guest:latest" '["/bin/false"]' "$out"
}

# kiln_debian_disk_image: the Debian 12 golden image (resources/guest/debian) as a containerDisk,
# kiln.local/containerdisks/debian:12, its layer gzip-compressed (1 GiB of filesystem, ~0.4 GiB
# used). Rebuilt only when the archive's image changes (keyed by the image's folder).
kiln_debian_disk_image() {
  local root disk key out work
  root=$(cd "$here/../.." && pwd)
  disk=$(KILN_NOCLOUD=$KILN_BIN/kiln-nocloud-static "$root/resources/guest/debian/build.sh") ||
    die "the Debian image did not build"
  key=$(basename "$disk")
  out=$state/images/debian-disk-$key.tar
  [[ -f "$out" ]] && { echo "$out"; return; }
  rm -f "$state"/images/debian-disk-*.tar
  work=$(mktemp -d)
  mkdir -p "$work/disk"
  cp --sparse=always "$disk/debian.ext4" "$work/disk/debian.img"
  pack "$work" "kiln.local/containerdisks/debian:12" '["/bin/false"]' "$out" gzip
}

# ssh_client_image: Debian's OpenSSH client with its libraries, kiln.local/openssh-client:dev,
# for the tests that log in to guests from a pod.
ssh_client_image() {
  local out=$state/images/openssh-client.tar work
  command -v ssh >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y \
    --no-install-recommends openssh-client >&2
  work=$(mktemp -d)
  mkdir -p "$work/usr/bin" "$work/etc" "$work/root" "$work/tmp"
  cp "$(command -v ssh)" "$work/usr/bin/ssh"
  with_libs "$work/usr/bin/ssh" "$work"
  echo 'root:x:0:0:root:/root:/bin/false' > "$work/etc/passwd"
  echo 'root:x:0:' > "$work/etc/group"
  pack "$work" "kiln.local/openssh-client:dev" '["/usr/bin/ssh"]' "$out"
}

# kiln_guest_kernel_image: Kiln's guest kernels for firmware.kernelBoot.container:
# /boot/vmlinux, /boot/initramfs.cpio and /boot/kiln-tiny, kiln.local/kiln-guest-kernel:latest.
kiln_guest_kernel_image() {
  kiln_build
  local out=$state/images/kiln-guest-kernel.tar work
  work=$(mktemp -d)
  mkdir -p "$work/boot"
  cp "$KILN_GUEST/vmlinux" "$KILN_GUEST/initramfs.cpio" "$KILN_GUEST/kiln-tiny" "$work/boot/"
  pack "$work" "kiln.local/kiln-guest-kernel:latest" '["/bin/false"]' "$out"
}
