// SHA-256 through OpenSSL's low-level interface (deprecated in 3.0, not removed): pok8s-init is
// static, and these few objects of libcrypto.a are all it takes, where EVP would pull in the
// provider machinery.
#define OPENSSL_SUPPRESS_DEPRECATED 1

#include "pok8s/node/netboot.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <openssl/sha.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>
#include <thread>
#include <vector>

#include "pok8s/util/error.h"
#include "pok8s/util/hex.h"

namespace pok8s::node {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::uint8_t kMagicCookie[] = {99, 130, 83, 99};
constexpr std::size_t kDhcpFixedBytes = 236;  // op through file (RFC 2131, figure 1)
constexpr std::size_t kDhcpMinBytes = 300;    // BOOTP's minimum, which some servers insist on
constexpr std::uint16_t kBroadcastFlag = 0x8000;
constexpr std::uint8_t kParameterRequest[] = {1, 3, 6, 15, 51, 54};  // mask, router, DNS, …

enum Option : std::uint8_t {
  kPad = 0,
  kSubnetMask = 1,
  kRouter = 3,
  kRequestedAddress = 50,
  kLeaseTime = 51,
  kMessageType = 53,
  kServerId = 54,
  kParameterList = 55,
  kEnd = 255,
};

void put_u32(std::string& out, std::size_t at, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out[at + i] = static_cast<char>((v >> (24 - 8 * i)) & 0xff);
}
std::uint32_t get_u32(std::string_view in, std::size_t at) {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 8) | static_cast<std::uint8_t>(in[at + i]);
  return v;
}

std::string dhcp_packet(const MacAddress& mac, std::uint32_t xid, DhcpType type,
                        const DhcpLease* offer) {
  std::string p(kDhcpFixedBytes, '\0');
  p[0] = 1;  // BOOTREQUEST
  p[1] = 1;  // Ethernet
  p[2] = 6;
  put_u32(p, 4, xid);
  p[10] = static_cast<char>(kBroadcastFlag >> 8);
  for (std::size_t i = 0; i < mac.size(); ++i) p[28 + i] = static_cast<char>(mac[i]);
  p.append(reinterpret_cast<const char*>(kMagicCookie), sizeof kMagicCookie);
  auto option = [&](std::uint8_t code, std::string_view value) {
    p.push_back(static_cast<char>(code));
    p.push_back(static_cast<char>(value.size()));
    p.append(value);
  };
  auto address = [](std::uint32_t a) {
    std::string s(4, '\0');
    put_u32(s, 0, a);
    return s;
  };
  option(kMessageType, std::string(1, static_cast<char>(type)));
  if (offer != nullptr) {
    option(kRequestedAddress, address(offer->address));
    option(kServerId, address(offer->server));
  }
  option(kParameterList, std::string_view(reinterpret_cast<const char*>(kParameterRequest),
                                          sizeof kParameterRequest));
  p.push_back(static_cast<char>(kEnd));
  if (p.size() < kDhcpMinBytes) p.resize(kDhcpMinBytes, '\0');
  return p;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// SIOCSIFFLAGS and friends take an ifreq with the interface's name.
ifreq interface_request(const std::string& name) {
  ifreq r{};
  std::strncpy(r.ifr_name, name.c_str(), IFNAMSIZ - 1);
  return r;
}

void set_up(int sock, const std::string& name) {
  ifreq r = interface_request(name);
  if (::ioctl(sock, SIOCGIFFLAGS, &r) != 0)
    throw_errno("Failed to read the flags of " + name, errno);
  r.ifr_flags = static_cast<short>(r.ifr_flags | IFF_UP);
  if (::ioctl(sock, SIOCSIFFLAGS, &r) != 0) throw_errno("Failed to bring up " + name, errno);
}

void set_address(int sock, const std::string& name, unsigned long request, std::uint32_t a,
                 const char* what) {
  ifreq r = interface_request(name);
  auto* sin = reinterpret_cast<sockaddr_in*>(&r.ifr_addr);
  sin->sin_family = AF_INET;
  sin->sin_addr.s_addr = htonl(a);
  if (::ioctl(sock, request, &r) != 0)
    throw_errno(fmt::format("Failed to set the {} of {} to {}", what, name, ipv4_text(a)), errno);
}

std::optional<MacAddress> read_mac(const std::string& name) {
  std::string text;
  try {
    text = util::read_file("/sys/class/net/" + name + "/address", 4096);  // sysfs says 4096
  } catch (const Error&) {
    return std::nullopt;
  }
  MacAddress mac{};
  unsigned v[6];
  if (std::sscanf(text.c_str(), "%x:%x:%x:%x:%x:%x", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]) != 6)
    return std::nullopt;
  for (int i = 0; i < 6; ++i) mac[i] = static_cast<std::uint8_t>(v[i]);
  return mac;
}

// One DISCOVER/OFFER/REQUEST/ACK exchange on `name` within `window`; nullopt when no server
// answered in time (or said no).
std::optional<DhcpLease> dhcp_exchange(const std::string& name, const MacAddress& mac,
                                       std::chrono::milliseconds window) {
  util::UniqueFd sock(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (sock.get() < 0) throw_errno("Failed to open a DHCP socket", errno);
  int one = 1;
  ::setsockopt(sock.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  ::setsockopt(sock.get(), SOL_SOCKET, SO_BROADCAST, &one, sizeof one);
  if (::setsockopt(sock.get(), SOL_SOCKET, SO_BINDTODEVICE, name.c_str(),
                   static_cast<socklen_t>(name.size())) != 0)
    throw_errno("Failed to bind a DHCP socket to " + name, errno);
  sockaddr_in local{};
  local.sin_family = AF_INET;
  local.sin_port = htons(68);
  if (::bind(sock.get(), reinterpret_cast<sockaddr*>(&local), sizeof local) != 0)
    throw_errno("Failed to bind the DHCP client port on " + name, errno);
  sockaddr_in server{};
  server.sin_family = AF_INET;
  server.sin_port = htons(67);
  server.sin_addr.s_addr = htonl(INADDR_BROADCAST);

  std::random_device rd;
  const std::uint32_t xid = rd();
  const auto deadline = Clock::now() + window;
  auto send = [&](const std::string& packet) {
    if (::sendto(sock.get(), packet.data(), packet.size(), 0, reinterpret_cast<sockaddr*>(&server),
                 sizeof server) < 0)
      throw_errno("Failed to send a DHCP request on " + name, errno);
  };
  auto receive = [&](DhcpType want) -> std::optional<DhcpReply> {
    char buf[1500];
    while (true) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) return std::nullopt;
      pollfd p{sock.get(), POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      ssize_t n = ::recv(sock.get(), buf, sizeof buf, 0);
      if (n <= 0) continue;
      auto reply = parse_dhcp_reply(std::string_view(buf, static_cast<std::size_t>(n)), xid, mac);
      if (reply && (reply->type == want || reply->type == DhcpType::kNak)) return reply;
    }
  };
  send(dhcp_discover(mac, xid));
  auto offer = receive(DhcpType::kOffer);
  if (!offer || offer->type != DhcpType::kOffer) return std::nullopt;
  send(dhcp_request(mac, xid, offer->lease));
  auto ack = receive(DhcpType::kAck);
  if (!ack || ack->type != DhcpType::kAck) return std::nullopt;
  // The ACK is authoritative; a server that leaves out its identifier keeps the offer's.
  if (ack->lease.server == 0) ack->lease.server = offer->lease.server;
  return ack->lease;
}

std::vector<std::string> network_interfaces() {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/sys/class/net", ec)) {
    std::string n = e.path().filename().string();
    if (n != "lo") names.push_back(n);
  }
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace

HttpUrl parse_http_url(std::string_view url) {
  auto bad = [&](std::string_view why) {
    return Error(ErrorKind::kInvalidInput, fmt::format("Failed to read the URL {}: {}", url, why));
  };
  for (char c : url)
    if (static_cast<unsigned char>(c) <= 0x20 || static_cast<unsigned char>(c) >= 0x7f)
      throw bad("it holds a space or a character that is not printable ASCII");
  if (!url.starts_with("http://")) throw bad("not an http:// URL");
  std::string_view rest = url.substr(7);
  auto slash = rest.find('/');
  if (slash == std::string_view::npos) throw bad("it has no path");
  std::string_view authority = rest.substr(0, slash);
  HttpUrl out;
  out.text = std::string(url);
  out.path = std::string(rest.substr(slash));
  if (out.path.find('#') != std::string::npos) throw bad("it has a fragment");
  if (authority.find('@') != std::string_view::npos) throw bad("it carries user information");
  auto colon = authority.find(':');
  std::string_view host = authority.substr(0, colon);
  if (colon != std::string_view::npos) {
    std::string_view port = authority.substr(colon + 1);
    unsigned v = 0;
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), v);
    if (port.empty() || ec != std::errc() || end != port.data() + port.size() || v == 0 ||
        v > 65535)
      throw bad("its port is not a number from 1 to 65535");
    out.port = static_cast<std::uint16_t>(v);
  }
  in_addr a{};
  std::string h(host);
  if (::inet_pton(AF_INET, h.c_str(), &a) != 1)
    throw bad("its host is not an IPv4 address (the initramfs has no resolver)");
  out.host = h;
  return out;
}

std::optional<HttpHead> parse_http_head(std::string_view data) {
  auto end = data.find("\r\n\r\n");
  if (end == std::string_view::npos) {
    if (data.size() > kMaxHttpHeadBytes)
      throw Error(ErrorKind::kFormat,
                  fmt::format("the response head is over {} bytes", kMaxHttpHeadBytes));
    return std::nullopt;
  }
  if (end + 4 > kMaxHttpHeadBytes)
    throw Error(ErrorKind::kFormat,
                fmt::format("the response head is over {} bytes", kMaxHttpHeadBytes));
  HttpHead head;
  head.size = end + 4;
  std::string_view text = data.substr(0, end);
  auto line_end = text.find("\r\n");
  std::string_view status = text.substr(0, line_end);
  // HTTP-version SP status-code SP reason-phrase (RFC 9112, section 4).
  if (status.size() < 12 || !status.starts_with("HTTP/1.") || status[8] != ' ' ||
      !std::isdigit(static_cast<unsigned char>(status[9])) ||
      !std::isdigit(static_cast<unsigned char>(status[10])) ||
      !std::isdigit(static_cast<unsigned char>(status[11])) ||
      (status.size() > 12 && status[12] != ' '))
    throw Error(ErrorKind::kFormat, "the response does not start with an HTTP/1.x status line");
  head.status = (status[9] - '0') * 100 + (status[10] - '0') * 10 + (status[11] - '0');
  head.reason = std::string(status.size() > 13 ? status.substr(13) : "");
  for (char& c : head.reason)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  std::string_view fields = line_end == std::string_view::npos ? "" : text.substr(line_end + 2);
  while (!fields.empty()) {
    auto eol = fields.find("\r\n");
    std::string_view line = fields.substr(0, eol);
    fields = eol == std::string_view::npos ? "" : fields.substr(eol + 2);
    auto colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0)
      throw Error(ErrorKind::kFormat, "a response header line has no field name");
    std::string name = lower(line.substr(0, colon));
    std::string_view value = trim(line.substr(colon + 1));
    if (name == "transfer-encoding")
      throw Error(ErrorKind::kFormat,
                  "the response has a Transfer-Encoding, which an HTTP/1.0 request does not get");
    if (name == "content-length") {
      std::uint64_t n = 0;
      auto [p, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
      if (value.empty() || ec != std::errc() || p != value.data() + value.size())
        throw Error(ErrorKind::kFormat, "the response's Content-Length is not a number");
      if (head.content_length && *head.content_length != n)
        throw Error(ErrorKind::kFormat, "the response has two different Content-Lengths");
      head.content_length = n;
    }
  }
  return head;
}

std::string dhcp_discover(const MacAddress& mac, std::uint32_t xid) {
  return dhcp_packet(mac, xid, DhcpType::kDiscover, nullptr);
}

std::string dhcp_request(const MacAddress& mac, std::uint32_t xid, const DhcpLease& offer) {
  return dhcp_packet(mac, xid, DhcpType::kRequest, &offer);
}

std::optional<DhcpReply> parse_dhcp_reply(std::string_view p, std::uint32_t xid,
                                          const MacAddress& mac) {
  if (p.size() < kDhcpFixedBytes + sizeof kMagicCookie) return std::nullopt;
  if (p[0] != 2 || p[1] != 1 || p[2] != 6 || get_u32(p, 4) != xid) return std::nullopt;
  for (std::size_t i = 0; i < mac.size(); ++i)
    if (static_cast<std::uint8_t>(p[28 + i]) != mac[i]) return std::nullopt;
  if (std::memcmp(p.data() + kDhcpFixedBytes, kMagicCookie, sizeof kMagicCookie) != 0)
    return std::nullopt;
  DhcpReply reply;
  reply.lease.address = get_u32(p, 16);  // yiaddr
  std::optional<std::uint8_t> type;
  for (std::size_t at = kDhcpFixedBytes + sizeof kMagicCookie; at < p.size();) {
    auto code = static_cast<std::uint8_t>(p[at]);
    if (code == kPad) {
      ++at;
      continue;
    }
    if (code == kEnd) break;
    if (at + 2 > p.size()) return std::nullopt;
    std::size_t len = static_cast<std::uint8_t>(p[at + 1]);
    if (at + 2 + len > p.size()) return std::nullopt;
    std::string_view v = p.substr(at + 2, len);
    switch (code) {
      case kMessageType:
        if (len != 1) return std::nullopt;
        type = static_cast<std::uint8_t>(v[0]);
        break;
      case kSubnetMask:
        if (len == 4) reply.lease.netmask = get_u32(v, 0);
        break;
      case kRouter:
        if (len >= 4) reply.lease.router = get_u32(v, 0);
        break;
      case kServerId:
        if (len == 4) reply.lease.server = get_u32(v, 0);
        break;
      case kLeaseTime:
        if (len == 4) reply.lease.lease_seconds = get_u32(v, 0);
        break;
      default:
        break;
    }
    at += 2 + len;
  }
  if (!type) return std::nullopt;
  switch (*type) {
    case static_cast<std::uint8_t>(DhcpType::kOffer):
    case static_cast<std::uint8_t>(DhcpType::kAck):
      if (reply.lease.address == 0 || reply.lease.address == 0xffffffffu) return std::nullopt;
      reply.type = static_cast<DhcpType>(*type);
      break;
    case static_cast<std::uint8_t>(DhcpType::kNak):
      reply.type = DhcpType::kNak;
      return reply;
    default:
      return std::nullopt;
  }
  if (reply.lease.netmask == 0) {
    // No mask offered: the address's class decides, as before CIDR.
    std::uint32_t a = reply.lease.address;
    reply.lease.netmask = (a >> 31) == 0 ? 0xff000000u : (a >> 30) == 2 ? 0xffff0000u : 0xffffff00u;
  }
  return reply;
}

std::string ipv4_text(std::uint32_t a) {
  return fmt::format("{}.{}.{}.{}", a >> 24, (a >> 16) & 0xff, (a >> 8) & 0xff, a & 0xff);
}

NetworkConfig configure_network(unsigned wait_seconds,
                                const std::function<void(std::string_view)>& log) {
  util::UniqueFd sock(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (sock.get() < 0) throw_errno("Failed to open a socket to configure the network", errno);
  try {
    set_up(sock.get(), "lo");
  } catch (const Error&) {
    // Without loopback only local services suffer, not the download.
  }
  const auto deadline = Clock::now() + std::chrono::seconds(wait_seconds);
  std::vector<std::string> tried;
  do {
    for (const std::string& name : network_interfaces()) {
      auto mac = read_mac(name);
      if (!mac) continue;
      if (std::find(tried.begin(), tried.end(), name) == tried.end()) {
        tried.push_back(name);
        if (log) log(fmt::format("asking for an address by DHCP on {}", name));
      }
      set_up(sock.get(), name);
      auto lease = dhcp_exchange(name, *mac, std::chrono::seconds(3));
      if (!lease) continue;
      set_address(sock.get(), name, SIOCSIFADDR, lease->address, "address");
      set_address(sock.get(), name, SIOCSIFNETMASK, lease->netmask, "netmask");
      if (lease->router != 0) {
        rtentry route{};
        auto* dst = reinterpret_cast<sockaddr_in*>(&route.rt_dst);
        auto* gw = reinterpret_cast<sockaddr_in*>(&route.rt_gateway);
        auto* mask = reinterpret_cast<sockaddr_in*>(&route.rt_genmask);
        dst->sin_family = gw->sin_family = mask->sin_family = AF_INET;
        gw->sin_addr.s_addr = htonl(lease->router);
        route.rt_flags = RTF_UP | RTF_GATEWAY;
        std::string dev = name;
        route.rt_dev = dev.data();
        if (::ioctl(sock.get(), SIOCADDRT, &route) != 0 && errno != EEXIST)
          throw_errno(fmt::format("Failed to add the default route through {} on {}",
                                  ipv4_text(lease->router), name),
                      errno);
      }
      if (log)
        log(fmt::format("{} has {} (netmask {}, router {}, from DHCP server {})", name,
                        ipv4_text(lease->address), ipv4_text(lease->netmask),
                        lease->router != 0 ? ipv4_text(lease->router) : "none",
                        ipv4_text(lease->server)));
      return {name, *lease};
    }
    if (Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(250));
  } while (Clock::now() < deadline);
  std::string names;
  for (const auto& n : tried) names += (names.empty() ? "" : ", ") + n;
  throw Error(ErrorKind::kIo,
              tried.empty()
                  ? fmt::format("Failed to configure the network: no network interface appeared "
                                "in {} s (is its driver in the initramfs?)",
                                wait_seconds)
                  : fmt::format("Failed to configure the network: no DHCP server answered on {} "
                                "in {} s",
                                names, wait_seconds));
}

void http_fetch(const HttpUrl& url, const util::Path& out, std::string_view sha256_hex,
                std::uint64_t max_bytes,
                const std::function<void(std::uint64_t, std::uint64_t)>& progress) {
  auto fail = [&](ErrorKind kind, const std::string& why) {
    return Error(kind, fmt::format("Failed to fetch {}: {}", url.text, why));
  };
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(url.port);
  ::inet_pton(AF_INET, url.host.c_str(), &addr.sin_addr);
  util::UniqueFd sock;
  // The network has just come up: a refused or unreachable first try is retried.
  for (int attempt = 1;; ++attempt) {
    sock = util::UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (sock.get() < 0) throw_errno("Failed to open a socket for " + url.text, errno);
    timeval timeout{30, 0};
    ::setsockopt(sock.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    ::setsockopt(sock.get(), SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    if (::connect(sock.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) break;
    int err = errno;
    if (attempt == 5) throw fail(ErrorKind::kIo, std::strerror(err));
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  std::string request =
      fmt::format("GET {} HTTP/1.0\r\nHost: {}:{}\r\nUser-Agent: pok8s-init\r\nAccept: */*\r\n\r\n",
                  url.path, url.host, url.port);
  util::write_all(sock.get(), request, url.text);

  std::string buffer;
  std::optional<HttpHead> head;
  char chunk[64 << 10];
  while (!head) {
    ssize_t n = ::recv(sock.get(), chunk, sizeof chunk, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw fail(ErrorKind::kIo, std::strerror(errno));
    if (n == 0) throw fail(ErrorKind::kIo, "the server closed the connection before answering");
    buffer.append(chunk, static_cast<std::size_t>(n));
    try {
      head = parse_http_head(buffer);
    } catch (const Error& e) {
      throw fail(ErrorKind::kFormat, e.what());
    }
  }
  if (head->status != 200)
    throw fail(head->status == 404 ? ErrorKind::kNotFound : ErrorKind::kIo,
               fmt::format("the server answered {} {}", head->status, head->reason));
  if (head->content_length && *head->content_length > max_bytes)
    throw fail(ErrorKind::kInvalidInput, fmt::format("it is {} bytes, over the limit of {}",
                                                     *head->content_length, max_bytes));
  const std::uint64_t total = head->content_length.value_or(0);

  util::Path part = out.string() + ".part";
  util::UniqueFd file(::open(part.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (file.get() < 0) throw_errno("Failed to create " + part.string(), errno);
  try {
    SHA256_CTX sha;
    SHA256_Init(&sha);
    std::uint64_t done = 0, reported = 0;
    auto take = [&](std::string_view data) {
      if (done + data.size() > max_bytes)
        throw fail(ErrorKind::kInvalidInput,
                   fmt::format("it is over the limit of {} bytes", max_bytes));
      SHA256_Update(&sha, data.data(), data.size());
      util::write_all(file.get(), data, part.string());
      done += data.size();
      if (progress && (done - reported >= (16u << 20) || done == total)) {
        reported = done;
        progress(done, total);
      }
    };
    take(std::string_view(buffer).substr(head->size));
    while (true) {
      ssize_t n = ::recv(sock.get(), chunk, sizeof chunk, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw fail(ErrorKind::kIo, std::strerror(errno));
      if (n == 0) break;
      take(std::string_view(chunk, static_cast<std::size_t>(n)));
    }
    if (head->content_length && done != *head->content_length)
      throw fail(ErrorKind::kIo, fmt::format("the connection closed after {} of {} bytes", done,
                                             *head->content_length));
    unsigned char digest[SHA256_DIGEST_LENGTH];
    SHA256_Final(digest, &sha);
    std::string got =
        util::hex_encode(std::string_view(reinterpret_cast<const char*>(digest), sizeof digest));
    if (got != lower(sha256_hex))
      throw fail(ErrorKind::kSignature,
                 fmt::format("its sha256 is {}, the kernel command line says {}", got, sha256_hex));
    if (::fsync(file.get()) != 0 && errno != EINVAL)
      throw_errno("Failed to write " + part.string(), errno);
    if (::rename(part.c_str(), out.c_str()) != 0)
      throw_errno("Failed to rename " + part.string(), errno);
  } catch (...) {
    ::unlink(part.c_str());
    throw;
  }
}

}  // namespace pok8s::node
