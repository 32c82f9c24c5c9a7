// Progress lines, JSON events and results for the CLI.
#include "output.h"

#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>

namespace pok8s::cli {

namespace {
std::string human_bytes(std::uint64_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{} B", n) : fmt::format("{:.1f} {}", v, units[u]);
}
}  // namespace

Output::Output(OutputMode mode) : mode_(mode), tty_(::isatty(STDERR_FILENO) == 1) {}

void Output::clear_line() {
  if (line_open_) {
    std::fputs("\r\033[K", stderr);
    line_open_ = false;
  }
}

oci::ProgressFn Output::progress() {
  if (mode_ == OutputMode::kQuiet) return {};
  return
      [this, last = std::chrono::steady_clock::time_point{}](const oci::ProgressEvent& ev) mutable {
        using Kind = oci::ProgressEvent::Kind;
        if (mode_ == OutputMode::kJson) {
          if (ev.kind == Kind::kBlobBytes) return;  // start and done are enough for machines
          static constexpr const char* kNames[] = {"blob-start", "blob-bytes", "blob-done",
                                                   "blob-cached", "note"};
          nlohmann::json j = {{"event", kNames[static_cast<int>(ev.kind)]}, {"what", ev.what}};
          if (ev.total) j["total"] = ev.total;
          if (ev.done) j["done"] = ev.done;
          std::fputs((j.dump() + "\n").c_str(), stderr);
          return;
        }
        if (ev.kind == Kind::kBlobBytes) {
          if (!tty_) return;
          auto now = std::chrono::steady_clock::now();
          if (now - last < std::chrono::milliseconds(100)) return;
          last = now;
          std::string total = ev.total ? " / " + human_bytes(ev.total) : "";
          std::fprintf(stderr, "\r\033[K  %s  %s%s", ev.what.c_str(), human_bytes(ev.done).c_str(),
                       total.c_str());
          line_open_ = true;
          return;
        }
        clear_line();
        switch (ev.kind) {
          case Kind::kBlobStart:
            if (!tty_) std::fprintf(stderr, "  fetching %s\n", ev.what.c_str());
            break;
          case Kind::kBlobDone:
            std::fprintf(stderr, "  fetched  %s (%s)\n", ev.what.c_str(),
                         human_bytes(ev.total).c_str());
            break;
          case Kind::kBlobCached:
            std::fprintf(stderr, "  cached   %s\n", ev.what.c_str());
            break;
          default:
            std::fprintf(stderr, "  %s\n", ev.what.c_str());
            break;
        }
      };
}

void Output::step(const std::string& text) {
  if (mode_ == OutputMode::kQuiet) return;
  if (mode_ == OutputMode::kJson) {
    std::fputs((nlohmann::json{{"event", "step"}, {"what", text}}.dump() + "\n").c_str(), stderr);
    return;
  }
  clear_line();
  std::fprintf(stderr, "%s\n", text.c_str());
}

void Output::detail(const std::string& text) {
  if (mode_ == OutputMode::kQuiet) return;
  if (mode_ == OutputMode::kJson) {
    std::fputs((nlohmann::json{{"event", "output"}, {"line", text}}.dump() + "\n").c_str(), stderr);
    return;
  }
  if (!tty_) {
    std::fprintf(stderr, "  | %s\n", text.c_str());
    return;
  }
  std::fprintf(stderr, "\r\033[K  | %.100s", text.c_str());
  line_open_ = true;
}

void Output::progress_bytes(const std::string& step, std::uint64_t done, std::uint64_t total) {
  if (mode_ == OutputMode::kQuiet) return;
  auto now = std::chrono::steady_clock::now();
  bool finished = total != 0 && done >= total;
  auto every =
      mode_ == OutputMode::kJson ? std::chrono::milliseconds(1000) : std::chrono::milliseconds(100);
  if (!finished && now - last_progress_ < every) return;
  last_progress_ = now;
  if (mode_ == OutputMode::kJson) {
    nlohmann::json j = {{"event", "progress"}, {"step", step}, {"done", done}, {"total", total}};
    std::fputs((j.dump() + "\n").c_str(), stderr);
    return;
  }
  if (!tty_) return;
  int percent = total ? static_cast<int>(done * 100 / total) : 0;
  std::fprintf(stderr, "\r\033[K  %s  %s / %s (%d%%)", step.c_str(), human_bytes(done).c_str(),
               human_bytes(total).c_str(), percent);
  line_open_ = true;
}

void Output::result(const std::string& human, const nlohmann::json& machine) {
  clear_line();
  if (mode_ == OutputMode::kJson) {
    nlohmann::json j = machine;
    std::fputs((j.dump(2) + "\n").c_str(), stdout);
  } else if (!human.empty()) {
    std::fputs(human.c_str(), stdout);
    if (human.back() != '\n') std::fputc('\n', stdout);
  }
  std::fflush(stdout);
}

std::function<void(std::string_view)> Output::log() {
  return [this](std::string_view line) {
    if (line.starts_with("  | "))
      detail(std::string(line.substr(4)));
    else
      step(std::string(line));
  };
}

std::function<void(std::string_view, std::uint64_t, std::uint64_t)> Output::byte_progress() {
  return [this](std::string_view name, std::uint64_t done, std::uint64_t total) {
    progress_bytes(std::string(name), done, total);
  };
}

}  // namespace pok8s::cli
