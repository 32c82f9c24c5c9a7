// Feeds arbitrary bytes to apply_layer as a layer blob, unpacking into a scratch root with
// small limits: any input may be refused with pok8s::Error, none may crash or escape.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "pok8s/rootfs/apply.h"
#include "pok8s/util/error.h"
#include "pok8s/util/file.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace pok8s;
  // The blob lives in a memfd: no disk traffic, and the path is ours alone.
  util::UniqueFd blob(::memfd_create("fuzz-layer", MFD_CLOEXEC));
  if (!blob.valid()) return 0;
  try {
    util::write_all(blob.get(), std::as_bytes(std::span(data, size)), "fuzz input");
  } catch (const Error&) {
    return 0;
  }
  std::string blob_path = "/proc/self/fd/" + std::to_string(blob.get());

  // A fresh root per input, removed on return, so inputs cannot interact.
  util::TempDir root_dir = util::TempDir::scratch();
  util::UniqueFd root(::open(root_dir.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!root.valid()) return 0;

  rootfs::ApplyOptions options;
  options.limits.max_layer_bytes = 8u << 20;
  options.limits.max_entries = 1000;
  options.limits.max_path = 1024;
  options.limits.max_xattr_bytes = 4096;
  try {
    rootfs::apply_layer(root.get(), blob_path, "fuzz layer", std::nullopt, options);
  } catch (const Error&) {
    // Refusing hostile input is the expected outcome.
  }
  return 0;
}
