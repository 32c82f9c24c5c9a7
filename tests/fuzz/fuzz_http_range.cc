// libFuzzer target: the Range header of GET /api/v1/builds/{id}/artifacts/{name} comes from any
// client, against artifacts of any size.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "pok8s/server/http_range.h"

using pok8s::server::RangeDecision;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // The first 8 bytes are the representation's size (small sizes most of the time, so ranges
  // are often satisfiable); the rest is the header.
  if (size < 8) return 0;
  std::uint64_t file_size = 0;
  std::memcpy(&file_size, data, 8);
  if (data[0] & 1) file_size %= 4096;
  std::string_view header(reinterpret_cast<const char*>(data) + 8, size - 8);

  RangeDecision d = pok8s::server::decide_range(header, file_size);
  if (d.kind != RangeDecision::Kind::kPartial) {
    if (!d.ranges.empty()) __builtin_trap();
    if (d.kind == RangeDecision::Kind::kUnsatisfiable && d.reason.empty()) __builtin_trap();
    return 0;
  }
  // A 206: 1..kMaxRanges ranges, each non-empty and inside the file, sorted, neither overlapping
  // nor adjacent, so never more bytes than the file holds.
  if (d.ranges.empty() || d.ranges.size() > pok8s::server::kMaxRanges) __builtin_trap();
  std::uint64_t total = 0;
  std::uint64_t end_of_previous = 0;
  for (std::size_t i = 0; i < d.ranges.size(); ++i) {
    const auto& r = d.ranges[i];
    if (r.length == 0 || r.first >= file_size || r.length > file_size - r.first) __builtin_trap();
    if (i > 0 && r.first <= end_of_previous) __builtin_trap();
    end_of_previous = r.first + r.length;
    total += r.length;
    if (total > file_size) __builtin_trap();
  }
  // The framing of a multipart answer counts exactly what it holds.
  if (d.ranges.size() > 1 && file_size < (std::uint64_t{1} << 40)) {
    auto plan = pok8s::server::plan_multipart(d.ranges, file_size, "application/octet-stream");
    std::uint64_t framed = plan.tail.size();
    for (const std::string& head : plan.part_heads) framed += head.size();
    if (plan.part_heads.size() != d.ranges.size() || plan.content_length != framed + total)
      __builtin_trap();
  }
  return 0;
}
