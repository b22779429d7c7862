// read_yaml_file (src/core/config.cpp, yaml-cpp underneath): upstream HRM's all_config.yaml read
// into JSON. Seeds: tests/fixtures/hrm-reference/all_config.yaml and hand-made YAML. (No dump():
// YAML strings may hold invalid UTF-8, which nlohmann refuses to serialize, and no caller dumps it.)
#include "fuzz_common.h"

#include <hrmclara/config.h>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace hrmclara_fuzz;
  const std::string path = WorkDir::get().file("all_config.yaml");
  write_file(path, data, size);
  expect_typed_errors("read_yaml_file", [&] {
    const hrmclara::Json j = hrmclara::read_yaml_file(path);
    size_t n = 0;
    for (auto it = j.cbegin(); it != j.cend(); ++it) n += it->size();
    (void)n;
  });
  return 0;
}
