// libFuzzer target: build specs come from users, the HTTP API and the web builder.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "pok8s/config/build_spec.h"
#include "pok8s/util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  // Relative paths resolve into a directory that does not exist; absolute ones reach the real
  // file system, which parsing only stats and lists.
  const pok8s::util::Path base_dir = "/nonexistent/pok8s-fuzz";
  try {
    auto spec = pok8s::config::parse_build_spec(text, "fuzz.yaml", base_dir);
    // What the parser accepted, the engine relies on: a version, a known variant, paths made
    // absolute, and a spec that survives its own YAML (the web builder's Review page).
    if (spec.version.empty() || (spec.variant != "core" && spec.variant != "standard"))
      __builtin_trap();
    for (const auto& manifest : spec.toppings.manifests)
      if (!manifest.is_absolute()) __builtin_trap();
    if (!spec.cloud_config.empty() && spec.cloud_config[0] != '/') __builtin_trap();
    pok8s::config::unbuildable(spec);
    auto again =
        pok8s::config::parse_build_spec(pok8s::config::to_yaml(spec), "fuzz.yaml", base_dir);
    if (!(again == spec)) __builtin_trap();
  } catch (const pok8s::Error&) {
  }
  return 0;
}
