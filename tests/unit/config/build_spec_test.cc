// The build spec: parsing into every field, one-line errors naming file, line and field, what
// cannot be built yet, the canonical form behind the build id, and the YAML round trip.
#include "pok8s/config/build_spec.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "pok8s/util/error.h"
#include "pok8s/util/file.h"
#include "pok8s/util/sha256.h"

namespace pok8s::config {
namespace {

constexpr const char* kKeyA = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
constexpr const char* kKeyB = "CAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAg=";
constexpr const char* kKeyC = "Dw8PDw8PDw8PDw8PDw8PDw8PDw8PDw8PDw8PDw8PDw8=";
constexpr const char* kKeyD = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
constexpr const char* kSha = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
constexpr const char* kDigest =
    "sha256:1111111111111111111111111111111111111111111111111111111111111111";

// A spec directory with every kind of file a spec refers to.
class BuildSpecTest : public ::testing::Test {
 protected:
  void SetUp() override {
    util::make_dirs(dir() / "manifests");
    util::make_dirs(dir() / "keys");
    write("cloud-config.yaml", "#cloud-config\nhostname: node\n");
    write("manifests/b.yaml", "kind: ConfigMap\n");
    write("manifests/a.json", "{}\n");
    write("manifests/notes.txt", "not a manifest\n");
    write("metallb.yaml", "kind: Namespace\n");
    write("k3s", "a kubernetes binary\n");
    write("keys/db.key", "key\n");
  }

  const util::Path& dir() const { return dir_.path(); }
  void write(const std::string& name, const std::string& content) {
    util::write_file_atomic(dir() / name, content);
  }

  BuildSpec parse(const std::string& text) {
    return parse_build_spec(text, (dir() / "spec.yaml").string(), dir());
  }

  // The one-line message parse_build_spec throws for `text`, or "" when it parses.
  std::string error_of(const std::string& text) {
    try {
      parse(text);
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
      return e.what();
    }
    return "";
  }

  // The prefix every error of a spec in this directory starts with.
  std::string at(int line) const {
    return "Failed to read build spec " + (dir() / "spec.yaml").string() + ": line " +
           std::to_string(line) + ": ";
  }

  std::string id_of(const std::string& text, const std::string& base = kDigest,
                    const std::string& tool = "0.1.0") {
    return build_id(canonical_spec(parse(text), base, tool));
  }

  util::TempDir dir_ = util::TempDir::scratch();
};

constexpr const char* kMinimal = R"(apiVersion: pok8s/v1
kind: Build
base: docker://docker.io/library/debian:12
version: v1.0.0
)";

std::string full_spec() {
  return std::string(R"(apiVersion: pok8s/v1
kind: Build
base: docker://docker.io/library/ubuntu:24.04
arch: arm64
model: generic
variant: standard
version: v2.1.0+build.7
kubernetes:
  distribution: k3s
  version: v1.31.2+k3s1
  binary: ./k3s
packages: [htop, "curl=8.5.0-2", "libc6:arm64"]
toppings:
  manifests: [./metallb.yaml, manifests]
  wireguard:
    interface: wg1
    address: [10.8.0.2/24, "fd00::2/64"]
    listenPort: 51820
    privateKey: )") +
         kKeyA + R"(
    peers:
      - publicKey: )" +
         kKeyB + R"(
        endpoint: "[2001:db8::1]:51820"
        allowedIPs: [10.8.0.0/24]
        persistentKeepalive: 25
        presharedKey: )" +
         kKeyD + R"(
      - publicKey: )" +
         kKeyC + R"(
        endpoint: vpn.example.com:443
        allowedIPs: [0.0.0.0/0, "::/0"]
  cluster:
    server: https://tenant.example.com:6443
    token: abcdef.0123456789abcdef
    caHash: )" +
         kSha + R"(
security:
  trustedBoot: true
  encryption: tpm
  keys: keys
artifacts: [iso, raw, uki]
cloudConfig: cloud-config.yaml
compression:
  algorithm: xz
  level: 9
)";
}

TEST_F(BuildSpecTest, ParsesEveryField) {
  BuildSpec s = parse(full_spec());
  EXPECT_EQ(s.api_version, "pok8s/v1");
  EXPECT_EQ(s.kind, "Build");
  EXPECT_EQ(s.base, "docker://docker.io/library/ubuntu:24.04");
  EXPECT_EQ(s.arch, "arm64");
  EXPECT_EQ(s.model, "generic");
  EXPECT_EQ(s.variant, "standard");
  EXPECT_EQ(s.version, "v2.1.0+build.7");
  EXPECT_EQ(s.kubernetes.distribution, "k3s");
  EXPECT_EQ(s.kubernetes.version, "v1.31.2+k3s1");
  EXPECT_EQ(s.kubernetes.binary, (dir() / "k3s").string());
  EXPECT_EQ(s.kubernetes.sha256, "");
  EXPECT_EQ(s.packages, (std::vector<std::string>{"htop", "curl=8.5.0-2", "libc6:arm64"}));
  EXPECT_EQ(s.toppings.manifests,
            (std::vector<util::Path>{dir() / "metallb.yaml", dir() / "manifests"}));
  ASSERT_TRUE(s.toppings.wireguard);
  const auto& wg = *s.toppings.wireguard;
  EXPECT_EQ(wg.interface, "wg1");
  EXPECT_EQ(wg.address, (std::vector<std::string>{"10.8.0.2/24", "fd00::2/64"}));
  EXPECT_EQ(wg.listen_port, 51820u);
  EXPECT_EQ(wg.private_key, kKeyA);
  ASSERT_EQ(wg.peers.size(), 2u);
  EXPECT_EQ(wg.peers[0].public_key, kKeyB);
  EXPECT_EQ(wg.peers[0].endpoint, "[2001:db8::1]:51820");
  EXPECT_EQ(wg.peers[0].allowed_ips, std::vector<std::string>{"10.8.0.0/24"});
  EXPECT_EQ(wg.peers[0].persistent_keepalive, 25u);
  EXPECT_EQ(wg.peers[0].preshared_key, kKeyD);
  EXPECT_EQ(wg.peers[1].endpoint, "vpn.example.com:443");
  EXPECT_FALSE(wg.peers[1].persistent_keepalive);
  EXPECT_EQ(wg.peers[1].preshared_key, "");
  ASSERT_TRUE(s.toppings.cluster);
  EXPECT_EQ(s.toppings.cluster->server, "https://tenant.example.com:6443");
  EXPECT_EQ(s.toppings.cluster->token, "abcdef.0123456789abcdef");
  EXPECT_EQ(s.toppings.cluster->ca_hash, std::string("sha256:") + kSha);
  EXPECT_TRUE(s.security.trusted_boot);
  EXPECT_EQ(s.security.encryption, "tpm");
  EXPECT_EQ(s.security.keys, (dir() / "keys").string());
  EXPECT_EQ(s.artifacts, (std::vector<std::string>{"iso", "raw", "uki"}));
  EXPECT_EQ(s.cloud_config, (dir() / "cloud-config.yaml").string());
  EXPECT_EQ(s.compression, "xz");
  EXPECT_EQ(s.compression_level, 9);
  EXPECT_EQ(s.source, (dir() / "spec.yaml").string());
}

TEST_F(BuildSpecTest, FillsDefaults) {
  BuildSpec s = parse(kMinimal);
  EXPECT_EQ(s.arch, "");
  EXPECT_EQ(s.model, "generic");
  EXPECT_EQ(s.variant, "core");
  EXPECT_EQ(s.kubernetes.distribution, "none");
  EXPECT_TRUE(s.packages.empty());
  EXPECT_TRUE(s.toppings.manifests.empty());
  EXPECT_FALSE(s.toppings.wireguard);
  EXPECT_FALSE(s.toppings.cluster);
  EXPECT_FALSE(s.security.trusted_boot);
  EXPECT_EQ(s.security.encryption, "none");
  EXPECT_EQ(s.artifacts, std::vector<std::string>{"iso"});
  EXPECT_EQ(s.cloud_config, "");
  EXPECT_EQ(s.compression, "zstd");
  EXPECT_FALSE(s.compression_level);
}

TEST_F(BuildSpecTest, VariantFollowsKubernetesAndKubernetesMayBeNone) {
  EXPECT_EQ(parse(std::string(kMinimal) +
                  "kubernetes: {distribution: k0s, version: v1.31.2+k0s.0, binary: "
                  "'https://example.com/k0s', sha256: " +
                  kSha + "}\n")
                .variant,
            "standard");
  BuildSpec none = parse(std::string(kMinimal) + "kubernetes: none\n");
  EXPECT_EQ(none.kubernetes.distribution, "none");
  EXPECT_EQ(none.variant, "core");
  // A WireGuard interface keeps its default name; the compression may be named alone.
  BuildSpec s =
      parse(std::string(kMinimal) + "toppings:\n  wireguard:\n    address: [10.0.0.1/32]\n" +
            "    peers: [{publicKey: " + kKeyA + ", allowedIPs: [10.0.0.0/8]}]\n" +
            "compression: gzip\n");
  EXPECT_EQ(s.toppings.wireguard->interface, "wg0");
  EXPECT_EQ(s.compression, "gzip");
}

TEST_F(BuildSpecTest, ResolvesRelativePathsAgainstTheSpecDirectory) {
  util::make_dirs(dir() / "image");
  BuildSpec s = parse(std::string(R"(apiVersion: pok8s/v1
kind: Build
base: oci:./image:v1
version: "1"
kubernetes: {distribution: k3s, version: v1.31.2+k3s1, binary: sub/../k3s}
toppings:
  manifests: [manifests/b.yaml]
security: {keys: ./keys}
cloudConfig: ./cloud-config.yaml
)"));
  EXPECT_EQ(s.base, "oci:" + (dir() / "image").string() + ":v1");
  EXPECT_EQ(s.kubernetes.binary, (dir() / "k3s").string());
  EXPECT_EQ(s.toppings.manifests, std::vector<util::Path>{dir() / "manifests" / "b.yaml"});
  EXPECT_EQ(s.security.keys, (dir() / "keys").string());
  EXPECT_EQ(s.cloud_config, (dir() / "cloud-config.yaml").string());

  // load_build_spec resolves against the file's own directory.
  util::make_dirs(dir() / "specs");
  util::write_file_atomic(dir() / "specs" / "build.yaml",
                          std::string(kMinimal) + "cloudConfig: ../cloud-config.yaml\n");
  BuildSpec loaded = load_build_spec(dir() / "specs" / "build.yaml");
  EXPECT_EQ(loaded.cloud_config, (dir() / "cloud-config.yaml").string());
  EXPECT_EQ(loaded.source, (dir() / "specs" / "build.yaml").string());
}

TEST_F(BuildSpecTest, UnknownKeysNameLineAndTheNearestKey) {
  EXPECT_EQ(error_of(std::string(kMinimal) + "artifact: [iso]\n"),
            at(5) + "unknown key \"artifact\"; did you mean \"artifacts\"?");
  EXPECT_EQ(error_of(std::string(kMinimal) + "security:\n  trustedboot: true\n"),
            at(6) + "unknown key \"trustedboot\" in security; did you mean \"trustedBoot\"?");
  EXPECT_EQ(
      error_of(std::string(kMinimal) + "toppings:\n  wireguard:\n    address: [10.0.0.1/32]\n" +
               "    peers:\n      - publicKey: " + kKeyA + "\n        allowedIps: [10.0.0.0/8]\n"),
      at(10) +
          "unknown key \"allowedIps\" in toppings.wireguard.peers[0]; did you mean "
          "\"allowedIPs\"?");
  EXPECT_EQ(error_of(std::string(kMinimal) + "base: docker://x\n"),
            at(5) + "duplicate key \"base\"");
}

TEST_F(BuildSpecTest, RequiredFieldsAndTheHeader) {
  EXPECT_EQ(error_of("apiVersion: pok8s/v1\nkind: Build\nversion: v1\n"),
            at(1) +
                "base is required: the image to build from, e.g. "
                "docker://docker.io/library/ubuntu:24.04");
  EXPECT_EQ(error_of("apiVersion: pok8s/v1\nkind: Build\nbase: docker://debian\nversion:\n"),
            at(4) + "version is required: the version of the OS release, e.g. v1.0.0");
  EXPECT_EQ(error_of("kind: Build\nbase: docker://debian\nversion: v1\n"),
            at(1) + "apiVersion is required: pok8s/v1");
  EXPECT_EQ(error_of("apiVersion: pok8s/v2\nkind: Build\nbase: docker://debian\nversion: v1\n"),
            at(1) + "apiVersion must be pok8s/v1, not \"pok8s/v2\"");
  EXPECT_EQ(error_of("apiVersion: pok8s/v1\nkind: Image\nbase: docker://debian\nversion: v1\n"),
            at(2) + "kind must be Build, not \"Image\"");
  EXPECT_EQ(error_of("apiVersion: pok8s/v1\nkind: Build\nbase: docker://debian\nversion: v 1\n"),
            at(4) +
                "version must be letters, digits, '.', '_', '+' and '-' (at most 128), not "
                "\"v 1\"");
  EXPECT_NE(error_of("# nothing\n").find("the spec is empty"), std::string::npos);
  EXPECT_EQ(error_of("- a\n"), at(1) + "the document must be a map, not a list");
}

TEST_F(BuildSpecTest, BaseIsCheckedByTheImageNameParser) {
  std::string e = error_of("apiVersion: pok8s/v1\nkind: Build\nbase: ftp://debian\nversion: v1\n");
  EXPECT_EQ(
      e.rfind(at(3) + "base is not an image source: Invalid image reference \"ftp://debian\"", 0),
      0u)
      << e;
  EXPECT_NE(error_of("apiVersion: pok8s/v1\nkind: Build\nbase: debian:12\nversion: v1\n")
                .find(at(3) + "base is not an image source"),
            std::string::npos);
}

TEST_F(BuildSpecTest, AVariantThatContradictsKubernetesNamesBoth) {
  EXPECT_EQ(error_of(std::string(kMinimal) + "variant: core\nkubernetes:\n  distribution: k3s\n" +
                     "  version: v1.31.2+k3s1\n  binary: k3s\n"),
            at(5) +
                "variant core contradicts kubernetes.distribution k3s: core has no Kubernetes "
                "(use variant standard, or kubernetes: none)");
  EXPECT_EQ(error_of(std::string(kMinimal) + "variant: standard\n"),
            at(5) +
                "variant standard contradicts kubernetes.distribution none: standard runs "
                "Kubernetes (set kubernetes.distribution to k3s or k0s, or use variant core)");
}

TEST_F(BuildSpecTest, KubernetesNeedsVersionBinaryAndAHashForAUrl) {
  EXPECT_EQ(
      error_of(std::string(kMinimal) +
               "kubernetes:\n  distribution: k3s\n  version: v1.31.2+k3s1\n" +
               "  binary: https://github.com/k3s-io/k3s/releases/download/v1.31.2%2Bk3s1/k3s\n"),
      at(8) + "kubernetes.sha256 is required when kubernetes.binary is a URL");
  EXPECT_EQ(error_of(std::string(kMinimal) + "kubernetes:\n  distribution: k3s\n  binary: k3s\n"),
            at(6) + "kubernetes.version is required for k3s, e.g. v1.31.2+k3s1");
  EXPECT_EQ(error_of(std::string(kMinimal) + "kubernetes:\n  distribution: k3s\n  version: v1\n"),
            at(6) + "kubernetes.binary is required for k3s: a file or an http(s) URL");
  EXPECT_EQ(error_of(std::string(kMinimal) + "kubernetes:\n  distribution: k8s\n"),
            at(6) +
                "kubernetes.distribution must be none, k3s or k0s, not \"k8s\"; did you mean "
                "\"k3s\"?");
  EXPECT_EQ(error_of(std::string(kMinimal) + "kubernetes: k3s\n"),
            at(5) +
                "kubernetes must be none or a map with distribution, version and binary, not "
                "\"k3s\"");
  EXPECT_EQ(error_of(std::string(kMinimal) + "kubernetes: {version: v1}\n"),
            at(5) + "kubernetes.version is set but kubernetes.distribution is none");
  EXPECT_EQ(error_of(std::string(kMinimal) + "kubernetes: {distribution: k3s, version: v1, " +
                     "binary: ./missing}\n"),
            at(5) + "kubernetes.binary " + (dir() / "missing").string() + " does not exist");
  EXPECT_EQ(error_of(std::string(kMinimal) + "kubernetes: {distribution: k3s, version: v1, " +
                     "binary: 'ftp://x/k3s'}\n"),
            at(5) + "kubernetes.binary must be a file or an http(s) URL, not \"ftp://x/k3s\"");
}

TEST_F(BuildSpecTest, WireGuardAddressesAndKeysAreChecked) {
  auto wg = [&](const std::string& address, const std::string& key, const std::string& extra) {
    return error_of(std::string(kMinimal) + "toppings:\n  wireguard:\n    address: [" + address +
                    "]\n    peers:\n      - publicKey: " + key +
                    "\n        allowedIPs: [10.0.0.0/8]\n" + extra);
  };
  EXPECT_EQ(wg("10.0.0.1/24", kKeyA, ""), "");
  EXPECT_EQ(wg("10.0.0.1/33", kKeyA, ""),
            at(7) +
                "toppings.wireguard.address[0] must be an address/prefix (e.g. 10.8.0.1/24 or "
                "fd00::1/64), not \"10.0.0.1/33\"");
  EXPECT_NE(wg("10.0.0.1", kKeyA, "").find(at(7) + "toppings.wireguard.address[0]"),
            std::string::npos);
  EXPECT_NE(wg("300.0.0.1/8", kKeyA, "").find(at(7) + "toppings.wireguard.address[0]"),
            std::string::npos);
  EXPECT_EQ(wg("'fd00::1/129'", kKeyA, "").empty(), false);
  // 32 bytes need 43 characters and '='; the last character may not carry stray bits.
  std::string wrong_bits = kKeyA;
  wrong_bits[42] = 'F';
  EXPECT_EQ(wg("10.0.0.1/24", wrong_bits, ""),
            at(9) +
                "toppings.wireguard.peers[0].publicKey is not a WireGuard key (44 characters "
                "of base64 ending in '=', as `wg genkey` prints)");
  EXPECT_NE(wg("10.0.0.1/24", "c2hvcnQ=", "").find("peers[0].publicKey is not a WireGuard key"),
            std::string::npos);
  EXPECT_NE(wg("10.0.0.1/24", kKeyA, "        endpoint: 2001:db8::1:51820\n")
                .find(at(11) + "toppings.wireguard.peers[0].endpoint must be host:port"),
            std::string::npos);
  EXPECT_NE(wg("10.0.0.1/24", kKeyA, "        persistentKeepalive: 70000\n")
                .find(at(11) + "toppings.wireguard.peers[0].persistentKeepalive must be a number "
                               "from 1 to 65535"),
            std::string::npos);
  EXPECT_EQ(
      error_of(std::string(kMinimal) + "toppings:\n  wireguard:\n    address: [10.0.0.1/24]\n"),
      at(7) + "toppings.wireguard.peers needs at least one peer");
}

TEST_F(BuildSpecTest, ClusterJoinIsChecked) {
  auto cluster = [&](const std::string& body) {
    return error_of(std::string(kMinimal) + "toppings:\n  cluster:\n" + body);
  };
  EXPECT_EQ(cluster("    server: https://10.0.0.1:6443\n    token: abc\n"), "");
  EXPECT_EQ(
      cluster("    server: https://k.example.com\n    token: abc\n    caHash: sha256:abc\n"),
      at(9) + "toppings.cluster.caHash must be sha256: and 64 hex digits, not \"sha256:abc\"");
  EXPECT_EQ(cluster("    server: http://k.example.com\n    token: abc\n"),
            at(7) +
                "toppings.cluster.server must be https://HOST[:PORT], not "
                "\"http://k.example.com\"");
  EXPECT_EQ(cluster("    server: https://k.example.com\n    token: a secret with spaces\n"),
            at(8) +
                "toppings.cluster.token must be one word of printable ASCII, at most 1024 "
                "characters");
  EXPECT_EQ(cluster("    server: https://k.example.com\n"),
            at(7) + "toppings.cluster.token is required");
  // A hash without its prefix or in capitals is stored normalised.
  std::string upper = kSha;
  for (char& c : upper) c = static_cast<char>(std::toupper(c));
  BuildSpec s =
      parse(std::string(kMinimal) + "toppings:\n  cluster:\n    server: https://k.example.com/\n" +
            "    token: abc\n    caHash: " + upper + "\n");
  EXPECT_EQ(s.toppings.cluster->ca_hash, std::string("sha256:") + kSha);
  EXPECT_EQ(s.toppings.cluster->server, "https://k.example.com");
}

TEST_F(BuildSpecTest, LocalFilesMustExistAndBeOfTheirKind) {
  EXPECT_EQ(
      error_of(std::string(kMinimal) + "toppings:\n  manifests:\n    - metallb.yaml\n" +
               "    - ./nowhere.yaml\n"),
      at(8) + "toppings.manifests[1] " + (dir() / "nowhere.yaml").string() + " does not exist");
  EXPECT_EQ(error_of(std::string(kMinimal) + "toppings:\n  manifests: [manifests/notes.txt]\n"),
            at(6) + "toppings.manifests[0] " + (dir() / "manifests" / "notes.txt").string() +
                " is not a .yaml, .yml or .json file");
  util::make_dirs(dir() / "empty");
  EXPECT_EQ(error_of(std::string(kMinimal) + "toppings:\n  manifests: [empty]\n"),
            at(6) + "toppings.manifests[0] " + (dir() / "empty").string() +
                " holds no .yaml, .yml or .json file");
  EXPECT_EQ(error_of(std::string(kMinimal) + "cloudConfig: missing.yaml\n"),
            at(5) + "cloudConfig " + (dir() / "missing.yaml").string() + " does not exist");
  EXPECT_EQ(error_of(std::string(kMinimal) + "cloudConfig: manifests\n"),
            at(5) + "cloudConfig " + (dir() / "manifests").string() + " is not a regular file");
  EXPECT_EQ(error_of(std::string(kMinimal) + "security: {keys: k3s}\n"),
            at(5) + "security.keys " + (dir() / "k3s").string() + " is not a directory");
}

TEST_F(BuildSpecTest, ArtifactsArePickedFromTheListOnce) {
  EXPECT_EQ(error_of(std::string(kMinimal) + "artifacts: [iso, raw, iso]\n"),
            at(5) + "artifacts[2] repeats artifacts[0] (iso)");
  EXPECT_EQ(error_of(std::string(kMinimal) + "artifacts: [iso, qcow]\n"),
            at(5) +
                "artifacts[1] must be iso, raw, qcow2, vhd, uki, uki-iso or netboot, not "
                "\"qcow\"; did you mean \"qcow2\"?");
  EXPECT_EQ(error_of(std::string(kMinimal) + "artifacts: []\n"),
            at(5) +
                "artifacts must name at least one of iso, raw, qcow2, vhd, uki, uki-iso or "
                "netboot");
}

TEST_F(BuildSpecTest, OtherValuesAreChecked) {
  EXPECT_EQ(error_of(std::string(kMinimal) + "packages: [htop, '-oDebug::x=1']\n"),
            at(5) + "packages[1] is not a package name: \"-oDebug::x=1\"");
  EXPECT_EQ(error_of(std::string(kMinimal) + "packages: ['htop; rm -rf /']\n"),
            at(5) + "packages[0] is not a package name: \"htop; rm -rf /\"");
  EXPECT_EQ(error_of(std::string(kMinimal) + "arch: x86_64\n"),
            at(5) + "arch must be amd64 or arm64, not \"x86_64\"");
  EXPECT_EQ(error_of(std::string(kMinimal) + "compression: {algorithm: gzip, level: 12}\n"),
            at(5) + "compression.level 12 is outside 1..9 for gzip");
  EXPECT_EQ(error_of(std::string(kMinimal) + "security: {trustedBoot: maybe}\n"),
            at(5) + "security.trustedBoot must be true or false, not \"maybe\"");
  EXPECT_EQ(error_of(std::string(kMinimal) + "cloudConfig: \"a\\nb\"\n"),
            at(5) + "cloudConfig must be one line of UTF-8 text without control characters");
}

TEST_F(BuildSpecTest, LoadRefusesAMissingOrOversizedFile) {
  try {
    load_build_spec(dir() / "nope.yaml");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    EXPECT_EQ(std::string(e.what()),
              "Failed to read build spec " + (dir() / "nope.yaml").string() + ": no such file");
  }
  std::string big(kMaxBuildSpecBytes + 1, '#');
  try {
    parse(big);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("exceeds the limit of 1048576"), std::string::npos);
  }
}

TEST_F(BuildSpecTest, UnbuildableNamesEachFieldWithAReason) {
  EXPECT_TRUE(unbuildable(parse(kMinimal)).empty());
  auto reasons = unbuildable(parse(full_spec()));
  // uki is built with its keys; trusted boot with iso and raw beside it is not, nor encryption
  // with a disk image (not installed from) or tpm without the uki-iso.
  ASSERT_EQ(reasons.size(), 3u);
  EXPECT_EQ(reasons[0].rfind("security.trustedBoot: only the uki and uki-iso artifacts", 0), 0u);
  EXPECT_EQ(reasons[1],
            "security.encryption: the installer encrypts, and raw is not installed from; ask for "
            "iso or uki-iso");
  EXPECT_EQ(reasons[2].rfind("security.encryption: tpm seals the disk key to the signed UKIs'", 0),
            0u);
  BuildSpec s = parse(full_spec());
  s.artifacts = {"uki", "uki-iso"};
  EXPECT_TRUE(unbuildable(s).empty());
  s.security.encryption = "passphrase";
  s.security.trusted_boot = false;
  s.artifacts = {"iso"};
  s.security.keys.clear();
  EXPECT_TRUE(unbuildable(s).empty());
  s = parse(full_spec());
  s.security.encryption = "none";
  s.artifacts = {"uki", "uki-iso"};
  s.security.keys.clear();
  reasons = unbuildable(s);
  ASSERT_EQ(reasons.size(), 2u);
  EXPECT_EQ(reasons[0],
            "artifacts: uki needs security.keys (the key set that signs it; pok8s "
            "keys generate makes one)");
  s.artifacts = {"iso"};
  s.security.trusted_boot = false;
  s.security.keys = "/keys";
  EXPECT_EQ(unbuildable(s),
            std::vector<std::string>{
                "security.keys: only the uki and uki-iso artifacts are signed; ask for one"});
}

TEST_F(BuildSpecTest, CanonicalFormDoesNotDependOnYamlOrderOrStyle) {
  std::string a = std::string(kMinimal) + "packages: [htop]\nartifacts: [iso]\n";
  std::string b = R"(# the same build, written differently
artifacts:
  - iso
version: "v1.0.0"
packages:
  - htop
base: docker://docker.io/library/debian:12
kind: Build
apiVersion: pok8s/v1
variant: core
kubernetes: none
compression: {algorithm: zstd}
)";
  auto ca = canonical_spec(parse(a), kDigest, "0.1.0");
  auto cb = canonical_spec(parse(b), kDigest, "0.1.0");
  EXPECT_EQ(ca.dump(), cb.dump());
  EXPECT_EQ(build_id(ca), build_id(cb));
  EXPECT_EQ(build_id(ca).size(), 16u);
  EXPECT_EQ(build_id(ca), util::sha256_hex(ca.dump()).substr(0, 16));
  // Defaults are filled in, the base is the resolved one, the tool is named.
  EXPECT_EQ(ca["variant"], "core");
  EXPECT_EQ(ca["compression"]["algorithm"], "zstd");
  EXPECT_EQ(ca["base"], kDigest);
  EXPECT_EQ(ca["tool"], "0.1.0");
  EXPECT_EQ(ca.dump().find("docker.io/library/debian"), std::string::npos);
}

TEST_F(BuildSpecTest, BuildIdChangesWithWhatTheBuildIsMadeOf) {
  std::string spec = full_spec();
  std::string id = id_of(spec);
  EXPECT_EQ(id, id_of(spec));
  EXPECT_NE(id,
            id_of(spec, "sha256:2222222222222222222222222222222222222222222222222222222222222222"));
  EXPECT_NE(id, id_of(spec, kDigest, "0.2.0"));
  // Each referenced file's content counts: the cloud-config, a manifest found in a directory,
  // the Kubernetes binary, a file among the keys.
  for (const char* file : {"cloud-config.yaml", "manifests/a.json", "k3s", "keys/db.key"}) {
    std::string before = id_of(spec);
    write(file, std::string("changed ") + file);
    EXPECT_NE(before, id_of(spec)) << file;
  }
  // A new manifest in a listed directory is a new build; a non-manifest file is not.
  std::string before = id_of(spec);
  write("manifests/c.yml", "kind: Secret\n");
  std::string with_new = id_of(spec);
  EXPECT_NE(before, with_new);
  write("manifests/readme.md", "# notes\n");
  EXPECT_EQ(with_new, id_of(spec));
}

TEST_F(BuildSpecTest, CanonicalFormHashesFilesAndSecrets) {
  auto c = canonical_spec(parse(full_spec()), kDigest, "0.1.0");
  std::string json = c.dump();
  for (const char* secret : {kKeyA, kKeyD, "abcdef.0123456789abcdef"})
    EXPECT_EQ(json.find(secret), std::string::npos) << secret;
  EXPECT_EQ(json.find(dir().string()), std::string::npos) << "no local path in " << json;
  EXPECT_EQ(c["toppings"]["cluster"]["token"]["sha256"],
            util::sha256_hex("abcdef.0123456789abcdef"));
  EXPECT_EQ(c["cloudConfig"]["sha256"], util::file_sha256(dir() / "cloud-config.yaml"));
  EXPECT_EQ(c["kubernetes"]["binary"]["sha256"], util::file_sha256(dir() / "k3s"));
  // The public keys stay readable; manifests are the files in order, a directory expanded.
  EXPECT_EQ(c["toppings"]["wireguard"]["peers"][0]["publicKey"], kKeyB);
  const auto& manifests = c["toppings"]["manifests"];
  ASSERT_EQ(manifests.size(), 3u);
  EXPECT_EQ(manifests[0]["name"], "metallb.yaml");
  EXPECT_EQ(manifests[1]["name"], "a.json");
  EXPECT_EQ(manifests[2]["name"], "b.yaml");
  EXPECT_EQ(manifests[2]["sha256"], util::file_sha256(dir() / "manifests" / "b.yaml"));
}

// security.splash: a file made absolute, hashed into the canonical form (only when given, so
// older specs keep their ids), buildable with the UKI artifacts only.
TEST_F(BuildSpecTest, ASplashImageIsAFileTheUkisShow) {
  write("splash.bmp", "BM not really");
  std::string text = std::string(kMinimal) + "security: {keys: keys, splash: splash.bmp}\n" +
                     "artifacts: [uki-iso]\n";
  BuildSpec s = parse(text);
  EXPECT_EQ(s.security.splash, (dir() / "splash.bmp").string());
  auto c = canonical_spec(s, kDigest, "0.1.0");
  EXPECT_EQ(c["security"]["splash"]["sha256"], util::file_sha256(dir() / "splash.bmp"));
  EXPECT_FALSE(canonical_spec(parse(kMinimal), kDigest, "0.1.0")["security"].contains("splash"));
  EXPECT_TRUE(unbuildable(s).empty());
  BuildSpec again = parse_build_spec(to_yaml(s), s.source, "/elsewhere");
  EXPECT_EQ(again, s);
  s.artifacts = {"iso"};
  s.security.keys.clear();
  EXPECT_EQ(unbuildable(s), std::vector<std::string>{"security.splash: only the UKIs of the uki "
                                                     "and uki-iso artifacts show it; ask for one"});
  EXPECT_NE(
      error_of(std::string(kMinimal) + "security: {splash: missing.bmp}\n").find("security.splash"),
      std::string::npos);
}

TEST_F(BuildSpecTest, ToYamlRoundTrips) {
  for (const std::string& text : {std::string(kMinimal), full_spec()}) {
    BuildSpec s = parse(text);
    std::string yaml = to_yaml(s);
    BuildSpec again = parse_build_spec(yaml, s.source, "/elsewhere");
    EXPECT_EQ(again, s) << yaml;
    EXPECT_EQ(to_yaml(again), yaml);
  }
  // Strings YAML would read as something else come back as strings.
  BuildSpec s = parse(std::string(kMinimal));
  s.version = "1.10";
  s.packages = {"null", "true", "0x10"};
  BuildSpec again = parse_build_spec(to_yaml(s), s.source, dir());
  EXPECT_EQ(again, s);
}

TEST_F(BuildSpecTest, RefusesABinaryUrlWithSpacesQuotesOrControlCharacters) {
  const std::string k8s =
      "kubernetes: {distribution: k3s, version: v1.31.2+k3s1, sha256: " + std::string(64, 'a') +
      ", binary: ";
  for (const char* url : {"'http://x/a b'", "'http://x/a\"b'", "'https://x/a\\\\b'",
                          "'http://x/`id`'", "'http://x/a<b>'"})
    EXPECT_NE(error_of(std::string(kMinimal) + k8s + url + "}\n").find("kubernetes.binary"),
              std::string::npos)
        << url;
  EXPECT_EQ(error_of(std::string(kMinimal) + k8s +
                     "'https://github.com/k3s-io/k3s/releases/download/v1.31.2%2Bk3s1/k3s?x=1'}\n"),
            "");
}

// What the service parses a client's spec with: each local path goes to the caller's check as
// written, before anything on disk is looked at, and messages name paths as the client knows them.
TEST_F(BuildSpecTest, ACallerMayCheckEachPathBeforeTheDiskIsTouched) {
  std::vector<std::pair<std::string, std::string>> seen;
  SpecParseOptions options;
  options.check_path = [&](std::string_view field, std::string_view written) {
    seen.emplace_back(field, written);
    return std::string();
  };
  options.check_files = false;
  std::string text = std::string(R"(apiVersion: pok8s/v1
kind: Build
base: oci:./image:v1
version: "1"
kubernetes: {distribution: k3s, version: v1.31.2+k3s1, binary: ./bin/k3s}
toppings:
  manifests: [m/one.yaml, m]
security: {keys: keysets/prod, splash: art/splash.bmp}
cloudConfig: ./nothing-here.yaml
)");
  // Nothing named exists: with check_files off, that is no error.
  util::Path nowhere = dir() / "not-created";
  BuildSpec s = parse_build_spec(text, "request", nowhere, options);
  EXPECT_EQ(s.cloud_config, (nowhere / "nothing-here.yaml").string());
  EXPECT_EQ(s.security.splash, (nowhere / "art/splash.bmp").string());
  EXPECT_EQ(s.toppings.manifests, (std::vector<util::Path>{nowhere / "m/one.yaml", nowhere / "m"}));
  EXPECT_FALSE(std::filesystem::exists(nowhere));
  EXPECT_EQ(seen, (std::vector<std::pair<std::string, std::string>>{
                      {"base", "oci:./image:v1"},
                      {"kubernetes.binary", "./bin/k3s"},
                      {"toppings.manifests", "m/one.yaml"},
                      {"toppings.manifests", "m"},
                      {"security.keys", "keysets/prod"},
                      {"security.splash", "art/splash.bmp"},
                      {"cloudConfig", "./nothing-here.yaml"}}));

  // A refusal is the error, with the field, the line and the path as written.
  options.check_path = [](std::string_view field, std::string_view) {
    return field == "security.splash" ? std::string("is not allowed here") : std::string();
  };
  try {
    parse_build_spec(std::string(kMinimal) + "security: {splash: /etc/shadow}\n", "request",
                     nowhere, options);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(),
                 "Failed to read build spec request: line 5: security.splash \"/etc/shadow\" is "
                 "not allowed here");
  }
  // A docker:// base is no local path; it goes to no check.
  EXPECT_NO_THROW(parse_build_spec(kMinimal, "request", nowhere, options));
}

TEST_F(BuildSpecTest, RelativeMessagesNameNoDirectoryOfTheParser) {
  SpecParseOptions options;
  options.relative_messages = true;
  auto error = [&](const std::string& extra) {
    try {
      parse_build_spec(std::string(kMinimal) + extra, "request", dir(), options);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_EQ(error("cloudConfig: ./missing.yaml\n"),
            "Failed to read build spec request: line 5: cloudConfig missing.yaml does not exist");
  EXPECT_EQ(
      error("cloudConfig: manifests\n"),
      "Failed to read build spec request: line 5: cloudConfig manifests is not a regular file");
  EXPECT_EQ(error("toppings: {manifests: [manifests/notes.txt]}\n"),
            "Failed to read build spec request: line 5: toppings.manifests[0] manifests/notes.txt "
            "is not a .yaml, .yml or .json file");
  EXPECT_EQ(error("security: {keys: k3s}\n"),
            "Failed to read build spec request: line 5: security.keys k3s is not a directory");
  // The files are checked all the same, and what parses is the CLI's spec.
  BuildSpec s = parse_build_spec(std::string(kMinimal) + "cloudConfig: cloud-config.yaml\n",
                                 "request", dir(), options);
  EXPECT_EQ(s, parse_build_spec(std::string(kMinimal) + "cloudConfig: cloud-config.yaml\n",
                                "request", dir()));
}

}  // namespace
}  // namespace pok8s::config
