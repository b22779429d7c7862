// LlmConfig::load (src/llm/llm_config.cpp): a Hugging Face config.json. A config that loads must
// write a config.json (to_json_text) that loads again, and the tools print its parameter_count().
// Seeds: every config.json fixture and models/llm presets.
#include "fuzz_common.h"

#include <hrmclara/llm_config.h>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace hrmclara_fuzz;
  const std::string path = WorkDir::get().file("config.json");
  write_file(path, data, size);
  hrmclara::LlmConfig config;
  bool loaded = false;
  expect_typed_errors("LlmConfig::load", [&] {
    config = hrmclara::LlmConfig::load(path);
    loaded = true;
  });
  if (!loaded) return 0;
  (void)config.parameter_count();
  const std::string text = config.to_json_text();
  try {
    const hrmclara::LlmConfig again = hrmclara::LlmConfig::from_json_text(text, "to_json_text");
    if (again.to_json_text() != text) die("LlmConfig: to_json_text does not read back the same:\n" + text);
  } catch (const std::exception& e) {
    die(std::string("LlmConfig: the config.json to_json_text wrote does not load: ") + e.what() + "\n" + text);
  }
  return 0;
}
