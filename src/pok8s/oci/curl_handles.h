// Owning handles for libcurl's URL API (the registry client and the outbound policy parse URLs
// with it).
#pragma once

#include <curl/curl.h>

#include <memory>

namespace pok8s::oci {

struct CurlUrlDeleter {
  void operator()(CURLU* u) const { curl_url_cleanup(u); }
};
struct CurlStringDeleter {
  void operator()(char* s) const { curl_free(s); }
};
using CurlUrl = std::unique_ptr<CURLU, CurlUrlDeleter>;
using CurlString = std::unique_ptr<char, CurlStringDeleter>;

}  // namespace pok8s::oci
