// libFuzzer target: the head of an HTTP response as pok8s-init's netboot reads it (the server
// that serves the rootfs image sends it), and the fetch URL from the kernel command line.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "pok8s/node/netboot.h"
#include "pok8s/util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace pok8s::node;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    if (auto head = parse_http_head(text)) {
      // The body starts after the head, inside what was read.
      if (head->size > text.size() || head->size > kMaxHttpHeadBytes) __builtin_trap();
      if (head->status < 0 || head->status > 999) __builtin_trap();
    }
  } catch (const pok8s::Error&) {
  }
  try {
    HttpUrl url = parse_http_url(text);
    if (url.path.empty() || url.path[0] != '/' || url.port == 0) __builtin_trap();
  } catch (const pok8s::Error&) {
  }
  return 0;
}
