// Topping files are text pok8s writes itself (wg-quick's INI format, a k3s YAML fragment, a
// systemd drop-in); every value in them was checked by the build spec parser, and values that
// go into YAML are quoted here as well.
#include "pok8s/convert/toppings.h"

#include <fmt/format.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <regex>

#include "pok8s/convert/image_files.h"
#include "pok8s/util/error.h"

namespace pok8s::convert {
namespace {

namespace fs = std::filesystem;

[[noreturn]] void bad_topping(std::string_view field, std::string_view why) {
  throw Error(ErrorKind::kInvalidInput, fmt::format("Invalid toppings.{}: {}", field, why));
}

std::string yaml_quoted(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out + "\"";
}

std::string joined(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& i : items) out += (out.empty() ? "" : ", ") + i;
  return out;
}

bool is_manifest_name(const std::string& name) {
  for (const char* ext : {".yaml", ".yml", ".json"})
    if (name.size() > std::string_view(ext).size() && name.ends_with(ext)) return true;
  return false;
}

util::Path manifest_dir(std::string_view kubernetes) {
  // k0s applies each subdirectory of its manifests directory as one stack.
  return kubernetes == "k0s" ? "/var/lib/k0s/manifests/pok8s"
                             : "/var/lib/rancher/k3s/server/manifests";
}

// A systemd drop-in that replaces the unit's command, or OpenRC's conf.d variable for it.
void set_command(const util::Path& root, std::string_view service, InitSystem init,
                 std::string_view args) {
  if (init == InitSystem::kSystemd) {
    put_file(root, fmt::format("/etc/systemd/system/{}.service.d/50-pok8s-join.conf", service),
             fmt::format("# Written by pok8s from the build spec's toppings.cluster.\n[Service]\n"
                         "ExecStart=\nExecStart=/usr/bin/{} {}\n",
                         service, args),
             0644);
  } else {
    std::string var = service == "k3s" ? "K3S_ARGS" : "K0S_ARGS";
    put_file(root, fmt::format("/etc/conf.d/{}", service),
             fmt::format("# Written by pok8s from the build spec's toppings.cluster.\n{}=\"{}\"\n",
                         var, args),
             0644);
  }
}

}  // namespace

void validate_toppings(const config::Toppings& t, std::string_view kubernetes) {
  if (!t.manifests.empty() && kubernetes.empty())
    bad_topping("manifests", "auto-deployed manifests need Kubernetes (kubernetes: k3s or k0s)");
  if (t.cluster && kubernetes.empty())
    bad_topping("cluster", "joining a cluster needs Kubernetes (kubernetes: k3s or k0s)");
  if (t.cluster && !t.manifests.empty())
    bad_topping("manifests",
                "a node that joins a cluster as an agent deploys no manifests; apply them to the "
                "control plane");
  std::map<std::string, util::Path> names;
  for (const auto& file : manifest_files(t)) {
    auto [it, fresh] = names.emplace(file.filename().string(), file);
    if (!fresh)
      bad_topping("manifests", fmt::format("{} and {} have the same file name", it->second.string(),
                                           file.string()));
  }
}

std::vector<util::Path> manifest_files(const config::Toppings& t) {
  std::vector<util::Path> out;
  for (const auto& path : t.manifests) {
    std::error_code ec;
    if (!fs::is_directory(path, ec)) {
      out.push_back(path);
      continue;
    }
    std::vector<util::Path> in_dir;
    for (const auto& entry : fs::directory_iterator(path, ec))
      if (entry.is_regular_file() && is_manifest_name(entry.path().filename().string()))
        in_dir.push_back(entry.path());
    if (ec) throw_errno("Failed to list " + path.string(), ec.value());
    std::sort(in_dir.begin(), in_dir.end());
    out.insert(out.end(), in_dir.begin(), in_dir.end());
  }
  return out;
}

std::string wireguard_config(const config::WireGuardTopping& wg) {
  std::string out = fmt::format(
      "# Written by pok8s from the build spec's toppings.wireguard.\n[Interface]\nAddress = {}\n",
      joined(wg.address));
  if (wg.listen_port) out += fmt::format("ListenPort = {}\n", *wg.listen_port);
  if (!wg.private_key.empty()) {
    out += fmt::format("PrivateKey = {}\n", wg.private_key);
  } else {
    // Each node makes its own key on its first boot: an image shared by many machines must not
    // carry one private key for all of them.
    out +=
        "PreUp = [ -s /etc/wireguard/%i.key ] || (umask 077; wg genkey > /etc/wireguard/%i.key)\n"
        "PostUp = wg set %i private-key /etc/wireguard/%i.key\n";
  }
  out += "PostUp = echo \"pok8s: wireguard %i public key $(wg show %i public-key)\"\n";
  for (const auto& peer : wg.peers) {
    out += fmt::format("\n[Peer]\nPublicKey = {}\n", peer.public_key);
    if (!peer.preshared_key.empty()) out += fmt::format("PresharedKey = {}\n", peer.preshared_key);
    if (!peer.endpoint.empty()) out += fmt::format("Endpoint = {}\n", peer.endpoint);
    out += fmt::format("AllowedIPs = {}\n", joined(peer.allowed_ips));
    if (peer.persistent_keepalive)
      out += fmt::format("PersistentKeepalive = {}\n", *peer.persistent_keepalive);
  }
  return out;
}

std::string k3s_join_config(const config::ClusterJoin& join) {
  std::string token = join.token;
  if (!join.ca_hash.empty()) {
    std::string hex = join.ca_hash.substr(join.ca_hash.find(':') + 1);
    if (token.starts_with("K10")) {
      if (token.substr(3, hex.size()) != hex)
        bad_topping("cluster.caHash", "the token carries a different CA hash (K10<hash>::…)");
    } else {
      // A bootstrap token ("abcdef.0123456789abcdef") goes after the hash as it is; a server
      // token is the password of the "server" user.
      static const std::regex bootstrap("[a-z0-9]{6}\\.[a-z0-9]{16}");
      token = fmt::format("K10{}::{}{}", hex,
                          std::regex_match(token, bootstrap) ? "" : "server:", token);
    }
  }
  return fmt::format(
      "# Written by pok8s from the build spec's toppings.cluster: this node joins {} as an "
      "agent.\nserver: {}\ntoken: {}\n",
      join.server, yaml_quoted(join.server), yaml_quoted(token));
}

std::vector<ToppingService> write_toppings(const util::Path& root, const config::Toppings& t,
                                           std::string_view kubernetes, InitSystem init,
                                           const util::Path& data_dir) {
  validate_toppings(t, kubernetes);
  std::vector<ToppingService> services;
  util::Path manifests = manifest_dir(kubernetes);
  for (const auto& file : manifest_files(t))
    copy_into(root, (manifests / file.filename()).string(), file, 0600);

  if (const auto& wg = t.wireguard) {
    put_file(root, fmt::format("/etc/wireguard/{}.conf", wg->interface), wireguard_config(*wg),
             0600);
    ::chmod((root / "etc/wireguard").c_str(), 0700);
    if (init == InitSystem::kSystemd) {
      services.push_back({fmt::format("wg-quick@{}.service", wg->interface)});
    } else {
      std::string name = "wg-quick." + wg->interface;
      copy_into(root, "/etc/init.d/" + name, data_dir / "toppings/wg-quick.openrc", 0755);
      services.push_back({name});
    }
  }

  if (const auto& join = t.cluster) {
    if (kubernetes == "k3s") {
      put_file(root, "/etc/rancher/k3s/config.yaml.d/50-pok8s-join.yaml", k3s_join_config(*join),
               0600);
      set_command(root, "k3s", init, "agent");
    } else {
      // A k0s join token carries the server's address and CA itself.
      put_file(root, "/etc/k0s/join-token", join->token + "\n", 0600);
      set_command(root, "k0s", init, "worker --token-file /etc/k0s/join-token");
    }
    services.push_back({init == InitSystem::kSystemd ? std::string(kubernetes) + ".service"
                                                     : std::string(kubernetes)});
  }
  return services;
}

}  // namespace pok8s::convert
