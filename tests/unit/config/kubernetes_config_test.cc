// The Kubernetes sections: which one is enabled, how files merge, and what is refused.
#include "pok8s/config/kubernetes_config.h"

#include <gtest/gtest.h>

#include "pok8s/util/error.h"

namespace pok8s::config {
namespace {

std::vector<CloudConfig> parse_k8s_files(
    const std::vector<std::pair<std::string, std::string>>& files) {
  std::vector<CloudConfig> out;
  for (const auto& [name, text] : files) out.push_back(parse_cloud_config(text, name));
  return out;
}

std::optional<KubernetesConfig> read_k8s(
    const std::vector<std::pair<std::string, std::string>>& files,
    std::vector<std::string>* warnings = nullptr) {
  std::vector<std::string> w;
  auto out = read_kubernetes_config(parse_k8s_files(files), warnings ? *warnings : w);
  return out;
}

std::string k8s_error_of(const std::string& text) {
  try {
    read_k8s({{"/oem/90_custom.yaml", text}});
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
    return e.what();
  }
  return "";
}

TEST(KubernetesConfig, NothingWhenNoSectionIsEnabled) {
  EXPECT_FALSE(read_k8s({{"a.yaml", "#cloud-config\nhostname: x\n"}}));
  EXPECT_FALSE(read_k8s({{"a.yaml", "#cloud-config\nk3s: {args: [--debug]}\n"}}));
  EXPECT_FALSE(read_k8s({{"a.yaml", "#cloud-config\nk3s: {enabled: true}\n"},
                         {"b.yaml", "#cloud-config\nk3s: {enabled: false}\n"}}));
}

TEST(KubernetesConfig, ReadsTheEnabledSectionWithArgsAndEnv) {
  auto k = read_k8s({{"/oem/90_custom.yaml", R"(#cloud-config
k3s-agent:
  enabled: true
  args: [--node-label, "role=edge worker"]
  env:
    K3S_URL: https://cp.example:6443
    K3S_TOKEN: "K10abc::server:secret"
)"}});
  ASSERT_TRUE(k);
  EXPECT_EQ(k->role, KubernetesRole::kK3sAgent);
  EXPECT_EQ(k->section, "k3s-agent");
  EXPECT_EQ(k->origin, "/oem/90_custom.yaml:3");  // the line of `enabled`
  EXPECT_EQ(k->args, (std::vector<std::string>{"--node-label", "role=edge worker"}));
  ASSERT_EQ(k->env.size(), 2u);
  EXPECT_EQ(k->env[0], (std::pair<std::string, std::string>{"K3S_URL", "https://cp.example:6443"}));
  EXPECT_EQ(k->env[1].second, "K10abc::server:secret");
  EXPECT_FALSE(k->replace_args);
}

TEST(KubernetesConfig, ALaterFileReplacesAnEarlierOnesKeys) {
  auto k = read_k8s({{"/usr/lib/pok8s/stages/a.yaml",
                      "#cloud-config\nk0s: {enabled: true, args: [--single], env: {A: '1'}}\n"},
                     {"/oem/b.yaml", "#cloud-config\nk0s: {args: [--enable-worker]}\n"}});
  ASSERT_TRUE(k);
  EXPECT_EQ(k->role, KubernetesRole::kK0sController);
  EXPECT_EQ(k->args, (std::vector<std::string>{"--enable-worker"}));
  ASSERT_EQ(k->env.size(), 1u);  // kept from the first file
}

TEST(KubernetesConfig, TwoEnabledSectionsAreRefusedNamingBoth) {
  try {
    read_k8s({{"a.yaml", "#cloud-config\nk3s: {enabled: true}\n"},
              {"b.yaml", "#cloud-config\nk0s-worker:\n  enabled: true\n"}});
    ADD_FAILURE() << "accepted k3s and k0s-worker together";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("k3s (enabled at a.yaml:2) and k0s-worker (enabled at "
                                         "b.yaml:3) cannot both run"),
              std::string::npos)
        << e.what();
  }
}

TEST(KubernetesConfig, RefusesTyposAndBadValuesNamingFileLineAndKey) {
  EXPECT_NE(k8s_error_of("#cloud-config\nk3s:\n  enabeld: true\n").find("did you mean \"enabled\""),
            std::string::npos);
  EXPECT_NE(k8s_error_of("#cloud-config\nk3s:\n  enabled: maybe\n").find("line 3"),
            std::string::npos);
  EXPECT_NE(k8s_error_of("#cloud-config\nk3s:\n  enabled: true\n  env: {\"1X\": a}\n")
                .find("\"1X\" is not an environment variable name"),
            std::string::npos);
  EXPECT_NE(k8s_error_of("#cloud-config\nk3s:\n  env: {A: \"x\\ny\"}\n").find("k3s.env.A"),
            std::string::npos);
  EXPECT_NE(k8s_error_of("#cloud-config\nk3s:\n  args: [\"a\\nb\"]\n").find("k3s.args[0]"),
            std::string::npos);
  EXPECT_NE(k8s_error_of("#cloud-config\nk0s: [enabled]\n").find("/oem/90_custom.yaml: line 2"),
            std::string::npos);
}

TEST(KubernetesConfig, KairosKeysPok8sDoesNotImplementAreWarnedAbout) {
  std::vector<std::string> warnings;
  auto k = read_k8s(
      {{"/oem/x.yaml", "#cloud-config\nk3s:\n  enabled: true\n  embedded_registry: true\n"}},
      &warnings);
  ASSERT_TRUE(k);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_EQ(warnings[0],
            "cloud-config /oem/x.yaml: line 4: k3s.embedded_registry is ignored: pok8s does not "
            "implement it");
}

TEST(IgnoredSections, EveryKairosSectionNoModuleReadsIsNamed) {
  auto c = parse_cloud_config(
      "#cloud-config\nk3s: {enabled: true}\ninstall: {auto: true}\nupgrade:\n  recovery: true\n"
      "p2p: {}\nbundles: []\n",
      "/oem/a.yaml");
  auto w = ignored_section_warnings(c);  // upgrade is read by lifecycle_config
  ASSERT_EQ(w.size(), 2u);
  EXPECT_EQ(
      w[0],
      "cloud-config /oem/a.yaml: line 7: bundles is ignored: pok8s does not implement it yet");
  EXPECT_EQ(w[1],
            "cloud-config /oem/a.yaml: line 6: p2p is ignored: pok8s does not implement it yet");
}

}  // namespace
}  // namespace pok8s::config
