// The family of a base image comes from os-release ID, then ID_LIKE; unknown ones are named.
#include "pok8s/convert/family.h"

#include <gtest/gtest.h>

#include "pok8s/util/error.h"

using namespace pok8s;
using namespace pok8s::convert;

TEST(DetectDistro, KnowsTheFamiliesById) {
  EXPECT_EQ(detect_distro({{"ID", "debian"}, {"VERSION_ID", "12"}}, "img").family, Family::kDebian);
  EXPECT_EQ(detect_distro({{"ID", "ubuntu"}, {"ID_LIKE", "debian"}}, "img").family,
            Family::kUbuntu);
  EXPECT_EQ(detect_distro({{"ID", "alpine"}}, "img").family, Family::kAlpine);
  EXPECT_EQ(detect_distro({{"ID", "fedora"}}, "img").family, Family::kFedora);
  EXPECT_EQ(detect_distro({{"ID", "opensuse-leap"}}, "img").family, Family::kOpensuse);
  EXPECT_EQ(detect_distro({{"ID", "arch"}, {"BUILD_ID", "rolling"}}, "img").release, "rolling");
}

TEST(DetectDistro, FallsBackToIdLikeInOrder) {
  Distro d = detect_distro(
      {{"ID", "rocky"}, {"ID_LIKE", "rhel centos fedora"}, {"VERSION_ID", "9.3"}}, "img");
  EXPECT_EQ(d.family, Family::kRhel);
  EXPECT_EQ(d.id, "rocky");
  EXPECT_EQ(d.release, "9.3");
  EXPECT_EQ(detect_distro({{"ID", "mint"}, {"ID_LIKE", "ubuntu debian"}}, "img").family,
            Family::kUbuntu);
  EXPECT_EQ(
      detect_distro(
          {{"ID", "trixie-custom"}, {"ID_LIKE", "debian"}, {"VERSION_CODENAME", "trixie"}}, "img")
          .release,
      "trixie");
}

TEST(DetectDistro, NamesWhatItFoundWhenTheFamilyIsUnknown) {
  try {
    detect_distro({{"ID", "gentoo"}, {"ID_LIKE", "funtoo"}}, "oci:x:y");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    std::string msg = e.what();
    EXPECT_NE(msg.find("oci:x:y"), std::string::npos);
    EXPECT_NE(msg.find("gentoo"), std::string::npos);
    EXPECT_NE(msg.find("funtoo"), std::string::npos);
  }
  EXPECT_THROW(detect_distro({{"NAME", "nothing"}}, "img"), Error);
}
