// CLaRa's adapters.pth: read_adapter_groups (a torch.save dict of adapter name -> PEFT state dict),
// each group loaded into a LoraAdapter as ClaraModel does. The base is the tiny Mistral of the
// clara-reference fixture, LoRA r 4 on every projection as its clara_config.json.
// Seeds: the adapters.pth fixtures.
#include "fuzz_model_config.h"
#include "fuzz_tensor.h"

#include <hrmclara/lora.h>


extern "C" int LLVMFuzzerInitialize(int*, char***) {
  hrmclara_fuzz::init_torch();
  (void)hrmclara_fuzz::tiny_mistral();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace hrmclara_fuzz;
  const std::string path = WorkDir::get().file("adapters.pth");
  write_file(path, data, size);
  expect_typed_errors("adapters.pth", [&] {
    // As ClaraModel loads them: the groups, then each LoRA state into an adapter of the model's
    // shapes (r 4 on every projection, as the fixture's clara_config.json).
    const auto groups = hrmclara::read_adapter_groups(path);
    for (const auto& [name, state] : groups.base_copies)
      for (const auto& [key, t] : state) touch_tensor(name + "." + key, t);
    hrmclara::LoraConfig config;
    config.r = 4;
    config.alpha = 8;
    for (const auto& [name, state] : groups.lora) {
      for (const auto& [key, t] : state) touch_tensor(name + "." + key, t);
      hrmclara::LoraAdapter a(name, config, tiny_mistral(), at::kFloat, at::kCPU);
      a.load_state_dict(state, path + " [" + name + "]");
      touch_all(a.state_dict());
    }
  });
  return 0;
}
