// Manifests, indexes and configs are parsed strictly; a document posing as another is refused.
#include "pok8s/oci/manifest.h"

#include <gtest/gtest.h>

#include "pok8s/util/error.h"

using namespace pok8s;
using namespace pok8s::oci;

namespace {
const std::string kD1 = "sha256:" + std::string(64, '1');
const std::string kD2 = "sha256:" + std::string(64, '2');

std::string oci_manifest(const std::string& layer_type = std::string(media_type::kOciLayerGzip)) {
  return R"({"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
    "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":")" +
         kD1 + R"(","size":10},
    "layers":[{"mediaType":")" +
         layer_type + R"(","digest":")" + kD2 + R"(","size":20}],
    "annotations":{"org.opencontainers.image.ref.name":"v1"}})";
}
}  // namespace

TEST(Manifest, ParsesOciManifest) {
  Manifest m = Manifest::parse(oci_manifest());
  EXPECT_EQ(m.media_type, media_type::kOciManifest);
  EXPECT_EQ(m.config.digest.str(), kD1);
  ASSERT_EQ(m.layers.size(), 1u);
  EXPECT_EQ(m.layers[0].size, 20);
  EXPECT_EQ(layer_compression(m.layers[0].media_type), LayerCompression::kGzip);
  // Round trip keeps the content.
  Manifest again = Manifest::parse(m.to_json());
  EXPECT_EQ(again.layers[0].digest, m.layers[0].digest);
  EXPECT_EQ(again.annotations, m.annotations);
}

TEST(Manifest, ConvertsDockerMediaTypesToOci) {
  std::string docker =
      R"({"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
    "config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":")" +
      kD1 + R"(","size":10},
    "layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":")" +
      kD2 + R"(","size":20}]})";
  Manifest m = Manifest::parse(docker);
  Manifest o = m.to_oci();
  EXPECT_EQ(o.media_type, media_type::kOciManifest);
  EXPECT_EQ(o.config.media_type, media_type::kOciConfig);
  EXPECT_EQ(o.layers[0].media_type, media_type::kOciLayerGzip);
  EXPECT_EQ(o.layers[0].digest, m.layers[0].digest);
}

TEST(Manifest, RefusesMalformedJson) {
  for (const std::string& bad : std::vector<std::string>{
           "", "{", "[]", "null", R"({"schemaVersion":"2"})", R"({"schemaVersion":2})",
           std::string(100, '[') + std::string(100, ']'),
           R"({"schemaVersion":2,"config":{},"layers":[]})"}) {
    EXPECT_THROW(Manifest::parse(bad), Error) << bad;
  }
}

TEST(Manifest, RefusesSchema1AndOtherVersions) {
  try {
    Manifest::parse(R"({"schemaVersion":1,"fsLayers":[]})");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
  }
}

TEST(Manifest, RefusesMediaTypeConfusion) {
  // An index served as a manifest.
  std::string index =
      R"({"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]})";
  EXPECT_THROW(Manifest::parse(index), Error);
  // A manifest whose layer claims to be a manifest.
  EXPECT_THROW(Manifest::parse(oci_manifest(std::string(media_type::kOciManifest))), Error);
  // A manifest whose layer claims to be a config.
  EXPECT_THROW(Manifest::parse(oci_manifest(std::string(media_type::kOciConfig))), Error);
  // The transport's content type disagrees with the document.
  EXPECT_THROW(Manifest::parse(oci_manifest(), media_type::kDockerManifest), Error);
  // A manifest with a "manifests" key.
  std::string both = oci_manifest();
  both.insert(1, R"("manifests":[],)");
  EXPECT_THROW(Manifest::parse(both), Error);
  // Unknown layer media types are refused when asked for their compression.
  EXPECT_THROW(layer_compression("application/x-evil"), Error);
}

TEST(Manifest, RefusesInvalidDigestsAndNegativeSizes) {
  std::string m = oci_manifest();
  std::string bad_digest = m;
  bad_digest.replace(bad_digest.find(kD2), kD2.size(), "sha256:../../../etc/passwd");
  EXPECT_THROW(Manifest::parse(bad_digest), Error);
  std::string neg = m;
  neg.replace(neg.find("\"size\":20"), 9, "\"size\":-5");
  EXPECT_THROW(Manifest::parse(neg), Error);
}

TEST(Index, SelectsPlatform) {
  std::string index =
      R"({"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
    {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":")" +
      kD1 + R"(","size":1,"platform":{"os":"linux","architecture":"amd64"}},
    {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":")" +
      kD2 + R"(","size":1,"platform":{"os":"linux","architecture":"arm64","variant":"v8"}}]})";
  Index idx = Index::parse(index);
  EXPECT_EQ(idx.select(Platform::parse("linux/amd64")).digest.str(), kD1);
  EXPECT_EQ(idx.select(Platform::parse("linux/arm64")).digest.str(), kD2);
  EXPECT_EQ(idx.select(Platform::parse("linux/arm64/v8")).digest.str(), kD2);
  EXPECT_THROW(idx.select(Platform::parse("linux/s390x")), Error);
  EXPECT_EQ(classify_document(index), DocumentKind::kIndex);
  EXPECT_EQ(classify_document(oci_manifest()), DocumentKind::kManifest);
  EXPECT_THROW(Index::parse(oci_manifest()), Error);
}

TEST(Platform, ParsesAndRefuses) {
  EXPECT_EQ(Platform::parse("linux/arm/v7").variant, "v7");
  EXPECT_THROW(Platform::parse("linux"), Error);
  EXPECT_THROW(Platform::parse("linux/amd64/v1/x"), Error);
  EXPECT_THROW(Platform::parse("linux/../x"), Error);
}

TEST(ImageConfig, ParsesDiffIdsAndLabels) {
  std::string cfg =
      R"({"architecture":"amd64","os":"linux","config":{"Labels":{"a":"b"},"Env":["PATH=/bin"]},
    "rootfs":{"type":"layers","diff_ids":[")" +
      kD1 + R"("]}})";
  ImageConfig c = ImageConfig::parse(cfg);
  EXPECT_EQ(c.platform.str(), "linux/amd64");
  ASSERT_EQ(c.diff_ids.size(), 1u);
  EXPECT_EQ(c.labels.at("a"), "b");
  EXPECT_THROW(ImageConfig::parse(R"({"architecture":"amd64","os":"linux"})"), Error);
  EXPECT_THROW(
      ImageConfig::parse(
          R"({"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:x"]}})"),
      Error);
  EXPECT_THROW(ImageConfig::parse(
                   R"({"architecture":1,"os":"linux","rootfs":{"type":"layers","diff_ids":[]}})"),
               Error);
}
