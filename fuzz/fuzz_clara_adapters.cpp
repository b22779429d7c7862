// CLaRa's adapters.pth: read_torch_save of a dict of adapter name -> PEFT state dict, grouped and
// loaded into LoraAdapters as ClaraModel does (src/clara/clara_model.cpp, read_adapters_pth and
// the loading loop; copied here because that file needs the whole model). The base is the tiny
// Mistral of the clara-reference fixture, LoRA r 4 on every projection as its clara_config.json.
// Seeds: the adapters.pth fixtures.
#include "fuzz_model_config.h"
#include "fuzz_tensor.h"

#include <hrmclara/lora.h>

#include <map>

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
    // read_adapters_pth
    std::vector<std::pair<std::string, hrmclara::NamedTensors>> lora, copies;
    std::map<std::string, size_t> lora_at, copy_at;
    for (auto& [flat, t] : hrmclara::read_torch_save(path)) {
      touch_tensor(flat, t);
      const auto dot = flat.find('.');
      if (dot == std::string::npos || dot == 0) throw hrmclara::FormatError(path + ": entry outside an adapter dict");
      const std::string name = flat.substr(0, dot), key = flat.substr(dot + 1);
      const bool copy = key == "model.embed_tokens.weight" || key == "lm_head.weight";
      auto& index = copy ? copy_at : lora_at;
      auto& list = copy ? copies : lora;
      if (!index.count(name)) {
        index[name] = list.size();
        list.emplace_back(name, hrmclara::NamedTensors{});
      }
      list[index[name]].second.emplace_back(key, t);
    }
    // the loading loop
    hrmclara::LoraConfig config;
    config.r = 4;
    config.alpha = 8;
    for (const auto& [name, state] : lora) {
      hrmclara::LoraAdapter a(name, config, tiny_mistral(), at::kFloat, at::kCPU);
      a.load_state_dict(state, path + " [" + name + "]");
      touch_all(a.state_dict());
    }
  });
  return 0;
}
