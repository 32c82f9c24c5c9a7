#!/usr/bin/env bash
# Benchmark: what a UKI system's `pok8s-agent upgrade --source uki-iso:FILE` reads and checks —
# pok8s-sysimage taking the rootfs image and the three installed UKIs out of a uki-iso with
# libarchive, checking their command lines, signer and PCR key against an installed UKI, and
# verifying the whole rootfs against its dm-verity root hash — against what a user would run by
# hand for the same: xorriso extracting the same files, veritysetup verify on the rootfs, and
# sbverify on each UKI (which checks the signature, more than pok8s's signer comparison; the
# firmware makes that check at boot). Both write to the same file system. Alternating rounds,
# medians of wall time.
# Usage (as root, for the conversion): bench/uki_upgrade.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
bin=${POK8S_BIN_DIR:-$PWD/build/release/bin}
pok8s=$bin/pok8s
sysimage=$bin/pok8s-sysimage
[ -x "$pok8s" ] && [ -x "$sysimage" ] ||
  { echo "build first: cmake --preset release && cmake --build --preset release" >&2; exit 1; }
for tool in xorriso veritysetup sbverify; do
  command -v "$tool" >/dev/null || { echo "missing $tool (scripts/install-deps.sh test)" >&2; exit 1; }
done
work=$(mktemp -d /var/tmp/pok8s-bench-uki-upgrade.XXXXXX)
trap 'rm -rf "$work"' EXIT
export SOURCE_DATE_EPOCH=1700000000 POK8S_CACHE=$work/cache
base=$(tests/fixtures/debian-base.sh)
echo "preparing: import and convert the Debian fixture, a key set, the uki-iso (not timed)" >&2
"$pok8s" -q image import "$base" "oci:$work/layout:base" >/dev/null
"$pok8s" -q convert "oci:$work/layout:base" "oci:$work/layout" --version v0.1.0 >/dev/null
tag=12-core-amd64-generic-v0.1.0
"$pok8s" -q keys generate "$work/keys" >/dev/null
"$pok8s" -q build "oci:$work/layout:$tag" --artifact uki-iso --keys "$work/keys" -o "$work/out" >/dev/null
iso=$(ls "$work"/out/*.uki.iso)
# The installed UKI the new ones are compared with: the same build's.
xorriso -osirrox on -indev "$iso" -extract /install/EFI/Linux "$work/installed" 2>/dev/null
installed=$(ls "$work"/installed/pok8s-active*.efi)
cmdline=$(python3 - "$(ls "$work"/out/*.manifest.json)" <<'EOF'
import json, sys
print(json.load(open(sys.argv[1]))["uki"]["cmdline"])
EOF
)
verity=${cmdline##*pok8s.verity=}
verity=${verity%% *}
IFS=, read -r root_hash salt data_blocks hash_offset <<<"$verity"
size=$(stat -c %s "$iso")

declare -A times
now() { date +%s.%N; }
record() { times[$1]+="$(echo "$3 - $2" | bc) "; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
pok8s_round() {
  rm -rf "$work/p"
  drop_caches
  local t0; t0=$(now)
  "$sysimage" write "uki-iso:$iso" -o "$work/p" --cache "$work/blobs" --trust "$installed" 2>/dev/null
  sync -f "$work"
  record pok8s "$t0" "$(now)"
}
manual_round() {
  rm -rf "$work/m" && mkdir -p "$work/m"
  drop_caches
  local t0; t0=$(now)
  xorriso -osirrox on -indev "$iso" -extract /rootfs.squashfs "$work/m/rootfs.img" \
    -extract /install/EFI/Linux "$work/m/Linux" 2>/dev/null
  sync -f "$work"
  veritysetup verify "$work/m/rootfs.img" "$work/m/rootfs.img" "$root_hash" --no-superblock \
    --hash-offset="$hash_offset" --data-blocks="$data_blocks" --salt="$salt" >/dev/null
  for uki in "$work"/m/Linux/*.efi; do sbverify --cert "$work/keys/db.crt" "$uki" >/dev/null 2>&1; done
  record manual "$t0" "$(now)"
}
for ((i = 0; i < rounds; i++)); do
  echo "round $((i + 1))/$rounds" >&2
  pok8s_round
  manual_round
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
p=$(echo "${times[pok8s]}" | median)
m=$(echo "${times[manual]}" | median)
echo
echo "Reading and checking a uki-iso for a UKI upgrade ($((size >> 20)) MiB ISO), $rounds rounds, medians ($(nproc) cores)"
printf '  pok8s-sysimage write uki-iso: (extract, checks, verity verify)  %6.2f s\n' "$p"
printf '  xorriso -extract + veritysetup verify + sbverify x3             %6.2f s\n' "$m"
printf '  manual / pok8s                                                  %6.2fx\n' "$(echo "$m / $p" | bc -l)"
