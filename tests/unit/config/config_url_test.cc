// The Kairos config_url: each config's URL with where it was set, an empty one meaning none,
// and anything but an http(s) URL on one line refused with the file and the line.
#include "pok8s/config/config_url.h"

#include <gtest/gtest.h>

#include "pok8s/util/error.h"

using namespace pok8s;
using namespace pok8s::config;

namespace {

std::vector<CloudConfig> parse(std::initializer_list<std::string> docs) {
  std::vector<CloudConfig> out;
  int i = 0;
  for (const auto& d : docs) out.push_back(parse_cloud_config(d, "c" + std::to_string(++i)));
  return out;
}

std::string config_url_error_of(const std::string& value) {
  try {
    read_config_urls(parse({"#cloud-config\nhostname: x\nconfig_url: " + value + "\n"}));
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
    return e.what();
  }
  return "";
}

TEST(ConfigUrl, EachConfigsUrlInOrderWithItsOrigin) {
  auto urls =
      read_config_urls(parse({"#cloud-config\nconfig_url: https://example.com/a.yaml\n",
                              "#cloud-config\nhostname: x\n", "#cloud-config\nconfig_url: \"\"\n",
                              "#cloud-config\n\nconfig_url: http://10.0.2.2:8080/b?x=1\n"}));
  ASSERT_EQ(urls.size(), 2u);
  EXPECT_EQ(urls[0].url, "https://example.com/a.yaml");
  EXPECT_EQ(urls[0].origin, "c1:2");
  EXPECT_EQ(urls[1].url, "http://10.0.2.2:8080/b?x=1");
  EXPECT_EQ(urls[1].origin, "c4:3");
}

TEST(ConfigUrl, AnythingButAnHttpUrlIsRefusedNamingFileAndLine) {
  const std::string why =
      "Failed to read cloud-config c1: line 3: config_url must be an http:// or https:// URL of "
      "at most 2048 printable characters without spaces";
  EXPECT_EQ(config_url_error_of("file:///etc/shadow"), why);
  EXPECT_EQ(config_url_error_of("ftp://example.com/c.yaml"), why);
  EXPECT_EQ(config_url_error_of("http://"), why);
  EXPECT_EQ(config_url_error_of("http:///path"), why);
  EXPECT_EQ(config_url_error_of("\"http://a b/\""), why);
  EXPECT_EQ(config_url_error_of("\"http://a/\\u0007\""), why);
  EXPECT_EQ(config_url_error_of("http://a/" + std::string(2048, 'x')), why);
  EXPECT_NE(config_url_error_of("[http://a/]").find("line 3: config_url"), std::string::npos);
  EXPECT_EQ(config_url_error_of("http://a/"), "");
}

}  // namespace
