#include "pok8s/build/uki_artifacts.h"

#include <fmt/format.h>
#include <sys/stat.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "pok8s/boot/authenticode.h"
#include "pok8s/boot/pcr_policy.h"
#include "pok8s/image/disk_layout.h"
#include "pok8s/util/error.h"
#include "pok8s/util/sha256.h"

namespace pok8s::build {
namespace {

namespace fs = std::filesystem;

// Bumped when the verity step's output for the same inputs changes.
constexpr int kVerityStepVersion = 1;

}  // namespace

VerityRootfs make_verity_rootfs(const util::Path& cache, const util::Path& rootfs,
                                std::string_view salt_seed,
                                const std::function<void(std::string_view)>& log) {
  // The rootfs' cache name already hashes the image and the writer's options.
  nlohmann::json key = {{"step", "verity"},
                        {"v", kVerityStepVersion},
                        {"rootfs", rootfs.filename().string()},
                        {"seed", salt_seed}};
  std::string id = util::sha256_hex(key.dump());
  util::Path dir = cache / "verity";
  VerityRootfs out{dir / (id + ".img"), {}};
  util::Path tree_file = dir / (id + ".json");
  if (util::is_regular_file(out.image) && util::is_regular_file(tree_file)) {
    auto j = nlohmann::json::parse(util::read_file(tree_file, 4096));
    out.tree.root_hash = j.at("rootHash").get<std::string>();
    out.tree.salt = j.at("salt").get<std::string>();
    out.tree.data_blocks = j.at("dataBlocks").get<std::uint64_t>();
    out.tree.hash_offset = j.at("hashOffset").get<std::uint64_t>();
    out.tree.hash_size = j.at("hashSize").get<std::uint64_t>();
    if (log) log("Rootfs image with its dm-verity tree: cached");
    return out;
  }
  if (log) log("Appending the dm-verity tree to the rootfs image");
  util::make_dirs(dir);
  util::Path tmp = dir / (id + ".img.tmp-" + util::random_hex(4));
  try {
    util::copy_file_atomic(rootfs, tmp);
    // 32 bytes of salt, from the seed: the same build makes the same tree.
    out.tree = image::append_verity_tree(
        tmp, util::sha256_hex("pok8s verity salt " + std::string(salt_seed)));
    fs::rename(tmp, out.image);
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
  nlohmann::json j = {{"rootHash", out.tree.root_hash},
                      {"salt", out.tree.salt},
                      {"dataBlocks", out.tree.data_blocks},
                      {"hashOffset", out.tree.hash_offset},
                      {"hashSize", out.tree.hash_size}};
  // Written last: only a complete entry is a cache hit.
  util::write_file_atomic(tree_file, j.dump());
  return out;
}

void check_splash(const util::Path& file) {
  auto refuse = [&](std::string_view why) {
    return Error(ErrorKind::kInvalidInput,
                 fmt::format("Failed to use the splash image {}: {}", file.string(), why));
  };
  if (!util::is_regular_file(file)) throw refuse("no such file");
  std::uint64_t size = fs::file_size(file);
  if (size > kMaxSplashBytes)
    throw refuse(
        fmt::format("{} bytes, more than the {} MiB a UKI carries", size, kMaxSplashBytes >> 20));
  // BITMAPFILEHEADER: "BM", then the file's size (little endian).
  std::string head = util::read_file(file, kMaxSplashBytes).substr(0, 14);
  std::uint32_t declared = 0;
  for (int i = 5; i >= 2 && head.size() >= 6; --i)
    declared = (declared << 8) | static_cast<unsigned char>(head[static_cast<std::size_t>(i)]);
  if (head.size() < 14 || head[0] != 'B' || head[1] != 'M' || declared != size)
    throw refuse("not a BMP image (systemd-stub shows BMP only)");
}

SignedUki make_signed_uki(const UkiPlan& plan, const boot::SecureBootKeys& keys) {
  std::string kernel = util::read_file(plan.kernel, boot::kMaxUkiPartBytes);
  std::string initrd = util::read_file(plan.initrd, boot::kMaxUkiPartBytes);
  std::string splash = plan.splash ? util::read_file(*plan.splash, kMaxSplashBytes) : "";
  // What the stub measures into PCR 11, in the bytes the UKI will carry.
  std::map<std::string, std::string_view> measured = {{".linux", kernel},
                                                      {".osrel", plan.os_release},
                                                      {".cmdline", plan.cmdline},
                                                      {".initrd", initrd},
                                                      {".pcrpkey", keys.pcr_public}};
  if (plan.splash) measured[".splash"] = splash;
  boot::UkiInputs in;
  in.stub = plan.stub;
  in.os_release = plan.os_release;
  in.cmdline = plan.cmdline;
  in.uname = plan.kernel_version;
  in.sbat = plan.sbat;
  in.pcrpkey = keys.pcr_public;
  in.splash = plan.splash;
  // Only the enter-initrd phase is signed: pok8s-init unseals the disk key there, then measures
  // leave-initrd, so nothing that runs later finds a signed policy for PCR 11 and unseals it.
  std::vector<boot::PcrPhaseValue> phases = boot::expected_pcr11(measured);
  phases.resize(1);
  in.pcrsig = boot::pcr_signature_json(phases, keys.pcr_key.get());
  in.kernel = plan.kernel;
  in.initrd = plan.initrd;
  std::string unsigned_uki = boot::assemble_uki(in);
  SignedUki out;
  out.bytes = boot::sign_pe(unsigned_uki, keys.db_cert.get(), keys.db_key.get(), "the UKI",
                            plan.signing_time);
  out.sections = boot::uki_sections(out.bytes);
  return out;
}

std::string uki_os_release(std::string_view name, std::string_view version,
                           std::string_view image_id) {
  return fmt::format(
      "NAME=\"pok8s\"\nID=pok8s\nPRETTY_NAME=\"pok8s {}\"\nIMAGE_ID=\"{}\"\n"
      "IMAGE_VERSION=\"{}\"\nVERSION_ID=\"{}\"\n",
      name, image_id.empty() ? name : image_id, version, version);
}

std::vector<InstalledUki> installed_ukis(std::string_view base_cmdline, int boot_tries) {
  if (boot_tries < 1 || boot_tries > 9)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to set up boot counting: {} boot tries (1 to 9)", boot_tries));
  struct Slot {
    std::string_view mode, label;
    int order;
  };
  std::vector<InstalledUki> out;
  for (const Slot& s :
       {Slot{"active", image::kStateLabel, 1}, Slot{"passive", image::kStateLabel, 2},
        Slot{"recovery", image::kRecoveryLabel, 3}}) {
    InstalledUki u;
    u.mode = s.mode;
    u.file = s.mode == "active" ? fmt::format("pok8s-{}+{}.efi", s.mode, boot_tries)
                                : fmt::format("pok8s-{}.efi", s.mode);
    u.image_id = fmt::format("pok8s-{}-{}", s.order, s.mode);
    u.cmdline = fmt::format("{} pok8s.mode={} pok8s.media={} pok8s.image=/{}/{}/{}", base_cmdline,
                            s.mode, s.label, image::kImagesDir, s.mode, image::kRootfsFile);
    out.push_back(std::move(u));
  }
  return out;
}

std::string loader_conf(std::string_view secure_boot_enroll) {
  return fmt::format(
      "# systemd-boot: the UKIs under /EFI/Linux are its entries.\n"
      "timeout 3\n"
      "console-mode keep\n"
      "secure-boot-enroll {}\n",
      secure_boot_enroll);
}

}  // namespace pok8s::build
