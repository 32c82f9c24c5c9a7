// Unified Kernel Images: the systemd EFI stub (linuxx64.efi.stub, from the image or the host's
// systemd-boot-efi) with the kernel, the initramfs, the command line and the rest added as PE
// sections, as the UKI specification names them. Small by design: the root file system stays
// outside, authenticated by its dm-verity root hash on the signed command line.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "pok8s/util/file.h"

namespace pok8s::boot {

inline constexpr const char* kHostSystemdStub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
inline constexpr std::size_t kMaxStubBytes = 4u << 20;
inline constexpr std::size_t kMaxUkiPartBytes = 512u << 20;  // a kernel or an initramfs

struct UkiInputs {
  util::Path stub = kHostSystemdStub;
  std::string os_release;            // .osrel
  std::string cmdline;               // .cmdline
  std::string uname;                 // .uname: the kernel release
  std::string sbat;                  // .sbat lines of pok8s, used when the stub carries none
  std::string pcrpkey;               // .pcrpkey: PEM public key of the PCR policy, or empty
  std::string pcrsig;                // .pcrsig: the signed PCR 11 policies (JSON), or empty
  std::optional<util::Path> splash;  // .splash: a BMP
  util::Path kernel;                 // .linux
  util::Path initrd;                 // .initrd
};

struct UkiSection {
  std::string name;
  std::uint64_t size = 0;
};

// The UKI's bytes, unsigned: the stub (its own signature dropped) with the sections added after
// its own in ukify's order (.osrel, .cmdline, .uname, .sbat, .splash, .pcrpkey, .pcrsig,
// .initrd, .linux), each aligned as the stub's headers say; headers grown when the section table
// does not fit. Throws Error(kFormat) for a stub that is not a systemd stub PE32+ image or
// already holds these sections, kInvalidInput for a part over its limit.
std::string assemble_uki(const UkiInputs& inputs);

// The sections a UKI holds, in file order (for the manifest and reports).
std::vector<UkiSection> uki_sections(std::string_view uki);

}  // namespace pok8s::boot
