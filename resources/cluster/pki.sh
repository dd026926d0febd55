#!/usr/bin/env bash
# Certificates and kubeconfigs for Kiln's single-node cluster, generated locally with openssl
# once per cluster folder (each file only if missing): a CA, the API server's serving and
# kubelet-client certificates, one client certificate per component (admin, controller-manager,
# scheduler, the node, kube-proxy), the kubelet's serving certificate, and the service-account
# key pair.
#
#   resources/cluster/pki.sh DIR NODE_NAME NODE_IP      (writes DIR/pki and DIR/*.kubeconfig)
set -euo pipefail
dir=$1 node=$2 ip=$3
pki=$dir/pki
mkdir -p "$pki"
cd "$pki"
umask 077

# ECDSA P-256 keys throughout: as strong as RSA-3072 and made in milliseconds, not seconds.
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1)
[[ -f ca.crt ]] || openssl req -x509 "${ec[@]}" -nodes -keyout ca.key -out ca.crt -days 3650 \
  -subj "/CN=kiln-cluster-ca" 2>/dev/null

# cert NAME SUBJECT [SANS]: a key and a CA-signed certificate.
cert() {
  local name=$1 subj=$2 sans=${3:-}
  [[ -f "$name.crt" ]] && return 0
  openssl req "${ec[@]}" -nodes -keyout "$name.key" -out "$name.csr" -subj "$subj" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=digitalSignature"
    if [[ -n "$sans" ]]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      echo "subjectAltName=$sans"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile "$name.ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

cert apiserver "/CN=kube-apiserver" \
  "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:10.96.0.1,IP:$ip"
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
cert admin "/O=system:masters/CN=kubernetes-admin"
cert controller-manager "/CN=system:kube-controller-manager"
cert scheduler "/CN=system:kube-scheduler"
cert node "/O=system:nodes/CN=system:node:$node"
cert kubelet-serving "/CN=$node" "DNS:$node,DNS:localhost,IP:127.0.0.1,IP:$ip"
cert kube-proxy "/CN=system:kube-proxy"
[[ -f sa.pub ]] || openssl ecparam -name prime256v1 -genkey -noout -out sa.key 2>/dev/null
[[ -f sa.pub ]] || openssl ec -in sa.key -pubout -out sa.pub 2>/dev/null

# kubeconfig NAME CERT: a kubeconfig for the API server at 127.0.0.1:6443.
kubeconfig() {
  local name=$1 c=$2
  cat > "$dir/$name.kubeconfig.new" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kiln
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority: $pki/ca.crt
users:
- name: $name
  user:
    client-certificate: $pki/$c.crt
    client-key: $pki/$c.key
contexts:
- name: kiln
  context: {cluster: kiln, user: $name}
current-context: kiln
EOF
  # Rewritten only when different: running components read these.
  if cmp -s "$dir/$name.kubeconfig.new" "$dir/$name.kubeconfig"; then
    rm -f "$dir/$name.kubeconfig.new"
  else
    mv "$dir/$name.kubeconfig.new" "$dir/$name.kubeconfig"
  fi
}
kubeconfig admin admin
kubeconfig controller-manager controller-manager
kubeconfig scheduler scheduler
kubeconfig kubelet node
kubeconfig kube-proxy kube-proxy
