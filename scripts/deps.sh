#!/usr/bin/env bash
# Installs what Weft's lab, tests and benchmarks need on a fresh Debian 12 machine (as root).
set -euo pipefail
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
command -v nsenter >/dev/null || need+=(util-linux)
command -v sysctl >/dev/null || need+=(procps)
command -v curl >/dev/null || need+=(curl)
command -v tcpdump >/dev/null || need+=(tcpdump)
command -v conntrack >/dev/null || need+=(conntrack)
command -v /usr/bin/python3 >/dev/null || need+=(python3)
command -v wrk >/dev/null || need+=(wrk)
command -v clang >/dev/null || need+=(clang)
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v bpftool >/dev/null || need+=(bpftool)
[ -f /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
[ -f "/usr/include/$(gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)/asm/types.h" ] || need+=(linux-libc-dev)
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] || need+=(containernetworking-plugins)
# Images (scripts/images.sh), rendering deploy/ and the cluster tier's control plane.
command -v buildah >/dev/null || need+=(buildah)
# kubectl 1.24 or newer (create token, apply --subresource): the `kubectl` package where an
# apt source has it, else Debian's kubernetes-client (older: the cluster tier then says so).
if ! command -v kubectl >/dev/null; then
  if apt-cache show kubectl >/dev/null 2>&1; then need+=(kubectl); else need+=(kubernetes-client); fi
fi
command -v etcd >/dev/null || need+=(etcd-server)
# `weft stat` is tested against a real Prometheus scraping the bed.
command -v prometheus >/dev/null || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
# eBPF capture pins its maps and links on bpffs (the node proxy mounts it too if it is missing).
mountpoint -q /sys/fs/bpf || mount -t bpf bpffs /sys/fs/bpf
