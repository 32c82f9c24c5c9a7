// HTTP range requests: the Range grammar of RFC 9110 §14.1 and the multipart/byteranges framing
// of §14.6. Hand-written: Boost.Beast has no Range parser and cpp-httplib's bounds neither the
// count of ranges nor their overlap nor their numbers; the grammar is short, and every limit
// here is a defence the service owns whatever HTTP library it runs on.
#include "pok8s/server/http_range.h"

#include <fmt/format.h>
#include <algorithm>
#include <limits>

#include "pok8s/util/error.h"
#include "pok8s/util/file.h"

namespace pok8s::server {

namespace {

// 10^19 - 1 < 2^64 - 1, so a number of at most 19 digits never overflows a uint64_t.
constexpr std::size_t kMaxDigits = 19;

// One range-spec as written: "first-last", "first-" or "-suffix".
struct RangeSpec {
  bool suffix = false;
  std::uint64_t first = 0;  // the suffix-length when `suffix`
  std::optional<std::uint64_t> last;
};

struct ParsedRange {
  std::vector<RangeSpec> specs;  // the first kMaxRanges of them
  std::size_t count = 0;         // all of them
};

bool is_ows(char c) {
  return c == ' ' || c == '\t';
}

std::string_view trim_ows(std::string_view s) {
  while (!s.empty() && is_ows(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_ows(s.back())) s.remove_suffix(1);
  return s;
}

bool equals_ascii_nocase(std::string_view a, std::string_view b) {
  return std::ranges::equal(a, b, [](char x, char y) {
    auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; };
    return lower(x) == lower(y);
  });
}

// 1*DIGIT, at most kMaxDigits of them.
std::optional<std::uint64_t> parse_position(std::string_view s) {
  if (s.empty() || s.size() > kMaxDigits) return std::nullopt;
  std::uint64_t value = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + static_cast<std::uint64_t>(c - '0');
  }
  return value;
}

// int-range = first-pos "-" [ last-pos ] / suffix-range = "-" suffix-length
std::optional<RangeSpec> parse_range_spec(std::string_view s) {
  std::size_t dash = s.find('-');
  if (dash == std::string_view::npos) return std::nullopt;
  RangeSpec spec;
  if (dash == 0) {
    auto length = parse_position(s.substr(1));
    if (!length) return std::nullopt;
    spec.suffix = true;
    spec.first = *length;
    return spec;
  }
  auto first = parse_position(s.substr(0, dash));
  if (!first) return std::nullopt;
  spec.first = *first;
  if (std::string_view rest = s.substr(dash + 1); !rest.empty()) {
    auto last = parse_position(rest);
    // §14.1.1: a last-pos below the first-pos makes the range-spec invalid.
    if (!last || *last < *first) return std::nullopt;
    spec.last = *last;
  }
  return spec;
}

// ranges-specifier = range-unit "=" range-set, range-set = 1#range-spec, where a list allows
// OWS around its commas and empty elements (§5.6.1). Nothing for another unit or a broken header.
std::optional<ParsedRange> parse_ranges_specifier(std::string_view value) {
  value = trim_ows(value);
  std::size_t eq = value.find('=');
  if (eq == std::string_view::npos || !equals_ascii_nocase(value.substr(0, eq), "bytes"))
    return std::nullopt;
  ParsedRange parsed;
  std::string_view set = value.substr(eq + 1);
  while (true) {
    std::size_t comma = set.find(',');
    std::string_view element = trim_ows(set.substr(0, comma));
    if (!element.empty()) {
      auto spec = parse_range_spec(element);
      if (!spec) return std::nullopt;
      if (parsed.specs.size() < kMaxRanges) parsed.specs.push_back(*spec);
      ++parsed.count;
    }
    if (comma == std::string_view::npos) break;
    set.remove_prefix(comma + 1);
  }
  if (parsed.count == 0) return std::nullopt;
  return parsed;
}

RangeDecision unsatisfiable(std::string reason) {
  return {RangeDecision::Kind::kUnsatisfiable, {}, std::move(reason)};
}

// a + b, or a throw naming the body that would be too long to describe.
std::uint64_t add_length(std::uint64_t a, std::uint64_t b) {
  if (b > std::numeric_limits<std::uint64_t>::max() - a)
    throw Error(ErrorKind::kUnsupported,
                "Failed to plan a multipart/byteranges body: it would be longer than 2^64 bytes");
  return a + b;
}

}  // namespace

RangeDecision decide_range(std::optional<std::string_view> header, std::uint64_t size) {
  if (!header) return {};
  auto parsed = parse_ranges_specifier(*header);
  // §14.2: a server MAY ignore a Range it does not understand; the whole representation is a
  // correct answer to the GET itself.
  if (!parsed) return {};
  if (parsed->count > kMaxRanges)
    return unsatisfiable(fmt::format("the Range header names {} ranges, more than the {} allowed",
                                     parsed->count, kMaxRanges));
  if (size == 0) {
    // §14.1.1: on an empty representation only a non-zero suffix is satisfiable, and it means
    // the whole of it, which only a 200 can carry.
    for (const RangeSpec& spec : parsed->specs)
      if (spec.suffix && spec.first > 0) return {};
    return unsatisfiable("no range of the Range header is within the file's 0 bytes");
  }

  std::vector<ByteRange> ranges;
  for (const RangeSpec& spec : parsed->specs) {
    if (spec.suffix) {
      if (spec.first == 0) continue;
      std::uint64_t length = std::min(spec.first, size);
      ranges.push_back({size - length, length});
    } else {
      if (spec.first >= size) continue;
      std::uint64_t last = std::min(spec.last.value_or(size - 1), size - 1);
      ranges.push_back({spec.first, last - spec.first + 1});
    }
  }
  if (ranges.empty())
    return unsatisfiable(
        fmt::format("no range of the Range header is within the file's {} bytes", size));

  std::ranges::sort(ranges, {}, &ByteRange::first);
  std::vector<ByteRange> merged;
  for (const ByteRange& range : ranges) {
    // Every end is ≤ size, so first + length cannot overflow.
    if (!merged.empty() && range.first <= merged.back().first + merged.back().length) {
      ByteRange& into = merged.back();
      into.length = std::max(into.first + into.length, range.first + range.length) - into.first;
    } else {
      merged.push_back(range);
    }
  }
  return {RangeDecision::Kind::kPartial, std::move(merged), {}};
}

std::string content_range(const ByteRange& range, std::uint64_t size) {
  return fmt::format("bytes {}-{}/{}", range.first, range.last(), size);
}

std::string unsatisfied_content_range(std::uint64_t size) {
  return fmt::format("bytes */{}", size);
}

MultipartPlan plan_multipart(const std::vector<ByteRange>& ranges, std::uint64_t size,
                             std::string_view part_content_type) {
  if (ranges.empty())
    throw Error(ErrorKind::kInternal,
                "Failed to plan a multipart/byteranges body: it has no ranges");
  for (char c : part_content_type)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f)
      throw Error(ErrorKind::kInternal,
                  "Failed to plan a multipart/byteranges body: the parts' content type has a "
                  "control character");
  MultipartPlan plan;
  // The boundary must not occur in the parts (RFC 2046 §5.1.1); 64 random bits make that as
  // unlikely as guessing it, even for a client that chose the file's content.
  plan.boundary = "pok8s-" + util::random_hex(8);
  plan.content_type = "multipart/byteranges; boundary=" + plan.boundary;
  std::string type_line =
      part_content_type.empty() ? "" : fmt::format("Content-Type: {}\r\n", part_content_type);
  std::uint64_t total = 0;
  for (std::size_t i = 0; i < ranges.size(); ++i) {
    const ByteRange& range = ranges[i];
    if (range.length == 0 || range.first >= size || range.length > size - range.first)
      throw Error(ErrorKind::kInternal,
                  fmt::format("Failed to plan a multipart/byteranges body: the range of {} bytes "
                              "at {} is outside the file's {} bytes",
                              range.length, range.first, size));
    // The CRLF before a delimiter belongs to the delimiter, so the first part has none.
    plan.part_heads.push_back(fmt::format("{}--{}\r\n{}Content-Range: {}\r\n\r\n",
                                          i == 0 ? "" : "\r\n", plan.boundary, type_line,
                                          content_range(range, size)));
    total = add_length(total, plan.part_heads.back().size());
    total = add_length(total, range.length);
  }
  plan.tail = fmt::format("\r\n--{}--\r\n", plan.boundary);
  plan.content_length = add_length(total, plan.tail.size());
  return plan;
}

}  // namespace pok8s::server
