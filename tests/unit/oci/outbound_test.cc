// The outbound policy's pure parts: networks (CIDRs), address scopes, the allow-list, token
// realm hosts. The socket callback itself is exercised by tests/integration/outbound_test.cc.
#include "pok8s/oci/outbound.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>

#include <string>

#include "pok8s/util/error.h"

using namespace pok8s;
using namespace pok8s::oci;

namespace {

// A socket address for `text` (IPv4 or IPv6), as libcurl hands one to the socket callback.
struct Address {
  sockaddr_storage storage{};
  explicit Address(const std::string& text) {
    auto* in = reinterpret_cast<sockaddr_in*>(&storage);
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&storage);
    if (::inet_pton(AF_INET, text.c_str(), &in->sin_addr) == 1) {
      in->sin_family = AF_INET;
      in->sin_port = htons(443);
    } else if (::inet_pton(AF_INET6, text.c_str(), &in6->sin6_addr) == 1) {
      in6->sin6_family = AF_INET6;
      in6->sin6_port = htons(443);
    } else {
      ADD_FAILURE() << "not an address: " << text;
    }
  }
  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage); }
};

AddressScope scope_of(const std::string& text) {
  return address_scope(Address(text).get());
}

OutboundPolicy public_only(std::initializer_list<const char*> allowed = {}) {
  OutboundPolicy p;
  p.public_only = true;
  for (const char* c : allowed) p.allowed.push_back(parse_cidr(c));
  return p;
}

}  // namespace

TEST(OutboundCidr, ParsesIpv4AndDropsHostBits) {
  Cidr c = parse_cidr("10.1.2.3/8");
  EXPECT_TRUE(c.ipv4);
  EXPECT_EQ(c.str(), "10.0.0.0/8");
  EXPECT_TRUE(contains(c, Address("10.255.0.1").get()));
  EXPECT_FALSE(contains(c, Address("11.0.0.1").get()));
  EXPECT_EQ(parse_cidr("192.168.1.0/24").str(), "192.168.1.0/24");
  EXPECT_EQ(parse_cidr("172.16.0.0/12").str(), "172.16.0.0/12");
  EXPECT_EQ(parse_cidr("0.0.0.0/0").str(), "0.0.0.0/0");
  EXPECT_TRUE(contains(parse_cidr("0.0.0.0/0"), Address("8.8.8.8").get()));
  EXPECT_FALSE(contains(parse_cidr("0.0.0.0/0"), Address("2001:4860::8888").get()));
}

TEST(OutboundCidr, TakesOneAddressAsAHostNetwork) {
  Cidr c = parse_cidr("127.0.0.1");
  EXPECT_EQ(c.str(), "127.0.0.1/32");
  EXPECT_TRUE(contains(c, Address("127.0.0.1").get()));
  EXPECT_FALSE(contains(c, Address("127.0.0.2").get()));
  EXPECT_EQ(parse_cidr("::1").str(), "::1/128");
}

TEST(OutboundCidr, ParsesIpv6) {
  Cidr c = parse_cidr("fd00:1234::/16");
  EXPECT_FALSE(c.ipv4);
  EXPECT_EQ(c.str(), "fd00::/16");
  EXPECT_TRUE(contains(c, Address("fd00:ffff::1").get()));
  EXPECT_FALSE(contains(c, Address("fd01::1").get()));
  EXPECT_FALSE(contains(c, Address("10.0.0.1").get()));
  EXPECT_TRUE(contains(parse_cidr("2001:db8::/32"), Address("2001:db8:1::5").get()));
  EXPECT_TRUE(contains(parse_cidr("::/0"), Address("2001:4860::8888").get()));
}

TEST(OutboundCidr, MatchesIpv4MappedAddressesAgainstIpv4Networks) {
  EXPECT_TRUE(contains(parse_cidr("127.0.0.0/8"), Address("::ffff:127.0.0.1").get()));
  EXPECT_FALSE(contains(parse_cidr("10.0.0.0/8"), Address("::ffff:127.0.0.1").get()));
}

TEST(OutboundCidr, RefusesBadInputNamingIt) {
  for (const char* bad :
       {"", "/8", "10.0.0.0/", "10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/8x", "10.0.0/8", "::1/129",
        "example.com/8", "10.0.0.0 /8", "fe80::1%eth0", "10.0.0.0/8/8", "300.1.2.3"}) {
    try {
      parse_cidr(bad);
      ADD_FAILURE() << "accepted \"" << bad << "\"";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput) << bad;
      EXPECT_NE(std::string(e.what()).find("Failed to read the network \"" + std::string(bad)),
                std::string::npos)
          << e.what();
    }
  }
}

TEST(OutboundScope, ClassifiesNonPublicIpv4) {
  EXPECT_EQ(scope_of("127.0.0.1"), AddressScope::kLoopback);
  EXPECT_EQ(scope_of("127.255.0.9"), AddressScope::kLoopback);
  EXPECT_EQ(scope_of("10.1.2.3"), AddressScope::kPrivate);
  EXPECT_EQ(scope_of("172.16.0.1"), AddressScope::kPrivate);
  EXPECT_EQ(scope_of("172.31.255.255"), AddressScope::kPrivate);
  EXPECT_EQ(scope_of("192.168.1.1"), AddressScope::kPrivate);
  EXPECT_EQ(scope_of("169.254.169.254"), AddressScope::kLinkLocal);
  EXPECT_EQ(scope_of("100.64.0.1"), AddressScope::kSharedNat);
  EXPECT_EQ(scope_of("100.127.255.254"), AddressScope::kSharedNat);
  EXPECT_EQ(scope_of("0.0.0.0"), AddressScope::kUnspecified);
  EXPECT_EQ(scope_of("0.1.2.3"), AddressScope::kUnspecified);
  EXPECT_EQ(scope_of("224.0.0.1"), AddressScope::kMulticast);
  EXPECT_EQ(scope_of("239.255.255.250"), AddressScope::kMulticast);
  EXPECT_EQ(scope_of("255.255.255.255"), AddressScope::kBroadcast);
  EXPECT_EQ(scope_of("240.0.0.1"), AddressScope::kReserved);
  EXPECT_EQ(scope_of("192.0.2.10"), AddressScope::kDocumentation);
  EXPECT_EQ(scope_of("198.18.0.1"), AddressScope::kBenchmarking);
}

TEST(OutboundScope, ClassifiesPublicIpv4AtTheEdgesOfPrivateRanges) {
  for (const char* a :
       {"8.8.8.8", "1.1.1.1", "172.15.255.255", "172.32.0.0", "100.63.255.255", "100.128.0.0",
        "192.169.0.1", "169.253.0.1", "11.0.0.1", "9.255.255.255", "223.255.255.255"})
    EXPECT_EQ(scope_of(a), AddressScope::kPublic) << a;
}

TEST(OutboundScope, ClassifiesIpv6) {
  EXPECT_EQ(scope_of("::1"), AddressScope::kLoopback);
  EXPECT_EQ(scope_of("::"), AddressScope::kUnspecified);
  EXPECT_EQ(scope_of("fe80::1"), AddressScope::kLinkLocal);
  EXPECT_EQ(scope_of("febf::1"), AddressScope::kLinkLocal);
  EXPECT_EQ(scope_of("fc00::1"), AddressScope::kUniqueLocal);
  EXPECT_EQ(scope_of("fd12:3456::1"), AddressScope::kUniqueLocal);
  EXPECT_EQ(scope_of("fec0::1"), AddressScope::kPrivate);
  EXPECT_EQ(scope_of("ff02::1"), AddressScope::kMulticast);
  EXPECT_EQ(scope_of("2001:db8::1"), AddressScope::kDocumentation);
  EXPECT_EQ(scope_of("::127.0.0.1"), AddressScope::kReserved);  // IPv4-compatible
  EXPECT_EQ(scope_of("100::1"), AddressScope::kReserved);
  EXPECT_EQ(scope_of("2001:4860:4860::8888"), AddressScope::kPublic);
  EXPECT_EQ(scope_of("2a00:1450:4001::1"), AddressScope::kPublic);
}

TEST(OutboundScope, JudgesIpv4InsideIpv6AsThatIpv4Address) {
  EXPECT_EQ(scope_of("::ffff:127.0.0.1"), AddressScope::kLoopback);
  EXPECT_EQ(scope_of("::ffff:10.0.0.1"), AddressScope::kPrivate);
  EXPECT_EQ(scope_of("::ffff:169.254.169.254"), AddressScope::kLinkLocal);
  EXPECT_EQ(scope_of("::ffff:0.0.0.0"), AddressScope::kUnspecified);
  EXPECT_EQ(scope_of("::ffff:8.8.8.8"), AddressScope::kPublic);
  EXPECT_EQ(scope_of("64:ff9b::192.168.0.1"), AddressScope::kPrivate);  // NAT64
  EXPECT_EQ(scope_of("64:ff9b::8.8.8.8"), AddressScope::kPublic);
  EXPECT_EQ(scope_of("2002:7f00:1::1"), AddressScope::kLoopback);  // 6to4 of 127.0.0.1
  EXPECT_EQ(scope_of("2002:0808:0808::1"), AddressScope::kPublic);
}

TEST(OutboundPolicy, AllowsEverythingByDefault) {
  OutboundPolicy p;
  EXPECT_FALSE(refusal_reason(p, Address("127.0.0.1").get()));
  EXPECT_FALSE(refusal_reason(p, Address("169.254.169.254").get()));
}

TEST(OutboundPolicy, PublicOnlyRefusesNonPublicAddressesNamingWhy) {
  OutboundPolicy p = public_only();
  auto why = refusal_reason(p, Address("127.0.0.1").get());
  ASSERT_TRUE(why);
  EXPECT_EQ(*why,
            "127.0.0.1 is a loopback address, which this service does not fetch from (allow it "
            "with --allow-network CIDR)");
  why = refusal_reason(p, Address("::ffff:10.0.0.1").get());
  ASSERT_TRUE(why);
  EXPECT_EQ(why->substr(0, why->find(',')), "::ffff:10.0.0.1 is a private address");
  for (const char* a : {"10.0.0.1", "172.16.5.4", "192.168.0.1", "169.254.169.254", "100.64.1.1",
                        "0.0.0.0", "::1", "fe80::1", "fc00::1", "::", "ff02::1", "224.0.0.1"})
    EXPECT_TRUE(refusal_reason(p, Address(a).get())) << a;
  for (const char* a : {"8.8.8.8", "2001:4860:4860::8888", "::ffff:1.1.1.1"})
    EXPECT_FALSE(refusal_reason(p, Address(a).get())) << a;
}

TEST(OutboundPolicy, AllowedNetworksOverridePublicOnly) {
  OutboundPolicy p = public_only({"127.0.0.1/32", "10.0.0.0/8", "fd00::/8"});
  EXPECT_FALSE(refusal_reason(p, Address("127.0.0.1").get()));
  EXPECT_TRUE(refusal_reason(p, Address("127.0.0.2").get()));
  EXPECT_FALSE(refusal_reason(p, Address("10.200.0.1").get()));
  EXPECT_FALSE(refusal_reason(p, Address("::ffff:10.200.0.1").get()));
  EXPECT_TRUE(refusal_reason(p, Address("192.168.0.1").get()));
  EXPECT_FALSE(refusal_reason(p, Address("fd00::5").get()));
  EXPECT_TRUE(refusal_reason(p, Address("fc00::5").get()));
  EXPECT_TRUE(refusal_reason(p, Address("::1").get()));
}

TEST(OutboundRealm, AllowsTheRegistryItsParentDomainAndListedHosts) {
  OutboundPolicy p = public_only();
  EXPECT_TRUE(realm_host_allowed(p, "registry-1.docker.io", "auth.docker.io"));
  EXPECT_TRUE(realm_host_allowed(p, "registry-1.docker.io", "docker.io"));
  EXPECT_TRUE(realm_host_allowed(p, "registry-1.docker.io", "Registry-1.Docker.IO"));
  EXPECT_TRUE(realm_host_allowed(p, "ghcr.io", "ghcr.io"));
  EXPECT_TRUE(realm_host_allowed(p, "127.0.0.1", "127.0.0.1"));
  EXPECT_FALSE(realm_host_allowed(p, "registry-1.docker.io", "evil.example"));
  EXPECT_FALSE(realm_host_allowed(p, "registry-1.docker.io", "notdocker.io"));
  // A one-label parent ("io") lets nothing in.
  EXPECT_FALSE(realm_host_allowed(p, "ghcr.io", "evil.io"));
  EXPECT_FALSE(realm_host_allowed(p, "127.0.0.1", "127.0.0.2"));
  EXPECT_FALSE(realm_host_allowed(p, "127.0.0.1", "localhost"));
  EXPECT_FALSE(realm_host_allowed(p, "registry.example.com", "10.0.0.1"));
  p.realm_hosts = {"auth.example.net"};
  EXPECT_TRUE(realm_host_allowed(p, "registry.example.com", "auth.example.net"));
  EXPECT_TRUE(realm_host_allowed(OutboundPolicy{}, "registry.example.com", "anything.example"));
}
