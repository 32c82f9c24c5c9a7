// The service's HTTP/1.1 server for hostile networks, on Boost.Beast and Asio: event-driven
// connections with limits overall and per client address, bounded heads and bodies, deadlines for
// the whole request rather than each read, handlers on bounded worker pools, and event streams
// (SSE) and file downloads that hold no thread while they wait or send.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "pok8s/util/file.h"

namespace pok8s::server {

struct HttpLimits {
  std::size_t max_connections = 4096;
  // Per client address (an IPv4 address, or an IPv6 /64, which one host usually has whole).
  std::size_t max_connections_per_client = 256;
  std::size_t max_head_bytes = 16u << 10;  // request line and headers together
  std::size_t max_header_fields = 100;
  std::size_t max_body_bytes = 8u << 20;
  // Bodies larger than this need one of `large_body_slots`, so that many connections sending
  // large bodies at once cannot hold max_connections × max_body_bytes of memory.
  std::size_t large_body_bytes = 64u << 10;
  std::size_t large_body_slots = 32;
  // From the moment the server waits for a request (on a new connection or after the previous
  // response) until its head is complete: idle keep-alive time and a slow head together.
  std::chrono::milliseconds head_timeout{15'000};
  std::chrono::milliseconds body_timeout{60'000};  // the whole body
  // A response (or one chunk of a download or stream) that moves no byte for this long.
  std::chrono::milliseconds write_timeout{60'000};
  std::size_t max_streams = 4096;  // open event streams
  std::size_t io_threads = 2;
};

// What a handler runs on: `kLight` for short database work, `kHeavy` for requests that may wait
// on the network for seconds (resolving a base image in a registry). Each has its own threads
// and queue, so slow calls cannot starve quick ones.
enum class HandlerPool { kLight, kHeavy };

struct HttpPoolLimits {
  std::size_t threads;
  std::size_t max_waiting;  // calls queued beyond the busy threads; more get 503
};

struct HttpRequest {
  std::string method;  // as sent, e.g. "GET"
  std::string target;  // as sent, e.g. "/api/v1/builds?limit=5"
  std::string path;    // the target's path, percent-decoded (may hold any bytes)
  std::vector<std::pair<std::string, std::string>> query;    // decoded, in order
  std::vector<std::pair<std::string, std::string>> headers;  // names in lower case
  std::string body;
  std::string client;               // the peer's address, e.g. "127.0.0.1" or "::1"
  std::vector<std::string> params;  // what the route's ":name" segments matched, decoded

  // The first header of that name (case-insensitive), or nullopt.
  std::optional<std::string_view> header(std::string_view name) const;
  std::optional<std::string_view> query_value(std::string_view name) const;
};

// A stream of server-sent events for one response. The server calls next() on a worker thread
// when the stream was woken or its poll interval passed; it sends keep-alive comments itself.
class EventSource {
 public:
  struct Chunk {
    std::string data;   // what to send now (may be empty)
    bool done = false;  // the stream ends after `data`
  };
  virtual ~EventSource() = default;
  virtual Chunk next() = 0;
  // Called once, before the first next(), with a function that wakes the stream: thread-safe,
  // cheap, and harmless after the stream has ended.
  virtual void set_waker(std::function<void()> wake) = 0;
  // How long the server waits for a wake before calling next() anyway.
  virtual std::chrono::milliseconds poll_interval() const { return std::chrono::seconds(1); }
};

struct HttpResponse {
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  // A file sent in pieces, with Range support (RFC 9110): `body` is ignored.
  struct File {
    std::shared_ptr<util::UniqueFd> fd;
    std::uint64_t size = 0;
    std::string content_type;
  };
  std::optional<File> file;
  std::shared_ptr<EventSource> events;  // a text/event-stream response: `body` is ignored

  void set_header(std::string name, std::string value);
  void set_body(std::string text, std::string content_type);
};

using HttpHandler = std::function<HttpResponse(HttpRequest&)>;

struct HttpRoute {
  std::string method;   // "GET", "POST", "DELETE"; GET routes answer HEAD too
  std::string pattern;  // "/api/v1/builds/:id/artifacts/:name": ":x" matches one segment
  HandlerPool pool = HandlerPool::kLight;
  HttpHandler handler;
};

struct HttpServerOptions {
  HttpLimits limits;
  HttpPoolLimits light{8, 512};
  HttpPoolLimits heavy{4, 64};
  HttpPoolLimits streams{2, 8192};  // the event streams' polls
  std::vector<HttpRoute> routes;
  // Answers GET requests that match no route (the web builder's files); nullopt: 404.
  std::function<std::optional<HttpResponse>(const HttpRequest&)> fallback;
  // Builds the body of every error the server itself answers (404, 405, 413, 431, 503, …).
  std::function<HttpResponse(int status, std::string_view kind, std::string message)> error;
  // Headers added to every response.
  std::vector<std::pair<std::string, std::string>> common_headers;
  std::function<void(std::string_view)> log;
};

class HttpServer {
 public:
  explicit HttpServer(HttpServerOptions options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds host:port (port 0 picks a free one) and returns the port. kIo when it cannot.
  int bind(const std::string& host, int port);
  // Serves until stop(); runs the I/O threads (the calling thread is one of them).
  void run();
  // Thread-safe; run() returns once open connections are closed.
  void stop();

  // Answers `raw` (one or more pipelined HTTP/1.1 requests) as a connection from `client` would
  // be answered, without a socket, and returns the bytes the server would send. The same parser,
  // limits, routing and handlers as the network path; handlers run on the calling thread, an
  // event stream sends its first chunk only, a file its first 64 KiB. For the fuzz target.
  std::string answer_bytes(std::string_view raw, std::string_view client);

  struct Stats {
    std::size_t connections = 0;
    std::size_t streams = 0;
  };
  Stats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pok8s::server
