#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine: install what is missing, build, then turn a
# real Debian base (made with mmdebstrap from Debian's archive) into an immutable OS and a
# bootable live ISO, and boot it in QEMU to show it works.
#   POK8S_DEMO_DIR   where the layout and the ISO go (default out/demo)
#   POK8S_DEMO_BOOT  0 to skip the QEMU boot at the end
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "demo: pok8s convert installs packages into the image; run as root" >&2; exit 2; }
./scripts/install-deps.sh demo
cmake --preset release >/dev/null
cmake --build --preset release
pok8s=$PWD/build/release/bin/pok8s
work=${POK8S_DEMO_DIR:-$PWD/out/demo}
mkdir -p "$work"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}

echo
echo "== 1. A real base: Debian bookworm minbase, made with mmdebstrap (cached after the first run)"
base=$(tests/fixtures/debian-base.sh)
ls -lh "$base"

echo
echo "== 2. pok8s image import: the root filesystem becomes an OCI image"
rm -rf "$work/layout" "$work/iso"
"$pok8s" image import "$base" "oci:$work/layout:bookworm"

echo
echo "== 3. pok8s convert: kernel, systemd, ssh and the pok8s framework, installed with apt in a sandbox"
"$pok8s" convert "oci:$work/layout:bookworm" "oci:$work/layout" --version v0.1.0

cat >"$work/cloud-config.yaml" <<'YAML'
#cloud-config
hostname: pok8s-demo
stages:
  boot:
    - name: Say hello on the console
      commands:
        - |
          . /etc/pok8s-release
          echo "pok8s demo: $NAME $VERSION on $FLAVOR $FLAVOR_RELEASE is up" > /dev/console
YAML

echo
echo "== 4. pok8s build --artifact iso: squashfs rootfs from the layers, initramfs, GRUB, hybrid ISO"
"$pok8s" build "oci:$work/layout:12-core-amd64-generic-v0.1.0" --artifact iso -o "$work/iso" \
  --config "$work/cloud-config.yaml"
iso=$(ls "$work"/iso/*.iso)

if [ "${POK8S_DEMO_BOOT:-1}" != 0 ]; then
  echo
  echo "== 5. Booting $iso in QEMU (UEFI, software emulation; about a minute)"
  cp /usr/share/OVMF/OVMF_VARS_4M.fd "$work/OVMF_VARS.fd"
  timeout 600 qemu-system-x86_64 -accel tcg -m 1536 -machine q35 -display none -vga none \
    -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
    -drive "if=pflash,format=raw,unit=1,file=$work/OVMF_VARS.fd" \
    -drive "file=$iso,media=cdrom,readonly=on" -serial stdio -monitor none -nic none \
    </dev/null 2>&1 | tee "$work/serial.log" | while IFS= read -r line; do
      case "$line" in
        *"pok8s demo:"*) echo "$line"; pkill -f "file=$iso" || true; break ;;
        *pok8s-init*|*pok8s-agent*) echo "  $line" ;;
      esac
    done || true
  grep -q "pok8s demo:" "$work/serial.log" || { echo "demo: the ISO did not boot; see $work/serial.log" >&2; exit 1; }
fi
echo
echo "The ISO is $iso (boot it on a machine or VM; it also boots from a USB stick)."
echo "The images are in $work/layout: try '$pok8s image inspect oci:$work/layout:12-core-amd64-generic-v0.1.0'."
