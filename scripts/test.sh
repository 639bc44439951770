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
# The end-to-end tests run the workspace's binaries: build them first.
cargo build --workspace --bins --locked
cargo nextest run --workspace --locked --no-fail-fast "$@"
