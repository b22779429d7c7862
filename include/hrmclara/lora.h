// LoRA adapters for the decoder LLM, with PEFT's semantics: a named adapter holds, for every
// layer and every targeted projection, A [r, in] and B [out, r]; an adapted projection computes
// y = W x (+ b) + (B (A dropout(x))) * alpha / r in the adapter's dtype. Adapters live outside the
// model: a forward names the one adapter it uses (LlmForwardOptions::adapter), so several
// adapters share one frozen base and switching costs nothing.
//
// Names follow PEFT. State-dict keys (get_peft_model_state_dict, what CLaRa's adapters.pth holds)
// have no adapter name: "model.layers.0.self_attn.q_proj.lora_A.weight". Runtime parameter names
// insert it: "model.layers.0.self_attn.q_proj.lora_A.decoder_adapter.weight". The standard PEFT
// file layout (adapter_model.safetensors) prefixes "base_model.model.".
#pragma once

#include <hrmclara/llm_config.h>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <array>
#include <string>
#include <utility>
#include <vector>

namespace hrmclara {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// The seven linear projections of a Mistral/Llama layer, in PEFT's state-dict order.
enum class LoraTarget : int { kQ = 0, kK, kV, kO, kGate, kUp, kDown };
inline constexpr int kLoraTargetCount = 7;
// "self_attn.q_proj", ..., "mlp.down_proj" (the module path inside a layer).
const char* lora_target_path(LoraTarget target);
// "q_proj", ..., "down_proj" (PEFT's target_modules names).
const char* lora_target_name(LoraTarget target);

struct LoraConfig {
  int64_t r = 16;
  double alpha = 32;     // scaling = alpha / r (CLaRa: alpha = 2r)
  double dropout = 0.1;  // on the projection's input, training forwards only
  // Targeted projections by PEFT name; all seven ("all-linear" on Mistral/Llama, lm_head excluded).
  std::vector<std::string> target_modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  double scaling() const { return alpha / static_cast<double>(r); }
  bool targets(LoraTarget t) const;
  void validate() const;  // throws ConfigError naming the field
};

class LoraAdapter {
 public:
  LoraAdapter() = default;
  // An adapter for every layer of `model` with A and B zero, in `dtype` on `device`.
  LoraAdapter(std::string name, LoraConfig config, const LlmConfig& model, c10::ScalarType dtype, c10::Device device);

  // PEFT's initialisation: A kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in));
  // B zero (so a fresh adapter changes nothing).
  void reset_parameters(at::Generator& generator);

  const std::string& name() const { return name_; }
  const LoraConfig& config() const { return config_; }
  int64_t layers() const { return static_cast<int64_t>(a_.size()); }
  bool empty() const { return a_.empty(); }
  c10::ScalarType dtype() const;
  bool has(int64_t layer, LoraTarget t) const;
  const at::Tensor& A(int64_t layer, LoraTarget t) const;
  const at::Tensor& B(int64_t layer, LoraTarget t) const;

  // State-dict keys without the adapter name, in PEFT's order (layer; q, k, v, o, gate, up, down;
  // lora_A then lora_B).
  NamedTensors state_dict() const;
  // Runtime names (with the adapter name), the same order.
  NamedTensors named_parameters() const;
  std::vector<at::Tensor> parameters() const;
  // Replaces every tensor from `state` (keys as state_dict(); values cast to this adapter's dtype
  // and device). Strict: a missing, unexpected or misshaped key is a ShapeError naming `source`
  // and the key.
  void load_state_dict(const NamedTensors& state, const std::string& source);

  void set_requires_grad(bool trainable);
  bool requires_grad() const;
  // A deep copy under another name (upstream's query reasoner starts as a copy of the encoder).
  LoraAdapter clone(const std::string& new_name) const;
  void to(c10::ScalarType dtype, c10::Device device);

  // The projection's LoRA term for input x: (B (A dropout(x))) * scaling, in the adapter's dtype
  // (x is cast to it), as PEFT computes it; undefined when the adapter does not target `t`.
  at::Tensor delta(const at::Tensor& x, int64_t layer, LoraTarget t, bool dropout) const;
  // scaling * B @ A, the weight change merging adds (computed in float32, returned in `dtype`).
  at::Tensor delta_weight(int64_t layer, LoraTarget t, c10::ScalarType dtype) const;

 private:
  std::string key(int64_t layer, LoraTarget t, const char* which, bool with_name) const;
  std::string name_;
  LoraConfig config_;
  std::vector<std::array<at::Tensor, kLoraTargetCount>> a_, b_;  // per layer; undefined when not targeted
};

// ---- files ------------------------------------------------------------------------------------

// The standard PEFT layout: DIR/adapter_model.safetensors (keys "base_model.model.<state key>")
// and DIR/adapter_config.json (r, lora_alpha, lora_dropout, target_modules, ...). Reads adapters
// trained with PEFT on any Mistral/Llama; `model` gives the shapes. Throws naming the file.
LoraAdapter read_peft_adapter(const std::string& dir, const std::string& name, const LlmConfig& model,
                              c10::ScalarType dtype, c10::Device device);
void write_peft_adapter(const std::string& dir, const LoraAdapter& adapter, const std::string& base_model_name = "");

// Reads a PEFT-style LoraConfig from adapter_config.json (the fields PEFT writes); ConfigError
// naming the file for unsupported settings (DoRA, rank patterns, fan_in_fan_out, ...).
LoraConfig read_peft_config(const std::string& adapter_config_json);

// Upstream CLaRa's adapters.pth: a torch.save dict of adapter name -> PEFT state dict (read_torch_save
// flattens it to "name.key"). Per adapter, in file order, its LoRA tensors under their PEFT keys,
// and apart from them the model.embed_tokens / lm_head copies PEFT adds when the vocabulary was
// resized. FormatError naming the file for an entry outside an adapter dict or a file without any
// LoRA adapter. (Loading them, by upstream's stage semantics, is ClaraModel's.)
struct AdapterGroups {
  std::vector<std::pair<std::string, NamedTensors>> lora;
  std::vector<std::pair<std::string, NamedTensors>> base_copies;
};
AdapterGroups read_adapter_groups(const std::string& adapters_pth);

}  // namespace hrmclara
