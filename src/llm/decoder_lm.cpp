// The decoder LLM: weights under Hugging Face names, loading from (sharded) safetensors, the
// forward pass with an optional KV cache, and embedding resizing.
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/llm.h>
#include <hrmclara/log.h>
#include <hrmclara/lora.h>
#include <hrmclara/tensor_io.h>

#include "nn/transformer_ops.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <ATen/CPUGeneratorImpl.h>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <map>
#include <set>

namespace hrmclara {

namespace {

struct LayerWeights {
  at::Tensor input_norm, post_norm;
  at::Tensor q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b;
  at::Tensor gate_w, gate_b, up_w, up_b, down_w, down_b;
};

// One expected weight: its HF name, where it lives in the model and its shape.
struct Slot {
  std::string name;
  at::Tensor* tensor;
  std::vector<int64_t> shape;
};

std::string in_dir(const std::string& dir, const std::string& name) { return dir + "/" + name; }

}  // namespace

int64_t KvCache::capacity() const { return keys.empty() ? 0 : keys.front().size(2); }

struct DecoderLM::Impl {
  LlmConfig config;
  c10::ScalarType dtype = c10::kFloat;
  c10::Device device = c10::Device(c10::kCPU);
  at::Tensor embed_tokens, final_norm, lm_head;  // lm_head undefined when tied
  std::vector<LayerWeights> layers;
  at::Tensor inv_freq;  // float32 on `device`
  std::unique_ptr<LoraAdapter> merged;  // a copy of the adapter merged into the weights, if any

  Impl(const LlmConfig& c, const LlmLoadOptions& o) : config(c), dtype(o.dtype), device(o.device), layers(c.num_hidden_layers) {
    if (dtype != c10::kFloat && dtype != c10::kBFloat16 && dtype != c10::kHalf)
      throw UsageError(std::string("model dtype must be float32, bfloat16 or float16, not ") + c10::toString(dtype));
    nn::RopeSpec rope{c.head_dim, c.rope_theta, c.rope_type, c.rope_factor, c.rope_low_freq_factor,
                      c.rope_high_freq_factor, c.rope_original_max_positions};
    inv_freq = nn::rope_inverse_frequencies(rope).to(device);
  }

  const at::Tensor& head() const { return lm_head.defined() ? lm_head : embed_tokens; }

  std::vector<Slot> slots() {
    const auto& c = config;
    const int64_t h = c.hidden_size, q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim,
                  im = c.intermediate_size;
    std::vector<Slot> s;
    // A projection's weight [out, in] and, when the config has one, its bias [out].
    auto projection = [&](const std::string& name, at::Tensor& w, at::Tensor& b, int64_t out, int64_t in, bool bias) {
      s.push_back({name + ".weight", &w, {out, in}});
      if (bias) s.push_back({name + ".bias", &b, {out}});
    };
    s.push_back({"model.embed_tokens.weight", &embed_tokens, {c.vocab_size, h}});
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
      auto& l = layers[i];
      const std::string p = "model.layers." + std::to_string(i) + ".";
      projection(p + "self_attn.q_proj", l.q_w, l.q_b, q, h, c.attention_bias);
      projection(p + "self_attn.k_proj", l.k_w, l.k_b, kv, h, c.attention_bias);
      projection(p + "self_attn.v_proj", l.v_w, l.v_b, kv, h, c.attention_bias);
      projection(p + "self_attn.o_proj", l.o_w, l.o_b, h, q, c.o_proj_bias);
      projection(p + "mlp.gate_proj", l.gate_w, l.gate_b, im, h, c.mlp_bias);
      projection(p + "mlp.up_proj", l.up_w, l.up_b, im, h, c.mlp_bias);
      projection(p + "mlp.down_proj", l.down_w, l.down_b, h, im, c.mlp_bias);
      s.push_back({p + "input_layernorm.weight", &l.input_norm, {h}});
      s.push_back({p + "post_attention_layernorm.weight", &l.post_norm, {h}});
    }
    s.push_back({"model.norm.weight", &final_norm, {h}});
    if (!c.tie_word_embeddings) s.push_back({"lm_head.weight", &lm_head, {c.vocab_size, h}});
    return s;
  }

  // Cast to the model's dtype and device. On CPU a tensor already in the right dtype is kept as it
  // is, i.e. still a view of the memory-mapped file.
  at::Tensor place(const at::Tensor& t) const { return t.to(device, dtype); }

  LlmForwardOutput forward(const LlmForwardInput& in, KvCache* cache, const LlmForwardOptions& opt) const;
};

DecoderLM::DecoderLM(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DecoderLM::DecoderLM(DecoderLM&&) noexcept = default;
DecoderLM& DecoderLM::operator=(DecoderLM&&) noexcept = default;
DecoderLM::~DecoderLM() = default;

const LlmConfig& DecoderLM::config() const { return impl_->config; }
c10::ScalarType DecoderLM::dtype() const { return impl_->dtype; }
c10::Device DecoderLM::device() const { return impl_->device; }

// ---- loading ---------------------------------------------------------------------------------

DecoderLM DecoderLM::load(const std::string& model_dir, const LlmLoadOptions& options) {
  if (!is_directory(model_dir)) throw IoError(model_dir + ": not a model directory");
  auto impl = std::make_unique<Impl>(LlmConfig::load(in_dir(model_dir, "config.json")), options);

  std::map<std::string, Slot> expected;
  for (auto& s : impl->slots()) expected.emplace(s.name, s);
  std::set<std::string> loaded;
  auto take_shard = [&](const std::string& path, NamedTensors& tensors) {
    for (auto& [name, tensor] : tensors) {
      const auto it = expected.find(name);
      if (it == expected.end()) {
        // Rotary tables some Llama exports carry are recomputed; a tied model may still store a head.
        const std::string rotary = "rotary_emb.inv_freq";
        if (name.size() >= rotary.size() && name.compare(name.size() - rotary.size(), rotary.size(), rotary) == 0) continue;
        if (name == "lm_head.weight" && impl->config.tie_word_embeddings) continue;
        throw FormatError(path + ": unexpected tensor '" + name + "' for a " + impl->config.model_type +
                          " model with this config.json");
      }
      if (tensor.sizes() != c10::IntArrayRef(it->second.shape))
        throw FormatError(path + ": tensor '" + name + "' has shape " + shape_text(tensor.sizes()) + ", expected " +
                          shape_text(it->second.shape));
      if (!at::isFloatingType(tensor.scalar_type()))
        throw FormatError(path + ": tensor '" + name + "' is " + dtype_name(tensor.scalar_type()) + ", not a float type");
      if (!loaded.insert(name).second) throw FormatError(path + ": tensor '" + name + "' appears twice");
      *it->second.tensor = impl->place(tensor);
    }
  };
  // One shard at a time: each shard's mapping is released once its tensors are placed.
  const std::string index_path = in_dir(model_dir, "model.safetensors.index.json");
  const std::string single_path = in_dir(model_dir, "model.safetensors");
  if (file_exists(index_path)) {
    for_each_safetensors_shard(index_path, take_shard);
  } else if (file_exists(single_path)) {
    auto tensors = read_safetensors(single_path);
    take_shard(single_path, tensors);
  } else {
    throw IoError(model_dir + ": has neither model.safetensors nor model.safetensors.index.json");
  }
  for (const auto& [name, slot] : expected)
    if (!loaded.count(name)) throw FormatError(model_dir + ": tensor '" + name + "' is missing");
  log_info(c10::str("loaded ", impl->config.model_type, " (", impl->config.num_hidden_layers, " layers, hidden ",
                    impl->config.hidden_size, ", vocab ", impl->config.vocab_size, ") from ", model_dir, " as ",
                    dtype_name(impl->dtype), " on ", impl->device.str()));
  return DecoderLM(std::move(impl));
}

std::vector<std::pair<std::string, std::vector<int64_t>>> DecoderLM::weight_shapes(const LlmConfig& config) {
  Impl impl(config, LlmLoadOptions{});
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  for (const auto& s : impl.slots()) out.emplace_back(s.name, s.shape);
  return out;
}

void write_sparse_llm_checkpoint(const std::string& dir, const LlmConfig& config, c10::ScalarType dtype, int shards) {
  if (shards < 1) throw UsageError("a checkpoint needs at least one shard");
  make_directories(dir);
  const auto shapes = DecoderLM::weight_shapes(config);
  std::vector<std::vector<std::pair<std::string, std::vector<int64_t>>>> parts(static_cast<size_t>(shards));
  nlohmann::ordered_json weight_map;
  uint64_t total = 0;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const size_t shard = i * static_cast<size_t>(shards) / shapes.size();
    parts[shard].push_back(shapes[i]);
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05d.safetensors", shard + 1, shards);
    weight_map[shapes[i].first] = name;
    uint64_t n = c10::elementSize(dtype);
    for (auto d : shapes[i].second) n *= static_cast<uint64_t>(d);
    total += n;
  }
  for (size_t s = 0; s < parts.size(); ++s) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05d.safetensors", s + 1, shards);
    write_sparse_safetensors(in_dir(dir, name), parts[s], dtype);
  }
  write_file_atomically(in_dir(dir, "model.safetensors.index.json"),
                        nlohmann::ordered_json{{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}}.dump(1));
  write_file_atomically(in_dir(dir, "config.json"), config.to_json_text());
}

void write_random_llm(const std::string& dir, LlmConfig config, c10::ScalarType dtype, uint64_t seed,
                      const std::string& tokenizer_dir) {
  if (!file_exists(in_dir(tokenizer_dir, "tokenizer.model")))
    throw IoError(in_dir(tokenizer_dir, "tokenizer.model") + ": missing (the new model needs a tokenizer)");
  make_directories(dir);
  config.torch_dtype = dtype_name(dtype);
  LlmLoadOptions o;
  o.dtype = dtype;
  const auto model = DecoderLM::random(config, o, seed);
  write_safetensors(in_dir(dir, "model.safetensors"), model.named_weights(), {{"format", "pt"}});
  write_file_atomically(in_dir(dir, "config.json"), config.to_json_text());
  for (const char* f : {"tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"})
    if (file_exists(in_dir(tokenizer_dir, f))) copy_file(in_dir(tokenizer_dir, f), in_dir(dir, f));
}

DecoderLM DecoderLM::random(const LlmConfig& config, const LlmLoadOptions& options, uint64_t seed) {
  auto impl = std::make_unique<Impl>(config, options);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (auto& s : impl->slots()) {
    const bool norm = s.name.find("norm") != std::string::npos, bias = s.name.find(".bias") != std::string::npos;
    // Drawn in the model's dtype: a float32 draw would double a bf16 model's peak memory.
    const auto opts = at::TensorOptions().dtype(impl->dtype);
    at::Tensor t = norm ? at::ones(s.shape, opts) : bias ? at::zeros(s.shape, opts) : at::empty(s.shape, opts).normal_(0.0, 0.02, gen);
    *s.tensor = impl->place(t);
  }
  return DecoderLM(std::move(impl));
}

// ---- forward ---------------------------------------------------------------------------------

LlmForwardOutput DecoderLM::Impl::forward(const LlmForwardInput& in, KvCache* cache, const LlmForwardOptions& opt) const {
  const auto& c = config;
  if (in.input_ids.defined() == in.inputs_embeds.defined())
    throw UsageError("forward needs exactly one of input_ids and inputs_embeds");
  at::Tensor x;
  if (in.input_ids.defined()) {
    if (in.input_ids.dim() != 2 || in.input_ids.scalar_type() != at::kLong)
      throw ShapeError("input_ids must be int64 [B, T], got " + dtype_name(in.input_ids.scalar_type()) + " " +
                       shape_text(in.input_ids.sizes()));
    const auto ids = in.input_ids.to(device);
    if (ids.lt(0).logical_or(ids.ge(c.vocab_size)).any().item<bool>())  // one pass, one host sync
      throw ShapeError("input_ids hold ids outside [0, " + std::to_string(c.vocab_size) + ")");
    x = at::embedding(embed_tokens, ids);
  } else {
    if (in.inputs_embeds.dim() != 3 || in.inputs_embeds.size(2) != c.hidden_size)
      throw ShapeError("inputs_embeds must be [B, T, " + std::to_string(c.hidden_size) + "], got " +
                       shape_text(in.inputs_embeds.sizes()));
    x = in.inputs_embeds.to(device, dtype);
  }
  const int64_t B = x.size(0), T = x.size(1);
  const int64_t offset = cache ? cache->length : 0;
  if (cache) {
    if (cache->keys.size() != layers.size() || cache->key_mask.size(0) != B)
      throw ShapeError("KV cache was made for another model or batch size");
    if (offset + T > cache->capacity())
      throw UsageError("KV cache holds " + std::to_string(cache->capacity()) + " positions; " +
                       std::to_string(offset + T) + " needed");
  }

  // Key validity over every key this forward attends to.
  at::Tensor new_valid;  // [B, T] bool for the new positions
  if (in.attention_mask.defined()) {
    const auto m = in.attention_mask.to(device);
    if (m.dim() != 2 || m.size(0) != B || (m.size(1) != T && m.size(1) != offset + T))
      throw ShapeError("attention_mask must be [B, T] or [B, cache + T] = [" + std::to_string(B) + ", " +
                       std::to_string(T) + "], got " + shape_text(m.sizes()));
    new_valid = m.narrow(1, m.size(1) - T, T).ne(0);
  } else {
    new_valid = at::ones({B, T}, at::TensorOptions().dtype(at::kBool).device(device));
  }
  at::Tensor key_valid = new_valid;
  if (cache) {
    cache->key_mask.narrow(1, offset, T).copy_(new_valid);
    key_valid = cache->key_mask.narrow(1, 0, offset + T);
  }
  const bool all_valid = key_valid.all().item<bool>();

  at::Tensor positions = in.position_ids;
  if (positions.defined()) {
    if (positions.dim() != 2 || positions.size(0) != B || positions.size(1) != T)
      throw ShapeError("position_ids must be [B, T], got " + shape_text(positions.sizes()));
    positions = positions.to(device, at::kLong);
  } else {
    positions = (at::arange(T, at::TensorOptions().dtype(at::kLong).device(device)) + offset).unsqueeze(0).expand({B, T});
  }
  const auto [cos, sin] = nn::rope_cos_sin(inv_freq, positions, dtype);
  const auto mask = nn::attention_mask(key_valid, T, offset, c.sliding_window, all_valid);

  LlmForwardOutput out;
  if (opt.all_hidden_states) out.hidden_states.push_back(x);
  // The requested adapter's term is added. A merged adapter is part of the weights: a forward
  // with no adapter, or with that one, runs the merged model as it is; a forward with another
  // adapter takes the merged one's term out again.
  const LoraAdapter* add = opt.adapter;
  const LoraAdapter* remove = nullptr;
  if (merged && add) {
    if (add->name() == merged->name()) add = nullptr;
    else remove = merged.get();
  }
  const int64_t nh = c.num_attention_heads, nkv = c.num_key_value_heads, hd = c.head_dim;
  for (size_t i = 0; i < layers.size(); ++i) {
    const auto& l = layers[i];
    const int64_t li = static_cast<int64_t>(i);
    auto project = [&](const at::Tensor& in, LoraTarget t, const at::Tensor& w, const at::Tensor& b) {
      at::Tensor y = at::linear(in, w, b);
      if (add && add->has(li, t)) y = y + add->delta(in, li, t, opt.lora_dropout).to(y.scalar_type());
      if (remove && remove->has(li, t)) y = y - remove->delta(in, li, t, false).to(y.scalar_type());
      return y;
    };
    const auto h = nn::rms_norm(x, l.input_norm, c.rms_norm_eps);
    auto q = project(h, LoraTarget::kQ, l.q_w, l.q_b).view({B, T, nh, hd}).transpose(1, 2);
    auto k = project(h, LoraTarget::kK, l.k_w, l.k_b).view({B, T, nkv, hd}).transpose(1, 2);
    auto v = project(h, LoraTarget::kV, l.v_w, l.v_b).view({B, T, nkv, hd}).transpose(1, 2);
    q = nn::apply_rope(q, cos, sin);
    k = nn::apply_rope(k, cos, sin);
    if (cache) {
      cache->keys[i].narrow(2, offset, T).copy_(k);
      cache->values[i].narrow(2, offset, T).copy_(v);
      k = cache->keys[i].narrow(2, 0, offset + T);
      v = cache->values[i].narrow(2, 0, offset + T);
    }
    const auto attn = nn::attention(q, k, v, mask).transpose(1, 2).reshape({B, T, nh * hd});
    x = x + project(attn, LoraTarget::kO, l.o_w, l.o_b);
    const auto h2 = nn::rms_norm(x, l.post_norm, c.rms_norm_eps);
    if (add || remove) {
      const auto gate = at::silu(project(h2, LoraTarget::kGate, l.gate_w, l.gate_b));
      x = x + project(gate * project(h2, LoraTarget::kUp, l.up_w, l.up_b), LoraTarget::kDown, l.down_w, l.down_b);
    } else {
      x = x + nn::swiglu_mlp(h2, l.gate_w, l.gate_b, l.up_w, l.up_b, l.down_w, l.down_b);
    }
    if (opt.all_hidden_states && i + 1 < layers.size()) out.hidden_states.push_back(x);
  }
  if (cache) cache->length = offset + T;
  out.hidden_last = nn::rms_norm(x, final_norm, c.rms_norm_eps);
  if (opt.all_hidden_states) out.hidden_states.push_back(out.hidden_last);
  if (opt.logits) {
    // The last position as a 2-D [B, H] matrix: a [B, 1, H] slice keeps the sequence's strides,
    // which sends bf16 matmul down a batched path that copies the whole transposed lm_head.
    out.logits = opt.last_position_only ? at::linear(out.hidden_last.select(1, T - 1), head()).unsqueeze(1)
                                        : at::linear(out.hidden_last, head());
    out.logits = out.logits.to(at::kFloat);
  }
  return out;
}

LlmForwardOutput DecoderLM::forward(const LlmForwardInput& input, KvCache* cache, const LlmForwardOptions& options) const {
  return impl_->forward(input, cache, options);
}

at::Tensor DecoderLM::lm_head_logits(const at::Tensor& hidden) const {
  return at::linear(hidden.to(impl_->dtype), impl_->head()).to(at::kFloat);
}

// ---- LoRA merging --------------------------------------------------------------------------------

namespace {
// The weight an adapter target modifies.
at::Tensor& target_weight(LayerWeights& l, LoraTarget t) {
  switch (t) {
    case LoraTarget::kQ: return l.q_w;
    case LoraTarget::kK: return l.k_w;
    case LoraTarget::kV: return l.v_w;
    case LoraTarget::kO: return l.o_w;
    case LoraTarget::kGate: return l.gate_w;
    case LoraTarget::kUp: return l.up_w;
    case LoraTarget::kDown: return l.down_w;
  }
  throw std::logic_error("unknown LoRA target");
}
}  // namespace

void DecoderLM::merge_adapter(const LoraAdapter& adapter) {
  auto& m = *impl_;
  if (m.merged) throw UsageError("adapter '" + m.merged->name() + "' is merged already; unmerge it first");
  if (adapter.layers() != static_cast<int64_t>(m.layers.size()))
    throw ShapeError("adapter '" + adapter.name() + "' has " + std::to_string(adapter.layers()) + " layers, the model " +
                     std::to_string(m.layers.size()));
  c10::NoGradGuard no_grad;
  for (int64_t l = 0; l < adapter.layers(); ++l)
    for (int i = 0; i < kLoraTargetCount; ++i) {
      const auto t = static_cast<LoraTarget>(i);
      if (!adapter.has(l, t)) continue;
      auto& w = target_weight(m.layers[static_cast<size_t>(l)], t);
      // A fresh tensor rather than an in-place add: the weight may be a view of a read-only mapping.
      w = (w.to(at::kFloat) + adapter.delta_weight(l, t, at::kFloat).to(w.device())).to(m.dtype);
    }
  m.merged = std::make_unique<LoraAdapter>(adapter.clone(adapter.name()));
  m.merged->set_requires_grad(false);
}

void DecoderLM::unmerge_adapter() {
  auto& m = *impl_;
  if (!m.merged) return;
  c10::NoGradGuard no_grad;
  for (int64_t l = 0; l < m.merged->layers(); ++l)
    for (int i = 0; i < kLoraTargetCount; ++i) {
      const auto t = static_cast<LoraTarget>(i);
      if (!m.merged->has(l, t)) continue;
      auto& w = target_weight(m.layers[static_cast<size_t>(l)], t);
      w = (w.to(at::kFloat) - m.merged->delta_weight(l, t, at::kFloat).to(w.device())).to(m.dtype);
    }
  m.merged.reset();
}

std::string DecoderLM::merged_adapter() const { return impl_->merged ? impl_->merged->name() : std::string(); }

at::Tensor DecoderLM::embed(const at::Tensor& input_ids) const {
  return at::embedding(impl_->embed_tokens, input_ids.to(impl_->device, at::kLong));
}

KvCache DecoderLM::new_cache(int64_t batch, int64_t capacity) const {
  const auto& c = impl_->config;
  KvCache cache;
  const auto opts = at::TensorOptions().dtype(impl_->dtype).device(impl_->device);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    cache.keys.push_back(at::empty({batch, c.num_key_value_heads, capacity, c.head_dim}, opts));
    cache.values.push_back(at::empty({batch, c.num_key_value_heads, capacity, c.head_dim}, opts));
  }
  cache.key_mask = at::zeros({batch, capacity}, at::TensorOptions().dtype(at::kBool).device(impl_->device));
  return cache;
}

// ---- weights by name -------------------------------------------------------------------------

NamedTensors DecoderLM::named_weights() const {
  NamedTensors out;
  for (const auto& s : impl_->slots()) out.emplace_back(s.name, *s.tensor);
  return out;
}

at::Tensor DecoderLM::weight(const std::string& hf_name) const {
  for (const auto& s : impl_->slots())
    if (s.name == hf_name) return *s.tensor;
  throw UsageError("the model has no weight '" + hf_name + "'");
}

void DecoderLM::set_weight(const std::string& hf_name, const at::Tensor& value) {
  for (auto& s : impl_->slots()) {
    if (s.name != hf_name) continue;
    if (value.sizes() != c10::IntArrayRef(s.shape))
      throw FormatError("weight '" + hf_name + "' must have shape " + shape_text(s.shape) + ", got " +
                        shape_text(value.sizes()));
    *s.tensor = impl_->place(value);
    return;
  }
  throw UsageError("the model has no weight '" + hf_name + "'");
}

// ---- embedding resize ------------------------------------------------------------------------

namespace {

// transformers' mean/covariance initialisation of added rows.
at::Tensor resized_rows(const at::Tensor& old, int64_t new_rows, at::Generator& gen) {
  const int64_t old_rows = old.size(0);
  if (new_rows <= old_rows) return old.narrow(0, 0, new_rows).clone();
  const auto w = old.to(at::kCPU, at::kFloat);
  const auto mean = w.mean(0);
  const auto centered = w - mean;
  const auto covariance = centered.t().matmul(centered) / static_cast<double>(old_rows);
  const auto [chol, info] = at::linalg_cholesky_ex(1e-9 * covariance);
  const int64_t added = new_rows - old_rows;
  at::Tensor rows;
  if (info.item<int64_t>() == 0) {
    const auto z = at::normal(0.0, 1.0, {added, w.size(1)}, gen);
    rows = mean + z.matmul(chol.t());
  } else {
    rows = mean.unsqueeze(0).expand({added, w.size(1)});
  }
  return at::cat({old, rows.to(old.device(), old.scalar_type())}, 0);
}

}  // namespace

void DecoderLM::resize_token_embeddings(int64_t new_vocab_size, uint64_t seed) {
  if (new_vocab_size <= 0) throw UsageError("vocabulary size must be positive");
  auto& m = *impl_;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  m.embed_tokens = resized_rows(m.embed_tokens, new_vocab_size, gen);
  if (m.lm_head.defined()) m.lm_head = resized_rows(m.lm_head, new_vocab_size, gen);
  m.config.vocab_size = new_vocab_size;
}

}  // namespace hrmclara
