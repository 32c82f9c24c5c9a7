// Image names follow the containers-transports convention and Docker's normalisation.
#include "pok8s/oci/reference.h"

#include <gtest/gtest.h>

#include "pok8s/util/error.h"

using namespace pok8s;
using namespace pok8s::oci;

TEST(RegistryReference, NormalisesDockerHubShortNames) {
  auto r = RegistryReference::parse("debian");
  EXPECT_EQ(r.registry, "docker.io");
  EXPECT_EQ(r.repository, "library/debian");
  EXPECT_EQ(r.tag, "latest");
  EXPECT_EQ(r.api_host(), "registry-1.docker.io");
  EXPECT_EQ(RegistryReference::parse("user/app:1.0").repository, "user/app");
}

TEST(RegistryReference, ParsesRegistryPortTagAndDigest) {
  std::string d = "sha256:" + std::string(64, 'a');
  auto r = RegistryReference::parse("127.0.0.1:5000/team/app:v1@" + d);
  EXPECT_EQ(r.registry, "127.0.0.1:5000");
  EXPECT_EQ(r.repository, "team/app");
  EXPECT_EQ(r.tag, "v1");
  ASSERT_TRUE(r.digest);
  EXPECT_EQ(r.reference(), d);
  EXPECT_EQ(r.str(), "127.0.0.1:5000/team/app:v1@" + d);
  EXPECT_EQ(RegistryReference::parse("localhost/app").registry, "localhost");
}

TEST(RegistryReference, RefusesInvalidNames) {
  for (const char* bad : {"", "UPPER", "app:", "app:-bad", "a//b", "app@sha256:zz", "../x",
                          "x/../y", "app:tag with space", "-lead/app", "reg.io:99999999/app"}) {
    EXPECT_THROW(RegistryReference::parse(bad), Error) << bad;
  }
}

TEST(ImageName, ParsesEveryTransport) {
  auto d = ImageName::parse("docker://127.0.0.1:5000/x/y:z");
  EXPECT_EQ(d.transport, Transport::kDocker);
  EXPECT_EQ(d.docker.repository, "x/y");
  auto o = ImageName::parse("oci:/tmp/layout:v1");
  EXPECT_EQ(o.transport, Transport::kOci);
  EXPECT_EQ(o.path, "/tmp/layout");
  EXPECT_EQ(o.tag, "v1");
  auto o2 = ImageName::parse("oci:relative/dir");
  EXPECT_EQ(o2.path, "relative/dir");
  EXPECT_EQ(o2.tag, "");
  auto a = ImageName::parse("oci-archive:/tmp/img.tar:latest");
  EXPECT_EQ(a.transport, Transport::kOciArchive);
  EXPECT_EQ(a.path, "/tmp/img.tar");
  auto da = ImageName::parse("docker-archive:/tmp/d.tar:app:1");
  EXPECT_EQ(da.transport, Transport::kDockerArchive);
  EXPECT_EQ(da.path, "/tmp/d.tar");
  EXPECT_EQ(da.docker.repository, "library/app");
  auto dir = ImageName::parse("dir:/srv/rootfs");
  EXPECT_EQ(dir.transport, Transport::kDir);
  EXPECT_EQ(dir.str(), "dir:/srv/rootfs");
}

TEST(ImageName, RefusesUnknownTransportsAndEmptyPaths) {
  for (const char* bad : {"debian", "ftp://x", "oci:", "docker:debian", "dir:", "oci::tag"}) {
    EXPECT_THROW(ImageName::parse(bad), Error) << bad;
  }
}
