// CLaRa's configuration (apple/ml-clara CLaRaConfig): compression rate, document length, top-k,
// LoRA rank, training stage. Read from upstream's checkpoint config.json (model_type "CLaRa") or a
// clara_config.json; torch-free.
#pragma once

#include <hrmclara/config.h>

#include <cstdint>
#include <string>
#include <vector>

namespace hrmclara::clara {

// Upstream's adapter names.
inline constexpr const char* kEncoderAdapter = "encoder_adapter";
inline constexpr const char* kDecoderAdapter = "decoder_adapter";
inline constexpr const char* kQueryAdapter = "query_reasoner_adapter";

struct ClaraConfig {
  int64_t compr_rate = 32;         // document tokens per memory vector
  int64_t doc_max_length = 256;    // tokens of a document chunk
  int64_t generation_top_k = 1;    // documents spliced into one decoder prompt
  int64_t lora_r = 16;
  double lora_alpha = 0;           // 0: upstream's 2 * lora_r
  double lora_dropout = 0.1;
  bool sep = true;                 // a <SEP> closes every document slot
  bool different_mem_tokens = true;
  std::string training_stage = "stage1";  // stage1 | stage1_2 | stage2
  bool pure_inference = false;     // load every adapter of a checkpoint as it is
  std::string decoder_model_name;  // informational: the base is given explicitly
  int64_t max_new_tokens = 128;

  // n = doc_max_length / compr_rate memory tokens per document.
  int64_t mem_tokens() const { return doc_max_length / compr_rate; }
  double alpha() const { return lora_alpha > 0 ? lora_alpha : 2.0 * static_cast<double>(lora_r); }
  // Throws ConfigError naming `where` and the field.
  void validate(const std::string& where) const;

  // Reads upstream's config.json (model_type "CLaRa") or our clara_config.json. Unknown upstream
  // fields are ignored (upstream's config carries many unused ones); known ones are type-checked.
  static ClaraConfig from_json(const Json& j, const std::string& where);
  static ClaraConfig load(const std::string& path);
  // The checkpoint directory's config: config.json when its model_type is CLaRa, else
  // clara_config.json. Throws IoError when neither exists.
  static ClaraConfig load_from_dir(const std::string& dir, std::string* path_used = nullptr);
  // key=value overrides of the fields above (generation_top_k=2, doc_max_length=32, ...).
  void apply_overrides(const std::vector<std::string>& overrides, const std::string& where);

  // upstream's config.json (model_type CLaRa, auto_map, the fields upstream's from_pretrained reads).
  Json to_upstream_json() const;
};

// Stage names: upstream's, and readable aliases (compress-pretrain, instruction-tune, end-to-end).
std::string canonical_stage(const std::string& name);

}  // namespace hrmclara::clara
