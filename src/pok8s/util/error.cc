// The mapping from error kinds to exit codes, HTTP statuses and names.
#include "pok8s/util/error.h"

#include <cstring>

namespace pok8s {

void throw_errno(const std::string& what, int err) {
  ErrorKind kind = err == ENOENT ? ErrorKind::kNotFound : ErrorKind::kIo;
  throw Error(kind, what + ": " + std::strerror(err));
}

namespace {
struct KindRow {
  ErrorKind kind;
  int exit_code;
  int http_status;
  std::string_view name;
};
constexpr KindRow kKindTable[] = {
    {ErrorKind::kInvalidInput, 2, 400, "invalid-input"},
    {ErrorKind::kNotFound, 3, 404, "not-found"},
    {ErrorKind::kIo, 4, 502, "io"},
    {ErrorKind::kFormat, 5, 422, "format"},
    {ErrorKind::kSignature, 6, 422, "signature"},
    {ErrorKind::kUnsupported, 7, 501, "unsupported"},
    {ErrorKind::kAuth, 8, 401, "auth"},
    {ErrorKind::kInternal, 70, 500, "internal"},
};
const KindRow& row(ErrorKind kind) {
  for (const auto& r : kKindTable)
    if (r.kind == kind) return r;
  return kKindTable[std::size(kKindTable) - 1];
}
}  // namespace

int exit_code(ErrorKind kind) {
  return row(kind).exit_code;
}
int http_status(ErrorKind kind) {
  return row(kind).http_status;
}
std::string_view error_kind_name(ErrorKind kind) {
  return row(kind).name;
}

}  // namespace pok8s
