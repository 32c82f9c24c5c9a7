#!/usr/bin/env bash
# Benchmark: `pok8s build --artifact iso` against the pipeline a user runs today on the same
# converted Debian image — `umoci unpack` + `mksquashfs` + `xorriso` with the same GRUB layout
# (hybrid MBR, El Torito BIOS and EFI, appended ESP) — cold (empty artifact cache) and warm (only
# the cloud-config changed). The reference runs twice: with mksquashfs's defaults (128 KiB blocks,
# zstd 15: what a user runs) and with pok8s's (1 MiB blocks, zstd 9), to show which part of the
# difference is the settings and which the pipeline. Alternating rounds, medians of wall time;
# sizes of the ISOs. The reference gets pok8s's kernel, initramfs and
# GRUB images for free (a user's image would carry its own), so it does strictly less work.
# Usage (as root, for the conversion): bench/live_iso.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
pok8s=${POK8S_BIN:-$PWD/build/release/bin/pok8s}
[ -x "$pok8s" ] || { echo "build first: cmake --preset release && cmake --build --preset release" >&2; exit 1; }
for t in umoci mksquashfs xorriso; do
  command -v $t >/dev/null || { echo "$t is missing: scripts/install-deps.sh test" >&2; exit 1; }
done
work=$(mktemp -d /var/tmp/pok8s-bench-iso.XXXXXX)
trap 'rm -rf "$work"' EXIT
export SOURCE_DATE_EPOCH=1700000000 POK8S_CACHE=$work/cache
base=$(tests/fixtures/debian-base.sh)
echo "preparing: import and convert the Debian fixture (not timed)" >&2
"$pok8s" -q image import "$base" "oci:$work/layout:base" >/dev/null
"$pok8s" -q convert "oci:$work/layout:base" "oci:$work/layout" --version v0.1.0 >/dev/null
tag=12-core-amd64-generic-v0.1.0
printf '#cloud-config\nhostname: one\n' >"$work/a.yaml"
printf '#cloud-config\nhostname: two\n' >"$work/b.yaml"

# The reference gets the same boot files pok8s made (first pok8s run, not timed).
"$pok8s" -q build "oci:$work/layout:$tag" -o "$work/prep" --config "$work/a.yaml" >/dev/null
grub=$(ls -d "$work"/cache/grub/*/ | head -1)
init=$(ls -d "$work"/cache/artifacts/initramfs/*/ | head -1)
mkdir -p "$work/tree/boot/grub/i386-pc" "$work/tree/EFI/BOOT"
cp "$init/kernel" "$work/tree/boot/kernel"
cp "$init/initrd" "$work/tree/boot/initrd"
cp "$grub/eltorito.img" "$work/tree/boot/grub/i386-pc/"
cp "$grub/BOOTX64.EFI" "$work/tree/EFI/BOOT/"
cp "$work/a.yaml" "$work/tree/config.yaml"
osirrox -indev "$work/prep"/*.iso -extract /boot/grub/grub.cfg "$work/tree/boot/grub/grub.cfg" 2>/dev/null
rm -f "$work/efi.img"
mformat -C -i "$work/efi.img" -T 8192 -h 64 -s 32 :: && mmd -i "$work/efi.img" ::/EFI ::/EFI/BOOT
mcopy -i "$work/efi.img" "$grub/BOOTX64.EFI" ::/EFI/BOOT/

declare -A times
now() { date +%s.%N; }
record() { times[$1]+="$(echo "$3 - $2" | bc) "; }
pok8s_cold() {
  rm -rf "$work/cache/artifacts" "$work/out"
  local t0; t0=$(now)
  "$pok8s" -q build "oci:$work/layout:$tag" -o "$work/out" --config "$work/a.yaml" >/dev/null
  record cold "$t0" "$(now)"
}
pok8s_warm() {
  local t0; t0=$(now)
  "$pok8s" -q build "oci:$work/layout:$tag" -o "$work/out-warm" --config "$work/b.yaml" >/dev/null
  record warm "$t0" "$(now)"
}
reference() {  # NAME [mksquashfs options]
  local name=$1; shift
  rm -rf "$work/bundle" "$work/tree/rootfs.squashfs" "$work/$name.iso"
  local t0; t0=$(now)
  umoci unpack --image "$work/layout:$tag" "$work/bundle" >/dev/null
  mksquashfs "$work/bundle/rootfs" "$work/tree/rootfs.squashfs" -comp zstd -noappend -quiet \
    -no-progress "$@" >/dev/null
  xorriso -as mkisofs -quiet -V COS_LIVE -R -J -iso-level 3 \
    --grub2-mbr "$grub/boot_hybrid.img" -partition_offset 16 \
    -b boot/grub/i386-pc/eltorito.img -no-emul-boot -boot-load-size 4 -boot-info-table \
    --grub2-boot-info -append_partition 2 0xef "$work/efi.img" -appended_part_as_gpt \
    -eltorito-alt-boot -e --interval:appended_partition_2:all:: -no-emul-boot \
    -o "$work/$name.iso" "$work/tree" 2>/dev/null
  record "$name" "$t0" "$(now)"
}
for ((i = 0; i < rounds; i++)); do
  echo "round $((i + 1))/$rounds" >&2
  pok8s_cold
  pok8s_warm
  reference reference
  reference same -b 1M -Xcompression-level 9
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
cold=$(echo "${times[cold]}" | median)
warm=$(echo "${times[warm]}" | median)
ref=$(echo "${times[reference]}" | median)
same=$(echo "${times[same]}" | median)
pok8s_iso=$(stat -c %s "$work"/out/*.iso)
ref_iso=$(stat -c %s "$work/reference.iso")
same_iso=$(stat -c %s "$work/same.iso")
ratio() { printf '%.2f' "$(echo "$1 / $2" | bc -l)"; }
echo
echo "live ISO of the converted Debian bookworm image, $rounds rounds, medians ($(nproc) cores)"
printf '  pok8s build (cold)                     %7.2f s   ISO %s bytes\n' "$cold" "$pok8s_iso"
printf '  reference, mksquashfs defaults         %7.2f s   ISO %s bytes\n' "$ref" "$ref_iso"
printf '  reference, pok8s settings (1M, zstd 9) %7.2f s   ISO %s bytes\n' "$same" "$same_iso"
printf '  pok8s build (warm, new cloud-config)   %7.2f s\n' "$warm"
echo "  reference (defaults) / pok8s cold      $(ratio "$ref" "$cold")x"
echo "  reference (same settings) / pok8s cold $(ratio "$same" "$cold")x"
printf '  warm / cold                            %7.1f %%\n' "$(echo "100 * $warm / $cold" | bc -l)"
echo "  ISO size pok8s / reference (defaults)  $(printf '%.3f' "$(echo "$pok8s_iso / $ref_iso" | bc -l)")"
echo "  ISO size pok8s / reference (same)      $(printf '%.3f' "$(echo "$pok8s_iso / $same_iso" | bc -l)")"
echo "  all rounds (s): cold ${times[cold]}| warm ${times[warm]}| reference ${times[reference]}| same ${times[same]}"
