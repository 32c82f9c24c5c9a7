// libcurl download into a temporary file, hashed while it streams, under the outbound policy
// (oci/outbound.h): the URL is a user's, as is every address its redirects lead to.
#include "pok8s/convert/download.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <exception>
#include <memory>
#include <vector>

#include "pok8s/oci/outbound.h"
#include "pok8s/util/error.h"
#include "pok8s/util/sha256.h"

namespace pok8s::convert {
namespace {

struct Sink {
  int fd;
  util::Sha256 hash;
  std::uint64_t bytes = 0;
  std::uint64_t limit;
  std::exception_ptr error;
};

size_t on_data(char* data, size_t size, size_t count, void* user) {
  auto* sink = static_cast<Sink*>(user);
  std::size_t n = size * count;
  try {
    sink->bytes += n;
    if (sink->bytes > sink->limit)
      throw Error(ErrorKind::kInvalidInput, fmt::format("larger than {} bytes", sink->limit));
    auto bytes = std::as_bytes(std::span(data, n));
    sink->hash.update(bytes);
    util::write_all(sink->fd, bytes, "the download");
  } catch (...) {
    sink->error = std::current_exception();
    return 0;
  }
  return n;
}

// Streams `url` into `tmp`; its sha256.
std::string fetch_into(const std::string& url, util::TempFile& tmp, std::uint64_t limit) {
  if (!url.starts_with("https://") && !url.starts_with("http://"))
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to download {}: only http(s) URLs are supported", url));
  Sink sink{tmp.fd(), {}, 0, limit, nullptr};
  std::unique_ptr<CURL, decltype(&curl_easy_cleanup)> curl(curl_easy_init(), curl_easy_cleanup);
  if (!curl) throw Error(ErrorKind::kInternal, "Failed to create a libcurl handle");
  oci::OutboundCheck check;
  char errbuf[CURL_ERROR_SIZE] = {};
  curl_easy_setopt(curl.get(), CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl.get(), CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(curl.get(), CURLOPT_MAXREDIRS, 10L);
  oci::apply_outbound_policy(curl.get(), check, url);
  // An error page is never read, so no server's words reach a message.
  curl_easy_setopt(curl.get(), CURLOPT_FAILONERROR, 1L);
  curl_easy_setopt(curl.get(), CURLOPT_CONNECTTIMEOUT, 30L);
  curl_easy_setopt(curl.get(), CURLOPT_LOW_SPEED_LIMIT, 1024L);
  curl_easy_setopt(curl.get(), CURLOPT_LOW_SPEED_TIME, 60L);
  curl_easy_setopt(curl.get(), CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(curl.get(), CURLOPT_WRITEDATA, &sink);
  curl_easy_setopt(curl.get(), CURLOPT_ERRORBUFFER, errbuf);
  CURLcode rc = curl_easy_perform(curl.get());
  if (sink.error) {
    try {
      std::rethrow_exception(sink.error);
    } catch (const Error& e) {
      throw Error(e.kind(), fmt::format("Failed to download {}: {}", url, e.what()));
    }
  }
  if (rc != CURLE_OK) {
    // A server's 4xx is an answer (kNotFound: no use asking again); the rest may pass (kIo).
    long status = 0;
    curl_easy_getinfo(curl.get(), CURLINFO_RESPONSE_CODE, &status);
    std::string detail = *errbuf ? errbuf : curl_easy_strerror(rc);
    // libcurl words an HTTP error itself ("The requested URL returned error: 404").
    if (rc == CURLE_HTTP_RETURNED_ERROR)
      throw Error(status >= 400 && status < 500 ? ErrorKind::kNotFound : ErrorKind::kIo,
                  fmt::format("Failed to download {}: {}", url, detail));
    throw Error(check.refused(rc) ? ErrorKind::kInvalidInput : ErrorKind::kIo,
                fmt::format("Failed to download {}: {}", url,
                            check.failure_reason(curl.get(), rc, detail)));
  }
  return sink.hash.hex_digest();
}

}  // namespace

std::string download_file(const std::string& url, const util::Path& dest, std::uint64_t limit) {
  util::TempFile tmp(dest);
  std::string sha256 = fetch_into(url, tmp, limit);
  tmp.commit();
  return sha256;
}

void download_verified(const std::string& url, const std::string& sha256_hex,
                       const util::Path& dest, std::uint64_t limit) {
  util::TempFile tmp(dest);
  std::string actual = fetch_into(url, tmp, limit);
  if (actual != sha256_hex)
    throw Error(
        ErrorKind::kSignature,
        fmt::format("Failed to verify {}: its sha256 is {}, expected {}", url, actual, sha256_hex));
  tmp.commit();
}

}  // namespace pok8s::convert
