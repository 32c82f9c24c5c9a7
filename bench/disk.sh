#!/usr/bin/env bash
# Benchmark: `pok8s build --artifact raw,qcow2` against the pipeline a user would script today
# for the same disk from the same converted Debian image: `umoci unpack` + `mksquashfs` for the
# rootfs, `sfdisk` for the GPT, `mformat`/`mcopy` for COS_GRUB, `mke2fs -d` (at offsets) for
# COS_OEM/RECOVERY/STATE/PERSISTENT and `qemu-img convert` for the qcow2 — with pok8s's squashfs
# settings (1 MiB blocks, zstd 9), and pok8s's own kernel, initramfs, GRUB image and grub.cfg
# handed over for free, so the reference does strictly less work. Cold (empty artifact cache),
# warm (only the cloud-config changed: pok8s reuses rootfs and initramfs; the reference has no
# cache and redoes everything). Alternating rounds, medians of wall time.
# Usage (as root, for the conversion): bench/disk.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
pok8s=${POK8S_BIN:-$PWD/build/release/bin/pok8s}
[ -x "$pok8s" ] || { echo "build first: cmake --preset release && cmake --build --preset release" >&2; exit 1; }
for t in umoci mksquashfs sfdisk mke2fs mformat mcopy qemu-img; do
  command -v $t >/dev/null || { echo "$t is missing: scripts/install-deps.sh test" >&2; exit 1; }
done
work=$(mktemp -d /var/tmp/pok8s-bench-disk.XXXXXX)
trap 'rm -rf "$work"' EXIT
export SOURCE_DATE_EPOCH=1700000000 POK8S_CACHE=$work/cache MTOOLS_SKIP_CHECK=1
base=$(tests/fixtures/debian-base.sh)
echo "preparing: import and convert the Debian fixture (not timed)" >&2
"$pok8s" -q image import "$base" "oci:$work/layout:base" >/dev/null
"$pok8s" -q convert "oci:$work/layout:base" "oci:$work/layout" --version v0.1.0 >/dev/null
tag=12-core-amd64-generic-v0.1.0
printf '#cloud-config\nhostname: one\n' >"$work/a.yaml"
printf '#cloud-config\nhostname: two\n' >"$work/b.yaml"

# The reference gets the boot files pok8s made (first pok8s run, not timed).
"$pok8s" -q build "oci:$work/layout:$tag" --artifact raw -o "$work/prep" --config "$work/a.yaml" >/dev/null
init=$(ls -d "$work"/cache/artifacts/initramfs/*/ | head -1)
grub_efi=$(grep -l COS_GRUB "$work"/cache/grub/*/BOOTX64.EFI | head -1)
raw_prep=$(ls "$work"/prep/*.raw)
size=$(stat -c %s "$raw_prep")
# The partition table pok8s chose, so both disks have the same partitions.
sfdisk --dump "$raw_prep" | grep -v -E '^(label-id|device|first-lba|last-lba|sector-size):' \
  | sed 's/, uuid=[^,]*//' >"$work/table.sfdisk"
mcopy -i "$raw_prep@@$((2048 * 512))" ::/grub/grub.cfg "$work/grub.cfg"

declare -A times
now() { date +%s.%N; }
record() { times[$1]+="$(echo "$3 - $2" | bc) "; }
pok8s_build() {  # NAME CONFIG [clear]
  [ "${3:-}" = clear ] && rm -rf "$work/cache/artifacts"
  rm -rf "$work/out"
  local t0; t0=$(now)
  "$pok8s" -q build "oci:$work/layout:$tag" --artifact raw,qcow2 -o "$work/out" --config "$2" >/dev/null
  record "$1" "$t0" "$(now)"
}
reference() {
  rm -rf "$work/bundle" "$work/ref" && mkdir -p "$work/ref"
  local t0; t0=$(now)
  umoci unpack --image "$work/layout:$tag" "$work/bundle" >/dev/null
  local r=$work/ref
  mkdir -p "$r/state/cOS/active" "$r/state/cOS/passive" "$r/recovery/cOS/recovery" "$r/oem"
  mksquashfs "$work/bundle/rootfs" "$r/rootfs.img" -comp zstd -b 1M -Xcompression-level 9 \
    -noappend -quiet -no-progress >/dev/null
  for d in state/cOS/active state/cOS/passive recovery/cOS/recovery; do
    cp "$r/rootfs.img" "$init/kernel" "$init/initrd" "$r/$d/"
  done
  cp "$work/a.yaml" "$r/oem/90_custom.yaml"
  truncate -s "$size" "$r/disk.raw"
  sfdisk -q "$r/disk.raw" <"$work/table.sfdisk" >/dev/null
  local parts; mapfile -t parts < <(sfdisk -J "$r/disk.raw" | python3 -c '
import json, sys
for p in json.load(sys.stdin)["partitiontable"]["partitions"]:
    print(p["name"], p["start"] * 512, p["size"] * 512)')
  for p in "${parts[@]}"; do
    read -r name off len <<<"$p"
    case $name in
      COS_GRUB)
        mformat -i "$r/disk.raw@@$off" -T $((len / 512)) -h 64 -s 32 -v COS_GRUB ::
        mmd -i "$r/disk.raw@@$off" ::/EFI ::/EFI/BOOT ::/grub
        mcopy -i "$r/disk.raw@@$off" "$grub_efi" ::/EFI/BOOT/BOOTX64.EFI
        mcopy -i "$r/disk.raw@@$off" "$work/grub.cfg" ::/grub/grub.cfg ;;
      COS_OEM) mke2fs -q -F -t ext4 -L "$name" -E offset="$off" -d "$r/oem" "$r/disk.raw" $((len / 1024))k ;;
      COS_RECOVERY) mke2fs -q -F -t ext4 -L "$name" -E offset="$off" -d "$r/recovery" "$r/disk.raw" $((len / 1024))k ;;
      COS_STATE) mke2fs -q -F -t ext4 -L "$name" -E offset="$off" -d "$r/state" "$r/disk.raw" $((len / 1024))k ;;
      COS_PERSISTENT) mke2fs -q -F -t ext4 -L "$name" -E offset="$off" "$r/disk.raw" $((len / 1024))k ;;
    esac
  done
  qemu-img convert -q -f raw -O qcow2 "$r/disk.raw" "$r/disk.qcow2"
  record reference "$t0" "$(now)"
}
for ((i = 0; i < rounds; i++)); do
  echo "round $((i + 1))/$rounds" >&2
  pok8s_build cold "$work/a.yaml" clear
  pok8s_build warm "$work/b.yaml"
  reference
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
cold=$(echo "${times[cold]}" | median)
warm=$(echo "${times[warm]}" | median)
ref=$(echo "${times[reference]}" | median)
ratio() { printf '%.2f' "$(echo "$1 / $2" | bc -l)"; }
echo
echo "raw + qcow2 disk of the converted Debian bookworm image ($((size >> 20)) MiB), $rounds rounds, medians ($(nproc) cores)"
printf '  pok8s build (cold)                    %7.2f s   qcow2 %s bytes\n' "$cold" "$(stat -c %s "$work"/out/*.qcow2)"
printf '  reference (umoci, mksquashfs, sfdisk, mke2fs -d, mtools, qemu-img) %7.2f s   qcow2 %s bytes\n' "$ref" "$(stat -c %s "$work/ref/disk.qcow2")"
printf '  pok8s build (warm, new cloud-config)  %7.2f s\n' "$warm"
echo "  reference / pok8s cold                $(ratio "$ref" "$cold")x"
echo "  reference / pok8s warm                $(ratio "$ref" "$warm")x"
echo "  all rounds (s): cold ${times[cold]}| warm ${times[warm]}| reference ${times[reference]}"
