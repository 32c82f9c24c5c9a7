// OpenSSL 3 deprecates engines, but Debian 12 packages no PKCS#11 provider, only libp11's engine.
#define OPENSSL_SUPPRESS_DEPRECATED 1

#include "pok8s/boot/pkcs11_key.h"

#include <fmt/format.h>
#include <openssl/engine.h>
#include <openssl/err.h>

#include <cctype>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <string>

#include "pok8s/util/error.h"

namespace pok8s::boot {
namespace {

// The value of a query attribute of an RFC 7512 URI, percent-decoded (section 2.3).
std::optional<std::string> query_attribute(std::string_view uri, std::string_view name) {
  auto q = uri.find('?');
  if (q == std::string_view::npos) return std::nullopt;
  std::string_view query = uri.substr(q + 1);
  while (!query.empty()) {
    auto amp = query.find('&');
    std::string_view item = query.substr(0, amp);
    auto eq = item.find('=');
    if (eq != std::string_view::npos && item.substr(0, eq) == name) {
      std::string out;
      std::string_view v = item.substr(eq + 1);
      for (std::size_t i = 0; i < v.size(); ++i) {
        if (v[i] == '%' && i + 2 < v.size() &&
            std::isxdigit(static_cast<unsigned char>(v[i + 1])) &&
            std::isxdigit(static_cast<unsigned char>(v[i + 2]))) {
          out.push_back(static_cast<char>(std::stoi(std::string(v.substr(i + 1, 2)), nullptr, 16)));
          i += 2;
        } else {
          out.push_back(v[i]);
        }
      }
      return out;
    }
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return std::nullopt;
}

// The URI without `module-path`, which libp11 does not parse (it takes the module as a control).
std::string without_module_path(std::string_view uri) {
  auto q = uri.find('?');
  if (q == std::string_view::npos) return std::string(uri);
  std::string out(uri.substr(0, q)), query;
  std::string_view rest = uri.substr(q + 1);
  while (!rest.empty()) {
    auto amp = rest.find('&');
    std::string_view item = rest.substr(0, amp);
    if (!item.starts_with("module-path=")) query += (query.empty() ? "" : "&") + std::string(item);
    if (amp == std::string_view::npos) break;
    rest.remove_prefix(amp + 1);
  }
  return query.empty() ? out : out + "?" + query;
}

std::string last_openssl_error() {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "no reason given";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return buf;
}

}  // namespace

bool is_pkcs11_uri(std::string_view text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' '))
    text.remove_suffix(1);
  return text.starts_with("pkcs11:") && text.find('\n') == std::string_view::npos;
}

EVP_PKEY* load_pkcs11_private_key(std::string_view uri_in, std::string_view what) {
  std::string uri(uri_in);
  while (!uri.empty() && (uri.back() == '\n' || uri.back() == '\r' || uri.back() == ' '))
    uri.pop_back();
  auto fail = [&](ErrorKind kind, const std::string& why) {
    return Error(kind, fmt::format("Failed to load the PKCS#11 key of {}: {}", what, why));
  };
  // One engine, started once for the life of the process: the keys it loads use it to sign.
  static std::mutex mutex;
  static ENGINE* engine = nullptr;
  static std::string engine_module;
  std::lock_guard lock(mutex);
  std::string module = query_attribute(uri, "module-path").value_or("");
  if (engine != nullptr && module != engine_module)
    throw fail(ErrorKind::kInvalidInput,
               fmt::format("its module-path '{}' is not the one of the keys before it ('{}'): one "
                           "PKCS#11 module per key set",
                           module, engine_module));
  if (engine == nullptr) {
    ENGINE* e = ENGINE_by_id("pkcs11");
    if (e == nullptr) {
      ERR_clear_error();
      throw fail(ErrorKind::kNotFound,
                 "OpenSSL has no pkcs11 engine (install libengine-pkcs11-openssl)");
    }
    if (!module.empty() && ENGINE_ctrl_cmd_string(e, "MODULE_PATH", module.c_str(), 0) != 1) {
      std::string why = last_openssl_error();
      ENGINE_free(e);
      throw fail(ErrorKind::kInvalidInput, "module-path " + module + ": " + why);
    }
    // libp11 prints its own lines on stderr otherwise; pok8s says what failed in one.
    if (ENGINE_ctrl_cmd_string(e, "QUIET", nullptr, 0) != 1) ERR_clear_error();
    const char* pin = std::getenv("POK8S_PKCS11_PIN");
    if (pin != nullptr && !query_attribute(uri, "pin-value"))
      ENGINE_ctrl_cmd_string(e, "PIN", pin, 0);
    if (ENGINE_init(e) != 1) {
      std::string why = last_openssl_error();
      ENGINE_free(e);
      throw fail(ErrorKind::kInvalidInput, "the engine did not start (" + why + ")");
    }
    engine = e;
    engine_module = module;
  }
  EVP_PKEY* key =
      ENGINE_load_private_key(engine, without_module_path(uri).c_str(), nullptr, nullptr);
  if (key == nullptr)
    throw fail(
        ErrorKind::kInvalidInput,
        fmt::format("the token has no such private key, or refused it ({})", last_openssl_error()));
  return key;
}

}  // namespace pok8s::boot
