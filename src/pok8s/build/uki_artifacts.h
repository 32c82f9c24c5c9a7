// The trusted-boot artifacts of `pok8s build`, made from the same rootfs image, kernel and
// initramfs as the others:
//   uki      a signed Unified Kernel Image (<name>.efi) and the rootfs image it trusts
//            (<name>.rootfs.img: the squashfs with its dm-verity tree appended; the UKI's signed
//            command line carries the root hash)
//   uki-iso  an ISO whose EFI system partition holds systemd-boot signed with the db key, that
//            UKI, and the keys' .auth updates under loader/keys/auto for systemd-boot to enroll
//            in a firmware in setup mode; the ISO file system holds the rootfs image and what
//            pok8s-agent install writes to a disk: that systemd-boot, loader.conf and a UKI for
//            each of active, passive and recovery (install/EFI, install/loader)
// Both need a key set from `pok8s keys generate`, checked before anything is written.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pok8s/boot/secure_boot_keys.h"
#include "pok8s/boot/uki.h"
#include "pok8s/image/verity.h"
#include "pok8s/util/file.h"

namespace pok8s::build {

inline constexpr const char* kHostSystemdBoot = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

// What systemd-boot does with the keys under loader/keys/auto when the firmware is in setup
// mode (loader.conf's secure-boot-enroll). systemd-boot 252, which Debian 12 ships, knows
// `force` (enroll after a countdown a key press aborts), `manual` (a menu entry) and `off`;
// `if-safe` came later.
inline constexpr const char* kSecureBootEnrollModes[] = {"force", "manual", "off"};

// The rootfs image with its dm-verity tree, cached next to the rootfs it was made from (same
// salt, same bytes).
struct VerityRootfs {
  util::Path image;
  image::VerityTree tree;
};

// `rootfs` with a dm-verity tree appended, salted from `salt_seed`, from `cache` or made there.
VerityRootfs make_verity_rootfs(const util::Path& cache, const util::Path& rootfs,
                                std::string_view salt_seed,
                                const std::function<void(std::string_view)>& log);

struct UkiPlan {
  util::Path stub = boot::kHostSystemdStub;
  util::Path kernel;
  util::Path initrd;
  std::string kernel_version;
  std::string os_release;  // .osrel
  std::string cmdline;     // .cmdline: with the verity root hash
  std::string sbat;
  std::optional<util::Path> splash;  // .splash: a BMP
  std::int64_t signing_time = 0;
};

// The most a splash image may weigh; it is in every UKI.
inline constexpr std::uint64_t kMaxSplashBytes = 16u << 20;

// Refuses (Error kInvalidInput naming `file`) a splash image systemd-stub would not show: not a
// BMP ("BM", and a header whose file size is the file's), or over kMaxSplashBytes.
void check_splash(const util::Path& file);

struct SignedUki {
  std::string bytes;  // signed with the db key
  std::vector<boot::UkiSection> sections;
};

// Assembles the UKI of `plan` with .pcrpkey (the keys' PCR public key) and .pcrsig (the PCR 11
// values of its own sections for each boot phase, signed with the PCR key), then signs it with
// the db key.
SignedUki make_signed_uki(const UkiPlan& plan, const boot::SecureBootKeys& keys);

// The .osrel of pok8s UKIs: systemd-boot shows PRETTY_NAME and the version in its menu, and
// sorts its entries by IMAGE_ID (`image_id`; `name` when empty), then by version.
std::string uki_os_release(std::string_view name, std::string_view version,
                           std::string_view image_id = "");

// One UKI of an installed system. systemd-boot (Boot Loader Specification, type #2 entries)
// lists the three by their IMAGE_ID, which puts active first, and the entry it boots by default
// is the first. The active one is installed with boot counting in its file name
// (pok8s-active+3.efi): systemd-boot takes a try on each boot, pok8s-agent mark-booted drops the
// counter once the system is up, and an entry out of tries sorts last, so passive boots: the
// A/B fallback. Each signed command line names its mode, partition and rootfs image.
struct InstalledUki {
  std::string_view mode;  // active, passive, recovery
  std::string file;       // under EFI/Linux: pok8s-active+3.efi, pok8s-passive.efi, …
  std::string image_id;   // the sort key: pok8s-1-active, pok8s-2-passive, pok8s-3-recovery
  std::string cmdline;    // without the verity parameters
};

// The three, for `base_cmdline` (console settings) and `boot_tries` (1 to 9) for active.
std::vector<InstalledUki> installed_ukis(std::string_view base_cmdline, int boot_tries);

// loader/loader.conf of the uki-iso's ESP, and of an installed system's (which boots the keys
// the uki-iso enrolled: `off`).
std::string loader_conf(std::string_view secure_boot_enroll);

}  // namespace pok8s::build
