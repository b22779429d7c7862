// CLaRaConfig from upstream's config.json or our clara_config.json (see clara_config.h).
#include <hrmclara/clara_config.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>

namespace hrmclara::clara {

namespace {

int64_t int_field(const Json& j, const char* key, int64_t fallback, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_number_integer()) throw ConfigError(where + ": field '" + key + "' must be an integer");
  return j[key].get<int64_t>();
}

double number_field(const Json& j, const char* key, double fallback, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_number()) throw ConfigError(where + ": field '" + key + "' must be a number");
  return j[key].get<double>();
}

bool bool_field(const Json& j, const char* key, bool fallback, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_boolean()) throw ConfigError(where + ": field '" + key + "' must be true or false");
  return j[key].get<bool>();
}

std::string string_field(const Json& j, const char* key, const std::string& fallback, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_string()) throw ConfigError(where + ": field '" + key + "' must be a string");
  return j[key].get<std::string>();
}

}  // namespace

std::string canonical_stage(const std::string& name) {
  if (name == "stage1" || name == "compress-pretrain" || name == "pretrain") return "stage1";
  if (name == "stage1_2" || name == "instruction-tune" || name == "instruct") return "stage1_2";
  if (name == "stage2" || name == "end-to-end" || name == "e2e") return "stage2";
  throw ConfigError("unknown CLaRa training stage '" + name +
                    "' (stage1 | stage1_2 | stage2, or compress-pretrain | instruction-tune | end-to-end)");
}

void ClaraConfig::validate(const std::string& where) const {
  auto fail = [&](const std::string& field, const std::string& what) {
    throw ConfigError(where + ": field '" + field + "' " + what);
  };
  if (compr_rate < 1) fail("compr_rate", "must be >= 1");
  if (doc_max_length < 1) fail("doc_max_length", "must be >= 1");
  if (mem_tokens() < 1) fail("compr_rate", "leaves no memory token (doc_max_length / compr_rate < 1)");
  if (generation_top_k < 1) fail("generation_top_k", "must be >= 1");
  if (lora_r < 1) fail("lora_r", "must be >= 1");
  if (lora_alpha < 0) fail("lora_alpha", "must not be negative");
  if (!(lora_dropout >= 0 && lora_dropout < 1)) fail("lora_dropout", "must be in [0, 1)");
  if (!sep) fail("sep", "is false; upstream's checkpoints and training all use sep = true, the only layout supported");
  if (!different_mem_tokens)
    fail("different_mem_tokens", "is false; upstream's checkpoints all use distinct <MEMi> tokens, the only layout supported");
  if (max_new_tokens < 0) fail("max_new_tokens", "must not be negative");
  try {
    canonical_stage(training_stage);
  } catch (const ConfigError& e) {
    fail("training_stage", std::string("is invalid: ") + e.what());
  }
}

ClaraConfig ClaraConfig::from_json(const Json& j, const std::string& where) {
  if (!j.is_object()) throw ConfigError(where + ": expected a JSON object");
  if (j.contains("model_type") && j["model_type"] != "CLaRa")
    throw ConfigError(where + ": field 'model_type' is " + j["model_type"].dump() + ", not \"CLaRa\"");
  ClaraConfig c;
  c.compr_rate = int_field(j, "compr_rate", c.compr_rate, where);
  c.doc_max_length = int_field(j, "doc_max_length", c.doc_max_length, where);
  c.generation_top_k = int_field(j, "generation_top_k", c.generation_top_k, where);
  c.lora_r = int_field(j, "lora_r", c.lora_r, where);
  c.lora_alpha = number_field(j, "lora_alpha", c.lora_alpha, where);
  c.lora_dropout = number_field(j, "lora_dropout", c.lora_dropout, where);
  c.sep = bool_field(j, "sep", c.sep, where);
  c.different_mem_tokens = bool_field(j, "different_mem_tokens", c.different_mem_tokens, where);
  c.training_stage = string_field(j, "training_stage", c.training_stage, where);
  c.pure_inference = bool_field(j, "pure_inference", c.pure_inference, where);
  c.decoder_model_name = string_field(j, "decoder_model_name", "", where);
  c.max_new_tokens = int_field(j, "max_new_tokens", c.max_new_tokens, where);
  // compr_rate is validated below; 0 or a negative rate must not reach the division first.
  if (j.contains("n_mem_tokens") && c.compr_rate > 0 && int_field(j, "n_mem_tokens", 0, where) != c.mem_tokens())
    throw ConfigError(where + ": field 'n_mem_tokens' is " + j["n_mem_tokens"].dump() + " but doc_max_length / compr_rate = " +
                      std::to_string(c.mem_tokens()));
  if (bool_field(j, "lora", true, where) == false) throw ConfigError(where + ": field 'lora' is false; CLaRa without LoRA is not supported");
  if (j.contains("quantization") && j["quantization"].is_string() && j["quantization"] != "no")
    throw ConfigError(where + ": field 'quantization' is " + j["quantization"].dump() + "; only \"no\" is supported");
  if (j.contains("compr_model_name") && !j["compr_model_name"].is_null())
    throw ConfigError(where + ": field 'compr_model_name' is set; the separate (BERT-style) compressor is not supported");
  try {
    c.training_stage = canonical_stage(c.training_stage);
  } catch (const ConfigError& e) {
    throw ConfigError(where + ": field 'training_stage': " + e.what());
  }
  c.validate(where);
  return c;
}

ClaraConfig ClaraConfig::load(const std::string& path) { return from_json(read_json_file(path), path); }

ClaraConfig ClaraConfig::load_from_dir(const std::string& dir, std::string* path_used) {
  const std::string upstream = dir + "/config.json", ours = dir + "/clara_config.json";
  if (file_exists(upstream)) {
    const Json j = read_json_file(upstream);
    if (j.is_object() && j.contains("model_type") && j["model_type"] == "CLaRa") {
      if (path_used) *path_used = upstream;
      return from_json(j, upstream);
    }
  }
  if (file_exists(ours)) {
    if (path_used) *path_used = ours;
    return load(ours);
  }
  throw IoError(dir + ": no CLaRa config (config.json with model_type \"CLaRa\", or clara_config.json)");
}

void ClaraConfig::apply_overrides(const std::vector<std::string>& overrides, const std::string& where) {
  Json j = {{"compr_rate", compr_rate},         {"doc_max_length", doc_max_length}, {"generation_top_k", generation_top_k},
            {"lora_r", lora_r},                 {"lora_alpha", lora_alpha},         {"lora_dropout", lora_dropout},
            {"training_stage", training_stage}, {"pure_inference", pure_inference}, {"max_new_tokens", max_new_tokens},
            {"decoder_model_name", decoder_model_name}};
  j = hrmclara::apply_overrides(j, overrides);
  *this = from_json(j, where);
}

Json ClaraConfig::to_upstream_json() const {
  return Json{{"model_type", "CLaRa"},
              {"auto_map", {{"AutoConfig", "modeling_clara.CLaRaConfig"}, {"AutoModel", "modeling_clara.CLaRa"}}},
              {"architectures", {"CLaRa"}},
              {"decoder_model_name", decoder_model_name},
              {"compr_rate", compr_rate},
              {"doc_max_length", doc_max_length},
              {"generation_top_k", generation_top_k},
              {"lora", true},
              {"lora_r", lora_r},
              {"lora_alpha", alpha()},
              {"lora_dropout", lora_dropout},
              {"sep", sep},
              {"different_mem_tokens", different_mem_tokens},
              {"training_stage", training_stage},
              {"pure_inference", pure_inference},
              {"max_new_tokens", max_new_tokens},
              {"compr_model_name", nullptr},
              {"compr_use_mlp", false},
              {"quantization", "no"},
              {"kbtc_training", false},
              {"optimize_mem_tokens", true},
              {"training_form", "both_separately"},
              {"attn_implementation", nullptr},
              {"device_map", nullptr},
              {"load_adapters", true},
              {"lora_compressor", false}};
}

}  // namespace hrmclara::clara
