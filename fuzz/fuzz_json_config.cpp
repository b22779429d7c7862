// JSON configs and key=value overrides (src/core/config.cpp): read_json_file, merge_config against
// a schema (the HRM preset models/hrm/sudoku-2core.json, plus a free-form object and an optional
// key), apply_overrides and config_at, as the tools do with --config FILE and KEY=VALUE arguments.
// The input is two parts (fuzz_common.h's split_parts): the config file, then one override per
// line. Seeds: the JSON configs under models/ and tests/fixtures, with overrides (fuzz/seeds.py).
#include "fuzz_common.h"

#include <hrmclara/config.h>

namespace {
hrmclara::Json g_schema;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  using namespace hrmclara_fuzz;
  try {
    g_schema = hrmclara::read_json_file(source_dir() + "/models/hrm/sudoku-2core.json");
  } catch (const std::exception& e) {
    die(std::string("cannot read the schema: ") + e.what());
  }
  g_schema["extra"] = hrmclara::Json::object();  // free-form: any keys
  g_schema["optional"] = nullptr;                 // null: any type
  g_schema["list"] = hrmclara::Json::array({1, 2});
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace hrmclara_fuzz;
  const auto parts = split_parts(data, size, 2);
  const std::string path = WorkDir::get().file("config.json");
  write_part(parts, 0, path);
  const auto overrides = parts.size() > 1 ? lines_of(parts[1], 64) : std::vector<std::string>{};
  expect_typed_errors("json config", [&] {
    hrmclara::Json config = g_schema;
    try {
      config = hrmclara::merge_config(g_schema, hrmclara::read_json_file(path), path);
    } catch (const hrmclara::Error&) {
      // Still apply the overrides to the schema.
    }
    config = hrmclara::apply_overrides(config, overrides);
    for (const auto& o : overrides) {
      const auto eq = o.find('=');
      try {
        (void)hrmclara::config_at(config, o.substr(0, eq));
      } catch (const hrmclara::Error&) {
      }
    }
    (void)config.dump();
  });
  return 0;
}
