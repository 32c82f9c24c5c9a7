// Writing pok8s's own files into an unpacked image tree: at absolute image paths, never
// following the image's symlinks out of the tree.
#pragma once

#include <string_view>

#include "pok8s/util/file.h"

namespace pok8s::convert {

// Writes `content` to the absolute image path `path` under `root` with `mode`, making parent
// directories; a parent that is a symlink in the image is refused (kInvalidInput).
void put_file(const util::Path& root, std::string_view path, std::string_view content,
              unsigned mode);

// As put_file, with the content of the host file `source` (at most 512 MiB).
void copy_into(const util::Path& root, std::string_view path, const util::Path& source,
               unsigned mode);

}  // namespace pok8s::convert
