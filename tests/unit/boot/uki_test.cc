// UKIs from Debian's systemd stub: the sections in ukify's order with their contents (read back
// by objcopy), the stub's own sections untouched even when the headers must grow, a signature
// sbverify accepts, and stubs that are not stubs refused.
#include "pok8s/boot/uki.h"

#include <gtest/gtest.h>

#include <fmt/format.h>

#include "bmp.h"
#include "pok8s/boot/authenticode.h"
#include "pok8s/boot/pe.h"
#include "pok8s/boot/secure_boot_keys.h"
#include "pok8s/build/uki_artifacts.h"
#include "pok8s/util/error.h"
#include "pok8s/util/process.h"

using namespace pok8s;
using namespace pok8s::boot;
using pok8s::testing::bmp;

namespace {

struct Parts {
  util::TempDir dir = util::TempDir::scratch();
  UkiInputs in;
  Parts() {
    util::write_file_atomic(dir.path() / "vmlinuz",
                            "MZ-not-really-a-kernel" + std::string(5000, 'k'));
    util::write_file_atomic(dir.path() / "initrd", std::string(70000, 'i'));
    in.kernel = dir.path() / "vmlinuz";
    in.initrd = dir.path() / "initrd";
    in.os_release = "ID=debian\nVERSION_ID=12\n";
    in.cmdline = "console=ttyS0 pok8s.verity=ab,cd,1,4096";
    in.uname = "6.1.0-50-amd64";
    in.pcrpkey = "-----BEGIN PUBLIC KEY-----\n...\n";
  }
  std::string section(const util::Path& uki, const std::string& name) {
    util::Path out = dir.path() / ("dump" + name);
    auto r = util::run_process({"objcopy", fmt::format("--dump-section={}={}", name, out.string()),
                                uki.string(), (dir.path() / "objcopy.out").string()});
    EXPECT_EQ(r.status, 0) << r.output;
    return util::read_file(out, 1u << 20);
  }
};

std::vector<std::string> names(const std::string& uki) {
  std::vector<std::string> out;
  for (const auto& s : uki_sections(uki)) out.push_back(s.name);
  return out;
}

TEST(Uki, AddsTheSectionsInOrderAfterTheStubsOwn) {
  Parts p;
  std::string uki = assemble_uki(p.in);
  EXPECT_EQ(names(uki),
            (std::vector<std::string>{".text", ".reloc", ".data", ".dynamic", ".rela", ".dynsym",
                                      ".sbat", ".sdmagic", ".osrel", ".cmdline", ".uname",
                                      ".pcrpkey", ".initrd", ".linux"}));
  util::Path file = p.dir.path() / "uki.efi";
  util::write_file_atomic(file, uki);
  EXPECT_EQ(p.section(file, ".cmdline"), p.in.cmdline);
  EXPECT_EQ(p.section(file, ".osrel"), p.in.os_release);
  EXPECT_EQ(p.section(file, ".initrd"), std::string(70000, 'i'));
  EXPECT_EQ(p.section(file, ".sdmagic"), p.section(kHostSystemdStub, ".sdmagic"));
  // The headers say what objdump reads: one more line per section.
  auto r = util::run_process({"objdump", "-h", file.string()});
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find(".linux"), std::string::npos) << r.output;
}

TEST(Uki, GrowsTheHeadersWhenTheSectionTableDoesNotFitAndKeepsTheStubsCode) {
  Parts p;
  util::write_file_atomic(p.dir.path() / "splash.bmp", "BM" + std::string(100, 's'));
  p.in.splash = p.dir.path() / "splash.bmp";
  p.in.pcrsig = R"({"sha256":[]})";
  std::string uki = assemble_uki(p.in);
  PeImage pe = parse_pe(uki, "uki");
  EXPECT_GT(pe.size_of_headers, 0x400u);  // the stub's 0x400 held 7 more headers, not 8
  ASSERT_EQ(pe.sections.size(), 16u);
  util::Path file = p.dir.path() / "uki.efi";
  util::write_file_atomic(file, uki);
  EXPECT_EQ(p.section(file, ".text"), p.section(kHostSystemdStub, ".text"));
  EXPECT_EQ(p.section(file, ".splash"), "BM" + std::string(100, 's'));
  EXPECT_EQ(p.section(file, ".pcrsig"), p.in.pcrsig);
}

TEST(Uki, SignedWithTheDbKeyItPassesSbverify) {
  Parts p;
  generate_secure_boot_keys(p.dir.path() / "keys", {});
  SecureBootKeys k = load_secure_boot_keys(p.dir.path() / "keys");
  util::Path file = p.dir.path() / "uki.efi";
  util::write_file_atomic(file,
                          sign_pe(assemble_uki(p.in), k.db_cert.get(), k.db_key.get(), "uki"));
  auto r = util::run_process(
      {"sbverify", "--cert", (p.dir.path() / "keys/db.crt").string(), file.string()});
  EXPECT_EQ(r.status, 0) << r.output;
  // No data between sections: sbverify and the firmware hash the image alike.
  EXPECT_EQ(r.output.find("gap"), std::string::npos) << r.output;
}

// --splash: a BMP goes into every UKI as .splash, and the signed PCR 11 policy covers it, as
// systemd-stub measures it; what is not a BMP is refused naming the file.
TEST(Uki, ASplashImageIsCarriedMeasuredAndCheckedToBeABmp) {
  Parts p;
  util::Path splash = p.dir.path() / "splash.bmp";
  util::write_file_atomic(splash, bmp(8, 4));
  EXPECT_NO_THROW(pok8s::build::check_splash(splash));
  generate_secure_boot_keys(p.dir.path() / "keys", {});
  SecureBootKeys k = load_secure_boot_keys(p.dir.path() / "keys");
  pok8s::build::UkiPlan plan;
  plan.kernel = p.in.kernel;
  plan.initrd = p.in.initrd;
  plan.kernel_version = "6.1.0-50-amd64";
  plan.os_release = p.in.os_release;
  plan.cmdline = p.in.cmdline;
  plan.splash = splash;
  pok8s::build::SignedUki with = pok8s::build::make_signed_uki(plan, k);
  plan.splash.reset();
  pok8s::build::SignedUki without = pok8s::build::make_signed_uki(plan, k);
  EXPECT_EQ(names(with.bytes).size(), names(without.bytes).size() + 1);
  util::Path file = p.dir.path() / "splash.efi";
  util::write_file_atomic(file, with.bytes);
  EXPECT_EQ(p.section(file, ".splash"), bmp(8, 4));
  // The policy differs by the splash's measurement.
  util::Path other = p.dir.path() / "plain.efi";
  util::write_file_atomic(other, without.bytes);
  EXPECT_NE(p.section(file, ".pcrsig"), p.section(other, ".pcrsig"));

  auto refused = [&](const std::string& bytes, const std::string& why) {
    util::Path f = p.dir.path() / "bad.bmp";
    util::write_file_atomic(f, bytes);
    try {
      pok8s::build::check_splash(f);
      ADD_FAILURE() << why << " was taken";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
      EXPECT_NE(std::string(e.what()).find("Failed to use the splash image " + f.string()),
                std::string::npos)
          << e.what();
    }
  };
  refused("\x89PNG\r\n\x1a\n" + std::string(100, 'p'), "a PNG");
  refused(bmp(8, 4) + "trailing", "a BMP whose header says another size");
  refused("BM", "a header cut short");
  EXPECT_THROW(pok8s::build::check_splash(p.dir.path() / "missing.bmp"), Error);
}

TEST(Uki, RefusesWhatIsNotASystemdStub) {
  Parts p;
  std::string uki = assemble_uki(p.in);
  util::write_file_atomic(p.dir.path() / "uki.efi", uki);
  p.in.stub = p.dir.path() / "uki.efi";
  try {
    assemble_uki(p.in);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kFormat);
    EXPECT_NE(std::string(e.what()).find("it already has a .osrel section"), std::string::npos)
        << e.what();
  }
  p.in.stub = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
  try {
    assemble_uki(p.in);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a systemd stub (no .sdmagic saying systemd-stub)"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace

namespace {

// The installed system's three UKIs: systemd-boot sorts type #2 entries by IMAGE_ID before their
// version and boots the first, so active leads whatever the versions; only active counts tries.
TEST(InstalledUkis, ActiveLeadsAndCountsItsTriesEachNamesItsImage) {
  auto ukis = pok8s::build::installed_ukis("console=ttyS0", 2);
  ASSERT_EQ(ukis.size(), 3u);
  EXPECT_EQ(ukis[0].file, "pok8s-active+2.efi");
  EXPECT_EQ(ukis[1].file, "pok8s-passive.efi");
  EXPECT_EQ(ukis[2].file, "pok8s-recovery.efi");
  EXPECT_LT(ukis[0].image_id, ukis[1].image_id);
  EXPECT_LT(ukis[1].image_id, ukis[2].image_id);
  EXPECT_EQ(ukis[0].cmdline,
            "console=ttyS0 pok8s.mode=active pok8s.media=COS_STATE "
            "pok8s.image=/cOS/active/rootfs.img");
  EXPECT_EQ(ukis[2].cmdline,
            "console=ttyS0 pok8s.mode=recovery pok8s.media=COS_RECOVERY "
            "pok8s.image=/cOS/recovery/rootfs.img");
  EXPECT_NE(pok8s::build::uki_os_release("n (active)", "v1", ukis[0].image_id)
                .find("IMAGE_ID=\"pok8s-1-active\"\n"),
            std::string::npos);
  EXPECT_THROW(pok8s::build::installed_ukis("", 0), pok8s::Error);
  EXPECT_THROW(pok8s::build::installed_ukis("", 10), pok8s::Error);
}

}  // namespace
