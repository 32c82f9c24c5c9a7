#include "pok8s/config/config_url.h"

#include <fmt/format.h>

#include <algorithm>

#include "pok8s/config/strict_yaml.h"

namespace pok8s::config {

std::vector<ConfigUrl> read_config_urls(std::span<const CloudConfig> configs) {
  std::vector<ConfigUrl> out;
  for (const auto& config : configs) {
    auto it = config.sections.find("config_url");
    if (it == config.sections.end() || it->second.IsNull()) continue;
    StrictYaml yaml("cloud-config", config.source,
                    {kMaxCloudConfigNodes, kMaxCloudConfigListLength, kMaxCloudConfigDepth});
    std::string url = yaml.read_string(it->second, "config_url");
    if (url.empty()) continue;  // Kairos writes `config_url: ""` for none
    bool printable = std::all_of(url.begin(), url.end(), [](char c) {
      return static_cast<unsigned char>(c) > 0x20 && static_cast<unsigned char>(c) < 0x7f;
    });
    std::string_view rest = url;
    rest.remove_prefix(url.starts_with("https://") ? 8 : url.starts_with("http://") ? 7 : 0);
    if (rest.size() == url.size() || rest.empty() || rest.front() == '/' || !printable ||
        url.size() > kMaxConfigUrlLength)
      yaml.fail(it->second,
                fmt::format("config_url must be an http:// or https:// URL of at most {} "
                            "printable characters without spaces",
                            kMaxConfigUrlLength));
    out.push_back({url, fmt::format("{}:{}", config.source, it->second.Mark().line + 1)});
  }
  return out;
}

}  // namespace pok8s::config
