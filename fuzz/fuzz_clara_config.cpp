// CLaRa configs (src/clara/clara_config.cpp): ClaraConfig::load_from_dir over a folder holding
// upstream's config.json and/or our clara_config.json, then KEY=VALUE overrides and the upstream
// config.json it writes. The input is three parts (fuzz_common.h's split_parts): config.json,
// clara_config.json ("@absent" for none), overrides one per line. Seeds: the fixtures' configs.
#include "fuzz_common.h"

#include <hrmclara/clara_config.h>

#include <sys/stat.h>

namespace {
std::string g_dir;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  g_dir = hrmclara_fuzz::WorkDir::get().file("ckpt");
  ::mkdir(g_dir.c_str(), 0755);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace hrmclara_fuzz;
  const auto parts = split_parts(data, size, 3);
  write_part(parts, 0, g_dir + "/config.json");
  write_part(parts, 1, g_dir + "/clara_config.json");
  const auto overrides = parts.size() > 2 ? lines_of(parts[2], 32) : std::vector<std::string>{};
  expect_typed_errors("ClaraConfig", [&] {
    std::string used;
    hrmclara::clara::ClaraConfig c = hrmclara::clara::ClaraConfig::load_from_dir(g_dir, &used);
    (void)c.to_upstream_json().dump();
    c.apply_overrides(overrides, "overrides");
    // What it writes must load again.
    const hrmclara::Json written = c.to_upstream_json();
    try {
      (void)hrmclara::clara::ClaraConfig::from_json(written, "to_upstream_json");
    } catch (const std::exception& e) {
      die(std::string("ClaraConfig: to_upstream_json does not load again: ") + e.what() + "\n" + written.dump());
    }
  });
  return 0;
}
