// What the running system says about its boot: which image it booted and why (A/B boot
// assessment in the GRUB environment block), and marking a boot as good once it got there.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "pok8s/node/init.h"
#include "pok8s/util/file.h"

namespace pok8s::node {

inline constexpr std::string_view kOemGrubEnvFile = "/oem/grubenv";
inline constexpr std::string_view kReleaseFile = "/etc/pok8s-release";
// Tries an entry gets when the block has no valid pok8s_max_tries.
inline constexpr int kDefaultMaxTries = 3;

// Reads the text of kBootStateFile (boot_state_text's "key=value" lines); keys it does not
// know (from a newer pok8s-init) are ignored, blank lines skipped. Throws Error(kFormat) naming
// `where` and the line of a line without '=', an unknown mode, or a missing mode.
BootState parse_boot_state(std::string_view text, std::string_view where);

struct BootStatus {
  std::string mode;  // live, active, passive, recovery
  std::string media_device;
  std::string image;
  // From the GRUB environment block, when the system has one (installed, not live).
  std::optional<std::string> entry, fallback;  // pok8s_entry, pok8s_fallback (if not empty)
  std::optional<int> tries, max_tries;         // pok8s_tries 0..9, pok8s_max_tries 1..9
  std::string reason;                          // one sentence: why this image booted
  std::string version;                         // VERSION of the release file, "" if none
};

// Reads the boot state (required), the GRUB environment block (optional: absent on live
// boots and systems installed without boot assessment) and the release file (optional).
BootStatus read_boot_status(const util::Path& boot_state_file = kBootStateFile,
                            const util::Path& grubenv = kOemGrubEnvFile,
                            const util::Path& release_file = kReleaseFile);

// The entry GRUB boots next as things stand: pok8s_entry, or the one after it when its tries
// are used up (a boot that has not been marked good yet). nullopt without boot assessment.
std::optional<std::string> next_boot_entry(const BootStatus& status);

// {"mode", "media_device", "image", "entry", "fallback", "tries", "max_tries", "next_entry",
//  "reason", "version"}; what is unknown is null.
nlohmann::json boot_status_json(const BootStatus& status);

// Called once the system reached its booted state: resets pok8s_tries to pok8s_max_tries
// (kDefaultMaxTries if that is missing or invalid) in place, leaving pok8s_entry and
// pok8s_fallback alone. False, and nothing written, on a live boot or without `grubenv`.
bool mark_booted(const util::Path& boot_state_file = kBootStateFile,
                 const util::Path& grubenv = kOemGrubEnvFile);

// systemd-boot's variables (the Boot Loader Interface), under its vendor GUID in efivarfs.
inline constexpr std::string_view kEfiVarsDir = "/sys/firmware/efi/efivars";
inline constexpr std::string_view kLoaderVarsGuid = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

// The file name without its boot counter (Boot Loader Specification: NAME+LEFT[-DONE].EXT):
// "pok8s-active+2-1.efi" -> "pok8s-active.efi"; nullopt when it has none.
std::optional<std::string> without_boot_counter(std::string_view file_name);

// The ESP path in `raw`, an efivarfs file of LoaderBootCountPath (4 bytes of attributes, then a
// NUL-terminated UTF-16LE path): "\\EFI\\Linux\\a+1-2.efi" -> "EFI/Linux/a+1-2.efi". Throws
// Error(kFormat) naming `where` unless it is the path of a boot-counted entry inside the ESP
// (ASCII, no "..").
std::string parse_boot_count_path(std::string_view raw, std::string_view where);

// The boot-counted entry systemd-boot booted, as its LoaderBootCountPath variable in `efivars`
// names it on the ESP ("\EFI\Linux\pok8s-active+2-1.efi" -> "EFI/Linux/pok8s-active+2-1.efi");
// nullopt when the booted entry had no counter (the variable is not there). Throws
// Error(kFormat) naming the variable when its value is not such a path.
std::optional<std::string> loader_boot_count_path(const util::Path& efivars = kEfiVarsDir);

// What mark-booted does on a system booted by systemd-boot with boot counting: the booted
// entry, at `counted` on the ESP mounted at `esp`, is renamed to its name without the counter,
// so systemd-boot boots it from now on without counting (it is "good"). Returns the new path
// on the ESP; throws Error naming the file when it is not there or cannot be renamed.
std::string bless_boot_entry(const util::Path& esp, std::string_view counted);

// mark-booted on a system booted by systemd-boot: on an installed (not live) boot whose entry
// was boot-counted, mounts COS_GRUB below `work_dir` and blesses the entry. Returns the entry's
// new path on the ESP; nullopt, and nothing mounted, when there is nothing to mark.
std::optional<std::string> mark_entry_booted(const util::Path& boot_state_file = kBootStateFile,
                                             const util::Path& efivars = kEfiVarsDir,
                                             const util::Path& work_dir = "/run/pok8s");

// After an upgrade: the next boot tries the new active image with pok8s_max_tries tries, and
// the fallback of an earlier failure is forgotten. False, and nothing written, without
// `grubenv`.
bool arm_new_active(const util::Path& grubenv = kOemGrubEnvFile);

}  // namespace pok8s::node
