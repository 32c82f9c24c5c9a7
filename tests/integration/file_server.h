// A web server on 127.0.0.1 for tests: serves a fixed set of files, a 404 for anything else.
#pragma once

#include <map>
#include <memory>
#include <string>

namespace pok8s::testing {

class FileServer {
 public:
  explicit FileServer(std::map<std::string, std::string> files);  // URL path -> body
  ~FileServer();
  FileServer(const FileServer&) = delete;
  FileServer& operator=(const FileServer&) = delete;

  int port() const;
  std::string url(const std::string& path) const;  // http://127.0.0.1:PORT/path

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pok8s::testing
