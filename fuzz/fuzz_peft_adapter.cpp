// A PEFT adapter folder (src/nn/lora.cpp: read_peft_config, read_peft_adapter): the input is two
// files (fuzz_common.h's split_parts), adapter_config.json and adapter_model.safetensors, read
// for the tiny Mistral of the clara-reference fixture; the loaded adapter is then used as the
// library uses one (state dict, merged weight delta). Seeds: tests/fixtures/peft-adapter.
#include "fuzz_model_config.h"
#include "fuzz_tensor.h"

#include <hrmclara/lora.h>

#include <sys/stat.h>

namespace {
std::string g_dir;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  hrmclara_fuzz::init_torch();
  g_dir = hrmclara_fuzz::WorkDir::get().file("adapter");
  ::mkdir(g_dir.c_str(), 0755);
  (void)hrmclara_fuzz::tiny_mistral();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace hrmclara_fuzz;
  const auto parts = split_parts(data, size, 2);
  write_part(parts, 0, g_dir + "/adapter_config.json");
  write_part(parts, 1, g_dir + "/adapter_model.safetensors");
  expect_typed_errors("read_peft_config", [&] { (void)hrmclara::read_peft_config(g_dir + "/adapter_config.json"); });
  expect_typed_errors("read_peft_adapter", [&] {
    const hrmclara::LoraAdapter a = hrmclara::read_peft_adapter(g_dir, "fuzz", tiny_mistral(), at::kFloat, at::kCPU);
    touch_all(a.state_dict());
    for (int t = 0; t < hrmclara::kLoraTargetCount; ++t)
      if (a.has(0, static_cast<hrmclara::LoraTarget>(t)))
        touch_tensor("delta", a.delta_weight(0, static_cast<hrmclara::LoraTarget>(t), at::kFloat));
  });
  return 0;
}
