// The dialect-neutral half of the SQL surface: reading row values, choosing a backend from the
// service's database URL, and the message helpers both backends share.
#include "pok8s/server/sql.h"
#include "pok8s/server/sql_detail.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <utility>

#include "pok8s/util/error.h"

namespace pok8s::server {

namespace detail {

// Database messages span lines (PostgreSQL adds a hint and a caret under the statement); an
// error message is one line.
std::string one_line(std::string_view text) {
  std::string out;
  bool space = false;
  for (char c : text) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      space = !out.empty();
      continue;
    }
    if (space) out += ' ';
    space = false;
    out += c;
  }
  return out;
}

// Enough of a statement to recognise it in a log: its first words, on one line.
std::string statement_excerpt(std::string_view sql) {
  constexpr std::size_t kMaxBytes = 40;
  std::string text = one_line(sql);
  if (text.size() <= kMaxBytes) return text;
  std::size_t end = kMaxBytes;
  // Never cut a UTF-8 sequence in half: back up to the start of a character.
  while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
  return text.substr(0, end) + "…";
}

namespace {

// Where the password of "scheme://user:secret@host/db" is, as [begin, end) in `url`, taking
// the last '@' before `limit` to end it.
std::pair<std::size_t, std::size_t> password_span(const std::string& url, std::size_t limit) {
  std::size_t scheme_end = url.find("://");
  if (scheme_end == std::string::npos) return {0, 0};
  std::size_t authority = scheme_end + 3;
  std::size_t at = limit > authority ? url.rfind('@', limit - 1) : std::string::npos;
  if (at == std::string::npos || at < authority) return {0, 0};
  std::size_t colon = url.find(':', authority);
  if (colon == std::string::npos || colon > at) return {0, 0};
  return {colon + 1, at};
}

}  // namespace

// The password the writer of a URL meant (still percent-encoded), or "": up to the last '@'
// before the query, even where an unencoded '/' or '@' in it would mislead a URL parser.
std::string url_password(const std::string& url) {
  auto [begin, end] = password_span(url, std::min(url.find_first_of("?#"), url.size()));
  return url.substr(begin, end - begin);
}

// "scheme://user:secret@host/db" → "scheme://user:***@host/db", and the same for
// "password=secret" (a key=value string, a URL's query): messages end up in logs and HTTP
// responses.
std::string without_password(const std::string& url) {
  // Up to the last '@' anywhere: hiding too much is the safe mistake.
  auto [begin, end] = password_span(url, url.size());
  std::string text = begin == end ? url : url.substr(0, begin) + "***" + url.substr(end);
  constexpr std::string_view kKey = "password";
  for (std::size_t at = text.find(kKey); at != std::string::npos; at = text.find(kKey, at + 1)) {
    std::size_t value = text.find_first_not_of(' ', at + kKey.size());
    if (value == std::string::npos || text[value] != '=') continue;
    value = text.find_first_not_of(' ', value + 1);
    if (value == std::string::npos) break;
    std::size_t value_end = text[value] == '\''
                                ? text.find('\'', value + 1)  // quoted, as in key='a b'
                                : text.find_first_of(" &#", value);
    value_end = value_end == std::string::npos ? text.size() : value_end + (text[value] == '\'');
    text.replace(value, value_end - value, "***");
  }
  return text;
}

thread_local const SqlDb* t_transaction_of = nullptr;

std::string failed_to_run(std::string_view sql) {
  return "Failed to run SQL \"" + statement_excerpt(sql) + "\": ";
}

void throw_nested(std::string_view sql) {
  throw Error(ErrorKind::kInternal,
              failed_to_run(sql) +
                  "inside transaction(), statements run on the SqlDb given to the body "
                  "(transactions do not nest)");
}

}  // namespace detail

namespace {

bool starts_with(std::string_view text, std::string_view prefix) {
  return text.substr(0, prefix.size()) == prefix;
}

}  // namespace

std::int64_t SqlRow::integer(std::size_t i) const {
  const SqlValue& value = values.at(i);
  if (const auto* number = std::get_if<std::int64_t>(&value)) return *number;
  const auto* text = std::get_if<std::string>(&value);
  if (!text) return 0;
  std::int64_t number = 0;
  const char* end = text->data() + text->size();
  auto [ptr, ec] = std::from_chars(text->data(), end, number);
  if (ec != std::errc() || ptr != end || text->empty())
    throw Error(ErrorKind::kInternal, "Failed to read column " + std::to_string(i) +
                                          " as an integer: it holds \"" +
                                          detail::statement_excerpt(*text) + "\"");
  return number;
}

std::string SqlRow::text(std::size_t i) const {
  const SqlValue& value = values.at(i);
  if (const auto* number = std::get_if<std::int64_t>(&value)) return std::to_string(*number);
  if (const auto* text = std::get_if<std::string>(&value)) return *text;
  return {};
}

std::unique_ptr<SqlDb> open_database(const std::string& url, const util::Path& data_dir) {
  if (url.empty()) return open_sqlite(data_dir / "pok8s.db");
  if (starts_with(url, "sqlite:")) {
    std::string path = url.substr(7);
    if (path.empty())
      throw Error(ErrorKind::kInvalidInput,
                  "Failed to open database URL: \"sqlite:\" needs a file, as in sqlite:PATH");
    return open_sqlite(path);
  }
  if (starts_with(url, "postgres://") || starts_with(url, "postgresql://"))
    return open_postgres(url);
  throw Error(ErrorKind::kInvalidInput,
              "Failed to open database URL: \"" + detail::one_line(detail::without_password(url)) +
                  "\" is neither sqlite:PATH nor postgres://USER@HOST:PORT/DATABASE");
}

}  // namespace pok8s::server
