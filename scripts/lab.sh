#!/usr/bin/env bash
# Brings up the local Weft lab: 2 nodes, pods in an ambient namespace, sample services,
# traffic across the mesh, and a summary. Runs until Ctrl-C. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
cargo build --release --workspace --bins --locked
exec ./target/release/weft lab "$@"
