// libFuzzer target: image archives from untrusted hands — docker-archive (manifest.json and
// its members) and oci-archive (an OCI layout in a tar), read the whole way into a cache.
#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>

#include "pok8s/oci/image.h"
#include "pok8s/util/error.h"
#include "pok8s/util/file.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace pok8s;
  if (size < 1) return 0;
  auto scratch = util::TempDir::scratch();
  util::Path file = scratch.path() / "image.tar";
  {
    util::UniqueFd fd = util::open_file(file, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    util::write_all(fd.get(), std::string_view(reinterpret_cast<const char*>(data + 1), size - 1),
                    "fuzz input");
  }
  const char* transport = data[0] & 1 ? "docker-archive:" : "oci-archive:";
  try {
    oci::BlobStore store(scratch.path() / "cache");
    oci::TransportOptions options;
    options.jobs = 1;
    auto source =
        oci::open_source(oci::ImageName::parse(std::string(transport) + file.string()), options);
    auto image = oci::resolve_image(*source, store, std::nullopt);
    oci::fetch_layers(*source, image, store, options, {});
  } catch (const Error&) {
  }
  return 0;
}
