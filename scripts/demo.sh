#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine: install what is missing, build, then turn a
# real Debian base (made with mmdebstrap from Debian's archive) into an OCI image with pok8s
# and show what was done: import, inspect, unpack.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh demo
cmake --preset release >/dev/null
cmake --build --preset release
pok8s=$PWD/build/release/bin/pok8s
work=${POK8S_DEMO_DIR:-$PWD/out/demo}
mkdir -p "$work"

echo
echo "== 1. A real base: Debian bookworm minbase, made with mmdebstrap (cached after the first run)"
base=$(tests/fixtures/debian-base.sh)
ls -lh "$base"

echo
echo "== 2. pok8s image import: the root filesystem becomes an OCI image"
rm -rf "$work/layout" "$work/rootfs"
"$pok8s" image import "$base" "oci:$work/layout:bookworm"

echo
echo "== 3. pok8s image inspect"
"$pok8s" image inspect "oci:$work/layout:bookworm"

echo
echo "== 4. pok8s image unpack: every layer applied safely into a new tree"
"$pok8s" image unpack "oci:$work/layout:bookworm" "$work/rootfs"
echo
echo "The image is in $work/layout (an OCI layout: try 'skopeo inspect oci:$work/layout:bookworm'),"
echo "its tree in $work/rootfs."
