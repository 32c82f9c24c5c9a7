// libFuzzer target: the bodies of POST /api/v1/builds come from any client of the service.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "pok8s/server/build_request.h"
#include "pok8s/util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view body(reinterpret_cast<const char*>(data), size);
  pok8s::server::RequestLimits limits;
  try {
    auto request = pok8s::server::parse_build_request(body, limits);
    // What was accepted is written under a directory of the service's: every name must stay
    // inside it, and the request must survive its own JSON (the clone-and-edit round trip).
    if (request.spec.empty() || request.files.size() > limits.max_files) __builtin_trap();
    for (const auto& [name, text] : request.files) {
      if (name.empty() || name.front() == '/' || name.find("//") != std::string::npos ||
          name == "keysets" || name.starts_with("keysets/") || text.size() > limits.max_file_bytes)
        __builtin_trap();
      // No component may be "." or ".." ("..yaml" is a file name like any other).
      for (std::size_t start = 0; start <= name.size();) {
        std::size_t end = std::min(name.find('/', start), name.size());
        std::string_view part = std::string_view(name).substr(start, end - start);
        if (part == "." || part == "..") __builtin_trap();
        start = end + 1;
      }
      pok8s::server::check_request_file_name(name, limits);
    }
    auto again = pok8s::server::parse_build_request(
        pok8s::server::build_request_json(request).dump(), limits);
    if (again.spec != request.spec || again.files != request.files) __builtin_trap();
  } catch (const pok8s::Error&) {
  }
  return 0;
}
