// libFuzzer target: a DHCP server's reply as pok8s-init's netboot reads it (whoever answers on
// the network sends it). The first 10 bytes pick the transaction id and MAC address the reply
// must match; the rest is the packet.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "pok8s/node/netboot.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace pok8s::node;
  if (size < 10) return 0;
  std::uint32_t xid = (std::uint32_t{data[0]} << 24) | (std::uint32_t{data[1]} << 16) |
                      (std::uint32_t{data[2]} << 8) | data[3];
  MacAddress mac{data[4], data[5], data[6], data[7], data[8], data[9]};
  std::string_view packet(reinterpret_cast<const char*>(data + 10), size - 10);
  auto reply = parse_dhcp_reply(packet, xid, mac);
  if (reply && reply->type != DhcpType::kNak) {
    // An accepted lease always has an address and a mask to configure.
    if (reply->lease.address == 0 || reply->lease.netmask == 0) __builtin_trap();
    (void)dhcp_request(mac, xid, reply->lease);
  }
  return 0;
}
