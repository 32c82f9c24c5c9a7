// Parsing of /proc/cmdline for the node runtime.
#include "pok8s/node/kernel_cmdline.h"

#include <fmt/format.h>

#include <charconv>

#include "pok8s/node/netboot.h"
#include "pok8s/util/error.h"
#include "pok8s/util/hex.h"

namespace pok8s::node {
namespace {

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

std::vector<std::string> split_list(std::string_view text) {
  std::vector<std::string> out;
  while (!text.empty()) {
    auto comma = text.find(',');
    auto item = text.substr(0, comma);
    if (!item.empty()) out.emplace_back(item);
    if (comma == std::string_view::npos) break;
    text.remove_prefix(comma + 1);
  }
  return out;
}

}  // namespace

std::vector<KernelParameter> parse_kernel_cmdline(std::string_view cmdline) {
  std::vector<KernelParameter> out;
  std::size_t i = 0;
  while (i < cmdline.size()) {
    while (i < cmdline.size() && is_space(cmdline[i])) ++i;
    if (i == cmdline.size()) break;
    std::string word;
    bool quoted = false;
    for (; i < cmdline.size() && (quoted || !is_space(cmdline[i])); ++i) {
      if (cmdline[i] == '"')
        quoted = !quoted;
      else
        word.push_back(cmdline[i]);
    }
    if (word.empty()) continue;  // a pair of quotes alone is no parameter
    KernelParameter param;
    if (auto eq = word.find('='); eq != std::string::npos) {
      param.key = word.substr(0, eq);
      param.value = word.substr(eq + 1);
    } else {
      param.key = std::move(word);
    }
    out.push_back(std::move(param));
  }
  return out;
}

std::string_view boot_mode_name(BootMode mode) {
  switch (mode) {
    case BootMode::kLive:
      return "live";
    case BootMode::kActive:
      return "active";
    case BootMode::kPassive:
      return "passive";
    case BootMode::kRecovery:
      return "recovery";
  }
  return "unknown";
}

namespace {

VerityParams parse_verity(const std::string& value) {
  auto fail = [&]() {
    return Error(ErrorKind::kInvalidInput,
                 fmt::format("Failed to read the kernel command line: pok8s.verity={} is not "
                             "<root hash>,<salt>,<data blocks>,<hash offset>",
                             value));
  };
  std::vector<std::string> parts;
  for (std::size_t start = 0;;) {
    std::size_t comma = value.find(',', start);
    parts.push_back(value.substr(start, comma == std::string::npos ? comma : comma - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  if (parts.size() != 4) throw fail();
  auto is_hex = [](const std::string& s) {
    auto bytes = util::hex_decode(s);
    return bytes && !bytes->empty();
  };
  auto number = [&](const std::string& s) {
    std::uint64_t n = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
    if (s.empty() || ec != std::errc() || end != s.data() + s.size()) throw fail();
    return n;
  };
  VerityParams v{parts[0], parts[1], number(parts[2]), number(parts[3])};
  if (v.root_hash.size() != 64 || !is_hex(v.root_hash) || !is_hex(v.salt) || v.salt.size() > 128 ||
      v.data_blocks == 0 || v.data_blocks > (std::uint64_t{1} << 40) ||
      v.hash_offset != v.data_blocks * 4096)
    throw fail();
  return v;
}

}  // namespace

BootOptions parse_boot_options(std::string_view cmdline) {
  BootOptions options;
  for (const auto& param : parse_kernel_cmdline(cmdline)) {
    if (param.key == "--") break;  // the rest belongs to init
    if (!param.key.starts_with("pok8s.")) continue;
    std::string_view key = std::string_view(param.key).substr(6);
    auto need_value = [&]() -> const std::string& {
      if (!param.value || param.value->empty())
        throw Error(
            ErrorKind::kInvalidInput,
            fmt::format("Failed to read the kernel command line: {} needs a value", param.key));
      return *param.value;
    };
    auto flag = [&]() {
      if (!param.value) return true;
      if (*param.value == "1" || *param.value == "yes" || *param.value == "true") return true;
      if (*param.value == "0" || *param.value == "no" || *param.value == "false") return false;
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to read the kernel command line: {}={} is not a yes/no value",
                              param.key, *param.value));
    };
    if (key == "mode") {
      const auto& v = need_value();
      if (v == "live")
        options.mode = BootMode::kLive;
      else if (v == "active")
        options.mode = BootMode::kActive;
      else if (v == "passive")
        options.mode = BootMode::kPassive;
      else if (v == "recovery")
        options.mode = BootMode::kRecovery;
      else
        throw Error(ErrorKind::kInvalidInput,
                    fmt::format("Failed to read the kernel command line: pok8s.mode={} is not one "
                                "of live, active, passive, recovery",
                                v));
    } else if (key == "media") {
      options.media_label = need_value();
    } else if (key == "image") {
      options.image_path = need_value();
      if (!options.image_path.starts_with("/")) options.image_path.insert(0, "/");
    } else if (key == "init") {
      options.init = need_value();
    } else if (key == "debug") {
      options.debug = flag();
    } else if (key == "shell") {
      options.shell = flag();
    } else if (key == "wait") {
      const auto& v = need_value();
      unsigned n = 0;
      auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
      if (ec != std::errc() || end != v.data() + v.size() || n > 3600)
        throw Error(ErrorKind::kInvalidInput,
                    fmt::format("Failed to read the kernel command line: pok8s.wait={} is not a "
                                "number of seconds up to 3600",
                                v));
      options.wait_seconds = n;
    } else if (key == "verity") {
      options.verity = parse_verity(need_value());
    } else if (key == "fetch" || key == "fetch.config") {
      auto& f = key == "fetch" ? options.fetch : options.fetch_config;
      if (!f) f.emplace();
      f->url = need_value();
      parse_http_url(f->url);  // refused here, naming the URL, rather than after the network
    } else if (key == "fetch.sha256" || key == "fetch.config.sha256") {
      auto& f = key == "fetch.sha256" ? options.fetch : options.fetch_config;
      if (!f) f.emplace();
      f->sha256 = need_value();
      if (f->sha256.size() != 64 ||
          f->sha256.find_first_not_of("0123456789abcdef") != std::string::npos)
        throw Error(ErrorKind::kInvalidInput,
                    fmt::format("Failed to read the kernel command line: {}={} is not 64 "
                                "lowercase hex digits",
                                param.key, f->sha256));
    } else if (key == "modules") {
      for (auto& m : split_list(need_value())) options.modules.push_back(std::move(m));
    } else {
      throw Error(
          ErrorKind::kInvalidInput,
          fmt::format("Failed to read the kernel command line: unknown parameter {}", param.key));
    }
  }
  for (auto [f, name] : {std::pair{&options.fetch, "pok8s.fetch"},
                         std::pair{&options.fetch_config, "pok8s.fetch.config"}}) {
    if (f->has_value() && (*f)->url.empty())
      throw Error(
          ErrorKind::kInvalidInput,
          fmt::format("Failed to read the kernel command line: {}.sha256 without {}", name, name));
    if (f->has_value() && (*f)->sha256.empty())
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to read the kernel command line: {} without {}.sha256 (what "
                              "is fetched is checked)",
                              name, name));
  }
  if (options.fetch_config && !options.fetch)
    throw Error(ErrorKind::kInvalidInput,
                "Failed to read the kernel command line: pok8s.fetch.config without pok8s.fetch");
  return options;
}

}  // namespace pok8s::node
