// PCR 11 policies: the values are those systemd-measure calculates for the same sections, and
// the signed policies are those systemd-measure signs with the same key (it asks a TPM for the
// policy digest: swtpm here).
#include "pok8s/boot/pcr_policy.h"

#include <gtest/gtest.h>

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "integration/swtpm.h"
#include "pok8s/boot/secure_boot_keys.h"
#include "pok8s/util/process.h"

using namespace pok8s;
using namespace pok8s::boot;

namespace {

constexpr const char* kMeasure = "/usr/lib/systemd/systemd-measure";

struct Sections {
  util::TempDir dir = util::TempDir::scratch();
  std::map<std::string, std::string> data = {{".linux", std::string(9000, 'k')},
                                             {".osrel", "ID=debian\n"},
                                             {".cmdline", "console=ttyS0 pok8s.verity=x"},
                                             {".initrd", std::string(5000, 'i')}};
  std::vector<std::string> args;
  Sections() {
    generate_secure_boot_keys(dir.path() / "keys", {});
    data[".pcrpkey"] = util::read_file(dir.path() / "keys/tpm2-pcr-public.pem");
    for (const auto& [name, bytes] : data) {
      util::Path f = dir.path() / name.substr(1);
      util::write_file_atomic(f, bytes);
      args.push_back(fmt::format("--{}={}", name.substr(1), f.string()));
    }
  }
  std::map<std::string, std::string_view> views() const {
    std::map<std::string, std::string_view> v;
    for (const auto& [k, d] : data) v[k] = d;
    return v;
  }
};

std::string hex(std::string_view raw) {
  std::string out;
  for (unsigned char c : raw) out += fmt::format("{:02x}", c);
  return out;
}

TEST(PcrPolicy, ValuesAreWhatSystemdMeasureCalculates) {
  Sections s;
  std::vector<std::string> argv = {kMeasure, "calculate", "--bank=sha256"};
  argv.insert(argv.end(), s.args.begin(), s.args.end());
  auto r = util::run_process(argv);
  ASSERT_EQ(r.status, 0) << r.output;
  std::vector<PcrPhaseValue> ours = expected_pcr11(s.views());
  ASSERT_EQ(ours.size(), 4u);
  std::string expected;
  for (const auto& v : ours)
    expected += fmt::format("# PCR[11] Phase <{}>\n11:sha256={}\n", v.phase, hex(v.pcr11));
  EXPECT_EQ(r.output, expected);
}

TEST(PcrPolicy, SignedPoliciesAreWhatSystemdMeasureSignsWithTheSameKey) {
  Sections s;
  pok8s::testing::Swtpm tpm;
  ASSERT_TRUE(tpm.up());
  std::vector<std::string> argv = {
      kMeasure,
      "sign",
      "--bank=sha256",
      "--json=short",
      "--tpm2-device=" + tpm.tcti(),
      "--private-key=" + (s.dir.path() / "keys/tpm2-pcr-private.pem").string(),
      "--public-key=" + (s.dir.path() / "keys/tpm2-pcr-public.pem").string()};
  argv.insert(argv.end(), s.args.begin(), s.args.end());
  auto r = util::run_process(argv);
  ASSERT_EQ(r.status, 0) << r.output;
  SecureBootKeys k = load_secure_boot_keys(s.dir.path() / "keys");
  auto ours = nlohmann::json::parse(pcr_signature_json(expected_pcr11(s.views()), k.pcr_key.get()));
  auto theirs = nlohmann::json::parse(r.output);
  EXPECT_EQ(ours, theirs) << ours.dump(1) << "\n" << theirs.dump(1);
}

}  // namespace
