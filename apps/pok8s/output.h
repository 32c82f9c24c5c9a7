// How the CLI shows long operations: a live progress line on a terminal, JSON lines with
// --json, nothing with --quiet; and the one-line error report.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "pok8s/oci/image.h"

namespace pok8s::cli {

enum class OutputMode { kHuman, kJson, kQuiet };

class Output {
 public:
  explicit Output(OutputMode mode);
  OutputMode mode() const { return mode_; }
  // A progress callback for the library's transfer events.
  oci::ProgressFn progress();
  // A step of a command ("Unpacking layer 1/3 …"); a JSON event with --json.
  void step(const std::string& text);
  // A line of a tool's output during a step: the live line on a terminal, kept otherwise.
  void detail(const std::string& text);
  // Bytes done of a long step ("rootfs"): a live line on a terminal, a JSON event at most
  // once a second with --json.
  void progress_bytes(const std::string& step, std::uint64_t done, std::uint64_t total);
  // The library's log callback: its lines are steps, and "  | "-prefixed lines are details.
  std::function<void(std::string_view)> log();
  // The library's byte progress callback (step name, done, total), as progress_bytes.
  std::function<void(std::string_view, std::uint64_t, std::uint64_t)> byte_progress();
  // The final result: the human text, or the JSON object with --json.
  void result(const std::string& human, const nlohmann::json& machine);

 private:
  void clear_line();
  OutputMode mode_;
  bool tty_;
  bool line_open_ = false;
  std::chrono::steady_clock::time_point last_progress_{};
};

}  // namespace pok8s::cli
