// Go text/template with sprig, as Kairos renders cloud-configs: the outputs are Go's own.
#include "pok8s/config/go_template.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <initializer_list>
#include <string>
#include <string_view>

#include "pok8s/util/error.h"

namespace pok8s::config {
namespace {

nlohmann::json kairos_data() {
  return nlohmann::json::parse(R"({
    "MachineID": "2f5a3b9c1d7e4f60",
    "Values": {
      "os": {"name": "debian", "version": 12},
      "network": [
        {"name": "eth0", "address": "10.0.0.2/24"},
        {"name": "eth1", "address": "10.0.0.3/24"}
      ],
      "labels": {"zone": "b", "rack": "r1", "env": "prod"},
      "empty": [],
      "null": null,
      "ratio": 1.5,
      "whole": 3.0
    }
  })");
}

std::string render(std::string_view text, const nlohmann::json& data = kairos_data()) {
  return render_go_template(text, data, "user-data");
}

// The one-line message rendering `text` throws, or "" when it renders.
std::string error_of(std::string_view text, const nlohmann::json& data = kairos_data()) {
  try {
    render(text, data);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
    return e.what();
  }
  return "";
}

// A template rendered alone against the Kairos data, and what Go with sprig prints for it.
struct Case {
  std::string_view text;
  std::string_view want;
};

void expect_renders(std::initializer_list<Case> cases) {
  for (const Case& c : cases) EXPECT_EQ(render(c.text), c.want) << c.text;
}

TEST(GoTemplate, LooksLikeTemplateOnlyWithAnAction) {
  EXPECT_TRUE(looks_like_go_template("hostname: {{ .MachineID }}"));
  EXPECT_FALSE(looks_like_go_template("#cloud-config\nhostname: a { b }\n"));
}

TEST(GoTemplate, TextWithoutActionsIsUnchanged) {
  EXPECT_EQ(render("#cloud-config\nhostname: a { b } }}\n"),
            "#cloud-config\nhostname: a { b } }}\n");
  EXPECT_EQ(render(""), "");
}

TEST(GoTemplate, RendersKairosCloudConfig) {
  constexpr std::string_view kConfig = R"(#cloud-config
hostname: "metal-{{ trunc 4 .MachineID }}"
{{- if eq .Values.os.name "debian" }}
packages:
  - htop
{{- end }}
stages:
  initramfs:
    - name: "network"
      files:
{{- range $i, $e := .Values.network }}
        - path: /etc/systemd/network/1{{ $i }}-{{ $e.name }}.network
          content: |
            [Match]
            Name={{ $e.name }}
            [Network]
            Address={{ $e.address }}
{{- end }}
)";
  EXPECT_EQ(render(kConfig), R"(#cloud-config
hostname: "metal-2f5a"
packages:
  - htop
stages:
  initramfs:
    - name: "network"
      files:
        - path: /etc/systemd/network/10-eth0.network
          content: |
            [Match]
            Name=eth0
            [Network]
            Address=10.0.0.2/24
        - path: /etc/systemd/network/11-eth1.network
          content: |
            [Match]
            Name=eth1
            [Network]
            Address=10.0.0.3/24
)");
}

TEST(GoTemplate, TrimMarkersCutSpacesAndNewlines) {
  EXPECT_EQ(render("a  \n\t {{- 1 -}} \n b"), "a1b");
  EXPECT_EQ(render("a {{- 1 }} b"), "a1 b");
  EXPECT_EQ(render("a {{ 1 -}} b"), "a 1b");
  // Without a space after it, "-" is a number's sign.
  EXPECT_EQ(render("a {{-3}} b"), "a -3 b");
}

TEST(GoTemplate, CommentsLeaveNothing) {
  EXPECT_EQ(render("a {{/* a comment\nover lines */}} b"), "a  b");
  EXPECT_EQ(render("a {{- /* trimmed */ -}} b"), "ab");
  EXPECT_EQ(error_of("{{/* no end"), "user-data:1: template: unclosed comment");
  EXPECT_EQ(error_of("{{/* x */ 1 }}"),
            "user-data:1: template: comment ends before closing delimiter");
}

TEST(GoTemplate, FieldsReadMapsAndMissingKeysPrintNoValue) {
  EXPECT_EQ(render("{{ .Values.os.name }}/{{ .Values.os.version }}"), "debian/12");
  EXPECT_EQ(render("{{ .Values.nope }}|{{ .Values.nope.deeper }}|{{ .Values.null }}"),
            "<no value>|<no value>|<no value>");
  // As Go's fmt: nil inside a function is <nil>.
  EXPECT_EQ(render("{{ print .Values.null }} {{ .Values.nope | print }}"), "<nil> <nil>");
  EXPECT_EQ(render("{{ .x }}", nullptr), "<no value>");
  EXPECT_EQ(render("{{ $.MachineID }}"), "2f5a3b9c1d7e4f60");
  EXPECT_EQ(error_of("{{ .Values.null.x }}"),
            "user-data:1: template: nil pointer evaluating interface {}.x");
  EXPECT_EQ(error_of("\n{{ .Values.os.name.x }}"),
            "user-data:2: template: can't evaluate field x in type string");
}

TEST(GoTemplate, PrintsValuesAsGoDoes) {
  EXPECT_EQ(render("{{ .Values.os }}"), "map[name:debian version:12]");
  EXPECT_EQ(render("{{ .Values.network }}"),
            "[map[address:10.0.0.2/24 name:eth0] map[address:10.0.0.3/24 name:eth1]]");
  EXPECT_EQ(render("{{ list 1 \"a\" true 1.5 nil (list) (dict) }}"),
            "[1 a true 1.5 <nil> [] map[]]");
  EXPECT_EQ(
      render("{{ .Values.whole }} {{ .Values.ratio }} {{ 1e6 }} {{ 100000.0 }} {{ 0.00001 }}"),
      "3 1.5 1e+06 100000 1e-05");
  EXPECT_EQ(render("{{ 123456789.0 }} {{ 0.1 }} {{ -2.5 }} {{ true }}"),
            "1.23456789e+08 0.1 -2.5 true");
}

TEST(GoTemplate, ReadsGoLiterals) {
  EXPECT_EQ(render(R"({{ "\u00e9\x41\t|\"" }})"), "\u00e9A\t|\"");
  EXPECT_EQ(render("{{ `raw\\n` }}"), "raw\\n");
  EXPECT_EQ(render("{{ 'a' }} {{ '\\n' }} {{ 0x1F }} {{ 017 }} {{ 0b101 }} {{ 1_000 }} {{ 1e3 }}"),
            "97 10 31 15 5 1000 1000");
  EXPECT_EQ(render("{{ -7 }} {{ +7 }} {{ .5 }} {{ false }}"), "-7 7 0.5 false");
  EXPECT_EQ(error_of("{{ \"\\q\" }}"), "user-data:1: template: invalid syntax in string \"\\q\"");
  EXPECT_EQ(error_of("{{ 12ab }}"), "user-data:1: template: bad number syntax: \"12a\"");
  EXPECT_EQ(error_of("{{ 99999999999999999999 }}"),
            "user-data:1: template: number 99999999999999999999 overflows int");
  EXPECT_EQ(error_of("{{ \"abc }}"), "user-data:1: template: unterminated quoted string");
}

TEST(GoTemplate, VariablesDeclareAssignAndScope) {
  EXPECT_EQ(render("{{ $x := 1 }}{{ if true }}{{ $x = 2 }}{{ end }}{{ $x }}"), "2");
  EXPECT_EQ(render("{{ with $v := .Values.os.version }}{{ $v }}{{ end }}"), "12");
  EXPECT_EQ(render("{{ $n := .Values.network }}{{ (index $n 1).name }} {{ $n | len }}"), "eth1 2");
  EXPECT_EQ(error_of("{{ if true }}{{ $y := 1 }}{{ end }}{{ $y }}"),
            "user-data:1: template: undefined variable \"$y\"");
  EXPECT_EQ(error_of("{{ $z = 1 }}"), "user-data:1: template: undefined variable \"$z\"");
}

TEST(GoTemplate, IfElseIfElse) {
  constexpr std::string_view kText =
      "{{ if eq .n 1 }}one{{ else if eq .n 2 }}two{{ else }}many{{ end }}";
  EXPECT_EQ(render(kText, {{"n", 1}}), "one");
  EXPECT_EQ(render(kText, {{"n", 2}}), "two");
  EXPECT_EQ(render(kText, {{"n", 7}}), "many");
  // Go's truth: false, 0, nil and empty things are false.
  EXPECT_EQ(render("{{ if 0 }}a{{ end }}{{ if \"\" }}b{{ end }}{{ if .Values.empty }}c{{ end }}"
                   "{{ if .Values.null }}d{{ end }}{{ if dict }}e{{ end }}{{ if 0.1 }}f{{ end }}"),
            "f");
  EXPECT_EQ(error_of("{{ if }}x{{ end }}"), "user-data:1: template: missing value for if");
  EXPECT_EQ(error_of("{{ if 1 }}x{{ else }}y{{ else }}z{{ end }}"),
            "user-data:1: template: expected end; found {{else}}");
}

TEST(GoTemplate, RangeOverListsMapsAndInts) {
  EXPECT_EQ(render("{{ range .Values.network }}{{ .name }},{{ end }}"), "eth0,eth1,");
  // Maps in key order, as Go sorts them.
  EXPECT_EQ(render("{{ range $k, $v := .Values.labels }}{{ $k }}={{ $v }} {{ end }}"),
            "env=prod rack=r1 zone=b ");
  EXPECT_EQ(render("{{ range $e := .Values.labels }}{{ $e }}{{ end }}"), "prodr1b");
  EXPECT_EQ(render("{{ range .Values.empty }}x{{ else }}none{{ end }}"), "none");
  EXPECT_EQ(render("{{ range .Values.nope }}x{{ else }}none{{ end }}"), "none");
  EXPECT_EQ(render("{{ range $i := 3 }}{{ $i }}{{ end }}"), "012");
  EXPECT_EQ(render("{{ range $i := until 10 }}{{ if eq $i 2 }}{{ continue }}{{ end }}"
                   "{{ if eq $i 5 }}{{ break }}{{ end }}{{ $i }}{{ end }}"),
            "0134");
  EXPECT_EQ(render("{{ $i := 0 }}{{ $e := \"\" }}{{ range $i, $e = list \"a\" \"b\" }}{{ end }}"
                   "{{ $i }}{{ $e }}"),
            "1b");
  EXPECT_EQ(error_of("{{ range \"abc\" }}{{ end }}"),
            "user-data:1: template: range can't iterate over abc");
  EXPECT_EQ(error_of("{{ break }}"), "user-data:1: template: {{break}} outside {{range}}");
}

TEST(GoTemplate, WithSetsDotOrTakesElse) {
  EXPECT_EQ(render("{{ with .Values.os }}{{ .name }}{{ end }}"), "debian");
  EXPECT_EQ(render("{{ with .Values.nope }}x{{ else }}none{{ end }}"), "none");
  EXPECT_EQ(render("{{ with .Values.nope }}x{{ else with .Values.os }}{{ .version }}{{ end }}"),
            "12");
}

TEST(GoTemplate, DefineTemplateAndBlock) {
  EXPECT_EQ(
      render("{{ define \"greet\" }}hello {{ . }}{{ end }}{{ template \"greet\" \"world\" }}"),
      "hello world");
  EXPECT_EQ(render("{{ block \"id\" .MachineID }}id={{ . }}{{ end }}"), "id=2f5a3b9c1d7e4f60");
  EXPECT_EQ(render("{{ define \"t\" }}{{ $ }}{{ end }}{{ template \"t\" 5 }}"), "5");
  EXPECT_EQ(render("{{ define \"t\" }}[{{ . }}]{{ end }}{{ template \"t\" }}"), "[<no value>]");
  EXPECT_EQ(error_of("{{ template \"nope\" }}"),
            "user-data:1: template: no such template \"nope\"");
  EXPECT_EQ(error_of("{{ define \"t\" }}a{{ end }}{{ define \"t\" }}b{{ end }}"),
            "user-data:1: template: template: multiple definition of template \"t\"");
  EXPECT_EQ(error_of("{{ $x := 1 }}{{ define \"t\" }}{{ $x }}{{ end }}"),
            "user-data:1: template: undefined variable \"$x\"");
  EXPECT_EQ(error_of("{{ if 1 }}{{ define \"t\" }}{{ end }}{{ end }}"),
            "user-data:1: template: unexpected {{define}}: a define must be at the top level");
}

TEST(GoTemplate, PipelinesPassTheValueLast) {
  EXPECT_EQ(render("{{ \"abc\" | upper | printf \"%s!\" }}"), "ABC!");
  EXPECT_EQ(render("{{ .MachineID | trunc 4 }}"), "2f5a");
  EXPECT_EQ(render("{{ printf \"%d\" (len (list 1 2 3)) }}"), "3");
  EXPECT_EQ(render("{{ (dict \"a\" (dict \"b\" 7)).a.b }}"), "7");
  EXPECT_EQ(error_of("{{ 1 | 2 }}"),
            "user-data:1: template: non executable command in pipeline stage 2");
  EXPECT_EQ(error_of("{{ \"a\" \"b\" }}"),
            "user-data:1: template: can't give argument to non-function \"a\"");
  EXPECT_EQ(error_of("{{ nil }}"), "user-data:1: template: nil is not a command");
  EXPECT_EQ(error_of("{{ (1 }}"), "user-data:1: template: unclosed left paren");
  EXPECT_EQ(error_of("{{ 1) }}"), "user-data:1: template: unexpected right paren");
}

TEST(GoTemplate, BuiltinLogicAndComparisons) {
  // and/or stop at the argument that decides: fail is never called.
  EXPECT_EQ(render("{{ and 1 0 (fail \"x\") }} {{ or 0 \"\" \"y\" (fail \"x\") }} {{ and 1 2 }}"),
            "0 y 2");
  EXPECT_EQ(render("{{ not 0 }} {{ not (list 1) }}"), "true false");
  EXPECT_EQ(
      render("{{ eq 1 2 3 1 }} {{ eq \"a\" \"b\" }} {{ ne 1 2 }} {{ eq .Values.nope \"x\" }}"),
      "true false true false");
  EXPECT_EQ(render("{{ lt 1 2 }} {{ le 2 2 }} {{ gt \"b\" \"a\" }} {{ ge 1.5 2.5 }}"),
            "true true true false");
  EXPECT_EQ(error_of("{{ eq 1 1.0 }}"),
            "user-data:1: template: error calling eq: incompatible types for comparison");
  EXPECT_EQ(error_of("{{ lt true false }}"),
            "user-data:1: template: error calling lt: invalid type for comparison");
}

TEST(GoTemplate, BuiltinLenIndexSlice) {
  EXPECT_EQ(render("{{ len \"abc\" }} {{ len .Values.network }} {{ len .Values.labels }}"),
            "3 2 3");
  EXPECT_EQ(render("{{ index .Values.network 1 \"address\" }} {{ index \"ab\" 1 }}"),
            "10.0.0.3/24 98");
  EXPECT_EQ(render("{{ index .Values.labels \"none\" }}"), "<no value>");
  EXPECT_EQ(render("{{ slice (list 1 2 3 4) 1 3 }} {{ slice (list 1 2) 1 }}"), "[2 3] [2]");
  EXPECT_EQ(error_of("{{ index .Values.network 5 }}"),
            "user-data:1: template: error calling index: index out of range: 5");
  EXPECT_EQ(error_of("{{ len 3 }}"), "user-data:1: template: error calling len: len of type int");
}

TEST(GoTemplate, PrintPrintfPrintln) {
  expect_renders({
      {R"({{ print "a" "b" 1 2 "c" nil }})", "ab1 2c<nil>"},
      {R"({{ println "a" 1 }})", "a 1\n"},
      {R"({{ printf "%5.2f|%-4d|%04d|%+d" 3.14159 7 42 3 }})", " 3.14|7   |0042|+3"},
      {R"({{ printf "%x|%X|%#x|%o|%b|%c|%U" 255 255 255 8 5 65 65 }})",
       "ff|FF|0xff|10|101|A|U+0041"},
      {R"({{ printf "%q|%v|%t|%%|%x" "hi" (list 1 2) true "hi" }})", R"("hi"|[1 2]|true|%|6869)"},
      {R"({{ printf "%6.3v|%e|%g|%.3g" 3.14159 1234.5678 0.000012 1234.5678 }})",
       "  3.14|1.234568e+03|1.2e-05|1.23e+03"},
      {R"({{ printf "%10s|%-10s|%.2s|%5t|%q" "abc" "abc" "abcdef" true 'x' }})",
       "       abc|abc       |ab| true|'x'"},
      {R"({{ printf "%v %v" (dict "a" 1) nil }})", "map[a:1] <nil>"},
      {R"({{ printf "%T %T %T" 1 (list) .Values.os }})",
       "int []interface {} map[string]interface {}"},
      {R"({{ printf "%q %d" (list "a" "b") (list 1 2) }})", R"(["a" "b"] [1 2])"},
      // fmt's reports of what does not fit.
      {R"({{ printf "%s|%d %d|%d" 5 1 }})", "%!s(int=5)|1 %!d(MISSING)|%!d(MISSING)"},
      {R"({{ printf "%d" 1 2 }})", "1%!(EXTRA int=2)"},
  });
  EXPECT_EQ(error_of("{{ printf 1 }}"),
            "user-data:1: template: function \"printf\" wants a string as argument 1, got int");
}

TEST(GoTemplate, HtmlJsUrlquery) {
  EXPECT_EQ(render(R"({{ html "<a href='x'>&\"" }})"), "&lt;a href=&#39;x&#39;&gt;&amp;&#34;");
  EXPECT_EQ(render(R"({{ js "it's <b>\"x\" = y\n" }})"),
            R"(it\'s \u003Cb\u003E\"x\" \u003D y\u000A)");
  EXPECT_EQ(render(R"({{ urlquery "a b&c=d/é" }})"), "a+b%26c%3Dd%2F%C3%A9");
  EXPECT_EQ(render("{{ html .nope }}"), "&lt;no value&gt;");
  EXPECT_EQ(error_of("{{ call .x }}"),
            "user-data:1: template: error calling call: templates rendered by pok8s have no "
            "function values to call");
}

TEST(GoTemplate, SprigDefaults) {
  expect_renders({
      {R"({{ default "x" .nope }} {{ default "x" "" }} {{ default "x" "v" }})", "x x v"},
      {R"({{ default 5 0 }} {{ .Values.os.name | default "ubuntu" }})", "5 debian"},
      {R"({{ .Values.nope | default "ubuntu" }})", "ubuntu"},
      {R"({{ empty "" }} {{ empty (list) }} {{ empty 0 }} {{ empty "a" }})",
       "true true true false"},
      {R"({{ coalesce nil "" "x" "y" }} {{ coalesce nil 0 }})", "x <no value>"},
      {R"({{ ternary "yes" "no" true }} {{ false | ternary "a" "b" }})", "yes b"},
      {R"({{ all 1 "a" }} {{ all 1 "" }} {{ any 0 "" (list 1) }})", "true false true"},
  });
  EXPECT_EQ(error_of("\n\n{{ fail \"no disk\" }}"),
            "user-data:3: template: error calling fail: no disk");
}

TEST(GoTemplate, SprigStrings) {
  expect_renders({
      {R"({{ trunc -4 "abcdef" }} {{ trunc 10 "abc" }} [{{ trunc 0 "abc" }}])", "cdef abc []"},
      {R"({{ trim "  x \n" }}|{{ trimAll "$" "$5.00$" }})", "x|5.00"},
      {R"({{ trimPrefix "v" "v1.2" }}|{{ trimSuffix ".yaml" "a.yaml" }})", "1.2|a"},
      {R"({{ upper "abc-é" }} {{ lower "ABC" }} {{ untitle "Hello World" }})",
       "ABC-é abc hello world"},
      {R"({{ title "hello world-wide_web" }})", "Hello World-Wide_web"},
      {R"({{ "I Am Henry VIII" | replace " " "-" }} {{ replace "" "." "ab" }})",
       "I-Am-Henry-VIII .a.b."},
      {R"({{ repeat 3 "ab" }} {{ substr 0 5 "hello world" }} {{ substr 6 -1 "hello world" }})",
       "ababab hello world"},
      {R"({{ contains "cat" "catch" }} {{ hasPrefix "cat" "catch" }})", "true true"},
      {R"({{ hasSuffix "cat" "catch" }})", "false"},
      {R"({{ quote "a\"b" 1 nil }} {{ squote "a" 2 }})", R"("a\"b" "1" 'a' '2')"},
      {R"({{ cat "hello" "beautiful" nil 1 }})", "hello beautiful 1"},
      {R"({{ quote "tab\there\x01é" }})", R"("tab\there\x01é")"},
      {R"([{{ indent 2 "a\nb" }}] [{{ nindent 4 "c" }}] {{ nospace " a b " }})",
       "[  a\n  b] [\n    c] ab"},
      {R"({{ $p := split "/" "foo/bar" }}{{ $p._0 }} {{ $p._1 }} {{ split "/" "a/b" }})",
       "foo bar map[_0:a _1:b]"},
      {R"({{ splitList "," "a,b,c" }} {{ splitList "" "ab" }})", "[a b c] [a b]"},
      {R"({{ splitn "$" 2 "foo$bar$baz" }})", "map[_0:foo _1:bar$baz]"},
      {R"({{ join "," (list "a" 1 nil "b") }} {{ join "-" "solo" }})", "a,1,b solo"},
      {R"({{ .Values.network | len | toString }} {{ toString 1.5 }})", "2 1.5"},
      {R"({{ sortAlpha (list "b" "c" "a") }} {{ plural "one" "many" 2 }})", "[a b c] many"},
  });
  EXPECT_EQ(error_of(R"({{ repeat -1 "a" }})"),
            "user-data:1: template: error calling repeat: strings: negative Repeat count");
  EXPECT_EQ(error_of(R"({{ substr 4 2 "hello" }})"),
            "user-data:1: template: error calling substr: slice bounds out of range");
  EXPECT_EQ(error_of("{{ upper .nope }}"),
            "user-data:1: template: function \"upper\" wants a string as argument 1, got <nil>");
}

TEST(GoTemplate, ReportsTheLineOfAWrongArgumentCount) {
  EXPECT_EQ(error_of("#cloud-config\nhostname: x\nname: {{ trunc .MachineID }}\n"),
            "user-data:3: template: function \"trunc\" wants 2 arguments, got 1");
  EXPECT_EQ(error_of("{{ list | not 1 }}"),
            "user-data:1: template: function \"not\" wants 1 argument, got 2");
  EXPECT_EQ(error_of("{{ slice }}"),
            "user-data:1: template: function \"slice\" wants 1 to 3 arguments, got 0");
}

TEST(GoTemplate, ErrorMessagesStayOnOneLine) {
  EXPECT_EQ(error_of("{{ fail \"disk\\nmissing\\x01\" }}"),
            "user-data:1: template: error calling fail: disk\\nmissing\\x01");
  EXPECT_EQ(error_of("{{ fail (repeat 1000 \"x\") }}"),
            "user-data:1: template: error calling fail: " + std::string(380, 'x') + "...");
}

TEST(GoTemplate, ReportsParseErrorsWithTheirLines) {
  EXPECT_EQ(error_of("a\n{{ nope 1 }}"), "user-data:2: template: function \"nope\" not defined");
  // As Go parses every branch, a bad function in one never taken is still an error.
  EXPECT_EQ(error_of("{{ if false }}\n{{ nope }}{{ end }}"),
            "user-data:2: template: function \"nope\" not defined");
  EXPECT_EQ(error_of("a\nb {{ .x\n"), "user-data:2: template: unclosed action");
  EXPECT_EQ(error_of("{{ if 1 }}\nx\n"), "user-data:3: template: unexpected EOF");
  EXPECT_EQ(error_of("x\n{{ end }}"), "user-data:2: template: unexpected {{end}}");
  EXPECT_EQ(error_of("{{ else }}"), "user-data:1: template: unexpected {{else}}");
  EXPECT_EQ(error_of("{{ }}"), "user-data:1: template: missing value for command");
  EXPECT_EQ(error_of("{{ $ := 1 | | }}"), "user-data:1: template: missing command");
  EXPECT_EQ(error_of("{{ # }}"), "user-data:1: template: unrecognized character in action: U+0023");
  EXPECT_EQ(error_of("\n\n{{ print\n  (upper 1) }}"),
            "user-data:4: template: function \"upper\" wants a string as argument 1, got int");
}

TEST(GoTemplate, SprigLists) {
  expect_renders({
      {"{{ $l := list 1 2 3 }}{{ first $l }} {{ last $l }} {{ rest $l }} {{ initial $l }}",
       "1 3 [2 3] [1 2]"},
      {"{{ first (list) }}", "<no value>"},
      {R"({{ uniq (list 1 1 "1" 2) }} {{ has 2 (list 1 2) }})", "[1 1 2] true"},
      {R"({{ has "2" (list 1 2) }} {{ has 1 nil }})", "false false"},
      {"{{ without (list 1 2 3 2) 2 }} {{ append (list 1) 2 }} {{ prepend (list 1) 0 }}",
       "[1 3] [1 2] [0 1]"},
      {"{{ concat (list 1) (list 2 3) }} {{ reverse (list 1 2 3) }}", "[1 2 3] [3 2 1]"},
      {R"({{ compact (list 0 1 "" 2) }} {{ until 3 }} {{ untilStep 10 0 -4 }})",
       "[1 2] [0 1 2] [10 6 2]"},
      {"{{ .Values.network | first | toJson }}", R"({"address":"10.0.0.2/24","name":"eth0"})"},
  });
  EXPECT_EQ(error_of(R"({{ first "abc" }})"),
            "user-data:1: template: error calling first: Cannot find first on type string");
}

TEST(GoTemplate, SprigDicts) {
  expect_renders({
      {R"({{ $d := dict "a" 1 "b" "two" }}{{ $_ := set $d "c" 3 }}{{ $d }} {{ keys $d }})",
       "map[a:1 b:two c:3] [a b c]"},
      {R"({{ $d := dict "b" "two" }}{{ get $d "b" }} [{{ get $d "zz" }}] {{ hasKey $d "b" }})",
       "two [] true"},
      {R"({{ dict "a" }} {{ $d := dict "a" 1 "b" 2 }}{{ unset $d "a" }} {{ values $d }})",
       "map[a:] map[b:2] [2]"},
      {R"({{ pick .Values.labels "env" }} {{ omit .Values.labels "env" "zone" }})",
       "map[env:prod] map[rack:r1]"},
      {R"({{ pluck "name" (index .Values.network 0) (index .Values.network 1) }})", "[eth0 eth1]"},
      // set changes the map for every reference to it, as Go's maps are shared.
      {R"({{ $_ := set .Values.os "name" "alpine" }}{{ .Values.os.name }})", "alpine"},
  });
}

TEST(GoTemplate, SprigMathAndConversions) {
  expect_renders({
      {R"({{ add 1 2 3 }} {{ add1 "5" }} {{ sub 10 3 }} {{ mul 2 3 4 }})", "6 6 7 24"},
      {"{{ div 7 2 }} {{ mod 7 2 }} {{ max 1 5 3 }} {{ min 4 2 9 }}", "3 1 5 2"},
      // Through cast.ToInt64: floats truncate, numeric strings parse; int64 wraps around.
      {R"({{ add 1.9 "2.00" }} {{ add 9223372036854775807 1 }})", "3 -9223372036854775808"},
      {R"({{ atoi "42" }} {{ atoi "x" }} {{ int "0x1F" }} {{ int64 3.9 }})", "42 0 31 3"},
      {R"({{ float64 "1.5" }} {{ int true }})", "1.5 1"},
      {R"({{ typeOf 1 }} {{ kindOf (list) }} {{ kindIs "map" .Values }})", "int slice true"},
      {"{{ deepEqual (list 1) (list 1) }}", "true"},
  });
  EXPECT_EQ(error_of("{{ div 1 0 }}"),
            "user-data:1: template: error calling div: runtime error: integer divide by zero");
}

TEST(GoTemplate, SprigEncodingsAndJson) {
  expect_renders({
      {R"({{ b64enc "hello" }} {{ b64dec "aGVsbG8=" }})", "aGVsbG8= hello"},
      {R"({{ b64dec "!!" }})", "illegal base64 data at input byte 0"},
      {R"({{ sha256sum "hello" }})",
       "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"},
      {R"({{ toJson (dict "b" (list 1 "x<y" 2.5) "a" nil "c" 1e21) }})",
       R"({"a":null,"b":[1,"x\u003cy",2.5],"c":1e+21})"},
      {R"({{ toPrettyJson (dict "a" (list 1 2) "b" (dict)) }})",
       "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": {}\n}"},
      {R"({{ toRawJson (dict "a" "<b>") }} {{ toJson "\n\u2028" }})", R"({"a":"<b>"} "\n\u2028")"},
      // Every JSON number is a float64, as json.Unmarshal makes it.
      {R"({{ $j := fromJson "{\"a\":[1,2.5,\"x\"],\"b\":true}" }}{{ $j.a }} {{ $j.b }})",
       "[1 2.5 x] true"},
      {R"({{ fromJson "nope" }})", "<no value>"},
  });
  EXPECT_EQ(error_of(R"({{ mustFromJson "nope" }})"),
            "user-data:1: template: error calling mustFromJson: invalid JSON");
}

TEST(GoTemplate, EnvironmentIsEmpty) {
  // A node's config must not read the environment of whoever renders it.
  EXPECT_EQ(render(R"([{{ env "HOME" }}] {{ expandenv "x$HOME/y${USER}z$" }})"), "[] x/yz$");
}

TEST(GoTemplate, SprigRegexesFollowGo) {
  expect_renders({
      {R"({{ regexMatch "^[a-z]+\\d$" "abc1" }} {{ regexMatch "^a{2,3}$" "aaaa" }})", "true false"},
      {R"({{ regexMatch "(" "x" }})", "false"},
      {R"({{ regexFind "[a-zA-Z][1-9]" "abcd1234" }})", "d1"},
      {R"({{ regexFindAll "[2,4,6,8]" "123456789" -1 }})", "[2 4 6 8]"},
      {R"({{ regexReplaceAll "a(x*)b" "-ab-axxb-" "${1}W" }})", "-W-xxW-"},
      // "$1W" names group "1W", which does not exist.
      {R"({{ regexReplaceAll "a(x*)b" "-ab-axxb-" "$1W" }})", "---"},
      {R"({{ regexReplaceAllLiteral "a(x*)b" "-ab-axxb-" "${1}" }})", "-${1}-${1}-"},
      {R"({{ regexSplit "z+" "pizza" -1 }})", "[pi a]"},
      // Go's rules for empty matches.
      {R"({{ regexReplaceAll "a*" "baaac" "X" }} {{ regexFindAll "a*" "baaac" -1 | len }})",
       "XbXcX 3"},
      // Leftmost-first alternation, lazy repetition, flags.
      {R"({{ regexFind "a|ab" "ab" }} {{ regexFind "ab|a" "ab" }} {{ regexFind "a+?" "aaa" }})",
       "a ab a"},
      {R"({{ regexFind "(?i)HeLLo" "say hello" }})", "hello"},
      {R"T({{ regexReplaceAll "(?P<first>\\w+) (?P<last>\\w+)" "Jo Smith" "${last}, ${first}" }})T",
       "Smith, Jo"},
      {R"({{ regexReplaceAll "\\bcat\\b" "cat concat cat." "dog" }})", "dog concat dog."},
      {R"({{ regexFindAll "(?m)^\\w+" "ab cd\nef" -1 }})", "[ab ef]"},
      {R"({{ regexFind "[[:digit:]]+" "abc123def" }} {{ regexFind "[^a-c]+" "abcdef" }})",
       "123 def"},
      {R"({{ regexFind "h.llo" "héllo" }} {{ regexQuoteMeta "a.b*c" }})", R"(héllo a\.b\*c)"},
  });
  EXPECT_EQ(error_of(R"({{ regexFind "(" "x" }})"),
            "user-data:1: template: error calling regexFind: error parsing regexp: missing "
            "closing ): `(`");
  EXPECT_EQ(error_of(R"({{ mustRegexMatch "a{1001}" "x" }})"),
            "user-data:1: template: error calling mustRegexMatch: error parsing regexp: invalid "
            "repeat count: `{1001}`");
}

TEST(GoTemplate, RegexesRunInLinearTime) {
  // Exponential for a backtracking engine; one pass here.
  EXPECT_EQ(render(R"({{ regexMatch "(a*)*(a|aa)*b" (repeat 20000 "a") }})"), "false");
}

TEST(GoTemplate, RefusesOutputAndStringsBeyondTheirLimits) {
  EXPECT_EQ(error_of("\n{{ repeat 5000000 \"a\" }}"),
            "user-data:2: template: a string exceeds the limit of 4194304 bytes");
  EXPECT_EQ(error_of("{{ indent 5000000 \"a\" }}"),
            "user-data:1: template: a string exceeds the limit of 4194304 bytes");
  EXPECT_EQ(error_of("{{ range until 5 }}\n{{ repeat 1000000 \"a\" }}{{ end }}"),
            "user-data:2: template: the output exceeds the limit of 4194304 bytes");
}

TEST(GoTemplate, RefusesTooManyIterations) {
  EXPECT_EQ(error_of("{{ range until 1001 }}{{ range until 1000 }}{{ end }}{{ end }}"),
            "user-data:1: template: range exceeds the limit of 1000000 iterations");
}

TEST(GoTemplate, RefusesDeepNesting) {
  std::string ifs;
  for (int i = 0; i <= kMaxTemplateNesting; ++i) ifs += "{{ if 1 }}";
  EXPECT_EQ(error_of(ifs), "user-data:1: template: actions nested deeper than 100 levels");
  EXPECT_EQ(error_of("{{ " + std::string(200, '(') + "1" + std::string(200, ')') + " }}"),
            "user-data:1: template: actions nested deeper than 100 levels");
  EXPECT_EQ(error_of("{{ define \"r\" }}{{ template \"r\" . }}{{ end }}{{ template \"r\" . }}"),
            "user-data:1: template: template calls nested deeper than 100 levels");
}

TEST(GoTemplate, RefusesUnboundedWork) {
  // Each template calls the next twice: 2^40 calls, not one of them deep.
  std::string text;
  for (int i = 0; i < 40; ++i)
    text += fmt::format(
        "{{{{ define \"t{}\" }}}}{{{{ template \"t{}\" }}}}{{{{ template \"t{}\" }}}}{{{{ end }}}}",
        i, i + 1, i + 1);
  text += "{{ define \"t40\" }}{{ end }}{{ template \"t0\" }}";
  EXPECT_EQ(error_of(text),
            "user-data:1: template: rendering exceeds the limit of 67108864 units of work");
}

TEST(GoTemplate, RefusesValuesNestedInThemselves) {
  EXPECT_EQ(error_of("{{ $d := dict }}{{ $_ := set $d \"self\" $d }}{{ toJson $d }}"),
            "user-data:1: template: a value is nested deeper than 100 levels");
  EXPECT_EQ(error_of("{{ $d := dict }}{{ $_ := set $d \"self\" $d }}{{ $d }}"),
            "user-data:1: template: a value is nested deeper than 100 levels");
}

}  // namespace
}  // namespace pok8s::config
