// libFuzzer target: the kernel command line pok8s-init and pok8s-agent read (set by whoever
// edits the boot entry) and the boot options taken from it.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "pok8s/node/init.h"
#include "pok8s/node/kernel_cmdline.h"
#include "pok8s/util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace pok8s::node;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  for (const auto& p : parse_kernel_cmdline(text))
    if (p.key.empty() && !p.value) __builtin_trap();  // empty words are never parameters
  try {
    BootOptions options = parse_boot_options(text);
    // The image path always stays an absolute path on the media, without "..".
    if (options.image_path.empty() || options.image_path[0] != '/') __builtin_trap();
    (void)image_file_on_media(options);
  } catch (const pok8s::Error&) {
  }
  return 0;
}
