#include "pok8s/node/config_url.h"

#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <filesystem>
#include <set>
#include <thread>

#include "pok8s/config/config_url.h"
#include "pok8s/util/error.h"
#include "pok8s/util/process.h"

namespace pok8s::node {
namespace {

namespace fs = std::filesystem;

bool is_fetched_file(const util::Path& file, const util::Path& dir) {
  return file.parent_path() == dir && file.filename().string().starts_with(kConfigUrlFilePrefix) &&
         file.extension() == ".yaml";
}

// One download through pok8s-sysimage, retried; "" when it worked, else its last line.
std::string download(const std::string& url, const util::Path& to, const ConfigUrlOptions& o) {
  std::vector<std::string> argv =
      sysimage_argv(o.sysimage_dir, {"fetch", url, "-o", to.string(), "--max-bytes",
                                     std::to_string(config::kMaxCloudConfigBytes)});
  std::string last;
  for (int attempt = 1; attempt <= kConfigUrlAttempts; ++attempt) {
    util::ProcessResult r = util::run_process(argv);
    if (r.status == 0) return "";
    last = util::last_line(r.output);
    if (last.starts_with("pok8s-sysimage: ")) last.erase(0, 16);
    // Only a network error may pass; a 4xx or an oversized answer will not.
    if (r.status != exit_code(ErrorKind::kIo)) break;
    if (attempt < kConfigUrlAttempts)
      std::this_thread::sleep_for(std::chrono::milliseconds(o.retry_delay_ms * attempt));
  }
  return last.empty() ? std::string("pok8s-sysimage failed") : last;
}

}  // namespace

ConfigUrlResult fetch_config_urls(std::span<const config::CloudConfig> configs,
                                  const ConfigUrlOptions& o) {
  ConfigUrlResult result;
  // What an earlier run fetched is replaced, not followed again.
  std::vector<config::CloudConfig> given;
  for (const auto& c : configs)
    if (!is_fetched_file(c.source, o.datasource_dir)) given.push_back(c);
  std::vector<config::ConfigUrl> queue = config::read_config_urls(given);

  std::error_code ec;
  for (const auto& e : fs::directory_iterator(o.datasource_dir, ec))
    if (is_fetched_file(e.path(), o.datasource_dir)) fs::remove(e.path(), ec);
  if (queue.empty()) return result;
  util::make_dirs(o.datasource_dir);
  const util::Path partial = o.datasource_dir / ".config_url.partial";

  std::set<std::string> seen;
  for (std::size_t next = 0; next < queue.size(); ++next) {
    config::ConfigUrl item = queue[next];
    if (!seen.insert(item.url).second) continue;
    if (seen.size() > kMaxConfigUrls) {
      result.errors.push_back(
          fmt::format("Failed to fetch config_url {} ({}): more than {} "
                      "config_urls",
                      item.url, item.origin, kMaxConfigUrls));
      break;
    }
    if (std::string why = download(item.url, partial, o); !why.empty()) {
      result.errors.push_back(
          fmt::format("Failed to fetch config_url {} ({}): {}", item.url, item.origin, why));
      continue;
    }
    try {
      config::CloudConfig fetched = config::parse_cloud_config(
          util::read_file(partial, config::kMaxCloudConfigBytes), item.url);
      for (auto& url : config::read_config_urls({&fetched, 1})) queue.push_back(std::move(url));
    } catch (const Error& e) {
      ::unlink(partial.c_str());
      result.errors.push_back(fmt::format("{} (config_url in {})", e.what(), item.origin));
      continue;
    }
    // It may hold passwords and tokens, as COS_OEM's files may.
    util::Path file = o.datasource_dir /
                      fmt::format("{}{:02}.yaml", kConfigUrlFilePrefix, result.written.size() + 1);
    if (::chmod(partial.c_str(), 0600) != 0 || ::rename(partial.c_str(), file.c_str()) != 0)
      throw_errno("Failed to write " + file.string(), errno);
    if (o.log) o.log(fmt::format("fetched {} ({}) to {}", item.url, item.origin, file.string()));
    result.written.push_back(std::move(file));
  }
  return result;
}

}  // namespace pok8s::node
