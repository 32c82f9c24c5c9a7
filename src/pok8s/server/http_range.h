// HTTP range requests (RFC 9110 §14): what a Range header asks of a representation of known
// size, and the exact bytes of a 206 response's framing. Pure: no HTTP library, no I/O.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pok8s::server {

// At most this many range-specs in one Range header (counted before merging). More is refused
// with 416, which RFC 9110 §15.5.17 names for "an excessive number of small or overlapping
// ranges": a client then learns why instead of receiving a whole file it did not ask for.
inline constexpr std::size_t kMaxRanges = 16;

// Bytes [first, first + length) of the representation; length ≥ 1.
struct ByteRange {
  std::uint64_t first = 0;
  std::uint64_t length = 0;

  std::uint64_t last() const { return first + length - 1; }
  friend bool operator==(const ByteRange&, const ByteRange&) = default;
};

struct RangeDecision {
  enum class Kind {
    kFull,           // 200 with the whole representation: no Range, or one the server ignores
    kPartial,        // 206 with `ranges`
    kUnsatisfiable,  // 416 with one `Content-Range: bytes */SIZE` (unsatisfied_content_range)
  };
  Kind kind = Kind::kFull;
  // kPartial: 1..kMaxRanges ranges, sorted, within the representation, neither overlapping nor
  // adjacent. One range → a single-part 206 (content_range); several → plan_multipart.
  std::vector<ByteRange> ranges;
  // kUnsatisfiable: why, as the end of a "Failed to serve …: <reason>" message.
  std::string reason;
};

// What to answer to a GET whose Range header is `header` (nullopt when absent) for a
// representation of `size` bytes (RFC 9110 §14.1.2 and §14.2):
//  - a unit other than "bytes" (case-insensitive), or a header that does not follow the grammar
//    (including a number of more than 19 digits, or last-pos < first-pos), is ignored: kFull;
//  - more than kMaxRanges range-specs: kUnsatisfiable;
//  - a range-spec whose first-pos ≥ size, or a suffix of length 0, is unsatisfiable and dropped;
//    a last-pos past the end is clamped to size - 1; a suffix longer than size means the whole;
//  - no satisfiable range left: kUnsatisfiable;
//  - an empty representation: a non-zero suffix is satisfiable there but no 206 can describe
//    zero bytes (Content-Range has no empty form), so it gets kFull (an empty 200); any other
//    range is unsatisfiable;
//  - the satisfiable ranges are sorted and overlapping or adjacent ones merged (§14.2 lets a
//    server coalesce "regardless of the order"), so no byte is sent twice. Ranges that cover
//    the whole representation stay kPartial with one range 0..size-1: a client that probes
//    with "bytes=0-" learns the complete length from Content-Range.
RangeDecision decide_range(std::optional<std::string_view> header, std::uint64_t size);

// The Content-Range of a single-part 206 or of a part: "bytes 0-99/1000".
std::string content_range(const ByteRange& range, std::uint64_t size);

// The Content-Range of a 416: "bytes */1000". Send it once.
std::string unsatisfied_content_range(std::uint64_t size);

// A multipart/byteranges body (RFC 9110 §14.6, framed as RFC 2046 §5.1.1 multipart): the
// response is part_heads[0], the bytes of ranges[0], part_heads[1], the bytes of ranges[1], …,
// then tail. content_length is the exact length of all of it, for the Content-Length header.
struct MultipartPlan {
  std::string boundary;      // "pok8s-" and 16 random hex digits
  std::string content_type;  // "multipart/byteranges; boundary=…", the response's Content-Type
  std::vector<std::string> part_heads;
  std::string tail;
  std::uint64_t content_length = 0;
};

// The multipart body for `ranges` (as decide_range returns them; use it for two or more, since
// §14.6 forbids a multipart answer to a single range) of a representation of `size` bytes whose
// own type is `part_content_type` (no Content-Type line in the parts when empty). Throws
// kInternal for no ranges, a range outside the representation or a content type with a control
// character (it would forge headers), kUnsupported if the body's length does not fit in 64 bits.
MultipartPlan plan_multipart(const std::vector<ByteRange>& ranges, std::uint64_t size,
                             std::string_view part_content_type);

}  // namespace pok8s::server
