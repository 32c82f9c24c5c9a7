// The decompression filters pok8s lets libarchive use: only those it runs in-process.
#pragma once

#include <string>

struct archive;

namespace pok8s::util {

// Enables gzip, zstd, xz, bzip2 and none on a libarchive reader. Not filter_all: for lzop,
// lrzip, grzip and lz4 without its library, libarchive would run an external program, and
// pok8s never shells out to decompress.
void support_in_process_filters(archive* reader);

// libarchive's reason for the last failure on `a`, or "unknown error" when it gives none (it
// has none for some failures, and a null reason must not reach a format string).
std::string archive_error_text(archive* a);

}  // namespace pok8s::util
