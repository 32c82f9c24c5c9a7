// libFuzzer target: modules.dep and modules.builtin as found in untrusted images, and the
// dependency closure pok8s computes from them. The input is modules.dep, then (after a line
// holding only "--") modules.builtin, then (after another) the wanted names, one a line.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "pok8s/boot/modules.h"
#include "pok8s/util/error.h"

namespace {

std::string_view take_part(std::string_view& text) {
  auto sep = text.find("\n--\n");
  std::string_view part = text.substr(0, sep);
  text = sep == std::string_view::npos ? std::string_view() : text.substr(sep + 4);
  return part;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace pok8s::boot;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  std::string_view dep = take_part(text), builtin = take_part(text);
  std::vector<std::string> wanted;
  while (!text.empty()) {
    auto nl = text.find('\n');
    wanted.emplace_back(text.substr(0, nl));
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
  }
  try {
    ModuleIndex index = ModuleIndex::parse(dep, builtin, "fuzz");
    auto order = resolve_modules(index, wanted);
    for (std::size_t i = 0; i < order.size(); ++i) {
      const ModuleEntry* m = order[i];
      // Paths stay inside the module directory and every module comes once.
      if (m->path.starts_with('/') || m->path.starts_with("../") ||
          m->path.find("/../") != std::string::npos)
        __builtin_trap();
      for (std::size_t j = 0; j < i; ++j)
        if (order[j] == m) __builtin_trap();
    }
  } catch (const pok8s::Error&) {
  }
  return 0;
}
