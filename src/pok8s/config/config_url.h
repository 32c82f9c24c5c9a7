// The cloud-config's Kairos `config_url`: a further cloud-config to fetch over HTTP(S), read
// here (strictly, with file and line) and fetched on the node by pok8s-agent's network stage
// (node/config_url.h).
#pragma once

#include <span>
#include <string>
#include <vector>

#include "pok8s/config/cloud_config.h"

namespace pok8s::config {

inline constexpr std::size_t kMaxConfigUrlLength = 2048;

struct ConfigUrl {
  std::string url;
  std::string origin;  // "FILE:LINE" of the key
};

// Every config's config_url, in order (a config without one gives nothing). A value that is not
// an http:// or https:// URL on one line of at most kMaxConfigUrlLength characters throws
// Error(kInvalidInput) "Failed to read cloud-config FILE: line N: config_url ...".
std::vector<ConfigUrl> read_config_urls(std::span<const CloudConfig> configs);

}  // namespace pok8s::config
