#!/usr/bin/env bash
# Brings up the local Weft lab: 2 nodes, pods in an ambient namespace, sample services,
# traffic across the mesh, and a summary. Runs until Ctrl-C. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
# What the lab needs, checked before the build (minutes on a small machine), so a clash
# fails at once with its fix.
if [ "$(id -u)" != 0 ]; then
  echo "the lab needs root (network namespaces, nftables, eBPF): run it with sudo" >&2
  exit 2
fi
port=15120
prometheus=9090
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --metrics-port) port="${args[$((i + 1))]:-$port}" ;;
    --metrics-port=*) port="${args[$i]#*=}" ;;
    --prometheus-port) prometheus="${args[$((i + 1))]:-$prometheus}" ;;
    --prometheus-port=*) prometheus="${args[$i]#*=}" ;;
    --no-prometheus) prometheus="" ;;
  esac
done
for p in "$port" "$((port + 1))"; do
  if command -v ss >/dev/null && ss -Hltn "sport = :$p" | grep -q .; then
    echo "127.0.0.1:$p is taken (the lab serves each node's metrics there): pass --metrics-port with two free ports" >&2
    exit 2
  fi
done
if [ -n "$prometheus" ] && command -v prometheus >/dev/null && command -v ss >/dev/null \
  && ss -Hltn "sport = :$prometheus" | grep -q .; then
  echo "127.0.0.1:$prometheus is taken (the lab's Prometheus answers there): pass --prometheus-port with a free port, or --no-prometheus" >&2
  exit 2
fi
mkdir -p /run/netns 2>/dev/null || { echo "cannot create /run/netns: the lab needs it for its namespaces" >&2; exit 2; }
./scripts/deps.sh
cargo build --release --workspace --bins --locked
exec ./target/release/weft lab "$@"
