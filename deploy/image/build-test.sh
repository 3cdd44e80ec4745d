#!/usr/bin/env bash
# Builds the runtime image from deploy/Dockerfile around a binary built
# outside (no registry is needed: the base image is made from Debian's
# packages), then exports the image's file system for a test to run it.
#
#   deploy/image/build-test.sh BINARY OUTDIR
#
# 1. mmdebstrap --variant=minbase bookworm: a base tarball, cached per ISO
#    week under .tmp/image (PORTCULLIS_IMAGE_CACHE overrides the folder);
# 2. podman import: the base image (kept in a podman store in the cache);
# 3. podman build --isolation=chroot --target runtime-prebuilt
#    --build-arg BASE=<that image>;
# 4. podman create + export: the image's file system in OUTDIR/rootfs, and
#    `podman image inspect` of the image in OUTDIR/image.json.
# Containers cannot be run here; the caller runs OUTDIR/rootfs's binary
# (chroot, numeric user). Timings go to stderr.
set -euo pipefail

if (($# != 2)); then
  echo "usage: $0 BINARY OUTDIR" >&2
  exit 2
fi
binary="$(realpath "$1")"
out="$2"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

for tool in mmdebstrap:mmdebstrap podman:podman tar:tar; do
  if ! command -v "${tool%%:*}" >/dev/null 2>&1; then
    echo "build-test: ${tool%%:*} is missing: install the Debian package ${tool##*:} (scripts/setup-system test does)" >&2
    exit 3
  fi
done
if [[ "$(id -u)" != 0 ]]; then
  echo "build-test: must run as root (mmdebstrap and podman's chroot isolation)" >&2
  exit 3
fi
[[ -x "$binary" ]] || { echo "build-test: $binary is not an executable" >&2; exit 2; }

cache="$(realpath -m "${PORTCULLIS_IMAGE_CACHE:-$root/.tmp/image}")"
mkdir -p "$cache"
week="$(date -u +%G-w%V)"
base_tar="$cache/bookworm-minbase-$week.tar"
# overlay keeps layers as differences (vfs would copy the whole tree per
# layer); PORTCULLIS_IMAGE_STORAGE_DRIVER=vfs where overlay mounts fail.
driver="${PORTCULLIS_IMAGE_STORAGE_DRIVER:-overlay}"
podman=(podman --root "$cache/storage-$driver" --runroot "$cache/run-$driver" --storage-driver "$driver" --cgroup-manager cgroupfs --events-backend none)
started=$SECONDS
step() { echo "build-test: $* (+$((SECONDS - started)) s)" >&2; }

if [[ ! -f "$base_tar" || ! -s "$base_tar" ]]; then
  step "mmdebstrap --variant=minbase bookworm"
  rm -rf "$cache"/bookworm-minbase-*.tar "$cache"/bookworm-minbase-*.partial
  # The name does not end in .tar: say the format.
  mmdebstrap --quiet --variant=minbase --format=tar bookworm "$base_tar.partial"
  mv "$base_tar.partial" "$base_tar"
fi

base_ref="localhost/portcullis-base:bookworm-$week"
# Images of earlier weeks go (their base tarball is gone already).
"${podman[@]}" images --format '{{.Repository}}:{{.Tag}}' \
  | { grep -E '^localhost/portcullis-(runtime-)?base:' || true; } | { grep -v -- "$week\$" || true; } \
  | xargs -r "${podman[@]}" rmi --force >/dev/null
if ! "${podman[@]}" image exists "$base_ref"; then
  step "podman import $base_ref"
  "${podman[@]}" import --quiet "$base_tar" "$base_ref" >/dev/null
fi

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/config"
cp "$binary" "$ctx/portcullis"
cp "$root/config/portcullis.toml" "$ctx/config/portcullis.toml"

build=("${podman[@]}" build --quiet --isolation=chroot --network=host --layers --build-arg "BASE=$base_ref"
  -f "$root/deploy/Dockerfile")
# The runtime base (Debian packages, user, configuration) gets a name, so its
# cached layers survive the pruning below; it is rebuilt only when its part
# of the Dockerfile or the base changes.
step "podman build --isolation=chroot --target runtime-base"
"${build[@]}" --target runtime-base -t "localhost/portcullis-runtime-base:$week" "$ctx" >/dev/null
image="localhost/portcullis:build-test"
step "podman build --isolation=chroot --target runtime-prebuilt"
"${build[@]}" --target runtime-prebuilt -t "$image" "$ctx" >/dev/null

step "export the image's file system"
rm -rf "$out"
mkdir -p "$out/rootfs"
"${podman[@]}" image inspect "$image" >"$out/image.json"
cid="$("${podman[@]}" create "$image")"
"${podman[@]}" export "$cid" | tar -x -C "$out/rootfs"
"${podman[@]}" rm --force "$cid" >/dev/null
# Keep the store small: earlier builds' images (now untagged) go.
"${podman[@]}" image prune --force >/dev/null
step "done: $out/rootfs"
