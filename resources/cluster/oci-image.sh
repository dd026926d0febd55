#!/usr/bin/env bash
# Writes a single-layer OCI image archive that `ctr images import` (and any OCI tool) loads,
# from a layer tar, without a registry or a container engine.
#
#   resources/cluster/oci-image.sh LAYER.tar NAME:TAG ENTRYPOINT_JSON OUT.tar [gzip]
#
# With gzip the layer is stored compressed (gzip -n: reproducible), for large sparse disks.
set -euo pipefail
layer=$1 name=$2 entrypoint=$3 out=$4 compress=${5:-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/blobs/sha256"
blob() { # FILE MEDIATYPE: stores FILE as a blob, prints its descriptor JSON
  local d; d=$(sha256sum "$1" | cut -d' ' -f1)
  cp "$1" "$work/blobs/sha256/$d"
  printf '{"mediaType": "%s", "digest": "sha256:%s", "size": %d}' "$2" "$d" "$(stat -c %s "$1")"
}
diff_id=$(sha256sum "$layer" | cut -d' ' -f1)
if [[ "$compress" == gzip ]]; then
  gzip -n -c "$layer" > "$work/layer.tar.gz"
  layer_desc=$(blob "$work/layer.tar.gz" application/vnd.oci.image.layer.v1.tar+gzip)
  rm -f "$work/layer.tar.gz"
else
  layer_desc=$(blob "$layer" application/vnd.oci.image.layer.v1.tar)
fi
printf '{"architecture": "amd64", "os": "linux", "config": {"Entrypoint": %s}, "rootfs": {"type": "layers", "diff_ids": ["sha256:%s"]}}' \
  "$entrypoint" "$diff_id" > "$work/config.json"
config_desc=$(blob "$work/config.json" application/vnd.oci.image.config.v1+json)
printf '{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": %s, "layers": [%s]}' \
  "$config_desc" "$layer_desc" > "$work/manifest.json"
manifest_desc=$(blob "$work/manifest.json" application/vnd.oci.image.manifest.v1+json)
printf '{"schemaVersion": 2, "manifests": [%s]}' \
  "${manifest_desc%\}}, \"platform\": {\"architecture\": \"amd64\", \"os\": \"linux\"}, \"annotations\": {\"io.containerd.image.name\": \"$name\", \"org.opencontainers.image.ref.name\": \"${name##*:}\"}}" \
  > "$work/index.json"
echo '{"imageLayoutVersion": "1.0.0"}' > "$work/oci-layout"
rm -f "$work/config.json" "$work/manifest.json"
tar --sort=name --mtime=@0 --owner=0 --group=0 -C "$work" -cf "$out" oci-layout index.json blobs
