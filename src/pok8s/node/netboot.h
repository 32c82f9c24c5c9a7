// Netboot in pok8s-init: an address by DHCP on the machine's first interface that gets one, then
// the rootfs image (and the cloud-config) over HTTP into RAM, each checked against the sha256 on
// the kernel command line before anything uses it. DHCP (RFC 2131, options from RFC 2132) and
// the HTTP/1.0 GET are hand-written: pok8s-init is a static binary in the initramfs, and no
// Debian library for either links into it (libcurl's static archive needs a resolver and TLS
// stack the initramfs does not have). Everything a server sends is untrusted.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "pok8s/util/file.h"

namespace pok8s::node {

// http://A.B.C.D[:PORT]/PATH. The host is an IPv4 address: the initramfs has no resolver (an
// iPXE script's ${cwduri} or ${next-server} is one).
struct HttpUrl {
  std::string host;
  std::uint16_t port = 80;
  std::string path;  // starts with "/"
  std::string text;  // as given, for messages
};

// Throws Error(kInvalidInput) naming the URL and what is wrong with it.
HttpUrl parse_http_url(std::string_view url);

struct HttpHead {
  int status = 0;
  std::string reason;
  std::optional<std::uint64_t> content_length;
  std::size_t size = 0;  // bytes of the head, through the blank line
};

inline constexpr std::size_t kMaxHttpHeadBytes = 16u << 10;

// The status line and header fields of an HTTP/1.x response, once `data` holds them through the
// blank line (nullopt before). Throws Error(kFormat) for a malformed head, a head over
// kMaxHttpHeadBytes, or a Transfer-Encoding (an HTTP/1.0 request is answered without one).
std::optional<HttpHead> parse_http_head(std::string_view data);

using MacAddress = std::array<std::uint8_t, 6>;

// Addresses in host byte order.
struct DhcpLease {
  std::uint32_t address = 0;
  std::uint32_t netmask = 0;
  std::uint32_t router = 0;  // 0: none offered
  std::uint32_t server = 0;  // the server identifier (option 54)
  std::uint32_t lease_seconds = 0;
};

enum class DhcpType : std::uint8_t { kDiscover = 1, kOffer = 2, kRequest = 3, kAck = 5, kNak = 6 };

struct DhcpReply {
  DhcpType type = DhcpType::kOffer;
  DhcpLease lease;
};

// A DHCPDISCOVER / DHCPREQUEST (for `offer`) from `mac`, asking the server to broadcast its reply
// (the interface has no address yet).
std::string dhcp_discover(const MacAddress& mac, std::uint32_t xid);
std::string dhcp_request(const MacAddress& mac, std::uint32_t xid, const DhcpLease& offer);

// A server's reply to our `xid` and `mac`, or nullopt for anything else: another client's, not a
// DHCP reply, or malformed (options running past the packet, a missing message type).
std::optional<DhcpReply> parse_dhcp_reply(std::string_view packet, std::uint32_t xid,
                                          const MacAddress& mac);

std::string ipv4_text(std::uint32_t address);  // host byte order -> "10.0.2.15"

struct NetworkConfig {
  std::string interface;
  DhcpLease lease;
};

// Brings up the first interface (not lo) that gets a lease within `wait_seconds`, sets its
// address, netmask and default route. Throws Error(kIo) naming the interfaces tried.
NetworkConfig configure_network(unsigned wait_seconds,
                                const std::function<void(std::string_view)>& log);

// Downloads `url` into `out` (0600; removed again on any failure), at most `max_bytes`, and checks
// its sha256 against `sha256_hex`. Throws Error(kNotFound) for a 404, kIo for other statuses and
// network failures, kSignature for a digest mismatch, each naming the URL. `progress` gets bytes
// so far and the total (0 when the server does not say).
void http_fetch(const HttpUrl& url, const util::Path& out, std::string_view sha256_hex,
                std::uint64_t max_bytes,
                const std::function<void(std::uint64_t, std::uint64_t)>& progress);

}  // namespace pok8s::node
