// Finding and masking secrets walks the YAML tree by the keys of each format, leniently (any
// shape a secret could take is searched), with a bound on the work, since the input is a client's.
#include "pok8s/config/secrets.h"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <optional>
#include <set>
#include <sstream>
#include <utility>

#include "pok8s/config/cloud_config.h"

namespace pok8s::config {
namespace {

// The parsers' limits: a larger document is refused by them, so none of it reaches a build.
// kMaxCloudConfigBytes is also build_spec.h's kMaxBuildSpecBytes (that header is the factory
// library's; this file is linked into the node's too).
constexpr std::size_t kMaxDocumentBytes = kMaxCloudConfigBytes;
// Nodes visited and nesting followed: aliases let a small document name a node many times (or
// itself), and the strict parsers refuse such a document long before these.
constexpr std::size_t kMaxVisits = 1'000'000;
constexpr std::size_t kMaxDepth = 2 * kMaxCloudConfigDepth;

constexpr std::string_view kCloudConfigHeader = "#cloud-config\n";

constexpr std::string_view kSecretBearingSections[] = {"k3s", "k3s-agent", "k0s", "k0s-worker"};
// Flags of k3s and k0s whose value is a credential (a token, a file holding one, a datastore
// URL with a password), without their dashes.
constexpr std::string_view kSecretFlags[] = {
    "token", "t", "token-file", "agent-token", "agent-token-file", "datastore-endpoint"};

// What the walk gives up on: the document is treated as one that does not parse.
struct TooComplex {};

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

bool is_secret_env_name(std::string_view name) {
  std::string upper(name);
  for (char& c : upper)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  for (std::string_view word : {"TOKEN", "SECRET", "PASSWORD", "PASSWD"})
    if (upper.find(word) != std::string::npos) return true;
  return upper == "K3S_DATASTORE_ENDPOINT";
}

// A flag's value as the program sees it: without the quotes a shell or systemd would remove.
std::string_view unquoted(std::string_view value) {
  if (value.size() >= 2 && (value.front() == '"' || value.front() == '\'') &&
      value.back() == value.front())
    return value.substr(1, value.size() - 2);
  return value;
}

// One whitespace-separated word of an argument, quotes keeping spaces inside it.
struct Word {
  std::size_t item;
  std::size_t begin, end;
};

void split_words(std::string_view text, std::size_t item, std::vector<Word>& out) {
  std::size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && is_space(text[i])) ++i;
    if (i == text.size()) break;
    std::size_t begin = i;
    while (i < text.size() && !is_space(text[i])) {
      if (text[i] == '"' || text[i] == '\'') {
        std::size_t close = text.find(text[i], i + 1);
        i = close == std::string_view::npos ? text.size() : close + 1;
      } else {
        ++i;
      }
    }
    out.push_back({item, begin, i});
  }
}

// Finds (and, when masking, replaces) the secrets of one document.
class SecretWalker {
 public:
  explicit SecretWalker(bool mask) : mask_(mask) {}

  // Distinct: an alias may name one secret a million times.
  const std::set<std::string>& found() const { return found_; }

  void spec(const YAML::Node& root) {
    entries(root, [&](std::string_view key, YAML::Node toppings) {
      if (key != "toppings") return;
      entries(toppings, [&](std::string_view topping, YAML::Node value) {
        if (topping == "wireguard") {
          entries(value, [&](std::string_view k, YAML::Node v) {
            // The spec's keys are camelCase; the snake_case spelling is refused by the parser,
            // but a refused request is still shown back.
            if (k == "privateKey" || k == "private_key") {
              secret(v);
            } else if (k == "peers") {
              items(v, [&](YAML::Node peer) {
                entries(peer, [&](std::string_view pk, YAML::Node pv) {
                  if (pk == "presharedKey" || pk == "preshared_key") secret(pv);
                });
              });
            }
          });
        } else if (topping == "cluster") {
          entries(value, [&](std::string_view k, YAML::Node v) {
            if (k == "token") secret(v);
          });
        }
      });
    });
  }

  void cloud_config(const YAML::Node& root) {
    entries(root, [&](std::string_view key, YAML::Node value) {
      if (key == "users") {
        users(value);
      } else if (key == "stages") {
        entries(value, [&](std::string_view, YAML::Node steps) {
          // A stage is a list of steps; a lone map is searched as one step.
          auto step = [&](YAML::Node s) {
            entries(s, [&](std::string_view k, YAML::Node v) {
              if (k == "users") users(v);
            });
          };
          if (steps.IsMap())
            step(steps);
          else
            items(steps, step);
        });
      } else if (key == "install") {
        entries(value, [&](std::string_view k, YAML::Node v) {
          if (k == "passphrase") secret(v);
        });
      } else if (key == "p2p") {
        entries(value, [&](std::string_view k, YAML::Node v) {
          if (k == "network_token") secret(v);
        });
      } else if (std::find(std::begin(kSecretBearingSections), std::end(kSecretBearingSections),
                           key) != std::end(kSecretBearingSections)) {
        entries(value, [&](std::string_view k, YAML::Node v) {
          if (k == "env")
            env(v);
          else if (k == "args")
            args(v);
        });
      }
    });
  }

 private:
  void visit(std::size_t depth = 0) {
    if (++visits_ > kMaxVisits || depth > kMaxDepth) throw TooComplex{};
  }

  // fn(key, value) for each entry of a map with a scalar key.
  template <typename Fn>
  void entries(const YAML::Node& node, Fn&& fn) {
    if (!node.IsMap()) return;
    for (auto it = node.begin(); it != node.end(); ++it) {
      visit();
      // Copies of the iterator's pair share the document's nodes, so assigning one masks it.
      YAML::Node key = it->first;
      YAML::Node value = it->second;
      if (key.IsScalar()) fn(std::string_view(key.Scalar()), value);
    }
  }

  template <typename Fn>
  void items(const YAML::Node& node, Fn&& fn) {
    if (!node.IsSequence()) return;
    for (auto it = node.begin(); it != node.end(); ++it) {
      visit();
      fn(YAML::Node(*it));
    }
  }

  // Top-level users are a list of users with names; a step's are a map of name to user. Either
  // form is searched in either place.
  void users(const YAML::Node& node) {
    auto user = [&](YAML::Node u) {
      entries(u, [&](std::string_view k, YAML::Node v) {
        if (k == "passwd") secret(v);
      });
    };
    if (node.IsMap())
      entries(node, [&](std::string_view, YAML::Node u) { user(u); });
    else
      items(node, user);
  }

  void env(const YAML::Node& node) {
    if (node.IsMap()) {
      entries(node, [&](std::string_view name, YAML::Node value) {
        if (is_secret_env_name(name)) secret(value);
      });
      return;
    }
    // NAME=VALUE items, as in a systemd unit.
    items(node, [&](YAML::Node item) {
      if (!item.IsScalar()) return;
      std::string text = item.Scalar();
      std::size_t eq = text.find('=');
      if (eq == std::string::npos || !is_secret_env_name(text.substr(0, eq))) return;
      if (eq + 1 == text.size()) return;
      add(text.substr(eq + 1));
      if (mask_) set_scalar(item, text.substr(0, eq + 1) + std::string(kSecretMask));
    });
  }

  // The values of credential flags, across items: Kairos joins the items with spaces, pok8s
  // passes each as one argument, and either way "--token", "V" and "--token V" both give V.
  void args(const YAML::Node& node) {
    std::vector<YAML::Node> nodes;
    if (node.IsScalar())
      nodes.push_back(node);
    else
      items(node, [&](YAML::Node item) { nodes.push_back(item); });
    std::vector<std::string> texts;
    std::vector<Word> words;
    for (std::size_t i = 0; i < nodes.size(); ++i) {
      texts.push_back(nodes[i].IsScalar() ? nodes[i].Scalar() : std::string());
      split_words(texts[i], i, words);
    }
    std::vector<Word> values;
    for (std::size_t w = 0; w < words.size(); ++w) {
      visit();
      std::string_view word = std::string_view(texts[words[w].item])
                                  .substr(words[w].begin, words[w].end - words[w].begin);
      if (!word.starts_with('-')) continue;
      std::string_view flag = word.substr(word.starts_with("--") ? 2 : 1);
      std::size_t eq = flag.find('=');
      std::string_view name = flag.substr(0, eq);
      if (std::find(std::begin(kSecretFlags), std::end(kSecretFlags), name) ==
          std::end(kSecretFlags))
        continue;
      if (eq != std::string_view::npos) {
        std::size_t begin = words[w].end - (flag.size() - eq - 1);
        if (begin < words[w].end) values.push_back({words[w].item, begin, words[w].end});
      } else if (w + 1 < words.size()) {
        values.push_back(words[++w]);  // the next word is the value, whatever it looks like
      }
    }
    if (values.empty()) return;
    for (const Word& v : values) {
      std::string_view value = std::string_view(texts[v.item]).substr(v.begin, v.end - v.begin);
      add(std::string(unquoted(value)));
      add(std::string(value));
    }
    if (!mask_) return;
    // Each item rebuilt from its original text, its values (in order) replaced.
    for (std::size_t i = 0; i < nodes.size(); ++i) {
      std::string rebuilt;
      std::size_t at = 0;
      bool changed = false;
      for (const Word& v : values) {
        if (v.item != i) continue;
        rebuilt += texts[i].substr(at, v.begin - at);
        rebuilt += kSecretMask;
        at = v.end;
        changed = true;
      }
      if (!changed) continue;
      rebuilt += texts[i].substr(at);
      set_scalar(nodes[i], rebuilt);
    }
  }

  // The whole of `node` is a secret: every scalar in it is one, and a mask replaces it.
  void secret(YAML::Node node) {
    if (node.IsNull()) return;
    collect(node, 0);
    if (mask_) set_scalar(node, std::string(kSecretMask));
  }

  void collect(const YAML::Node& node, std::size_t depth) {
    visit(depth);
    if (node.IsScalar()) {
      add(node.Scalar());
    } else if (node.IsMap()) {
      for (auto it = node.begin(); it != node.end(); ++it) {
        collect(it->first, depth + 1);
        collect(it->second, depth + 1);
      }
    } else if (node.IsSequence()) {
      for (auto it = node.begin(); it != node.end(); ++it) collect(*it, depth + 1);
    }
  }

  void add(std::string value) {
    if (!value.empty()) found_.insert(std::move(value));
  }

  // Replaces the node's content in place, so that every alias of it shows the mask too; its
  // tag goes (a tag is the author's free text).
  static void set_scalar(YAML::Node node, const std::string& text) {
    node = text;
    node.SetTag("?");
  }

  bool mask_;
  std::size_t visits_ = 0;
  std::set<std::string> found_;
};

enum class Format { kSpec, kCloudConfig };

// Parser events, ignored: only whether there are any matters.
class IgnoreEvents : public YAML::EventHandler {
 public:
  void OnDocumentStart(const YAML::Mark&) override {}
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};

// The first document of `text`, the one the parsers read (their YAML::Load reads no further);
// nullopt when it does not parse or is beyond their limits. YAML::LoadAll is not used: on some
// inputs it makes empty documents without end.
std::optional<YAML::Node> load_first(std::string_view text) {
  if (text.size() > kMaxDocumentBytes || text.find('\0') != std::string_view::npos)
    return std::nullopt;
  try {
    return YAML::Load(std::string(text));
  } catch (const YAML::Exception&) {
    return std::nullopt;
  }
}

// Whether anything follows the first document (which parses).
bool has_more_documents(std::string_view text) {
  std::istringstream in{std::string(text)};
  YAML::Parser parser(in);
  IgnoreEvents events;
  try {
    return parser.HandleNextDocument(events) && parser.HandleNextDocument(events);
  } catch (const YAML::Exception&) {
    return true;  // something follows, and it does not parse
  }
}

void walk(SecretWalker& walker, Format format, const YAML::Node& doc) {
  if (format == Format::kSpec)
    walker.spec(doc);
  else
    walker.cloud_config(doc);
}

void find_secrets(std::string_view text, Format format, std::set<std::string>& out) {
  auto doc = load_first(text);
  if (!doc) return;
  SecretWalker walker(false);
  try {
    walk(walker, format, *doc);
  } catch (const TooComplex&) {
    // What was found so far still goes: more is better for scrubbing.
  }
  out.insert(walker.found().begin(), walker.found().end());
}

// The masked document, emitted; nullopt when it cannot be.
std::optional<std::string> mask(std::string_view text, Format format) {
  auto doc = load_first(text);
  if (!doc) return std::nullopt;
  // The secrets are found on the untouched document first: a node masked through one alias
  // reads as the mask through the others, and what it meant there must still be found.
  SecretWalker finder(false);
  SecretWalker masker(true);
  std::string out;
  try {
    walk(finder, format, *doc);
    walk(masker, format, *doc);
    YAML::Emitter emitter;
    emitter << *doc;
    if (!emitter.good()) return std::nullopt;
    out = emitter.c_str();
    out += '\n';
  } catch (const TooComplex&) {
    return std::nullopt;
  } catch (const YAML::Exception&) {
    return std::nullopt;
  }
  // A secret's value written elsewhere too (a password in a command, a token reused as a host
  // name) is hidden there as well.
  std::vector<std::string> secrets(finder.found().begin(), finder.found().end());
  out = scrub(out, secrets);
  if (has_more_documents(text)) {
    out += kLaterDocumentsNotShown;
    out += '\n';
  }
  return out;
}

// The failure table of Knuth–Morris–Pratt: every occurrence of a secret, overlapping ones
// included, in one pass over the text, however repetitive either is.
std::vector<std::size_t> kmp_table(std::string_view pattern) {
  std::vector<std::size_t> table(pattern.size(), 0);
  for (std::size_t i = 1, k = 0; i < pattern.size(); ++i) {
    while (k > 0 && pattern[i] != pattern[k]) k = table[k - 1];
    if (pattern[i] == pattern[k]) ++k;
    table[i] = k;
  }
  return table;
}

}  // namespace

std::vector<std::string> secret_values(std::string_view spec_yaml,
                                       const std::map<std::string, std::string>& files) {
  std::set<std::string> out;
  find_secrets(spec_yaml, Format::kSpec, out);
  for (const auto& [name, text] : files)
    if (has_cloud_config_header(text)) find_secrets(text, Format::kCloudConfig, out);
  return {out.begin(), out.end()};
}

std::string mask_secrets_in_spec(std::string_view spec_yaml) {
  auto masked = mask(spec_yaml, Format::kSpec);
  return masked ? *masked : std::string(kDocumentNotShown) + "\n";
}

std::string mask_secrets_in_cloud_config(std::string_view text) {
  if (!has_cloud_config_header(text)) return std::string(text);
  auto masked = mask(text, Format::kCloudConfig);
  return std::string(kCloudConfigHeader) +
         (masked ? *masked : std::string(kDocumentNotShown) + "\n");
}

std::string scrub(std::string_view text, std::span<const std::string> secrets) {
  // The stretches of `text` covered by occurrences, each secret's overlapping and adjacent ones
  // joined as they are found; then all of them sorted and joined.
  std::vector<std::pair<std::size_t, std::size_t>> covered;
  std::set<std::string_view> distinct(secrets.begin(), secrets.end());
  for (std::string_view secret : distinct) {
    if (secret.size() < kMinScrubbedSecretBytes || secret.size() > text.size()) continue;
    std::vector<std::size_t> table = kmp_table(secret);
    std::size_t first = covered.size();
    for (std::size_t i = 0, k = 0; i < text.size(); ++i) {
      while (k > 0 && text[i] != secret[k]) k = table[k - 1];
      if (text[i] == secret[k]) ++k;
      if (k == secret.size()) {
        std::size_t begin = i + 1 - k;
        if (covered.size() > first && begin <= covered.back().second)
          covered.back().second = i + 1;
        else
          covered.emplace_back(begin, i + 1);
        k = table[k - 1];
      }
    }
  }
  if (covered.empty()) return std::string(text);
  std::sort(covered.begin(), covered.end());
  std::string out;
  out.reserve(text.size());
  std::size_t at = 0;
  for (std::size_t i = 0; i < covered.size();) {
    auto [begin, end] = covered[i];
    for (++i; i < covered.size() && covered[i].first <= end; ++i)
      end = std::max(end, covered[i].second);
    out.append(text.substr(at, begin - at));
    out += kSecretMask;
    at = end;
  }
  out.append(text.substr(at));
  return out;
}

}  // namespace pok8s::config
