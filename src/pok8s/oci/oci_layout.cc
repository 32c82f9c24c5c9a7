// Placeholder until the oci_layout transport lands.
#include "pok8s/oci/image.h"
#include "pok8s/util/error.h"
namespace pok8s::oci {
std::unique_ptr<ImageSource> open_oci_layout_source(const ImageName&, const TransportOptions&) {
  throw Error(ErrorKind::kUnsupported, "oci_layout transport not built yet");
}
std::unique_ptr<ImageDestination> open_oci_layout_destination(const ImageName&, const TransportOptions&) {
  throw Error(ErrorKind::kUnsupported, "oci_layout transport not built yet");
}
}  // namespace pok8s::oci
