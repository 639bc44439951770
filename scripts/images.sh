#!/usr/bin/env bash
# Builds Weft's images with buildah from built binaries, pulling nothing from any registry:
# each is `FROM scratch` plus the binaries and exactly the shared libraries they link (found
# with ldd). Tags: weft/controller, weft/node-proxy, weft/waypoint, at the workspace version
# unless --tag is given; these are the names deploy/ and the controller's waypoint Deployments
# use (retarget them with kustomize `images:` after pushing to your registry).
#
#   scripts/images.sh [--bin-dir target/release] [--tag TAG]
#
# Needs buildah (apt-get install buildah) and root.
set -euo pipefail
cd "$(dirname "$0")/.."
bin_dir=target/release
tag=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin_dir=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v buildah >/dev/null || { echo "buildah is missing: apt-get install buildah" >&2; exit 1; }

# Copies executable $1 into rootfs $2 at $3, with every shared library it loads.
add() {
  local exe=$1 rootfs=$2 dest=$3
  install -D -m 0755 "$exe" "$rootfs$dest"
  ldd "$exe" | grep -o '/[^ ]*' | while read -r lib; do
    [ -e "$rootfs$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
  done
}

for component in controller node-proxy waypoint; do
  ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"' EXIT
  add "$bin_dir/weft-$component" "$ctx/rootfs" "/usr/local/bin/weft-$component"
  if [ "$component" = node-proxy ]; then
    add "$bin_dir/weft-cni" "$ctx/rootfs" /usr/local/bin/weft-cni
    add "$(command -v nsenter)" "$ctx/rootfs" /usr/bin/nsenter
    add "$(command -v nft)" "$ctx/rootfs" /usr/sbin/nft
    add "$(command -v ip)" "$ctx/rootfs" /usr/sbin/ip
    mkdir -p "$ctx/rootfs/var/run/weft" "$ctx/rootfs/tmp"
  fi
  cp "images/$component.Containerfile" "$ctx/Containerfile"
  buildah build --quiet --isolation chroot --pull=never \
    --tag "weft/$component:$tag" --file "$ctx/Containerfile" "$ctx" >/dev/null
  rm -rf "$ctx"
  trap - EXIT
  echo "weft/$component:$tag"
done
