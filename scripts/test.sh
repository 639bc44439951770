#!/usr/bin/env bash
# Runs every test: unit, in-process (real TLS on loopback) and network-namespace end-to-end.
# Needs root (network namespaces, nftables); installs its own dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The layout shows the design: no import loop between a crate's files, no file over 600 lines.
python3 scripts/layout.py
# The shipped alert rules are valid Prometheus rules (the e2e suite also loads and evaluates them).
promtool check rules deploy/observability/alerts.yaml
# The end-to-end tests run the workspace's binaries: build them first.
cargo build --workspace --bins --locked
# The cluster tier starts a real kube-apiserver from these binaries (../shared/k8s on the
# project's machines and CI; elsewhere set WEFT_KUBE_ASSETS, or the tier says it did not run).
if [ -z "${WEFT_KUBE_ASSETS:-}" ] && [ -x ../shared/k8s/bin/kube-apiserver ]; then
  export WEFT_KUBE_ASSETS=$(cd ../shared/k8s/bin && pwd)
fi
cargo nextest run --workspace --locked --no-fail-fast "$@"
