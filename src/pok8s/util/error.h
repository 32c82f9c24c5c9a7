// The one error type of the library: a kind that maps to exit codes and HTTP statuses,
// and a message that names what failed and where.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace pok8s {

enum class ErrorKind {
  kInvalidInput,  // the caller's input is malformed or refused (bad reference, hostile layer)
  kNotFound,      // a named thing does not exist (image, tag, blob, file)
  kIo,            // the system or the network failed us
  kFormat,        // a document or archive does not follow its format
  kSignature,     // a digest, checksum or signature does not match
  kUnsupported,   // valid, but not something pok8s does
  kAuth,          // credentials missing or refused
  kInternal,      // a bug in pok8s
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  explicit Error(const std::string& message) : Error(ErrorKind::kInternal, message) {}

  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

// Throws an Error of kind kIo naming `what` and the text of errno `err`.
[[noreturn]] void throw_errno(const std::string& what, int err);

// The one table from error kinds to what the CLI and the service report.
int exit_code(ErrorKind kind);
int http_status(ErrorKind kind);
std::string_view error_kind_name(ErrorKind kind);

}  // namespace pok8s
