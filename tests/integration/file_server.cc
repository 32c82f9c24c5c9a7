#include "integration/file_server.h"

#include <httplib.h>

#include <chrono>
#include <stdexcept>
#include <thread>

namespace pok8s::testing {

struct FileServer::Impl {
  std::map<std::string, std::string> files;
  httplib::Server server;
  int port = 0;
  std::thread thread;
};

FileServer::FileServer(std::map<std::string, std::string> files) : impl_(new Impl) {
  impl_->files = std::move(files);
  Impl* impl = impl_.get();
  impl->server.Get(".*", [impl](const httplib::Request& req, httplib::Response& res) {
    auto it = impl->files.find(req.path);
    if (it == impl->files.end()) {
      res.status = 404;
      return;
    }
    res.set_content(it->second, "application/octet-stream");
  });
  impl->port = impl->server.bind_to_any_port("127.0.0.1");
  if (impl->port <= 0) throw std::runtime_error("FileServer: cannot bind 127.0.0.1");
  impl->thread = std::thread([impl] { impl->server.listen_after_bind(); });
  while (!impl->server.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
}

FileServer::~FileServer() {
  impl_->server.stop();
  impl_->thread.join();
}

int FileServer::port() const {
  return impl_->port;
}

std::string FileServer::url(const std::string& path) const {
  return "http://127.0.0.1:" + std::to_string(impl_->port) + path;
}

}  // namespace pok8s::testing
