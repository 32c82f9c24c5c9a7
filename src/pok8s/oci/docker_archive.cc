// Placeholder until the docker_archive transport lands.
#include "pok8s/oci/image.h"
#include "pok8s/util/error.h"
namespace pok8s::oci {
std::unique_ptr<ImageSource> open_docker_archive_source(const ImageName&, const TransportOptions&) {
  throw Error(ErrorKind::kUnsupported, "docker_archive transport not built yet");
}
std::unique_ptr<ImageDestination> open_docker_archive_destination(const ImageName&, const TransportOptions&) {
  throw Error(ErrorKind::kUnsupported, "docker_archive transport not built yet");
}
}  // namespace pok8s::oci
