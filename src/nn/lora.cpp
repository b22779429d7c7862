// LoRA adapters (see include/hrmclara/lora.h): shapes, PEFT's initialisation and numerics, state
// dicts under PEFT's names, and the standard PEFT file layout.
#include <hrmclara/config.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/lora.h>
#include <hrmclara/tensor_io.h>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cmath>
#include <map>
#include <set>

namespace hrmclara {

namespace {

constexpr std::array<const char*, kLoraTargetCount> kPaths = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
constexpr std::array<const char*, kLoraTargetCount> kNames = {"q_proj",    "k_proj", "v_proj",   "o_proj",
                                                              "gate_proj", "up_proj", "down_proj"};

LoraTarget target_at(int i) { return static_cast<LoraTarget>(i); }

// [out, in] of a projection.
std::pair<int64_t, int64_t> projection_shape(const LlmConfig& c, LoraTarget t) {
  const int64_t h = c.hidden_size, q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim,
                im = c.intermediate_size;
  switch (t) {
    case LoraTarget::kQ: return {q, h};
    case LoraTarget::kK:
    case LoraTarget::kV: return {kv, h};
    case LoraTarget::kO: return {h, q};
    case LoraTarget::kGate:
    case LoraTarget::kUp: return {im, h};
    case LoraTarget::kDown: return {h, im};
  }
  return {0, 0};
}

const std::string kPeftPrefix = "base_model.model.";

}  // namespace

const char* lora_target_path(LoraTarget target) { return kPaths[static_cast<size_t>(target)]; }
const char* lora_target_name(LoraTarget target) { return kNames[static_cast<size_t>(target)]; }

bool LoraConfig::targets(LoraTarget t) const {
  for (const auto& m : target_modules)
    if (m == lora_target_name(t)) return true;
  return false;
}

void LoraConfig::validate() const {
  // PEFT allows any rank; beyond 65536 an adapter outweighs any model it could adapt.
  if (r < 1 || r > 65536) throw ConfigError("LoRA: r must be in [1, 65536] (got " + std::to_string(r) + ")");
  if (!(alpha > 0)) throw ConfigError("LoRA: lora_alpha must be positive");
  if (!(dropout >= 0 && dropout < 1)) throw ConfigError("LoRA: lora_dropout must be in [0, 1)");
  if (target_modules.empty()) throw ConfigError("LoRA: target_modules is empty");
  for (const auto& m : target_modules) {
    bool known = false;
    for (const char* n : kNames) known = known || m == n;
    if (!known)
      throw ConfigError("LoRA: target module '" + m +
                        "' is not a projection of a Mistral/Llama layer (q_proj, k_proj, v_proj, o_proj, gate_proj, "
                        "up_proj, down_proj)");
  }
}

LoraAdapter::LoraAdapter(std::string name, LoraConfig config, const LlmConfig& model, c10::ScalarType dtype,
                         c10::Device device)
    : name_(std::move(name)), config_(std::move(config)) {
  config_.validate();
  if (name_.empty() || name_.find('.') != std::string::npos)
    throw UsageError("LoRA adapter name '" + name_ + "' must be non-empty and contain no '.'");
  const auto opts = at::TensorOptions().dtype(dtype).device(device);
  a_.resize(static_cast<size_t>(model.num_hidden_layers));
  b_.resize(static_cast<size_t>(model.num_hidden_layers));
  for (int64_t l = 0; l < model.num_hidden_layers; ++l)
    for (int i = 0; i < kLoraTargetCount; ++i) {
      if (!config_.targets(target_at(i))) continue;
      const auto [out, in] = projection_shape(model, target_at(i));
      a_[l][i] = at::zeros({config_.r, in}, opts);
      b_[l][i] = at::zeros({out, config_.r}, opts);
    }
}

void LoraAdapter::reset_parameters(at::Generator& generator) {
  c10::NoGradGuard no_grad;
  for (size_t l = 0; l < a_.size(); ++l)
    for (int i = 0; i < kLoraTargetCount; ++i) {
      if (!a_[l][i].defined()) continue;
      const double bound = 1.0 / std::sqrt(static_cast<double>(a_[l][i].size(1)));
      a_[l][i].copy_(at::empty(a_[l][i].sizes(), at::kFloat).uniform_(-bound, bound, generator));
      b_[l][i].zero_();
    }
}

c10::ScalarType LoraAdapter::dtype() const {
  for (const auto& layer : a_)
    for (const auto& t : layer)
      if (t.defined()) return t.scalar_type();
  return c10::kFloat;
}

bool LoraAdapter::has(int64_t layer, LoraTarget t) const {
  return layer >= 0 && layer < layers() && a_[static_cast<size_t>(layer)][static_cast<size_t>(t)].defined();
}

const at::Tensor& LoraAdapter::A(int64_t layer, LoraTarget t) const {
  return a_.at(static_cast<size_t>(layer))[static_cast<size_t>(t)];
}
const at::Tensor& LoraAdapter::B(int64_t layer, LoraTarget t) const {
  return b_.at(static_cast<size_t>(layer))[static_cast<size_t>(t)];
}

std::string LoraAdapter::key(int64_t layer, LoraTarget t, const char* which, bool with_name) const {
  return "model.layers." + std::to_string(layer) + "." + lora_target_path(t) + "." + which + "." +
         (with_name ? name_ + "." : std::string()) + "weight";
}

NamedTensors LoraAdapter::state_dict() const {
  NamedTensors out;
  for (int64_t l = 0; l < layers(); ++l)
    for (int i = 0; i < kLoraTargetCount; ++i) {
      if (!has(l, target_at(i))) continue;
      out.emplace_back(key(l, target_at(i), "lora_A", false), A(l, target_at(i)));
      out.emplace_back(key(l, target_at(i), "lora_B", false), B(l, target_at(i)));
    }
  return out;
}

NamedTensors LoraAdapter::named_parameters() const {
  NamedTensors out;
  for (int64_t l = 0; l < layers(); ++l)
    for (int i = 0; i < kLoraTargetCount; ++i) {
      if (!has(l, target_at(i))) continue;
      out.emplace_back(key(l, target_at(i), "lora_A", true), A(l, target_at(i)));
      out.emplace_back(key(l, target_at(i), "lora_B", true), B(l, target_at(i)));
    }
  return out;
}

std::vector<at::Tensor> LoraAdapter::parameters() const {
  std::vector<at::Tensor> out;
  for (const auto& [name, t] : named_parameters()) out.push_back(t);
  return out;
}

void LoraAdapter::load_state_dict(const NamedTensors& state, const std::string& source) {
  std::map<std::string, at::Tensor*> slots;
  for (int64_t l = 0; l < layers(); ++l)
    for (int i = 0; i < kLoraTargetCount; ++i) {
      if (!has(l, target_at(i))) continue;
      slots[key(l, target_at(i), "lora_A", false)] = &a_[static_cast<size_t>(l)][static_cast<size_t>(i)];
      slots[key(l, target_at(i), "lora_B", false)] = &b_[static_cast<size_t>(l)][static_cast<size_t>(i)];
    }
  std::set<std::string> seen;
  c10::NoGradGuard no_grad;
  for (const auto& [name, value] : state) {
    const auto it = slots.find(name);
    if (it == slots.end())
      throw ShapeError(source + ": adapter '" + name_ + "': unexpected tensor '" + name +
                       "' (not a LoRA weight of this model with target modules and rank as configured)");
    if (value.sizes() != it->second->sizes())
      throw ShapeError(source + ": adapter '" + name_ + "': tensor '" + name + "' has shape " + shape_text(value.sizes()) +
                       ", this model needs " + shape_text(it->second->sizes()) + " (an adapter for another base or rank?)");
    if (!at::isFloatingType(value.scalar_type()))
      throw FormatError(source + ": adapter '" + name_ + "': tensor '" + name + "' is not a float tensor");
    if (!seen.insert(name).second) throw FormatError(source + ": adapter '" + name_ + "': tensor '" + name + "' appears twice");
    const bool grad = it->second->requires_grad();
    *it->second = value.to(it->second->device(), it->second->scalar_type()).clone().set_requires_grad(grad);
  }
  for (const auto& [name, slot] : slots)
    if (!seen.count(name)) throw ShapeError(source + ": adapter '" + name_ + "': tensor '" + name + "' is missing");
}

void LoraAdapter::set_requires_grad(bool trainable) {
  for (auto* side : {&a_, &b_})
    for (auto& layer : *side)
      for (auto& t : layer)
        if (t.defined()) t.set_requires_grad(trainable);
}

bool LoraAdapter::requires_grad() const {
  for (const auto& layer : a_)
    for (const auto& t : layer)
      if (t.defined()) return t.requires_grad();
  return false;
}

LoraAdapter LoraAdapter::clone(const std::string& new_name) const {
  if (new_name.empty() || new_name.find('.') != std::string::npos)
    throw UsageError("LoRA adapter name '" + new_name + "' must be non-empty and contain no '.'");
  LoraAdapter copy;
  copy.name_ = new_name;
  copy.config_ = config_;
  copy.a_ = a_;
  copy.b_ = b_;
  for (auto* side : {&copy.a_, &copy.b_})
    for (auto& layer : *side)
      for (auto& t : layer)
        if (t.defined()) t = t.detach().clone().set_requires_grad(t.requires_grad());
  return copy;
}

void LoraAdapter::to(c10::ScalarType dtype, c10::Device device) {
  for (auto* side : {&a_, &b_})
    for (auto& layer : *side)
      for (auto& t : layer)
        if (t.defined()) t = t.detach().to(device, dtype).set_requires_grad(t.requires_grad());
}

at::Tensor LoraAdapter::delta(const at::Tensor& x, int64_t layer, LoraTarget t, bool dropout) const {
  if (!has(layer, t)) return at::Tensor();
  const auto& a = A(layer, t);
  at::Tensor in = x.to(a.scalar_type());
  if (dropout && config_.dropout > 0) in = at::dropout(in, config_.dropout, /*train=*/true);
  return at::linear(at::linear(in, a), B(layer, t)) * config_.scaling();
}

at::Tensor LoraAdapter::delta_weight(int64_t layer, LoraTarget t, c10::ScalarType dtype) const {
  if (!has(layer, t)) return at::Tensor();
  const auto a = A(layer, t).detach().to(at::kFloat), b = B(layer, t).detach().to(at::kFloat);
  return (at::matmul(b, a) * config_.scaling()).to(dtype);
}

// ---- PEFT files ---------------------------------------------------------------------------------

LoraConfig read_peft_config(const std::string& path) {
  const Json j = read_json_file(path);
  if (!j.is_object()) throw FormatError(path + ": expected a JSON object");
  auto fail = [&](const std::string& field, const std::string& what) -> void {
    throw ConfigError(path + ": field '" + field + "' " + what);
  };
  auto is_set = [&](const char* key) { return j.contains(key) && !j[key].is_null(); };
  if (is_set("peft_type") && j["peft_type"] != "LORA") fail("peft_type", "is " + j["peft_type"].dump() + "; only LORA is supported");
  LoraConfig c;
  if (!j.contains("r") || !j["r"].is_number_integer()) fail("r", "must be an integer");
  c.r = j["r"].get<int64_t>();
  if (is_set("lora_alpha")) {
    if (!j["lora_alpha"].is_number()) fail("lora_alpha", "must be a number");
    c.alpha = j["lora_alpha"].get<double>();
  } else {
    c.alpha = 8;  // PEFT's default
  }
  if (is_set("lora_dropout") && !j["lora_dropout"].is_number()) fail("lora_dropout", "must be a number");
  c.dropout = is_set("lora_dropout") ? j["lora_dropout"].get<double>() : 0.0;
  for (const char* flag : {"use_dora", "use_rslora", "fan_in_fan_out", "use_qalora", "lora_bias"})
    if (is_set(flag) && (!j[flag].is_boolean() || j[flag].get<bool>())) fail(flag, "is set; not supported");
  if (is_set("bias") && j["bias"] != "none") fail("bias", "must be \"none\" (LoRA biases are not supported)");
  for (const char* pattern : {"rank_pattern", "alpha_pattern"})
    if (is_set(pattern) && !(j[pattern].is_object() && j[pattern].empty())) fail(pattern, "is not empty; not supported");
  for (const char* unsupported : {"layers_to_transform", "modules_to_save", "layer_replication", "exclude_modules",
                                   "trainable_token_indices", "target_parameters"})
    if (is_set(unsupported) && !(j[unsupported].is_array() && j[unsupported].empty())) fail(unsupported, "is set; not supported");
  if (is_set("target_modules")) {
    const Json& t = j["target_modules"];
    if (t.is_string()) {
      if (t != "all-linear") fail("target_modules", "is the pattern " + t.dump() + "; give a list of module names or \"all-linear\"");
    } else if (t.is_array()) {
      c.target_modules.clear();
      for (const auto& m : t) {
        if (!m.is_string()) fail("target_modules", "must hold strings");
        c.target_modules.push_back(m.get<std::string>());
      }
    } else {
      fail("target_modules", "must be a list or \"all-linear\"");
    }
  }
  try {
    c.validate();
  } catch (const ConfigError& e) {
    throw ConfigError(path + ": " + e.what());
  }
  return c;
}

LoraAdapter read_peft_adapter(const std::string& dir, const std::string& name, const LlmConfig& model,
                              c10::ScalarType dtype, c10::Device device) {
  const std::string config_path = dir + "/adapter_config.json";
  const std::string weights_path = dir + "/adapter_model.safetensors";
  if (!file_exists(config_path)) throw IoError(config_path + ": missing (not a PEFT adapter directory)");
  if (!file_exists(weights_path)) throw IoError(weights_path + ": missing (only the safetensors layout is read)");
  const LoraConfig config = read_peft_config(config_path);
  NamedTensors state;
  for (auto& [key, t] : read_safetensors(weights_path)) {
    if (key.compare(0, kPeftPrefix.size(), kPeftPrefix) != 0)
      throw FormatError(weights_path + ": tensor '" + key + "' does not start with '" + kPeftPrefix + "'");
    std::string k = key.substr(kPeftPrefix.size());
    // PEFT writes "...lora_A.weight"; older versions may keep the adapter name ("lora_A.default.weight").
    for (const char* side : {".lora_A.", ".lora_B."}) {
      const auto at = k.find(side);
      if (at == std::string::npos) continue;
      const auto rest = k.substr(at + 8);
      if (rest != "weight" && rest.size() > 7 && rest.compare(rest.size() - 7, 7, ".weight") == 0)
        k = k.substr(0, at + 8) + "weight";
    }
    // The rank the config states must be the rank the weights have before anything is allocated
    // for it (a config saying r = 10^9 asked for terabytes).
    if (k.find(".lora_A.") != std::string::npos && (t.dim() != 2 || t.size(0) != config.r))
      throw ShapeError(weights_path + ": tensor '" + key + "' has shape " + c10::str(t.sizes()) + ", but adapter_config.json says r = " +
                       std::to_string(config.r) + ": this model needs [" + std::to_string(config.r) + ", " +
                       std::to_string(t.dim() == 2 ? t.size(1) : 0) + "]");
    state.emplace_back(k, t);
  }
  LoraAdapter adapter(name, config, model, dtype, device);
  adapter.load_state_dict(state, weights_path);
  return adapter;
}

void write_peft_adapter(const std::string& dir, const LoraAdapter& adapter, const std::string& base_model_name) {
  make_directories(dir);
  NamedTensors state;
  for (const auto& [k, t] : adapter.state_dict()) state.emplace_back(kPeftPrefix + k, t.detach());
  write_safetensors(dir + "/adapter_model.safetensors", state, {{"format", "pt"}});
  const auto& c = adapter.config();
  Json config = {{"peft_type", "LORA"},
                 {"task_type", "CAUSAL_LM"},
                 {"r", c.r},
                 {"lora_alpha", c.alpha},
                 {"lora_dropout", c.dropout},
                 {"target_modules", c.target_modules},
                 {"bias", "none"},
                 {"fan_in_fan_out", false},
                 {"use_dora", false},
                 {"use_rslora", false},
                 {"init_lora_weights", true},
                 {"inference_mode", true},
                 {"modules_to_save", nullptr},
                 {"layers_to_transform", nullptr},
                 {"base_model_name_or_path", base_model_name}};
  write_json_file(dir + "/adapter_config.json", config);
}

AdapterGroups read_adapter_groups(const std::string& path) {
  static const std::string embed = "model.embed_tokens.weight", head = "lm_head.weight";
  AdapterGroups g;
  std::map<std::string, size_t> lora_at, copy_at;
  for (auto& [flat, t] : read_torch_save(path)) {
    const auto dot = flat.find('.');
    if (dot == std::string::npos || dot == 0)
      throw FormatError(path + ": entry '" + flat + "' is not inside an adapter dict ({adapter_name: state_dict})");
    const std::string name = flat.substr(0, dot), key = flat.substr(dot + 1);
    const bool copy = key == embed || key == head;
    auto& index = copy ? copy_at : lora_at;
    auto& list = copy ? g.base_copies : g.lora;
    if (!index.count(name)) {
      index[name] = list.size();
      list.emplace_back(name, NamedTensors{});
    }
    list[index[name]].second.emplace_back(key, t);
  }
  if (g.lora.empty()) throw FormatError(path + ": holds no LoRA adapter");
  return g;
}

}  // namespace hrmclara
