// config_url on the node: pok8s-agent's network stage fetches each cloud-config's config_url
// (and theirs in turn) with pok8s-sysimage, checks that what came back is a cloud-config, and
// puts it in /run/pok8s/datasource, where every later stage and `config show` read it.
#pragma once

#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "pok8s/config/cloud_config.h"
#include "pok8s/node/init.h"
#include "pok8s/node/upgrade.h"
#include "pok8s/util/file.h"

namespace pok8s::node {

inline constexpr std::size_t kMaxConfigUrls = 8;  // fetched in one run, nested ones included
inline constexpr int kConfigUrlAttempts = 3;      // a network only just online may still fail
inline constexpr std::string_view kConfigUrlFilePrefix = "config_url-";

struct ConfigUrlOptions {
  util::Path datasource_dir = std::string(kDatasourceDir);
  util::Path sysimage_dir = std::string(kSysimageDir);
  int retry_delay_ms = 2000;
  std::function<void(std::string_view)> log;  // one line per config fetched
};

struct ConfigUrlResult {
  std::vector<util::Path> written;  // datasource_dir/config_url-NN.yaml, in fetch order
  std::vector<std::string> errors;  // one line per URL that failed, naming it and its origin
};

// Fetches the config_url of each of `configs` in order, then those the fetched configs name,
// each URL once and at most kMaxConfigUrls, into `datasource_dir` (0600). The files of an
// earlier run are removed first. A download that fails, or is not a valid cloud-config, is left
// out and named in `errors`; an invalid config_url value throws Error(kInvalidInput).
ConfigUrlResult fetch_config_urls(std::span<const config::CloudConfig> configs,
                                  const ConfigUrlOptions& options);

}  // namespace pok8s::node
