// libFuzzer target: the GRUB environment block on COS_OEM, which anything that can write the
// OEM partition (or GRUB's save_env) controls. Whatever parses renders back to one block that
// parses to the same variables.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "pok8s/node/grubenv.h"
#include "pok8s/util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace pok8s::node;
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  GrubEnv env;
  try {
    env = parse_grubenv(bytes, "fuzz");
  } catch (const pok8s::Error& e) {
    if (e.kind() != pok8s::ErrorKind::kFormat) __builtin_trap();
    return 0;
  }
  // Rendering never grows a parsed block (escapes are only ever dropped), so it must fit.
  std::string rendered = render_grubenv(env);
  if (rendered.size() != kGrubEnvSize) __builtin_trap();
  if (parse_grubenv(rendered, "fuzz") != env) __builtin_trap();
  if (render_grubenv(parse_grubenv(rendered, "fuzz")) != rendered) __builtin_trap();
  // What mark-booted does: set one variable. A full block may refuse it, but never garbles it.
  env.set("pok8s_tries", "3");
  try {
    if (parse_grubenv(render_grubenv(env), "fuzz") != env) __builtin_trap();
  } catch (const pok8s::Error& e) {
    if (e.kind() != pok8s::ErrorKind::kInvalidInput) __builtin_trap();
  }
  return 0;
}
