// libFuzzer target: secrets are found and masked in specs and cloud-configs from any client of
// the service; whatever they hold, nothing throws and no secret that was found is shown.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "pok8s/config/secrets.h"

namespace {

using namespace pok8s::config;

constexpr std::string_view kHeader = "#cloud-config\n";

// A secret the checks can look for in a masked text: one scrub() replaces, which neither holds
// nor could be made of the mask, and is not part of the fixed text a masked document carries.
bool checkable(const std::string& secret) {
  return secret.size() >= kMinScrubbedSecretBytes && secret.find('*') == std::string::npos &&
         kDocumentNotShown.find(secret) == std::string_view::npos &&
         kLaterDocumentsNotShown.find(secret) == std::string_view::npos &&
         kHeader.find(secret) == std::string_view::npos;
}

void check_not_shown(const std::string& shown, const std::vector<std::string>& secrets) {
  for (const auto& secret : secrets)
    if (checkable(secret) && shown.find(secret) != std::string::npos) __builtin_trap();
}

// One document as a spec and as a cloud-config.
void check_document(const std::string& text) {
  check_not_shown(mask_secrets_in_spec(text), secret_values(text, {}));

  std::map<std::string, std::string> files = {{"cloud-config.yaml", text}};
  std::string masked = mask_secrets_in_cloud_config(text);
  bool is_cloud_config = text.starts_with("#cloud-config");
  if (!is_cloud_config) {
    // No node reads it as a cloud-config: shown as it is, and none of it is a secret.
    if (masked != text || !secret_values("", files).empty()) __builtin_trap();
    return;
  }
  if (!masked.starts_with(kHeader)) {
    // A header followed by something on its line is no header: the file is left alone.
    if (masked != text) __builtin_trap();
    return;
  }
  check_not_shown(masked, secret_values("", files));
  // What is shown is a cloud-config again, every secret of which is the mask.
  for (const auto& value : secret_values("", {{"masked.yaml", masked}}))
    if (checkable(value)) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  // NUL-separated parts: each is checked as a spec and as a cloud-config; together they are a
  // request (the first the spec, the others its files) and the secrets scrubbed from the first.
  std::vector<std::string> parts;
  for (std::size_t start = 0; start <= input.size();) {
    std::size_t end = input.find('\0', start);
    if (end == std::string_view::npos) end = input.size();
    parts.emplace_back(input.substr(start, end - start));
    start = end + 1;
  }
  for (const auto& part : parts) check_document(part);

  std::map<std::string, std::string> files;
  for (std::size_t i = 1; i < parts.size(); ++i) files.emplace("f" + std::to_string(i), parts[i]);
  auto secrets = secret_values(parts[0], files);
  check_not_shown(scrub(parts[0], secrets), secrets);
  std::vector<std::string> given(parts.begin() + 1, parts.end());
  check_not_shown(scrub(parts[0], given), given);
  return 0;
}
