// The toppings' files in an image tree: manifests where the distribution auto-deploys them,
// the wg-quick configuration (a key made on the node when the spec has none), and the agent
// configuration that joins a control plane, for k3s and k0s, systemd and OpenRC.
#include "pok8s/convert/toppings.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>

#include "pok8s/util/error.h"

using namespace pok8s;
using namespace pok8s::convert;
namespace fs = std::filesystem;

namespace {

const std::string kPeerKey = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
const std::string kNodeKey = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
const std::string kHash = std::string(64, 'a');

config::WireGuardTopping wireguard() {
  config::WireGuardTopping wg;
  wg.address = {"10.8.0.2/24", "fd00::2/64"};
  wg.listen_port = 51820;
  config::WireGuardPeer peer;
  peer.public_key = kPeerKey;
  peer.endpoint = "vpn.example.com:51820";
  peer.allowed_ips = {"10.8.0.0/24"};
  peer.persistent_keepalive = 25;
  wg.peers = {peer};
  return wg;
}

std::string mode_of(const util::Path& p) {
  struct stat st {};
  EXPECT_EQ(::stat(p.c_str(), &st), 0) << p;
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", st.st_mode & 07777);
  return buf;
}

class Toppings : public ::testing::Test {
 protected:
  void SetUp() override {
    root = dir.path() / "root";
    fs::create_directories(root / "etc");
    data = dir.path() / "data";
    fs::create_directories(data / "toppings");
    util::write_file_atomic(data / "toppings/wg-quick.openrc", "#!/sbin/openrc-run\n");
    fs::create_directories(dir.path() / "manifests");
  }
  util::Path manifest(const std::string& name, const std::string& content) {
    util::Path p = dir.path() / "manifests" / name;
    util::write_file_atomic(p, content);
    return p;
  }
  util::TempDir dir = util::TempDir::scratch();
  util::Path root, data;
};

TEST_F(Toppings, WireGuardWithoutAKeyMakesOneOnTheNode) {
  std::string conf = wireguard_config(wireguard());
  EXPECT_NE(conf.find("Address = 10.8.0.2/24, fd00::2/64\n"), std::string::npos) << conf;
  EXPECT_NE(conf.find("ListenPort = 51820\n"), std::string::npos);
  EXPECT_EQ(conf.find("PrivateKey"), std::string::npos);
  EXPECT_NE(conf.find("wg genkey > /etc/wireguard/%i.key"), std::string::npos);
  EXPECT_NE(conf.find("PostUp = wg set %i private-key /etc/wireguard/%i.key"), std::string::npos);
  EXPECT_NE(conf.find("[Peer]\nPublicKey = " + kPeerKey +
                      "\nEndpoint = vpn.example.com:51820\n"
                      "AllowedIPs = 10.8.0.0/24\nPersistentKeepalive = 25\n"),
            std::string::npos)
      << conf;
}

TEST_F(Toppings, WireGuardWithAKeyUsesIt) {
  auto wg = wireguard();
  wg.private_key = kNodeKey;
  std::string conf = wireguard_config(wg);
  EXPECT_NE(conf.find("PrivateKey = " + kNodeKey + "\n"), std::string::npos);
  EXPECT_EQ(conf.find("wg genkey"), std::string::npos);
}

TEST_F(Toppings, WireGuardIsWrittenPrivatelyAndItsServiceEnabled) {
  config::Toppings t;
  t.wireguard = wireguard();
  auto services = write_toppings(root, t, "", InitSystem::kSystemd, data);
  ASSERT_EQ(services.size(), 1u);
  EXPECT_EQ(services[0].name, "wg-quick@wg0.service");
  EXPECT_EQ(mode_of(root / "etc/wireguard/wg0.conf"), "0600");
  EXPECT_EQ(mode_of(root / "etc/wireguard"), "0700");
  EXPECT_EQ(util::read_file(root / "etc/wireguard/wg0.conf"), wireguard_config(*t.wireguard));

  auto openrc = write_toppings(root, t, "", InitSystem::kOpenrc, data);
  ASSERT_EQ(openrc.size(), 1u);
  EXPECT_EQ(openrc[0].name, "wg-quick.wg0");
  EXPECT_EQ(mode_of(root / "etc/init.d/wg-quick.wg0"), "0755");
}

TEST_F(Toppings, K3sJoinBecomesASecureTokenWhenACaHashIsGiven) {
  config::ClusterJoin join{"https://10.0.0.1:6443", "s3cret", "sha256:" + kHash};
  std::string conf = k3s_join_config(join);
  EXPECT_NE(conf.find("server: \"https://10.0.0.1:6443\"\n"), std::string::npos) << conf;
  EXPECT_NE(conf.find("token: \"K10" + kHash + "::server:s3cret\"\n"), std::string::npos) << conf;

  join.token = "abcdef.0123456789abcdef";
  EXPECT_NE(k3s_join_config(join).find("token: \"K10" + kHash + "::abcdef.0123456789abcdef\""),
            std::string::npos);

  join.token = "K10" + kHash + "::server:x";
  EXPECT_NE(k3s_join_config(join).find("token: \"K10" + kHash + "::server:x\""), std::string::npos);
  join.token = "K10" + std::string(64, 'b') + "::server:x";
  EXPECT_THROW(k3s_join_config(join), Error);

  join = {"https://cp.example:6443", "plain", ""};
  EXPECT_NE(k3s_join_config(join).find("token: \"plain\""), std::string::npos);
}

TEST_F(Toppings, K3sJoinRunsTheAgentAndStartsIt) {
  config::Toppings t;
  t.cluster = config::ClusterJoin{"https://10.0.0.1:6443", "s3cret", ""};
  auto services = write_toppings(root, t, "k3s", InitSystem::kSystemd, data);
  ASSERT_EQ(services.size(), 1u);
  EXPECT_EQ(services[0].name, "k3s.service");
  EXPECT_EQ(mode_of(root / "etc/rancher/k3s/config.yaml.d/50-pok8s-join.yaml"), "0600");
  EXPECT_EQ(util::read_file(root / "etc/systemd/system/k3s.service.d/50-pok8s-join.conf")
                    .find("ExecStart=\nExecStart=/usr/bin/k3s agent\n") != std::string::npos,
            true);
  write_toppings(root, t, "k3s", InitSystem::kOpenrc, data);
  EXPECT_NE(util::read_file(root / "etc/conf.d/k3s").find("K3S_ARGS=\"agent\""), std::string::npos);
}

TEST_F(Toppings, K0sJoinKeepsTheTokenFileAndRunsAWorker) {
  config::Toppings t;
  t.cluster = config::ClusterJoin{"https://10.0.0.1:6443", "H4sIAAAAAAAC", ""};
  auto services = write_toppings(root, t, "k0s", InitSystem::kSystemd, data);
  ASSERT_EQ(services.size(), 1u);
  EXPECT_EQ(services[0].name, "k0s.service");
  EXPECT_EQ(util::read_file(root / "etc/k0s/join-token"), "H4sIAAAAAAAC\n");
  EXPECT_EQ(mode_of(root / "etc/k0s/join-token"), "0600");
  EXPECT_NE(util::read_file(root / "etc/systemd/system/k0s.service.d/50-pok8s-join.conf")
                .find("ExecStart=/usr/bin/k0s worker --token-file /etc/k0s/join-token\n"),
            std::string::npos);
}

TEST_F(Toppings, ManifestsGoWhereTheDistributionDeploysThem) {
  config::Toppings t;
  t.manifests = {manifest("a.yaml", "kind: A\n")};
  fs::create_directories(dir.path() / "more");
  util::write_file_atomic(dir.path() / "more/c.yml", "kind: C\n");
  util::write_file_atomic(dir.path() / "more/b.json", "{}\n");
  util::write_file_atomic(dir.path() / "more/README", "not a manifest\n");
  t.manifests.push_back(dir.path() / "more");
  auto files = manifest_files(t);
  ASSERT_EQ(files.size(), 3u);
  EXPECT_EQ(files[1].filename(), "b.json");
  EXPECT_EQ(files[2].filename(), "c.yml");

  EXPECT_TRUE(write_toppings(root, t, "k3s", InitSystem::kSystemd, data).empty());
  EXPECT_EQ(util::read_file(root / "var/lib/rancher/k3s/server/manifests/a.yaml"), "kind: A\n");
  EXPECT_TRUE(fs::exists(root / "var/lib/rancher/k3s/server/manifests/c.yml"));
  EXPECT_FALSE(fs::exists(root / "var/lib/rancher/k3s/server/manifests/README"));
  write_toppings(root, t, "k0s", InitSystem::kSystemd, data);
  EXPECT_EQ(util::read_file(root / "var/lib/k0s/manifests/pok8s/b.json"), "{}\n");
}

TEST_F(Toppings, RefusesWhatCannotWork) {
  config::Toppings t;
  t.manifests = {manifest("a.yaml", "kind: A\n")};
  auto message = [&](std::string_view kubernetes) {
    try {
      validate_toppings(t, kubernetes);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(message("").find("toppings.manifests: auto-deployed manifests need Kubernetes"),
            std::string::npos);
  t.cluster = config::ClusterJoin{"https://10.0.0.1:6443", "t", ""};
  EXPECT_NE(message("k3s").find("deploys no manifests"), std::string::npos);
  t.manifests.clear();
  EXPECT_NE(message("").find("toppings.cluster: joining a cluster needs Kubernetes"),
            std::string::npos);
  t.cluster.reset();
  fs::create_directories(dir.path() / "other");
  util::write_file_atomic(dir.path() / "other/a.yaml", "kind: B\n");
  t.manifests = {manifest("a.yaml", "kind: A\n"), dir.path() / "other"};
  EXPECT_NE(message("k3s").find("have the same file name"), std::string::npos);
}

TEST_F(Toppings, NeverWritesThroughTheImagesSymlinks) {
  fs::create_directories(dir.path() / "outside");
  fs::create_symlink(dir.path() / "outside", root / "etc/wireguard");
  config::Toppings t;
  t.wireguard = wireguard();
  EXPECT_THROW(write_toppings(root, t, "", InitSystem::kSystemd, data), Error);
  EXPECT_TRUE(fs::is_empty(dir.path() / "outside"));
}

}  // namespace
