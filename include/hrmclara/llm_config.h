// A decoder LLM's architecture as a Hugging Face config.json describes it (Mistral, Llama,
// Qwen2). Torch-free, so config handling compiles without LibTorch's headers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace hrmclara {

struct LlmConfig {
  std::string model_type = "mistral";  // mistral | llama | qwen2
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;  // hidden_size / num_attention_heads unless config.json says otherwise
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  // rope_scaling: "default" (none), "linear" (positions / factor) or "llama3" (Llama 3.1's
  // frequency-dependent scaling).
  std::string rope_type = "default";
  double rope_factor = 1.0;
  double rope_low_freq_factor = 1.0;
  double rope_high_freq_factor = 4.0;
  int64_t rope_original_max_positions = 8192;
  int64_t max_position_embeddings = 4096;
  int64_t sliding_window = 0;  // 0: full attention
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v biases (Qwen2 always; Llama's attention_bias sets o_proj_bias too)
  bool o_proj_bias = false;
  bool mlp_bias = false;
  int64_t bos_token_id = 1;
  std::vector<int64_t> eos_token_ids = {2};
  int64_t pad_token_id = -1;  // -1: none
  // The dtype the weights were saved in (config.json's torch_dtype, or dtype in newer
  // transformers): float32, bfloat16, float16, or empty when absent. `--dtype auto` starts from it.
  std::string torch_dtype;

  // Parses a Hugging Face config.json. Throws FormatError naming `where` and the field for
  // missing or inconsistent fields and for architectures or activations it does not support.
  static LlmConfig from_json_text(const std::string& json_text, const std::string& where);
  static LlmConfig load(const std::string& config_json_path);
  std::string to_json_text() const;  // a config.json this class reads back

  int64_t parameter_count() const;  // every weight the model holds
};

}  // namespace hrmclara
