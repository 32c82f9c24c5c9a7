// A strict reader of YAML documents for pok8s' own formats (cloud-config, the build spec): it
// counts nodes against limits, refuses duplicate and non-scalar keys, and every error names the
// file, the line and the key path ("stages.boot[0].files[1]").
#pragma once

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <cstddef>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace pok8s::config {

// What a document may make the reader do.
struct StrictYamlLimits {
  std::size_t max_nodes;        // YAML nodes visited in a document
  std::size_t max_list_length;  // items in any list or map
  std::size_t max_depth;        // nesting of sections checked with check_depth
};

// Reads one document of the format `what` ("cloud-config", "build spec") from `source`.
// Every error is Error(kInvalidInput) "Failed to read WHAT SOURCE: line N: MESSAGE".
class StrictYaml {
 public:
  StrictYaml(std::string_view what, std::string_view source, StrictYamlLimits limits);

  // Parses `text` into a node tree, with YAML 1.1 merge keys ("<<: *defaults") applied; a YAML
  // syntax error becomes the one-line error.
  YAML::Node load(std::string_view text) const;

  const std::string& source() const { return source_; }

  // `line` counts from 0 as yaml-cpp's marks do; a negative line is left out of the message.
  [[noreturn]] void fail_at(int line, const std::string& message) const;
  [[noreturn]] void fail(const YAML::Node& at, const std::string& message) const;

  void count(const YAML::Node& node);
  void check_length(const YAML::Node& node, const std::string& path) const;
  // Counts and bounds a section read as raw YAML (nesting, list lengths, nodes).
  void check_depth(const YAML::Node& node, const std::string& path, std::size_t depth);

  // Calls `fn(key, key_node, value)` for each entry of the map `node` at `path`, refusing
  // non-scalar and duplicate keys.
  template <typename Fn>
  void for_each_key(const YAML::Node& node, const std::string& path, Fn&& fn);

  static std::string in(const std::string& path) { return path.empty() ? "" : " in " + path; }
  static std::string join(const std::string& path, std::string_view key);
  static std::string index(const std::string& path, std::size_t i);

  // "unknown key "x" in PATH; did you mean "y"?", or "... is not supported by pok8s" for a key
  // listed in `unsupported` (a key of the reference format pok8s does not implement).
  [[noreturn]] void unknown_key(const YAML::Node& key_node, const std::string& key,
                                const std::string& path, std::span<const std::string_view> known,
                                std::span<const std::string_view> unsupported = {}) const;

  // What the reader accepts but does not act on, as lines "WHAT SOURCE: line N: MESSAGE".
  void warn(const YAML::Node& at, const std::string& message);
  // The warning twin of unknown_key, for formats whose reference ignores unknown keys: "unknown
  // key "x" in PATH is ignored; did you mean "y"?", or "key "x" in PATH is accepted but pok8s
  // does not act on it yet" for a key listed in `unsupported`.
  void warn_unknown_key(const YAML::Node& key_node, const std::string& key, const std::string& path,
                        std::span<const std::string_view> known,
                        std::span<const std::string_view> unsupported = {});
  std::vector<std::string> take_warnings() { return std::move(warnings_); }

  void expect(const YAML::Node& node, YAML::NodeType::value type, const std::string& path,
              const char* what) const;

  // A scalar's text; "" for an empty value.
  std::string read_string(const YAML::Node& node, const std::string& path) const;
  // A string used on one line of a system file (passwd fields, environment values).
  std::string read_line_string(const YAML::Node& node, const std::string& path,
                               bool allow_colon) const;
  bool read_bool(const YAML::Node& node, const std::string& path) const;
  std::vector<std::string> read_string_list(const YAML::Node& node, const std::string& path);

 private:
  std::string what_;
  std::string source_;
  StrictYamlLimits limits_;
  std::size_t nodes_ = 0;
  std::vector<std::string> warnings_;

  void apply_merge_keys(YAML::Node node, std::size_t& visits, std::size_t depth) const;
};

bool contains(std::span<const std::string_view> list, std::string_view key);
// Levenshtein distance, for did_you_mean.
std::size_t edit_distance(std::string_view a, std::string_view b);
// "; did you mean "commands"?" when one known word is close to `key`, else "".
std::string did_you_mean(std::string_view key, std::span<const std::string_view> known);
// `text` cut to 64 characters with control characters escaped, safe to quote in a message.
std::string printable(std::string_view text);
// "a map", "a list", "a string", "empty".
const char* type_name(const YAML::Node& node);

template <typename Fn>
void StrictYaml::for_each_key(const YAML::Node& node, const std::string& path, Fn&& fn) {
  check_length(node, path.empty() ? "the document" : path);
  std::set<std::string> seen;
  for (auto it = node.begin(); it != node.end(); ++it) {
    // Copies: the iterator hands out a temporary pair (Node copies share the same data).
    YAML::Node key_node = it->first;
    YAML::Node value = it->second;
    count(key_node);
    count(value);
    if (!key_node.IsScalar())
      fail(key_node, fmt::format("a key in {} must be a string, not {}",
                                 path.empty() ? "the document" : path, type_name(key_node)));
    const std::string& key = key_node.Scalar();
    if (!seen.insert(key).second)
      fail(key_node, fmt::format("duplicate key \"{}\"{}", printable(key), in(path)));
    fn(key, key_node, value);
  }
}

}  // namespace pok8s::config
