// libFuzzer target: the uki-iso a node upgrades from (pok8s-sysimage write uki-iso:FILE), which
// comes from wherever the user got it. libarchive reads the ISO; pok8s picks the rootfs and the
// installed UKIs, reads their command lines and checks the rootfs against the root hash. Every
// refusal is an Error naming the ISO; nothing but the files it names is left in the output.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>

#include "pok8s/build/uki_upgrade.h"
#include "pok8s/util/error.h"
#include "pok8s/util/file.h"

namespace fs = std::filesystem;

// This process's scratch directory, removed at exit.
fs::path scratch_dir() {
  return fs::temp_directory_path() / ("fuzz-uki-iso-" + std::to_string(::getpid()));
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const fs::path dir = [] {
    fs::create_directories(scratch_dir());
    std::atexit([] {
      std::error_code ec;
      fs::remove_all(scratch_dir(), ec);
    });
    return scratch_dir();
  }();
  fs::path iso = dir / "in.iso", out = dir / "out";
  fs::remove_all(out);
  pok8s::util::write_file_atomic(iso, std::string_view(reinterpret_cast<const char*>(data), size));
  try {
    pok8s::build::write_uki_image(iso, out, std::nullopt, nullptr);
  } catch (const pok8s::Error& e) {
    if (std::string_view(e.what()).find(iso.string()) == std::string_view::npos &&
        e.kind() != pok8s::ErrorKind::kIo)
      __builtin_trap();
  }
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(out, ec))
    if (e.path().extension() == ".partial") __builtin_trap();
  return 0;
}
