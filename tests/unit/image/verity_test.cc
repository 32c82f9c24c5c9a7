// The rootfs image's dm-verity tree: what veritysetup (cryptsetup-bin) verifies with the
// parameters pok8s puts on the command line, the same bytes for the same salt, and a flipped
// byte caught.
#include "pok8s/image/verity.h"

#include <gtest/gtest.h>

#include <fmt/format.h>

#include "pok8s/node/dm_verity.h"
#include "pok8s/util/error.h"
#include "pok8s/util/process.h"
#include "pok8s/util/sha256.h"

using namespace pok8s;
using namespace pok8s::image;

namespace {

constexpr const char* kSalt = "5a17";

// 1 MiB and a bit of data no block repeats in.
std::string data() {
  std::string d;
  for (int i = 0; d.size() < (1u << 20) + 1000; ++i) d += util::sha256_hex(std::to_string(i));
  return d.substr(0, (1u << 20) + 1000);
}

util::ProcessResult veritysetup_verify(const util::Path& image, const VerityTree& t) {
  return util::run_process({"veritysetup", "verify", image.string(), image.string(), t.root_hash,
                            "--no-superblock", fmt::format("--hash-offset={}", t.hash_offset),
                            fmt::format("--data-blocks={}", t.data_blocks),
                            fmt::format("--salt={}", t.salt)});
}

TEST(Verity, AppendsATreeVeritysetupVerifies) {
  util::TempDir dir = util::TempDir::scratch();
  util::Path image = dir.path() / "rootfs.img";
  util::write_file_atomic(image, data());
  VerityTree t = append_verity_tree(image, kSalt);
  EXPECT_EQ(t.data_blocks, 257u);  // padded to whole blocks
  EXPECT_EQ(t.hash_offset, 257u * 4096);
  EXPECT_EQ(t.root_hash.size(), 64u);
  EXPECT_GT(t.hash_size, 0u);
  EXPECT_EQ(std::filesystem::file_size(image), t.hash_offset + t.hash_size);
  EXPECT_EQ(util::read_file(image, 1u << 22).substr(0, data().size()), data());
  auto r = veritysetup_verify(image, t);
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(verity_cmdline(t),
            fmt::format("pok8s.verity={},5a17,257,{}", t.root_hash, 257u * 4096));
}

TEST(Verity, TheSameDataAndSaltGiveTheSameTreeAndAFlippedByteFailsVerification) {
  util::TempDir dir = util::TempDir::scratch();
  util::Path a = dir.path() / "a.img", b = dir.path() / "b.img";
  util::write_file_atomic(a, data());
  util::write_file_atomic(b, data());
  VerityTree ta = append_verity_tree(a, kSalt);
  VerityTree tb = append_verity_tree(b, kSalt);
  EXPECT_EQ(ta.root_hash, tb.root_hash);
  EXPECT_EQ(util::file_sha256(a), util::file_sha256(b));
  util::Path c = dir.path() / "c.img";
  util::write_file_atomic(c, data());
  EXPECT_NE(append_verity_tree(c, "5a18").root_hash, ta.root_hash);

  std::string bytes = util::read_file(a, 1u << 22);
  bytes[300000] ^= 0x01;
  util::write_file_atomic(a, bytes);
  auto r = veritysetup_verify(a, ta);
  EXPECT_NE(r.status, 0) << r.output;
}

TEST(Verity, RefusesABadSaltAndAnEmptyImage) {
  util::TempDir dir = util::TempDir::scratch();
  util::Path image = dir.path() / "rootfs.img";
  util::write_file_atomic(image, "x");
  EXPECT_THROW(append_verity_tree(image, "xyz"), Error);
  EXPECT_THROW(append_verity_tree(image, ""), Error);
  EXPECT_THROW(append_verity_tree(image, std::string(130, 'a')), Error);
  util::write_file_atomic(image, "");
  EXPECT_THROW(append_verity_tree(image, kSalt), Error);
}

// The upgrade's check of a new rootfs against its UKIs' root hash, and pok8s-init's one-block
// check of which A/B image a command line names.
TEST(Verity, VerifiesTheWholeImageAndTellsWhichImageATreeBelongsTo) {
  util::TempDir dir = util::TempDir::scratch();
  util::Path a = dir.path() / "a.img", b = dir.path() / "b.img";
  util::write_file_atomic(a, data());
  util::write_file_atomic(b, data().substr(0, 500000));
  VerityTree ta = append_verity_tree(a, kSalt);
  VerityTree tb = append_verity_tree(b, kSalt);
  EXPECT_NO_THROW(verify_verity_tree(a, ta));
  auto params = [](const VerityTree& t) {
    return node::VerityParams{t.root_hash, t.salt, t.data_blocks, t.hash_offset};
  };
  EXPECT_TRUE(node::verity_root_matches(a, params(ta)));
  EXPECT_TRUE(node::verity_root_matches(b, params(tb)));
  EXPECT_FALSE(node::verity_root_matches(b, params(ta)));
  EXPECT_FALSE(node::verity_root_matches(dir.path() / "missing.img", params(ta)));
  try {
    verify_verity_tree(b, ta);
    ADD_FAILURE() << "b verified against a's tree";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kSignature) << e.what();
  }

  // A data block changed: the top of the tree still matches, the whole check does not.
  std::string bytes = util::read_file(a, 1u << 22);
  bytes[300000] ^= 0x01;
  util::write_file_atomic(a, bytes);
  EXPECT_TRUE(node::verity_root_matches(a, params(ta)));
  try {
    verify_verity_tree(a, ta);
    ADD_FAILURE() << "a flipped data byte verified";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kSignature) << e.what();
    EXPECT_NE(std::string(e.what()).find("do not match the root hash " + ta.root_hash),
              std::string::npos)
        << e.what();
  }
  VerityTree bad = ta;
  bad.root_hash = "zz";
  EXPECT_THROW(verify_verity_tree(a, bad), Error);
}

}  // namespace
