#!/usr/bin/env bash
# Benchmark: the work of `pok8s-agent upgrade` — pok8s-sysimage writing the transition image
# (the squashfs from the layers, the initramfs, the kernel) from a converted Debian image, the
# read-back against its sha256 after the page cache is dropped, and the A/B rotation (renames) —
# against copying the same, already-built image files with `dd` (bs=4M, conv=fsync), the least
# any upgrade that replaces an image has to do. Both write to the same file system; the source
# image is an OCI layout on local disk (on a node it is a registry, which adds the network).
# Alternating rounds, medians of wall time.
# Usage (as root, for the conversion): bench/upgrade.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
bin=${POK8S_BIN_DIR:-$PWD/build/release/bin}
pok8s=$bin/pok8s
sysimage=$bin/pok8s-sysimage
[ -x "$pok8s" ] && [ -x "$sysimage" ] ||
  { echo "build first: cmake --preset release && cmake --build --preset release" >&2; exit 1; }
work=$(mktemp -d /var/tmp/pok8s-bench-upgrade.XXXXXX)
trap 'rm -rf "$work"' EXIT
export SOURCE_DATE_EPOCH=1700000000 POK8S_CACHE=$work/cache
base=$(tests/fixtures/debian-base.sh)
echo "preparing: import and convert the Debian fixture, write the installed images (not timed)" >&2
"$pok8s" -q image import "$base" "oci:$work/layout:base" >/dev/null
"$pok8s" -q convert "oci:$work/layout:base" "oci:$work/layout" --version v0.1.0 >/dev/null
tag=12-core-amd64-generic-v0.1.0
# The installed system: active and passive as a first upgrade leaves them.
state=$work/state/cOS
mkdir -p "$state"
"$sysimage" write "oci:$work/layout:$tag" -o "$state/active" --cache "$work/blobs" 2>/dev/null
cp -r "$state/active" "$state/passive"
size=$(du -sb "$state/active" | cut -f1)

declare -A times
now() { date +%s.%N; }
record() { times[$1]+="$(echo "$3 - $2" | bc) "; }
upgrade() {
  rm -rf "$work/blobs" "$state/transition.partial"
  local t0 t1 t2 t3; t0=$(now)
  "$sysimage" write "oci:$work/layout:$tag" -o "$state/transition.partial" --cache "$work/blobs" 2>/dev/null
  sync -f "$state"
  t1=$(now)
  for f in "$state"/transition.partial/*; do dd if="$f" iflag=nocache count=0 status=none; done
  "$sysimage" verify "$state/transition.partial" 2>/dev/null
  t2=$(now)
  # The rotation: the same renames the agent makes (it swaps with RENAME_EXCHANGE).
  mv "$state/transition.partial" "$state/transition"
  mv "$state/active" "$state/old" && mv "$state/transition" "$state/active"
  rm -rf "$state/passive" && mv "$state/old" "$state/passive"
  sync -f "$state"
  t3=$(now)
  record upgrade "$t0" "$t3"
  record write "$t0" "$t1"
  record verify "$t1" "$t2"
  record rotate "$t2" "$t3"
  rm -rf "$work/blobs"
}
copy() {
  rm -rf "$work/dd" && mkdir -p "$work/dd"
  local t0; t0=$(now)
  for f in "$state"/active/rootfs.img "$state"/active/vmlinuz "$state"/active/initrd; do
    dd if="$f" of="$work/dd/$(basename "$f")" bs=4M conv=fsync status=none
  done
  record dd "$t0" "$(now)"
}
for ((i = 0; i < rounds; i++)); do
  echo "round $((i + 1))/$rounds" >&2
  upgrade
  copy
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
up=$(echo "${times[upgrade]}" | median)
dd_time=$(echo "${times[dd]}" | median)
ratio() { printf '%.2f' "$(echo "$1 / $2" | bc -l)"; }
echo
echo "A/B upgrade of the converted Debian bookworm image ($((size >> 20)) MiB of image files), $rounds rounds, medians ($(nproc) cores)"
printf '  pok8s-sysimage write + read-back + rotate  %7.2f s\n' "$up"
printf '    write (fetch, squashfs, initramfs, kernel) %7.2f s\n' "$(echo "${times[write]}" | median)"
printf '    read-back against sha256                   %7.2f s\n' "$(echo "${times[verify]}" | median)"
printf '    rotate (renames, old passive removed)      %7.2f s\n' "$(echo "${times[rotate]}" | median)"
printf '  dd of the already-built files               %7.2f s\n' "$dd_time"
echo "  upgrade / dd                                $(ratio "$up" "$dd_time")x"
echo "  all rounds (s): upgrade ${times[upgrade]}| dd ${times[dd]}"
