// Netboot end to end: the Debian fixture converted, pok8s build --artifact netboot, the files
// served by a web server on 127.0.0.1 (10.0.2.100:8080 inside QEMU's user-mode network). QEMU's
// TFTP hands iPXE a one-line script that chains the built one; iPXE loads the kernel and
// initramfs over HTTP, pok8s-init gets an address by DHCP, fetches the rootfs image and the
// cloud-config into RAM, checks their sha256 and boots to the boot stage. A rootfs image with
// one flipped byte is refused with both digests named. Bad --netboot-url values are refused.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "e2e/pok8s_cli.h"
#include "integration/file_server.h"
#include "integration/qemu.h"
#include "pok8s/util/file.h"

using namespace pok8s;
using namespace pok8s::testing;
namespace fs = std::filesystem;

namespace {

constexpr const char* kTag = "12-standard-amd64-generic-v0.1.0";
constexpr const char* kName = "debian-12-standard-amd64-generic-v0.1.0";
constexpr const char* kUrl = "http://10.0.2.100:8080/";

// The boot stage says what it sees: the root read-only, and the media a RAM file system.
constexpr const char* kCloudConfig = R"yaml(#cloud-config
stages:
  boot:
    - name: e2e netboot probe
      commands:
        - |
          r=ro; touch /pok8s-probe 2>/dev/null && r=rw
          m=$(findmnt -no FSTYPE /run/pok8s/media)
          echo "POK8S-NET root=$r media=$m" > /dev/ttyS0
)yaml";

class Netboot : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto fail = [](std::string why) { setup_error_ = std::move(why); };
    work_ = new util::TempDir(util::TempDir::scratch("/var/tmp"));
    util::Path w = work_->path();
    layout_ = "oci:" + (w / "layout").string();
    if (convert_debian_fixture(w, w / "layout", "v0.1.0", setup_error_).empty()) return;
    util::write_file_atomic(w / "cloud.yaml", kCloudConfig);
    auto r = run_pok8s((w / "cache").string(),
                       {"build", layout_ + ":" + kTag, "--artifact", "netboot", "--netboot-url",
                        kUrl, "-o", (w / "out").string(), "--config", (w / "cloud.yaml").string()});
    if (r.status != 0) return fail("build failed:\n" + r.output);
    util::make_dirs(w / "tftp");
    // What a DHCP server's boot file would be: a script that chains the built one over HTTP.
    util::write_file_atomic(w / "tftp/boot.ipxe",
                            std::string("#!ipxe\nchain ") + kUrl + kName + ".ipxe\n");
  }
  static void TearDownTestSuite() {
    delete work_;
    work_ = nullptr;
  }
  void SetUp() override { ASSERT_EQ(setup_error_, ""); }

  // The built files at the URL's root, `rootfs` in place of the rootfs image when given.
  static std::map<std::string, std::string> served(const std::string* rootfs = nullptr) {
    std::map<std::string, std::string> files;
    for (const auto& e : fs::directory_iterator(work_->path() / "out"))
      files["/" + e.path().filename().string()] = util::read_file(e.path(), 1ull << 30);
    if (rootfs) files[std::string("/") + kName + ".squashfs"] = *rootfs;
    return files;
  }
  static QemuOptions machine(const FileServer& web) {
    QemuOptions o;
    o.firmware = Firmware::kBios;
    o.tftp_dir = work_->path() / "tftp";
    o.boot_file = "boot.ipxe";
    o.forward_ports = {{8080, web.port()}};
    o.memory_mib = 1536;
    return o;
  }

  static inline std::string setup_error_;
  static inline util::TempDir* work_ = nullptr;
  static inline std::string layout_;
};

TEST_F(Netboot, TheScriptNamesEveryFileByUrlAndTheRootfsBySha256) {
  auto m = nlohmann::json::parse(
      util::read_file(work_->path() / "out" / (std::string(kName) + ".manifest.json")));
  std::map<std::string, std::string> sha;
  for (const auto& a : m["artifacts"]) sha[a["type"]] = a["sha256"];
  for (const char* t :
       {"netboot-kernel", "netboot-initrd", "netboot-rootfs", "netboot-config", "netboot-script"})
    EXPECT_TRUE(sha.count(t)) << t;
  std::string script =
      util::read_file(work_->path() / "out" / (std::string(kName) + ".ipxe"), 1 << 20);
  EXPECT_TRUE(script.starts_with("#!ipxe\n")) << script;
  EXPECT_NE(script.find(std::string("kernel ") + kUrl + kName + "-kernel "), std::string::npos);
  EXPECT_NE(script.find(std::string("initrd ") + kUrl + kName + "-initrd\n"), std::string::npos);
  EXPECT_NE(script.find(std::string(" pok8s.fetch=") + kUrl + kName +
                        ".squashfs pok8s.fetch.sha256=" + sha["netboot-rootfs"]),
            std::string::npos)
      << script;
  EXPECT_NE(script.find(" pok8s.fetch.config.sha256=" + sha["netboot-config"]), std::string::npos);
}

TEST_F(Netboot, BootsOverTheNetworkIntoRam) {
  FileServer web(served());
  util::TempDir vm_dir = util::TempDir::scratch(work_->path());
  Qemu vm(machine(web), vm_dir.path());
  auto line = vm.wait_for_line("POK8S-NET", boot_timeout(std::chrono::seconds(600)));
  ASSERT_TRUE(line) << "no probe line; the console ended with:\n" << vm.tail(60);
  EXPECT_EQ(*line, "POK8S-NET root=ro media=tmpfs") << vm.tail(60);
  std::string serial = vm.serial();
  EXPECT_NE(serial.find("pok8s-init: asking for an address by DHCP on"), std::string::npos);
  // QEMU's restricted network offers no router.
  EXPECT_NE(serial.find("eth0 has 10.0.2.15 (netmask 255.255.255.0, router none"),
            std::string::npos)
      << vm.tail(80);
  EXPECT_NE(serial.find("pok8s-init: the rootfs image matches its sha256"), std::string::npos);
}

TEST_F(Netboot, ARootfsImageThatDoesNotMatchItsSha256IsRefused) {
  util::Path w = work_->path();
  std::string rootfs = util::read_file(w / "out" / (std::string(kName) + ".squashfs"), 1ull << 30);
  rootfs[rootfs.size() / 2] ^= 0x01;
  FileServer web(served(&rootfs));
  util::TempDir vm_dir = util::TempDir::scratch(w);
  Qemu vm(machine(web), vm_dir.path());
  EXPECT_TRUE(
      vm.wait_for(std::string("Failed to fetch ") + kUrl + kName + ".squashfs: its sha256 is",
                  boot_timeout(std::chrono::seconds(600))))
      << vm.tail(40);
  EXPECT_TRUE(vm.wait_for("the kernel command line says", std::chrono::seconds(30))) << vm.tail(20);
  EXPECT_EQ(vm.serial().find("POK8S-NET"), std::string::npos);
}

TEST_F(Netboot, BadUrlsAreRefusedBeforeAnythingIsWritten) {
  util::Path w = work_->path();
  auto refused = [&](std::vector<std::string> extra, const std::string& expect) {
    util::Path o = w / "refused";
    std::vector<std::string> argv = {"build",   layout_ + ":" + kTag, "--artifact", "netboot", "-o",
                                     o.string()};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto r = run_pok8s((w / "cache").string(), argv);
    EXPECT_NE(r.status, 0) << r.output;
    EXPECT_NE(util::last_line(r.output).find(expect), std::string::npos) << r.output;
    EXPECT_FALSE(fs::exists(o));
  };
  refused({}, "the netboot artifact needs --netboot-url");
  refused({"--netboot-url", "http://boot.example/pok8s/"}, "its host is not an IPv4 address");
  refused({"--netboot-url", "http://10.0.0.1/pok8s"}, "must end with /");
}

}  // namespace
