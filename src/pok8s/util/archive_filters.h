// The decompression filters pok8s lets libarchive use: only those it runs in-process.
#pragma once

struct archive;

namespace pok8s::util {

// Enables gzip, zstd, xz, bzip2 and none on a libarchive reader. Not filter_all: for lzop,
// lrzip, grzip and lz4 without its library, libarchive would run an external program, and
// pok8s never shells out to decompress.
void support_in_process_filters(archive* reader);

}  // namespace pok8s::util
