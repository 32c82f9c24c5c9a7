// Digest strings are validated before they reach a path or a URL.
#include "pok8s/oci/digest.h"

#include <gtest/gtest.h>

#include "pok8s/util/error.h"

using pok8s::Error;
using pok8s::oci::Digest;

const std::string kEmpty =
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

TEST(Digest, ParsesSha256) {
  Digest d = Digest::parse(kEmpty);
  EXPECT_EQ(d.algorithm(), "sha256");
  EXPECT_EQ(d.str(), kEmpty);
  EXPECT_EQ(d, Digest::sha256_of(""));
  EXPECT_EQ(d.short_str(), "sha256:e3b0c44298fc");
}

TEST(Digest, RefusesPathTraversalAndMalformedText) {
  for (const char* bad :
       {"sha256:../../etc/passwd", "sha256:", "sha256", ":abc",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855/..",
        "sha256/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}) {
    EXPECT_THROW(Digest::parse(bad), Error) << bad;
    EXPECT_FALSE(Digest::try_parse(bad)) << bad;
  }
}

TEST(Digest, AcceptsSha512) {
  EXPECT_TRUE(Digest::try_parse("sha512:" + std::string(128, 'a')));
  EXPECT_FALSE(Digest::try_parse("sha512:" + std::string(64, 'a')));
}
