// The service settings each Kubernetes role gets, quoted for systemd and for OpenRC.
#include "pok8s/node/kubernetes.h"

#include <gtest/gtest.h>

#include "pok8s/util/error.h"

namespace pok8s::node {
namespace {

config::KubernetesConfig k3s_agent() {
  config::KubernetesConfig c;
  c.role = config::KubernetesRole::kK3sAgent;
  c.section = "k3s-agent";
  c.origin = "/oem/90_custom.yaml:3";
  c.args = {"--node-label", "role=edge worker", "--data-dir=/var/lib/100%$HOME"};
  c.env = {{"K3S_URL", "https://cp:6443"}, {"K3S_TOKEN", "a\"b$c%d"}};
  return c;
}

TEST(KubernetesFiles, SystemdGetsADropInUnderRunWithEveryArgumentQuoted) {
  auto f = kubernetes_files(k3s_agent(), ServiceManager::kSystemd);
  EXPECT_EQ(f.service, "k3s.service");
  EXPECT_EQ(f.binary, "/usr/bin/k3s");
  EXPECT_EQ(f.argv,
            (std::vector<std::string>{"/usr/bin/k3s", "agent", "--node-label", "role=edge worker",
                                      "--data-dir=/var/lib/100%$HOME"}));
  ASSERT_EQ(f.files.size(), 1u);
  EXPECT_EQ(f.files[0].first, "/run/systemd/system/k3s.service.d/60-pok8s-cloud-config.conf");
  EXPECT_EQ(f.files[0].second,
            "# Written by pok8s-agent from the cloud-config's k3s-agent (/oem/90_custom.yaml:3).\n"
            "[Service]\n"
            "Environment=\"K3S_URL=https://cp:6443\"\n"
            "Environment=\"K3S_TOKEN=a\\\"b$c%%d\"\n"
            "ExecStart=\n"
            "ExecStart=\"/usr/bin/k3s\" \"agent\" \"--node-label\" \"role=edge worker\" "
            "\"--data-dir=/var/lib/100%%$$HOME\"\n");
}

TEST(KubernetesFiles, OpenRcGetsConfDWithShellQuoting) {
  auto c = k3s_agent();
  c.args = {"--node-label", "it's"};
  auto f = kubernetes_files(c, ServiceManager::kOpenRC);
  EXPECT_EQ(f.service, "k3s");
  ASSERT_EQ(f.files.size(), 1u);
  EXPECT_EQ(f.files[0].first, "/etc/conf.d/k3s");
  EXPECT_NE(f.files[0].second.find("K3S_ARGS='"), std::string::npos) << f.files[0].second;
  EXPECT_NE(f.files[0].second.find("export K3S_URL='https://cp:6443'\n"), std::string::npos)
      << f.files[0].second;
}

TEST(KubernetesFiles, K0sControllerKeepsItsConfigUnlessArgsAreReplaced) {
  config::KubernetesConfig c;
  c.role = config::KubernetesRole::kK0sController;
  c.section = "k0s";
  c.args = {"--enable-worker"};
  EXPECT_EQ(kubernetes_files(c, ServiceManager::kSystemd).argv,
            (std::vector<std::string>{"/usr/bin/k0s", "controller", "--config=/etc/k0s/k0s.yaml",
                                      "--enable-worker"}));
  c.replace_args = true;
  EXPECT_EQ(kubernetes_files(c, ServiceManager::kSystemd).argv,
            (std::vector<std::string>{"/usr/bin/k0s", "controller", "--enable-worker"}));
}

TEST(ApplyKubernetes, RefusesAnImageWithoutTheBinary) {
  util::TempDir root = util::TempDir::scratch();
  auto f = kubernetes_files(k3s_agent(), ServiceManager::kSystemd);
  try {
    apply_kubernetes(f, root.path(), false);
    ADD_FAILURE() << "applied without /usr/bin/k3s";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    EXPECT_NE(std::string(e.what()).find("the image has no /usr/bin/k3s (convert it with --k8s "
                                         "k3s)"),
              std::string::npos)
        << e.what();
  }
  util::make_dirs(root.path() / "usr/bin");
  util::write_file_atomic(root.path() / "usr/bin/k3s", "#!/bin/sh\n", 0755);
  apply_kubernetes(f, root.path(), false);
  EXPECT_EQ(util::read_file(root.path() / "run/systemd/system/k3s.service.d/"
                                          "60-pok8s-cloud-config.conf"),
            f.files[0].second);
}

}  // namespace
}  // namespace pok8s::node
