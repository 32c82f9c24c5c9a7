// Times as image configs write them (RFC 3339, UTC), for "created" fields and reproducible
// builds that take their clock from SOURCE_DATE_EPOCH or the image.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace pok8s::util {

// "2023-11-14T22:13:20Z"
std::string rfc3339(std::int64_t epoch_seconds);

// Seconds since the epoch of an RFC 3339 time ("…Z"; fractions and offsets ignored), or nullopt.
std::optional<std::int64_t> parse_rfc3339(const std::string& text);

}  // namespace pok8s::util
