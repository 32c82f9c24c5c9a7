// Options every pok8s command shares.
#pragma once

#include <string>
#include <vector>

#include "output.h"

namespace pok8s::cli {

struct GlobalOptions {
  std::string cache_dir;  // empty: the XDG cache directory
  bool json = false;
  bool quiet = false;
  // The outbound policy (pok8s/oci/outbound.h): refuse private, loopback and other non-public
  // addresses, except those inside the allowed networks (CIDRs).
  bool public_network_only = false;
  std::vector<std::string> allowed_networks;
  std::vector<std::string> argv;  // as given, to run pok8s again in a user namespace
  OutputMode output_mode() const {
    return json ? OutputMode::kJson : quiet ? OutputMode::kQuiet : OutputMode::kHuman;
  }
};

}  // namespace pok8s::cli
