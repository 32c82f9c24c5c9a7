// The bundle that lets the static pok8s-agent upgrade a node: pok8s-sysimage (dynamically
// linked, see apps/pok8s-sysimage) with the shared libraries it needs and the dynamic loader
// that loads them, all taken from the host that runs the factory. Under kSysimageDir in the
// image, run as `lib/<loader> --library-path lib pok8s-sysimage …`, it needs nothing from the
// image's own libraries, so it runs the same on Debian, Alpine (musl) or Fedora.
#pragma once

#include <string>
#include <vector>

#include "pok8s/util/file.h"

namespace pok8s::convert {

struct BundledFile {
  std::string path;   // in the image, relative: "usr/lib/pok8s/sysimage/lib/libz.so.1"
  util::Path source;  // on the host
};

// The bundle for `binary`: the binary itself, then its libraries by soname, then the loader.
// The libraries are what the host's ldd resolves; a library ldd cannot find is refused by name.
std::vector<BundledFile> sysimage_bundle(const util::Path& binary);

// The same for pok8s-luks under node::kLuksDir (also copied into the initramfs).
std::vector<BundledFile> luks_bundle(const util::Path& binary);

// The libraries and loader named in `ldd_output` (`ldd`'s lines: "libz.so.1 => /lib/…/libz.so.1
// (0x…)", "/lib64/ld-linux-x86-64.so.2 (0x…)"), as soname → host path; the loader's soname is
// its file name. Exposed for tests.
std::vector<std::pair<std::string, std::string>> parse_ldd(std::string_view ldd_output,
                                                           std::string_view binary);

}  // namespace pok8s::convert
