// Key sets on disk: <root>/<name>/<file>, the directory 0700 and keys 0600, committed whole.
#include "pok8s/server/keysets.h"

#include <fmt/format.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/stat.h>

#include <filesystem>
#include <memory>

#include "pok8s/server/state.h"
#include "pok8s/util/error.h"
#include "pok8s/util/hex.h"
#include "pok8s/util/time.h"

namespace pok8s::server {
namespace fs = std::filesystem;
namespace {

constexpr std::size_t kMaxKeySetFiles = 32;
constexpr std::size_t kMaxPemBytes = 64u << 10;

using X509Ptr = std::unique_ptr<X509, decltype(&X509_free)>;
using KeyPtr = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;

std::string stem(std::string_view file) {
  return std::string(file.substr(0, file.rfind('.')));
}
bool is_cert_file(std::string_view f) {
  return f.ends_with(".crt") || f.ends_with(".pem") || f.ends_with(".cer");
}

X509Ptr read_cert(std::string_view pem) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(
      BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), BIO_free);
  return X509Ptr(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr), X509_free);
}
KeyPtr read_key(std::string_view pem) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(
      BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), BIO_free);
  return KeyPtr(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr), EVP_PKEY_free);
}

std::string name_line(X509_NAME* name) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
  X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253);
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(n));
}

nlohmann::json cert_json(const std::string& file, X509* cert, bool has_key) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  X509_digest(cert, EVP_sha256(), md, &len);
  std::string fp = util::hex_encode(std::string_view(reinterpret_cast<const char*>(md), len));
  std::tm tm{};
  ASN1_TIME_to_tm(X509_get0_notAfter(cert), &tm);
  return {{"file", file},
          {"subject", name_line(X509_get_subject_name(cert))},
          {"issuer", name_line(X509_get_issuer_name(cert))},
          {"notAfter", util::rfc3339(timegm(&tm))},
          {"sha256", fp},
          {"hasPrivateKey", has_key}};
}

[[noreturn]] void refuse(std::string_view name, const std::string& why) {
  throw Error(ErrorKind::kInvalidInput, fmt::format("Failed to store key set {}: {}", name, why));
}

}  // namespace

bool is_keyset_name(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              (i > 0 && (c == '_' || c == '.' || c == '-'));
    if (!ok) return false;
  }
  return true;
}

KeySetStore::KeySetStore(util::Path root) : root_(std::move(root)) {
  util::make_dirs(root_);
  ::chmod(root_.c_str(), 0700);
}

nlohmann::json KeySetStore::create(std::string_view name,
                                   const std::map<std::string, std::string>& files) {
  if (!is_keyset_name(name))
    refuse(name.substr(0, 64),
           "the name must be 1-64 of a-z 0-9 _ . - starting with a letter or digit");
  if (files.empty())
    refuse(name, "no files (give PEM certificates and keys, e.g. db.crt and db.key)");
  if (files.size() > kMaxKeySetFiles)
    refuse(name, fmt::format("more than {} files", kMaxKeySetFiles));
  std::map<std::string, X509Ptr> certs;
  std::map<std::string, KeyPtr> keys;
  for (const auto& [file, pem] : files) {
    bool plain = !file.empty() && file.size() <= 64 && file.front() != '.';
    for (char c : file)
      if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '.' || c == '_' || c == '-'))
        plain = false;
    if (!plain) refuse(name, fmt::format("{:?} is not a plain file name", file.substr(0, 64)));
    if (pem.size() > kMaxPemBytes)
      refuse(name, fmt::format("{} is larger than {} bytes", file, kMaxPemBytes));
    if (is_cert_file(file)) {
      auto cert = read_cert(pem);
      if (!cert) refuse(name, fmt::format("{} is not a PEM X.509 certificate", file));
      certs.emplace(file, std::move(cert));
    } else if (file.ends_with(".key")) {
      auto key = read_key(pem);
      if (!key) refuse(name, fmt::format("{} is not an unencrypted PEM private key", file));
      keys.emplace(file, std::move(key));
    } else {
      refuse(name,
             fmt::format(
                 "{}: only certificates (.crt, .pem, .cer) and keys (.key) belong in a key set",
                 file));
    }
  }
  for (const auto& [file, key] : keys) {
    std::string key_stem = stem(file);  // clang 14 cannot capture a structured binding
    auto it = std::find_if(certs.begin(), certs.end(),
                           [&](const auto& c) { return stem(c.first) == key_stem; });
    if (it == certs.end())
      refuse(name, fmt::format("{} has no certificate {}.crt beside it", file, stem(file)));
    if (X509_check_private_key(it->second.get(), key.get()) != 1)
      refuse(name, fmt::format("{} is not the private key of {}", file, it->first));
  }
  util::Path final_dir = root_ / std::string(name);
  if (fs::exists(final_dir))
    throw ApiError(409, "conflict", fmt::format("Failed to store key set {}: it exists", name));
  util::TempDir staged(final_dir);
  ::chmod(staged.path().c_str(), 0700);
  for (const auto& [file, pem] : files)
    util::write_file_atomic(staged.path() / file, pem, file.ends_with(".key") ? 0600 : 0644);
  staged.commit();
  return *describe(name);
}

std::optional<nlohmann::json> KeySetStore::describe(std::string_view name) const {
  if (!is_keyset_name(name)) return std::nullopt;
  util::Path dir = root_ / std::string(name);
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return std::nullopt;
  nlohmann::json certificates = nlohmann::json::array();
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  for (const auto& file : names) {
    if (!is_cert_file(file)) continue;
    auto cert = read_cert(util::read_file(dir / file, kMaxPemBytes));
    if (!cert) continue;
    bool has_key = fs::exists(dir / (stem(file) + ".key"));
    certificates.push_back(cert_json(file, cert.get(), has_key));
  }
  return nlohmann::json{{"name", name},
                        {"createdAt", util::rfc3339(st.st_mtim.tv_sec)},
                        {"certificates", certificates}};
}

std::vector<nlohmann::json> KeySetStore::list() const {
  std::vector<nlohmann::json> out;
  for (const auto& [name, _] : directories())
    if (auto d = describe(name)) out.push_back(*d);
  return out;
}

bool KeySetStore::remove(std::string_view name) {
  if (!is_keyset_name(name) || !fs::is_directory(root_ / std::string(name))) return false;
  util::remove_tree(root_ / std::string(name));
  return true;
}

std::map<std::string, util::Path> KeySetStore::directories() const {
  std::map<std::string, util::Path> out;
  for (const auto& e : fs::directory_iterator(root_)) {
    std::string n = e.path().filename().string();
    if (is_keyset_name(n) && e.is_directory() && !e.is_symlink()) out.emplace(n, e.path());
  }
  return out;
}

}  // namespace pok8s::server
