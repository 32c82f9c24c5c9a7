#!/usr/bin/env bash
# Installs what pok8s needs from Debian's archive: `build` for building, `test` adds the real
# tools the tests drive (a registry, skopeo, umoci, mmdebstrap, QEMU with OVMF, clang for the
# fuzzers, squashfs-tools and xorriso as the reference pipeline and to read what pok8s writes).
# uidmap's newuidmap/newgidmap let pok8s convert without root, in a user namespace. The service
# (`pok8s serve`) needs SQLite, libpq and Boost.Beast (libboost1.81-dev, headers only); its tests
# cpp-httplib for their clients, a PostgreSQL server, Chromium and Node.js for the web builder,
# and wrk for its benchmark. ccache keeps compiled objects between builds and clones; lld links
# faster than GNU ld. Signing with keys kept in a PKCS#11 token needs libengine-pkcs11-openssl;
# its test uses SoftHSM.
set -euo pipefail
what=${1:-build}

build_pkgs=(build-essential cmake ninja-build pkg-config git ca-certificates
  libarchive-dev libcurl4-openssl-dev libssl-dev nlohmann-json3-dev libcli11-dev libfmt-dev
  libzstd-dev libgtest-dev libgmock-dev libyaml-cpp-dev libsquashfs-dev libisofs-dev libblkid-dev
  grub-common grub-efi-amd64-bin grub-pc-bin mtools uidmap libsqlite3-dev libpq-dev libcpp-httplib-dev
  libfdisk-dev e2fsprogs qemu-utils libcryptsetup-dev libtss2-dev systemd-boot-efi
  libboost1.81-dev ccache lld)
# Booting what the demo builds, and the Debian base it starts from.
boot_pkgs=(qemu-system-x86 ovmf seabios)
demo_pkgs=(mmdebstrap mount "${boot_pkgs[@]}")
test_pkgs=(mmdebstrap mount docker-registry apache2-utils skopeo umoci clang libclang-rt-14-dev
  python3 python3-cryptography libbenchmark-dev time bc "${boot_pkgs[@]}" squashfs-tools xorriso
  cpio busybox-static systemd postgresql chromium openssl wrk fdisk socat
  efitools sbsigntool cryptsetup-bin swtpm swtpm-tools libtss2-tcti-swtpm0 libtss2-esys-3.0.2-0
  libtss2-rc0 libtss2-mu0 softhsm2 libengine-pkcs11-openssl)
# The browser test runs Playwright (from npm) on Node.js; a machine may already have a Node.js of
# its own (not Debian's), then it is used as it is.
command -v npm >/dev/null 2>&1 || test_pkgs+=(nodejs npm)

pkgs=("${build_pkgs[@]}")
case "$what" in
  build) ;;
  demo) pkgs+=("${demo_pkgs[@]}") ;;
  test) pkgs+=("${test_pkgs[@]}") ;;
  *) echo "usage: $0 build|demo|test" >&2; exit 2 ;;
esac

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "pok8s: all ${#pkgs[@]} packages for '$what' are installed"
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "pok8s: installing ${missing[*]}"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
