// Go text/template rendering for cloud-configs: Kairos's yip renders a step's hostname (over
// `.MachineID`, `.UUID`, `.Random`), its commands and its files' contents (over `.Values`, the
// host's sysinfo) as Go templates with the sprig functions. Written by hand (go_template.cc says
// what it follows): no maintained C++ library implements Go templates.
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace pok8s::config {

// Everything an (untrusted) template controls is bounded; past a limit rendering stops with an
// error naming the limit, the source and the line.
inline constexpr std::size_t kMaxTemplateOutputBytes = 4 << 20;  // also any one string made
inline constexpr int kMaxTemplateNesting = 100;                  // actions and parentheses
inline constexpr int kMaxTemplateCallDepth = 100;                // {{template}} inside {{template}}
inline constexpr std::uint64_t kMaxTemplateIterations = 1'000'000;  // {{range}}, all loops together
// Work in all: bytes and values made or scanned, actions run, regex steps (about a second).
inline constexpr std::uint64_t kMaxTemplateWork = 64 << 20;

// Whether `text` holds a template action at all ("{{"): text without one renders as itself.
bool looks_like_go_template(std::string_view text);

// Renders `text` as Go's text/template does with sprig.TxtFuncMap(), `data` being the dot: JSON
// objects are the template's maps, so `.Values.network` reads data["Values"]["network"]; null data
// is no data. Throws Error (kInvalidInput) with one line, "<source_name>:<line>: template: <what>",
// for a template that does not parse, fails, or passes a limit.
//
// Go's side: text and actions, trim markers ("{{- ", " -}}"), comments, fields, $, variables
// (:= and =), pipelines, parentheses, Go's literals; if/else if/else, range (lists, maps in key
// order, ints; $i, $e; else; break, continue), with/else (with), define/template/block; the
// built-ins and, or (short-circuit), not, len, index, eq, ne, lt, le, gt, ge, print, printf,
// println, html, js, urlquery (`call` is refused: templates have no function values); Go's truth;
// fmt's printing of values (`map[a:1 b:2]`, `[a b]`, `<no value>` for a missing key, the verbs
// %v %s %d %q %x %X %o %b %c %U %e %f %g %t %T %% with flags, width and precision).
// Sprig's side: the default, string, list, dict, integer math, conversion, encoding (b64,
// sha256sum), JSON, reflection and regex functions (their must- forms too), and sprig's `slice`,
// which replaces Go's and takes lists only. Not there: clock, random, UUID, crypto-key, network,
// path, semver and float-math functions (a config must render the same on every node, every time).
// `env` and `expandenv` see an empty environment: a node's config must not read the renderer's.
// Where this differs from Go: upper, lower, title, trim and (?i) know ASCII letters and spaces
// only; `keys` and `values` come in key order (Go's is random); regexes follow RE2's syntax
// without Unicode classes (\p{..}); an int parameter takes no float literal ("4.0").
std::string render_go_template(std::string_view text, const nlohmann::json& data,
                               std::string_view source_name);

}  // namespace pok8s::config
