// In-process decompression filters for libarchive readers.
#include "pok8s/util/archive_filters.h"

#include <archive.h>

namespace pok8s::util {

void support_in_process_filters(archive* reader) {
  archive_read_support_filter_gzip(reader);
  archive_read_support_filter_zstd(reader);
  archive_read_support_filter_xz(reader);
  archive_read_support_filter_bzip2(reader);
  archive_read_support_filter_none(reader);
}

std::string archive_error_text(archive* a) {
  const char* reason = a ? archive_error_string(a) : nullptr;
  return reason ? reason : "unknown error";
}

}  // namespace pok8s::util
