#!/usr/bin/env bash
# Applies each of Weft's policy CRDs that the cluster does not have yet; leaves the others
# (Istio's, Linkerd's, the Gateway API's own) as they are. Uses the current kubectl context.
set -euo pipefail
cd "$(dirname "$0")"
for file in *.*.yaml; do
  name="${file%.yaml}"
  if kubectl get crd "$name" >/dev/null 2>&1; then
    echo "kept    $name (already installed)"
  else
    kubectl apply --server-side --field-manager=weft -f "$file" >/dev/null
    echo "created $name"
  fi
done
