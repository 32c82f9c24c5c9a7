// The strict YAML reader shared by cloud-config and the build spec: limits, key checks and
// one-line errors that name the file and the line.
#include "pok8s/config/strict_yaml.h"

#include <algorithm>
#include <optional>
#include <set>

#include "pok8s/util/error.h"

namespace pok8s::config {

StrictYaml::StrictYaml(std::string_view what, std::string_view source, StrictYamlLimits limits)
    : what_(what), source_(source), limits_(limits) {}

YAML::Node StrictYaml::load(std::string_view text) const {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(text));
  } catch (const YAML::Exception& e) {
    fail_at(e.mark.line, e.msg);
  }
  std::size_t visits = 0;
  apply_merge_keys(root, visits, 0);
  return root;
}

// YAML 1.1's merge key, which yaml-cpp 0.7 leaves as an ordinary key named "<<" (hand-written:
// no YAML library in Debian for C++ applies it). A map's plain "<<" entry, a map or a list of
// maps, adds each of their keys the map does not set itself, the first map in the list winning;
// the entry is then removed. Aliases can make a small document a large graph, so visits count
// against the node limit.
void StrictYaml::apply_merge_keys(YAML::Node node, std::size_t& visits, std::size_t depth) const {
  if (++visits > limits_.max_nodes)
    fail(node, fmt::format("more than {} YAML nodes", limits_.max_nodes));
  if (depth > 4 * limits_.max_depth + 64)
    fail(node, fmt::format("the document nests deeper than {} levels", 4 * limits_.max_depth + 64));
  if (node.IsSequence()) {
    for (auto item : node) apply_merge_keys(item, visits, depth + 1);
    return;
  }
  if (!node.IsMap()) return;
  std::optional<YAML::Node> merge;
  std::set<std::string> own;
  for (auto it = node.begin(); it != node.end(); ++it) {
    apply_merge_keys(it->second, visits, depth + 1);
    if (!it->first.IsScalar()) continue;
    if (it->first.Scalar() == "<<" && it->first.Tag() == "?")
      merge = it->second;
    else
      own.insert(it->first.Scalar());
  }
  if (!merge) return;
  std::vector<YAML::Node> sources;
  if (merge->IsMap()) {
    sources.push_back(*merge);
  } else if (merge->IsSequence()) {
    for (auto item : *merge) {
      if (!item.IsMap())
        fail(item, fmt::format("a merge key (<<) takes maps, not {}", type_name(item)));
      sources.push_back(item);
    }
  } else {
    fail(*merge,
         fmt::format("a merge key (<<) takes a map or a list of maps, not {}", type_name(*merge)));
  }
  node.remove("<<");
  for (const auto& source : sources)
    for (auto it = source.begin(); it != source.end(); ++it) {
      if (!it->first.IsScalar() || it->first.Scalar() == "<<") continue;
      if (own.insert(it->first.Scalar()).second) node.force_insert(it->first, it->second);
    }
}

void StrictYaml::fail_at(int line, const std::string& message) const {
  if (line >= 0)
    throw Error(ErrorKind::kInvalidInput, fmt::format("Failed to read {} {}: line {}: {}", what_,
                                                      source_, line + 1, message));
  throw Error(ErrorKind::kInvalidInput,
              fmt::format("Failed to read {} {}: {}", what_, source_, message));
}

void StrictYaml::fail(const YAML::Node& at, const std::string& message) const {
  fail_at(at.Mark().line, message);
}

void StrictYaml::count(const YAML::Node& node) {
  if (++nodes_ > limits_.max_nodes)
    fail(node, fmt::format("more than {} YAML nodes", limits_.max_nodes));
}

void StrictYaml::check_length(const YAML::Node& node, const std::string& path) const {
  if (node.size() > limits_.max_list_length)
    fail(node, fmt::format("{} has {} entries, more than the limit of {}", path, node.size(),
                           limits_.max_list_length));
}

void StrictYaml::check_depth(const YAML::Node& node, const std::string& path, std::size_t depth) {
  count(node);
  if (depth > limits_.max_depth)
    fail(node, fmt::format("{} nests deeper than {} levels", path, limits_.max_depth));
  if (node.IsMap() || node.IsSequence()) {
    check_length(node, path);
    for (auto it = node.begin(); it != node.end(); ++it) {
      if (node.IsMap()) {
        check_depth(it->first, path, depth + 1);
        check_depth(it->second, path, depth + 1);
      } else {
        check_depth(*it, path, depth + 1);
      }
    }
  }
}

std::string StrictYaml::join(const std::string& path, std::string_view key) {
  return path.empty() ? std::string(key) : fmt::format("{}.{}", path, key);
}

std::string StrictYaml::index(const std::string& path, std::size_t i) {
  return fmt::format("{}[{}]", path, i);
}

void StrictYaml::unknown_key(const YAML::Node& key_node, const std::string& key,
                             const std::string& path, std::span<const std::string_view> known,
                             std::span<const std::string_view> unsupported) const {
  if (contains(unsupported, key))
    fail(key_node, fmt::format("key \"{}\"{} is not supported by pok8s", key, in(path)));
  fail(key_node,
       fmt::format("unknown key \"{}\"{}{}", printable(key), in(path), did_you_mean(key, known)));
}

void StrictYaml::warn(const YAML::Node& at, const std::string& message) {
  int line = at.Mark().line;
  warnings_.push_back(line >= 0
                          ? fmt::format("{} {}: line {}: {}", what_, source_, line + 1, message)
                          : fmt::format("{} {}: {}", what_, source_, message));
}

void StrictYaml::warn_unknown_key(const YAML::Node& key_node, const std::string& key,
                                  const std::string& path, std::span<const std::string_view> known,
                                  std::span<const std::string_view> unsupported) {
  if (contains(unsupported, key))
    return warn(key_node, fmt::format("key \"{}\"{} is accepted but pok8s does not act on it yet",
                                      key, in(path)));
  warn(key_node, fmt::format("unknown key \"{}\"{} is ignored{}", printable(key), in(path),
                             did_you_mean(key, known)));
}

void StrictYaml::expect(const YAML::Node& node, YAML::NodeType::value type, const std::string& path,
                        const char* what) const {
  if (node.Type() != type)
    fail(node, fmt::format("{} must be {}, not {}", path, what, type_name(node)));
}

std::string StrictYaml::read_string(const YAML::Node& node, const std::string& path) const {
  if (node.IsNull()) return {};
  if (!node.IsScalar())
    fail(node, fmt::format("{} must be a string, not {}", path, type_name(node)));
  return node.Scalar();
}

std::string StrictYaml::read_line_string(const YAML::Node& node, const std::string& path,
                                         bool allow_colon) const {
  std::string s = read_string(node, path);
  if (s.find('\n') != s.npos || s.find('\0') != s.npos || (!allow_colon && s.find(':') != s.npos))
    fail(node, fmt::format("{} must be one line{}", path, allow_colon ? "" : " without ':'"));
  return s;
}

bool StrictYaml::read_bool(const YAML::Node& node, const std::string& path) const {
  if (node.IsScalar()) {
    const std::string& s = node.Scalar();
    if (s == "true" || s == "True" || s == "TRUE" || s == "yes" || s == "on") return true;
    if (s == "false" || s == "False" || s == "FALSE" || s == "no" || s == "off") return false;
  }
  fail(node,
       fmt::format("{} must be true or false, not {}", path,
                   node.IsScalar() ? "\"" + printable(node.Scalar()) + "\"" : type_name(node)));
}

std::vector<std::string> StrictYaml::read_string_list(const YAML::Node& node,
                                                      const std::string& path) {
  std::vector<std::string> out;
  if (node.IsNull()) return out;
  expect(node, YAML::NodeType::Sequence, path, "a list of strings");
  check_length(node, path);
  for (std::size_t i = 0; i < node.size(); ++i) {
    count(node[i]);
    if (!node[i].IsScalar())
      fail(node[i], fmt::format("{} must be a string, not {}", index(path, i), type_name(node[i])));
    out.push_back(node[i].Scalar());
  }
  return out;
}

bool contains(std::span<const std::string_view> list, std::string_view key) {
  return std::find(list.begin(), list.end(), key) != list.end();
}

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t subst = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, subst});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string did_you_mean(std::string_view key, std::span<const std::string_view> known) {
  if (key.size() > 64) return {};
  std::string_view best;
  std::size_t best_distance = 3;
  for (auto word : known) {
    std::size_t d = edit_distance(key, word);
    if (d < best_distance && d <= std::max<std::size_t>(1, word.size() / 3)) {
      best = word;
      best_distance = d;
    }
  }
  return best.empty() ? std::string() : fmt::format("; did you mean \"{}\"?", best);
}

std::string printable(std::string_view text) {
  std::string out;
  for (char c : text.substr(0, 64)) {
    auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f)
      out += fmt::format("\\x{:02x}", u);
    else
      out.push_back(c);
  }
  if (text.size() > 64) out += "…";
  return out;
}

const char* type_name(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Scalar:
      return "a string";
    case YAML::NodeType::Null:
      return "empty";
    default:
      return "undefined";
  }
}

}  // namespace pok8s::config
