// The HTTP server: Beast parses and Asio schedules; this file holds the policy a public service
// needs on top (limits, deadlines, bounded pools, streams) and the routing. Every connection is a
// coroutine on a strand of its own; handlers run on worker pools and never on an I/O thread.
#include "pok8s/server/http.h"

#include <fmt/format.h>
#include <sys/resource.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <boost/asio.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <map>
#include <mutex>
#include <thread>

#include "pok8s/server/http_range.h"
#include "pok8s/util/error.h"

namespace pok8s::server {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
using asio::awaitable;

namespace {

constexpr auto kTuple = asio::as_tuple(asio::use_awaitable);
constexpr std::size_t kFileChunk = 64u << 10;
constexpr auto kKeepAlive = std::chrono::seconds(15);
constexpr std::size_t kMaxPipelined = 8;  // requests answer_bytes() reads from one input

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// %XX decoding; a '%' not followed by two hex digits stays as it is.
std::string percent_decode(std::string_view s, bool plus_is_space) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '%' && i + 2 < s.size()) {
      int hi = hex_value(s[i + 1]);
      int lo = hex_value(s[i + 2]);
      if (hi >= 0 && lo >= 0) {
        out += static_cast<char>(hi * 16 + lo);
        i += 2;
        continue;
      }
    }
    out += plus_is_space && c == '+' ? ' ' : c;
  }
  return out;
}

// What a message may quote of a client's text: printable ASCII, at most `limit` characters.
std::string printable(std::string_view s, std::size_t limit = 200) {
  std::string out;
  for (char c : s.substr(0, limit)) {
    auto u = static_cast<unsigned char>(c);
    out += (u < 0x20 || u >= 0x7f) ? '?' : c;
  }
  if (s.size() > limit) out += "...";
  return out;
}

// A header name or value as the server writes it: no CR, LF or NUL can split the head.
std::string header_safe(std::string_view s) {
  std::string out;
  for (char c : s)
    if (c != '\r' && c != '\n' && c != '\0') out += c;
  return out;
}

std::vector<std::string_view> split_path(std::string_view path) {
  std::vector<std::string_view> parts;
  if (path.empty() || path.front() != '/') return parts;
  path.remove_prefix(1);
  for (;;) {
    auto slash = path.find('/');
    parts.push_back(path.substr(0, slash));
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash + 1);
  }
  return parts;
}

// An IPv4 address, or the /64 of an IPv6 address: what one client is counted as.
std::string client_key(const asio::ip::address& a) {
  if (a.is_v6()) {
    auto v6 = a.to_v6();
    if (v6.is_v4_mapped()) return asio::ip::make_address_v4(asio::ip::v4_mapped, v6).to_string();
    auto bytes = v6.to_bytes();
    for (std::size_t i = 8; i < bytes.size(); ++i) bytes[i] = 0;
    return asio::ip::address_v6(bytes).to_string() + "/64";
  }
  return a.to_string();
}

std::string client_text(const asio::ip::address& a) {
  if (a.is_v6() && a.to_v6().is_v4_mapped())
    return asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6()).to_string();
  return a.to_string();
}

std::string reason_phrase(int status) {
  auto reason = bhttp::obsolete_reason(bhttp::int_to_status(static_cast<unsigned>(status)));
  return reason.empty() ? "Status" : std::string(reason);
}

// The head of a response; `length` nullopt means chunked.
std::string serialize_head(const HttpResponse& r, std::optional<std::uint64_t> length,
                           bool keep_alive) {
  std::string head = fmt::format("HTTP/1.1 {} {}\r\n", r.status, reason_phrase(r.status));
  for (const auto& [name, value] : r.headers)
    head += header_safe(name) + ": " + header_safe(value) + "\r\n";
  if (length)
    head += fmt::format("Content-Length: {}\r\n", *length);
  else
    head += "Transfer-Encoding: chunked\r\n";
  if (!keep_alive) head += "Connection: close\r\n";
  head += "\r\n";
  return head;
}

std::string chunk(std::string_view data) {
  return fmt::format("{:x}\r\n", data.size()) + std::string(data) + "\r\n";
}

// A request the parser refused (answered with 400, 413 or 431), as opposed to a connection that
// ended or timed out (closed without an answer).
bool is_malformed(const boost::system::error_code& ec) {
  if (ec.category() != bhttp::make_error_code(bhttp::error::bad_method).category()) return false;
  return ec != bhttp::error::end_of_stream && ec != bhttp::error::partial_message &&
         ec != bhttp::error::need_more;
}

struct CompiledRoute {
  const HttpRoute* route;
  std::vector<std::string> segments;  // ":x" captures one segment
};

// A bounded pool: `threads` run calls, `max_waiting` more may queue; beyond that, no.
class WorkerPool {
 public:
  explicit WorkerPool(HttpPoolLimits limits)
      : pool_(limits.threads), capacity_(limits.threads + limits.max_waiting) {}
  bool try_enter() {
    std::size_t n = in_flight_.load();
    do {
      if (n >= capacity_) return false;
    } while (!in_flight_.compare_exchange_weak(n, n + 1));
    return true;
  }
  void leave() { in_flight_.fetch_sub(1); }
  asio::thread_pool::executor_type executor() { return pool_.get_executor(); }
  void stop() {
    pool_.stop();
    pool_.join();
  }

 private:
  asio::thread_pool pool_;
  std::size_t capacity_;
  std::atomic<std::size_t> in_flight_{0};
};

}  // namespace

std::optional<std::string_view> HttpRequest::header(std::string_view name) const {
  for (const auto& [n, v] : headers)
    if (iequals(n, name)) return std::string_view(v);
  return std::nullopt;
}

std::optional<std::string_view> HttpRequest::query_value(std::string_view name) const {
  for (const auto& [n, v] : query)
    if (n == name) return std::string_view(v);
  return std::nullopt;
}

void HttpResponse::set_header(std::string name, std::string value) {
  for (auto& [n, v] : headers)
    if (iequals(n, name)) {
      v = std::move(value);
      return;
    }
  headers.emplace_back(std::move(name), std::move(value));
}

void HttpResponse::set_body(std::string text, std::string content_type) {
  body = std::move(text);
  set_header("Content-Type", std::move(content_type));
}

struct HttpServer::Impl {
  HttpServerOptions o;
  std::vector<CompiledRoute> routes;
  // Made by run(): no thread exists before the server serves (the caller may still be setting
  // up signal masks, which threads inherit when they start).
  std::unique_ptr<WorkerPool> light, heavy, streams;
  std::atomic<bool> stopping{false};
  std::atomic<std::size_t> connections{0};
  std::atomic<std::size_t> open_streams{0};
  std::atomic<std::size_t> large_bodies{0};
  mutable std::mutex clients_mutex;
  std::map<std::string, std::size_t> per_client;
  // Last: destroyed first, with the connections still waiting in it, while the counters and
  // pools they give back to on the way out still exist.
  asio::io_context ioc;
  tcp::acceptor acceptor{ioc};

  explicit Impl(HttpServerOptions options) : o(std::move(options)) {
    for (const auto& r : o.routes) {
      CompiledRoute c{&r, {}};
      for (auto part : split_path(r.pattern)) c.segments.emplace_back(part);
      routes.push_back(std::move(c));
    }
  }

  void log(std::string_view line) const {
    if (o.log) o.log(line);
  }

  HttpResponse error(int status, std::string_view kind, std::string message) const {
    HttpResponse r = o.error ? o.error(status, kind, std::move(message)) : HttpResponse{};
    r.status = status;
    return r;
  }

  WorkerPool& pool_for(HandlerPool p) { return p == HandlerPool::kHeavy ? *heavy : *light; }

  // --- admission -------------------------------------------------------------------------

  bool admit(const std::string& key) {
    if (connections.load() >= o.limits.max_connections) return false;
    std::lock_guard lock(clients_mutex);
    std::size_t& n = per_client[key];
    if (n >= o.limits.max_connections_per_client) {
      if (n == 0) per_client.erase(key);
      return false;
    }
    ++n;
    ++connections;
    return true;
  }
  void release(const std::string& key) {
    std::lock_guard lock(clients_mutex);
    auto it = per_client.find(key);
    if (it != per_client.end() && --it->second == 0) per_client.erase(it);
    --connections;
  }
  // Over three quarters of the connections in use: waiting clients get less time.
  bool under_pressure() const { return connections.load() * 4 > o.limits.max_connections * 3; }

  // --- requests --------------------------------------------------------------------------

  // What the parser read, as a handler sees it.
  HttpRequest to_request(bhttp::request<bhttp::string_body>&& msg, const std::string& client) {
    HttpRequest r;
    r.method = std::string(msg.method_string());
    r.target = std::string(msg.target());
    r.client = client;
    std::string_view target = r.target;
    auto q = target.find('?');
    std::string_view raw_path = target.substr(0, q);
    r.path = percent_decode(raw_path, false);
    if (q != std::string_view::npos) {
      std::string_view query = target.substr(q + 1);
      while (!query.empty()) {
        auto amp = query.find('&');
        std::string_view pair = query.substr(0, amp);
        auto eq = pair.find('=');
        std::string key = percent_decode(pair.substr(0, eq), true);
        std::string value =
            eq == std::string_view::npos ? "" : percent_decode(pair.substr(eq + 1), true);
        if (!key.empty()) r.query.emplace_back(std::move(key), std::move(value));
        if (amp == std::string_view::npos) break;
        query.remove_prefix(amp + 1);
      }
    }
    for (const auto& field : msg)
      r.headers.emplace_back(lower(field.name_string()), std::string(field.value()));
    r.body = std::move(msg.body());
    return r;
  }

  struct Routed {
    const HttpRoute* route = nullptr;
    std::optional<HttpResponse> immediate;  // 404, 405 or a fallback's answer
  };

  Routed route(HttpRequest& req) {
    std::string_view target = req.target;
    auto parts = split_path(target.substr(0, target.find('?')));
    std::string allowed;
    std::string method = req.method == "HEAD" ? "GET" : req.method;
    for (const auto& c : routes) {
      if (c.segments.size() != parts.size()) continue;
      std::vector<std::string> params;
      bool match = true;
      for (std::size_t i = 0; i < parts.size() && match; ++i) {
        const auto& seg = c.segments[i];
        if (!seg.empty() && seg.front() == ':') {
          if (parts[i].empty()) match = false;
          params.push_back(percent_decode(parts[i], false));
        } else {
          match = seg == parts[i];
        }
      }
      if (!match) continue;
      if (c.route->method != method) {
        if (allowed.find(c.route->method) == std::string::npos)
          allowed += (allowed.empty() ? "" : ", ") + c.route->method;
        continue;
      }
      req.params = std::move(params);
      return {c.route, std::nullopt};
    }
    if (!allowed.empty()) {
      HttpResponse r = error(405, "invalid-input",
                             fmt::format("Failed to serve {} {}: the route takes {}",
                                         printable(req.method, 20), printable(req.path), allowed));
      r.set_header("Allow", allowed);
      return {nullptr, std::move(r)};
    }
    if ((method == "GET") && o.fallback)
      if (auto r = o.fallback(req)) return {nullptr, std::move(*r)};
    return {nullptr, error(404, "not-found",
                           fmt::format("Failed to find {}: no such page or API route",
                                       printable(req.path)))};
  }

  HttpResponse call(const HttpRoute& route, HttpRequest& req) {
    try {
      return route.handler(req);
    } catch (const std::exception& e) {
      log(fmt::format("internal error in {} {}: {}", printable(req.method, 20), printable(req.path),
                      printable(e.what(), 500)));
    } catch (...) {
      log(fmt::format("internal error in {} {}", printable(req.method, 20), printable(req.path)));
    }
    return error(500, "internal",
                 fmt::format("Failed to serve {} {}: internal error", printable(req.method, 20),
                             printable(req.path)));
  }

  void finish(HttpResponse& res) const {
    for (const auto& common : o.common_headers) {
      // Captured by name: clang 14 cannot capture a structured binding.
      const std::string& name = common.first;
      if (std::none_of(res.headers.begin(), res.headers.end(),
                       [&name](const auto& h) { return iequals(h.first, name); }))
        res.headers.push_back(common);
    }
  }

  // Checks on a complete head before its body is read: an error response, or nullopt.
  std::optional<HttpResponse> check_head(const bhttp::request_parser<bhttp::string_body>& p) {
    const auto& msg = p.get();
    std::size_t fields = 0;
    for (auto it = msg.begin(); it != msg.end(); ++it) ++fields;
    if (fields > o.limits.max_header_fields)
      return error(431, "too-large",
                   fmt::format("Failed to read the request: it has {} header fields, more than "
                               "the service's limit of {}",
                               fields, o.limits.max_header_fields));
    if (auto length = p.content_length(); length && *length > o.limits.max_body_bytes)
      return too_large_body();
    return std::nullopt;
  }

  HttpResponse too_large_body() const {
    return error(413, "too-large",
                 fmt::format("Failed to read the request: the body is larger than the service's "
                             "limit of {} bytes (--max-body)",
                             o.limits.max_body_bytes));
  }

  // An error of the parser as the response that explains it.
  HttpResponse parse_error(const beast::error_code& ec) const {
    if (ec == bhttp::error::header_limit || ec == bhttp::error::buffer_overflow)
      return error(431, "too-large",
                   fmt::format("Failed to read the request: its head is larger than the "
                               "service's limit of {} bytes",
                               o.limits.max_head_bytes));
    if (ec == bhttp::error::body_limit) return too_large_body();
    return error(400, "invalid-input",
                 fmt::format("Failed to read the request: {}", printable(ec.message())));
  }

  // --- files -----------------------------------------------------------------------------

  struct FilePlan {
    HttpResponse head;
    std::uint64_t length = 0;
    // What to send: (bytes of text) or (a range of the file), in order.
    struct Piece {
      std::string text;
      ByteRange range{0, 0};
    };
    std::vector<Piece> pieces;
  };

  FilePlan plan_file(HttpResponse res, const HttpRequest& req) {
    const auto& f = *res.file;
    std::optional<std::string_view> range;
    if (req.method == "GET") range = req.header("range");
    RangeDecision d = decide_range(range, f.size);
    FilePlan plan;
    res.set_header("Accept-Ranges", "bytes");
    if (d.kind == RangeDecision::Kind::kUnsatisfiable) {
      HttpResponse e = error(416, "invalid-input",
                             fmt::format("Failed to serve the range {:?}: none of it is inside "
                                         "the file's {} bytes",
                                         printable(range.value_or(""), 100), f.size));
      e.set_header("Content-Range", fmt::format("bytes */{}", f.size));
      plan.length = e.body.size();
      plan.pieces.push_back({e.body, {0, 0}});
      plan.head = std::move(e);
      return plan;
    }
    if (d.kind == RangeDecision::Kind::kFull) {
      res.status = 200;
      res.set_header("Content-Type", f.content_type);
      plan.length = f.size;
      plan.pieces.push_back({{}, {0, f.size}});
    } else if (d.ranges.size() == 1) {
      res.status = 206;
      res.set_header("Content-Type", f.content_type);
      res.set_header("Content-Range", content_range(d.ranges[0], f.size));
      plan.length = d.ranges[0].length;
      plan.pieces.push_back({{}, d.ranges[0]});
    } else {
      MultipartPlan m = plan_multipart(d.ranges, f.size, f.content_type);
      res.status = 206;
      res.set_header("Content-Type", m.content_type);
      plan.length = m.content_length;
      for (std::size_t i = 0; i < d.ranges.size(); ++i) {
        plan.pieces.push_back({m.part_heads[i], {0, 0}});
        plan.pieces.push_back({{}, d.ranges[i]});
      }
      plan.pieces.push_back({m.tail, {0, 0}});
    }
    plan.head = std::move(res);
    return plan;
  }

  // --- the network path ------------------------------------------------------------------

  template <typename F>
  awaitable<std::optional<std::invoke_result_t<F>>> on_pool(WorkerPool& pool, F f) {
    using R = std::invoke_result_t<F>;
    if (!pool.try_enter()) co_return std::nullopt;
    struct Leave {
      WorkerPool& p;
      ~Leave() { p.leave(); }
    } leave{pool};
    R result = co_await asio::co_spawn(
        pool.executor(), [&]() -> awaitable<R> { co_return f(); }, asio::use_awaitable);
    co_return std::optional<R>(std::move(result));
  }

  awaitable<bool> write_all(beast::tcp_stream& stream, std::string_view data) {
    stream.expires_after(o.limits.write_timeout);
    auto [ec, n] =
        co_await asio::async_write(stream, asio::buffer(data.data(), data.size()), kTuple);
    co_return !ec;
  }

  awaitable<bool> send_simple(beast::tcp_stream& stream, HttpResponse& res, bool head_only,
                              bool keep_alive) {
    finish(res);
    std::string out = serialize_head(res, res.body.size(), keep_alive);
    if (!head_only) out += res.body;
    co_return co_await write_all(stream, out);
  }

  // Answers and closes so that the client can read the answer: request bytes left unread would
  // make the kernel reset the connection, and the client see the reset instead. What it still
  // sends is read and dropped for a moment (at most 1 MiB, 2 s), as a lingering close does.
  awaitable<void> answer_and_close(beast::tcp_stream& stream, HttpResponse r) {
    if (!co_await send_simple(stream, r, false, false)) co_return;
    beast::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream.expires_after(std::chrono::seconds(2));
    std::array<char, 16384> sink;
    for (std::size_t drained = 0; drained < (1u << 20);) {
      auto [ec, n] = co_await stream.async_read_some(asio::buffer(sink), kTuple);
      if (ec) break;
      drained += n;
    }
  }

  awaitable<bool> send_file(beast::tcp_stream& stream, HttpResponse res, const HttpRequest& req,
                            bool keep_alive) {
    auto fd = res.file->fd;
    FilePlan plan = plan_file(std::move(res), req);
    finish(plan.head);
    if (!co_await write_all(stream, serialize_head(plan.head, plan.length, keep_alive)))
      co_return false;
    if (req.method == "HEAD") co_return true;
    std::vector<char> buf(kFileChunk);
    for (const auto& piece : plan.pieces) {
      if (!piece.text.empty()) {
        if (!co_await write_all(stream, piece.text)) co_return false;
        continue;
      }
      std::uint64_t offset = piece.range.first, left = piece.range.length;
      while (left > 0) {
        std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(left, buf.size()));
        ssize_t n = ::pread(fd->get(), buf.data(), want, static_cast<off_t>(offset));
        // The file shrank under us: the promised length cannot be kept, so the connection ends.
        if (n <= 0) co_return false;
        if (!co_await write_all(stream, {buf.data(), static_cast<std::size_t>(n)})) co_return false;
        offset += static_cast<std::uint64_t>(n);
        left -= static_cast<std::uint64_t>(n);
      }
    }
    co_return true;
  }

  struct StreamWake {
    explicit StreamWake(asio::any_io_executor ex) : timer(ex) {}
    asio::steady_timer timer;
    bool pending = false;
  };

  awaitable<void> send_events(beast::tcp_stream& stream, HttpResponse res) {
    using namespace asio::experimental::awaitable_operators;
    auto source = res.events;
    if (open_streams.fetch_add(1) >= o.limits.max_streams) {
      open_streams.fetch_sub(1);
      HttpResponse busy = error(503, "busy",
                                "Failed to open the event stream: the service has as many open "
                                "as it allows; try again later");
      busy.set_header("Retry-After", "5");
      co_await send_simple(stream, busy, false, false);
      co_return;
    }
    struct Close {
      std::atomic<std::size_t>& n;
      ~Close() { n.fetch_sub(1); }
    } close{open_streams};
    auto ex = co_await asio::this_coro::executor;
    auto wake = std::make_shared<StreamWake>(ex);
    std::weak_ptr<StreamWake> weak = wake;
    source->set_waker([weak, ex] {
      if (weak.expired()) return;
      asio::post(ex, [weak] {
        if (auto w = weak.lock()) {
          w->pending = true;
          w->timer.cancel();
        }
      });
    });
    res.set_header("Content-Type", "text/event-stream");
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    finish(res);
    if (!co_await write_all(stream, serialize_head(res, std::nullopt, false))) co_return;
    auto last_write = std::chrono::steady_clock::now();
    char scratch[512];
    for (bool first = true;; first = false) {
      if (!first && !wake->pending) {
        wake->timer.expires_after(source->poll_interval());
        stream.expires_never();
        auto which = co_await (wake->timer.async_wait(kTuple) ||
                               stream.socket().async_read_some(asio::buffer(scratch), kTuple));
        if (which.index() == 1) {
          auto [ec, n] = std::get<1>(which);
          if (ec) co_return;  // the client went away
          continue;           // a client sends nothing on a stream; what it sends is dropped
        }
      }
      wake->pending = false;
      if (stopping) co_return;
      auto next = co_await on_pool(*streams, [&] {
        try {
          return source->next();
        } catch (const std::exception& e) {
          log(fmt::format("event stream failed: {}", printable(e.what(), 300)));
          return EventSource::Chunk{{}, true};
        }
      });
      // A full pool skips this round; the stream polls again after its interval.
      EventSource::Chunk c = next ? std::move(*next) : EventSource::Chunk{};
      std::string out = std::move(c.data);
      if (out.empty() && std::chrono::steady_clock::now() - last_write >= kKeepAlive)
        out = ": keep-alive\n\n";
      if (!out.empty()) {
        if (!co_await write_all(stream, chunk(out))) co_return;
        last_write = std::chrono::steady_clock::now();
      }
      if (c.done) {
        co_await write_all(stream, "0\r\n\r\n");
        co_return;
      }
    }
  }

  awaitable<void> session(tcp::socket socket, std::string client, std::string key) {
    struct Release {
      Impl& impl;
      std::string key;
      ~Release() { impl.release(key); }
    } release{*this, key};
    beast::tcp_stream stream(std::move(socket));
    beast::flat_buffer buffer(o.limits.max_head_bytes + 4096);
    while (!stopping) {
      bhttp::request_parser<bhttp::string_body> parser;
      parser.header_limit(static_cast<std::uint32_t>(o.limits.max_head_bytes));
      parser.body_limit(o.limits.max_body_bytes);
      auto head_time = under_pressure() ? o.limits.head_timeout / 4 : o.limits.head_timeout;
      stream.expires_after(head_time);
      auto [ec, n] = co_await bhttp::async_read_header(stream, buffer, parser, kTuple);
      if (ec) {
        // A client that goes away or runs out of time gets no answer; a malformed head does.
        if (is_malformed(ec)) co_await answer_and_close(stream, parse_error(ec));
        co_return;
      }
      if (auto refused = check_head(parser)) {
        co_await answer_and_close(stream, std::move(*refused));
        co_return;
      }
      const auto& head = parser.get();
      bool large =
          parser.chunked() || parser.content_length().value_or(0) > o.limits.large_body_bytes;
      bool holds_slot = false;
      if (large) {
        if (large_bodies.fetch_add(1) >= o.limits.large_body_slots) {
          large_bodies.fetch_sub(1);
          HttpResponse busy = error(503, "busy",
                                    "Failed to read the request: the service is reading as many "
                                    "large bodies as it allows; try again later");
          busy.set_header("Retry-After", "2");
          co_await answer_and_close(stream, std::move(busy));
          co_return;
        }
        holds_slot = true;
      }
      struct Slot {
        std::atomic<std::size_t>* n;
        void release() {
          if (n) n->fetch_sub(1);
          n = nullptr;
        }
        ~Slot() { release(); }
      } slot{holds_slot ? &large_bodies : nullptr};
      if (!parser.is_done()) {
        auto expect = head[bhttp::field::expect];
        if (iequals(expect, "100-continue") &&
            !co_await write_all(stream, "HTTP/1.1 100 Continue\r\n\r\n"))
          co_return;
        stream.expires_after(o.limits.body_timeout);
        auto [ec2, n2] = co_await bhttp::async_read(stream, buffer, parser, kTuple);
        if (ec2) {
          if (is_malformed(ec2)) co_await answer_and_close(stream, parse_error(ec2));
          co_return;
        }
      }
      bool keep_alive = parser.get().keep_alive() && !stopping;
      HttpRequest req = to_request(parser.release(), client);
      bool head_only = req.method == "HEAD";
      Routed routed = route(req);
      HttpResponse res;
      if (routed.immediate) {
        res = std::move(*routed.immediate);
      } else {
        const HttpRoute& r = *routed.route;
        auto answer = co_await on_pool(pool_for(r.pool), [&] { return call(r, req); });
        if (answer) {
          res = std::move(*answer);
        } else {
          res = error(503, "busy",
                      "Failed to serve the request: the service is busy; try again shortly");
          res.set_header("Retry-After", "1");
          keep_alive = false;
        }
      }
      // The body is answered: the memory it held is free for the next large one.
      req.body = std::string();
      slot.release();
      if (res.events && !head_only) {
        co_await send_events(stream, std::move(res));
        co_return;
      }
      bool ok = res.file ? co_await send_file(stream, std::move(res), req, keep_alive)
                         : co_await send_simple(stream, res, head_only, keep_alive);
      if (!ok || !keep_alive) break;
    }
    beast::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
  }

  // Refuses a connection over a limit at once, without reading from it.
  void refuse(tcp::socket& socket, std::string_view why) {
    HttpResponse r = error(503, "busy", std::string(why));
    r.set_header("Retry-After", "5");
    finish(r);
    std::string out = serialize_head(r, r.body.size(), false) + r.body;
    beast::error_code ec;
    socket.non_blocking(true, ec);
    socket.write_some(asio::buffer(out), ec);
    socket.close(ec);
  }

  awaitable<void> accept_loop() {
    while (!stopping) {
      auto [ec, socket] = co_await acceptor.async_accept(kTuple);
      if (ec) {
        if (ec == asio::error::operation_aborted || stopping) co_return;
        // Out of descriptors or memory: give the open connections a moment to finish.
        asio::steady_timer pause(co_await asio::this_coro::executor, std::chrono::milliseconds(50));
        co_await pause.async_wait(kTuple);
        continue;
      }
      beast::error_code ignored;
      auto peer = socket.remote_endpoint(ignored);
      if (ignored) continue;
      socket.set_option(tcp::no_delay(true), ignored);
      std::string key = client_key(peer.address());
      if (!admit(key)) {
        refuse(socket, connections.load() >= o.limits.max_connections
                           ? "Failed to accept the connection: the service has as many open as "
                             "it allows; try again later"
                           : "Failed to accept the connection: your address has as many open as "
                             "the service allows each client");
        continue;
      }
      asio::co_spawn(asio::make_strand(ioc),
                     session(std::move(socket), client_text(peer.address()), key),
                     [this](std::exception_ptr e) {
                       if (!e) return;
                       try {
                         std::rethrow_exception(e);
                       } catch (const std::exception& x) {
                         log(fmt::format("connection failed: {}", printable(x.what(), 300)));
                       }
                     });
    }
  }

  // --- without a socket ------------------------------------------------------------------

  std::string answer_bytes(std::string_view raw, std::string_view client_view) {
    std::string out;
    std::string client(client_view);
    for (std::size_t i = 0; i < kMaxPipelined && !raw.empty(); ++i) {
      bhttp::request_parser<bhttp::string_body> parser;
      parser.header_limit(static_cast<std::uint32_t>(o.limits.max_head_bytes));
      parser.body_limit(o.limits.max_body_bytes);
      auto refuse_with = [&](HttpResponse r) {
        finish(r);
        return out + serialize_head(r, r.body.size(), false) + r.body;
      };
      // The head first (the parser stops after it), checked as the network path checks it.
      beast::error_code ec;
      raw.remove_prefix(parser.put(asio::buffer(raw.data(), raw.size()), ec));
      if (ec == bhttp::error::need_more) return out;  // incomplete: no answer, as on a socket
      if (ec) return is_malformed(ec) ? refuse_with(parse_error(ec)) : out;
      if (auto refused = check_head(parser)) return refuse_with(std::move(*refused));
      parser.eager(true);
      while (!parser.is_done()) {
        std::size_t used = parser.put(asio::buffer(raw.data(), raw.size()), ec);
        raw.remove_prefix(used);
        if (ec == bhttp::error::need_more || (!ec && used == 0)) return out;
        if (ec) return is_malformed(ec) ? refuse_with(parse_error(ec)) : out;
      }
      bool keep_alive = parser.get().keep_alive();
      HttpRequest req = to_request(parser.release(), client);
      Routed routed = route(req);
      HttpResponse res = routed.immediate ? std::move(*routed.immediate) : call(*routed.route, req);
      bool head_only = req.method == "HEAD";
      if (res.events && !head_only) {
        auto source = res.events;
        source->set_waker([] {});
        res.set_header("Content-Type", "text/event-stream");
        finish(res);
        out += serialize_head(res, std::nullopt, false);
        out += chunk(source->next().data);
        return out;
      }
      if (res.file) {
        auto fd = res.file->fd;
        FilePlan plan = plan_file(std::move(res), req);
        finish(plan.head);
        out += serialize_head(plan.head, plan.length, keep_alive);
        if (!head_only)
          for (const auto& piece : plan.pieces) {
            if (!piece.text.empty()) {
              out += piece.text;
              continue;
            }
            std::string buf(
                static_cast<std::size_t>(std::min<std::uint64_t>(piece.range.length, kFileChunk)),
                '\0');
            ssize_t n =
                ::pread(fd->get(), buf.data(), buf.size(), static_cast<off_t>(piece.range.first));
            if (n > 0) out.append(buf.data(), static_cast<std::size_t>(n));
          }
      } else {
        finish(res);
        out += serialize_head(res, res.body.size(), keep_alive);
        if (!head_only) out += res.body;
      }
      if (!keep_alive) break;
    }
    return out;
  }
};

HttpServer::HttpServer(HttpServerOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}

HttpServer::~HttpServer() {
  stop();
  // Handlers still running finish before the connections waiting on them are destroyed.
  for (auto* pool : {impl_->light.get(), impl_->heavy.get(), impl_->streams.get()})
    if (pool) pool->stop();
}

int HttpServer::bind(const std::string& host, int port) {
  // Every connection is a descriptor: the soft limit (often 1024) would cap them long before
  // max_connections does.
  rlimit nofile{};
  if (::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &nofile);
  }
  beast::error_code ec;
  auto address = asio::ip::make_address(host == "localhost" ? "127.0.0.1" : host, ec);
  if (ec)
    throw Error(
        ErrorKind::kInvalidInput,
        fmt::format("Failed to listen on {}:{}: {:?} is not an IP address", host, port, host));
  tcp::endpoint endpoint(address, static_cast<unsigned short>(port));
  auto& a = impl_->acceptor;
  a.open(endpoint.protocol(), ec);
  if (!ec) a.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) a.bind(endpoint, ec);
  if (!ec) a.listen(asio::socket_base::max_listen_connections, ec);
  if (ec)
    throw Error(ErrorKind::kIo,
                fmt::format("Failed to listen on {}:{}: {}", host, port, ec.message()));
  return a.local_endpoint().port();
}

void HttpServer::run() {
  auto& impl = *impl_;
  impl.light = std::make_unique<WorkerPool>(impl.o.light);
  impl.heavy = std::make_unique<WorkerPool>(impl.o.heavy);
  impl.streams = std::make_unique<WorkerPool>(impl.o.streams);
  asio::co_spawn(impl.ioc, impl.accept_loop(), asio::detached);
  std::vector<std::thread> threads;
  for (std::size_t i = 1; i < std::max<std::size_t>(1, impl.o.limits.io_threads); ++i)
    threads.emplace_back([&impl] { impl.ioc.run(); });
  impl.ioc.run();
  for (auto& t : threads) t.join();
}

void HttpServer::stop() {
  auto& impl = *impl_;
  if (impl.stopping.exchange(true)) return;
  asio::post(impl.ioc, [&impl] {
    beast::error_code ignored;
    impl.acceptor.close(ignored);
    impl.ioc.stop();
  });
}

std::string HttpServer::answer_bytes(std::string_view raw, std::string_view client) {
  return impl_->answer_bytes(raw, client);
}

HttpServer::Stats HttpServer::stats() const {
  return {impl_->connections.load(), impl_->open_streams.load()};
}

}  // namespace pok8s::server
