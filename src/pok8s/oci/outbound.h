// The one policy for outbound connections to places a user named (registries, their token
// realms and redirects, downloads): which addresses may be reached, checked on every socket.
#pragma once

#include <curl/curl.h>
#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pok8s::oci {

// An IPv4 or IPv6 network. IPv4 networks are kept as IPv4-mapped IPv6 ones (::ffff:a.b.c.d),
// so one comparison serves both families and an IPv4-mapped address matches its IPv4 network.
struct Cidr {
  std::array<std::uint8_t, 16> network{};  // host bits zero
  int prefix_length = 0;                   // of the 128 bits
  bool ipv4 = false;                       // written as IPv4 (prefix_length - 96 bits of it)

  std::string str() const;  // "10.0.0.0/8", "fd00::/8"
};

// "10.0.0.0/8", "fd00::/8", or one address ("127.0.0.1" is 127.0.0.1/32); host bits are
// dropped. Throws kInvalidInput naming the text.
Cidr parse_cidr(std::string_view text);
// Whether `address` (AF_INET or AF_INET6) is inside `cidr`. An IPv4-mapped IPv6 address
// counts as its IPv4 address.
bool contains(const Cidr& cidr, const sockaddr* address);

// Where an address leads, after IANA's special-purpose address registries.
enum class AddressScope {
  kPublic,
  kUnspecified,    // 0.0.0.0/8, :: (on Linux, connecting to it reaches this host)
  kLoopback,       // 127.0.0.0/8, ::1
  kPrivate,        // RFC 1918, IPv6 site-local, local-use NAT64
  kSharedNat,      // 100.64.0.0/10 (carrier-grade NAT)
  kLinkLocal,      // 169.254.0.0/16 (cloud metadata services), fe80::/10
  kUniqueLocal,    // fc00::/7
  kMulticast,      // 224.0.0.0/4, ff00::/8
  kBroadcast,      // 255.255.255.255
  kDocumentation,  // TEST-NET-1/2/3, 2001:db8::/32
  kBenchmarking,   // 198.18.0.0/15, 2001:2::/48
  kReserved,       // everything else that is not global unicast
};
// The scope of `address`; an IPv4 address embedded in IPv6 (mapped, NAT64, 6to4) is judged
// as that IPv4 address. Anything not AF_INET or AF_INET6 is kReserved.
AddressScope address_scope(const sockaddr* address);
// "a loopback address", for messages.
std::string_view describe(AddressScope scope);
// "127.0.0.1", "::1".
std::string address_text(const sockaddr* address);

struct OutboundPolicy {
  // Refuse every address that is not public (AddressScope::kPublic) unless `allowed` has it.
  bool public_only = false;
  std::vector<Cidr> allowed;
  // Under public_only, token realm hosts allowed besides the registry's own domain.
  std::vector<std::string> realm_hosts;
};

// Why `policy` refuses a connection to `address` ("127.0.0.1 is a loopback address, which …"),
// or nothing when it allows it.
std::optional<std::string> refusal_reason(const OutboundPolicy& policy, const sockaddr* address);

// Under public_only, whether a registry at `registry_host` may send its clients to a token realm
// on `realm_host`: the same host, a host in the registry's parent domain (registry-1.docker.io
// may use auth.docker.io; a parent of one label, like "io", counts for nothing), or one of
// `policy.realm_hosts`. Without public_only every host may.
bool realm_host_allowed(const OutboundPolicy& policy, std::string_view registry_host,
                        std::string_view realm_host);

// The process-wide policy. Set it once at startup, before any transfer begins; the default
// allows everything (a person fetching from their own network with the CLI).
void set_outbound_policy(OutboundPolicy policy);
const OutboundPolicy& outbound_policy();

// One transfer under the process-wide policy: apply_outbound_policy() installs it on a curl
// handle, and after a failed transfer failure_reason() says why without telling an address it
// refused from a closed or a filtered port.
class OutboundCheck {
 public:
  // `trusted`: the destination is the administrator's choice (the artifact store's registry),
  // so no address is refused.
  explicit OutboundCheck(bool trusted = false);

  // Whether addresses are being refused for this transfer (public_only and not trusted).
  bool enforcing() const { return enforcing_; }
  // Whether a failed transfer was refused by the policy: an address the socket callback refused,
  // or a redirect to a scheme that is not allowed (only a redirect can lead to one).
  bool refused(CURLcode code) const {
    return refused_.has_value() || code == CURLE_UNSUPPORTED_PROTOCOL;
  }
  // The reason a failed transfer gives in a message. Refused addresses say so (after a redirect,
  // naming where it led); while enforcing, every other connection failure is "no answer from
  // HOST:PORT", whatever curl saw; otherwise curl's own `detail`.
  std::string failure_reason(CURL* handle, CURLcode code, std::string_view detail) const;

 private:
  friend void apply_outbound_policy(CURL* handle, OutboundCheck& check, std::string_view url);
  static curl_socket_t open_socket(void* self, curlsocktype purpose, curl_sockaddr* address);

  const OutboundPolicy* policy_;
  bool enforcing_;
  std::optional<std::string> refused_;
};

// Restricts `handle` to http and https, lets redirects go to https only (or http as well when
// `url`, the first URL, is plain http), drops any proxy while enforcing (a proxy would hide the
// address it connects to), and checks the address of every socket libcurl opens, after DNS
// resolution, so that a name resolving (or rebinding) to a refused address is refused too.
// `check` must outlive the transfer. Call it after curl_easy_reset and before perform.
void apply_outbound_policy(CURL* handle, OutboundCheck& check, std::string_view url);

}  // namespace pok8s::oci
