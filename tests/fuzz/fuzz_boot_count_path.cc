// libFuzzer target: systemd-boot's LoaderBootCountPath variable as efivarfs shows it, the path
// of the entry mark-booted renames on the ESP. Whatever parses is a relative path inside the ESP
// whose file name has a boot counter to drop; anything else is refused as a format error.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "pok8s/node/boot_status.h"
#include "pok8s/util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace pok8s::node;
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  std::string path;
  try {
    path = parse_boot_count_path(bytes, "fuzz");
  } catch (const pok8s::Error& e) {
    if (e.kind() != pok8s::ErrorKind::kFormat) __builtin_trap();
    return 0;
  }
  if (path.empty() || path.front() == '/' || path.find("..") != std::string::npos ||
      path.find('\\') != std::string::npos)
    __builtin_trap();
  std::string name = path.substr(path.rfind('/') + 1);
  auto good = without_boot_counter(name);
  if (!good || good->empty() || good->size() >= name.size() || *good == "." || *good == "..")
    __builtin_trap();
  return 0;
}
