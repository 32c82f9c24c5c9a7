// A blob becomes visible in the cache only once it is complete and verified.
#include "pok8s/oci/blob_store.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "pok8s/util/error.h"

using namespace pok8s;
using namespace pok8s::oci;
namespace fs = std::filesystem;

TEST(BlobStore, StoresVerifiedBlobs) {
  auto dir = util::TempDir::scratch();
  BlobStore store(dir.path());
  Digest d = Digest::sha256_of("hello");
  EXPECT_FALSE(store.has(d));
  store.put(d, "hello", "test blob");
  EXPECT_TRUE(store.has(d));
  EXPECT_EQ(store.read(d, 100), "hello");
}

TEST(BlobStore, RefusesContentThatDoesNotMatchAndLeavesNothing) {
  auto dir = util::TempDir::scratch();
  BlobStore store(dir.path());
  Digest d = Digest::sha256_of("hello");
  EXPECT_THROW(store.put(d, "hellO", "test blob"), Error);
  EXPECT_FALSE(store.has(d));
  EXPECT_TRUE(fs::is_empty(dir.path() / "blobs" / "sha256"));
}

TEST(BlobStore, RefusesMoreBytesThanDeclared) {
  auto dir = util::TempDir::scratch();
  BlobStore store(dir.path());
  Digest d = Digest::sha256_of("hello");
  {
    auto w = store.begin(d, 3);
    EXPECT_THROW(w.write(std::string_view("hello")), Error);
  }
  auto w = store.begin(d, 9);
  w.write(std::string_view("hello"));
  EXPECT_THROW(w.commit("short blob"), Error);
  EXPECT_FALSE(store.has(d));
}

TEST(BlobStore, RecordsDiffIds) {
  auto dir = util::TempDir::scratch();
  BlobStore store(dir.path());
  Digest blob = Digest::sha256_of("a"), diff = Digest::sha256_of("b");
  EXPECT_FALSE(store.verified_diff_id(blob));
  store.record_diff_id(blob, diff);
  EXPECT_EQ(store.verified_diff_id(blob), diff);
}
