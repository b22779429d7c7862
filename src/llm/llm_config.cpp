// Hugging Face config.json -> LlmConfig, with the defaults transformers' Mistral / Llama / Qwen2
// config classes use when a field is absent.
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/llm_config.h>

#include <nlohmann/json.hpp>

namespace hrmclara {

namespace {

using Json = nlohmann::json;

class Fields {
 public:
  Fields(const Json& j, std::string where) : j_(j), where_(std::move(where)) {}

  bool present(const char* key) const { return j_.contains(key) && !j_.at(key).is_null(); }

  int64_t integer(const char* key) const {
    if (!present(key)) fail(key, "is missing");
    return integer_of(j_.at(key), key);
  }
  int64_t integer(const char* key, int64_t fallback) const { return present(key) ? integer(key) : fallback; }

  double number(const char* key, double fallback) const {
    if (!present(key)) return fallback;
    if (!j_.at(key).is_number()) fail(key, "must be a number");
    return j_.at(key).get<double>();
  }
  bool boolean(const char* key, bool fallback) const {
    if (!present(key)) return fallback;
    if (!j_.at(key).is_boolean()) fail(key, "must be true or false");
    return j_.at(key).get<bool>();
  }
  std::string text(const char* key, const std::string& fallback) const {
    if (!present(key)) return fallback;
    if (!j_.at(key).is_string()) fail(key, "must be a string");
    return j_.at(key).get<std::string>();
  }
  // An id or a list of ids (eos_token_id may be either).
  std::vector<int64_t> ids(const char* key, std::vector<int64_t> fallback) const {
    if (!present(key)) return fallback;
    const Json& v = j_.at(key);
    if (!v.is_array()) return {integer_of(v, key)};
    std::vector<int64_t> out;
    for (const auto& e : v) out.push_back(integer_of(e, key));
    return out;
  }
  const Json& object(const char* key) const { return j_.at(key); }

  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw ConfigError(where_ + ": field '" + key + "' " + what);
  }

 private:
  int64_t integer_of(const Json& v, const std::string& key) const {
    if (!v.is_number_integer()) fail(key, "must be an integer");
    return v.get<int64_t>();
  }
  const Json& j_;
  std::string where_;
};

}  // namespace

LlmConfig LlmConfig::from_json_text(const std::string& json_text, const std::string& where) {
  Json j;
  try {
    j = Json::parse(json_text);
  } catch (const Json::exception& e) {
    throw FormatError(where + ": not valid JSON (" + std::string(e.what()).substr(0, 120) + ")");
  }
  if (!j.is_object()) throw FormatError(where + ": expected a JSON object");
  const Fields f(j, where);
  LlmConfig c;
  c.model_type = f.text("model_type", "");
  if (c.model_type != "mistral" && c.model_type != "llama" && c.model_type != "qwen2")
    f.fail("model_type", "is '" + c.model_type + "'; supported: mistral, llama, qwen2");
  const std::string act = f.text("hidden_act", "silu");
  if (act != "silu") f.fail("hidden_act", "is '" + act + "'; only silu is supported");

  c.vocab_size = f.integer("vocab_size");
  c.hidden_size = f.integer("hidden_size");
  c.intermediate_size = f.integer("intermediate_size");
  c.num_hidden_layers = f.integer("num_hidden_layers");
  c.num_attention_heads = f.integer("num_attention_heads");
  c.num_key_value_heads = f.integer("num_key_value_heads", c.num_attention_heads);
  if (c.num_attention_heads <= 0) f.fail("num_attention_heads", "must be positive");
  c.head_dim = f.integer("head_dim", c.hidden_size / c.num_attention_heads);
  c.rms_norm_eps = f.number("rms_norm_eps", 1e-6);
  c.rope_theta = f.number("rope_theta", 10000.0);
  c.max_position_embeddings = f.integer("max_position_embeddings", 4096);
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);
  c.bos_token_id = f.integer("bos_token_id", 1);
  c.eos_token_ids = f.ids("eos_token_id", {2});
  c.pad_token_id = f.integer("pad_token_id", -1);
  const std::string saved = f.text("torch_dtype", f.text("dtype", ""));
  if (saved == "float32" || saved == "float" || saved == "fp32") c.torch_dtype = "float32";
  else if (saved == "bfloat16" || saved == "bf16") c.torch_dtype = "bfloat16";
  else if (saved == "float16" || saved == "half" || saved == "fp16") c.torch_dtype = "float16";

  if (c.model_type == "qwen2") {
    c.attention_bias = true;  // Qwen2 always biases q, k and v (never o)
    if (f.boolean("use_sliding_window", false))
      f.fail("use_sliding_window", "is true; Qwen2's per-layer sliding window is not supported");
  } else {
    c.attention_bias = c.o_proj_bias = f.boolean("attention_bias", false);
    c.mlp_bias = f.boolean("mlp_bias", false);
    c.sliding_window = f.integer("sliding_window", 0);
  }

  if (f.present("rope_scaling")) {
    const Json& r = f.object("rope_scaling");
    if (!r.is_object()) f.fail("rope_scaling", "must be an object or null");
    const Fields rf(r, where + ": rope_scaling");
    c.rope_type = rf.text("rope_type", rf.text("type", "default"));
    if (c.rope_type != "default" && c.rope_type != "linear" && c.rope_type != "llama3")
      rf.fail("rope_type", "is '" + c.rope_type + "'; supported: default, linear, llama3");
    c.rope_factor = rf.number("factor", 1.0);
    c.rope_low_freq_factor = rf.number("low_freq_factor", 1.0);
    c.rope_high_freq_factor = rf.number("high_freq_factor", 4.0);
    c.rope_original_max_positions = rf.integer("original_max_position_embeddings", 8192);
    if (c.rope_factor <= 0) rf.fail("factor", "must be positive");
    if (c.rope_type == "llama3" && !(c.rope_high_freq_factor > c.rope_low_freq_factor))
      rf.fail("high_freq_factor", "must exceed low_freq_factor");
  }

  // Upper bounds far beyond any released model (Llama 3: vocab 128256, hidden 16384, 126 layers)
  // keep every product of them, parameter_count() included, inside int64.
  auto positive = [&](int64_t v, const char* key) {
    if (v <= 0) f.fail(key, "must be positive (got " + std::to_string(v) + ")");
    const int64_t most = std::string(key) == "vocab_size" ? int64_t{1} << 24
                         : std::string(key) == "intermediate_size" ? int64_t{1} << 22
                         : std::string(key) == "hidden_size" ? int64_t{1} << 20
                         : std::string(key) == "head_dim" ? int64_t{1} << 16 : int64_t{1} << 12;
    if (v > most) f.fail(key, "is " + std::to_string(v) + ", beyond " + std::to_string(most));
  };
  positive(c.vocab_size, "vocab_size");
  positive(c.hidden_size, "hidden_size");
  positive(c.intermediate_size, "intermediate_size");
  positive(c.num_hidden_layers, "num_hidden_layers");
  positive(c.num_key_value_heads, "num_key_value_heads");
  positive(c.head_dim, "head_dim");
  if (c.head_dim % 2) f.fail("head_dim", "must be even for RoPE (got " + std::to_string(c.head_dim) + ")");
  if (c.num_attention_heads % c.num_key_value_heads)
    f.fail("num_key_value_heads", "must divide num_attention_heads (" + std::to_string(c.num_attention_heads) + ")");
  if (c.sliding_window < 0) f.fail("sliding_window", "must not be negative");
  if (!(c.rms_norm_eps > 0)) f.fail("rms_norm_eps", "must be positive");
  if (!(c.rope_theta > 0)) f.fail("rope_theta", "must be positive");
  return c;
}

LlmConfig LlmConfig::load(const std::string& config_json_path) {
  return from_json_text(read_file(config_json_path, kMaxConfigFileBytes), config_json_path);
}

std::string LlmConfig::to_json_text() const {
  Json j = {
      {"model_type", model_type},
      {"architectures", {model_type == "mistral" ? "MistralForCausalLM"
                         : model_type == "llama" ? "LlamaForCausalLM"
                                                 : "Qwen2ForCausalLM"}},
      {"vocab_size", vocab_size},
      {"hidden_size", hidden_size},
      {"intermediate_size", intermediate_size},
      {"num_hidden_layers", num_hidden_layers},
      {"num_attention_heads", num_attention_heads},
      {"num_key_value_heads", num_key_value_heads},
      {"head_dim", head_dim},
      {"hidden_act", "silu"},
      {"rms_norm_eps", rms_norm_eps},
      {"rope_theta", rope_theta},
      {"max_position_embeddings", max_position_embeddings},
      {"tie_word_embeddings", tie_word_embeddings},
      {"bos_token_id", bos_token_id},
      {"eos_token_id", eos_token_ids.size() == 1 ? Json(eos_token_ids[0]) : Json(eos_token_ids)},
      {"pad_token_id", pad_token_id >= 0 ? Json(pad_token_id) : Json(nullptr)},
  };
  if (!torch_dtype.empty()) j["torch_dtype"] = torch_dtype;
  if (model_type != "qwen2") {
    j["attention_bias"] = attention_bias;
    j["mlp_bias"] = mlp_bias;
    j["sliding_window"] = sliding_window > 0 ? Json(sliding_window) : Json(nullptr);
  }
  if (rope_type != "default")
    j["rope_scaling"] = {{"rope_type", rope_type},
                         {"factor", rope_factor},
                         {"low_freq_factor", rope_low_freq_factor},
                         {"high_freq_factor", rope_high_freq_factor},
                         {"original_max_position_embeddings", rope_original_max_positions}};
  return j.dump(1);
}

int64_t LlmConfig::parameter_count() const {
  const int64_t h = hidden_size, q = num_attention_heads * head_dim, kv = num_key_value_heads * head_dim;
  int64_t layer = h * q + 2 * h * kv + q * h + 3 * h * intermediate_size + 2 * h;
  if (attention_bias) layer += q + 2 * kv;
  if (o_proj_bias) layer += h;
  if (mlp_bias) layer += 2 * intermediate_size + h;
  return vocab_size * h * (tie_word_embeddings ? 1 : 2) + num_hidden_layers * layer + h;
}

}  // namespace hrmclara
