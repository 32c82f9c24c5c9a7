// Secrets of a build request: found in every place Kairos and the build spec put them, masked in
// what is shown back, scrubbed from text, and never leaked by a document that does not parse.
#include "pok8s/config/secrets.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

namespace pok8s::config {
namespace {

constexpr const char* kKeyA = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
constexpr const char* kKeyB = "CAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAg=";
constexpr const char* kKeyC = "Dw8PDw8PDw8PDw8PDw8PDw8PDw8PDw8PDw8PDw8PDw8=";

constexpr const char* kCloudConfig = R"(#cloud-config
hostname: node-1
users:
  - name: kairos
    passwd: top-level-pw
    ssh_authorized_keys: [ssh-ed25519 AAAA kairos@example]
stages:
  initramfs:
    - name: admin
      users:
        admin:
          passwd: stage-pw
          groups: [wheel]
  boot:
    - commands: [echo booted]
install:
  device: auto
  encryption: passphrase
  passphrase: disk-passphrase
p2p:
  network_token: p2p-network-token
k3s:
  enabled: true
  env:
    K3S_TOKEN: server-token
    K3S_AGENT_TOKEN: agent-secret-value
    K3S_NODE_NAME: node-1
  args:
    - --token
    - flag-token-next
    - --agent-token=flag-agent-token
    - --token-file /etc/k3s/token
    - --disable=traefik
k3s-agent:
  env:
    K3S_TOKEN_FILE: /run/agent-token-file
k0s-worker:
  args: [--token-file=/etc/k0s/worker-token]
)";

std::string spec_with_secrets() {
  return std::string(R"(apiVersion: pok8s/v1
kind: Build
base: docker://docker.io/library/debian:12
version: v1.0.0
toppings:
  wireguard:
    address: [10.8.0.2/24]
    privateKey: )") +
         kKeyA + R"(
    peers:
      - publicKey: )" +
         kKeyB + R"(
        allowedIPs: [10.8.0.0/24]
        presharedKey: )" +
         kKeyC + R"(
  cluster:
    server: https://cp.example.com:6443
    token: K10abc::server:cluster-join-token
)";
}

bool has(const std::vector<std::string>& values, const std::string& value) {
  return std::find(values.begin(), values.end(), value) != values.end();
}

TEST(SecretValues, FindsEveryCloudConfigSecretInKairosForms) {
  auto found = secret_values("", {{"cc.yaml", kCloudConfig}});
  for (const char* secret :
       {"top-level-pw", "stage-pw", "disk-passphrase", "p2p-network-token", "server-token",
        "agent-secret-value", "flag-token-next", "flag-agent-token", "/etc/k3s/token",
        "/run/agent-token-file", "/etc/k0s/worker-token"})
    EXPECT_TRUE(has(found, secret)) << secret;
  for (const char* not_secret : {"node-1", "kairos", "admin", "traefik", "auto", "passphrase"})
    EXPECT_FALSE(has(found, not_secret)) << not_secret;
  EXPECT_TRUE(std::is_sorted(found.begin(), found.end()));
}

TEST(SecretValues, FindsTheSpecsSecretsAndOnlyInCloudConfigs) {
  auto found = secret_values(spec_with_secrets(),
                             {{"cc.yaml", "#cloud-config\nusers: [{name: a, passwd: pw-one}]\n"},
                              {"m.yaml", "kind: Secret\npasswd: not-a-cloud-config\n"}});
  EXPECT_TRUE(has(found, kKeyA));
  EXPECT_TRUE(has(found, kKeyC));
  EXPECT_TRUE(has(found, "K10abc::server:cluster-join-token"));
  EXPECT_TRUE(has(found, "pw-one"));
  EXPECT_FALSE(has(found, kKeyB)) << "a public key is no secret";
  EXPECT_FALSE(has(found, "not-a-cloud-config"));
}

TEST(SecretValues, ASecretThatIsAListOrMapIsSecretAsAWhole) {
  auto found = secret_values(
      "", {{"cc.yaml", "#cloud-config\nusers: [{name: a, passwd: [part-one, {k: part-two}]}]\n"}});
  EXPECT_TRUE(has(found, "part-one"));
  EXPECT_TRUE(has(found, "part-two"));
}

TEST(SecretValues, OnlyTheFirstDocumentIsReadAsByTheParsers) {
  const std::string text =
      "#cloud-config\nusers: [{name: a, passwd: first-pw}]\n---\nusers: [{passwd: unread-pw}]\n";
  auto found = secret_values("", {{"cc.yaml", text}});
  EXPECT_TRUE(has(found, "first-pw"));
  EXPECT_FALSE(has(found, "unread-pw"));
  // What follows the first document is not shown, whether it parses or not.
  for (const std::string rest : {"---\nusers: [{passwd: unread-pw}]\n", "---\nusers: [\n"}) {
    std::string masked = mask_secrets_in_cloud_config(
        "#cloud-config\nusers: [{name: a, passwd: first-pw}]\n" + rest);
    EXPECT_EQ(masked, "#cloud-config\nusers: [{name: a, passwd: \"********\"}]\n" +
                          std::string(kLaterDocumentsNotShown) + "\n");
  }
}

TEST(MaskSecrets, CloudConfigKeepsEverythingButTheSecrets) {
  std::string masked = mask_secrets_in_cloud_config(kCloudConfig);
  EXPECT_TRUE(masked.starts_with("#cloud-config\n")) << masked;
  for (const auto& secret : secret_values("", {{"cc.yaml", kCloudConfig}}))
    EXPECT_EQ(masked.find(secret), std::string::npos) << secret << "\n" << masked;
  for (const char* kept : {"hostname: node-1", "name: kairos", "K3S_NODE_NAME: node-1",
                           "--disable=traefik", "--agent-token=********", "--token-file ********",
                           "device: auto", "echo booted", "ssh-ed25519 AAAA kairos@example"})
    EXPECT_NE(masked.find(kept), std::string::npos) << kept << "\n" << masked;
  // It is still a cloud-config whose secrets are all the mask.
  for (const auto& value : secret_values("", {{"cc.yaml", masked}}))
    EXPECT_EQ(value, kSecretMask) << masked;
}

TEST(MaskSecrets, SpecKeepsEverythingButTheSecrets) {
  std::string masked = mask_secrets_in_spec(spec_with_secrets());
  EXPECT_EQ(masked.find(kKeyA), std::string::npos) << masked;
  EXPECT_EQ(masked.find(kKeyC), std::string::npos) << masked;
  EXPECT_EQ(masked.find("cluster-join-token"), std::string::npos) << masked;
  EXPECT_NE(masked.find(kKeyB), std::string::npos) << masked;
  EXPECT_NE(masked.find("https://cp.example.com:6443"), std::string::npos) << masked;
  EXPECT_NE(masked.find("base: docker://docker.io/library/debian:12"), std::string::npos) << masked;
  // A JSON spec is YAML too.
  std::string json = mask_secrets_in_spec(R"({"toppings": {"cluster": {"token": "json-token"}}})");
  EXPECT_EQ(json.find("json-token"), std::string::npos) << json;
}

TEST(MaskSecrets, ASecretReusedElsewhereIsHiddenThereToo) {
  std::string masked = mask_secrets_in_cloud_config(
      "#cloud-config\nusers: [{name: a, passwd: hunter22}]\n"
      "stages: {boot: [{commands: [\"echo hunter22 | chpasswd\"]}]}\n");
  EXPECT_EQ(masked.find("hunter22"), std::string::npos) << masked;
  EXPECT_NE(masked.find("echo ******** | chpasswd"), std::string::npos) << masked;
}

TEST(MaskSecrets, AnAliasOfASecretIsMaskedWithIt) {
  std::string masked = mask_secrets_in_cloud_config(
      "#cloud-config\nhostname: &h aliased-pw\nusers: [{name: a, passwd: *h}]\n");
  EXPECT_EQ(masked.find("aliased-pw"), std::string::npos) << masked;
}

TEST(MaskSecrets, CommentsAreNotShown) {
  std::string masked =
      mask_secrets_in_cloud_config("#cloud-config\n# the password is swordfish\nhostname: x\n");
  EXPECT_EQ(masked.find("swordfish"), std::string::npos) << masked;
  EXPECT_NE(masked.find("hostname: x"), std::string::npos) << masked;
}

TEST(MaskSecrets, ADocumentThatDoesNotParseShowsNothing) {
  EXPECT_EQ(mask_secrets_in_cloud_config("#cloud-config\nusers: [{name: a, passwd: leak-me\n"),
            "#cloud-config\n" + std::string(kDocumentNotShown) + "\n");
  EXPECT_EQ(mask_secrets_in_spec("toppings: {cluster: {token: leak-me\n"),
            std::string(kDocumentNotShown) + "\n");
  EXPECT_EQ(mask_secrets_in_spec(std::string("token: a\0b", 10)),
            std::string(kDocumentNotShown) + "\n");
  // So does one that names itself through aliases until the walk gives up.
  std::string laughs = "#cloud-config\na: &a [x, x, x, x, x, x, x, x, x, x]\n";
  char prev = 'a';
  for (char c = 'b'; c <= 'i'; prev = c++)
    laughs += std::string(1, c) + ": &" + c + " [*" + prev + ", *" + prev + ", *" + prev + ", *" +
              prev + ", *" + prev + ", *" + prev + ", *" + prev + ", *" + prev + ", *" + prev +
              ", *" + prev + "]\n";
  laughs += "users: [{name: a, passwd: *i}]\n";
  EXPECT_EQ(mask_secrets_in_cloud_config(laughs),
            "#cloud-config\n" + std::string(kDocumentNotShown) + "\n");
}

TEST(MaskSecrets, AFileThatIsNoCloudConfigIsReturnedAsItIs) {
  std::string manifest = "apiVersion: v1\nkind: ConfigMap\ndata: {passwd: shown}\n";
  EXPECT_EQ(mask_secrets_in_cloud_config(manifest), manifest);
}

TEST(Scrub, ReplacesEveryOccurrenceOfEachSecret) {
  std::vector<std::string> secrets = {"s3cret", "token-123"};
  EXPECT_EQ(scrub("a s3cret and token-123, s3cret again", secrets),
            "a ******** and ********, ******** again");
}

TEST(Scrub, OverlappingSecretsBecomeOneMask) {
  std::vector<std::string> secrets = {"abcdef", "defghi"};
  EXPECT_EQ(scrub("x abcdefghi y", secrets), "x ******** y");
  std::vector<std::string> nested = {"abcd", "abcdefgh"};
  EXPECT_EQ(scrub("abcdefgh", nested), "********");
  std::vector<std::string> repeated = {"aaaa"};
  EXPECT_EQ(scrub("aaaaaaa b aaaa", repeated), "******** b ********");
}

TEST(Scrub, LeavesShortSecretsAlone) {
  // A three-character secret would mask every "pwd" of a log; it is guessed sooner than read.
  std::vector<std::string> secrets = {"pwd", "", "abcd"};
  EXPECT_EQ(scrub("pwd abcd", secrets), "pwd ********");
  EXPECT_EQ(scrub("nothing here", secrets), "nothing here");
}

}  // namespace
}  // namespace pok8s::config
