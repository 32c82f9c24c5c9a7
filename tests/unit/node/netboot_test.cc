// Netboot's parsers: fetch URLs, HTTP response heads and DHCP replies, each with what is refused;
// the DHCP requests pok8s-init sends, byte for byte where RFC 2131 fixes them. The network side
// (DHCP from QEMU's server, HTTP from a real one) is tested by integration_netboot and e2e.
#include "pok8s/node/netboot.h"

#include <gtest/gtest.h>

#include "pok8s/node/kernel_cmdline.h"
#include "pok8s/util/error.h"

using namespace pok8s;
using namespace pok8s::node;

namespace {

constexpr MacAddress kMac = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
constexpr std::uint32_t kXid = 0x01020304;

std::string netboot_refusal(std::string_view url) {
  try {
    parse_http_url(url);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
    return e.what();
  }
  return "";
}

TEST(NetbootUrl, TakesAnIpv4HostPortAndPath) {
  HttpUrl u = parse_http_url("http://10.0.2.100:8080/out/rootfs.squashfs");
  EXPECT_EQ(u.host, "10.0.2.100");
  EXPECT_EQ(u.port, 8080);
  EXPECT_EQ(u.path, "/out/rootfs.squashfs");
  EXPECT_EQ(parse_http_url("http://192.168.1.1/x?y=1").port, 80);
}

TEST(NetbootUrl, RefusesWhatItCannotFetchNamingTheUrl) {
  EXPECT_EQ(netboot_refusal("https://10.0.0.1/x"),
            "Failed to read the URL https://10.0.0.1/x: not an "
            "http:// URL");
  EXPECT_EQ(netboot_refusal("http://boot.example/x"),
            "Failed to read the URL http://boot.example/x: its host is not an IPv4 address (the "
            "initramfs has no resolver)");
  EXPECT_NE(netboot_refusal("http://10.0.0.1").find("it has no path"), std::string::npos);
  EXPECT_NE(netboot_refusal("http://10.0.0.1:0/x").find("port is not a number"), std::string::npos);
  EXPECT_NE(netboot_refusal("http://10.0.0.1:70000/x").find("port is not a number"),
            std::string::npos);
  EXPECT_NE(netboot_refusal("http://u:p@10.0.0.1/x").find("user information"), std::string::npos);
  EXPECT_NE(netboot_refusal("http://10.0.0.1/a b").find("space"), std::string::npos);
  EXPECT_NE(netboot_refusal("http://10.0.0.1/a#b").find("fragment"), std::string::npos);
}

TEST(NetbootHttpHead, ReadsStatusAndLengthOnceTheHeadIsComplete) {
  std::string r = "HTTP/1.1 200 OK\r\nServer: x\r\ncontent-length:  42 \r\n\r\nbody";
  EXPECT_FALSE(parse_http_head(r.substr(0, 20)));
  auto h = parse_http_head(r);
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  EXPECT_EQ(h->reason, "OK");
  EXPECT_EQ(h->content_length, 42u);
  EXPECT_EQ(r.substr(h->size), "body");
  auto nf = parse_http_head("HTTP/1.0 404 Not Found\r\n\r\n");
  ASSERT_TRUE(nf);
  EXPECT_EQ(nf->status, 404);
  EXPECT_EQ(nf->reason, "Not Found");
  EXPECT_FALSE(nf->content_length);
}

TEST(NetbootHttpHead, RefusesMalformedHeads) {
  for (std::string bad :
       {"HTTP/2 200 OK\r\n\r\n", "HTTP/1.1 2x0 OK\r\n\r\n", "SSH-2.0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"}) {
    SCOPED_TRACE(bad);
    EXPECT_THROW(parse_http_head(bad), Error);
  }
  std::string endless = "HTTP/1.1 200 OK\r\n" + std::string(kMaxHttpHeadBytes, 'x');
  EXPECT_THROW(parse_http_head(endless), Error);
}

// A server's reply to kXid/kMac: yiaddr 10.0.2.15 with the given options.
std::string reply(std::string options, std::uint32_t xid = kXid) {
  std::string p(236, '\0');
  p[0] = 2;
  p[1] = 1;
  p[2] = 6;
  for (int i = 0; i < 4; ++i) p[4 + i] = static_cast<char>(xid >> (24 - 8 * i));
  p[16] = 10, p[17] = 0, p[18] = 2, p[19] = 15;
  for (int i = 0; i < 6; ++i) p[28 + i] = static_cast<char>(kMac[i]);
  p += std::string("\x63\x82\x53\x63", 4) + options + "\xff";
  return p;
}
std::string opt(int code, std::initializer_list<int> bytes) {
  std::string s = {static_cast<char>(code), static_cast<char>(bytes.size())};
  for (int b : bytes) s.push_back(static_cast<char>(b));
  return s;
}

TEST(NetbootDhcp, RequestsAreBroadcastBootRequestsWithTheirOptions) {
  std::string d = dhcp_discover(kMac, kXid);
  ASSERT_GE(d.size(), 300u);
  EXPECT_EQ(d[0], 1);  // BOOTREQUEST
  EXPECT_EQ(d.substr(4, 4), std::string("\x01\x02\x03\x04", 4));
  EXPECT_EQ(static_cast<unsigned char>(d[10]), 0x80);  // broadcast flag
  EXPECT_EQ(d.substr(28, 6), std::string("\x52\x54\x00\x12\x34\x56", 6));
  EXPECT_EQ(d.substr(236, 4), std::string("\x63\x82\x53\x63", 4));
  EXPECT_EQ(d.substr(240, 3), std::string("\x35\x01\x01", 3));  // DHCPDISCOVER
  DhcpLease offer{0x0a00020f, 0xffffff00, 0x0a000202, 0x0a000202, 86400};
  std::string r = dhcp_request(kMac, kXid, offer);
  EXPECT_EQ(r.substr(240, 3), std::string("\x35\x01\x03", 3));              // DHCPREQUEST
  EXPECT_EQ(r.substr(243, 6), std::string("\x32\x04\x0a\x00\x02\x0f", 6));  // requested address
  EXPECT_EQ(r.substr(249, 6), std::string("\x36\x04\x0a\x00\x02\x02", 6));  // server id
}

TEST(NetbootDhcp, ReadsAnOfferAndAnAck) {
  auto offer = parse_dhcp_reply(
      reply(opt(53, {2}) + opt(1, {255, 255, 255, 0}) + opt(3, {10, 0, 2, 2, 10, 0, 2, 3}) +
            opt(54, {10, 0, 2, 2}) + opt(51, {0, 1, 81, 128})),
      kXid, kMac);
  ASSERT_TRUE(offer);
  EXPECT_EQ(offer->type, DhcpType::kOffer);
  EXPECT_EQ(ipv4_text(offer->lease.address), "10.0.2.15");
  EXPECT_EQ(ipv4_text(offer->lease.netmask), "255.255.255.0");
  EXPECT_EQ(ipv4_text(offer->lease.router), "10.0.2.2");
  EXPECT_EQ(ipv4_text(offer->lease.server), "10.0.2.2");
  EXPECT_EQ(offer->lease.lease_seconds, 86400u);
  auto ack = parse_dhcp_reply(reply(std::string(3, '\0') + opt(53, {5})), kXid, kMac);
  ASSERT_TRUE(ack);
  EXPECT_EQ(ack->type, DhcpType::kAck);
  // No mask: 10/8 is class A.
  EXPECT_EQ(ipv4_text(ack->lease.netmask), "255.0.0.0");
  auto nak = parse_dhcp_reply(reply(opt(53, {6})), kXid, kMac);
  ASSERT_TRUE(nak);
  EXPECT_EQ(nak->type, DhcpType::kNak);
}

TEST(NetbootDhcp, IgnoresRepliesThatAreNotOursOrNotWhole) {
  std::string good = reply(opt(53, {2}));
  EXPECT_TRUE(parse_dhcp_reply(good, kXid, kMac));
  EXPECT_FALSE(parse_dhcp_reply(good, kXid + 1, kMac));  // another transaction
  MacAddress other = kMac;
  other[5] ^= 1;
  EXPECT_FALSE(parse_dhcp_reply(good, kXid, other));  // another client
  EXPECT_FALSE(parse_dhcp_reply(good.substr(0, 239), kXid, kMac));
  EXPECT_FALSE(parse_dhcp_reply(reply(""), kXid, kMac));            // no message type
  EXPECT_FALSE(parse_dhcp_reply(reply(opt(53, {1})), kXid, kMac));  // a DISCOVER
  std::string cut = reply(opt(53, {2}) + "\x01\x04\xff");           // option past the end
  cut.pop_back();                                                   // (and no end option)
  EXPECT_FALSE(parse_dhcp_reply(cut, kXid, kMac));
  std::string request = dhcp_discover(kMac, kXid);  // op 1: not a reply
  EXPECT_FALSE(parse_dhcp_reply(request, kXid, kMac));
}

TEST(NetbootCmdline, FetchNeedsItsSha256AndAnHttpUrl) {
  std::string sha(64, 'a');
  auto o =
      parse_boot_options("pok8s.fetch=http://10.0.2.100:8080/r.squashfs pok8s.fetch.sha256=" + sha);
  ASSERT_TRUE(o.fetch);
  EXPECT_EQ(o.fetch->url, "http://10.0.2.100:8080/r.squashfs");
  EXPECT_EQ(o.fetch->sha256, sha);
  EXPECT_FALSE(o.fetch_config);
  auto refused = [](const std::string& cmdline) {
    try {
      parse_boot_options(cmdline);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_EQ(refused("pok8s.fetch=http://10.0.0.1/r"),
            "Failed to read the kernel command line: pok8s.fetch without pok8s.fetch.sha256 (what "
            "is fetched is checked)");
  EXPECT_EQ(refused("pok8s.fetch.sha256=" + sha),
            "Failed to read the kernel command line: pok8s.fetch.sha256 without pok8s.fetch");
  EXPECT_NE(refused("pok8s.fetch=http://10.0.0.1/r pok8s.fetch.sha256=ABC").find("64 lowercase"),
            std::string::npos);
  EXPECT_NE(refused("pok8s.fetch=ftp://10.0.0.1/r pok8s.fetch.sha256=" + sha).find("http://"),
            std::string::npos);
  EXPECT_EQ(refused("pok8s.fetch.config=http://10.0.0.1/c pok8s.fetch.config.sha256=" + sha),
            "Failed to read the kernel command line: pok8s.fetch.config without pok8s.fetch");
}

}  // namespace
