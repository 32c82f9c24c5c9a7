// Where builds' artifacts live: the directory store, and the registry store against a real
// registry on 127.0.0.1, with one server putting a build and another, with its own empty data
// directory, serving it.
#include <gtest/gtest.h>

#include <cstdint>
#include <exception>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "integration/registry_harness.h"
#include "pok8s/oci/digest.h"
#include "pok8s/oci/manifest.h"
#include "pok8s/oci/reference.h"
#include "pok8s/oci/registry.h"
#include "pok8s/server/artifact_store.h"
#include "pok8s/util/error.h"
#include "pok8s/util/file.h"
#include "pok8s/util/sha256.h"

namespace {

namespace fs = std::filesystem;
namespace oci = pok8s::oci;
namespace server = pok8s::server;
namespace util = pok8s::util;
using pok8s::Error;
using pok8s::ErrorKind;
using pok8s::testing::TestRegistry;
using server::StoredArtifact;

// Seeded random bytes: incompressible, and the same on every run.
std::string random_bytes(std::uint64_t seed, std::size_t size) {
  std::mt19937_64 rng(seed);
  std::string out(size, '\0');
  for (std::size_t i = 0; i < size; i += 8) {
    std::uint64_t x = rng();
    for (std::size_t b = 0; b < 8 && i + b < size; ++b)
      out[i + b] = static_cast<char>((x >> (8 * b)) & 0xff);
  }
  return out;
}

// Writes `files` into `dir` as a build's output and returns what the build reports of them.
std::vector<StoredArtifact> write_build(const util::Path& dir,
                                        const std::map<std::string, std::string>& files) {
  util::make_dirs(dir);
  std::vector<StoredArtifact> out;
  for (const auto& [name, bytes] : files) {
    util::write_file_atomic(dir / name, bytes);
    out.push_back({name, bytes.size(), util::sha256_hex(bytes)});
  }
  return out;
}

std::string build_id() {
  return util::random_hex(8);
}

template <typename F>
ErrorKind error_kind_of(F&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.kind();
  }
  ADD_FAILURE() << "no pok8s::Error was thrown";
  return ErrorKind::kInternal;
}

// ---- the directory store

class DirStoreTest : public ::testing::Test {
 protected:
  util::TempDir tmp_ = util::TempDir::scratch();
  std::unique_ptr<server::ArtifactStore> store_ =
      server::open_artifact_store("dir:" + (tmp_.path() / "artifacts").string(), tmp_.path());
};

TEST_F(DirStoreTest, LocatesWhatWasPut) {
  std::string bytes = random_bytes(1, 100000);
  auto artifacts = write_build(tmp_.path() / "out", {{"x.iso", bytes}});
  std::string id = build_id();
  store_->put(id, tmp_.path() / "out", artifacts);
  auto path = store_->locate(id, artifacts[0]);
  ASSERT_TRUE(path);
  EXPECT_EQ(util::read_file(*path), bytes);
  EXPECT_EQ(store_->describe(), "dir:" + (tmp_.path() / "artifacts").string());
}

TEST_F(DirStoreTest, RefusesAFileThatDoesNotMatchAndKeepsNothing) {
  auto artifacts = write_build(tmp_.path() / "out", {{"x.iso", random_bytes(2, 5000)}});
  std::string id = build_id();
  StoredArtifact wrong_sha = artifacts[0];
  wrong_sha.sha256 = util::sha256_hex("something else");
  EXPECT_EQ(error_kind_of([&] { store_->put(id, tmp_.path() / "out", {wrong_sha}); }),
            ErrorKind::kSignature);
  EXPECT_FALSE(store_->locate(id, artifacts[0]));
  EXPECT_FALSE(fs::exists(tmp_.path() / "artifacts" / id));

  auto again = write_build(tmp_.path() / "out2", {{"x.iso", random_bytes(2, 5000)}});
  StoredArtifact wrong_size = again[0];
  wrong_size.size += 1;
  EXPECT_EQ(error_kind_of([&] { store_->put(id, tmp_.path() / "out2", {wrong_size}); }),
            ErrorKind::kSignature);
  EXPECT_FALSE(store_->locate(id, again[0]));
  EXPECT_FALSE(fs::exists(tmp_.path() / "artifacts" / id));
}

TEST_F(DirStoreTest, LocateOfAMissingBuildOrNameIsNothing) {
  auto artifacts = write_build(tmp_.path() / "out", {{"x.iso", random_bytes(3, 5000)}});
  std::string id = build_id();
  store_->put(id, tmp_.path() / "out", artifacts);
  EXPECT_FALSE(store_->locate(build_id(), artifacts[0]));
  StoredArtifact other = artifacts[0];
  other.name = "y.iso";
  EXPECT_FALSE(store_->locate(id, other));
}

TEST_F(DirStoreTest, ASecondPutReplacesTheFirst) {
  std::string id = build_id();
  auto first = write_build(tmp_.path() / "out1",
                           {{"x.iso", random_bytes(4, 5000)}, {"old.json", "{\"a\":1}"}});
  store_->put(id, tmp_.path() / "out1", first);
  std::string bytes = random_bytes(5, 7000);
  auto second = write_build(tmp_.path() / "out2", {{"x.iso", bytes}});
  store_->put(id, tmp_.path() / "out2", second);
  auto path = store_->locate(id, second[0]);
  ASSERT_TRUE(path);
  EXPECT_EQ(util::read_file(*path), bytes);
  EXPECT_FALSE(store_->locate(id, first[0]));
  EXPECT_FALSE(store_->locate(id, first[1]));
}

// ---- the registry store

oci::TransportOptions insecure() {
  oci::TransportOptions o;
  o.tls_verify = false;
  o.retry_delay_ms = 10;
  return o;
}

class RegistryStoreTest : public ::testing::Test {
 protected:
  std::string spec() const { return registry().docker("pok8s/builds"); }
  // A store as one server would open it, with its own data directory.
  std::unique_ptr<server::ArtifactStore> open_server(const std::string& name) {
    return server::open_artifact_store(spec(), tmp_.path() / name, false);
  }
  oci::RegistryClient client(const std::string& tag) const {
    return oci::RegistryClient(
        oci::RegistryReference::parse(registry().host() + "/pok8s/builds:" + tag), insecure(),
        oci::RegistryAccess::kPull);
  }

  // One registry for the whole binary, stopped at exit; each test uses its own build ids.
  static TestRegistry& registry() {
    static TestRegistry shared;
    return shared;
  }
  util::TempDir tmp_ = util::TempDir::scratch();
};

TEST_F(RegistryStoreTest, AnotherServerLocatesWhatOneServerPut) {
  std::map<std::string, std::string> files = {{"x.iso", random_bytes(10, 3u << 20)},
                                              {"x.manifest.json", random_bytes(11, 2u << 20)}};
  auto artifacts = write_build(tmp_.path() / "out", files);
  std::string id = build_id();
  auto a = open_server("server-a");
  a->put(id, tmp_.path() / "out", artifacts);
  EXPECT_EQ(a->describe(), spec());

  auto b = open_server("server-b");
  for (const auto& artifact : artifacts) {
    SCOPED_TRACE(artifact.name);
    auto path = b->locate(id, artifact);
    ASSERT_TRUE(path);
    EXPECT_TRUE(path->string().starts_with((tmp_.path() / "server-b").string()));
    EXPECT_EQ(util::read_file(*path), files.at(artifact.name));
    EXPECT_EQ(util::file_sha256(*path), artifact.sha256);
  }
}

TEST_F(RegistryStoreTest, LocateOfAnUnknownBuildIsNothing) {
  auto artifacts = write_build(tmp_.path() / "out", {{"x.iso", random_bytes(20, 10000)}});
  auto a = open_server("server-a");
  // Before anything is pushed the repository itself is unknown to the registry.
  auto empty = server::open_artifact_store(registry().docker("pok8s/never-pushed"),
                                           tmp_.path() / "server-e", false);
  EXPECT_FALSE(empty->locate(build_id(), artifacts[0]));
  a->put(build_id(), tmp_.path() / "out", artifacts);
  EXPECT_FALSE(a->locate(build_id(), artifacts[0]));
}

TEST_F(RegistryStoreTest, LocateOfAnArtifactThatDoesNotMatchIsNothing) {
  auto artifacts = write_build(tmp_.path() / "out", {{"x.iso", random_bytes(30, 10000)}});
  std::string id = build_id();
  open_server("server-a")->put(id, tmp_.path() / "out", artifacts);
  auto b = open_server("server-b");

  StoredArtifact wrong_sha = artifacts[0];
  wrong_sha.sha256 = util::sha256_hex("something else");
  EXPECT_FALSE(b->locate(id, wrong_sha));
  StoredArtifact wrong_size = artifacts[0];
  wrong_size.size -= 1;
  EXPECT_FALSE(b->locate(id, wrong_size));
  StoredArtifact wrong_name = artifacts[0];
  wrong_name.name = "y.iso";
  EXPECT_FALSE(b->locate(id, wrong_name));
  EXPECT_TRUE(b->locate(id, artifacts[0]));
}

TEST_F(RegistryStoreTest, RefusesAFileThatDoesNotMatchBeforePushingAnything) {
  std::string good = random_bytes(40, 100000);
  auto artifacts =
      write_build(tmp_.path() / "out", {{"a.json", good}, {"x.iso", random_bytes(41, 100000)}});
  artifacts[1].sha256 = util::sha256_hex("something else");
  std::string id = build_id();
  EXPECT_EQ(
      error_kind_of([&] { open_server("server-a")->put(id, tmp_.path() / "out", artifacts); }),
      ErrorKind::kSignature);
  auto c = client(id);
  EXPECT_FALSE(c.head_manifest(id));
  // Not even the file that matched reached the registry.
  EXPECT_FALSE(c.has_blob(oci::Digest::sha256_of(good)));
}

TEST_F(RegistryStoreTest, PushesAnOciArtifactWithTitledLayers) {
  std::string iso = random_bytes(50, 20000);
  std::string json_bytes = "{\"build\":true}";
  auto artifacts = write_build(
      tmp_.path() / "out",
      {{"x.iso", iso}, {"x.manifest.json", json_bytes}, {"x.sig", random_bytes(51, 64)}});
  std::string id = build_id();
  open_server("server-a")->put(id, tmp_.path() / "out", artifacts);

  oci::RawDocument doc = client(id).get_manifest();
  EXPECT_EQ(doc.media_type, oci::media_type::kOciManifest);
  auto m = nlohmann::json::parse(doc.bytes);
  EXPECT_EQ(m["schemaVersion"], 2);
  EXPECT_EQ(m["mediaType"], oci::media_type::kOciManifest);
  EXPECT_EQ(m["artifactType"], "application/vnd.pok8s.build.v1");
  EXPECT_EQ(m["annotations"]["io.pok8s.build.id"], id);
  EXPECT_EQ(m["config"]["mediaType"], "application/vnd.oci.empty.v1+json");
  EXPECT_EQ(m["config"]["digest"],
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a");
  EXPECT_EQ(m["config"]["size"], 2);

  std::map<std::string, std::pair<std::string, std::string>> layers;  // title → type, digest
  for (const auto& l : m["layers"])
    layers[l["annotations"]["org.opencontainers.image.title"]] = {l["mediaType"], l["digest"]};
  ASSERT_EQ(layers.size(), 3u);
  EXPECT_EQ(layers["x.iso"].first, "application/x-iso9660-image");
  EXPECT_EQ(layers["x.iso"].second, oci::Digest::sha256_of(iso).str());
  EXPECT_EQ(layers["x.manifest.json"].first, "application/json");
  EXPECT_EQ(layers["x.manifest.json"].second, oci::Digest::sha256_of(json_bytes).str());
  EXPECT_EQ(layers["x.sig"].first, "application/octet-stream");
}

TEST_F(RegistryStoreTest, ASecondPutReplacesTheFirst) {
  std::string id = build_id();
  auto first = write_build(tmp_.path() / "out1", {{"x.iso", random_bytes(60, 10000)}});
  open_server("server-a")->put(id, tmp_.path() / "out1", first);
  std::string bytes = random_bytes(61, 10000);
  auto second = write_build(tmp_.path() / "out2", {{"x.iso", bytes}});
  open_server("server-a")->put(id, tmp_.path() / "out2", second);

  auto b = open_server("server-b");
  EXPECT_FALSE(b->locate(id, first[0]));
  auto path = b->locate(id, second[0]);
  ASSERT_TRUE(path);
  EXPECT_EQ(util::read_file(*path), bytes);
}

TEST_F(RegistryStoreTest, ConcurrentLocatesOfOneArtifactAllSucceed) {
  std::string bytes = random_bytes(70, 4u << 20);
  auto artifacts = write_build(tmp_.path() / "out", {{"x.iso", bytes}});
  std::string id = build_id();
  open_server("server-a")->put(id, tmp_.path() / "out", artifacts);

  // Two threads on one store, and two more on a second store over the same data directory
  // (a restarted server overlapping the old one).
  std::vector<std::unique_ptr<server::ArtifactStore>> stores;
  stores.push_back(open_server("server-b"));
  stores.push_back(open_server("server-b"));
  constexpr std::size_t kThreads = 4;
  std::vector<std::optional<util::Path>> found(kThreads);
  std::vector<std::exception_ptr> errors(kThreads);
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < kThreads; ++i)
    threads.emplace_back([&, i] {
      try {
        found[i] = stores[i % 2]->locate(id, artifacts[0]);
      } catch (...) {
        errors[i] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (std::size_t i = 0; i < kThreads; ++i) {
    SCOPED_TRACE(i);
    if (errors[i]) {
      try {
        std::rethrow_exception(errors[i]);
      } catch (const std::exception& e) {
        ADD_FAILURE() << e.what();
      }
      continue;
    }
    ASSERT_TRUE(found[i]);
    EXPECT_EQ(util::file_sha256(*found[i]), artifacts[0].sha256);
  }
  EXPECT_EQ(util::read_file(*found[0]), bytes);
}

TEST(OpenArtifactStore, RefusesARegistrySpecWithATagOrDigest) {
  util::TempDir tmp = util::TempDir::scratch();
  for (std::string spec : {"docker://127.0.0.1:5000/pok8s/builds:latest",
                           "docker://127.0.0.1:5000/pok8s/builds@sha256:"
                           "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
                           "docker://127.0.0.1:5000"}) {
    SCOPED_TRACE(spec);
    try {
      server::open_artifact_store(spec, tmp.path(), false);
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
    }
  }
  EXPECT_EQ(server::open_artifact_store("docker://127.0.0.1:5000/pok8s/builds", tmp.path(), false)
                ->describe(),
            "docker://127.0.0.1:5000/pok8s/builds");
}

}  // namespace
