// libFuzzer target: every cloud-config is rendered as a Go template first, and cloud-configs come
// from users, OEM partitions and boot media.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "pok8s/config/go_template.h"
#include "pok8s/util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  // What Kairos gives a template: the machine id and the node's values.
  static const nlohmann::json values = nlohmann::json::parse(R"({
    "MachineID": "2f5a3b9c1d7e4f60",
    "Values": {
      "os": {"name": "debian", "version": 12},
      "network": [{"name": "eth0", "address": "10.0.0.2/24"}, {"name": "eth1"}],
      "labels": {"zone": "b"}, "empty": [], "null": null, "ratio": 1.5
    }
  })");
  try {
    std::string out = pok8s::config::render_go_template(text, values, "fuzz.yaml");
    if (out.size() > pok8s::config::kMaxTemplateOutputBytes) __builtin_trap();
    // Text without an action is its own rendering.
    if (!pok8s::config::looks_like_go_template(text) && out != text) __builtin_trap();
  } catch (const pok8s::Error& e) {
    // One line naming the source, of bounded length, whatever the template put in it.
    std::string_view what = e.what();
    if (e.kind() != pok8s::ErrorKind::kInvalidInput || !what.starts_with("fuzz.yaml:") ||
        what.find('\n') != std::string_view::npos || what.size() > 600)
      __builtin_trap();
  }
  return 0;
}
