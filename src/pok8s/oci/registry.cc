// Placeholder until the registry transport lands.
#include "pok8s/oci/image.h"
#include "pok8s/util/error.h"
namespace pok8s::oci {
std::unique_ptr<ImageSource> open_registry_source(const ImageName&, const TransportOptions&) {
  throw Error(ErrorKind::kUnsupported, "registry transport not built yet");
}
std::unique_ptr<ImageDestination> open_registry_destination(const ImageName&, const TransportOptions&) {
  throw Error(ErrorKind::kUnsupported, "registry transport not built yet");
}
}  // namespace pok8s::oci
