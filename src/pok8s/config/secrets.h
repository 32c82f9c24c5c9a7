// The secrets a build request carries (passwords, cluster tokens, the disk passphrase, WireGuard
// keys): found, to scrub them from logs, and masked, to show a request back without them.
#pragma once

#include <cstddef>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace pok8s::config {

// What stands in for a secret, in a masked document and in scrubbed text.
inline constexpr std::string_view kSecretMask = "********";
// The line a masked document is reduced to when it does not parse (or exceeds the parsers'
// limits): what cannot be read cannot be masked, so nothing of it is shown.
inline constexpr std::string_view kDocumentNotShown = "# (not shown: the document does not parse)";
// The line that stands for what follows a stream's first document: the parsers read the first
// alone, so nothing after it is used, and none of it is shown.
inline constexpr std::string_view kLaterDocumentsNotShown =
    "# (not shown: the documents after the first, which pok8s does not read)";
// Shorter secrets are left alone by scrub(): replacing every "ab" in a log makes it unreadable,
// and a secret that short is guessed sooner than read in a log anyway.
inline constexpr std::size_t kMinScrubbedSecretBytes = 4;

// Where the secrets are. A cloud-config (a file starting with "#cloud-config"):
//   users[].passwd, stages.STAGE[].users.NAME.passwd, install.passphrase, p2p.network_token,
//   and in k3s, k3s-agent, k0s and k0s-worker: env variables whose name holds TOKEN, SECRET,
//   PASSWORD or PASSWD (K3S_TOKEN, K3S_AGENT_TOKEN, …) or is K3S_DATASTORE_ENDPOINT, and the
//   values of --token, --token-file, --agent-token, --agent-token-file, --datastore-endpoint and
//   -t in args ("--token=V", "--token", "V", or Kairos' "--token V" in one item; Go's flag
//   parsers take one dash or two).
// A build spec: toppings.wireguard.privateKey, toppings.wireguard.peers[].presharedKey and
// toppings.cluster.token.
// Only the first document of a stream is read, as the parsers read it, and a container where a
// secret belongs is a secret as a whole.

// Every secret value of a request: its spec and each of its files that is a cloud-config.
// Sorted, without duplicates. A document that does not parse gives none: the build refuses it,
// so its secrets go nowhere.
std::vector<std::string> secret_values(std::string_view spec_yaml,
                                       const std::map<std::string, std::string>& files);

// The spec as YAML with each secret replaced by kSecretMask, and each other occurrence of a
// secret value scrubbed. Comments are dropped (they are free text), and documents after the
// first become kLaterDocumentsNotShown. A spec that does not parse gives kDocumentNotShown.
std::string mask_secrets_in_spec(std::string_view spec_yaml);

// The same for a cloud-config, which keeps its "#cloud-config" header. A file without the header
// is no cloud-config (no node reads it as one) and is returned unchanged.
std::string mask_secrets_in_cloud_config(std::string_view text);

// `text` with every occurrence of each of `secrets` of at least kMinScrubbedSecretBytes replaced
// by kSecretMask; overlapping and adjacent occurrences become one mask.
std::string scrub(std::string_view text, std::span<const std::string> secrets);

}  // namespace pok8s::config
