// Parents are checked with lstat before the write; the tree is pok8s's scratch copy, so nothing
// else changes it meanwhile.
#include "pok8s/convert/image_files.h"

#include <fmt/format.h>
#include <sys/stat.h>

#include <string>

#include "pok8s/util/error.h"

namespace pok8s::convert {

void put_file(const util::Path& root, std::string_view path, std::string_view content,
              unsigned mode) {
  std::string rel(path.substr(path.find_first_not_of('/')));
  util::Path target = root / rel;
  for (util::Path p = target.parent_path(); p != root && p.string().size() > root.string().size();
       p = p.parent_path()) {
    struct stat st {};
    if (::lstat(p.c_str(), &st) == 0 && S_ISLNK(st.st_mode))
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to write /{}: /{} in the image is a symlink", rel,
                              p.lexically_relative(root).string()));
  }
  util::make_dirs(target.parent_path());
  util::write_file_atomic(target, content, mode);
  ::chmod(target.c_str(), mode);
}

void copy_into(const util::Path& root, std::string_view path, const util::Path& source,
               unsigned mode) {
  put_file(root, path, util::read_file(source, 512u << 20), mode);
}

}  // namespace pok8s::convert
