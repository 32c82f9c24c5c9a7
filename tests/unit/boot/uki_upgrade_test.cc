// A UKI system's upgrade reads its new image from a uki-iso: real UKIs (the host's systemd stub,
// signed with keys from pok8s keys) and a rootfs with its verity tree, in an ISO written by the
// factory's writer. What belongs together is taken; a UKI from other keys, a UKI missing, a
// root hash that differs, or a rootfs that does not match it is refused naming the entry.
#include "pok8s/build/uki_upgrade.h"

#include <gtest/gtest.h>

#include <fmt/format.h>

#include <filesystem>

#include "pok8s/boot/secure_boot_keys.h"
#include "pok8s/build/uki_artifacts.h"
#include "pok8s/image/iso.h"
#include "pok8s/image/verity.h"
#include "pok8s/util/error.h"
#include "pok8s/util/sha256.h"

using namespace pok8s;
using namespace pok8s::build;
namespace fs = std::filesystem;

namespace {

class UkiUpgrade : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new util::TempDir(util::TempDir::scratch());
    boot::KeyGenOptions o;
    boot::generate_secure_boot_keys(dir_->path() / "a", o);
    boot::generate_secure_boot_keys(dir_->path() / "b", o);
    util::write_file_atomic(dir_->path() / "kernel", std::string(100000, 'k'));
    util::write_file_atomic(dir_->path() / "initrd", std::string(100000, 'i'));
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }

  struct IsoParts {
    std::string keys = "a";
    std::string rootfs_seed = "one";
    bool recovery = true;
    std::string passive_extra;  // appended to the passive UKI's command line
    bool flip_rootfs = false;
  };

  // A uki-iso's install files: a rootfs image with its tree and the three installed UKIs.
  static util::Path make_iso(const std::string& name, const IsoParts& p) {
    util::Path d = dir_->path() / name;
    util::make_dirs(d);
    std::string data;
    for (int i = 0; data.size() < (1u << 20); ++i)
      data += util::sha256_hex(p.rootfs_seed + std::to_string(i));
    util::write_file_atomic(d / "rootfs.img", data);
    image::VerityTree tree = image::append_verity_tree(d / "rootfs.img", "5a17");
    if (p.flip_rootfs) {
      std::string bytes = util::read_file(d / "rootfs.img", 1u << 22);
      bytes[5000] ^= 0x01;
      util::write_file_atomic(d / "rootfs.img", bytes);
    }
    boot::SecureBootKeys keys = boot::load_secure_boot_keys(dir_->path() / p.keys);
    std::vector<image::IsoFile> files = {{"rootfs.squashfs", d / "rootfs.img"}};
    for (const InstalledUki& slot : installed_ukis("console=ttyS0", 3)) {
      if (slot.mode == "recovery" && !p.recovery) continue;
      UkiPlan plan;
      plan.kernel = dir_->path() / "kernel";
      plan.initrd = dir_->path() / "initrd";
      plan.kernel_version = "6.1.0-test";
      plan.os_release = uki_os_release(name, "v9", slot.image_id);
      plan.cmdline = fmt::format("{} {}", slot.cmdline, image::verity_cmdline(tree));
      if (slot.mode == "passive") plan.cmdline += p.passive_extra;
      plan.signing_time = 1700000000;
      util::write_file_atomic(d / slot.file, make_signed_uki(plan, keys).bytes);
      files.push_back({"install/EFI/Linux/" + slot.file, d / slot.file});
    }
    util::Path iso = d / (name + ".iso");
    image::IsoOptions iso_options;
    iso_options.timestamp = 1700000000;
    image::write_iso(files, iso_options, iso);
    return iso;
  }

  // The default parts with one of them changed.
  template <typename F>
  static IsoParts with(F change) {
    IsoParts p;
    change(p);
    return p;
  }

  static Error refusal(const util::Path& iso, const std::optional<util::Path>& installed) {
    util::Path out = dir_->path() / ("out-" + iso.stem().string());
    try {
      write_uki_image(iso, out, installed, nullptr);
    } catch (const Error& e) {
      return e;
    }
    ADD_FAILURE() << iso << " was taken";
    return Error(ErrorKind::kInternal, "");
  }

  static inline util::TempDir* dir_ = nullptr;
};

TEST_F(UkiUpgrade, WritesTheRootfsAndTheUkisOfAnIsoBuiltWithTheInstalledKeys) {
  util::Path installed_iso = make_iso("installed", {});
  util::Path installed = dir_->path() / "installed/pok8s-active+3.efi";
  util::Path iso = make_iso("new", with([](IsoParts& p) { p.rootfs_seed = "two"; }));
  util::Path out = dir_->path() / "out";
  std::vector<std::string> lines;
  UkiImage image =
      write_uki_image(iso, out, installed, [&](std::string_view l) { lines.emplace_back(l); });
  ASSERT_EQ(image.files.size(), 4u);
  EXPECT_EQ(image.files[0].name, "rootfs.img");
  EXPECT_EQ(image.files[1].name, "pok8s-active+3.efi");
  EXPECT_EQ(image.files[2].name, "pok8s-passive.efi");
  EXPECT_EQ(image.files[3].name, "pok8s-recovery.efi");
  for (const auto& f : image.files) {
    EXPECT_EQ(util::file_sha256(out / f.name), util::file_sha256(dir_->path() / "new" / f.name))
        << f.name;
    EXPECT_EQ(f.sha256, util::file_sha256(out / f.name)) << f.name;
    EXPECT_EQ(f.size, fs::file_size(out / f.name)) << f.name;
  }
  EXPECT_EQ(image.version, "v9");
  EXPECT_EQ(image.kernel, "6.1.0-test");
  EXPECT_EQ(image.root_hash.size(), 64u);
  EXPECT_FALSE(lines.empty());
  // Nothing half-written is left.
  for (const auto& e : fs::directory_iterator(out))
    EXPECT_EQ(e.path().extension(), e.path().extension() == ".img" ? ".img" : ".efi") << e.path();
}

TEST_F(UkiUpgrade, RefusesUkisOfOtherKeysAMissingUkiAndARootfsThatDoesNotMatch) {
  util::Path installed_iso = make_iso("installed2", {});
  util::Path installed = dir_->path() / "installed2/pok8s-active+3.efi";

  Error other = refusal(make_iso("other-keys", with([](IsoParts& p) { p.keys = "b"; })), installed);
  EXPECT_EQ(other.kind(), ErrorKind::kSignature);
  EXPECT_NE(std::string(other.what())
                .find("is signed by another certificate than the installed "
                      "pok8s-active+3.efi"),
            std::string::npos)
      << other.what();
  // Without an installed UKI to compare with, the same ISO is taken.
  EXPECT_NO_THROW(
      write_uki_image(dir_->path() / "other-keys/other-keys.iso", dir_->path() / "o2", {}, {}));

  Error missing =
      refusal(make_iso("no-recovery", with([](IsoParts& p) { p.recovery = false; })), installed);
  EXPECT_EQ(missing.kind(), ErrorKind::kFormat);
  EXPECT_NE(std::string(missing.what()).find("it has no UKI of the installed recovery image"),
            std::string::npos)
      << missing.what();

  Error mixed = refusal(make_iso("mixed", with([](IsoParts& p) {
                                   p.passive_extra = " pok8s.verity=" + std::string(64, 'a') +
                                                     ",5a17,257,1052672";
                                 })),
                        installed);
  EXPECT_EQ(mixed.kind(), ErrorKind::kFormat);
  EXPECT_NE(std::string(mixed.what()).find("install/EFI/Linux/pok8s-passive.efi in the uki-iso"),
            std::string::npos)
      << mixed.what();

  Error flipped =
      refusal(make_iso("flipped", with([](IsoParts& p) { p.flip_rootfs = true; })), installed);
  EXPECT_EQ(flipped.kind(), ErrorKind::kSignature);
  EXPECT_NE(std::string(flipped.what()).find("do not match the root hash"), std::string::npos)
      << flipped.what();

  util::write_file_atomic(dir_->path() / "not-an.iso", std::string(100000, 'x'));
  Error garbage = refusal(dir_->path() / "not-an.iso", installed);
  EXPECT_EQ(garbage.kind(), ErrorKind::kFormat) << garbage.what();
}

}  // namespace
