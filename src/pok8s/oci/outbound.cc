// The outbound policy: networks, address scopes after IANA's IPv4 and IPv6 special-purpose
// address registries (RFC 6890 and its updates), and the libcurl socket callback enforcing them.
#include "pok8s/oci/outbound.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <initializer_list>
#include <memory>

#include "pok8s/oci/curl_handles.h"
#include "pok8s/util/ascii.h"
#include "pok8s/util/error.h"

namespace pok8s::oci {

namespace {

using Bytes = std::array<std::uint8_t, 16>;

// IPv4 address bytes as an IPv4-mapped IPv6 address.
Bytes mapped(const std::uint8_t* v4) {
  Bytes b{};
  b[10] = 0xff;
  b[11] = 0xff;
  std::copy_n(v4, 4, b.begin() + 12);
  return b;
}

bool is_mapped(const Bytes& b) {
  return std::all_of(b.begin(), b.begin() + 10, [](std::uint8_t x) { return x == 0; }) &&
         b[10] == 0xff && b[11] == 0xff;
}

// The address as 16 bytes (IPv4 mapped), or nothing for another family.
std::optional<Bytes> address_bytes(const sockaddr* address) {
  if (!address) return std::nullopt;
  if (address->sa_family == AF_INET) {
    sockaddr_in in{};
    std::memcpy(&in, address, sizeof in);
    std::uint8_t v4[4];
    std::memcpy(v4, &in.sin_addr, 4);
    return mapped(v4);
  }
  if (address->sa_family == AF_INET6) {
    sockaddr_in6 in6{};
    std::memcpy(&in6, address, sizeof in6);
    Bytes b{};
    std::memcpy(b.data(), &in6.sin6_addr, 16);
    return b;
  }
  return std::nullopt;
}

// Whether the first `bits` bits of `a` and `b` agree.
bool same_prefix(const Bytes& a, const Bytes& b, int bits) {
  for (int i = 0; i < 16 && bits > 0; ++i, bits -= 8) {
    int mask = bits >= 8 ? 0xff : (0xff << (8 - bits)) & 0xff;
    if ((a[static_cast<std::size_t>(i)] & mask) != (b[static_cast<std::size_t>(i)] & mask))
      return false;
  }
  return true;
}

bool in_v4(const std::uint8_t* a, std::uint8_t b0, std::uint8_t b1, std::uint8_t b2, int bits) {
  std::uint32_t x =
      (std::uint32_t{a[0]} << 24) | (std::uint32_t{a[1]} << 16) | (std::uint32_t{a[2]} << 8) | a[3];
  std::uint32_t net =
      (std::uint32_t{b0} << 24) | (std::uint32_t{b1} << 16) | (std::uint32_t{b2} << 8);
  std::uint32_t mask = bits == 0 ? 0 : ~std::uint32_t{0} << (32 - bits);
  return (x & mask) == (net & mask);
}

AddressScope ipv4_scope(const std::uint8_t* a) {
  if (in_v4(a, 0, 0, 0, 8)) return AddressScope::kUnspecified;
  if (in_v4(a, 10, 0, 0, 8) || in_v4(a, 172, 16, 0, 12) || in_v4(a, 192, 168, 0, 16))
    return AddressScope::kPrivate;
  if (in_v4(a, 100, 64, 0, 10)) return AddressScope::kSharedNat;
  if (in_v4(a, 127, 0, 0, 8)) return AddressScope::kLoopback;
  if (in_v4(a, 169, 254, 0, 16)) return AddressScope::kLinkLocal;
  if (in_v4(a, 192, 0, 2, 24) || in_v4(a, 198, 51, 100, 24) || in_v4(a, 203, 0, 113, 24))
    return AddressScope::kDocumentation;
  if (in_v4(a, 198, 18, 0, 15)) return AddressScope::kBenchmarking;
  // IETF protocol assignments and the deprecated 6to4 relay anycast.
  if (in_v4(a, 192, 0, 0, 24) || in_v4(a, 192, 88, 99, 24)) return AddressScope::kReserved;
  if (in_v4(a, 224, 0, 0, 4)) return AddressScope::kMulticast;
  if (a[0] == 255 && a[1] == 255 && a[2] == 255 && a[3] == 255) return AddressScope::kBroadcast;
  if (in_v4(a, 240, 0, 0, 4)) return AddressScope::kReserved;
  return AddressScope::kPublic;
}

Bytes v6(std::initializer_list<std::uint8_t> leading) {
  Bytes b{};
  std::copy(leading.begin(), leading.end(), b.begin());
  return b;
}

AddressScope ipv6_scope(const Bytes& b) {
  static const Bytes kZero{};
  if (is_mapped(b)) return ipv4_scope(b.data() + 12);
  if (b == kZero) return AddressScope::kUnspecified;
  Bytes loopback{};
  loopback[15] = 1;
  if (b == loopback) return AddressScope::kLoopback;
  // NAT64 (RFC 6052) and 6to4 (RFC 3056) lead to the IPv4 address inside them.
  if (same_prefix(b, v6({0x00, 0x64, 0xff, 0x9b}), 96)) return ipv4_scope(b.data() + 12);
  if (same_prefix(b, v6({0x20, 0x02}), 16)) return ipv4_scope(b.data() + 2);
  if (same_prefix(b, v6({0x00, 0x64, 0xff, 0x9b, 0x00, 0x01}), 48)) return AddressScope::kPrivate;
  if (same_prefix(b, v6({0xfc}), 7)) return AddressScope::kUniqueLocal;
  if (same_prefix(b, v6({0xfe, 0x80}), 10)) return AddressScope::kLinkLocal;
  if (same_prefix(b, v6({0xfe, 0xc0}), 10)) return AddressScope::kPrivate;  // site-local
  if (same_prefix(b, v6({0xff}), 8)) return AddressScope::kMulticast;
  if (same_prefix(b, v6({0x20, 0x01, 0x0d, 0xb8}), 32)) return AddressScope::kDocumentation;
  if (same_prefix(b, v6({0x20, 0x01, 0x00, 0x02, 0x00, 0x00}), 48))
    return AddressScope::kBenchmarking;
  // Teredo hides the address it leads to.
  if (same_prefix(b, v6({0x20, 0x01, 0x00, 0x00}), 32)) return AddressScope::kReserved;
  // Global unicast is 2000::/3; everything else (IPv4-compatible, discard-only, …) is not.
  if (!same_prefix(b, v6({0x20}), 3)) return AddressScope::kReserved;
  return AddressScope::kPublic;
}

// A host name as compared: lowercase, without the root's trailing dot ("Docker.IO." is docker.io).
std::string host_key(std::string_view host) {
  std::string out = util::ascii_lower(host);
  while (!out.empty() && out.back() == '.') out.pop_back();
  return out;
}

bool is_ip_literal(const std::string& host) {
  if (host.find(':') != std::string::npos || host.starts_with('[')) return true;
  in_addr a{};
  return ::inet_pton(AF_INET, host.c_str(), &a) == 1;
}

OutboundPolicy& policy_storage() {
  static OutboundPolicy policy;
  return policy;
}

// "HOST:PORT" of a URL, for messages.
std::string host_port(const char* url) {
  CurlUrl u(curl_url());
  if (!url || !u || curl_url_set(u.get(), CURLUPART_URL, url, 0) != CURLUE_OK) return "the server";
  auto get = [&](CURLUPart part, unsigned flags) -> std::string {
    char* out = nullptr;
    if (curl_url_get(u.get(), part, &out, flags) != CURLUE_OK) return {};
    CurlString owned(out);
    return out;
  };
  std::string host = get(CURLUPART_HOST, 0);
  if (host.empty()) return "the server";
  return host + ":" + get(CURLUPART_PORT, CURLU_DEFAULT_PORT);
}

}  // namespace

std::string Cidr::str() const {
  char text[INET6_ADDRSTRLEN] = {};
  if (ipv4) {
    ::inet_ntop(AF_INET, network.data() + 12, text, sizeof text);
    return fmt::format("{}/{}", text, prefix_length - 96);
  }
  ::inet_ntop(AF_INET6, network.data(), text, sizeof text);
  return fmt::format("{}/{}", text, prefix_length);
}

Cidr parse_cidr(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return Error(ErrorKind::kInvalidInput, fmt::format("Failed to read the network {:?}: {}",
                                                       std::string(text.substr(0, 100)), why));
  };
  std::string_view address = text, prefix;
  if (auto slash = text.find('/'); slash != std::string_view::npos) {
    address = text.substr(0, slash);
    prefix = text.substr(slash + 1);
  }
  std::string addr(address);
  Cidr c;
  int max_bits = 0;
  std::uint8_t v4[4];
  if (::inet_pton(AF_INET, addr.c_str(), v4) == 1) {
    c.network = mapped(v4);
    c.ipv4 = true;
    max_bits = 32;
  } else if (::inet_pton(AF_INET6, addr.c_str(), c.network.data()) == 1) {
    max_bits = 128;
  } else {
    throw bad("not an IPv4 or IPv6 address, or ADDRESS/PREFIX such as 10.0.0.0/8 or fd00::/8");
  }
  int bits = max_bits;
  if (text.find('/') != std::string_view::npos) {
    auto [end, ec] = std::from_chars(prefix.data(), prefix.data() + prefix.size(), bits);
    if (prefix.empty() || ec != std::errc() || end != prefix.data() + prefix.size() || bits < 0 ||
        bits > max_bits)
      throw bad(fmt::format("the prefix length must be a number from 0 to {}", max_bits));
  }
  c.prefix_length = c.ipv4 ? bits + 96 : bits;
  // Drop the host bits, so that str() shows the network and contains() compares it alone.
  for (int i = 0; i < 16; ++i) {
    int keep = std::clamp(c.prefix_length - i * 8, 0, 8);
    c.network[static_cast<std::size_t>(i)] &=
        static_cast<std::uint8_t>(keep == 0 ? 0 : (0xff << (8 - keep)) & 0xff);
  }
  return c;
}

bool contains(const Cidr& cidr, const sockaddr* address) {
  auto b = address_bytes(address);
  return b && same_prefix(*b, cidr.network, cidr.prefix_length);
}

AddressScope address_scope(const sockaddr* address) {
  auto b = address_bytes(address);
  return b ? ipv6_scope(*b) : AddressScope::kReserved;
}

std::string_view describe(AddressScope scope) {
  switch (scope) {
    case AddressScope::kPublic:
      return "a public address";
    case AddressScope::kUnspecified:
      return "an unspecified address";
    case AddressScope::kLoopback:
      return "a loopback address";
    case AddressScope::kPrivate:
      return "a private address";
    case AddressScope::kSharedNat:
      return "a shared (carrier-grade NAT) address";
    case AddressScope::kLinkLocal:
      return "a link-local address";
    case AddressScope::kUniqueLocal:
      return "a unique-local address";
    case AddressScope::kMulticast:
      return "a multicast address";
    case AddressScope::kBroadcast:
      return "a broadcast address";
    case AddressScope::kDocumentation:
      return "a documentation address";
    case AddressScope::kBenchmarking:
      return "a benchmarking address";
    case AddressScope::kReserved:
      break;
  }
  return "a reserved address";
}

std::string address_text(const sockaddr* address) {
  char text[INET6_ADDRSTRLEN] = {};
  if (address && address->sa_family == AF_INET) {
    sockaddr_in in{};
    std::memcpy(&in, address, sizeof in);
    ::inet_ntop(AF_INET, &in.sin_addr, text, sizeof text);
  } else if (address && address->sa_family == AF_INET6) {
    sockaddr_in6 in6{};
    std::memcpy(&in6, address, sizeof in6);
    ::inet_ntop(AF_INET6, &in6.sin6_addr, text, sizeof text);
  } else {
    return "a non-IP address";
  }
  return text;
}

std::optional<std::string> refusal_reason(const OutboundPolicy& policy, const sockaddr* address) {
  if (!policy.public_only) return std::nullopt;
  for (const auto& cidr : policy.allowed)
    if (contains(cidr, address)) return std::nullopt;
  AddressScope scope = address_scope(address);
  if (scope == AddressScope::kPublic) return std::nullopt;
  return fmt::format(
      "{} is {}, which this service does not fetch from (allow it with --allow-network CIDR)",
      address_text(address), describe(scope));
}

bool realm_host_allowed(const OutboundPolicy& policy, std::string_view registry_host,
                        std::string_view realm_host) {
  if (!policy.public_only) return true;
  std::string registry = host_key(registry_host), realm = host_key(realm_host);
  if (realm.empty()) return false;
  if (realm == registry) return true;
  for (const auto& h : policy.realm_hosts)
    if (host_key(h) == realm) return true;
  // A registry named by its address has no domain to share.
  if (is_ip_literal(registry) || is_ip_literal(realm)) return false;
  auto dot = registry.find('.');
  if (dot == std::string::npos) return false;
  std::string parent = registry.substr(dot + 1);
  // "ghcr.io" has the parent "io", which would let any *.io host in.
  if (parent.find('.') == std::string::npos) return false;
  return realm == parent || realm.ends_with("." + parent);
}

void set_outbound_policy(OutboundPolicy policy) {
  policy_storage() = std::move(policy);
}

const OutboundPolicy& outbound_policy() {
  return policy_storage();
}

OutboundCheck::OutboundCheck(bool trusted)
    : policy_(&outbound_policy()), enforcing_(policy_->public_only && !trusted) {}

curl_socket_t OutboundCheck::open_socket(void* self, curlsocktype /*purpose*/,
                                         curl_sockaddr* address) {
  auto* check = static_cast<OutboundCheck*>(self);
  if (check->enforcing_) {
    // libcurl's curl_sockaddr ends in a sockaddr with room for `addrlen` bytes; copy them into
    // storage that fits any family before reading them as IPv4 or IPv6.
    sockaddr_storage storage{};
    std::memcpy(&storage, &address->addr, std::min<std::size_t>(address->addrlen, sizeof storage));
    const auto* target = reinterpret_cast<const sockaddr*>(&storage);
    std::optional<std::string> why;
    if (address->family != AF_INET && address->family != AF_INET6)
      why = "the address is not an IP address, which this service does not fetch from";
    else
      why = refusal_reason(*check->policy_, target);
    if (why) {
      if (!check->refused_) check->refused_ = std::move(why);
      return CURL_SOCKET_BAD;
    }
  }
  return ::socket(address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
}

std::string OutboundCheck::failure_reason(CURL* handle, CURLcode code,
                                          std::string_view detail) const {
  long redirects = 0;
  curl_easy_getinfo(handle, CURLINFO_REDIRECT_COUNT, &redirects);
  char* effective = nullptr;
  curl_easy_getinfo(handle, CURLINFO_EFFECTIVE_URL, &effective);
  std::string where = host_port(effective);
  if (refused_) {
    if (redirects > 0) return fmt::format("the redirect to {} was refused: {}", where, *refused_);
    return *refused_;
  }
  if (code == CURLE_UNSUPPORTED_PROTOCOL && redirects > 0)
    return "a redirect to a URL that is not https was refused (only a plain http URL may "
           "redirect to plain http)";
  if (!enforcing_) return std::string(detail);
  // Curl's own words would tell a closed port from a filtered one or from one that speaks
  // another protocol.
  if (code == CURLE_PEER_FAILED_VERIFICATION)
    return fmt::format("the TLS certificate of {} is not trusted", where);
  if (code == CURLE_TOO_MANY_REDIRECTS) return "too many redirects";
  return fmt::format("no answer from {}", where);
}

void apply_outbound_policy(CURL* handle, OutboundCheck& check, std::string_view url) {
  curl_easy_setopt(handle, CURLOPT_PROTOCOLS_STR, "http,https");
  std::string scheme = util::ascii_lower(url.substr(0, std::min<std::size_t>(url.size(), 7)));
  // A downgrade from https to plain http would hand the transfer to anyone on the path.
  curl_easy_setopt(handle, CURLOPT_REDIR_PROTOCOLS_STR,
                   scheme == "http://" ? "http,https" : "https");
  if (check.enforcing_) curl_easy_setopt(handle, CURLOPT_PROXY, "");
  curl_easy_setopt(handle, CURLOPT_OPENSOCKETFUNCTION, &OutboundCheck::open_socket);
  curl_easy_setopt(handle, CURLOPT_OPENSOCKETDATA, &check);
}

}  // namespace pok8s::oci
