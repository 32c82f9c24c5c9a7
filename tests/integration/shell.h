// A shell command from a test: its exit status and stdout (stderr goes to the test log).
#pragma once

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

namespace pok8s::testing {

struct Shell {
  int status = -1;
  std::string out;
};

inline Shell sh(const std::string& cmd) {
  Shell r;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf{};
  std::size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
  return r;
}

}  // namespace pok8s::testing
