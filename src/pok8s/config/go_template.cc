// Go's text/template and the sprig functions Kairos renders cloud-configs with, written by hand:
// no maintained C++ library implements Go templates. It follows https://pkg.go.dev/text/template
// (Go 1.22: break, continue, range over an int), fmt's printing of values, and sprig v3's
// functions; regexes run on a Pike VM over RE2's syntax, linear in time as Go's regexp is.
#define OPENSSL_SUPPRESS_DEPRECATED 1
#include "pok8s/config/go_template.h"

#include <fmt/format.h>
#include <openssl/sha.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "pok8s/util/error.h"
#include "pok8s/util/hex.h"
#include "pok8s/util/json_depth.h"

namespace pok8s::config {
namespace {

// Nesting of values (lists in lists) that printing, JSON and comparisons follow; data and
// template-made values (a dict set into itself) deeper than this are refused, not recursed into.
constexpr int kMaxValueDepth = 100;
constexpr std::size_t kMaxRegexProgram = 5000;  // instructions of one compiled regex
constexpr int kMaxRegexRepeat = 1000;           // RE2's bound on {n,m}
// Stack frames of the renderer: actions nested inside templates called inside templates.
constexpr int kMaxExecDepth = 1000;

// A failure while parsing or rendering; the renderer adds the source and the line.
struct Failure {
  std::string what;
};

[[noreturn]] void fail(std::string what) {
  throw Failure{std::move(what)};
}

// ---- UTF-8 -----------------------------------------------------------------------------------

constexpr char32_t kRuneError = 0xFFFD;

// The rune at the start of `s` and its length in bytes; an invalid byte is U+FFFD of length 1.
std::pair<char32_t, std::size_t> decode_rune(std::string_view s) {
  auto b = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
  if (s.empty()) return {kRuneError, 0};
  unsigned char c = b(0);
  if (c < 0x80) return {c, 1};
  std::size_t n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0;
  if (n == 0 || n > 4 || s.size() < n || c > 0xF4) return {kRuneError, 1};
  char32_t r = c & (0x3F >> (n - 1));
  for (std::size_t i = 1; i < n; ++i) {
    if ((b(i) & 0xC0) != 0x80) return {kRuneError, 1};
    r = (r << 6) | (b(i) & 0x3F);
  }
  // Overlong forms, surrogates and values past U+10FFFF are invalid, as Go's decoder has it.
  static constexpr char32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (r < kMin[n] || r > 0x10FFFF || (r >= 0xD800 && r <= 0xDFFF)) return {kRuneError, 1};
  return {r, n};
}

void append_rune(std::string& out, char32_t r) {
  if (r > 0x10FFFF || (r >= 0xD800 && r <= 0xDFFF)) r = kRuneError;
  if (r < 0x80) {
    out += static_cast<char>(r);
  } else if (r < 0x800) {
    out += static_cast<char>(0xC0 | (r >> 6));
    out += static_cast<char>(0x80 | (r & 0x3F));
  } else if (r < 0x10000) {
    out += static_cast<char>(0xE0 | (r >> 12));
    out += static_cast<char>(0x80 | ((r >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (r & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (r >> 18));
    out += static_cast<char>(0x80 | ((r >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((r >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (r & 0x3F));
  }
}

// Go's unicode.IsPrint without Unicode's tables: controls, format characters, separators other
// than the space, private use and non-characters are not printable; other runes are.
bool is_printable(char32_t r) {
  if (r < 0x20 || r == 0x7F || (r >= 0x80 && r <= 0xA0) || r == 0xAD) return false;
  if ((r >= 0x200B && r <= 0x200F) || (r >= 0x2028 && r <= 0x202E) ||
      (r >= 0x2060 && r <= 0x206F) || r == 0xFEFF || (r >= 0xFFF9 && r <= 0xFFFB))
    return false;
  if (r >= 0xE000 && r <= 0xF8FF) return false;
  return (r & 0xFFFE) != 0xFFFE;
}

bool is_ascii_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}
bool is_ascii_letter(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
bool is_ascii_digit(char c) {
  return c >= '0' && c <= '9';
}
bool is_word_char(char c) {
  return is_ascii_letter(c) || is_ascii_digit(c) || c == '_';
}

// ---- values ----------------------------------------------------------------------------------

// The values of a template are Go's interface{} values as JSON data gives them: nil, bool, int,
// float64, string, []interface{} and map[string]interface{}. "Missing" is Go's invalid value:
// what a missing map key yields, printed as "<no value>".
struct Value;
using List = std::vector<Value>;
using Map = std::map<std::string, Value, std::less<>>;

enum class Kind { kMissing, kNil, kBool, kInt, kFloat, kString, kList, kMap };

struct Missing {};
struct Nil {};

// Lists, maps and strings live in the render's Heap, so a value is a small copyable handle and,
// as in Go, every copy of a map is the same map (sprig's `set` changes it for all of them).
struct Value {
  std::variant<Missing, Nil, bool, std::int64_t, double, const std::string*, List*, Map*> v;

  static Value nil() { return Value{Nil{}}; }
  static Value of(bool b) { return Value{b}; }
  static Value of(std::int64_t i) { return Value{i}; }
  static Value of(double f) { return Value{f}; }
  static Value of(const std::string* s) { return Value{s}; }
  static Value of(List* l) { return Value{l}; }
  static Value of(Map* m) { return Value{m}; }

  Kind kind() const { return static_cast<Kind>(v.index()); }
  bool is(Kind k) const { return kind() == k; }
  bool is_nil() const { return kind() == Kind::kMissing || kind() == Kind::kNil; }
  bool boolean() const { return std::get<bool>(v); }
  std::int64_t integer() const { return std::get<std::int64_t>(v); }
  double real() const { return std::get<double>(v); }
  const std::string& str() const { return *std::get<const std::string*>(v); }
  List& list() const { return *std::get<List*>(v); }
  Map& map() const { return *std::get<Map*>(v); }
};

// Go's name of a value's type, as fmt's %T and the error messages write it.
std::string_view type_name(const Value& v) {
  switch (v.kind()) {
    case Kind::kMissing:
    case Kind::kNil:
      return "<nil>";
    case Kind::kBool:
      return "bool";
    case Kind::kInt:
      return "int";
    case Kind::kFloat:
      return "float64";
    case Kind::kString:
      return "string";
    case Kind::kList:
      return "[]interface {}";
    case Kind::kMap:
      return "map[string]interface {}";
  }
  return "?";
}

// Go's truth (text/template's isTrue, sprig's !empty): false, 0, nil and empty are false.
bool truth(const Value& v) {
  switch (v.kind()) {
    case Kind::kMissing:
    case Kind::kNil:
      return false;
    case Kind::kBool:
      return v.boolean();
    case Kind::kInt:
      return v.integer() != 0;
    case Kind::kFloat:
      return v.real() != 0;
    case Kind::kString:
      return !v.str().empty();
    case Kind::kList:
      return !v.list().empty();
    case Kind::kMap:
      return !v.map().empty();
  }
  return false;
}

// Owns what a render makes and meters the work it does: every string, list and map made is
// charged by its size, so memory and time stay within kMaxTemplateWork.
class Heap {
 public:
  void charge(std::uint64_t units) {
    work_ += units;
    if (work_ > kMaxTemplateWork)
      fail(fmt::format("rendering exceeds the limit of {} units of work", kMaxTemplateWork));
  }
  static void check_size(std::size_t bytes, std::string_view what = "a string") {
    if (bytes > kMaxTemplateOutputBytes)
      fail(fmt::format("{} exceeds the limit of {} bytes", what, kMaxTemplateOutputBytes));
  }
  Value string(std::string s) {
    check_size(s.size());
    charge(s.size() + sizeof(std::string));
    strings_.push_back(std::move(s));
    return Value::of(&strings_.back());
  }
  Value list(List items = {}) {
    charge((items.size() + 1) * sizeof(Value));
    lists_.push_back(std::move(items));
    return Value::of(&lists_.back());
  }
  Value map() {
    charge(sizeof(Map));
    maps_.emplace_back();
    return Value::of(&maps_.back());
  }
  // Sets m[key] = value, charging a new entry by its size.
  void set(Map& m, std::string_view key, const Value& value) {
    auto it = m.find(key);
    if (it != m.end()) {
      it->second = value;
      return;
    }
    charge(key.size() + kMapEntryCost);
    m.emplace(std::string(key), value);
  }

 private:
  static constexpr std::uint64_t kMapEntryCost = 96;  // a std::map node with its key and value
  std::uint64_t work_ = 0;
  std::deque<std::string> strings_;
  std::deque<List> lists_;
  std::deque<Map> maps_;
};

// The value of JSON data: objects become maps, arrays lists; numbers keep Go's int/float64 split.
Value from_json(const nlohmann::json& j, Heap& heap, int depth) {
  if (depth > kMaxValueDepth)
    fail(fmt::format("data nested deeper than {} levels", kMaxValueDepth));
  switch (j.type()) {
    case nlohmann::json::value_t::boolean:
      return Value::of(j.get<bool>());
    case nlohmann::json::value_t::number_integer:
      return Value::of(j.get<std::int64_t>());
    case nlohmann::json::value_t::number_unsigned: {
      auto u = j.get<std::uint64_t>();
      if (u <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        return Value::of(static_cast<std::int64_t>(u));
      return Value::of(static_cast<double>(u));
    }
    case nlohmann::json::value_t::number_float:
      return Value::of(j.get<double>());
    case nlohmann::json::value_t::string:
      return heap.string(j.get<std::string>());
    case nlohmann::json::value_t::array: {
      List items;
      for (const auto& e : j) items.push_back(from_json(e, heap, depth + 1));
      return heap.list(std::move(items));
    }
    case nlohmann::json::value_t::object: {
      Value m = heap.map();
      for (const auto& [k, e] : j.items()) heap.set(m.map(), k, from_json(e, heap, depth + 1));
      return m;
    }
    default:
      return Value::nil();
  }
}

void check_depth(int depth) {
  if (depth > kMaxValueDepth)
    fail(fmt::format("a value is nested deeper than {} levels", kMaxValueDepth));
}

// reflect.DeepEqual over template values (sprig's has, without, uniq).
bool deep_equal(const Value& a, const Value& b, Heap& heap, int depth = 0) {
  check_depth(depth);
  heap.charge(1);
  if (a.is_nil() || b.is_nil()) return a.is_nil() && b.is_nil();
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case Kind::kBool:
      return a.boolean() == b.boolean();
    case Kind::kInt:
      return a.integer() == b.integer();
    case Kind::kFloat:
      return a.real() == b.real();
    case Kind::kString:
      return a.str() == b.str();
    case Kind::kList: {
      const List& x = a.list();
      const List& y = b.list();
      if (x.size() != y.size()) return false;
      for (std::size_t i = 0; i < x.size(); ++i)
        if (!deep_equal(x[i], y[i], heap, depth + 1)) return false;
      return true;
    }
    case Kind::kMap: {
      const Map& x = a.map();
      const Map& y = b.map();
      if (x.size() != y.size()) return false;
      for (auto i = x.begin(), j = y.begin(); i != x.end(); ++i, ++j)
        if (i->first != j->first || !deep_equal(i->second, j->second, heap, depth + 1))
          return false;
      return true;
    }
    default:
      return true;
  }
}

// ---- Go's printing of values (fmt) --------------------------------------------------------------

// Appends to a string within the output limit, charging the work.
class Printer {
 public:
  Printer(std::string& out, Heap& heap, std::string_view what = "a string")
      : out_(out), heap_(heap), what_(what) {}
  void put(std::string_view s) {
    Heap::check_size(out_.size() + s.size(), what_);
    heap_.charge(s.size());
    out_ += s;
  }
  Heap& heap() { return heap_; }

 private:
  std::string& out_;
  Heap& heap_;
  std::string_view what_;  // what the string is, for the error at the limit
};

// One fmt verb with its flags, width and precision ("%-8.3s").
struct FormatSpec {
  char verb = 'v';
  bool minus = false, plus = false, sharp = false, space = false, zero = false;
  int width = -1, precision = -1;
};

constexpr int kMaxFormatWidth = 1'000'000;  // as Go's fmt: a larger width is %!(BADWIDTH)

std::size_t rune_count(std::string_view s) {
  std::size_t n = 0;
  while (!s.empty()) {
    s.remove_prefix(decode_rune(s).second);
    ++n;
  }
  return n;
}

// fmt's padding: to the width in runes, with spaces (zeros when asked), on the left unless '-'.
void pad(Printer& p, std::string_view s, const FormatSpec& spec, bool zeros = false) {
  std::size_t n = spec.width > 0 ? rune_count(s) : 0;
  std::string fill;
  if (n < static_cast<std::size_t>(std::max(spec.width, 0)))
    fill.assign(static_cast<std::size_t>(spec.width) - n, zeros && !spec.minus ? '0' : ' ');
  if (!spec.minus) p.put(fill);
  p.put(s);
  if (spec.minus) p.put(fill);
}

std::string hex2(unsigned v) {
  return fmt::format("{:02x}", v & 0xFF);
}

// strconv.QuoteRune's escape of one rune inside `quote` quotes.
void append_escaped_rune(std::string& out, char32_t r, char quote) {
  if (r == static_cast<char32_t>(quote) || r == '\\') {
    out += '\\';
    out += static_cast<char>(r);
    return;
  }
  if (is_printable(r)) return append_rune(out, r);
  switch (r) {
    case '\a':
      out += "\\a";
      return;
    case '\b':
      out += "\\b";
      return;
    case '\f':
      out += "\\f";
      return;
    case '\n':
      out += "\\n";
      return;
    case '\r':
      out += "\\r";
      return;
    case '\t':
      out += "\\t";
      return;
    case '\v':
      out += "\\v";
      return;
    default:
      break;
  }
  if (r < ' ' || r == 0x7F)
    out += "\\x" + hex2(static_cast<unsigned>(r));
  else if (r < 0x10000)
    out += fmt::format("\\u{:04x}", static_cast<unsigned>(r));
  else
    out += fmt::format("\\U{:08x}", static_cast<unsigned>(r));
}

// strconv.Quote: a Go double-quoted string literal; invalid UTF-8 bytes become \xNN.
std::string quote_go(std::string_view s) {
  std::string out = "\"";
  while (!s.empty()) {
    auto [r, n] = decode_rune(s);
    if (r == kRuneError && n == 1)
      out += "\\x" + hex2(static_cast<unsigned char>(s[0]));
    else
      append_escaped_rune(out, r, '"');
    s.remove_prefix(n);
  }
  return out + "\"";
}

// The decimal digits of |f| and the exponent of the first: shortest round-trip digits for a
// precision below 0, else rounded to `precision` significant digits; no trailing zeros.
struct DecimalDigits {
  std::string digits;
  int exp = 0;  // |f| = d.ddd × 10^exp
};

DecimalDigits decimal_digits(double f, int precision) {
  std::string buf(static_cast<std::size_t>(std::max(precision, 0)) + 64, '\0');
  char* first = buf.data();
  char* last = first + buf.size();
  f = std::fabs(f);
  auto r = precision < 0 ? std::to_chars(first, last, f, std::chars_format::scientific)
                         : std::to_chars(first, last, f, std::chars_format::scientific,
                                         std::max(precision - 1, 0));
  std::string_view text(first, static_cast<std::size_t>(r.ptr - first));
  auto e = text.find('e');
  DecimalDigits d;
  for (char c : text.substr(0, e))
    if (c != '.') d.digits += c;
  std::string_view exp = text.substr(e + 1);
  if (!exp.empty() && exp[0] == '+') exp.remove_prefix(1);
  std::from_chars(exp.data(), exp.data() + exp.size(), d.exp);
  while (d.digits.size() > 1 && d.digits.back() == '0') d.digits.pop_back();
  return d;
}

// Digits d.ddd×10^exp written as %e with `decimals` digits after the point.
std::string digits_as_e(const DecimalDigits& d, std::size_t decimals, char e) {
  std::string out(1, d.digits[0]);
  if (decimals > 0) {
    out += '.';
    for (std::size_t i = 1; i <= decimals; ++i) out += i < d.digits.size() ? d.digits[i] : '0';
  }
  return out + fmt::format("{}{}{:02d}", e, d.exp < 0 ? '-' : '+', std::abs(d.exp));
}

// Digits d.ddd×10^exp written as %f with `decimals` digits after the point.
std::string digits_as_f(const DecimalDigits& d, int decimals) {
  int point = d.exp + 1;  // digits before the decimal point
  auto digit = [&](int i) {
    return i >= 0 && i < static_cast<int>(d.digits.size()) ? d.digits[static_cast<std::size_t>(i)]
                                                           : '0';
  };
  std::string out;
  if (point <= 0) out = "0";
  for (int i = 0; i < point; ++i) out += digit(i);
  if (decimals > 0) out += '.';
  for (int i = 0; i < decimals; ++i) out += digit(point + i);
  return out;
}

// strconv.FormatFloat(|f|, 'g', precision): %e when the exponent is below -4 or at least the
// precision (6 for the shortest form, which %v uses), else %f; no trailing zeros.
std::string format_g(double f, int precision, char e) {
  if (precision == 0) precision = 1;
  DecimalDigits d = decimal_digits(f, precision);
  if (f == 0) d = {"0", 0};
  int nd = static_cast<int>(d.digits.size());
  int point = d.exp + 1;
  int eprec = precision;
  if (precision < 0)
    eprec = 6;
  else if (eprec > nd && nd >= point)
    eprec = nd;
  int digits = precision < 0 ? nd : std::min(precision, nd);
  if (d.exp < -4 || d.exp >= eprec) return digits_as_e(d, static_cast<std::size_t>(digits - 1), e);
  if (precision < 0 || precision > point) digits = nd;
  return digits_as_f(d, std::max(digits - point, 0));
}

// |f| for a verb of %e %f %g (upper case too) and %v; precision below 0 means the default.
std::string format_float_body(double f, char verb, int precision) {
  char lower = static_cast<char>(verb | 0x20);
  if (verb == 'v') lower = 'g';
  std::string s;
  if (lower == 'g') {
    s = format_g(f, precision, verb == 'G' ? 'E' : 'e');
  } else {
    int p = precision < 0 ? 6 : precision;
    std::string buf(static_cast<std::size_t>(p) + 400, '\0');
    auto fmt_kind = lower == 'e' ? std::chars_format::scientific : std::chars_format::fixed;
    auto r = std::to_chars(buf.data(), buf.data() + buf.size(), std::fabs(f), fmt_kind, p);
    s.assign(buf.data(), r.ptr);
  }
  if (verb == 'E' || verb == 'G')
    for (char& c : s) c = c == 'e' ? 'E' : c;
  return s;
}

void format_float(Printer& p, double f, const FormatSpec& spec) {
  // Infinities and NaN are words, never padded with zeros; NaN shows a sign only when asked.
  if (std::isinf(f))
    return pad(p, f < 0 ? "-Inf" : spec.space && !spec.plus ? " Inf" : "+Inf", spec);
  if (std::isnan(f)) return pad(p, spec.plus ? "+NaN" : spec.space ? " NaN" : "NaN", spec);
  std::string body = format_float_body(f, spec.verb, spec.precision);
  std::string sign = std::signbit(f) ? "-" : spec.plus ? "+" : spec.space ? " " : "";
  if (spec.zero && !spec.minus && spec.width > 0) {
    std::size_t want = static_cast<std::size_t>(spec.width);
    std::size_t have = sign.size() + body.size();
    if (have < want) body.insert(0, want - have, '0');
  }
  pad(p, sign + body, spec);
}

void format_integer(Printer& p, std::int64_t v, const FormatSpec& spec) {
  bool negative = v < 0;
  std::uint64_t u = negative ? 0 - static_cast<std::uint64_t>(v) : static_cast<std::uint64_t>(v);
  char verb = spec.verb;
  int base = verb == 'x' || verb == 'X'   ? 16
             : verb == 'o' || verb == 'O' ? 8
             : verb == 'b'                ? 2
                                          : 10;
  char buf[72];
  auto r = std::to_chars(buf, buf + sizeof buf, u, base);
  std::string digits(buf, r.ptr);
  if (verb == 'X')
    for (char& c : digits) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  std::string sign = negative ? "-" : spec.plus ? "+" : spec.space ? " " : "";
  std::string prefix;
  if (verb == 'O' || (spec.sharp && base == 8 && digits[0] != '0'))
    prefix = verb == 'O' ? "0o" : "0";
  if (spec.sharp && base == 16) prefix = verb == 'X' ? "0X" : "0x";
  if (spec.sharp && base == 2) prefix = "0b";
  if (spec.precision >= 0) {
    if (spec.precision == 0 && v == 0) digits.clear();
    if (digits.size() < static_cast<std::size_t>(spec.precision))
      digits.insert(0, static_cast<std::size_t>(spec.precision) - digits.size(), '0');
  } else if (spec.zero && !spec.minus && spec.width > 0) {
    std::size_t have = sign.size() + digits.size();  // as Go, the 0x prefix is not counted
    if (have < static_cast<std::size_t>(spec.width))
      digits.insert(0, static_cast<std::size_t>(spec.width) - have, '0');
  }
  pad(p, sign + prefix + digits, spec);
}

void format_value(Printer& p, const Value& v, const FormatSpec& spec, int depth);

// fmt's report of a verb that does not fit its argument: %!d(string=abc).
void bad_verb(Printer& p, const Value& v, std::string_view verb) {
  p.put("%!");
  p.put(verb);
  p.put("(");
  if (v.is_nil()) {
    p.put("<nil>)");
    return;
  }
  p.put(type_name(v));
  p.put("=");
  format_value(p, v, FormatSpec{}, 1);
  p.put(")");
}

void format_int_value(Printer& p, std::int64_t i, const FormatSpec& spec, const Value& v) {
  switch (spec.verb) {
    case 'v':
    case 'd':
    case 'b':
    case 'o':
    case 'O':
    case 'x':
    case 'X':
      return format_integer(p, i, spec);
    case 'c': {
      std::string s;
      append_rune(s, i < 0 || i > 0x10FFFF ? kRuneError : static_cast<char32_t>(i));
      return pad(p, s, spec);
    }
    case 'q': {
      std::string s = "'";
      append_escaped_rune(s, i < 0 || i > 0x10FFFF ? kRuneError : static_cast<char32_t>(i), '\'');
      return pad(p, s + "'", spec);
    }
    case 'U':
      return pad(p, fmt::format("U+{:04X}", static_cast<std::uint64_t>(i)), spec);
    default:
      return bad_verb(p, v, std::string_view(&spec.verb, 1));
  }
}

void format_string_value(Printer& p, const std::string& s, const FormatSpec& spec, const Value& v) {
  std::string_view text = s;
  if (spec.precision >= 0 && (spec.verb == 's' || spec.verb == 'v' || spec.verb == 'q')) {
    std::string_view rest = text;
    for (int i = 0; i < spec.precision && !rest.empty(); ++i)
      rest.remove_prefix(decode_rune(rest).second);
    text = text.substr(0, text.size() - rest.size());
  }
  switch (spec.verb) {
    case 'v':
    case 's':
      return pad(p, text, spec, spec.zero);
    case 'q':
      return pad(p, quote_go(text), spec);
    case 'x':
    case 'X': {
      std::string hex = util::hex_encode(text);
      if (spec.verb == 'X')
        for (char& c : hex) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      if (spec.space) {
        std::string spaced;
        for (std::size_t i = 0; i < hex.size(); i += 2) spaced += (i ? " " : "") + hex.substr(i, 2);
        hex = spaced;
      }
      return pad(p, hex, spec);
    }
    default:
      return bad_verb(p, v, std::string_view(&spec.verb, 1));
  }
}

// fmt's printing of one value for one verb; lists and maps print their elements with it.
void format_value(Printer& p, const Value& v, const FormatSpec& spec, int depth) {
  check_depth(depth);
  p.heap().charge(1);
  if (spec.verb == 'T') return pad(p, type_name(v), spec);
  switch (v.kind()) {
    case Kind::kMissing:
    case Kind::kNil:
      // Inside a list or map a nil prints as <nil> whatever the verb, as in Go.
      if (depth > 0 || spec.verb == 'v') return pad(p, "<nil>", spec);
      return bad_verb(p, v, std::string_view(&spec.verb, 1));
    case Kind::kBool:
      if (spec.verb == 'v' || spec.verb == 't') return pad(p, v.boolean() ? "true" : "false", spec);
      return bad_verb(p, v, std::string_view(&spec.verb, 1));
    case Kind::kInt:
      return format_int_value(p, v.integer(), spec, v);
    case Kind::kFloat:
      if (std::strchr("veEfFgG", spec.verb) != nullptr) return format_float(p, v.real(), spec);
      return bad_verb(p, v, std::string_view(&spec.verb, 1));
    case Kind::kString:
      return format_string_value(p, v.str(), spec, v);
    case Kind::kList: {
      p.put("[");
      const List& items = v.list();
      for (std::size_t i = 0; i < items.size(); ++i) {
        if (i > 0) p.put(" ");
        format_value(p, items[i], spec, depth + 1);
      }
      return p.put("]");
    }
    case Kind::kMap: {
      p.put("map[");
      bool first = true;
      for (const auto& [key, value] : v.map()) {
        if (!first) p.put(" ");
        first = false;
        format_value(p, Value::of(&key), spec, depth + 1);
        p.put(":");
        format_value(p, value, spec, depth + 1);
      }
      return p.put("]");
    }
  }
}

// fmt.Sprint: operands printed with %v, a space between two that are both not strings.
void sprint(Printer& p, std::span<const Value> args) {
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (i > 0 && !args[i].is(Kind::kString) && !args[i - 1].is(Kind::kString)) p.put(" ");
    format_value(p, args[i], FormatSpec{}, 0);
  }
}

// fmt.Sprintln: operands printed with %v, always separated by a space, then a newline.
void sprintln(Printer& p, std::span<const Value> args) {
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (i > 0) p.put(" ");
    format_value(p, args[i], FormatSpec{}, 0);
  }
  p.put("\n");
}

// A width or precision from the format ("12") or from the next argument ("*"); nullopt when
// malformed (fmt's BADWIDTH and BADPREC).
std::optional<int> format_number(std::string_view f, std::size_t& i, std::span<const Value> args,
                                 std::size_t& arg, bool& negative) {
  negative = false;
  if (i < f.size() && f[i] == '*') {
    ++i;
    if (arg >= args.size() || !args[arg].is(Kind::kInt)) {
      ++arg;
      return std::nullopt;
    }
    std::int64_t n = args[arg++].integer();
    if (n < -kMaxFormatWidth || n > kMaxFormatWidth) return std::nullopt;
    negative = n < 0;
    return static_cast<int>(std::abs(n));
  }
  int n = 0;
  while (i < f.size() && is_ascii_digit(f[i])) {
    n = n * 10 + (f[i++] - '0');
    if (n > kMaxFormatWidth) return std::nullopt;
  }
  return n;
}

// Reads flags, width and precision of the directive at f[i] (after '%'); false when malformed.
bool parse_directive(Printer& p, std::string_view f, std::size_t& i, std::span<const Value> args,
                     std::size_t& arg, FormatSpec& spec) {
  for (; i < f.size(); ++i) {
    char c = f[i];
    if (c == '-')
      spec.minus = true, spec.zero = false;
    else if (c == '+')
      spec.plus = true;
    else if (c == '#')
      spec.sharp = true;
    else if (c == ' ')
      spec.space = true;
    else if (c == '0')
      spec.zero = !spec.minus;
    else
      break;
  }
  bool negative = false;
  bool starred = i < f.size() && f[i] == '*';
  auto width = format_number(f, i, args, arg, negative);
  if (!width) return p.put("%!(BADWIDTH)"), true;
  if (starred || *width > 0) spec.width = *width;
  if (negative) spec.minus = true, spec.zero = false;
  if (i < f.size() && f[i] == '.') {
    ++i;
    auto precision = format_number(f, i, args, arg, negative);
    if (!precision || negative) return p.put("%!(BADPREC)"), true;
    spec.precision = *precision;
  }
  return true;
}

// fmt.Sprintf over template values: Go's verbs, flags, widths and precisions, and its reports
// of what does not fit (%!d(string=x), %!v(MISSING), %!(EXTRA ...)).
void sprintf(Printer& p, std::string_view f, std::span<const Value> args) {
  std::size_t arg = 0;
  for (std::size_t i = 0; i < f.size();) {
    std::size_t next = f.find('%', i);
    p.put(f.substr(i, next == std::string_view::npos ? std::string_view::npos : next - i));
    if (next == std::string_view::npos) break;
    i = next + 1;
    FormatSpec spec;
    parse_directive(p, f, i, args, arg, spec);
    if (i >= f.size()) {
      p.put("%!(NOVERB)");
      break;
    }
    auto [verb, n] = decode_rune(f.substr(i));
    i += n;
    if (verb == '%') {
      p.put("%");
      continue;
    }
    std::string shown;
    append_rune(shown, verb);
    if (arg >= args.size()) {
      p.put(fmt::format("%!{}(MISSING)", shown));
      continue;
    }
    if (verb > 0x7F) {
      bad_verb(p, args[arg++], shown);
      continue;
    }
    spec.verb = static_cast<char>(verb);
    format_value(p, args[arg++], spec, 0);
  }
  if (arg < args.size()) {
    p.put("%!(EXTRA ");
    for (std::size_t k = arg; k < args.size(); ++k) {
      if (k > arg) p.put(", ");
      if (args[k].is_nil()) {
        p.put("<nil>");
        continue;
      }
      p.put(type_name(args[k]));
      p.put("=");
      format_value(p, args[k], FormatSpec{}, 0);
    }
    p.put(")");
  }
}

// ---- JSON as Go's encoding/json writes it ------------------------------------------------------

struct JsonUnsupported {
  std::string what;
};

void json_string(Printer& p, std::string_view s, bool escape_html) {
  std::string out = "\"";
  while (!s.empty()) {
    auto [r, n] = decode_rune(s);
    s.remove_prefix(n);
    if (r == '"' || r == '\\') {
      out += '\\';
      out += static_cast<char>(r);
    } else if (r == '\n') {
      out += "\\n";
    } else if (r == '\r') {
      out += "\\r";
    } else if (r == '\t') {
      out += "\\t";
    } else if (r == '\b') {
      out += "\\b";
    } else if (r == '\f') {
      out += "\\f";
    } else if (r < 0x20 || (escape_html && (r == '<' || r == '>' || r == '&')) || r == 0x2028 ||
               r == 0x2029) {
      out += fmt::format("\\u{:04x}", static_cast<unsigned>(r));
    } else if (r == kRuneError && n == 1) {
      out += "\\ufffd";  // an invalid byte, as Go writes it
    } else {
      append_rune(out, r);
    }
  }
  p.put(out + "\"");
}

// A float as encoding/json writes it: %f, or %e (with a short exponent) for the very small and
// the very large.
std::string json_float(double f) {
  if (std::isnan(f) || std::isinf(f))
    throw JsonUnsupported{fmt::format("json: unsupported value: {}", std::isnan(f) ? "NaN"
                                                                     : f < 0       ? "-Inf"
                                                                                   : "+Inf")};
  double a = std::fabs(f);
  bool exp = a != 0 && (a < 1e-6 || a >= 1e21);
  char buf[400];
  auto r = std::to_chars(buf, buf + sizeof buf, f,
                         exp ? std::chars_format::scientific : std::chars_format::fixed);
  std::string s(buf, r.ptr);
  std::size_t n = s.size();
  if (exp && n >= 4 && s[n - 4] == 'e' && s[n - 3] == '-' && s[n - 2] == '0') s.erase(n - 2, 1);
  return s;
}

// json.Marshal (indent < 0) and json.MarshalIndent(v, "", "  "): keys sorted, as Go sorts a map's.
void json_encode(Printer& p, const Value& v, bool escape_html, int indent, int depth) {
  check_depth(depth);
  p.heap().charge(1);
  auto newline = [&](int level) {
    if (indent >= 0) p.put("\n" + std::string(static_cast<std::size_t>(level * indent), ' '));
  };
  switch (v.kind()) {
    case Kind::kMissing:
    case Kind::kNil:
      return p.put("null");
    case Kind::kBool:
      return p.put(v.boolean() ? "true" : "false");
    case Kind::kInt:
      return p.put(std::to_string(v.integer()));
    case Kind::kFloat:
      return p.put(json_float(v.real()));
    case Kind::kString:
      return json_string(p, v.str(), escape_html);
    case Kind::kList: {
      const List& items = v.list();
      if (items.empty()) return p.put("[]");
      p.put("[");
      for (std::size_t i = 0; i < items.size(); ++i) {
        if (i > 0) p.put(",");
        newline(depth + 1);
        json_encode(p, items[i], escape_html, indent, depth + 1);
      }
      newline(depth);
      return p.put("]");
    }
    case Kind::kMap: {
      if (v.map().empty()) return p.put("{}");
      p.put("{");
      bool first = true;
      for (const auto& [key, value] : v.map()) {
        if (!first) p.put(",");
        first = false;
        newline(depth + 1);
        json_string(p, key, escape_html);
        p.put(indent >= 0 ? ": " : ":");
        json_encode(p, value, escape_html, indent, depth + 1);
      }
      newline(depth);
      return p.put("}");
    }
  }
}

// json.Unmarshal into interface{}: every number is a float64. Deeper than kMaxValueDepth is an
// error (Go's limit is 10000); so is what does not parse.
std::optional<Value> json_decode(std::string_view text, Heap& heap, std::string& error) {
  if (util::json_nests_deeper_than(text, kMaxValueDepth)) {
    error = fmt::format("JSON nested deeper than {} levels", kMaxValueDepth);
    return std::nullopt;
  }
  heap.charge(text.size() * 8);  // the parser's own tree
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded()) {
    error = "invalid JSON";
    return std::nullopt;
  }
  struct Floats {
    static void convert(nlohmann::json& j) {
      if (j.is_number()) j = j.get<double>();
      if (j.is_structured())
        for (auto& e : j) convert(e);
    }
  };
  Floats::convert(j);
  return from_json(j, heap, 0);
}

// ---- encodings and Go's string functions --------------------------------------------------------

constexpr std::string_view kBase64 =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::string base64_encode(std::string_view in) {
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  for (std::size_t i = 0; i < in.size(); i += 3) {
    std::uint32_t n = static_cast<unsigned char>(in[i]) << 16;
    if (i + 1 < in.size()) n |= static_cast<unsigned char>(in[i + 1]) << 8;
    if (i + 2 < in.size()) n |= static_cast<unsigned char>(in[i + 2]);
    out += kBase64[(n >> 18) & 63];
    out += kBase64[(n >> 12) & 63];
    out += i + 1 < in.size() ? kBase64[(n >> 6) & 63] : '=';
    out += i + 2 < in.size() ? kBase64[n & 63] : '=';
  }
  return out;
}

// base64.StdEncoding.DecodeString: padding required, CR and LF ignored; on error the message Go
// gives ("illegal base64 data at input byte N"), which sprig's b64dec returns as its result.
std::string base64_decode(std::string_view in) {
  std::string out;
  std::uint32_t acc = 0;
  int have = 0;  // sextets in the current quantum
  int pads = 0;  // '=' seen
  std::size_t quantum_start = 0;
  auto illegal = [](std::size_t at) {
    return fmt::format("illegal base64 data at input byte {}", at);
  };
  for (std::size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '\r' || c == '\n') continue;
    if (have == 0) quantum_start = i;
    if (pads > 0 && c != '=') return illegal(i);
    if (c == '=') {
      if (have < 2) return illegal(i);
      ++pads;
      if (have + pads > 4) return illegal(i);
      continue;
    }
    auto pos = kBase64.find(c);
    if (pos == std::string_view::npos) return illegal(i);
    acc = (acc << 6) | static_cast<std::uint32_t>(pos);
    if (++have == 4) {
      out += static_cast<char>(acc >> 16);
      out += static_cast<char>(acc >> 8);
      out += static_cast<char>(acc);
      have = 0;
      acc = 0;
    }
  }
  if (have == 0) return out;
  if (have + pads != 4) return illegal(quantum_start);
  acc <<= 6 * (4 - have);
  out += static_cast<char>(acc >> 16);
  if (have == 3) out += static_cast<char>(acc >> 8);
  return out;
}

std::string sha256_hex(std::string_view in) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(in.data()), in.size(), digest);
  return util::hex_encode(std::string_view(reinterpret_cast<const char*>(digest), sizeof digest));
}

// strings.Split and strings.SplitN (n < 0: all); an empty separator splits into runes.
std::vector<std::string_view> split_go(std::string_view s, std::string_view sep, std::int64_t n) {
  std::vector<std::string_view> parts;
  if (n == 0) return parts;
  while (n < 0 || static_cast<std::int64_t>(parts.size()) < n - 1) {
    std::size_t at;
    std::size_t skip = sep.size();
    if (sep.empty()) {
      if (s.empty()) break;
      at = decode_rune(s).second;
    } else {
      at = s.find(sep);
      if (at == std::string_view::npos) break;
    }
    parts.push_back(s.substr(0, at));
    s.remove_prefix(at + skip);
  }
  if (!sep.empty() || !s.empty()) parts.push_back(s);
  return parts;
}

// strings.Replace(s, old, new, -1); an empty `old` inserts `new` around every rune.
std::string replace_all(std::string_view s, std::string_view old, std::string_view with) {
  std::string out;
  auto add = [&](std::string_view part) {
    Heap::check_size(out.size() + part.size());
    out += part;
  };
  if (old.empty()) {
    add(with);
    while (!s.empty()) {
      std::size_t n = decode_rune(s).second;
      add(s.substr(0, n));
      add(with);
      s.remove_prefix(n);
    }
    return out;
  }
  for (std::size_t at; (at = s.find(old)) != std::string_view::npos;) {
    add(s.substr(0, at));
    add(with);
    s.remove_prefix(at + old.size());
  }
  add(s);
  return out;
}

std::string ascii_case(std::string_view s, bool upper) {
  std::string out(s);
  for (char& c : out)
    if (is_ascii_letter(c)) c = upper ? static_cast<char>(c & ~0x20) : static_cast<char>(c | 0x20);
  return out;
}

// strings.Title for ASCII: a letter after anything but a letter, digit, '_' or a non-ASCII byte
// (which Go counts as part of a word when it is a letter) is upper-cased.
std::string title_case(std::string_view s) {
  std::string out(s);
  bool in_word = false;
  for (char& c : out) {
    bool word = is_word_char(c) || static_cast<unsigned char>(c) >= 0x80;
    if (!in_word && is_ascii_letter(c)) c = static_cast<char>(c & ~0x20);
    in_word = word;
  }
  return out;
}

std::string_view trim_space(std::string_view s) {
  while (!s.empty() && is_ascii_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_ascii_space(s.back())) s.remove_suffix(1);
  return s;
}

// utf8.DecodeLastRuneInString: the rune that ends `s`, U+FFFD of length 1 when invalid.
std::pair<char32_t, std::size_t> decode_last_rune(std::string_view s) {
  std::size_t start = s.size() - 1;
  while (start > 0 && s.size() - start < 4 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80)
    --start;
  auto [r, n] = decode_rune(s.substr(start));
  if (start + n != s.size()) return {kRuneError, 1};
  return {r, n};
}

// strings.Trim(s, cutset): the cut set is a set of runes.
std::string_view trim_cutset(std::string_view s, std::string_view cutset) {
  auto in_set = [&](char32_t r) {
    for (std::string_view c = cutset; !c.empty();) {
      auto [x, n] = decode_rune(c);
      if (x == r) return true;
      c.remove_prefix(n);
    }
    return false;
  };
  while (!s.empty()) {
    auto [r, n] = decode_rune(s);
    if (!in_set(r)) break;
    s.remove_prefix(n);
  }
  while (!s.empty()) {
    auto [r, n] = decode_last_rune(s);
    if (!in_set(r)) break;
    s.remove_suffix(n);
  }
  return s;
}

// html.EscapeString as text/template's html function writes it.
std::string html_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '\0':
        out += "\uFFFD";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// text/template's JSEscapeString.
std::string js_escape(std::string_view s) {
  std::string out;
  while (!s.empty()) {
    auto [r, n] = decode_rune(s);
    s.remove_prefix(n);
    switch (r) {
      case '\\':
        out += "\\\\";
        continue;
      case '\'':
        out += "\\'";
        continue;
      case '"':
        out += "\\\"";
        continue;
      case '<':
        out += "\\u003C";
        continue;
      case '>':
        out += "\\u003E";
        continue;
      case '&':
        out += "\\u0026";
        continue;
      case '=':
        out += "\\u003D";
        continue;
      default:
        break;
    }
    if (r < ' ' || (r >= 0x80 && !is_printable(r)))
      out += fmt::format("\\u{:04X}", static_cast<unsigned>(r));
    else
      append_rune(out, r);
  }
  return out;
}

// url.QueryEscape.
std::string query_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (is_ascii_letter(c) || is_ascii_digit(c) || c == '-' || c == '_' || c == '.' || c == '~')
      out += c;
    else if (c == ' ')
      out += '+';
    else
      out += fmt::format("%{:02X}", static_cast<unsigned char>(c));
  }
  return out;
}

// os.ExpandEnv over an empty environment: $NAME and ${NAME} expand to nothing.
std::string expand_empty_env(std::string_view s) {
  auto special = [](char c) { return std::strchr("*#$@!?-", c) != nullptr || is_ascii_digit(c); };
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '$' || i + 1 >= s.size()) {
      out += s[i];
      continue;
    }
    std::string_view rest = s.substr(i + 1);
    std::size_t eaten = 0;  // bytes after '$' the name takes
    bool named = true;
    if (rest[0] == '{') {
      auto close = rest.find('}');
      eaten = close == std::string_view::npos ? 1 : close + 1;
    } else if (special(rest[0])) {
      eaten = 1;
    } else {
      while (eaten < rest.size() && is_word_char(rest[eaten])) ++eaten;
      named = eaten > 0;
    }
    if (!named) out += '$';  // a '$' not followed by a name stays
    i += eaten;
  }
  return out;
}

// ---- Go's number syntax, and spf13/cast's conversions sprig uses -------------------------------

// strconv.ParseInt(s, 0, 64): sign, then 0x, 0o, 0b or 0 (octal) prefixes, '_' between digits.
std::optional<std::int64_t> parse_go_int(std::string_view s, bool base_prefixes = true) {
  bool negative = false;
  if (!s.empty() && (s[0] == '+' || s[0] == '-')) {
    negative = s[0] == '-';
    s.remove_prefix(1);
  }
  int base = 10;
  bool prefixed = false;
  if (base_prefixes && s.size() > 1 && s[0] == '0') {
    char b = static_cast<char>(s[1] | 0x20);
    base = b == 'x' ? 16 : b == 'o' ? 8 : b == 'b' ? 2 : 8;
    s.remove_prefix(b == 'x' || b == 'o' || b == 'b' ? 2 : 1);
    prefixed = true;
  }
  // Base 0 (Go's literal syntax) allows '_' between digits.
  std::string digits;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '_' && base_prefixes && (i > 0 || prefixed) && i + 1 < s.size()) continue;
    digits += s[i];
  }
  std::uint64_t u = 0;
  auto r = std::from_chars(digits.data(), digits.data() + digits.size(), u, base);
  if (digits.empty() || r.ec != std::errc() || r.ptr != digits.data() + digits.size())
    return std::nullopt;
  constexpr auto kMax = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  if (u > kMax + (negative ? 1 : 0)) return std::nullopt;
  return negative ? static_cast<std::int64_t>(0 - u) : static_cast<std::int64_t>(u);
}

// strconv.ParseFloat(s, 64) for decimal forms, "inf", "infinity" and "nan".
std::optional<double> parse_go_float(std::string_view s) {
  std::string_view body = s;
  bool negative = !body.empty() && body[0] == '-';
  if (!body.empty() && (body[0] == '+' || body[0] == '-')) body.remove_prefix(1);
  std::string lower = ascii_case(body, false);
  if (lower == "inf" || lower == "infinity")
    return negative ? -std::numeric_limits<double>::infinity()
                    : std::numeric_limits<double>::infinity();
  if (lower == "nan") return std::numeric_limits<double>::quiet_NaN();
  if (body.empty() || !(is_ascii_digit(body[0]) || body[0] == '.')) return std::nullopt;
  double f = 0;
  auto r = std::from_chars(body.data(), body.data() + body.size(), f);
  if (r.ec != std::errc() || r.ptr != body.data() + body.size()) return std::nullopt;
  return negative ? -f : f;
}

// A float64 converted to int64 as amd64 does it: truncated, and 1<<63 for what does not fit.
std::int64_t float_to_int(double f) {
  if (std::isnan(f) || f >= 9223372036854775808.0 || f < -9223372036854775808.0)
    return std::numeric_limits<std::int64_t>::min();
  return static_cast<std::int64_t>(f);
}

// cast.ToInt64: numbers, numeric strings (a ".000" tail is allowed), bools; else 0.
std::int64_t cast_int(const Value& v) {
  switch (v.kind()) {
    case Kind::kBool:
      return v.boolean() ? 1 : 0;
    case Kind::kInt:
      return v.integer();
    case Kind::kFloat:
      return float_to_int(v.real());
    case Kind::kString: {
      std::string_view s = v.str();
      auto dot = s.find('.');
      if (dot != std::string_view::npos && dot + 1 < s.size() &&
          s.find_first_not_of('0', dot + 1) == std::string_view::npos)
        s = s.substr(0, dot);
      return parse_go_int(s).value_or(0);
    }
    default:
      return 0;
  }
}

// cast.ToFloat64.
double cast_float(const Value& v) {
  switch (v.kind()) {
    case Kind::kBool:
      return v.boolean() ? 1 : 0;
    case Kind::kInt:
      return static_cast<double>(v.integer());
    case Kind::kFloat:
      return v.real();
    case Kind::kString:
      return parse_go_float(v.str()).value_or(0);
    default:
      return 0;
  }
}

// ---- regular expressions: RE2's syntax on a Pike VM -----------------------------------------
// Go's regexp guarantees time linear in the input; so does this: a Pike VM runs every thread of
// the NFA in step, one rune at a time, and leftmost-first priority gives Perl's (and Go's) match.

struct RegexError {
  std::string what;
};

using Ranges = std::vector<std::pair<char32_t, char32_t>>;  // sorted, disjoint, inclusive

enum class ReAssert : char { kBeginText, kEndText, kBeginLine, kEndLine, kWord, kNotWord };

struct ReNode {
  enum class Kind { kEmpty, kClass, kConcat, kAlternate, kRepeat, kCapture, kAssert } kind;
  Ranges ranges;             // kClass
  std::vector<ReNode> subs;  // kConcat, kAlternate; one for kRepeat and kCapture
  int min = 0, max = 0;      // kRepeat; max < 0: unbounded
  bool greedy = true;        // kRepeat
  int cap = 0;               // kCapture
  ReAssert assert = ReAssert::kBeginText;
};

Ranges normalize(Ranges r) {
  std::sort(r.begin(), r.end());
  Ranges out;
  for (auto [lo, hi] : r) {
    if (!out.empty() && lo <= out.back().second + 1)
      out.back().second = std::max(out.back().second, hi);
    else
      out.emplace_back(lo, hi);
  }
  return out;
}

Ranges negate(const Ranges& r) {
  Ranges out;
  char32_t next = 0;
  for (auto [lo, hi] : r) {
    if (lo > next) out.emplace_back(next, lo - 1);
    next = hi + 1;
  }
  if (next <= 0x10FFFF) out.emplace_back(next, 0x10FFFF);
  return out;
}

// Adds the other ASCII case of every letter in `r` ((?i) folds ASCII only).
Ranges fold_ascii(Ranges r) {
  Ranges extra;
  for (auto [lo, hi] : r) {
    for (char32_t a : {U'a', U'A'}) {
      char32_t from = std::max(lo, a), to = std::min(hi, static_cast<char32_t>(a + 25));
      if (from <= to) extra.emplace_back(from ^ 0x20, to ^ 0x20);
    }
  }
  r.insert(r.end(), extra.begin(), extra.end());
  return normalize(std::move(r));
}

// The ranges of a Perl class (\d \s \w, upper case negated) or of a POSIX class name.
std::optional<Ranges> named_class(std::string_view name) {
  static const std::map<std::string_view, Ranges> kClasses = {
      {"d", {{'0', '9'}}},
      {"s", {{'\t', '\n'}, {'\f', '\r'}, {' ', ' '}}},
      {"w", {{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}}},
      {"alnum", {{'0', '9'}, {'A', 'Z'}, {'a', 'z'}}},
      {"alpha", {{'A', 'Z'}, {'a', 'z'}}},
      {"ascii", {{0, 0x7F}}},
      {"blank", {{'\t', '\t'}, {' ', ' '}}},
      {"cntrl", {{0, 0x1F}, {0x7F, 0x7F}}},
      {"digit", {{'0', '9'}}},
      {"graph", {{'!', '~'}}},
      {"lower", {{'a', 'z'}}},
      {"print", {{' ', '~'}}},
      {"punct", {{'!', '/'}, {':', '@'}, {'[', '`'}, {'{', '~'}}},
      {"space", {{'\t', '\r'}, {' ', ' '}}},
      {"upper", {{'A', 'Z'}}},
      {"word", {{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}}},
      {"xdigit", {{'0', '9'}, {'A', 'F'}, {'a', 'f'}}},
  };
  auto it = kClasses.find(name);
  if (it == kClasses.end()) return std::nullopt;
  return it->second;
}

class RegexParser {
 public:
  explicit RegexParser(std::string_view pattern) : pattern_(pattern), rest_(pattern) {}

  ReNode parse() {
    ReNode re = alternation(0);
    if (!rest_.empty()) error("unexpected )", pattern_);
    return re;
  }
  int captures() const { return captures_; }
  const std::vector<std::string>& names() const { return names_; }

 private:
  struct Flags {
    bool fold = false, dot_nl = false, multi_line = false, ungreedy = false;
  };

  [[noreturn]] void error(std::string_view code, std::string_view arg) const {
    throw RegexError{fmt::format("error parsing regexp: {}: `{}`", code, arg)};
  }

  char32_t next_rune() {
    auto [r, n] = decode_rune(rest_);
    rest_.remove_prefix(n);
    return r;
  }

  ReNode alternation(int depth) {
    if (depth > kMaxValueDepth) error("expression nests too deeply", pattern_);
    std::vector<ReNode> alternatives{concatenation(depth)};
    while (!rest_.empty() && rest_[0] == '|') {
      rest_.remove_prefix(1);
      alternatives.push_back(concatenation(depth));
    }
    if (alternatives.size() == 1) return std::move(alternatives[0]);
    return ReNode{ReNode::Kind::kAlternate, {}, std::move(alternatives)};
  }

  ReNode concatenation(int depth) {
    std::vector<ReNode> items;
    while (!rest_.empty() && rest_[0] != '|' && rest_[0] != ')') {
      if (std::optional<ReNode> atom = this->atom(depth)) {
        items.push_back(std::move(*atom));
        repetitions(items.back());
      }
    }
    if (items.size() == 1) return std::move(items[0]);
    return ReNode{ReNode::Kind::kConcat, {}, std::move(items)};
  }

  // Applies the quantifiers after an atom; two in a row are refused, as RE2 does.
  void repetitions(ReNode& atom) {
    bool repeated = false;
    while (!rest_.empty()) {
      std::string_view op_start = rest_;
      int min = 0, max = -1;
      char c = rest_[0];
      if (c == '*' || c == '+' || c == '?') {
        rest_.remove_prefix(1);
        min = c == '+' ? 1 : 0;
        max = c == '?' ? 1 : -1;
      } else if (c != '{' || !repeat_range(min, max)) {
        return;
      }
      bool lazy = !rest_.empty() && rest_[0] == '?';
      if (lazy) rest_.remove_prefix(1);
      std::string_view op = op_start.substr(0, op_start.size() - rest_.size());
      if (repeated) error("invalid nested repetition operator", op);
      repeated = true;
      ReNode r{ReNode::Kind::kRepeat, {}, {}};
      r.subs.push_back(std::move(atom));
      r.min = min;
      r.max = max;
      r.greedy = lazy == flags_.ungreedy;
      atom = std::move(r);
    }
  }

  // {n}, {n,} or {n,m}; false (and nothing read) when the text is not one, so '{' is literal.
  bool repeat_range(int& min, int& max) {
    std::string_view s = rest_.substr(1);
    auto number = [&](int& out) {
      std::size_t n = 0;
      while (n < s.size() && is_ascii_digit(s[n])) ++n;
      if (n == 0 || n > 8) return false;
      std::from_chars(s.data(), s.data() + n, out);
      s.remove_prefix(n);
      return true;
    };
    if (!number(min)) return false;
    max = min;
    if (!s.empty() && s[0] == ',') {
      s.remove_prefix(1);
      max = -1;
      if (!s.empty() && is_ascii_digit(s[0]) && !number(max)) return false;
    }
    if (s.empty() || s[0] != '}') return false;
    std::string_view op = rest_.substr(0, rest_.size() - s.size() + 1);
    if (min > kMaxRegexRepeat || max > kMaxRegexRepeat || (max >= 0 && max < min))
      error("invalid repeat count", op);
    rest_ = s.substr(1);
    return true;
  }

  ReNode literal(char32_t r) {
    Ranges ranges{{r, r}};
    return ReNode{ReNode::Kind::kClass, flags_.fold ? fold_ascii(ranges) : ranges, {}};
  }

  ReNode assertion(ReAssert a) {
    ReNode n{ReNode::Kind::kAssert, {}, {}};
    n.assert = a;
    return n;
  }

  // One atom; nothing for a flag group such as (?i), which only changes the flags.
  std::optional<ReNode> atom(int depth) {
    std::string_view start = rest_;
    char c = rest_[0];
    if (c == '*' || c == '+' || c == '?')
      error("missing argument to repetition operator", rest_.substr(0, 1));
    if (c == '{') {
      int min = 0, max = 0;
      std::string_view saved = rest_;
      if (repeat_range(min, max))
        error("missing argument to repetition operator",
              saved.substr(0, saved.size() - rest_.size()));
    }
    if (c == '(') return group(depth);
    if (c == '[') return char_class();
    rest_.remove_prefix(1);
    switch (c) {
      case '.': {
        Ranges any{{0, 0x10FFFF}};
        return ReNode{ReNode::Kind::kClass, flags_.dot_nl ? any : negate({{'\n', '\n'}}), {}};
      }
      case '^':
        return assertion(flags_.multi_line ? ReAssert::kBeginLine : ReAssert::kBeginText);
      case '$':
        return assertion(flags_.multi_line ? ReAssert::kEndLine : ReAssert::kEndText);
      case '\\':
        return escape(start);
      default:
        break;
    }
    rest_ = start;
    return literal(next_rune());
  }

  std::optional<ReNode> escape(std::string_view start) {
    if (rest_.empty()) error("trailing backslash at end of expression", "");
    char c = rest_[0];
    switch (c) {
      case 'A':
        rest_.remove_prefix(1);
        return assertion(ReAssert::kBeginText);
      case 'z':
        rest_.remove_prefix(1);
        return assertion(ReAssert::kEndText);
      case 'b':
        rest_.remove_prefix(1);
        return assertion(ReAssert::kWord);
      case 'B':
        rest_.remove_prefix(1);
        return assertion(ReAssert::kNotWord);
      case 'Q': {
        rest_.remove_prefix(1);
        auto end = rest_.find("\\E");
        std::string_view text = rest_.substr(0, end);
        rest_.remove_prefix(end == std::string_view::npos ? rest_.size() : end + 2);
        std::vector<ReNode> items;
        while (!text.empty()) {
          auto [r, n] = decode_rune(text);
          items.push_back(literal(r));
          text.remove_prefix(n);
        }
        return ReNode{ReNode::Kind::kConcat, {}, std::move(items)};
      }
      default:
        break;
    }
    Ranges ranges = escape_ranges(start);
    return ReNode{ReNode::Kind::kClass, flags_.fold ? fold_ascii(ranges) : ranges, {}};
  }

  // The runes an escape (after its backslash) stands for, inside a class or out.
  Ranges escape_ranges(std::string_view start) {
    char c = rest_[0];
    std::string_view perl = "dDsSwW";
    if (perl.find(c) != std::string_view::npos) {
      rest_.remove_prefix(1);
      Ranges r = *named_class(std::string(1, static_cast<char>(c | 0x20)));
      return (c & 0x20) ? r : negate(r);
    }
    char32_t r = escaped_rune(start);
    return {{r, r}};
  }

  char32_t escaped_rune(std::string_view start) {
    char c = rest_[0];
    auto bad = [&] {
      error("invalid escape sequence", start.substr(0, std::min<std::size_t>(start.size(), 2)));
    };
    rest_.remove_prefix(1);
    switch (c) {
      case 'a':
        return 7;
      case 'f':
        return '\f';
      case 't':
        return '\t';
      case 'n':
        return '\n';
      case 'r':
        return '\r';
      case 'v':
        return '\v';
      case 'x':
        return hex_escape(start);
      case 'p':
      case 'P':
        error("invalid character class range (Unicode classes are not supported)",
              start.substr(0, 3));
      default:
        break;
    }
    if (c >= '0' && c <= '7') {
      // Octal: \0 and up to two more digits, or \1-\7 followed by one (a lone \1 would be a
      // backreference, which RE2 has not).
      if (c != '0' && (rest_.empty() || rest_[0] < '0' || rest_[0] > '7')) bad();
      char32_t r = static_cast<char32_t>(c - '0');
      for (int i = 0; i < 2 && !rest_.empty() && rest_[0] >= '0' && rest_[0] <= '7'; ++i) {
        r = r * 8 + static_cast<char32_t>(rest_[0] - '0');
        rest_.remove_prefix(1);
      }
      return r;
    }
    if (static_cast<unsigned char>(c) < 0x80 && !is_word_char(c)) return static_cast<char32_t>(c);
    bad();
    return 0;
  }

  char32_t hex_escape(std::string_view start) {
    auto bad = [&] {
      error("invalid escape sequence", start.substr(0, start.size() - rest_.size()));
    };
    std::string_view digits;
    if (!rest_.empty() && rest_[0] == '{') {
      auto close = rest_.find('}');
      if (close == std::string_view::npos) bad();
      digits = rest_.substr(1, close - 1);
      rest_.remove_prefix(close + 1);
    } else {
      if (rest_.size() < 2) bad();
      digits = rest_.substr(0, 2);
      rest_.remove_prefix(2);
    }
    std::uint32_t r = 0;
    auto res = std::from_chars(digits.data(), digits.data() + digits.size(), r, 16);
    if (digits.empty() || digits.size() > 8 || res.ptr != digits.data() + digits.size() ||
        r > 0x10FFFF)
      bad();
    return r;
  }

  std::optional<ReNode> group(int depth) {
    std::string_view start = rest_;
    rest_.remove_prefix(1);
    Flags saved = flags_;  // what a (?i:...) group sets ends with it
    int cap = -1;
    if (rest_.starts_with("?P<") || rest_.starts_with("?<")) {
      rest_.remove_prefix(rest_[1] == 'P' ? 3 : 2);
      auto close = rest_.find('>');
      std::string_view name = rest_.substr(0, close);
      if (close == std::string_view::npos || name.empty() ||
          !std::all_of(name.begin(), name.end(), is_word_char))
        error("invalid named capture", start);
      rest_.remove_prefix(close + 1);
      cap = ++captures_;
      names_.resize(static_cast<std::size_t>(cap) + 1);
      names_[static_cast<std::size_t>(cap)] = std::string(name);
    } else if (rest_.starts_with("?")) {
      if (!group_flags(start)) return std::nullopt;  // (?i): flags for the rest of this group
    } else {
      cap = ++captures_;
      names_.resize(static_cast<std::size_t>(cap) + 1);
    }
    ReNode body = alternation(depth + 1);
    flags_ = saved;
    if (rest_.empty() || rest_[0] != ')') error("missing closing )", pattern_);
    rest_.remove_prefix(1);
    if (cap < 0) return body;
    ReNode n{ReNode::Kind::kCapture, {}, {}};
    n.subs.push_back(std::move(body));
    n.cap = cap;
    return n;
  }

  // (?flags) or (?flags: — sets the flags; true when a group body follows (the ':' form).
  bool group_flags(std::string_view start) {
    rest_.remove_prefix(1);
    bool negated = false;
    Flags f = flags_;
    while (!rest_.empty()) {
      char c = rest_[0];
      rest_.remove_prefix(1);
      switch (c) {
        case 'i':
          f.fold = !negated;
          continue;
        case 's':
          f.dot_nl = !negated;
          continue;
        case 'm':
          f.multi_line = !negated;
          continue;
        case 'U':
          f.ungreedy = !negated;
          continue;
        case '-':
          if (negated) break;
          negated = true;
          continue;
        case ')':
          flags_ = f;
          return false;
        case ':':
          flags_ = f;
          return true;
        default:
          break;
      }
      break;
    }
    error("invalid or unsupported Perl syntax", start.substr(0, start.size() - rest_.size()));
  }

  ReNode char_class() {
    std::string_view start = rest_;
    rest_.remove_prefix(1);
    bool negated = !rest_.empty() && rest_[0] == '^';
    if (negated) rest_.remove_prefix(1);
    Ranges ranges;
    bool first = true;
    while (rest_.empty() || rest_[0] != ']' || first) {
      if (rest_.empty()) error("missing closing ]", start);
      first = false;
      if (rest_.starts_with("[:")) {
        auto close = rest_.find(":]");
        std::string_view name = rest_.substr(2, close == std::string_view::npos ? 0 : close - 2);
        bool neg = name.starts_with("^");
        auto r =
            close == std::string_view::npos ? std::nullopt : named_class(name.substr(neg ? 1 : 0));
        if (r) {
          rest_.remove_prefix(close + 2);
          Ranges add = neg ? negate(*r) : *r;
          ranges.insert(ranges.end(), add.begin(), add.end());
          continue;
        }
      }
      std::string_view item = rest_;
      if (rest_[0] == '\\' && rest_.size() > 1 &&
          std::string_view("dDsSwW").find(rest_[1]) != std::string_view::npos) {
        rest_.remove_prefix(1);
        Ranges add = escape_ranges(item);
        ranges.insert(ranges.end(), add.begin(), add.end());
        continue;
      }
      char32_t lo = class_rune();
      char32_t hi = lo;
      if (rest_.size() > 1 && rest_[0] == '-' && rest_[1] != ']') {
        rest_.remove_prefix(1);
        hi = class_rune();
        if (hi < lo)
          error("invalid character class range", item.substr(0, item.size() - rest_.size()));
      }
      ranges.emplace_back(lo, hi);
    }
    rest_.remove_prefix(1);
    ranges = normalize(std::move(ranges));
    if (flags_.fold) ranges = fold_ascii(std::move(ranges));
    return ReNode{ReNode::Kind::kClass, negated ? negate(ranges) : ranges, {}};
  }

  char32_t class_rune() {
    if (rest_.empty()) error("missing closing ]", pattern_);
    if (rest_[0] == '\\') {
      std::string_view start = rest_;
      rest_.remove_prefix(1);
      if (rest_.empty()) error("trailing backslash at end of expression", "");
      return escaped_rune(start);
    }
    return next_rune();
  }

  std::string_view pattern_;
  std::string_view rest_;
  Flags flags_;
  int captures_ = 0;
  std::vector<std::string> names_{""};
};

struct ReInst {
  enum class Op : std::uint8_t { kClass, kSplit, kJmp, kSave, kAssert, kMatch } op;
  int x = 0;  // kClass: class index; kSplit: preferred target; kJmp: target; kSave: slot
  int y = 0;  // kSplit: the other target
  ReAssert assert = ReAssert::kBeginText;
};

struct Regex {
  std::vector<ReInst> program;
  std::vector<Ranges> classes;
  std::size_t slots = 2;  // two per capture group, the whole match being group 0
  std::vector<std::string> names;
};

class RegexCompiler {
 public:
  explicit RegexCompiler(Regex& re) : re_(re) {}

  void emit(const ReNode& n) {
    switch (n.kind) {
      case ReNode::Kind::kEmpty:
        return;
      case ReNode::Kind::kClass:
        re_.classes.push_back(n.ranges);
        add({ReInst::Op::kClass, static_cast<int>(re_.classes.size() - 1)});
        return;
      case ReNode::Kind::kConcat:
        for (const auto& s : n.subs) emit(s);
        return;
      case ReNode::Kind::kAlternate:
        return alternate(n.subs);
      case ReNode::Kind::kRepeat:
        return repeat(n);
      case ReNode::Kind::kCapture:
        add({ReInst::Op::kSave, n.cap * 2});
        emit(n.subs[0]);
        add({ReInst::Op::kSave, n.cap * 2 + 1});
        return;
      case ReNode::Kind::kAssert: {
        ReInst i{ReInst::Op::kAssert};
        i.assert = n.assert;
        add(i);
        return;
      }
    }
  }

  int add(ReInst i) {
    if (re_.program.size() >= kMaxRegexProgram)
      throw RegexError{"error parsing regexp: expression too large"};
    re_.program.push_back(i);
    return static_cast<int>(re_.program.size() - 1);
  }
  int pc() const { return static_cast<int>(re_.program.size()); }

 private:
  void alternate(const std::vector<ReNode>& subs) {
    std::vector<int> jumps;
    for (std::size_t k = 0; k + 1 < subs.size(); ++k) {
      int split = add({ReInst::Op::kSplit, pc() + 1});
      emit(subs[k]);
      jumps.push_back(add({ReInst::Op::kJmp}));
      re_.program[static_cast<std::size_t>(split)].y = pc();
    }
    emit(subs.back());
    for (int j : jumps) re_.program[static_cast<std::size_t>(j)].x = pc();
  }

  // A split whose preferred branch is the body when greedy, the exit when lazy.
  int split() { return add({ReInst::Op::kSplit, 0, 0}); }
  void set_split(int at, int body, int exit, bool greedy) {
    auto& i = re_.program[static_cast<std::size_t>(at)];
    i.x = greedy ? body : exit;
    i.y = greedy ? exit : body;
  }

  // x{min,max}: min copies, then max-min nested optional copies, or a loop when unbounded.
  void repeat(const ReNode& n) {
    const ReNode& body = n.subs[0];
    for (int k = 0; k < n.min; ++k) emit(body);
    if (n.max < 0) {
      int loop = split();
      emit(body);
      add({ReInst::Op::kJmp, loop});
      set_split(loop, loop + 1, pc(), n.greedy);
      return;
    }
    std::vector<int> splits;
    for (int k = n.min; k < n.max; ++k) {
      splits.push_back(split());
      emit(body);
    }
    for (int s : splits) set_split(s, s + 1, pc(), n.greedy);
  }

  Regex& re_;
};

Regex compile_regex(std::string_view pattern) {
  RegexParser parser(pattern);
  ReNode root = parser.parse();
  Regex re;
  re.slots = 2 * (static_cast<std::size_t>(parser.captures()) + 1);
  re.names = parser.names();
  RegexCompiler c(re);
  c.add({ReInst::Op::kSave, 0});
  c.emit(root);
  c.add({ReInst::Op::kSave, 1});
  c.add({ReInst::Op::kMatch});
  if (re.program.size() * re.slots > (1u << 20))
    throw RegexError{"error parsing regexp: expression too large"};
  return re;
}

bool class_has(const Ranges& r, char32_t c) {
  auto it = std::upper_bound(r.begin(), r.end(), std::pair<char32_t, char32_t>{c, 0x10FFFF});
  return it != r.begin() && std::prev(it)->second >= c && std::prev(it)->first <= c;
}

// The threads of one step: each program counter visited at most once; those waiting on a rune
// or matching kept in priority order with their capture offsets.
class ThreadList {
 public:
  ThreadList(std::size_t size, std::size_t slots)
      : slots_(slots), index_(size, 0), caps_(size * slots, -1) {}
  // Marks `pc` visited; false when it was already.
  bool visit(int pc) {
    std::size_t& i = index_[static_cast<std::size_t>(pc)];
    if (i < visited_.size() && visited_[i] == pc) return false;
    i = visited_.size();
    visited_.push_back(pc);
    return true;
  }
  void add(int pc, std::span<const int> caps) {
    runnable_.push_back(pc);
    std::copy(caps.begin(), caps.end(), caps_.begin() + static_cast<std::ptrdiff_t>(offset(pc)));
  }
  std::span<const int> caps(int pc) const { return {caps_.data() + offset(pc), slots_}; }
  const std::vector<int>& runnable() const { return runnable_; }
  void clear() {
    visited_.clear();
    runnable_.clear();
  }

 private:
  std::size_t offset(int pc) const { return static_cast<std::size_t>(pc) * slots_; }

  std::size_t slots_;
  std::vector<std::size_t> index_;  // a sparse set over visited_
  std::vector<int> visited_;
  std::vector<int> runnable_;
  std::vector<int> caps_;
};

class PikeVm {
 public:
  PikeVm(const Regex& re, std::string_view s, Heap& heap)
      : re_(re),
        s_(s),
        heap_(heap),
        current_(re.program.size(), re.slots),
        next_(re.program.size(), re.slots),
        unset_(re.slots, -1),
        scratch_(re.slots, -1) {
    heap_.charge(2 * re.program.size() * re.slots * sizeof(int));
  }

  // The leftmost-first match at or after `from`: offsets of each group (-1 when unset), or an
  // empty vector.
  std::vector<int> search(std::size_t from) {
    heap_.charge(kSearchCost);
    std::vector<int> matched;
    current_.clear();
    for (std::size_t pos = from;;) {
      // Until a match is found, a thread starts at every position (the lowest in priority).
      if (matched.empty()) add_thread(current_, 0, unset_, pos);
      if (current_.runnable().empty() && !matched.empty()) break;
      heap_.charge(kStepCost * (current_.runnable().size() + 1));
      auto [r, width] = decode_rune(s_.substr(pos));
      next_.clear();
      for (int pc : current_.runnable()) {
        const ReInst& inst = re_.program[static_cast<std::size_t>(pc)];
        if (inst.op == ReInst::Op::kMatch) {
          auto caps = current_.caps(pc);
          matched.assign(caps.begin(), caps.end());
          break;  // threads after this one have lower priority
        }
        if (width > 0 && class_has(re_.classes[static_cast<std::size_t>(inst.x)], r))
          add_thread(next_, pc + 1, current_.caps(pc), pos + width);
      }
      if (pos >= s_.size()) break;
      std::swap(current_, next_);
      pos += width;
    }
    return matched;
  }

 private:
  // Work units of a search and of one thread's step; a step costs more than a byte copied.
  static constexpr std::uint64_t kSearchCost = 64;
  static constexpr std::uint64_t kStepCost = 32;

  bool holds(ReAssert a, std::size_t pos) const {
    auto word = [&](std::size_t i) { return i < s_.size() && is_word_char(s_[i]); };
    switch (a) {
      case ReAssert::kBeginText:
        return pos == 0;
      case ReAssert::kEndText:
        return pos == s_.size();
      case ReAssert::kBeginLine:
        return pos == 0 || s_[pos - 1] == '\n';
      case ReAssert::kEndLine:
        return pos == s_.size() || s_[pos] == '\n';
      case ReAssert::kWord:
        return (pos > 0 && word(pos - 1)) != word(pos);
      case ReAssert::kNotWord:
        return (pos > 0 && word(pos - 1)) == word(pos);
    }
    return false;
  }

  // Follows the epsilon instructions from `pc0` depth first (the preferred branch first), with an
  // explicit stack, adding the threads that wait on a rune or match.
  void add_thread(ThreadList& list, int pc0, std::span<const int> caps, std::size_t pos) {
    scratch_.assign(caps.begin(), caps.end());
    stack_.assign(1, Step{pc0, 0, 0});
    while (!stack_.empty()) {
      Step step = stack_.back();
      stack_.pop_back();
      if (step.pc < 0) {
        scratch_[step.slot] = step.old;
        continue;
      }
      if (!list.visit(step.pc)) continue;
      const ReInst& inst = re_.program[static_cast<std::size_t>(step.pc)];
      switch (inst.op) {
        case ReInst::Op::kJmp:
          stack_.push_back({inst.x, 0, 0});
          break;
        case ReInst::Op::kSplit:
          stack_.push_back({inst.y, 0, 0});
          stack_.push_back({inst.x, 0, 0});
          break;
        case ReInst::Op::kSave: {
          auto slot = static_cast<std::size_t>(inst.x);
          stack_.push_back({-1, slot, scratch_[slot]});
          scratch_[slot] = static_cast<int>(pos);
          stack_.push_back({step.pc + 1, 0, 0});
          break;
        }
        case ReInst::Op::kAssert:
          if (holds(inst.assert, pos)) stack_.push_back({step.pc + 1, 0, 0});
          break;
        case ReInst::Op::kClass:
        case ReInst::Op::kMatch:
          list.add(step.pc, scratch_);
          break;
      }
    }
  }

  struct Step {
    int pc;  // -1: restore scratch_[slot] to old
    std::size_t slot;
    int old;
  };

  const Regex& re_;
  std::string_view s_;
  Heap& heap_;
  ThreadList current_, next_;
  const std::vector<int> unset_;  // the offsets of a new thread
  std::vector<int> scratch_;
  std::vector<Step> stack_;
};

// Regexp.FindAllStringSubmatchIndex(s, n): successive non-overlapping matches (n < 0: all); an
// empty match right after a match is skipped.
std::vector<std::vector<int>> regex_all(const Regex& re, std::string_view s, std::int64_t n,
                                        Heap& heap) {
  std::vector<std::vector<int>> out;
  if (n < 0) n = static_cast<std::int64_t>(s.size()) + 1;
  PikeVm vm(re, s, heap);
  int previous_end = -1;
  for (std::size_t pos = 0; static_cast<std::int64_t>(out.size()) < n && pos <= s.size();) {
    std::vector<int> m = vm.search(pos);
    if (m.empty()) break;
    bool accept = true;
    if (m[1] == static_cast<int>(pos)) {  // an empty match at pos
      accept = m[0] != previous_end;
      std::size_t width = decode_rune(s.substr(pos)).second;
      pos += width > 0 ? width : 1;
    } else {
      pos = static_cast<std::size_t>(m[1]);
    }
    previous_end = m[1];
    if (accept) out.push_back(std::move(m));
  }
  return out;
}

std::string_view group_text(std::string_view s, const std::vector<int>& m, std::size_t group) {
  if (2 * group + 1 >= m.size() || m[2 * group] < 0) return {};
  auto from = static_cast<std::size_t>(m[2 * group]);
  return s.substr(from, static_cast<std::size_t>(m[2 * group + 1]) - from);
}

// Regexp.Expand: $1, ${1}, $name and ${name} are groups ($name takes the longest run of word
// characters), $$ is '$'; a malformed reference leaves its '$' as text.
void expand(std::string& out, std::string_view tmpl, const Regex& re, std::string_view src,
            const std::vector<int>& m) {
  while (!tmpl.empty()) {
    auto dollar = tmpl.find('$');
    out += tmpl.substr(0, dollar);
    if (dollar == std::string_view::npos) break;
    tmpl.remove_prefix(dollar + 1);
    if (!tmpl.empty() && tmpl[0] == '$') {
      out += '$';
      tmpl.remove_prefix(1);
      continue;
    }
    bool brace = !tmpl.empty() && tmpl[0] == '{';
    std::string_view rest = tmpl.substr(brace ? 1 : 0);
    std::size_t len = 0;
    while (len < rest.size() && is_word_char(rest[len])) ++len;
    if (len == 0 || (brace && (len >= rest.size() || rest[len] != '}'))) {
      out += '$';
      continue;
    }
    std::string_view name = rest.substr(0, len);
    tmpl = rest.substr(len + (brace ? 1 : 0));
    std::size_t group = 0;
    bool numeric = std::all_of(name.begin(), name.end(), is_ascii_digit) && name.size() < 9 &&
                   (name.size() == 1 || name[0] != '0');
    if (numeric) {
      std::from_chars(name.data(), name.data() + name.size(), group);
    } else {
      auto it = std::find(re.names.begin() + 1, re.names.end(), name);
      if (it == re.names.end()) continue;
      group = static_cast<std::size_t>(it - re.names.begin());
    }
    out += group_text(src, m, group);
    Heap::check_size(out.size());
  }
}

// Regexp.ReplaceAllString and ReplaceAllLiteralString.
std::string regex_replace(const Regex& re, std::string_view src, std::string_view repl,
                          bool literal, Heap& heap) {
  std::string out;
  PikeVm vm(re, src, heap);
  std::size_t last = 0;
  for (std::size_t search = 0; search <= src.size();) {
    std::vector<int> m = vm.search(search);
    if (m.empty()) break;
    auto begin = static_cast<std::size_t>(m[0]), end = static_cast<std::size_t>(m[1]);
    out += src.substr(last, begin - last);
    // No replacement for an empty match right after a match (Go's rule).
    if (end > last || begin == 0) {
      if (literal)
        out += repl;
      else
        expand(out, repl, re, src, m);
    }
    Heap::check_size(out.size());
    last = end;
    std::size_t width = decode_rune(src.substr(search)).second;
    search = search + width > end ? search + width : search + 1 > end ? search + 1 : end;
  }
  out += src.substr(last);
  Heap::check_size(out.size());
  return out;
}

// Regexp.Split(s, n).
std::vector<std::string_view> regex_split(const Regex& re, std::string_view pattern,
                                          std::string_view s, std::int64_t n, Heap& heap) {
  std::vector<std::string_view> parts;
  if (n == 0) return parts;
  if (!pattern.empty() && s.empty()) return {s};
  std::size_t begin = 0, end = 0;
  for (const auto& m : regex_all(re, s, n, heap)) {
    if (n > 0 && static_cast<std::int64_t>(parts.size()) == n - 1) break;
    end = static_cast<std::size_t>(m[0]);
    if (m[1] != 0) parts.push_back(s.substr(begin, end - begin));
    begin = static_cast<std::size_t>(m[1]);
  }
  if (end != s.size()) parts.push_back(s.substr(begin));
  return parts;
}

std::string quote_meta(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (std::strchr("\\.+*?()|[]{}^$", c) != nullptr && c != '\0') out += '\\';
    out += c;
  }
  return out;
}

// ---- functions: text/template's built-ins and sprig's -----------------------------------------

// One call of a function, its arguments evaluated (the piped value last).
struct Call {
  std::string_view name;
  std::span<const Value> args;
  Heap& heap;

  [[noreturn]] void error(std::string_view what) const {
    fail(fmt::format("error calling {}: {}", name, what));
  }
  [[noreturn]] void wrong_type(std::size_t i, std::string_view want) const {
    fail(fmt::format("function \"{}\" wants {} as argument {}, got {}", name, want, i + 1,
                     type_name(args[i])));
  }
  // Go converts an argument to the parameter's type or refuses it; these do the same.
  const std::string& str(std::size_t i) const {
    if (!args[i].is(Kind::kString)) wrong_type(i, "a string");
    return args[i].str();
  }
  std::int64_t integer(std::size_t i) const {
    if (!args[i].is(Kind::kInt)) wrong_type(i, "an int");
    return args[i].integer();
  }
  bool boolean(std::size_t i) const {
    if (!args[i].is(Kind::kBool)) wrong_type(i, "a bool");
    return args[i].boolean();
  }
  // A map parameter; nullptr for nil, which Go passes as a nil map.
  Map* map(std::size_t i) const {
    if (args[i].is_nil()) return nullptr;
    if (!args[i].is(Kind::kMap)) wrong_type(i, "a map");
    return &args[i].map();
  }
  // A list parameter of sprig's list functions, which refuse anything else in their words.
  const List& list(std::size_t i, std::string_view what) const {
    if (!args[i].is(Kind::kList))
      error(fmt::format("Cannot {} on type {}", what, type_name(args[i])));
    return args[i].list();
  }
  Value string(std::string s) const { return heap.string(std::move(s)); }
  Value strings(const std::vector<std::string_view>& parts) const {
    heap.charge(parts.size() * sizeof(std::string));  // before making them, which may be many
    List items;
    for (auto p : parts) items.push_back(heap.string(std::string(p)));
    return heap.list(std::move(items));
  }
};

using BuiltinFn = Value (*)(const Call&);

struct Builtin {
  std::string_view name;
  int min_args;
  int max_args;  // -1: any number
  BuiltinFn fn;  // nullptr: and/or, which the renderer evaluates lazily
};

// fmt.Sprint of one value: a string as itself, anything else as %v (sprig's strval).
std::string to_text(const Value& v, Heap& heap) {
  if (v.is(Kind::kString)) return v.str();
  std::string out;
  Printer p(out, heap);
  format_value(p, v, FormatSpec{}, 0);
  return out;
}

// sprig's strslice: a list's non-nil elements as strings, nothing for nil, else the value.
std::vector<std::string> string_slice(const Value& v, Heap& heap) {
  std::vector<std::string> out;
  if (v.is(Kind::kList)) {
    for (const Value& e : v.list())
      if (!e.is_nil()) out.push_back(to_text(e, heap));
  } else if (!v.is_nil()) {
    out.push_back(to_text(v, heap));
  }
  return out;
}

Value split_map(const Call& c, const std::vector<std::string_view>& parts) {
  Value m = c.heap.map();
  for (std::size_t i = 0; i < parts.size(); ++i)
    c.heap.set(m.map(), "_" + std::to_string(i), c.heap.string(std::string(parts[i])));
  return m;
}

std::string join(const std::vector<std::string>& parts, std::string_view sep) {
  std::string out;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    Heap::check_size(out.size() + parts[i].size() + sep.size());
    if (i > 0) out += sep;
    out += parts[i];
  }
  return out;
}

// text/template's evalArgs for html, js and urlquery: one string as it is, else fmt.Sprint of
// the arguments with "<no value>" for nil.
std::string escaper_input(const Call& c) {
  if (c.args.size() == 1 && c.args[0].is(Kind::kString)) return c.args[0].str();
  std::vector<Value> args(c.args.begin(), c.args.end());
  Value no_value = c.heap.string("<no value>");
  for (Value& a : args)
    if (a.is_nil()) a = no_value;
  std::string out;
  Printer p(out, c.heap);
  sprint(p, args);
  return out;
}

// Go's basic kinds, which eq and lt compare.
enum class Basic { kNone, kBool, kInt, kFloat, kString };

Basic basic(const Value& v) {
  switch (v.kind()) {
    case Kind::kBool:
      return Basic::kBool;
    case Kind::kInt:
      return Basic::kInt;
    case Kind::kFloat:
      return Basic::kFloat;
    case Kind::kString:
      return Basic::kString;
    default:
      return Basic::kNone;
  }
}

bool equal(const Call& c, const Value& a, const Value& b) {
  if (a.is_nil() || b.is_nil()) return a.is_nil() && b.is_nil();
  Basic x = basic(a), y = basic(b);
  if (x != y) c.error("incompatible types for comparison");
  switch (x) {
    case Basic::kBool:
      return a.boolean() == b.boolean();
    case Basic::kInt:
      return a.integer() == b.integer();
    case Basic::kFloat:
      return a.real() == b.real();
    case Basic::kString:
      return a.str() == b.str();
    case Basic::kNone:
      break;
  }
  c.error(fmt::format("non-comparable type {}", type_name(a)));
}

bool less(const Call& c, const Value& a, const Value& b) {
  Basic x = basic(a), y = basic(b);
  if (x == Basic::kNone || y == Basic::kNone || x == Basic::kBool || y == Basic::kBool)
    c.error("invalid type for comparison");
  if (x != y) c.error("incompatible types for comparison");
  if (x == Basic::kInt) return a.integer() < b.integer();
  if (x == Basic::kFloat) return a.real() < b.real();
  return a.str() < b.str();
}

Value fn_eq(const Call& c) {
  if (c.args.size() < 2) c.error("missing argument for comparison");
  for (std::size_t i = 1; i < c.args.size(); ++i)
    if (equal(c, c.args[0], c.args[i])) return Value::of(true);
  return Value::of(false);
}

Value fn_len(const Call& c) {
  const Value& v = c.args[0];
  switch (v.kind()) {
    case Kind::kString:
      return Value::of(static_cast<std::int64_t>(v.str().size()));
    case Kind::kList:
      return Value::of(static_cast<std::int64_t>(v.list().size()));
    case Kind::kMap:
      return Value::of(static_cast<std::int64_t>(v.map().size()));
    case Kind::kMissing:
    case Kind::kNil:
      c.error("len of nil pointer");
    default:
      c.error(fmt::format("len of type {}", type_name(v)));
  }
}

// Go's index: item[i][j]..., lists and strings by int, maps by string (a missing key is nil).
Value fn_index(const Call& c) {
  Value item = c.args[0];
  for (const Value& key : c.args.subspan(1)) {
    if (item.is_nil()) c.error("index of untyped nil");
    if (item.is(Kind::kMap)) {
      if (!key.is(Kind::kString))
        c.error(fmt::format("value has type {}; should be string", type_name(key)));
      auto it = item.map().find(key.str());
      item = it == item.map().end() ? Value::nil() : it->second;
      continue;
    }
    if (!item.is(Kind::kList) && !item.is(Kind::kString))
      c.error(fmt::format("can't index item of type {}", type_name(item)));
    if (!key.is(Kind::kInt))
      c.error(fmt::format("cannot index slice/array with type {}", type_name(key)));
    std::size_t size = item.is(Kind::kList) ? item.list().size() : item.str().size();
    std::int64_t i = key.integer();
    if (i < 0 || static_cast<std::uint64_t>(i) >= size)
      c.error(fmt::format("index out of range: {}", i));
    auto at = static_cast<std::size_t>(i);
    item = item.is(Kind::kList)
               ? item.list()[at]
               : Value::of(static_cast<std::int64_t>(static_cast<unsigned char>(item.str()[at])));
  }
  return item;
}

// sprig's slice (it replaces Go's): list[start:end] of a list.
Value fn_slice(const Call& c) {
  if (!c.args[0].is(Kind::kList))
    c.error(fmt::format("list should be type of slice or array but {}", type_name(c.args[0])));
  const List& l = c.args[0].list();
  if (l.empty()) return Value::nil();
  auto size = static_cast<std::int64_t>(l.size());
  std::int64_t start = c.args.size() > 1 ? cast_int(c.args[1]) : 0;
  std::int64_t end = c.args.size() > 2 ? cast_int(c.args[2]) : size;
  if (start < 0 || end < start || end > size) c.error("slice bounds out of range");
  return c.heap.list(List(l.begin() + start, l.begin() + end));
}

Value fn_printf(const Call& c) {
  std::string out;
  Printer p(out, c.heap);
  sprintf(p, c.str(0), c.args.subspan(1));
  return c.string(std::move(out));
}

Value fn_trunc(const Call& c) {
  std::int64_t n = c.integer(0);
  const std::string& s = c.str(1);
  auto size = static_cast<std::int64_t>(s.size());
  if (n < 0 && size + n > 0) return c.string(s.substr(static_cast<std::size_t>(size + n)));
  if (n >= 0 && size > n) return c.string(s.substr(0, static_cast<std::size_t>(n)));
  return c.args[1];
}

Value fn_substr(const Call& c) {
  std::int64_t start = c.integer(0), end = c.integer(1);
  const std::string& s = c.str(2);
  auto size = static_cast<std::int64_t>(s.size());
  if (start < 0) {
    if (end < 0 || end > size) c.error("slice bounds out of range");
    return c.string(s.substr(0, static_cast<std::size_t>(end)));
  }
  if (end < 0 || end > size) end = size;
  if (start > end) c.error("slice bounds out of range");
  return c.string(s.substr(static_cast<std::size_t>(start), static_cast<std::size_t>(end - start)));
}

Value fn_repeat(const Call& c) {
  std::int64_t n = c.integer(0);
  const std::string& s = c.str(1);
  if (n < 0) c.error("strings: negative Repeat count");
  if (!s.empty() && static_cast<std::uint64_t>(n) > kMaxTemplateOutputBytes / s.size())
    Heap::check_size(kMaxTemplateOutputBytes + 1);
  std::string out;
  for (std::int64_t i = 0; i < n && !s.empty(); ++i) out += s;
  return c.string(std::move(out));
}

std::string indent(const Call& c) {
  std::int64_t n = c.integer(0);
  const std::string& s = c.str(1);
  if (n < 0) c.error("strings: negative Repeat count");
  auto lines = static_cast<std::uint64_t>(std::count(s.begin(), s.end(), '\n')) + 1;
  if (static_cast<std::uint64_t>(n) > kMaxTemplateOutputBytes / lines)
    Heap::check_size(kMaxTemplateOutputBytes + 1);
  Heap::check_size(s.size() + lines * static_cast<std::size_t>(n));
  std::string pad(static_cast<std::size_t>(n), ' ');
  return pad + replace_all(s, "\n", "\n" + pad);
}

Value fn_quote(const Call& c) {
  std::vector<std::string> parts;
  for (const Value& v : c.args)
    if (!v.is_nil()) parts.push_back(quote_go(to_text(v, c.heap)));
  return c.string(join(parts, " "));
}

Value fn_squote(const Call& c) {
  std::vector<std::string> parts;
  for (const Value& v : c.args)
    if (!v.is_nil()) parts.push_back("'" + to_text(v, c.heap) + "'");
  return c.string(join(parts, " "));
}

Value fn_cat(const Call& c) {
  std::vector<std::string> parts;
  for (const Value& v : c.args)
    if (!v.is_nil()) parts.push_back(to_text(v, c.heap));
  return c.string(join(parts, " "));
}

// toJson and its kin: Go's encoding, "" (or the must- error) for what JSON cannot hold.
Value json_function(const Call& c, bool escape_html, int indent_width, bool must) {
  std::string out;
  Printer p(out, c.heap);
  try {
    json_encode(p, c.args[0], escape_html, indent_width, 0);
  } catch (const JsonUnsupported& e) {
    if (must) c.error(e.what);
    out.clear();
  }
  return c.string(std::move(out));
}

Value from_json_function(const Call& c, bool must) {
  std::string error;
  if (auto v = json_decode(c.str(0), c.heap, error)) return *v;
  if (must || error != "invalid JSON") c.error(error);
  return Value::nil();
}

Value fn_dict(const Call& c) {
  Value m = c.heap.map();
  for (std::size_t i = 0; i < c.args.size(); i += 2) {
    Value value = i + 1 < c.args.size() ? c.args[i + 1] : c.heap.string("");
    c.heap.set(m.map(), to_text(c.args[i], c.heap), value);
  }
  return m;
}

Value fn_keys(const Call& c) {
  List keys;
  for (std::size_t i = 0; i < c.args.size(); ++i)
    if (Map* m = c.map(i))
      for (const auto& entry : *m) keys.push_back(c.heap.string(entry.first));
  return c.heap.list(std::move(keys));
}

// sprig's pick (keep) and omit (drop) of a map's keys.
Value select_keys(const Call& c, bool keep) {
  Value out = c.heap.map();
  Map* m = c.map(0);
  if (m == nullptr) return out;
  std::vector<std::string_view> keys;
  for (std::size_t i = 1; i < c.args.size(); ++i) keys.push_back(c.str(i));
  for (const auto& [k, v] : *m)
    if ((std::find(keys.begin(), keys.end(), k) != keys.end()) == keep) c.heap.set(out.map(), k, v);
  return out;
}

bool contains_value(const List& l, const Value& v, Heap& heap) {
  return std::any_of(l.begin(), l.end(), [&](const Value& e) { return deep_equal(v, e, heap); });
}

Value fn_uniq(const Call& c) {
  List out;
  for (const Value& v : c.list(0, "find uniq"))
    if (!contains_value(out, v, c.heap)) out.push_back(v);
  return c.heap.list(std::move(out));
}

Value fn_without(const Call& c) {
  List omit(c.args.begin() + 1, c.args.end());
  List out;
  for (const Value& v : c.list(0, "find without"))
    if (!contains_value(omit, v, c.heap)) out.push_back(v);
  return c.heap.list(std::move(out));
}

Value fn_concat(const Call& c) {
  List out;
  for (const Value& v : c.args) {
    if (!v.is(Kind::kList)) c.error(fmt::format("Cannot concat type {} as list", type_name(v)));
    c.heap.charge(v.list().size() * sizeof(Value));
    out.insert(out.end(), v.list().begin(), v.list().end());
  }
  return c.heap.list(std::move(out));
}

// sprig's untilStep: start, start+step, ... up to stop (excluded), downwards for a negative step.
Value until_step(const Call& c, std::int64_t start, std::int64_t stop, std::int64_t step) {
  List out;
  bool up = stop >= start;
  if ((up && step <= 0) || (!up && step >= 0)) return c.heap.list();
  // The count, charged before the list is made: |stop - start| / |step|, rounded up.
  std::uint64_t span = up ? static_cast<std::uint64_t>(stop) - static_cast<std::uint64_t>(start)
                          : static_cast<std::uint64_t>(start) - static_cast<std::uint64_t>(stop);
  std::uint64_t stride =
      step > 0 ? static_cast<std::uint64_t>(step) : 0 - static_cast<std::uint64_t>(step);
  c.heap.charge((span / stride + 1) * sizeof(Value));
  for (std::int64_t i = start; up ? i < stop : i > stop;) {
    out.push_back(Value::of(i));
    if (up ? i > std::numeric_limits<std::int64_t>::max() - step
           : i < std::numeric_limits<std::int64_t>::min() - step)
      break;
    i += step;
  }
  return c.heap.list(std::move(out));
}

// Go's int64 arithmetic wraps around; so does this (through unsigned, where C++ defines it).
std::int64_t wrap(std::uint64_t u) {
  return static_cast<std::int64_t>(u);
}

Value fn_add(const Call& c) {
  std::uint64_t sum = 0;
  for (const Value& v : c.args) sum += static_cast<std::uint64_t>(cast_int(v));
  return Value::of(wrap(sum));
}

Value fn_mul(const Call& c) {
  std::uint64_t product = static_cast<std::uint64_t>(cast_int(c.args[0]));
  for (const Value& v : c.args.subspan(1)) product *= static_cast<std::uint64_t>(cast_int(v));
  return Value::of(wrap(product));
}

Value fn_div_mod(const Call& c, bool mod) {
  std::int64_t a = cast_int(c.args[0]), b = cast_int(c.args[1]);
  if (b == 0) c.error("runtime error: integer divide by zero");
  if (b == -1) return Value::of(mod ? 0 : wrap(0 - static_cast<std::uint64_t>(a)));
  return Value::of(mod ? a % b : a / b);
}

Value fn_extreme(const Call& c, bool max) {
  std::int64_t best = cast_int(c.args[0]);
  for (const Value& v : c.args.subspan(1)) {
    std::int64_t x = cast_int(v);
    if (max ? x > best : x < best) best = x;
  }
  return Value::of(best);
}

// strconv.Atoi as sprig wraps it: 0 for what is not a decimal integer, clamped when too large.
Value fn_atoi(const Call& c) {
  std::string_view s = c.str(0);
  if (auto i = parse_go_int(s, false)) return Value::of(*i);
  std::string_view digits = s.substr(!s.empty() && (s[0] == '+' || s[0] == '-') ? 1 : 0);
  if (digits.empty() || !std::all_of(digits.begin(), digits.end(), is_ascii_digit))
    return Value::of(std::int64_t{0});
  return Value::of(s[0] == '-' ? std::numeric_limits<std::int64_t>::min()
                               : std::numeric_limits<std::int64_t>::max());
}

// Compiles a regex argument; charges the compilation by the program's size.
std::optional<Regex> regex_arg(const Call& c, std::size_t i, bool must) {
  try {
    Regex re = compile_regex(c.str(i));
    c.heap.charge(re.program.size() * re.slots + c.str(i).size());
    return re;
  } catch (const RegexError& e) {
    if (must) c.error(e.what);
    return std::nullopt;
  }
}

Value fn_regex_match(const Call& c, bool must) {
  auto re = regex_arg(c, 0, must);
  return Value::of(re && !PikeVm(*re, c.str(1), c.heap).search(0).empty());
}

Value fn_regex_find(const Call& c) {
  auto re = regex_arg(c, 0, true);
  const std::string& s = c.str(1);
  std::vector<int> m = PikeVm(*re, s, c.heap).search(0);
  return c.string(std::string(m.empty() ? std::string_view() : group_text(s, m, 0)));
}

Value fn_regex_find_all(const Call& c) {
  auto re = regex_arg(c, 0, true);
  const std::string& s = c.str(1);
  std::vector<std::string_view> found;
  for (const auto& m : regex_all(*re, s, c.integer(2), c.heap))
    found.push_back(group_text(s, m, 0));
  return c.strings(found);
}

Value fn_regex_replace(const Call& c, bool literal) {
  auto re = regex_arg(c, 0, true);
  return c.string(regex_replace(*re, c.str(1), c.str(2), literal, c.heap));
}

Value fn_regex_split(const Call& c) {
  auto re = regex_arg(c, 0, true);
  return c.strings(regex_split(*re, c.str(0), c.str(1), c.integer(2), c.heap));
}

// reflect.Kind names, as sprig's kindOf gives them.
std::string_view kind_name(const Value& v) {
  switch (v.kind()) {
    case Kind::kList:
      return "slice";
    case Kind::kMap:
      return "map";
    case Kind::kMissing:
    case Kind::kNil:
      return "invalid";
    default:
      return type_name(v);
  }
}

std::string first_letters(std::string_view s, bool upper) {
  std::string out(s);
  bool start = true;
  for (char& c : out) {
    if (start && is_ascii_letter(c))
      c = upper ? static_cast<char>(c & ~0x20) : static_cast<char>(c | 0x20);
    start = is_ascii_space(c);
  }
  return out;
}

Value fn_first_last(const Call& c, bool first) {
  const List& l = c.list(0, first ? "find first" : "find last");
  if (l.empty()) return Value::nil();
  return first ? l.front() : l.back();
}

Value fn_rest_initial(const Call& c, bool rest) {
  const List& l = c.list(0, rest ? "find rest" : "find initial");
  if (l.empty()) return Value::nil();
  return c.heap.list(rest ? List(l.begin() + 1, l.end()) : List(l.begin(), l.end() - 1));
}

Value fn_push(const Call& c, bool front) {
  List l = c.list(0, front ? "prepend" : "push");
  l.insert(front ? l.begin() : l.end(), c.args[1]);
  return c.heap.list(std::move(l));
}

Value fn_has(const Call& c) {
  if (c.args[1].is_nil()) return Value::of(false);
  return Value::of(contains_value(c.list(1, "find has"), c.args[0], c.heap));
}

Value fn_reverse(const Call& c) {
  List l = c.list(0, "find reverse");
  std::reverse(l.begin(), l.end());
  return c.heap.list(std::move(l));
}

Value fn_compact(const Call& c) {
  List out;
  for (const Value& v : c.list(0, "compact"))
    if (truth(v)) out.push_back(v);
  return c.heap.list(std::move(out));
}

Value fn_sort_alpha(const Call& c) {
  if (!c.args[0].is(Kind::kList)) return c.strings({to_text(c.args[0], c.heap)});
  std::vector<std::string> s = string_slice(c.args[0], c.heap);
  std::sort(s.begin(), s.end());
  return c.strings(std::vector<std::string_view>(s.begin(), s.end()));
}

Value fn_set(const Call& c) {
  Map* m = c.map(0);
  if (m == nullptr) c.error("assignment to entry in nil map");
  c.heap.set(*m, c.str(1), c.args[2]);
  return c.args[0];
}

Value fn_unset(const Call& c) {
  if (Map* m = c.map(0)) {
    auto it = m->find(c.str(1));
    if (it != m->end()) m->erase(it);
  }
  return c.args[0];
}

const Builtin kBuiltins[] = {
    // text/template's own functions.
    {"and", 1, -1, nullptr},
    {"or", 1, -1, nullptr},
    {"not", 1, 1, [](const Call& c) { return Value::of(!truth(c.args[0])); }},
    {"len", 1, 1, fn_len},
    {"index", 1, -1, fn_index},
    {"slice", 1, 3, fn_slice},
    {"eq", 1, -1, fn_eq},
    {"ne", 2, 2, [](const Call& c) { return Value::of(!equal(c, c.args[0], c.args[1])); }},
    {"lt", 2, 2, [](const Call& c) { return Value::of(less(c, c.args[0], c.args[1])); }},
    {"le", 2, 2, [](const Call& c) {
       return Value::of(less(c, c.args[0], c.args[1]) || equal(c, c.args[0], c.args[1]));
     }},
    {"gt", 2, 2, [](const Call& c) {
       return Value::of(!less(c, c.args[0], c.args[1]) && !equal(c, c.args[0], c.args[1]));
     }},
    {"ge", 2, 2, [](const Call& c) { return Value::of(!less(c, c.args[0], c.args[1])); }},
    {"print", 0, -1, [](const Call& c) {
       std::string out;
       Printer p(out, c.heap);
       sprint(p, c.args);
       return c.string(std::move(out));
     }},
    {"println", 0, -1, [](const Call& c) {
       std::string out;
       Printer p(out, c.heap);
       sprintln(p, c.args);
       return c.string(std::move(out));
     }},
    {"printf", 1, -1, fn_printf},
    {"html", 0, -1, [](const Call& c) { return c.string(html_escape(escaper_input(c))); }},
    {"js", 0, -1, [](const Call& c) { return c.string(js_escape(escaper_input(c))); }},
    {"urlquery", 0, -1, [](const Call& c) { return c.string(query_escape(escaper_input(c))); }},
    {"call", 1, -1, [](const Call& c) -> Value {
       c.error("templates rendered by pok8s have no function values to call");
     }},
    // sprig: defaults and flow.
    {"default", 1, -1, [](const Call& c) {
       return c.args.size() < 2 || !truth(c.args[1]) ? c.args[0] : c.args[1];
     }},
    {"empty", 1, 1, [](const Call& c) { return Value::of(!truth(c.args[0])); }},
    {"coalesce", 0, -1, [](const Call& c) {
       for (const Value& v : c.args)
         if (truth(v)) return v;
       return Value::nil();
     }},
    {"all", 0, -1, [](const Call& c) {
       return Value::of(std::all_of(c.args.begin(), c.args.end(), truth));
     }},
    {"any", 0, -1, [](const Call& c) {
       return Value::of(std::any_of(c.args.begin(), c.args.end(), truth));
     }},
    {"ternary", 3, 3, [](const Call& c) { return c.boolean(2) ? c.args[0] : c.args[1]; }},
    {"fail", 1, 1, [](const Call& c) -> Value { c.error(c.str(0)); }},
    // sprig: strings.
    {"trunc", 2, 2, fn_trunc},
    {"trim", 1, 1, [](const Call& c) { return c.string(std::string(trim_space(c.str(0)))); }},
    {"trimAll", 2, 2, [](const Call& c) {
       return c.string(std::string(trim_cutset(c.str(1), c.str(0))));
     }},
    {"trimall", 2, 2, [](const Call& c) {
       return c.string(std::string(trim_cutset(c.str(1), c.str(0))));
     }},
    {"trimPrefix", 2, 2, [](const Call& c) {
       std::string_view s = c.str(1);
       if (s.starts_with(c.str(0))) s.remove_prefix(c.str(0).size());
       return c.string(std::string(s));
     }},
    {"trimSuffix", 2, 2, [](const Call& c) {
       std::string_view s = c.str(1);
       if (s.ends_with(c.str(0))) s.remove_suffix(c.str(0).size());
       return c.string(std::string(s));
     }},
    {"upper", 1, 1, [](const Call& c) { return c.string(ascii_case(c.str(0), true)); }},
    {"lower", 1, 1, [](const Call& c) { return c.string(ascii_case(c.str(0), false)); }},
    {"title", 1, 1, [](const Call& c) { return c.string(title_case(c.str(0))); }},
    {"untitle", 1, 1, [](const Call& c) { return c.string(first_letters(c.str(0), false)); }},
    {"nospace", 1, 1, [](const Call& c) {
       std::string s = c.str(0);
       s.erase(std::remove_if(s.begin(), s.end(), is_ascii_space), s.end());
       return c.string(std::move(s));
     }},
    {"replace", 3, 3, [](const Call& c) {
       return c.string(replace_all(c.str(2), c.str(0), c.str(1)));
     }},
    {"repeat", 2, 2, fn_repeat},
    {"substr", 3, 3, fn_substr},
    {"contains", 2, 2, [](const Call& c) {
       return Value::of(c.str(1).find(c.str(0)) != std::string::npos);
     }},
    {"hasPrefix", 2, 2, [](const Call& c) { return Value::of(c.str(1).starts_with(c.str(0))); }},
    {"hasSuffix", 2, 2, [](const Call& c) { return Value::of(c.str(1).ends_with(c.str(0))); }},
    {"quote", 0, -1, fn_quote},
    {"squote", 0, -1, fn_squote},
    {"cat", 0, -1, fn_cat},
    {"indent", 2, 2, [](const Call& c) { return c.string(indent(c)); }},
    {"nindent", 2, 2, [](const Call& c) { return c.string("\n" + indent(c)); }},
    {"plural", 3, 3, [](const Call& c) { return c.integer(2) == 1 ? c.args[0] : c.args[1]; }},
    {"split", 2, 2, [](const Call& c) { return split_map(c, split_go(c.str(1), c.str(0), -1)); }},
    {"splitn", 3, 3, [](const Call& c) {
       return split_map(c, split_go(c.str(2), c.str(0), c.integer(1)));
     }},
    {"splitList", 2, 2, [](const Call& c) { return c.strings(split_go(c.str(1), c.str(0), -1)); }},
    {"join", 2, 2, [](const Call& c) {
       return c.string(join(string_slice(c.args[1], c.heap), c.str(0)));
     }},
    {"toString", 1, 1, [](const Call& c) { return c.string(to_text(c.args[0], c.heap)); }},
    {"toStrings", 1, 1, [](const Call& c) {
       std::vector<std::string> s = string_slice(c.args[0], c.heap);
       return c.strings(std::vector<std::string_view>(s.begin(), s.end()));
     }},
    {"sortAlpha", 1, 1, fn_sort_alpha},
    // sprig: encodings and JSON.
    {"b64enc", 1, 1, [](const Call& c) { return c.string(base64_encode(c.str(0))); }},
    {"b64dec", 1, 1, [](const Call& c) { return c.string(base64_decode(c.str(0))); }},
    {"sha256sum", 1, 1, [](const Call& c) { return c.string(sha256_hex(c.str(0))); }},
    {"toJson", 1, 1, [](const Call& c) { return json_function(c, true, -1, false); }},
    {"mustToJson", 1, 1, [](const Call& c) { return json_function(c, true, -1, true); }},
    {"toPrettyJson", 1, 1, [](const Call& c) { return json_function(c, true, 2, false); }},
    {"mustToPrettyJson", 1, 1, [](const Call& c) { return json_function(c, true, 2, true); }},
    {"toRawJson", 1, 1, [](const Call& c) { return json_function(c, false, -1, false); }},
    {"mustToRawJson", 1, 1, [](const Call& c) { return json_function(c, false, -1, true); }},
    {"fromJson", 1, 1, [](const Call& c) { return from_json_function(c, false); }},
    {"mustFromJson", 1, 1, [](const Call& c) { return from_json_function(c, true); }},
    // sprig: the environment, which a node's config must not read: it is empty.
    {"env", 1, 1, [](const Call& c) {
       c.str(0);
       return c.string("");
     }},
    {"expandenv", 1, 1, [](const Call& c) { return c.string(expand_empty_env(c.str(0))); }},
    // sprig: dicts.
    {"dict", 0, -1, fn_dict},
    {"get", 2, 2, [](const Call& c) {
       Map* m = c.map(0);
       auto it = m ? m->find(c.str(1)) : Map::iterator();
       return m && it != m->end() ? it->second : c.string("");
     }},
    {"set", 3, 3, fn_set},
    {"unset", 2, 2, fn_unset},
    {"hasKey", 2, 2, [](const Call& c) {
       Map* m = c.map(0);
       return Value::of(m != nullptr && m->find(c.str(1)) != m->end());
     }},
    {"keys", 0, -1, fn_keys},
    {"values", 1, 1, [](const Call& c) {
       List out;
       if (Map* m = c.map(0))
         for (const auto& entry : *m) out.push_back(entry.second);
       return c.heap.list(std::move(out));
     }},
    {"pluck", 1, -1, [](const Call& c) {
       List out;
       for (std::size_t i = 1; i < c.args.size(); ++i)
         if (Map* m = c.map(i))
           if (auto it = m->find(c.str(0)); it != m->end()) out.push_back(it->second);
       return c.heap.list(std::move(out));
     }},
    {"pick", 1, -1, [](const Call& c) { return select_keys(c, true); }},
    {"omit", 1, -1, [](const Call& c) { return select_keys(c, false); }},
    // sprig: lists.
    {"list", 0, -1, [](const Call& c) { return c.heap.list(List(c.args.begin(), c.args.end())); }},
    {"tuple", 0, -1, [](const Call& c) { return c.heap.list(List(c.args.begin(), c.args.end())); }},
    {"first", 1, 1, [](const Call& c) { return fn_first_last(c, true); }},
    {"mustFirst", 1, 1, [](const Call& c) { return fn_first_last(c, true); }},
    {"last", 1, 1, [](const Call& c) { return fn_first_last(c, false); }},
    {"mustLast", 1, 1, [](const Call& c) { return fn_first_last(c, false); }},
    {"rest", 1, 1, [](const Call& c) { return fn_rest_initial(c, true); }},
    {"mustRest", 1, 1, [](const Call& c) { return fn_rest_initial(c, true); }},
    {"initial", 1, 1, [](const Call& c) { return fn_rest_initial(c, false); }},
    {"mustInitial", 1, 1, [](const Call& c) { return fn_rest_initial(c, false); }},
    {"append", 2, 2, [](const Call& c) { return fn_push(c, false); }},
    {"push", 2, 2, [](const Call& c) { return fn_push(c, false); }},
    {"mustAppend", 2, 2, [](const Call& c) { return fn_push(c, false); }},
    {"mustPush", 2, 2, [](const Call& c) { return fn_push(c, false); }},
    {"prepend", 2, 2, [](const Call& c) { return fn_push(c, true); }},
    {"mustPrepend", 2, 2, [](const Call& c) { return fn_push(c, true); }},
    {"concat", 0, -1, fn_concat},
    {"uniq", 1, 1, fn_uniq},
    {"mustUniq", 1, 1, fn_uniq},
    {"without", 1, -1, fn_without},
    {"mustWithout", 1, -1, fn_without},
    {"has", 2, 2, fn_has},
    {"mustHas", 2, 2, fn_has},
    {"mustSlice", 1, 3, fn_slice},
    {"reverse", 1, 1, fn_reverse},
    {"mustReverse", 1, 1, fn_reverse},
    {"compact", 1, 1, fn_compact},
    {"mustCompact", 1, 1, fn_compact},
    {"until", 1, 1, [](const Call& c) {
       std::int64_t n = c.integer(0);
       return until_step(c, 0, n, n < 0 ? -1 : 1);
     }},
    {"untilStep", 3, 3, [](const Call& c) {
       return until_step(c, c.integer(0), c.integer(1), c.integer(2));
     }},
    // sprig: integer math (through cast.ToInt64) and conversions.
    {"add", 0, -1, fn_add},
    {"add1", 1, 1, [](const Call& c) {
       return Value::of(wrap(static_cast<std::uint64_t>(cast_int(c.args[0])) + 1));
     }},
    {"sub", 2, 2, [](const Call& c) {
       return Value::of(wrap(static_cast<std::uint64_t>(cast_int(c.args[0])) -
                             static_cast<std::uint64_t>(cast_int(c.args[1]))));
     }},
    {"mul", 1, -1, fn_mul},
    {"div", 2, 2, [](const Call& c) { return fn_div_mod(c, false); }},
    {"mod", 2, 2, [](const Call& c) { return fn_div_mod(c, true); }},
    {"max", 1, -1, [](const Call& c) { return fn_extreme(c, true); }},
    {"biggest", 1, -1, [](const Call& c) { return fn_extreme(c, true); }},
    {"min", 1, -1, [](const Call& c) { return fn_extreme(c, false); }},
    {"atoi", 1, 1, fn_atoi},
    {"int", 1, 1, [](const Call& c) { return Value::of(cast_int(c.args[0])); }},
    {"int64", 1, 1, [](const Call& c) { return Value::of(cast_int(c.args[0])); }},
    {"float64", 1, 1, [](const Call& c) { return Value::of(cast_float(c.args[0])); }},
    // sprig: reflection.
    {"typeOf", 1, 1, [](const Call& c) { return c.string(std::string(type_name(c.args[0]))); }},
    {"typeIs", 2, 2, [](const Call& c) { return Value::of(c.str(0) == type_name(c.args[1])); }},
    {"kindOf", 1, 1, [](const Call& c) { return c.string(std::string(kind_name(c.args[0]))); }},
    {"kindIs", 2, 2, [](const Call& c) { return Value::of(c.str(0) == kind_name(c.args[1])); }},
    {"deepEqual", 2, 2, [](const Call& c) {
       return Value::of(deep_equal(c.args[0], c.args[1], c.heap));
     }},
    // sprig: regular expressions.
    {"regexMatch", 2, 2, [](const Call& c) { return fn_regex_match(c, false); }},
    {"mustRegexMatch", 2, 2, [](const Call& c) { return fn_regex_match(c, true); }},
    {"regexFind", 2, 2, fn_regex_find},
    {"mustRegexFind", 2, 2, fn_regex_find},
    {"regexFindAll", 3, 3, fn_regex_find_all},
    {"mustRegexFindAll", 3, 3, fn_regex_find_all},
    {"regexReplaceAll", 3, 3, [](const Call& c) { return fn_regex_replace(c, false); }},
    {"mustRegexReplaceAll", 3, 3, [](const Call& c) { return fn_regex_replace(c, false); }},
    {"regexReplaceAllLiteral", 3, 3, [](const Call& c) { return fn_regex_replace(c, true); }},
    {"mustRegexReplaceAllLiteral", 3, 3, [](const Call& c) { return fn_regex_replace(c, true); }},
    {"regexSplit", 3, 3, fn_regex_split},
    {"mustRegexSplit", 3, 3, fn_regex_split},
    {"regexQuoteMeta", 1, 1, [](const Call& c) { return c.string(quote_meta(c.str(0))); }},
};

const Builtin* find_function(std::string_view name) {
  for (const Builtin& b : kBuiltins)
    if (b.name == name) return &b;
  return nullptr;
}

// ---- lexer -------------------------------------------------------------------------------------

enum class Tok {
  kText,
  kLeft,
  kRight,
  kSpace,
  kIdentifier,
  kField,
  kDot,
  kVariable,
  kDeclare,
  kAssign,
  kPipe,
  kLeftParen,
  kRightParen,
  kComma,
  kString,
  kRawString,
  kChar,
  kNumber,
  kEof,
};

struct Token {
  Tok kind;
  std::string_view text;
  int line;
};

bool is_template_space(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}
bool is_alphanumeric(char c) {
  return is_word_char(c) || static_cast<unsigned char>(c) >= 0x80;
}

// Splits a template into text and the tokens of its actions. Trim markers ("{{- " and " -}}")
// cut the spaces of the text next to them here; comments leave nothing.
class Lexer {
 public:
  explicit Lexer(std::string_view in) : in_(in) {}

  std::vector<Token> run() {
    while (lex_text()) lex_action();
    tokens_.push_back({Tok::kEof, {}, line_at(in_.size())});
    return std::move(tokens_);
  }

  // The line of the last error.
  int error_line() const { return error_line_; }

 private:
  [[noreturn]] void error(std::size_t at, std::string what) {
    error_line_ = 1 + static_cast<int>(std::count(
                          in_.begin(), in_.begin() + static_cast<std::ptrdiff_t>(at), '\n'));
    fail(std::move(what));
  }

  // The line of offset `at`; offsets are asked for in increasing order.
  int line_at(std::size_t at) {
    for (; counted_ < at && counted_ < in_.size(); ++counted_)
      if (in_[counted_] == '\n') ++line_;
    return line_;
  }

  bool left_trim_at(std::size_t at) const {
    return at + 1 < in_.size() && in_[at] == '-' && is_template_space(in_[at + 1]);
  }
  // At " -}}" or "}}": the length of the right delimiter there, else 0.
  std::size_t right_delim_at(std::size_t at) const {
    std::string_view rest = in_.substr(at);
    if (rest.size() >= 4 && is_template_space(rest[0]) && rest[1] == '-' &&
        rest.substr(2, 2) == "}}")
      return 4;
    return rest.starts_with("}}") ? 2 : 0;
  }

  void emit(Tok kind, std::size_t from, std::size_t to) {
    tokens_.push_back({kind, in_.substr(from, to - from), line_at(from)});
  }

  // Text up to the next action; false at the end of the input.
  bool lex_text() {
    std::size_t start = pos_;
    if (trim_next_)
      while (start < in_.size() && is_template_space(in_[start])) ++start;
    trim_next_ = false;
    std::size_t action = in_.find("{{", start);
    std::size_t end = action == std::string_view::npos ? in_.size() : action;
    if (action != std::string_view::npos && left_trim_at(action + 2))
      while (end > start && is_template_space(in_[end - 1])) --end;
    if (end > start) emit(Tok::kText, start, end);
    if (action == std::string_view::npos) return false;
    pos_ = action;
    return true;
  }

  void lex_action() {
    std::size_t open = pos_;
    pos_ += 2;
    if (left_trim_at(pos_)) pos_ += 2;
    if (in_.substr(pos_).starts_with("/*")) return lex_comment(open);
    emit(Tok::kLeft, open, pos_);
    for (;;) {
      if (std::size_t close = right_delim_at(pos_)) {
        emit(Tok::kRight, pos_, pos_ + close);
        trim_next_ = close == 4;
        pos_ += close;
        return;
      }
      if (pos_ >= in_.size()) error(open, "unclosed action");
      lex_item();
    }
  }

  void lex_comment(std::size_t open) {
    std::size_t end = in_.find("*/", pos_ + 2);
    if (end == std::string_view::npos) error(open, "unclosed comment");
    pos_ = end + 2;
    std::size_t close = right_delim_at(pos_);
    if (close == 0) error(open, "comment ends before closing delimiter");
    trim_next_ = close == 4;
    pos_ += close;
  }

  void lex_item() {
    std::size_t start = pos_;
    char c = in_[pos_];
    if (is_template_space(c)) {
      // Spaces up to a " -}}", whose space belongs to the delimiter.
      while (pos_ < in_.size() && is_template_space(in_[pos_]) && right_delim_at(pos_) != 4) ++pos_;
      if (pos_ > start) emit(Tok::kSpace, start, pos_);
      return;
    }
    switch (c) {
      case ':':
        if (pos_ + 1 >= in_.size() || in_[pos_ + 1] != '=') error(pos_, "expected :=");
        pos_ += 2;
        return emit(Tok::kDeclare, start, pos_);
      case '=':
        return single(Tok::kAssign);
      case '|':
        return single(Tok::kPipe);
      case '(':
        return single(Tok::kLeftParen);
      case ')':
        return single(Tok::kRightParen);
      case ',':
        return single(Tok::kComma);
      case '"':
        return quoted('"', Tok::kString, "unterminated quoted string");
      case '\'':
        return quoted('\'', Tok::kChar, "unterminated character constant");
      case '`': {
        std::size_t end = in_.find('`', pos_ + 1);
        if (end == std::string_view::npos) error(pos_, "unterminated raw quoted string");
        pos_ = end + 1;
        return emit(Tok::kRawString, start, pos_);
      }
      case '$':
        return word(Tok::kVariable);
      case '.':
        if (pos_ + 1 < in_.size() && is_ascii_digit(in_[pos_ + 1])) return number();
        if (pos_ + 1 < in_.size() && is_alphanumeric(in_[pos_ + 1])) return word(Tok::kField);
        return single(Tok::kDot);
      default:
        break;
    }
    if (c == '+' || c == '-' || is_ascii_digit(c)) return number();
    if (is_alphanumeric(c)) return word(Tok::kIdentifier);
    auto [r, n] = decode_rune(in_.substr(pos_));
    error(pos_,
          fmt::format("unrecognized character in action: U+{:04X}", static_cast<unsigned>(r)));
  }

  void single(Tok kind) {
    ++pos_;
    emit(kind, pos_ - 1, pos_);
  }

  void quoted(char quote, Tok kind, std::string_view unterminated) {
    std::size_t start = pos_++;
    for (;;) {
      if (pos_ >= in_.size() || in_[pos_] == '\n') error(start, std::string(unterminated));
      char c = in_[pos_++];
      if (c == '\\') {
        if (pos_ >= in_.size() || in_[pos_] == '\n') error(start, std::string(unterminated));
        ++pos_;
      } else if (c == quote) {
        return emit(kind, start, pos_);
      }
    }
  }

  // An identifier, a field (".Name") or a variable ("$name", "$"), which must end at a space,
  // a delimiter or punctuation.
  void word(Tok kind) {
    std::size_t start = pos_;
    if (kind != Tok::kIdentifier) ++pos_;
    while (pos_ < in_.size() && is_alphanumeric(in_[pos_])) ++pos_;
    emit(kind, start, pos_);
    if (pos_ < in_.size() && !is_template_space(in_[pos_]) &&
        std::string_view(".,|:()=").find(in_[pos_]) == std::string_view::npos &&
        !in_.substr(pos_).starts_with("}}"))
      error(pos_, fmt::format("bad character U+{:04X}",
                              static_cast<unsigned>(decode_rune(in_.substr(pos_)).first)));
  }

  // Go's number syntax, checked loosely here and exactly when the parser reads its value.
  void number() {
    std::size_t start = pos_;
    if (in_[pos_] == '+' || in_[pos_] == '-') ++pos_;
    std::string_view digits = "0123456789_";
    std::string_view rest = in_.substr(pos_);
    if (rest.size() > 1 && rest[0] == '0' &&
        std::string_view("xXoObB").find(rest[1]) != std::string_view::npos) {
      char b = static_cast<char>(rest[1] | 0x20);
      digits = b == 'x' ? "0123456789abcdefABCDEF_" : b == 'o' ? "01234567_" : "01_";
      pos_ += 2;
    }
    auto run = [&](std::string_view set) {
      while (pos_ < in_.size() && set.find(in_[pos_]) != std::string_view::npos) ++pos_;
    };
    auto accept = [&](std::string_view set) {
      if (pos_ < in_.size() && set.find(in_[pos_]) != std::string_view::npos) return ++pos_, true;
      return false;
    };
    run(digits);
    if (accept(".")) run(digits);
    if (digits.size() == 11 && accept("eE")) accept("+-"), run("0123456789_");
    if (digits.size() == 23 && accept("pP")) accept("+-"), run("0123456789_");
    accept("i");
    if (pos_ < in_.size() && is_alphanumeric(in_[pos_]))
      error(start, fmt::format("bad number syntax: \"{}\"", in_.substr(start, pos_ + 1 - start)));
    emit(Tok::kNumber, start, pos_);
  }

  std::string_view in_;
  std::size_t pos_ = 0;
  std::size_t counted_ = 0;
  int line_ = 1;
  int error_line_ = 1;
  bool trim_next_ = false;
  std::vector<Token> tokens_;
};

// ---- parse tree --------------------------------------------------------------------------------

struct Pipeline;

// One operand of a command, with the fields read from it (".A.B" of "$x.A.B" or "(...).A.B").
struct Term {
  enum class Kind { kLiteral, kNil, kDot, kField, kVariable, kFunction, kPipeline };
  Term(Kind k, int l, std::string_view t) : kind(k), line(l), text(t) {}

  Kind kind;
  int line = 0;
  std::string_view text;  // as written, for messages; the name of a variable or function
  Value literal;
  std::vector<std::string_view> fields;
  std::unique_ptr<Pipeline> pipeline;
  const Builtin* function = nullptr;
};

struct Command {
  int line = 0;
  std::vector<Term> terms;
};

struct Pipeline {
  int line = 0;
  std::vector<std::string_view> variables;  // declared (":=") or assigned ("=")
  bool assign = false;
  std::vector<Command> commands;
};

struct Node {
  enum class Kind { kText, kAction, kIf, kRange, kWith, kTemplate, kBreak, kContinue };
  Node(Kind k, int l, std::string_view t = {}) : kind(k), line(l), text(t) {}

  Kind kind;
  int line = 0;
  std::string_view text;  // the text; the called template's name
  std::unique_ptr<Pipeline> pipeline;
  std::vector<Node> body, else_body;
};

using NodeList = std::vector<Node>;

struct Tree {
  NodeList main;
  std::map<std::string, NodeList, std::less<>> templates;
  std::deque<std::string> strings;  // the string literals, unquoted
};

// ---- parser ------------------------------------------------------------------------------------

// Go's unquoting of "..." and '...' literals: \x and octal escapes are bytes, \u and \U runes.
std::optional<std::string> unquote(std::string_view lit) {
  char quote = lit[0];
  std::string_view s = lit.substr(1, lit.size() - 2);
  std::string out;
  auto hex = [&](std::size_t n) -> std::optional<std::uint32_t> {
    std::uint32_t v = 0;
    if (s.size() < n) return std::nullopt;
    auto r = std::from_chars(s.data(), s.data() + n, v, 16);
    if (r.ptr != s.data() + n) return std::nullopt;
    s.remove_prefix(n);
    return v;
  };
  while (!s.empty()) {
    char c = s[0];
    s.remove_prefix(1);
    if (c == quote) return std::nullopt;
    if (c != '\\') {
      out += c;
      continue;
    }
    if (s.empty()) return std::nullopt;
    char e = s[0];
    s.remove_prefix(1);
    static constexpr std::string_view kSimple = "abfnrtv\\";
    static constexpr std::string_view kValues = "\a\b\f\n\r\t\v\\";
    if (auto k = kSimple.find(e); k != std::string_view::npos) {
      out += kValues[k];
    } else if (e == quote) {
      out += e;
    } else if (e == 'x') {
      auto v = hex(2);
      if (!v) return std::nullopt;
      out += static_cast<char>(*v);
    } else if (e == 'u' || e == 'U') {
      auto v = hex(e == 'u' ? 4 : 8);
      if (!v || *v > 0x10FFFF || (*v >= 0xD800 && *v <= 0xDFFF)) return std::nullopt;
      append_rune(out, *v);
    } else if (e >= '0' && e <= '7') {
      if (s.size() < 2 || s[0] < '0' || s[0] > '7' || s[1] < '0' || s[1] > '7') return std::nullopt;
      int v = (e - '0') * 64 + (s[0] - '0') * 8 + (s[1] - '0');
      if (v > 255) return std::nullopt;
      out += static_cast<char>(v);
      s.remove_prefix(2);
    } else {
      return std::nullopt;
    }
  }
  return out;
}

constexpr std::string_view kKeywords[] = {"if",     "else",     "end",   "range", "with",
                                          "define", "template", "block", "break", "continue"};

bool is_keyword(std::string_view word) {
  return std::find(std::begin(kKeywords), std::end(kKeywords), word) != std::end(kKeywords);
}

class Parser {
 public:
  Parser(std::vector<Token> tokens, Tree& tree) : tokens_(std::move(tokens)), tree_(tree) {}

  void parse() {
    switch (list(tree_.main, true)) {
      case End::kEof:
        return;
      case End::kEnd:
        fail("unexpected {{end}}");
      case End::kElse:
        fail("unexpected {{else}}");
    }
  }

  // The line of the token read last, for an error's message.
  int line() const { return line_; }

 private:
  enum class End { kEof, kEnd, kElse };

  const Token& peek() const { return tokens_[pos_]; }
  const Token& next() {
    const Token& t = tokens_[pos_ < tokens_.size() - 1 ? pos_++ : pos_];
    line_ = t.line;
    return t;
  }
  void skip_space() {
    while (peek().kind == Tok::kSpace) ++pos_;
  }
  const Token& next_non_space() {
    skip_space();
    return next();
  }
  bool at_keyword(std::string_view word) {
    skip_space();
    return peek().kind == Tok::kIdentifier && peek().text == word;
  }
  void expect_right(std::string_view context) {
    const Token& t = next_non_space();
    if (t.kind != Tok::kRight) unexpected(t, context);
  }
  [[noreturn]] void unexpected(const Token& t, std::string_view context) {
    if (t.kind == Tok::kEof) fail("unexpected EOF");
    if (t.kind == Tok::kRight && nesting_parens_ > 0) fail("unclosed left paren");
    if (t.kind == Tok::kRightParen && nesting_parens_ == 0) fail("unexpected right paren");
    fail(fmt::format("unexpected \"{}\" in {}", t.text, context));
  }
  void enter() {
    if (++nesting_ > kMaxTemplateNesting)
      fail(fmt::format("actions nested deeper than {} levels", kMaxTemplateNesting));
  }

  // Nodes up to an {{end}} or {{else}} (its "else" read) or the end of the input.
  End list(NodeList& out, bool top_level) {
    for (;;) {
      const Token& t = next();
      if (t.kind == Tok::kEof) return End::kEof;
      if (t.kind == Tok::kText) {
        out.push_back(Node{Node::Kind::kText, t.line, t.text});
        continue;
      }
      skip_space();
      const Token& word = peek();
      int line = word.line;
      if (word.kind == Tok::kIdentifier && is_keyword(word.text)) {
        next();
        if (word.text == "else") return End::kElse;
        if (word.text == "end") {
          expect_right("end");
          return End::kEnd;
        }
        keyword(word.text, line, out, top_level);
        continue;
      }
      Node action{Node::Kind::kAction, line};
      action.pipeline = pipeline("command", Tok::kRight);
      out.push_back(std::move(action));
    }
  }

  void keyword(std::string_view word, int line, NodeList& out, bool top_level) {
    if (word == "if") return out.push_back(control(Node::Kind::kIf, "if", line));
    if (word == "range") return out.push_back(control(Node::Kind::kRange, "range", line));
    if (word == "with") return out.push_back(control(Node::Kind::kWith, "with", line));
    if (word == "template") return out.push_back(template_call(line));
    if (word == "block") return out.push_back(block(line));
    if (word == "define") {
      if (!top_level) fail("unexpected {{define}}: a define must be at the top level");
      return define();
    }
    // break and continue
    if (range_depth_ == 0) fail(fmt::format("{{{{{}}}}} outside {{{{range}}}}", word));
    expect_right(word);
    out.push_back(Node{word == "break" ? Node::Kind::kBreak : Node::Kind::kContinue, line});
  }

  // {{if}}, {{range}} and {{with}}, with their {{else}} and {{else if}} / {{else with}} chains.
  Node control(Node::Kind kind, std::string_view context, int line) {
    enter();
    std::size_t mark = variables_.size();
    Node node{kind, line};
    node.pipeline = pipeline(context, Tok::kRight);
    if (kind == Node::Kind::kRange) ++range_depth_;
    End end = list(node.body, false);
    if (kind == Node::Kind::kRange) --range_depth_;
    if (end == End::kEof) fail("unexpected EOF");
    if (end == End::kElse) {
      // "{{else if ...}}" is an {{if}} in the else branch that shares this {{end}}.
      if (kind != Node::Kind::kRange && at_keyword(context)) {
        int chained = next().line;
        node.else_body.push_back(control(kind, context, chained));
      } else {
        expect_right("else");
        End second = list(node.else_body, false);
        if (second == End::kElse) fail("expected end; found {{else}}");
        if (second == End::kEof) fail("unexpected EOF");
      }
    }
    variables_.resize(mark);
    --nesting_;
    return node;
  }

  std::string_view template_name(std::string_view context) {
    const Token& t = next_non_space();
    if (t.kind != Tok::kString && t.kind != Tok::kRawString) unexpected(t, context);
    return string_literal(t).str();
  }

  Node template_call(int line) {
    Node node{Node::Kind::kTemplate, line};
    node.text = template_name("template clause");
    skip_space();
    if (peek().kind == Tok::kRight)
      next();
    else
      node.pipeline = pipeline("template clause", Tok::kRight);
    return node;
  }

  // The body of a define or block: its own variables ($ only), no enclosing range.
  NodeList template_body(std::string_view context) {
    std::vector<std::string_view> saved_variables = std::exchange(variables_, {"$"});
    int saved_range = std::exchange(range_depth_, 0);
    enter();
    NodeList body;
    End end = list(body, false);
    if (end == End::kEof) fail("unexpected EOF");
    if (end == End::kElse) fail(fmt::format("unexpected {{{{else}}}} in {}", context));
    --nesting_;
    variables_ = std::move(saved_variables);
    range_depth_ = saved_range;
    return body;
  }

  void define() {
    std::string_view name = template_name("define clause");
    expect_right("define clause");
    add_template(name, template_body("define"));
  }

  // {{block "name" pipeline}} T {{end}}: defines "name" as T and calls it.
  Node block(int line) {
    Node node{Node::Kind::kTemplate, line};
    node.text = template_name("block clause");
    node.pipeline = pipeline("block clause", Tok::kRight);
    add_template(node.text, template_body("block"));
    return node;
  }

  static bool is_empty(const NodeList& body) {
    return std::all_of(body.begin(), body.end(), [](const Node& n) {
      return n.kind == Node::Kind::kText && trim_space(n.text).empty();
    });
  }

  // Go's rule: a template may be defined twice only when one of the bodies is empty.
  void add_template(std::string_view name, NodeList body) {
    auto it = tree_.templates.find(name);
    if (it == tree_.templates.end()) {
      tree_.templates.emplace(std::string(name), std::move(body));
    } else if (is_empty(it->second)) {
      it->second = std::move(body);
    } else if (!is_empty(body)) {
      fail(fmt::format("template: multiple definition of template \"{}\"", name));
    }
  }

  bool declared(std::string_view name) const {
    return std::find(variables_.begin(), variables_.end(), name) != variables_.end();
  }

  // "$x :=", "$x =", "$i, $e :=" at the start of a pipeline; nothing read when there is none.
  void declarations(Pipeline& p, std::string_view context) {
    std::size_t start = pos_;
    skip_space();
    std::vector<std::string_view> names;
    while (peek().kind == Tok::kVariable) {
      names.push_back(next().text);
      skip_space();
      if (peek().kind == Tok::kComma && names.size() == 1) {
        next();
        skip_space();
        continue;
      }
      break;
    }
    Tok op = peek().kind;
    if (names.empty() || (op != Tok::kDeclare && op != Tok::kAssign)) {
      pos_ = start;
      return;
    }
    next();
    if (names.size() > 1 && context != "range")
      fail(fmt::format("too many declarations in {}", context));
    p.assign = op == Tok::kAssign;
    for (auto name : names)
      if (p.assign && !declared(name)) fail(fmt::format("undefined variable \"{}\"", name));
    p.variables = std::move(names);
  }

  std::unique_ptr<Pipeline> pipeline(std::string_view context, Tok end) {
    auto p = std::make_unique<Pipeline>();
    p->line = peek().line;
    declarations(*p, context);
    for (;;) {
      skip_space();
      if (peek().kind == end && p->commands.empty())
        fail(fmt::format("missing value for {}", context));
      p->commands.push_back(command(end));
      const Token& t = next();
      if (t.kind == end) break;
      if (t.kind != Tok::kPipe) unexpected(t, context);
    }
    for (std::size_t i = 1; i < p->commands.size(); ++i) {
      Term::Kind k = p->commands[i].terms[0].kind;
      if (k == Term::Kind::kLiteral || k == Term::Kind::kDot || k == Term::Kind::kNil)
        fail(fmt::format("non executable command in pipeline stage {}", i + 1));
    }
    if (!p->assign)
      for (auto name : p->variables) variables_.push_back(name);
    return p;
  }

  // Operands up to a '|' or the end of the pipeline (which are left to read).
  Command command(Tok end) {
    Command c;
    c.line = peek().line;
    for (;;) {
      skip_space();
      const Token& t = peek();
      if (t.kind == Tok::kPipe || t.kind == end) break;
      if (t.kind == Tok::kRight || t.kind == Tok::kRightParen || t.kind == Tok::kEof)
        unexpected(t, "command");
      c.terms.push_back(operand());
      Tok after = peek().kind;
      if (after != Tok::kSpace && after != Tok::kPipe && after != end)
        unexpected(peek(), "operand");
    }
    if (c.terms.empty()) fail("missing command");
    return c;
  }

  Term operand() {
    Term t = term();
    while (peek().kind == Tok::kField) {
      if (t.kind != Term::Kind::kField && t.kind != Term::Kind::kVariable &&
          t.kind != Term::Kind::kPipeline)
        fail(fmt::format("unexpected . after term \"{}\"", t.text));
      t.fields.push_back(next().text.substr(1));
    }
    return t;
  }

  Value string_literal(const Token& t) {
    std::string value;
    if (t.kind == Tok::kRawString) {
      // Go drops carriage returns from raw strings.
      for (char c : t.text.substr(1, t.text.size() - 2))
        if (c != '\r') value += c;
    } else if (auto s = unquote(t.text)) {
      value = std::move(*s);
    } else {
      fail(fmt::format("invalid syntax in string {}", t.text));
    }
    tree_.strings.push_back(std::move(value));
    return Value::of(&tree_.strings.back());
  }

  Value char_literal(const Token& t) {
    auto s = unquote(t.text);
    if (!s || s->empty()) fail(fmt::format("malformed character constant: {}", t.text));
    auto [r, n] = decode_rune(*s);
    if (n != s->size()) fail(fmt::format("malformed character constant: {}", t.text));
    if (t.text.size() >= 4 && t.text[1] == '\\' && (t.text[2] == 'x' || is_ascii_digit(t.text[2])))
      r = static_cast<unsigned char>((*s)[0]);
    return Value::of(static_cast<std::int64_t>(r));
  }

  // Go's number literals: ints (decimal, 0x, 0o, 0b, 0) and floats; no complex numbers.
  Value number_literal(std::string_view text) {
    if (text.ends_with("i")) fail(fmt::format("complex number {} is not supported", text));
    if (auto i = parse_go_int(text)) return Value::of(*i);
    bool decimal = text.find_first_of("xX") == std::string_view::npos;
    if (decimal && text.find_first_of(".eE") != std::string_view::npos)
      if (auto f = parse_go_float(text); f && std::isfinite(*f)) return Value::of(*f);
    if (decimal && text.find_first_of("0123456789") != std::string_view::npos &&
        text.find_first_not_of("+-0123456789_") == std::string_view::npos)
      fail(fmt::format("number {} overflows int", text));
    fail(fmt::format("illegal number syntax: \"{}\"", text));
  }

  Term term() {
    const Token& t = next();
    Term term{Term::Kind::kLiteral, t.line, t.text};
    switch (t.kind) {
      case Tok::kIdentifier:
        identifier(term);
        break;
      case Tok::kDot:
        term.kind = Term::Kind::kDot;
        break;
      case Tok::kField:
        term.kind = Term::Kind::kField;
        term.fields.push_back(t.text.substr(1));
        break;
      case Tok::kVariable:
        if (!declared(t.text)) fail(fmt::format("undefined variable \"{}\"", t.text));
        term.kind = Term::Kind::kVariable;
        break;
      case Tok::kLeftParen:
        enter();
        ++nesting_parens_;
        term.kind = Term::Kind::kPipeline;
        term.pipeline = pipeline("parenthesized pipeline", Tok::kRightParen);
        --nesting_parens_;
        --nesting_;
        break;
      case Tok::kString:
      case Tok::kRawString:
        term.literal = string_literal(t);
        break;
      case Tok::kChar:
        term.literal = char_literal(t);
        break;
      case Tok::kNumber:
        term.literal = number_literal(t.text);
        break;
      default:
        unexpected(t, "operand");
    }
    return term;
  }

  void identifier(Term& term) {
    if (term.text == "true" || term.text == "false") {
      term.literal = Value::of(term.text == "true");
    } else if (term.text == "nil") {
      term.kind = Term::Kind::kNil;
    } else if (is_keyword(term.text)) {
      fail(fmt::format("unexpected <{}> in operand", term.text));
    } else {
      term.function = find_function(term.text);
      if (term.function == nullptr) fail(fmt::format("function \"{}\" not defined", term.text));
      term.kind = Term::Kind::kFunction;
    }
  }

  std::vector<Token> tokens_;
  Tree& tree_;
  std::size_t pos_ = 0;
  std::vector<std::string_view> variables_{"$"};
  int range_depth_ = 0;
  int nesting_ = 0;
  int nesting_parens_ = 0;
  int line_ = 1;
};

// ---- renderer ----------------------------------------------------------------------------------

// What an argument costs to pass: the bytes or elements a function may read of it.
std::uint64_t weight(const Value& v) {
  switch (v.kind()) {
    case Kind::kString:
      return v.str().size();
    case Kind::kList:
      return v.list().size();
    case Kind::kMap:
      return v.map().size();
    default:
      return 0;
  }
}

class Renderer {
 public:
  Renderer(const Tree& tree, Heap& heap)
      : tree_(tree), heap_(heap), printer_(out_, heap, "the output") {}

  std::string run(const Value& data) {
    variables_.push_back({"$", data});
    walk(tree_.main, data);
    return std::move(out_);
  }

  // The line of the action being rendered (of the one that failed, after a failure).
  int line() const { return line_; }

 private:
  enum class Flow { kNext, kBreak, kContinue };

  // The line errors are reported at, for the time of one node or command; an exception leaves
  // it at the line that failed. Also bounds the renderer's recursion.
  class At {
   public:
    At(Renderer& r, int line) : r_(r), saved_(r.line_), exceptions_(std::uncaught_exceptions()) {
      r.line_ = line;
      if (++r.depth_ > kMaxExecDepth)
        fail(fmt::format("rendering nests deeper than {} levels", kMaxExecDepth));
      r.heap_.charge(kStepCost);
    }
    ~At() {
      --r_.depth_;
      if (std::uncaught_exceptions() == exceptions_) r_.line_ = saved_;
    }
    At(const At&) = delete;
    At& operator=(const At&) = delete;

   private:
    Renderer& r_;
    int saved_;
    int exceptions_;
  };

  static constexpr std::uint64_t kStepCost = 16;           // the work of one node or command
  static constexpr std::uint64_t kTemplateCallCost = 256;  // a new scope of variables

  Flow walk(const NodeList& list, const Value& dot) {
    for (const Node& n : list)
      if (Flow f = walk_node(n, dot); f != Flow::kNext) return f;
    return Flow::kNext;
  }

  Flow walk_node(const Node& n, const Value& dot) {
    At at(*this, n.line);
    switch (n.kind) {
      case Node::Kind::kText:
        printer_.put(n.text);
        return Flow::kNext;
      case Node::Kind::kAction: {
        Value v = eval_pipeline(*n.pipeline, dot);
        if (n.pipeline->variables.empty()) print(v);
        return Flow::kNext;
      }
      case Node::Kind::kIf:
      case Node::Kind::kWith:
        return walk_if_with(n, dot);
      case Node::Kind::kRange:
        return walk_range(n, dot);
      case Node::Kind::kTemplate:
        walk_template(n, dot);
        return Flow::kNext;
      case Node::Kind::kBreak:
        return Flow::kBreak;
      case Node::Kind::kContinue:
        return Flow::kContinue;
    }
    return Flow::kNext;
  }

  // An action's value as text/template prints it: "<no value>" for nothing, else fmt's %v.
  void print(const Value& v) {
    if (v.is_nil()) return printer_.put("<no value>");
    format_value(printer_, v, FormatSpec{}, 0);
  }

  // Variables declared in a control's pipeline or body live until its {{end}}.
  Flow walk_if_with(const Node& n, const Value& dot) {
    std::size_t mark = variables_.size();
    Value v = eval_pipeline(*n.pipeline, dot);
    Flow f =
        truth(v) ? walk(n.body, n.kind == Node::Kind::kWith ? v : dot) : walk(n.else_body, dot);
    variables_.resize(mark);
    return f;
  }

  Flow walk_range(const Node& n, const Value& dot) {
    std::size_t mark = variables_.size();
    Value v = eval_pipeline(*n.pipeline, dot);
    std::size_t body_mark = variables_.size();
    const auto& names = n.pipeline->variables;
    // One pass of the body; false when it breaks the loop.
    auto iteration = [&](const Value& key, const Value& element) {
      if (++iterations_ > kMaxTemplateIterations)
        fail(fmt::format("range exceeds the limit of {} iterations", kMaxTemplateIterations));
      if (names.size() == 2) {
        assign(names[0], key, n.pipeline->assign, mark);
        assign(names[1], element, n.pipeline->assign, mark + 1);
      } else if (names.size() == 1) {
        assign(names[0], element, n.pipeline->assign, mark);
      }
      Flow f = walk(n.body, element);
      variables_.resize(body_mark);
      return f != Flow::kBreak;
    };
    bool looped = false;
    switch (v.kind()) {
      case Kind::kList: {
        const List& items = v.list();
        for (std::size_t i = 0; i < items.size(); ++i)
          if (looped = true; !iteration(Value::of(static_cast<std::int64_t>(i)), items[i])) break;
        break;
      }
      case Kind::kMap:
        // Over a copy: the body may set and unset the map's keys.
        for (const auto& [key, element] : entries(v.map()))
          if (looped = true; !iteration(key, element)) break;
        break;
      case Kind::kInt:
        if (names.size() == 2) fail("can't use two variables to range over an int");
        for (std::int64_t i = 0; i < v.integer(); ++i)
          if (looped = true; !iteration(Value::of(i), Value::of(i))) break;
        break;
      case Kind::kMissing:
      case Kind::kNil:
        break;
      default: {
        std::string shown;
        Printer p(shown, heap_);
        format_value(p, v, FormatSpec{}, 0);
        fail(fmt::format("range can't iterate over {}", shown));
      }
    }
    Flow f = looped ? Flow::kNext : walk(n.else_body, dot);
    variables_.resize(mark);
    return f;
  }

  std::vector<std::pair<Value, Value>> entries(const Map& m) {
    std::vector<std::pair<Value, Value>> out;
    for (const auto& [key, value] : m) out.emplace_back(heap_.string(key), value);
    return out;
  }

  // Sets a loop variable: a declared one at its place in the scope, an assigned one by name.
  void assign(std::string_view name, const Value& v, bool by_name, std::size_t slot) {
    if (by_name) return set_variable(name, v);
    variables_[slot].second = v;
  }

  void set_variable(std::string_view name, const Value& v) {
    for (auto it = variables_.rbegin(); it != variables_.rend(); ++it)
      if (it->first == name) {
        it->second = v;
        return;
      }
    fail(fmt::format("undefined variable: {}", name));
  }

  Value variable(std::string_view name) const {
    for (auto it = variables_.rbegin(); it != variables_.rend(); ++it)
      if (it->first == name) return it->second;
    fail(fmt::format("undefined variable: {}", name));
  }

  // {{template "name" pipeline}}: the template sees the value as its dot and its $.
  void walk_template(const Node& n, const Value& dot) {
    auto it = tree_.templates.find(n.text);
    if (it == tree_.templates.end()) fail(fmt::format("no such template \"{}\"", n.text));
    Value v = n.pipeline ? eval_pipeline(*n.pipeline, dot) : Value{};
    if (++template_depth_ > kMaxTemplateCallDepth)
      fail(fmt::format("template calls nested deeper than {} levels", kMaxTemplateCallDepth));
    heap_.charge(kTemplateCallCost);
    std::vector<std::pair<std::string_view, Value>> saved = std::exchange(variables_, {{"$", v}});
    walk(it->second, v);
    variables_ = std::move(saved);
    --template_depth_;
  }

  Value eval_pipeline(const Pipeline& p, const Value& dot) {
    At at(*this, p.line);
    Value v;
    for (std::size_t i = 0; i < p.commands.size(); ++i)
      v = eval_command(p.commands[i], dot, i > 0 ? &v : nullptr);
    // A nil from a map or list is "no value" once it leaves the pipeline, as in Go.
    if (v.is(Kind::kNil)) v = Value{};
    for (auto name : p.variables) {
      if (p.assign)
        set_variable(name, v);
      else
        variables_.emplace_back(name, v);
    }
    return v;
  }

  // One command; `piped` is the previous command's value, the last argument of this one.
  Value eval_command(const Command& c, const Value& dot, const Value* piped) {
    At at(*this, c.line);
    const Term& first = c.terms[0];
    if (first.kind == Term::Kind::kFunction) return call(first, c, dot, piped);
    if (c.terms.size() > 1 || piped != nullptr)
      fail(fmt::format("can't give argument to non-function {}", first.text));
    if (first.kind == Term::Kind::kNil) fail("nil is not a command");
    return eval_term(first, dot);
  }

  Value eval_term(const Term& t, const Value& dot) {
    switch (t.kind) {
      case Term::Kind::kLiteral:
        return t.literal;
      case Term::Kind::kNil:
        return Value::nil();
      case Term::Kind::kDot:
        return dot;
      case Term::Kind::kField:
        return fields(dot, t.fields);
      case Term::Kind::kVariable:
        return fields(variable(t.text), t.fields);
      case Term::Kind::kPipeline:
        return fields(eval_pipeline(*t.pipeline, dot), t.fields);
      case Term::Kind::kFunction:
        return call(t, Command{}, dot, nullptr);
    }
    return Value{};
  }

  // .A.B of a value: map keys; a missing key (or a field of nothing) gives no value.
  Value fields(Value v, const std::vector<std::string_view>& names) {
    for (auto name : names) {
      heap_.charge(1);
      if (v.is(Kind::kMissing)) continue;
      if (v.is(Kind::kNil)) fail(fmt::format("nil pointer evaluating interface {{}}.{}", name));
      if (!v.is(Kind::kMap))
        fail(fmt::format("can't evaluate field {} in type {}", name, type_name(v)));
      auto it = v.map().find(name);
      v = it == v.map().end() ? Value{} : it->second;
    }
    return v;
  }

  static std::string wants(const Builtin& b) {
    auto args = [](int n) { return fmt::format("{} argument{}", n, n == 1 ? "" : "s"); };
    if (b.max_args < 0) return "at least " + args(b.min_args);
    if (b.min_args == b.max_args) return args(b.min_args);
    return fmt::format("{} to {}", b.min_args, args(b.max_args));
  }

  // A function with the command's other operands (and the piped value) as arguments.
  Value call(const Term& fn, const Command& c, const Value& dot, const Value* piped) {
    const Builtin& b = *fn.function;
    std::size_t given = (c.terms.empty() ? 0 : c.terms.size() - 1) + (piped ? 1 : 0);
    if (given < static_cast<std::size_t>(b.min_args) ||
        (b.max_args >= 0 && given > static_cast<std::size_t>(b.max_args)))
      fail(fmt::format("function \"{}\" wants {}, got {}", b.name, wants(b), given));
    if (b.fn == nullptr) return and_or(b.name == "and", c, dot, piped);
    std::vector<Value> args;
    for (std::size_t i = 1; i < c.terms.size(); ++i) args.push_back(eval_term(c.terms[i], dot));
    if (piped) args.push_back(*piped);
    for (const Value& a : args) heap_.charge(weight(a));
    return b.fn(Call{b.name, args, heap_});
  }

  // Go's and/or: the first argument that decides (empty for and, non-empty for or), else the
  // last; the ones after it are not evaluated.
  Value and_or(bool is_and, const Command& c, const Value& dot, const Value* piped) {
    Value v;
    for (std::size_t i = 1; i < c.terms.size(); ++i) {
      v = eval_term(c.terms[i], dot);
      if (truth(v) != is_and) return v;
    }
    return piped ? *piped : v;
  }

  const Tree& tree_;
  Heap& heap_;
  std::string out_;
  Printer printer_;
  std::vector<std::pair<std::string_view, Value>> variables_;
  std::uint64_t iterations_ = 0;
  int template_depth_ = 0;
  int depth_ = 0;
  int line_ = 1;
};

constexpr std::size_t kMaxMessageBytes = 400;

// An error's message on one line: control characters escaped, and cut short, as it may quote
// what the template made (a fail message, a value that does not range).
std::string one_line(std::string_view what) {
  std::string out;
  while (!what.empty() && out.size() < kMaxMessageBytes) {
    auto [r, n] = decode_rune(what);
    if (r == '\n')
      out += "\\n";
    else if (r < 0x20 || r == 0x7F || (r == kRuneError && n == 1))
      out += "\\x" + hex2(static_cast<unsigned char>(what[0]));
    else
      out += what.substr(0, n);
    what.remove_prefix(n);
  }
  if (!what.empty()) out += "...";
  return out;
}

std::string located(std::string_view source, int line, std::string_view what) {
  return fmt::format("{}:{}: template: {}", source, line, one_line(what));
}

}  // namespace

bool looks_like_go_template(std::string_view text) {
  return text.find("{{") != std::string_view::npos;
}

std::string render_go_template(std::string_view text, const nlohmann::json& data,
                               std::string_view source_name) {
  Tree tree;
  Lexer lexer(text);
  try {
    Parser parser(lexer.run(), tree);
    try {
      parser.parse();
    } catch (const Failure& f) {
      throw Error(ErrorKind::kInvalidInput, located(source_name, parser.line(), f.what));
    }
  } catch (const Failure& f) {
    throw Error(ErrorKind::kInvalidInput, located(source_name, lexer.error_line(), f.what));
  }
  Heap heap;
  Value dot;
  try {
    if (!data.is_null()) dot = from_json(data, heap, 0);
  } catch (const Failure& f) {
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("{}: template: {}", source_name, one_line(f.what)));
  }
  Renderer renderer(tree, heap);
  try {
    return renderer.run(dot);
  } catch (const Failure& f) {
    throw Error(ErrorKind::kInvalidInput, located(source_name, renderer.line(), f.what));
  }
}

}  // namespace pok8s::config
