// The registry transport against a real registry on 127.0.0.1: push and pull with every blob
// verified, basic and token authentication, multi-arch indexes, tampered blobs, retries, and
// interoperability with skopeo in both directions.
#include <archive.h>
#include <archive_entry.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "integration/registry_harness.h"
#include "pok8s/oci/image.h"
#include "pok8s/oci/registry.h"
#include "pok8s/util/error.h"

using namespace pok8s;
using namespace pok8s::oci;
using pok8s::testing::FlakyProxy;
using pok8s::testing::TestRegistry;
namespace fs = std::filesystem;

namespace {

// A tar stream (gzip-compressed or not) of regular files, with fixed metadata so the same
// files always give the same bytes.
std::string make_tar(const std::map<std::string, std::string>& files, bool gzip) {
  std::string out;
  archive* a = archive_write_new();
  archive_write_set_format_pax_restricted(a);
  if (gzip) {
    archive_write_add_filter_gzip(a);
    archive_write_set_filter_option(a, "gzip", "timestamp", nullptr);
  }
  archive_write_set_bytes_in_last_block(a, 1);
  auto writer = [](archive*, void* user, const void* buf, size_t n) -> la_ssize_t {
    static_cast<std::string*>(user)->append(static_cast<const char*>(buf), n);
    return static_cast<la_ssize_t>(n);
  };
  if (archive_write_open(a, &out, nullptr, writer, nullptr) != ARCHIVE_OK)
    throw std::runtime_error(archive_error_string(a));
  for (const auto& [path, content] : files) {
    archive_entry* e = archive_entry_new();
    archive_entry_set_pathname(e, path.c_str());
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_entry_set_size(e, static_cast<la_int64_t>(content.size()));
    archive_entry_set_mtime(e, 1700000000, 0);
    archive_write_header(a, e);
    archive_write_data(a, content.data(), content.size());
    archive_entry_free(e);
  }
  archive_write_close(a);
  archive_write_free(a);
  return out;
}

// A pseudo-random payload: incompressible enough that layers have some size.
std::string payload(const std::string& seed, std::size_t size) {
  std::string out;
  std::uint64_t x = std::hash<std::string>{}(seed) | 1;
  while (out.size() < size) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    out += static_cast<char>(x & 0xff);
  }
  return out;
}

// An image built in the test: gzip layers and a config in `store`, an OCI manifest.
struct TestImage {
  ResolvedImage image;
  std::vector<std::string> layer_bytes;
  Digest digest() const { return image.manifest_doc.digest(); }
};

TestImage make_image(BlobStore& store, const std::string& architecture, const std::string& seed,
                     int layers = 2) {
  TestImage t;
  nlohmann::json manifest_layers = nlohmann::json::array();
  nlohmann::json diff_ids = nlohmann::json::array();
  for (int i = 0; i < layers; ++i) {
    std::map<std::string, std::string> files = {{"etc/pok8s-test/" + seed + "-" + std::to_string(i),
                                                 payload(seed + std::to_string(i), 300000)},
                                                {"etc/pok8s-test/arch", architecture}};
    std::string tar = make_tar(files, false);
    std::string gz = make_tar(files, true);
    Digest blob = Digest::sha256_of(gz);
    store.put(blob, gz, "test layer");
    diff_ids.push_back(Digest::sha256_of(tar).str());
    manifest_layers.push_back(
        {{"mediaType", media_type::kOciLayerGzip}, {"digest", blob.str()}, {"size", gz.size()}});
    t.layer_bytes.push_back(gz);
  }
  nlohmann::json config = {{"architecture", architecture},
                           {"os", "linux"},
                           {"config", {{"Env", {"PATH=/usr/bin:/bin"}}}},
                           {"rootfs", {{"type", "layers"}, {"diff_ids", diff_ids}}}};
  t.image.config_bytes = config.dump();
  Digest config_digest = Digest::sha256_of(t.image.config_bytes);
  store.put(config_digest, t.image.config_bytes, "test config");
  nlohmann::json manifest = {{"schemaVersion", 2},
                             {"mediaType", media_type::kOciManifest},
                             {"config",
                              {{"mediaType", media_type::kOciConfig},
                               {"digest", config_digest.str()},
                               {"size", t.image.config_bytes.size()}}},
                             {"layers", manifest_layers}};
  t.image.source_name = "test image " + seed;
  t.image.manifest_doc = RawDocument{manifest.dump(), std::string(media_type::kOciManifest)};
  t.image.manifest = Manifest::parse(t.image.manifest_doc.bytes, t.image.manifest_doc.media_type);
  t.image.config = ImageConfig::parse(t.image.config_bytes);
  return t;
}

TransportOptions insecure() {
  TransportOptions o;
  o.tls_verify = false;
  o.retry_delay_ms = 10;
  return o;
}

Digest push(const TestImage& t, const BlobStore& store, const std::string& name,
            const TransportOptions& options, const ProgressFn& progress = {}) {
  auto destination = open_destination(ImageName::parse(name), options);
  return destination->write(t.image, store, options, progress);
}

// Pulls `name` into a fresh store and checks every blob against the image it was built from.
ResolvedImage pull_and_verify(
    const std::string& name, const TestImage& expected, BlobStore& store,
    const TransportOptions& options,
    const std::optional<Platform>& platform = Platform::parse("linux/amd64")) {
  auto source = open_source(ImageName::parse(name), options);
  ResolvedImage got = resolve_image(*source, store, platform);
  fetch_layers(*source, got, store, options, {});
  EXPECT_EQ(got.manifest_digest(), expected.digest());
  EXPECT_EQ(got.config_bytes, expected.image.config_bytes);
  EXPECT_EQ(got.manifest.layers.size(), expected.layer_bytes.size());
  for (std::size_t i = 0; i < got.manifest.layers.size(); ++i)
    EXPECT_EQ(store.read(got.manifest.layers[i].digest, 64u << 20), expected.layer_bytes[i])
        << "layer " << i;
  return got;
}

// Runs `fn`, which must throw pok8s::Error; returns it for inspection.
template <typename F>
Error error_of(F&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "no pok8s::Error thrown";
  return Error(ErrorKind::kInternal, "none");
}

// An auth.json with no entries, so a developer's own logins never leak into a test.
util::Path empty_auth_file(const util::Path& dir) {
  util::Path p = dir / "empty-auth.json";
  util::write_file_atomic(p, R"({"auths":{}})");
  return p;
}

class RegistryTest : public ::testing::Test {
 protected:
  util::TempDir work_ = util::TempDir::scratch();
  BlobStore source_store_{work_.path() / "source-cache"};
  BlobStore pull_store_{work_.path() / "pull-cache"};
};

}  // namespace

TEST_F(RegistryTest, PushesAndPullsBackWithEveryBlobVerified) {
  TestRegistry registry;
  TestImage img = make_image(source_store_, "amd64", "push-pull", 3);
  std::vector<ProgressEvent> events;
  Digest pushed = push(img, source_store_, registry.docker("test/app:v1"), insecure(),
                       [&](const ProgressEvent& e) { events.push_back(e); });
  EXPECT_EQ(pushed, img.digest());
  int starts = 0, dones = 0;
  for (const auto& e : events) {
    starts += e.kind == ProgressEvent::Kind::kBlobStart;
    dones += e.kind == ProgressEvent::Kind::kBlobDone;
  }
  EXPECT_EQ(starts, 4);  // three layers and the config
  EXPECT_EQ(dones, 4);

  ResolvedImage got = pull_and_verify(registry.docker("test/app:v1"), img, pull_store_, insecure());
  EXPECT_EQ(got.manifest_doc.bytes, img.image.manifest_doc.bytes);
  EXPECT_EQ(got.manifest_doc.media_type, media_type::kOciManifest);

  // A second push finds every blob in place and uploads none.
  events.clear();
  EXPECT_EQ(push(img, source_store_, registry.docker("test/app:v2"), insecure(),
                 [&](const ProgressEvent& e) { events.push_back(e); }),
            img.digest());
  for (const auto& e : events) EXPECT_EQ(e.kind, ProgressEvent::Kind::kBlobCached) << e.what;
  EXPECT_EQ(events.size(), 4u);
}

TEST_F(RegistryTest, PullsByDigestAndReportsUnknownTagsClearly) {
  TestRegistry registry;
  TestImage img = make_image(source_store_, "amd64", "by-digest");
  push(img, source_store_, registry.docker("test/app:v1"), insecure());
  pull_and_verify(registry.docker("test/app@" + img.digest().str()), img, pull_store_, insecure());

  RegistryClient client(RegistryReference::parse(registry.host() + "/test/app:v1"), insecure(),
                        RegistryAccess::kPull);
  auto head = client.head_manifest("v1");
  ASSERT_TRUE(head);
  EXPECT_EQ(head->digest, img.digest());
  EXPECT_EQ(head->size, static_cast<std::int64_t>(img.image.manifest_doc.bytes.size()));
  EXPECT_FALSE(client.head_manifest("nope"));
  EXPECT_TRUE(client.has_blob(img.image.manifest.layers[0].digest));
  EXPECT_FALSE(client.has_blob(Digest::sha256_of("not there")));

  // Verified TLS is the default; a plain HTTP registry is refused with a hint.
  TransportOptions verified;
  verified.retries = 0;
  Error tls = error_of([&] {
    open_source(ImageName::parse(registry.docker("test/app:v1")), verified)->top_document();
  });
  EXPECT_EQ(tls.kind(), ErrorKind::kIo);
  EXPECT_NE(std::string(tls.what()).find("use --tls-verify=false"), std::string::npos)
      << tls.what();

  std::string name = registry.docker("test/app:nope");
  Error e = error_of([&] { open_source(ImageName::parse(name), insecure())->top_document(); });
  EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
  EXPECT_EQ(std::string(e.what()), "Failed to pull " + name + ": manifest unknown (HTTP 404)");
}

TEST_F(RegistryTest, BasicAuthAcceptsTheRightPasswordAndRefusesAWrongOne) {
  TestRegistry registry(TestRegistry::Auth::kBasic);
  TestImage img = make_image(source_store_, "amd64", "basic");
  TransportOptions good = insecure();
  good.credentials = std::string(pok8s::testing::kTestUser) + ":" + pok8s::testing::kTestPassword;
  EXPECT_EQ(push(img, source_store_, registry.docker("private/app:v1"), good), img.digest());
  pull_and_verify(registry.docker("private/app:v1"), img, pull_store_, good);

  TransportOptions wrong = insecure();
  wrong.credentials = std::string(pok8s::testing::kTestUser) + ":wrong-password";
  Error refused = error_of(
      [&] { pull_and_verify(registry.docker("private/app:v1"), img, pull_store_, wrong); });
  EXPECT_EQ(refused.kind(), ErrorKind::kAuth);
  std::string message = refused.what();
  EXPECT_NE(message.find("Failed to pull " + registry.docker("private/app:v1") +
                         ": the registry refused the credentials of user \"pok8s\""),
            std::string::npos)
      << message;
  EXPECT_EQ(message.find("wrong-password"), std::string::npos) << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;

  TransportOptions anonymous = insecure();
  anonymous.auth_file = empty_auth_file(work_.path());
  Error missing = error_of(
      [&] { pull_and_verify(registry.docker("private/app:v1"), img, pull_store_, anonymous); });
  EXPECT_EQ(missing.kind(), ErrorKind::kAuth);
  EXPECT_NE(std::string(missing.what()).find("no credentials for " + registry.host()),
            std::string::npos)
      << missing.what();
}

TEST_F(RegistryTest, BasicAuthReadsCredentialsFromAnAuthFile) {
  TestRegistry registry(TestRegistry::Auth::kBasic);
  TestImage img = make_image(source_store_, "amd64", "auth-file");
  TransportOptions options = insecure();
  options.auth_file = work_.path() / "auth.json";
  // "pok8s:right-password"
  util::write_file_atomic(*options.auth_file, R"({"auths":{")" + registry.host() +
                                                  R"(":{"auth":"cG9rOHM6cmlnaHQtcGFzc3dvcmQ="}}})");
  EXPECT_EQ(push(img, source_store_, registry.docker("private/app:v1"), options), img.digest());
  pull_and_verify(registry.docker("private/app:v1"), img, pull_store_, options);
}

TEST_F(RegistryTest, BearerTokenAuthWorksAndRefusesWrongCredentials) {
  TestRegistry registry(TestRegistry::Auth::kToken);
  TestImage img = make_image(source_store_, "amd64", "token");
  TransportOptions good = insecure();
  good.credentials = std::string(pok8s::testing::kTestUser) + ":" + pok8s::testing::kTestPassword;
  EXPECT_EQ(push(img, source_store_, registry.docker("tokens/app:v1"), good), img.digest());
  pull_and_verify(registry.docker("tokens/app:v1"), img, pull_store_, good);

  TransportOptions wrong = insecure();
  wrong.credentials = std::string(pok8s::testing::kTestUser) + ":wrong-password";
  Error refused = error_of([&] {
    BlobStore other(work_.path() / "other-cache");
    pull_and_verify(registry.docker("tokens/app:v1"), img, other, wrong);
  });
  EXPECT_EQ(refused.kind(), ErrorKind::kAuth);
  std::string message = refused.what();
  EXPECT_NE(message.find("the token server refused the credentials of user \"pok8s\""),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("invalid username or password (HTTP 401)"), std::string::npos) << message;
  EXPECT_EQ(message.find("wrong-password"), std::string::npos) << message;

  TransportOptions anonymous = insecure();
  anonymous.auth_file = empty_auth_file(work_.path());
  Error missing = error_of([&] {
    open_source(ImageName::parse(registry.docker("tokens/app:v1")), anonymous)->top_document();
  });
  EXPECT_EQ(missing.kind(), ErrorKind::kAuth);
  EXPECT_NE(std::string(missing.what()).find("the token server wants credentials"),
            std::string::npos)
      << missing.what();
}

TEST_F(RegistryTest, MultiArchIndexSelectsThePlatformAskedFor) {
  TestRegistry registry;
  TestImage amd = make_image(source_store_, "amd64", "multi-amd");
  TestImage arm = make_image(source_store_, "arm64", "multi-arm");
  push(amd, source_store_, registry.docker("test/multi@" + amd.digest().str()), insecure());
  push(arm, source_store_, registry.docker("test/multi@" + arm.digest().str()), insecure());
  auto entry = [](const TestImage& t, const char* arch) {
    return nlohmann::json{{"mediaType", media_type::kOciManifest},
                          {"digest", t.digest().str()},
                          {"size", t.image.manifest_doc.bytes.size()},
                          {"platform", {{"os", "linux"}, {"architecture", arch}}}};
  };
  nlohmann::json index = {{"schemaVersion", 2},
                          {"mediaType", media_type::kOciIndex},
                          {"manifests", {entry(amd, "amd64"), entry(arm, "arm64")}}};
  RawDocument doc{index.dump(), std::string(media_type::kOciIndex)};
  EXPECT_EQ(
      push_index(RegistryReference::parse(registry.host() + "/test/multi:v1"), doc, insecure()),
      doc.digest());

  ResolvedImage got_arm = pull_and_verify(registry.docker("test/multi:v1"), arm, pull_store_,
                                          insecure(), Platform::parse("linux/arm64"));
  EXPECT_EQ(got_arm.config.platform.architecture, "arm64");
  ASSERT_TRUE(got_arm.index);
  EXPECT_EQ(got_arm.index->digest(), doc.digest());
  ResolvedImage got_amd = pull_and_verify(registry.docker("test/multi:v1"), amd, pull_store_,
                                          insecure(), Platform::parse("linux/amd64"));
  EXPECT_EQ(got_amd.config.platform.architecture, "amd64");

  // An index naming a manifest the repository lacks is refused before it is pushed.
  TestImage absent = make_image(source_store_, "amd64", "absent");
  nlohmann::json dangling = {{"schemaVersion", 2},
                             {"mediaType", media_type::kOciIndex},
                             {"manifests", {entry(absent, "amd64")}}};
  Error e = error_of([&] {
    push_index(RegistryReference::parse(registry.host() + "/test/multi:v2"),
               RawDocument{dangling.dump(), std::string(media_type::kOciIndex)}, insecure());
  });
  EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
}

TEST_F(RegistryTest, RefusesATamperedBlobAndLeavesNothingInTheCache) {
  TestRegistry registry;
  TestImage img = make_image(source_store_, "amd64", "tamper");
  push(img, source_store_, registry.docker("test/app:v1"), insecure());
  const Digest& victim = img.image.manifest.layers[1].digest;
  util::Path data = registry.blob_data(victim);
  ASSERT_TRUE(fs::exists(data)) << data;
  std::string bytes = util::read_file(data);
  bytes[bytes.size() / 2] = static_cast<char>(bytes[bytes.size() / 2] ^ 0x55);
  util::write_file_atomic(data, bytes);

  Error e = error_of(
      [&] { pull_and_verify(registry.docker("test/app:v1"), img, pull_store_, insecure()); });
  EXPECT_EQ(e.kind(), ErrorKind::kSignature);
  EXPECT_NE(std::string(e.what()).find("content hashes to"), std::string::npos) << e.what();
  EXPECT_FALSE(pull_store_.has(victim));
  // Only complete, verified blobs are in the cache: no temporary leftovers, no tampered bytes.
  for (const auto& entry : fs::directory_iterator(pull_store_.root() / "blobs" / "sha256")) {
    Digest d = Digest::sha256(entry.path().filename().string());
    EXPECT_EQ(Digest::sha256_of(util::read_file(entry.path())), d) << entry.path();
  }
}

TEST_F(RegistryTest, RetriesServiceUnavailableAndDroppedConnections) {
  TestRegistry registry;
  TestImage img = make_image(source_store_, "amd64", "retry");
  push(img, source_store_, registry.docker("test/app:v1"), insecure());

  FlakyProxy unavailable(registry.port(), 3, FlakyProxy::Mode::kServiceUnavailable);
  std::string through = "docker://" + unavailable.host() + "/test/app:v1";
  pull_and_verify(through, img, pull_store_, insecure());
  EXPECT_GE(unavailable.requests_seen(), 3 + 4);  // the failures, then the manifest, config, layers

  FlakyProxy dropping(registry.port(), 2, FlakyProxy::Mode::kDropConnection);
  BlobStore second(work_.path() / "second-cache");
  pull_and_verify("docker://" + dropping.host() + "/test/app:v1", img, second, insecure());

  // Blob bodies cut off halfway: each transfer starts again with a fresh writer.
  FlakyProxy truncating(registry.port(), 3, FlakyProxy::Mode::kTruncateBody, "/blobs/");
  BlobStore fourth(work_.path() / "fourth-cache");
  pull_and_verify("docker://" + truncating.host() + "/test/app:v1", img, fourth, insecure());
  EXPECT_GE(truncating.requests_seen(), 1 + 1 + 3 + 3);  // probe, manifest, blobs, their retries

  FlakyProxy hopeless(registry.port(), 1000, FlakyProxy::Mode::kServiceUnavailable);
  TransportOptions few = insecure();
  few.retries = 2;
  BlobStore third(work_.path() / "third-cache");
  Error e = error_of(
      [&] { pull_and_verify("docker://" + hopeless.host() + "/test/app:v1", img, third, few); });
  EXPECT_EQ(e.kind(), ErrorKind::kIo);
  EXPECT_NE(std::string(e.what()).find("try again later (HTTP 503) (gave up after 3 attempts)"),
            std::string::npos)
      << e.what();
}

TEST_F(RegistryTest, SkopeoReadsWhatPok8sPushed) {
  TestRegistry registry;
  TestImage img = make_image(source_store_, "amd64", "skopeo-reads");
  push(img, source_store_, registry.docker("test/app:v1"), insecure());
  auto inspect = nlohmann::json::parse(pok8s::testing::run(
      {"skopeo", "inspect", "--tls-verify=false", registry.docker("test/app:v1")}));
  EXPECT_EQ(inspect["Digest"], img.digest().str());
  EXPECT_EQ(inspect["Architecture"], "amd64");
  ASSERT_EQ(inspect["Layers"].size(), img.image.manifest.layers.size());
  for (std::size_t i = 0; i < img.image.manifest.layers.size(); ++i)
    EXPECT_EQ(inspect["Layers"][i], img.image.manifest.layers[i].digest.str());
  std::string raw = pok8s::testing::run(
      {"skopeo", "inspect", "--raw", "--tls-verify=false", registry.docker("test/app:v1")});
  EXPECT_EQ(raw, img.image.manifest_doc.bytes);
  // skopeo copies it on to another repository, reading every blob back.
  pok8s::testing::run({"skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
                       registry.docker("test/app:v1"), registry.docker("copied/app:v1")});
  pull_and_verify(registry.docker("copied/app:v1"), img, pull_store_, insecure());
}

TEST_F(RegistryTest, PullsWhatSkopeoPushedFromAnOciLayout) {
  TestRegistry registry;
  TestImage img = make_image(source_store_, "amd64", "skopeo-writes");
  // An OCI image layout written by hand, for skopeo to push.
  util::Path layout = work_.path() / "layout";
  util::make_dirs(layout / "blobs" / "sha256");
  auto put_blob = [&](const Digest& d, const std::string& bytes) {
    util::write_file_atomic(layout / "blobs" / "sha256" / d.hex(), bytes);
  };
  for (std::size_t i = 0; i < img.layer_bytes.size(); ++i)
    put_blob(img.image.manifest.layers[i].digest, img.layer_bytes[i]);
  put_blob(img.image.manifest.config.digest, img.image.config_bytes);
  put_blob(img.digest(), img.image.manifest_doc.bytes);
  util::write_file_atomic(layout / "oci-layout", R"({"imageLayoutVersion":"1.0.0"})");
  nlohmann::json index = {{"schemaVersion", 2},
                          {"manifests",
                           {{{"mediaType", media_type::kOciManifest},
                             {"digest", img.digest().str()},
                             {"size", img.image.manifest_doc.bytes.size()},
                             {"annotations", {{"org.opencontainers.image.ref.name", "v1"}}}}}}};
  util::write_file_atomic(layout / "index.json", index.dump());
  pok8s::testing::run({"skopeo", "copy", "--dest-tls-verify=false",
                       "oci:" + layout.string() + ":v1", registry.docker("from-skopeo/app:v1")});
  ResolvedImage got =
      pull_and_verify(registry.docker("from-skopeo/app:v1"), img, pull_store_, insecure());
  EXPECT_EQ(got.manifest.layers.size(), 2u);
}
