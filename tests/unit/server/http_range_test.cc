// HTTP range requests: what a Range header gets (200, 206 or 416) and the exact framing of a
// multipart/byteranges body.
#include "pok8s/server/http_range.h"

#include <gtest/gtest.h>

#include <limits>
#include <string>
#include <vector>

#include "pok8s/util/error.h"

using namespace pok8s;
using namespace pok8s::server;
using Kind = RangeDecision::Kind;

namespace {

constexpr std::uint64_t kMiB = 1u << 20;

std::vector<ByteRange> partial(std::string_view header, std::uint64_t size) {
  RangeDecision d = decide_range(header, size);
  EXPECT_EQ(d.kind, Kind::kPartial) << header;
  return d.ranges;
}

Kind kind_of(std::string_view header, std::uint64_t size) {
  return decide_range(header, size).kind;
}

// What a client receives for a multipart plan: the heads, the bytes of `file`, the tail.
std::string multipart_body(const MultipartPlan& plan, const std::vector<ByteRange>& ranges,
                           const std::string& file) {
  std::string body;
  for (std::size_t i = 0; i < ranges.size(); ++i)
    body += plan.part_heads[i] + file.substr(ranges[i].first, ranges[i].length);
  return body + plan.tail;
}

}  // namespace

TEST(DecideRange, WithoutAHeaderSendsTheWholeFile) {
  RangeDecision d = decide_range(std::nullopt, 1000);
  EXPECT_EQ(d.kind, Kind::kFull);
  EXPECT_TRUE(d.ranges.empty());
}

TEST(DecideRange, ReadsTheThreeFormsOfARange) {
  EXPECT_EQ(partial("bytes=0-99", 1000), (std::vector<ByteRange>{{0, 100}}));
  EXPECT_EQ(partial("bytes=900-", 1000), (std::vector<ByteRange>{{900, 100}}));
  EXPECT_EQ(partial("bytes=-10", 1000), (std::vector<ByteRange>{{990, 10}}));
  EXPECT_EQ(partial("bytes=999-999", 1000), (std::vector<ByteRange>{{999, 1}}));
}

TEST(DecideRange, TakesTheUnitInAnyCaseAndWhitespaceAroundCommas) {
  EXPECT_EQ(partial("Bytes=0-0", 10), (std::vector<ByteRange>{{0, 1}}));
  EXPECT_EQ(partial("BYTES=0-0 ,\t5-5", 10), (std::vector<ByteRange>{{0, 1}, {5, 1}}));
  EXPECT_EQ(partial("bytes=0-0, 5-5", 10), (std::vector<ByteRange>{{0, 1}, {5, 1}}));
  // A list may hold empty elements (RFC 9110 §5.6.1.2).
  EXPECT_EQ(partial("bytes=, 0-0,,5-5 ,", 10), (std::vector<ByteRange>{{0, 1}, {5, 1}}));
  EXPECT_EQ(partial(" bytes=0-0 ", 10), (std::vector<ByteRange>{{0, 1}}));
}

TEST(DecideRange, IgnoresOtherUnitsAndBrokenHeaders) {
  for (const char* header : {"items=0-1",
                             "bytes",
                             "bytes=",
                             "bytes= , ",
                             "bytes=a-b",
                             "bytes=0-1x",
                             "bytes=1-0",
                             "bytes=--1",
                             "bytes=-",
                             "bytes=0--1",
                             "bytes = 0-1",
                             "bytes=0 - 1",
                             "bytes=+1-2",
                             "bytes=0-1;2-3",
                             "bytes=0x10-",
                             "bytes=0-1,junk",
                             "bytesx=0-1",
                             "=0-1",
                             "",
                             "bytes=1-2-3",
                             "bytes=\xd9\xa1-2"})
    EXPECT_EQ(kind_of(header, 1000), Kind::kFull) << header;
}

TEST(DecideRange, IgnoresNumbersThatCouldOverflow) {
  // 20 digits is refused whatever its value, so no arithmetic on the header can overflow.
  EXPECT_EQ(kind_of("bytes=18446744073709551616-", 1000), Kind::kFull);
  EXPECT_EQ(kind_of("bytes=0-99999999999999999999", 1000), Kind::kFull);
  EXPECT_EQ(kind_of("bytes=-00000000000000000001", 1000), Kind::kFull);
  // 19 digits is a number, the largest of them far past any file.
  EXPECT_EQ(partial("bytes=0-9999999999999999999", 1000), (std::vector<ByteRange>{{0, 1000}}));
  EXPECT_EQ(partial("bytes=-9999999999999999999", 1000), (std::vector<ByteRange>{{0, 1000}}));
  EXPECT_EQ(kind_of("bytes=9999999999999999999-", 1000), Kind::kUnsatisfiable);
  EXPECT_EQ(partial("bytes=0000000000000000005-", 10), (std::vector<ByteRange>{{5, 5}}));
}

TEST(DecideRange, ClampsTheLastByteToTheFile) {
  // Finding: "bytes=0-99999999999" announced a 100 GB Content-Length and sent 1 MiB.
  auto ranges = partial("bytes=0-99999999999", kMiB);
  ASSERT_EQ(ranges.size(), 1u);
  EXPECT_EQ(ranges[0], (ByteRange{0, kMiB}));
  EXPECT_EQ(content_range(ranges[0], kMiB), "bytes 0-1048575/1048576");
  EXPECT_EQ(partial("bytes=500-5000", 1000), (std::vector<ByteRange>{{500, 500}}));
}

TEST(DecideRange, ASuffixLongerThanTheFileMeansTheWholeFile) {
  EXPECT_EQ(partial("bytes=-5000", 1000), (std::vector<ByteRange>{{0, 1000}}));
  EXPECT_EQ(partial("bytes=-1000", 1000), (std::vector<ByteRange>{{0, 1000}}));
}

TEST(DecideRange, RefusesAZeroSuffix) {
  // Finding: "bytes=-0" got a 206.
  RangeDecision d = decide_range("bytes=-0", 1000);
  EXPECT_EQ(d.kind, Kind::kUnsatisfiable);
  EXPECT_TRUE(d.ranges.empty());
  EXPECT_NE(d.reason.find("1000 bytes"), std::string::npos) << d.reason;
}

TEST(DecideRange, DropsRangesThatStartPastTheEnd) {
  EXPECT_EQ(kind_of("bytes=1000-", 1000), Kind::kUnsatisfiable);
  EXPECT_EQ(kind_of("bytes=1000-2000", 1000), Kind::kUnsatisfiable);
  EXPECT_EQ(kind_of("bytes=1000-2000, -0", 1000), Kind::kUnsatisfiable);
  // The satisfiable ones are still served.
  EXPECT_EQ(partial("bytes=2000-3000,10-19,-0,1000-", 1000), (std::vector<ByteRange>{{10, 10}}));
}

TEST(DecideRange, AnEmptyFileSatisfiesNoRangeButASuffixGetsItWhole) {
  EXPECT_EQ(kind_of("bytes=0-", 0), Kind::kUnsatisfiable);
  EXPECT_EQ(kind_of("bytes=0-0", 0), Kind::kUnsatisfiable);
  EXPECT_EQ(kind_of("bytes=-0", 0), Kind::kUnsatisfiable);
  // RFC 9110 §14.1.1: a non-zero suffix is satisfiable even here, and no 206 can describe zero
  // bytes, so the (empty) file comes whole with a 200.
  EXPECT_EQ(kind_of("bytes=-1", 0), Kind::kFull);
  EXPECT_EQ(kind_of("bytes=0-5,-1", 0), Kind::kFull);
  EXPECT_EQ(kind_of("bytes=junk", 0), Kind::kFull);
}

TEST(DecideRange, MergesOverlappingAndAdjacentRangesInOrder) {
  EXPECT_EQ(partial("bytes=50-59,0-9,5-14,15-19", 100),
            (std::vector<ByteRange>{{0, 20}, {50, 10}}));
  EXPECT_EQ(partial("bytes=0-9,10-19", 100), (std::vector<ByteRange>{{0, 20}}));
  EXPECT_EQ(partial("bytes=0-9,11-19", 100), (std::vector<ByteRange>{{0, 10}, {11, 9}}));
  EXPECT_EQ(partial("bytes=0-99,10-19", 100), (std::vector<ByteRange>{{0, 100}}));
  EXPECT_EQ(partial("bytes=-10,0-", 100), (std::vector<ByteRange>{{0, 100}}));
  EXPECT_EQ(partial("bytes=-10,80-95", 100), (std::vector<ByteRange>{{80, 20}}));
}

TEST(DecideRange, TheWholeFileAsARangeStaysPartial) {
  // A client that probes with "bytes=0-" learns the complete length from Content-Range.
  EXPECT_EQ(partial("bytes=0-", 1000), (std::vector<ByteRange>{{0, 1000}}));
}

TEST(DecideRange, OverlappingRangesNeverSendMoreThanTheFile) {
  // Finding: 700 overlapping ranges of 1 MiB returned 734 MB from a 1 MiB file.
  std::string header = "bytes=0-1048575";
  for (int i = 1; i < 700; ++i) header += ",0-1048575";
  RangeDecision d = decide_range(header, kMiB);
  EXPECT_EQ(d.kind, Kind::kUnsatisfiable);
  EXPECT_NE(d.reason.find("700 ranges"), std::string::npos) << d.reason;
  // Within the limit they merge into the file, once.
  header = "bytes=0-1048575";
  for (std::size_t i = 1; i < kMaxRanges; ++i) header += ",0-1048575";
  EXPECT_EQ(partial(header, kMiB), (std::vector<ByteRange>{{0, kMiB}}));
}

TEST(DecideRange, RefusesMoreThanTheLimitOfRanges) {
  std::string header = "bytes=";
  for (std::size_t i = 0; i < kMaxRanges; ++i)
    header += std::to_string(i * 10) + "-" + std::to_string(i * 10) + ",";
  EXPECT_EQ(partial(header, 1000).size(), kMaxRanges);
  header += "900-900";
  EXPECT_EQ(kind_of(header, 1000), Kind::kUnsatisfiable);
  // Empty list elements do not count.
  EXPECT_EQ(partial("bytes=0-0" + std::string(100, ','), 1000).size(), 1u);
  // The count is of what the client wrote, even if some would be dropped, and an invalid
  // header is still ignored however long it is.
  EXPECT_EQ(kind_of(header + ",5000-", 1000), Kind::kUnsatisfiable);
  EXPECT_EQ(kind_of(header + ",x", 1000), Kind::kFull);
}

TEST(ContentRange, NamesTheRangeAndTheRealSize) {
  EXPECT_EQ(content_range({0, 100}, 1000), "bytes 0-99/1000");
  EXPECT_EQ(content_range({999, 1}, 1000), "bytes 999-999/1000");
  // Finding: a 416 carried two Content-Range headers; there is one value to send.
  EXPECT_EQ(unsatisfied_content_range(1000), "bytes */1000");
  EXPECT_EQ(unsatisfied_content_range(0), "bytes */0");
}

TEST(PlanMultipart, FramesThePartsWithTheRealSize) {
  std::string file(1000, '\0');
  for (std::size_t i = 0; i < file.size(); ++i) file[i] = static_cast<char>('a' + i % 26);
  auto ranges = partial("bytes=0-2,-3", file.size());
  MultipartPlan plan = plan_multipart(ranges, file.size(), "application/octet-stream");
  ASSERT_EQ(plan.part_heads.size(), 2u);
  EXPECT_EQ(plan.boundary.size(), 6u + 16u);
  EXPECT_TRUE(plan.boundary.starts_with("pok8s-"));
  EXPECT_EQ(plan.boundary.find_first_not_of("0123456789abcdef", 6), std::string::npos);
  EXPECT_EQ(plan.content_type, "multipart/byteranges; boundary=" + plan.boundary);
  // Finding: the parts said "/0" as the total. RFC 9110 §14.6's framing, byte for byte.
  const std::string& b = plan.boundary;
  EXPECT_EQ(multipart_body(plan, ranges, file),
            "--" + b +
                "\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 0-2/1000\r\n"
                "\r\nabc\r\n--" +
                b +
                "\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 997-999/1000"
                "\r\n\r\njkl\r\n--" +
                b + "--\r\n");
}

TEST(PlanMultipart, ContentLengthIsTheBodysExactLength) {
  std::string file(5000, 'x');
  for (const char* header : {"bytes=0-0,2-2", "bytes=0-99,200-299,-1000", "bytes=1-,0-0",
                             "bytes=0-0,2-2,4-4,6-6,8-8,10-10,12-12,14-14,16-16,18-18,20-20,22-22,"
                             "24-24,26-26,28-28,4000-"}) {
    auto ranges = partial(header, file.size());
    for (std::string_view type : {"application/octet-stream", ""}) {
      MultipartPlan plan = plan_multipart(ranges, file.size(), type);
      EXPECT_EQ(plan.content_length, multipart_body(plan, ranges, file).size()) << header;
      EXPECT_EQ(plan.part_heads[0].find("Content-Type") != std::string::npos, !type.empty());
    }
  }
}

TEST(PlanMultipart, BoundariesDiffer) {
  std::vector<ByteRange> ranges{{0, 1}, {2, 1}};
  EXPECT_NE(plan_multipart(ranges, 3, "").boundary, plan_multipart(ranges, 3, "").boundary);
}

TEST(PlanMultipart, RefusesWhatDecideRangeNeverReturns) {
  auto kind_thrown = [](const std::vector<ByteRange>& ranges, std::uint64_t size,
                        std::string_view type) {
    try {
      plan_multipart(ranges, size, type);
    } catch (const Error& e) {
      EXPECT_TRUE(std::string_view(e.what()).starts_with("Failed to plan")) << e.what();
      return e.kind();
    }
    return ErrorKind::kInvalidInput;  // not thrown
  };
  EXPECT_EQ(kind_thrown({}, 10, ""), ErrorKind::kInternal);
  EXPECT_EQ(kind_thrown({{0, 1}, {10, 1}}, 10, ""), ErrorKind::kInternal);
  EXPECT_EQ(kind_thrown({{0, 1}, {5, 6}}, 10, ""), ErrorKind::kInternal);
  EXPECT_EQ(kind_thrown({{0, 0}}, 10, ""), ErrorKind::kInternal);
  EXPECT_EQ(kind_thrown({{0, 1}}, 10, "text/plain\r\nSet-Cookie: a=b"), ErrorKind::kInternal);
  std::uint64_t huge = std::numeric_limits<std::uint64_t>::max();
  EXPECT_EQ(kind_thrown({{0, huge - 10}, {huge - 5, 5}}, huge, ""), ErrorKind::kUnsupported);
}
