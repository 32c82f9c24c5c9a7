// The kernel command line as pok8s-init and pok8s-agent read it: boot mode, media label,
// debug and emergency-shell switches, all under the `pok8s.` prefix.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pok8s::node {

// One parameter of the command line: `key`, `key=value` or `key="quoted value"`.
struct KernelParameter {
  std::string key;
  std::optional<std::string> value;
};

// Splits a command line the way the kernel does: whitespace separates parameters, double
// quotes group (and are removed), a lone `--` ends the kernel's part (the rest goes to init
// and is kept here too, after a parameter with the key "--").
std::vector<KernelParameter> parse_kernel_cmdline(std::string_view cmdline);

enum class BootMode { kLive, kActive, kPassive, kRecovery };

std::string_view boot_mode_name(BootMode mode);

// pok8s.verity=<root hash>,<salt>,<data blocks>,<hash offset>: the rootfs image carries a
// dm-verity tree (SHA-256, 4 KiB blocks, no superblock) at the offset, after its data blocks.
struct VerityParams {
  std::string root_hash;  // 64 lowercase hex digits
  std::string salt;       // lowercase hex, 2 to 128 digits
  std::uint64_t data_blocks = 0;
  std::uint64_t hash_offset = 0;  // bytes; data_blocks * 4096
};

struct FetchParams {
  std::string url;     // http://IPv4[:port]/path
  std::string sha256;  // 64 lowercase hex digits
};

// What pok8s reads from the command line. Unknown `pok8s.` keys are refused so a typo does not
// silently boot something else.
struct BootOptions {
  BootMode mode = BootMode::kLive;
  std::string media_label = "COS_LIVE";         // pok8s.media=LABEL
  std::string image_path = "/rootfs.squashfs";  // pok8s.image=PATH on that media
  std::string init = "/sbin/init";              // pok8s.init=PATH in the image
  bool debug = false;                           // pok8s.debug: say every step on the console
  bool shell = false;                           // pok8s.shell: emergency shell on failure
  unsigned wait_seconds = 30;                   // pok8s.wait=N: how long to wait for the media
  std::vector<std::string> modules;             // pok8s.modules=a,b: extra modules to load
  std::optional<VerityParams> verity;           // pok8s.verity=…: mount the image through it
  // Netboot: pok8s.fetch=URL pok8s.fetch.sha256=HEX — the rootfs image comes over HTTP into RAM
  // (node/netboot.h) instead of from a labelled media; pok8s.fetch.config=URL with
  // pok8s.fetch.config.sha256=HEX brings the cloud-config the same way.
  std::optional<FetchParams> fetch;
  std::optional<FetchParams> fetch_config;
};

// Reads the options from a command line; throws Error(kInvalidInput) naming the parameter.
BootOptions parse_boot_options(std::string_view cmdline);

}  // namespace pok8s::node
