// CLaRa: the model around the decoder LLM (see include/hrmclara/clara.h): tokenizer, adapters,
// memory-token rows, compressor, splicing, retrieval, the stages' losses, and checkpoints in
// upstream's layout and ours.
#include <hrmclara/clara.h>
#include <hrmclara/clara_data.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/log.h>
#include <hrmclara/tensor_io.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <map>
#include <set>

namespace hrmclara::clara {

namespace {

const char* const kEmbedName = "model.embed_tokens.weight";
const char* const kHeadName = "lm_head.weight";
const char* const kMemRowsName = "model.embed_tokens.weight[mem]";

// CLaRa's added tokens, in upstream's order.
std::vector<std::string> clara_tokens(int64_t n) {
  std::vector<std::string> out;
  for (int64_t i = 0; i < n; ++i) out.push_back("<MEM" + std::to_string(i) + ">");
  for (const char* t : {"<AE>", "<ENC>", "<SEP>"}) out.emplace_back(t);
  return out;
}

}  // namespace

struct ClaraModel::Impl {
  ClaraConfig config;
  std::unique_ptr<LlmTokenizer> tokenizer;
  std::unique_ptr<DecoderLM> base;
  std::map<std::string, LoraAdapter> adapters;
  at::Tensor mem_rows;  // [n, H]
  std::vector<int64_t> mem_ids;
  int64_t sep = -1, enc = -1;
  std::string report;
  ClaraLoadOptions options;

  LoraConfig lora_config() const {
    LoraConfig c;
    c.r = config.lora_r;
    c.alpha = config.alpha();
    c.dropout = config.lora_dropout;
    return c;
  }

  // Base, tokenizer with CLaRa's tokens, embeddings sized to the tokenizer.
  void build(const std::string& base_dir) {
    LlmLoadOptions lo;
    lo.dtype = options.dtype;
    lo.device = options.device;
    base = std::make_unique<DecoderLM>(DecoderLM::load(base_dir, lo));
    tokenizer = std::make_unique<LlmTokenizer>(base_dir);
    const auto ids = tokenizer->add_special_tokens(clara_tokens(config.mem_tokens()));
    tokenizer->set_pad_id(tokenizer->bos_id());
    mem_ids.assign(ids.begin(), ids.begin() + config.mem_tokens());
    enc = ids[static_cast<size_t>(config.mem_tokens()) + 1];
    sep = ids[static_cast<size_t>(config.mem_tokens()) + 2];
    for (size_t i = 1; i < mem_ids.size(); ++i)
      if (mem_ids[i] != mem_ids[i - 1] + 1)
        throw FormatError(base_dir + ": the memory tokens did not get consecutive ids (the tokenizer already holds some of them?)");
    if (base->config().vocab_size < tokenizer->vocab_size()) base->resize_token_embeddings(tokenizer->vocab_size(), options.seed);
    sync_mem_rows_from_base();
  }

  void sync_mem_rows_from_base() {
    c10::NoGradGuard no_grad;
    mem_rows = base->weight(kEmbedName).narrow(0, mem_ids.front(), config.mem_tokens()).clone();
  }

  // The embedding matrix with the current memory rows written in.
  at::Tensor full_embedding() const {
    c10::NoGradGuard no_grad;
    auto e = base->weight(kEmbedName).clone();
    e.narrow(0, mem_ids.front(), config.mem_tokens()).copy_(mem_rows);
    return e;
  }

  LoraAdapter fresh_adapter(const std::string& name, uint64_t seed, const NamedTensors& values) const {
    LoraAdapter a(name, lora_config(), base->config(), base->dtype(), base->device());
    bool given = false;
    NamedTensors state;
    const std::string marker = "." + name + ".weight";
    for (const auto& [runtime, t] : values) {
      if (runtime.size() <= marker.size() || runtime.compare(runtime.size() - marker.size(), marker.size(), marker) != 0) continue;
      state.emplace_back(runtime.substr(0, runtime.size() - marker.size()) + ".weight", t);
      given = true;
    }
    if (given) {
      a.load_state_dict(state, "fresh adapter values");
    } else {
      auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
      a.reset_parameters(gen);
    }
    return a;
  }

  void set_base_weight(const std::string& name, const at::Tensor& t, const std::string& source) {
    const auto want = base->weight(name).sizes();
    if (t.sizes() != want)
      throw ShapeError(source + ": '" + name + "' has shape " + shape_text(t.sizes()) + " but the model needs " +
                       shape_text(want) + " (the base's vocabulary plus " + std::to_string(config.mem_tokens()) +
                       " memory tokens and <AE>, <ENC>, <SEP>: is n = doc_max_length / compr_rate right for this checkpoint?)");
    base->set_weight(name, t);
  }
};

ClaraModel::ClaraModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ClaraModel::ClaraModel(ClaraModel&&) noexcept = default;
ClaraModel& ClaraModel::operator=(ClaraModel&&) noexcept = default;
ClaraModel::~ClaraModel() = default;

const ClaraConfig& ClaraModel::config() const { return impl_->config; }
const LlmTokenizer& ClaraModel::tokenizer() const { return *impl_->tokenizer; }
const DecoderLM& ClaraModel::base() const { return *impl_->base; }
DecoderLM& ClaraModel::base() { return *impl_->base; }
const std::string& ClaraModel::load_report() const { return impl_->report; }
std::vector<int64_t> ClaraModel::mem_token_ids() const { return impl_->mem_ids; }
int64_t ClaraModel::sep_id() const { return impl_->sep; }
int64_t ClaraModel::enc_id() const { return impl_->enc; }
at::Tensor& ClaraModel::mem_embeddings() { return impl_->mem_rows; }
const at::Tensor& ClaraModel::mem_embeddings() const { return impl_->mem_rows; }

bool ClaraModel::has_adapter(const std::string& name) const { return impl_->adapters.count(name) > 0; }

LoraAdapter& ClaraModel::adapter(const std::string& name) {
  auto it = impl_->adapters.find(name);
  if (it == impl_->adapters.end()) throw UsageError("this CLaRa model has no adapter '" + name + "'");
  return it->second;
}
const LoraAdapter& ClaraModel::adapter(const std::string& name) const {
  auto it = impl_->adapters.find(name);
  if (it == impl_->adapters.end()) throw UsageError("this CLaRa model has no adapter '" + name + "'");
  return it->second;
}

std::vector<std::string> ClaraModel::adapter_names() const {
  std::vector<std::string> out;
  for (const char* n : {kDecoderAdapter, kEncoderAdapter, kQueryAdapter})
    if (has_adapter(n)) out.emplace_back(n);
  for (const auto& [n, a] : impl_->adapters)
    if (std::find(out.begin(), out.end(), n) == out.end()) out.push_back(n);
  return out;
}

void ClaraModel::set_adapter(LoraAdapter adapter) {
  if (adapter.layers() != base().config().num_hidden_layers)
    throw ShapeError("adapter '" + adapter.name() + "' has " + std::to_string(adapter.layers()) + " layers; the base has " +
                     std::to_string(base().config().num_hidden_layers));
  const std::string name = adapter.name();
  impl_->adapters.erase(name);
  impl_->adapters.emplace(name, std::move(adapter));
}

LoraAdapter ClaraModel::new_adapter(const std::string& name, uint64_t seed, const NamedTensors& values) const {
  return impl_->fresh_adapter(name, seed, values);
}

// ---- construction and loading -----------------------------------------------------------------

ClaraModel ClaraModel::create(const std::string& base_dir, ClaraConfig config, const ClaraLoadOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  if (!options.training_stage.empty()) config.training_stage = canonical_stage(options.training_stage);
  if (options.generation_top_k) config.generation_top_k = *options.generation_top_k;
  if (options.doc_max_length) config.doc_max_length = *options.doc_max_length;
  if (options.pure_inference) config.pure_inference = *options.pure_inference;
  if (!options.config_overrides.empty()) config.apply_overrides(options.config_overrides, "command line");
  config.validate("CLaRa config");
  impl->config = config;
  impl->build(base_dir);
  // upstream CLaRa(cfg): decoder and encoder adapters for every stage; stage2 also the query
  // reasoner (a copy of the encoder).
  uint64_t seed = options.seed;
  for (const char* name : {kDecoderAdapter, kEncoderAdapter})
    impl->adapters.emplace(name, impl->fresh_adapter(name, seed++, options.fresh_adapter_values));
  if (config.training_stage == "stage2") impl->adapters.emplace(kQueryAdapter, impl->adapters.at(kEncoderAdapter).clone(kQueryAdapter));
  impl->report = "created CLaRa (" + config.training_stage + ", n = " + std::to_string(config.mem_tokens()) + ", LoRA r " +
                 std::to_string(config.lora_r) + ") on " + base_dir + " with fresh decoder_adapter and encoder_adapter";
  return ClaraModel(std::move(impl));
}

ClaraModel ClaraModel::load(const std::string& checkpoint_dir, const std::string& base_dir, const ClaraLoadOptions& options) {
  if (!is_directory(checkpoint_dir)) throw IoError(checkpoint_dir + ": not a checkpoint directory");
  std::string config_path;
  ClaraConfig config = ClaraConfig::load_from_dir(checkpoint_dir, &config_path);
  if (!options.training_stage.empty()) config.training_stage = canonical_stage(options.training_stage);
  if (options.generation_top_k) config.generation_top_k = *options.generation_top_k;
  if (options.doc_max_length) config.doc_max_length = *options.doc_max_length;
  if (options.pure_inference) config.pure_inference = *options.pure_inference;
  if (!options.config_overrides.empty()) config.apply_overrides(options.config_overrides, config_path + " with the command line's overrides");
  config.validate(config_path);

  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->config = config;
  impl->build(base_dir);
  auto& m = *impl;
  std::vector<std::string> did;

  const std::string ours = checkpoint_dir + "/clara.safetensors";
  const std::string adapters_path = checkpoint_dir + "/adapters.pth";
  const std::string first_last = checkpoint_dir + "/decoder_first_last_layers.pth";
  std::vector<std::pair<std::string, NamedTensors>> stored;  // adapter -> LoRA state, file order
  std::vector<std::pair<std::string, NamedTensors>> copies;  // adapter -> embed / lm_head copies
  if (file_exists(ours)) {
    std::map<std::string, size_t> at;
    for (auto& [key, t] : read_safetensors(ours)) {
      if (key == kEmbedName || key == kHeadName) {
        m.set_base_weight(key, t, ours);
        continue;
      }
      const auto slash = key.find('/');
      if (slash == std::string::npos) throw FormatError(ours + ": unexpected tensor '" + key + "'");
      const std::string name = key.substr(0, slash);
      if (!at.count(name)) {
        at[name] = stored.size();
        stored.emplace_back(name, NamedTensors{});
      }
      stored[at[name]].second.emplace_back(key.substr(slash + 1), t);
    }
    did.push_back("embeddings from clara.safetensors");
  } else {
    if (!file_exists(adapters_path)) throw IoError(adapters_path + ": missing (and no clara.safetensors either)");
    if (file_exists(first_last)) {
      for (const auto& [key, t] : read_torch_save(first_last)) {
        if (key != kEmbedName && key != kHeadName)
          throw FormatError(first_last + ": unexpected tensor '" + key + "' (expected " + kEmbedName + " and " + kHeadName + ")");
        m.set_base_weight(key, t, first_last);
      }
      did.push_back("embeddings from decoder_first_last_layers.pth");
    } else {
      did.push_back("no decoder_first_last_layers.pth: base embeddings");
    }
    auto file = read_adapter_groups(adapters_path);
    stored = std::move(file.lora);
    copies = std::move(file.base_copies);
  }

  // Which stored adapters load, by upstream's stage semantics (from_pretrained).
  const std::string& stage = config.training_stage;
  std::vector<std::string> loaded, skipped;
  for (const auto& [name, state] : stored) {
    bool take = true;
    if (!config.pure_inference) {
      if (stage == "stage1" && name == kQueryAdapter) take = false;
      if (stage == "stage1_2" && (name == kDecoderAdapter || name == kQueryAdapter)) take = false;
    }
    if (!take) {
      skipped.push_back(name);
      continue;
    }
    LoraAdapter a(name, m.lora_config(), m.base->config(), m.base->dtype(), m.base->device());
    a.load_state_dict(state, (file_exists(ours) ? ours : adapters_path) + " [" + name + "]");
    m.adapters.erase(name);
    m.adapters.emplace(name, std::move(a));
    loaded.push_back(name);
  }
  // PEFT writes embed_tokens / lm_head straight into the base when it loads an adapter holding
  // them: they override decoder_first_last_layers.pth, the adapter loaded last winning.
  for (const auto& [name, tensors] : copies) {
    if (std::find(loaded.begin(), loaded.end(), name) == loaded.end()) continue;
    for (const auto& [key, t] : tensors) m.set_base_weight(key, t, adapters_path + " [" + name + "]");
    did.push_back("embeddings from " + name + "'s copies in adapters.pth");
  }
  m.sync_mem_rows_from_base();
  std::vector<std::string> made;
  if (!config.pure_inference && stage == "stage1_2") {
    m.adapters.erase(kDecoderAdapter);
    m.adapters.emplace(kDecoderAdapter, m.fresh_adapter(kDecoderAdapter, options.seed, options.fresh_adapter_values));
    made.push_back("a fresh decoder_adapter");
  }
  for (const char* needed : {kDecoderAdapter, kEncoderAdapter})
    if (!m.adapters.count(needed)) {
      m.adapters.emplace(needed, m.fresh_adapter(needed, options.seed + 1, options.fresh_adapter_values));
      made.push_back(std::string("a fresh ") + needed + " (none in the checkpoint)");
    }
  if (stage == "stage2" && !m.adapters.count(kQueryAdapter)) {
    m.adapters.emplace(kQueryAdapter, m.adapters.at(kEncoderAdapter).clone(kQueryAdapter));
    made.push_back("query_reasoner_adapter as a copy of encoder_adapter");
  }
  auto join = [](const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
    return s;
  };
  m.report = "loaded CLaRa " + stage + (config.pure_inference ? " (pure inference)" : "") + " from " + checkpoint_dir +
             ": adapters " + (loaded.empty() ? std::string("none") : join(loaded)) + " loaded" +
             (skipped.empty() ? "" : "; " + join(skipped) + " skipped as upstream does for " + stage) +
             (made.empty() ? "" : "; " + join(made)) + "; " + join(did);
  log_info(m.report);
  return ClaraModel(std::move(impl));
}

// ---- training set-up --------------------------------------------------------------------------

NamedTensors ClaraModel::prepare_training(const std::string& stage_name) {
  const std::string stage = canonical_stage(stage_name);
  auto& m = *impl_;
  for (auto& [name, a] : m.adapters) a.set_requires_grad(false);
  m.mem_rows.set_requires_grad(false);
  std::vector<std::string> trainable = {kDecoderAdapter, kEncoderAdapter};
  if (stage == "stage2") trainable = {kDecoderAdapter, kQueryAdapter};
  NamedTensors out;
  for (const auto& name : trainable) {
    auto& a = adapter(name);
    a.set_requires_grad(true);
    for (auto& p : a.named_parameters()) out.push_back(p);
  }
  if (stage == "stage1") {
    m.mem_rows = m.mem_rows.detach().set_requires_grad(true);
    out.emplace_back(kMemRowsName, m.mem_rows);
  }
  return out;
}

// ---- forward pieces ---------------------------------------------------------------------------

at::Tensor ClaraModel::embed(const at::Tensor& ids) const {
  const auto& m = *impl_;
  const auto dev_ids = ids.to(m.base->device(), at::kLong);
  const auto x = m.base->embed(dev_ids);
  const int64_t first = m.mem_ids.front(), n = config().mem_tokens();
  const auto is_mem = dev_ids.ge(first).logical_and(dev_ids.lt(first + n));
  const auto rows = m.mem_rows.index_select(0, (dev_ids - first).clamp(0, n - 1).reshape({-1})).view(x.sizes());
  return at::where(is_mem.unsqueeze(-1), rows.to(x.scalar_type()), x);
}

std::pair<at::Tensor, at::Tensor> ClaraModel::compress_tokens(const at::Tensor& ids, const at::Tensor& mask,
                                                              const std::string& adapter_name, bool train) const {
  const auto& m = *impl_;
  const int64_t n = config().mem_tokens();
  if (ids.dim() != 2 || mask.sizes() != ids.sizes())
    throw ShapeError("compressor inputs must be ids and mask [docs, L], got " + shape_text(ids.sizes()) + " and " +
                     shape_text(mask.sizes()));
  const auto dev_ids = ids.to(m.base->device(), at::kLong);
  const auto dev_mask = mask.to(m.base->device(), at::kLong);
  const int64_t first = m.mem_ids.front();
  const auto is_mem = dev_ids.ge(first).logical_and(dev_ids.lt(first + n));
  if (!is_mem.sum(1).eq(n).all().item<bool>())
    throw ShapeError("every compressor row must hold the " + std::to_string(n) + " memory tokens exactly once");
  LlmForwardInput in;
  in.inputs_embeds = embed(dev_ids);
  in.attention_mask = dev_mask;
  LlmForwardOptions opt;
  opt.logits = false;
  opt.adapter = &adapter(adapter_name);
  opt.lora_dropout = train;
  const auto hidden = m.base->forward(in, nullptr, opt).hidden_last;  // [docs, L, H]
  const int64_t D = hidden.size(0), H = hidden.size(2);
  const auto memory = hidden.masked_select(is_mem.unsqueeze(-1)).view({D, n, H});
  // MSE: each document's mean memory state against its mean state over every other attended position.
  const auto valid = dev_mask.ne(0);
  const auto mem_w = (is_mem & valid).to(hidden.scalar_type()).unsqueeze(-1);
  const auto doc_w = (is_mem.logical_not() & valid).to(hidden.scalar_type()).unsqueeze(-1);
  if (!doc_w.sum(1).gt(0).all().item<bool>()) throw ShapeError("a compressor row has no document token");
  const auto mem_mean = (hidden * mem_w).sum(1) / mem_w.sum(1);
  const auto doc_mean = (hidden * doc_w).sum(1) / doc_w.sum(1);
  const auto mse = (doc_mean - mem_mean).pow(2).mean();
  return {memory, mse};
}

at::Tensor ClaraModel::splice(const at::Tensor& dec_ids, const at::Tensor& memory, at::Tensor* index) const {
  const auto& m = *impl_;
  const int64_t n = config().mem_tokens();
  const auto ids = dec_ids.to(m.base->device(), at::kLong);
  const int64_t B = ids.size(0), H = m.base->config().hidden_size;
  if (memory.dim() != 3 || memory.size(1) != n || memory.size(2) != H || memory.size(0) % std::max<int64_t>(B, 1) != 0)
    throw ShapeError("memory must be [rows * k, " + std::to_string(n) + ", " + std::to_string(H) + "], got " +
                     shape_text(memory.sizes()));
  const int64_t k = memory.size(0) / B;
  // Row b's slots start at its first <MEM0>; slot j covers n positions, then <SEP>.
  const auto ids_cpu = ids.to(at::kCPU);
  std::vector<int64_t> rows, cols;
  const int64_t mem0 = m.mem_ids.front();
  for (int64_t b = 0; b < B; ++b) {
    const auto row = ids_cpu[b];
    const auto* p = row.data_ptr<int64_t>();
    int64_t p0 = -1;
    for (int64_t t = 0; t < row.size(0) && p0 < 0; ++t)
      if (p[t] == mem0) p0 = t;
    if (p0 < 0) throw ShapeError("decoder row " + std::to_string(b) + " has no <MEM0> slot");
    for (int64_t j = 0; j < k; ++j) {
      const int64_t start = p0 + j * (n + 1);
      if (start + n >= row.size(0))
        throw ShapeError("decoder row " + std::to_string(b) + " has fewer than " + std::to_string(k) + " memory slots");
      for (int64_t i = 0; i < n; ++i) {
        if (p[start + i] != mem0 + i)
          throw ShapeError("decoder row " + std::to_string(b) + ": slot " + std::to_string(j) + " is not <MEM0>..<MEM" +
                           std::to_string(n - 1) + "> at position " + std::to_string(start + i));
        rows.push_back(b);
        cols.push_back(start + i);
      }
      if (p[start + n] != m.sep)
        throw ShapeError("decoder row " + std::to_string(b) + ": slot " + std::to_string(j) + " is not closed by <SEP>");
    }
  }
  const auto opts = at::TensorOptions().dtype(at::kLong);
  const auto r = at::tensor(rows, opts).to(ids.device()), c = at::tensor(cols, opts).to(ids.device());
  if (index) *index = at::stack({at::tensor(rows, opts), at::tensor(cols, opts)}, 1);
  const auto embeds = m.base->embed(ids);
  return embeds.index_put({r, c}, memory.reshape({-1, H}).to(embeds.scalar_type()));
}

at::Tensor ClaraModel::cosine_scores(const at::Tensor& queries, const at::Tensor& docs) {
  const int64_t B = queries.size(0);
  // torch.nn.functional.normalize: x / max(||x||, 1e-12).
  auto normalize = [](const at::Tensor& x) { return x / x.norm(2, {-1}, /*keepdim=*/true).clamp_min(1e-12); };
  const auto q = normalize(queries.reshape({B, 1, -1}));
  const auto d = normalize(docs.reshape({B, docs.size(1), -1}));
  return at::bmm(q, d.transpose(1, 2)).squeeze(1).to(at::kFloat);
}

std::pair<at::Tensor, at::Tensor> ClaraModel::differentiable_topk(const at::Tensor& scores, int64_t k, double tau) {
  const int64_t B = scores.size(0), N = scores.size(1);
  if (k < 1 || k > N)
    throw UsageError("top-k of " + std::to_string(k) + " from " + std::to_string(N) + " candidates");
  const auto perturbed = scores / std::max(tau, 1e-6);
  const auto idx = std::get<1>(perturbed.topk(k, -1));  // [B, k], descending
  const auto hard = at::zeros({B, k, N}, perturbed.options()).scatter_(2, idx.unsqueeze(-1), 1.0);
  auto taken = at::zeros({B, N}, perturbed.options());
  std::vector<at::Tensor> soft;
  for (int64_t j = 0; j < k; ++j) {
    soft.push_back(at::softmax(perturbed + at::log(1.0 - taken + 1e-8), -1));
    taken = at::clamp_max(taken + hard.select(1, j), 1.0);
  }
  const auto z_soft = at::stack(soft, 1);
  return {hard + (z_soft - z_soft.detach()), idx};
}

StageOutput ClaraModel::stage_forward(const std::string& stage_name, const ClaraTensors& b, double mse_weight, bool train,
                                      bool zero_memory) const {
  const std::string stage = canonical_stage(stage_name);
  const auto& m = *impl_;
  const int64_t n = config().mem_tokens(), H = m.base->config().hidden_size;
  StageOutput out;
  at::Tensor selected;
  if (stage == "stage2") {
    const int64_t B = b.dec_ids.size(0), N = b.docs_per_row, k = config().generation_top_k;
    if (!b.query_ids.defined()) throw UsageError("stage2 needs query_ids and query_mask");
    {
      c10::NoGradGuard no_grad;  // the compressor is frozen in stage 2
      std::tie(out.memory, out.mse) = compress_tokens(b.enc_ids, b.enc_mask, kEncoderAdapter, train);
    }
    const auto query = compress_tokens(b.query_ids, b.query_mask, kQueryAdapter, train).first;  // [B, n, H]
    const auto docs = out.memory.view({B, N, n, H});
    out.scores = cosine_scores(query, docs);
    auto [z, idx] = differentiable_topk(out.scores, k);
    out.topk_idx = idx;
    selected = at::einsum("bkn,bnd->bkd", {z.to(docs.scalar_type()), docs.reshape({B, N, n * H})}).reshape({B * k, n, H});
  } else {
    std::tie(out.memory, out.mse) = compress_tokens(b.enc_ids, b.enc_mask, kEncoderAdapter, train);
    selected = out.memory;
  }
  if (zero_memory) selected = at::zeros_like(selected);
  const auto embeds = splice(b.dec_ids, selected, &out.splice_index);
  LlmForwardInput in;
  in.inputs_embeds = embeds;
  in.attention_mask = b.dec_mask.to(m.base->device());
  LlmForwardOptions opt;
  opt.logits = false;
  opt.adapter = &adapter(kDecoderAdapter);
  opt.lora_dropout = train;
  const auto hidden = m.base->forward(in, nullptr, opt).hidden_last;  // [B, T, H]
  // Position t predicts token t + 1 (transformers' ForCausalLMLoss): the supervised positions only.
  const auto labels = b.labels.to(m.base->device(), at::kLong);
  const int64_t T = labels.size(1);
  const auto next = labels.narrow(1, 1, T - 1);
  const auto supervised = next.ne(-100);
  out.target_index = supervised.nonzero().to(at::kCPU);
  const auto h = hidden.narrow(1, 0, T - 1).masked_select(supervised.unsqueeze(-1)).view({-1, H});
  out.logits_at_targets = m.base->lm_head_logits(h);
  if (out.logits_at_targets.size(0) == 0) throw ShapeError("the batch has no supervised token (every label is -100)");
  out.loss = at::cross_entropy_loss(out.logits_at_targets, next.masked_select(supervised));
  out.total_loss = mse_weight > 0 ? out.loss + mse_weight * out.mse : out.loss;
  return out;
}

// ---- inference --------------------------------------------------------------------------------

namespace {

at::Tensor to_tensor(const IdMatrix& m, const c10::Device& device) {
  return at::tensor(m.data, at::kLong).view({m.rows, m.cols}).to(device);
}

// Text a CLaRa prompt or encoder string must not carry (it would shift the memory slots).
void refuse_control_text(const std::string& text, const std::string& what) {
  const std::string found = find_clara_control_text(text);
  if (!found.empty())
    throw FormatError(what + " contains the CLaRa control token text '" + found +
                      "', which would be read as that token and shift the memory slots; remove or rewrite it");
}

// Tokenizes prompts as upstream's inference does (no special tokens added: the template carries
// <s>; right truncation at 1024 tokens; left padding with the pad id).
std::pair<at::Tensor, at::Tensor> prompt_batch(const LlmTokenizer& tok, const std::vector<std::string>& prompts,
                                               const c10::Device& device) {
  std::vector<std::vector<int>> seqs;
  for (const auto& p : prompts) {
    auto ids = tok.encode(p, /*add_special_tokens=*/false);
    if (ids.size() > 1024) ids.resize(1024);
    seqs.push_back(std::move(ids));
  }
  IdMatrix ids, mask;
  left_pad(seqs, tok.pad_id(), -1, ids, mask);
  return {to_tensor(ids, device), to_tensor(mask, device)};
}

}  // namespace

at::Tensor ClaraModel::compress(const std::vector<std::string>& documents, int64_t batch_size) const {
  if (documents.empty()) throw UsageError("no documents to compress");
  if (batch_size < 1) throw UsageError("the compression batch size must be >= 1");
  for (size_t i = 0; i < documents.size(); ++i) {
    if (documents[i].find_first_not_of(" \t\r\n") == std::string::npos)
      throw FormatError("document " + std::to_string(i) + " is empty");
    refuse_control_text(documents[i], "document " + std::to_string(i));
  }
  c10::NoGradGuard no_grad;
  std::vector<at::Tensor> parts;
  int truncated = 0;
  for (size_t start = 0; start < documents.size(); start += static_cast<size_t>(batch_size)) {
    const std::vector<std::string> chunk(documents.begin() + static_cast<std::ptrdiff_t>(start),
                                         documents.begin() + static_cast<std::ptrdiff_t>(std::min(documents.size(), start + batch_size)));
    const auto enc = clara_encoder_inputs(tokenizer(), chunk, static_cast<int>(config().doc_max_length),
                                          static_cast<int>(config().mem_tokens()));
    truncated += enc.truncated;
    parts.push_back(compress_tokens(to_tensor(enc.input_ids, base().device()), to_tensor(enc.attention_mask, base().device()),
                                    kEncoderAdapter, false)
                        .first);
  }
  if (truncated > 0)
    log_info(std::to_string(truncated) + " of " + std::to_string(documents.size()) + " documents were longer than " +
             std::to_string(config().doc_max_length) + " tokens and were cut at the end, as upstream cuts them");
  return at::cat(parts, 0);
}

at::Tensor ClaraModel::encode_queries(const std::vector<std::string>& questions) const {
  for (size_t i = 0; i < questions.size(); ++i) refuse_control_text(questions[i], "question " + std::to_string(i));
  c10::NoGradGuard no_grad;
  const auto enc = clara_encoder_inputs(tokenizer(), questions, static_cast<int>(config().doc_max_length),
                                        static_cast<int>(config().mem_tokens()));
  const std::string name = has_adapter(kQueryAdapter) ? kQueryAdapter : kEncoderAdapter;
  return compress_tokens(to_tensor(enc.input_ids, base().device()), to_tensor(enc.attention_mask, base().device()), name, false)
      .first;
}

namespace {

ClaraAnswer run_decoder(const ClaraModel& model, const std::vector<std::string>& prompts, const at::Tensor& memory,
                        GenerationOptions options) {
  c10::NoGradGuard no_grad;
  const auto [ids, mask] = prompt_batch(model.tokenizer(), prompts, model.base().device());
  const auto embeds = model.splice(ids, memory);
  options.adapter = &model.adapter(kDecoderAdapter);
  if (options.pad_token_id < 0) options.pad_token_id = model.tokenizer().pad_id();
  ClaraAnswer out;
  const auto generated = generate_from_embeds(model.base(), embeds, mask, options);
  out.output_ids = generated.tokens;
  out.lengths = generated.lengths;
  out.prefill_seconds = generated.prefill_seconds;
  out.decode_seconds = generated.decode_seconds;
  out.decode_steps = generated.steps - 1;
  const auto eos = model.base().config().eos_token_ids;
  const int64_t vocab = model.tokenizer().vocab_size();
  for (int64_t b = 0; b < out.output_ids.size(0); ++b) {
    std::vector<int> row;
    // An lm_head wider than the tokenizer (a padded vocabulary) can emit ids no piece has: they
    // decode to nothing, as in transformers.
    for (int64_t j = 0; j < out.output_ids.size(1); ++j) {
      const int64_t id = out.output_ids[b][j].item<int64_t>();
      if (id < vocab) row.push_back(static_cast<int>(id));
    }
    out.texts.push_back(model.tokenizer().decode(row, /*skip_special_tokens=*/true));
  }
  return out;
}

}  // namespace

ClaraAnswer ClaraModel::generate_from_prompts(const std::vector<std::string>& prompts, const at::Tensor& memory,
                                              const GenerationOptions& options) const {
  if (prompts.empty()) throw UsageError("no prompt to generate from");
  return run_decoder(*this, prompts, memory, options);
}

ClaraAnswer ClaraModel::answer(const std::vector<std::string>& questions, const at::Tensor& memory,
                               const GenerationOptions& options) const {
  if (questions.empty()) throw UsageError("no question to answer");
  if (memory.dim() != 3 || memory.size(0) == 0 || memory.size(0) % static_cast<int64_t>(questions.size()) != 0)
    throw UsageError("each question needs the same number of documents (got " + shape_text(memory.sizes()) + " for " +
                     std::to_string(questions.size()) + " questions)");
  const int k = static_cast<int>(memory.size(0) / static_cast<int64_t>(questions.size()));
  std::vector<std::string> prompts;
  for (size_t i = 0; i < questions.size(); ++i) {
    refuse_control_text(questions[i], "question " + std::to_string(i));
    prompts.push_back(clara_standard_prompt(tokenizer(), static_cast<int>(mem_tokens()), k, questions[i], std::nullopt).prompt);
  }
  return run_decoder(*this, prompts, memory, options);
}

ClaraAnswer ClaraModel::answer_end_to_end(const std::vector<std::string>& questions, const at::Tensor& candidates, int64_t top_k,
                                          const GenerationOptions& options) const {
  if (questions.empty()) throw UsageError("no question to answer");
  const int64_t B = static_cast<int64_t>(questions.size());
  if (candidates.dim() != 3 || candidates.size(0) % B != 0 || candidates.size(0) == 0)
    throw UsageError("each question needs the same number of candidate documents (got " + shape_text(candidates.sizes()) +
                     " for " + std::to_string(B) + " questions)");
  const int64_t N = candidates.size(0) / B, n = mem_tokens(), H = base().config().hidden_size;
  if (top_k < 1 || top_k > N)
    throw UsageError("top-k " + std::to_string(top_k) + " must be between 1 and the " + std::to_string(N) + " candidates");
  c10::NoGradGuard no_grad;
  const auto queries = encode_queries(questions);
  const auto docs = candidates.to(base().device(), base().dtype()).view({B, N, n, H});
  ClaraAnswer out;
  out.scores = cosine_scores(queries, docs);
  out.topk_idx = differentiable_topk(out.scores, top_k).second;
  const auto selected = at::stack(
      [&] {
        std::vector<at::Tensor> rows;
        for (int64_t b = 0; b < B; ++b) rows.push_back(docs[b].index_select(0, out.topk_idx[b]));
        return rows;
      }(),
      0);
  std::vector<std::string> prompts;
  for (const auto& q : questions)
    prompts.push_back(clara_standard_prompt(tokenizer(), static_cast<int>(n), static_cast<int>(top_k), q, std::nullopt).prompt);
  auto answered = run_decoder(*this, prompts, selected.reshape({B * top_k, n, H}), options);
  answered.scores = out.scores.to(at::kCPU);
  answered.topk_idx = out.topk_idx.to(at::kCPU);
  return answered;
}

ClaraAnswer ClaraModel::paraphrase(const at::Tensor& memory, int64_t docs_per_prompt, int template_index,
                                   const GenerationOptions& options) const {
  if (docs_per_prompt < 1 || memory.dim() != 3 || memory.size(0) % docs_per_prompt != 0)
    throw UsageError("paraphrase needs memory [prompts * docs_per_prompt, n, H]");
  const int64_t prompts_n = memory.size(0) / docs_per_prompt;
  const int count = static_cast<int>(clara_paraphrase_templates().size());
  if (template_index >= count) throw UsageError("paraphrase template " + std::to_string(template_index) + " (0.." + std::to_string(count - 1) + ")");
  PyRandom rng(static_cast<int64_t>(options.seed));
  std::vector<std::string> prompts;
  for (int64_t i = 0; i < prompts_n; ++i) {
    const int t = template_index >= 0 ? template_index : static_cast<int>(rng.choice_index(static_cast<size_t>(count)));
    prompts.push_back(
        clara_paraphrase_prompt(tokenizer(), static_cast<int>(mem_tokens()), static_cast<int>(docs_per_prompt), t, std::nullopt).prompt);
  }
  return run_decoder(*this, prompts, memory, options);
}

// ---- checkpoints ------------------------------------------------------------------------------

NamedTensors ClaraModel::first_last_layers() const {
  NamedTensors out = {{kEmbedName, impl_->full_embedding()}};
  if (!base().config().tie_word_embeddings) out.emplace_back(kHeadName, base().weight(kHeadName).detach());
  return out;
}

void ClaraModel::save_upstream(const std::string& dir) const {
  const auto& m = *impl_;
  make_directories(dir);
  std::vector<std::pair<std::string, NamedTensors>> groups;
  for (const auto& name : adapter_names()) {
    NamedTensors state;
    for (const auto& [k, t] : adapter(name).state_dict()) state.emplace_back(k, t.detach());
    groups.emplace_back(name, std::move(state));
  }
  write_torch_save_groups(dir + "/adapters.pth", groups);
  write_torch_save(dir + "/decoder_first_last_layers.pth", first_last_layers());
  write_json_file(dir + "/config.json", config().to_upstream_json());
}

void ClaraModel::save(const std::string& dir) const {
  const auto& m = *impl_;
  make_directories(dir);
  NamedTensors all;
  for (const auto& name : adapter_names())
    for (const auto& [k, t] : adapter(name).state_dict()) all.emplace_back(name + "/" + k, t.detach());
  for (auto& entry : first_last_layers()) all.push_back(std::move(entry));
  write_safetensors(dir + "/clara.safetensors", all, {{"format", "hrmclara-clara"}});
  Json cfg = config().to_upstream_json();
  write_json_file(dir + "/clara_config.json", cfg);
}

}  // namespace hrmclara::clara
