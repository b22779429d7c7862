// The tiny Mistral of tests/fixtures/clara-reference (config.json), the base the adapter
// harnesses load LoRA weights for; compiled in so the harnesses need no file for it.
#pragma once

#include <hrmclara/llm_config.h>

namespace hrmclara_fuzz {

inline const hrmclara::LlmConfig& tiny_mistral() {
  static const hrmclara::LlmConfig config = hrmclara::LlmConfig::from_json_text(R"({
    "model_type": "mistral", "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "silu", "rms_norm_eps": 1e-05,
    "rope_theta": 1000000.0, "max_position_embeddings": 32768, "sliding_window": null, "vocab_size": 647,
    "tie_word_embeddings": false, "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 1})",
                                                                                 "tiny-mistral");
  return config;
}

}  // namespace hrmclara_fuzz
