// HRM network and ACT step, following sapientinc/HRM models/hrm/hrm_act_v1.py and models/layers.py
// (see ../shared notes hrm-reference-spec.md §1-§2 for the semantics reproduced here).
#include <hrmclara/device.h>
#include <hrmclara/errors.h>
#include <hrmclara/hrm.h>

#include "nn/transformer_ops.h"

#include <torch/torch.h>

#include <cfenv>
#include <cmath>

namespace hrmclara::hrm {

namespace F = torch::nn::functional;

// ---- config ----------------------------------------------------------------------------------

int64_t HrmConfig::intermediate_size() const {
  // upstream: _find_multiple(round(expansion * hidden * 2 / 3), 256); Python's round is
  // half-to-even, which nearbyint gives in the default rounding mode.
  const double raw = std::nearbyint(expansion * static_cast<double>(hidden_size) * 2.0 / 3.0);
  const int64_t n = static_cast<int64_t>(raw);
  return (n + 255) / 256 * 256;
}

torch::Dtype HrmConfig::dtype() const {
  if (forward_dtype == "float32") return torch::kFloat;
  if (forward_dtype == "float64") return torch::kDouble;
  if (forward_dtype == "bfloat16") return torch::kBFloat16;
  throw ConfigError("HRM config: arch.forward_dtype '" + forward_dtype +
                    "' must be resolved for a device first (hrm::resolve_forward_dtype)");
}

std::string resolve_forward_dtype(const std::string& spec, const c10::Device& device, const std::string& declared) {
  const auto dtype = resolve_dtype(spec, device, declared);
  if (dtype == torch::kHalf) throw ConfigError("HRM runs in bfloat16, float32 or float64, not float16");
  return dtype_name(dtype);
}

Json HrmConfig::arch_json() const {
  return Json{{"name", "hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1"},
              {"loss", {{"name", "losses@ACTLossHead"}, {"loss_type", loss_type}}},
              {"puzzle_emb_ndim", puzzle_emb_ndim},
              {"H_cycles", H_cycles},
              {"L_cycles", L_cycles},
              {"H_layers", H_layers},
              {"L_layers", L_layers},
              {"hidden_size", hidden_size},
              {"num_heads", num_heads},
              {"expansion", expansion},
              {"pos_encodings", pos_encodings},
              {"rms_norm_eps", rms_norm_eps},
              {"rope_theta", rope_theta},
              {"halt_max_steps", halt_max_steps},
              {"halt_exploration_prob", halt_exploration_prob},
              {"forward_dtype", forward_dtype}};
}

HrmConfig HrmConfig::from_arch_json(const Json& arch, int64_t batch_size, int64_t seq_len, int64_t vocab_size,
                                    int64_t num_puzzle_identifiers) {
  HrmConfig c;
  const Json a = merge_config(c.arch_json(), arch, "arch");
  c.loss_type = a["loss"]["loss_type"].get<std::string>();
  c.puzzle_emb_ndim = a["puzzle_emb_ndim"].get<int64_t>();
  c.H_cycles = a["H_cycles"].get<int64_t>();
  c.L_cycles = a["L_cycles"].get<int64_t>();
  c.H_layers = a["H_layers"].get<int64_t>();
  c.L_layers = a["L_layers"].get<int64_t>();
  c.hidden_size = a["hidden_size"].get<int64_t>();
  c.num_heads = a["num_heads"].get<int64_t>();
  c.expansion = a["expansion"].get<double>();
  c.pos_encodings = a["pos_encodings"].get<std::string>();
  c.rms_norm_eps = a["rms_norm_eps"].get<double>();
  c.rope_theta = a["rope_theta"].get<double>();
  c.halt_max_steps = a["halt_max_steps"].get<int64_t>();
  c.halt_exploration_prob = a["halt_exploration_prob"].get<double>();
  c.forward_dtype = a["forward_dtype"].get<std::string>();
  c.batch_size = batch_size;
  c.seq_len = seq_len;
  c.vocab_size = vocab_size;
  c.num_puzzle_identifiers = num_puzzle_identifiers;
  c.validate();
  return c;
}

void HrmConfig::validate() const {
  auto require = [](bool ok, const std::string& what) {
    if (!ok) throw ConfigError("HRM config: " + what);
  };
  require(batch_size > 0, "batch_size must be positive");
  require(seq_len > 0, "seq_len must be positive");
  require(vocab_size > 0, "vocab_size must be positive");
  require(num_puzzle_identifiers > 0, "num_puzzle_identifiers must be positive");
  require(puzzle_emb_ndim >= 0, "arch.puzzle_emb_ndim must be >= 0");
  require(H_cycles > 0 && L_cycles > 0, "arch.H_cycles and arch.L_cycles must be positive");
  require(H_layers > 0 && L_layers > 0, "arch.H_layers and arch.L_layers must be positive");
  require(hidden_size > 0 && num_heads > 0 && hidden_size % num_heads == 0,
          "arch.hidden_size must be a positive multiple of arch.num_heads");
  require(pos_encodings == "rope" || pos_encodings == "learned", "arch.pos_encodings must be rope or learned");
  require(pos_encodings != "rope" || head_dim() % 2 == 0, "rope needs an even head dimension");
  require(halt_max_steps >= 1, "arch.halt_max_steps must be >= 1");
  require(halt_exploration_prob >= 0 && halt_exploration_prob <= 1, "arch.halt_exploration_prob must be in [0, 1]");
  require(forward_dtype == "float32" || forward_dtype == "bfloat16" || forward_dtype == "float64" || forward_dtype == "auto",
          "arch.forward_dtype must be auto, bfloat16, float32 or float64");
  require(loss_type == "stablemax_cross_entropy" || loss_type == "softmax_cross_entropy",
          "arch.loss.loss_type must be stablemax_cross_entropy or softmax_cross_entropy");
  require(expansion > 0 && rms_norm_eps > 0 && rope_theta > 0, "expansion, rms_norm_eps and rope_theta must be positive");
}

Batch Batch::to(const torch::Device& device) const {
  return Batch{inputs.to(device), labels.to(device), puzzle_identifiers.to(device)};
}

// ---- initialisation ----------------------------------------------------------------------------

namespace {

// JAX-style truncated normal: the result's actual std equals `std` (truncation at +-2 in units of
// the underlying normal's std, which is std * 1.1368...).
void trunc_normal_(torch::Tensor t, double std, double lower = -2.0, double upper = 2.0) {
  torch::NoGradGuard no_grad;
  if (std == 0.0) {
    t.zero_();
    return;
  }
  const double sqrt2 = std::sqrt(2.0);
  const double a = std::erf(lower / sqrt2), b = std::erf(upper / sqrt2);
  const double z = (b - a) / 2.0;
  const double c = 1.0 / std::sqrt(2.0 * M_PI);
  const double pdf_u = c * std::exp(-0.5 * lower * lower), pdf_l = c * std::exp(-0.5 * upper * upper);
  const double comp_std =
      std / std::sqrt(1.0 - (upper * pdf_u - lower * pdf_l) / z - std::pow((pdf_u - pdf_l) / z, 2.0));
  t.uniform_(a, b).erfinv_().mul_(sqrt2 * comp_std).clamp_(lower * comp_std, upper * comp_std);
}

// The precision element-wise reductions run in: float32, or the activations' own when wider
// (float64, the verification dtype).
torch::Dtype compute_dtype(torch::Dtype activations) { return torch::promote_types(activations, torch::kFloat); }

torch::Tensor rms_norm(const torch::Tensor& x, double eps) {
  const auto in_dtype = x.scalar_type();
  const auto h = x.to(compute_dtype(in_dtype));
  return (h * torch::rsqrt(h.pow(2).mean(-1, /*keepdim=*/true) + eps)).to(in_dtype);
}

// rms_norm for a tensor nobody else holds, without autograd: f32 in place, other dtypes as above.
torch::Tensor rms_norm_inplace(torch::Tensor x, double eps) {
  if (x.scalar_type() != compute_dtype(x.scalar_type())) return rms_norm(x, eps);
  const auto scale = torch::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return x.mul_(scale);
}

// NeoX rotate_half on the last dimension.
torch::Tensor rotate_half(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

}  // namespace

// ---- layers ----------------------------------------------------------------------------------

namespace {
AttentionKernel g_attention_kernel = AttentionKernel::kExact;
}  // namespace

void set_attention_kernel(AttentionKernel kernel) { g_attention_kernel = kernel; }

CastedLinearImpl::CastedLinearImpl(int64_t in, int64_t out, bool with_bias) {
  weight = register_parameter("weight", torch::empty({out, in}));
  trunc_normal_(weight, 1.0 / std::sqrt(static_cast<double>(in)));
  if (with_bias) bias = register_parameter("bias", torch::zeros({out}));
}

torch::Tensor CastedLinearImpl::forward(const torch::Tensor& x) {
  const auto dtype = x.scalar_type();
  return F::linear(x, weight.to(dtype), bias.defined() ? bias.to(dtype) : torch::Tensor());
}

CastedEmbeddingImpl::CastedEmbeddingImpl(int64_t num, int64_t dim, double init_std) {
  embedding_weight = register_parameter("embedding_weight", torch::empty({num, dim}));
  trunc_normal_(embedding_weight, init_std);
}

torch::Tensor CastedEmbeddingImpl::forward(const torch::Tensor& ids, torch::Dtype dtype) {
  return F::embedding(ids.to(torch::kLong), embedding_weight.to(dtype));
}

SparseEmbeddingImpl::SparseEmbeddingImpl(int64_t num, int64_t dim, int64_t batch_size, double init_std) {
  weights = register_buffer("weights", torch::empty({num, dim}));
  trunc_normal_(weights, init_std);
  // Not registered: like upstream's non-persistent buffers, they are not part of the state dict.
  local_weights = torch::zeros({batch_size, dim}).requires_grad_(true);
  local_ids = torch::zeros({batch_size}, torch::kInt);
}

torch::Tensor SparseEmbeddingImpl::forward(const torch::Tensor& ids, torch::Dtype dtype) {
  if (!is_training()) return weights.index_select(0, ids.to(torch::kLong)).to(dtype);
  if (local_weights.device() != weights.device()) sync_device();
  if (ids.size(0) != local_weights.size(0))
    throw ShapeError("puzzle embedding: batch of " + std::to_string(ids.size(0)) + " rows, model built for batch_size " +
                     std::to_string(local_weights.size(0)));
  {
    torch::NoGradGuard no_grad;
    local_weights.copy_(weights.index_select(0, ids.to(torch::kLong)));
    local_ids.copy_(ids);
  }
  return local_weights.to(dtype);
}

void SparseEmbeddingImpl::sync_device() {
  local_weights = torch::zeros(local_weights.sizes(), weights.options()).requires_grad_(true);
  local_ids = local_ids.to(weights.device());
}

AttentionImpl::AttentionImpl(int64_t hidden, int64_t n_heads) : heads(n_heads), head_dim(hidden / n_heads) {
  qkv_proj = register_module("qkv_proj", CastedLinear(hidden, 3 * hidden, false));
  o_proj = register_module("o_proj", CastedLinear(hidden, hidden, false));
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  const int64_t B = x.size(0), L = x.size(1);
  // Rows [0, D) of qkv_proj are Q, [D, 2D) K, [2D, 3D) V, head-major within each.
  auto qkv = qkv_proj(x).view({B, L, 3 * heads, head_dim});
  auto q = qkv.narrow(2, 0, heads), k = qkv.narrow(2, heads, heads), v = qkv.narrow(2, 2 * heads, heads);
  if (cos.defined()) {
    // RoPE in f32 (the tables' dtype; float64 activations keep float64), back to the activation dtype.
    const auto dtype = q.scalar_type(), rope_dtype = compute_dtype(dtype);
    const auto c = cos.unsqueeze(-2).to(rope_dtype), s = sin.unsqueeze(-2).to(rope_dtype);
    auto qf = q.to(rope_dtype), kf = k.to(rope_dtype);
    if (!torch::GradMode::is_enabled()) {
      q = (qf * c).add_(rotate_half(qf).mul_(s)).to(dtype);
      k = (kf * c).add_(rotate_half(kf).mul_(s)).to(dtype);
    } else {
      q = (qf * c + rotate_half(qf) * s).to(dtype);
      k = (kf * c + rotate_half(kf) * s).to(dtype);
    }
  }
  // Non-causal attention, scale 1/sqrt(head_dim); [B, heads, L, hd] for SDPA.
  auto qt = q.transpose(1, 2), kt = k.transpose(1, 2), vt = v.transpose(1, 2);
  torch::Tensor out;
  if (g_attention_kernel == AttentionKernel::kSdpa) {
    out = at::scaled_dot_product_attention(qt, kt, vt);
  } else {
    // softmax(q k^T / sqrt(d)) v with the softmax in f32: the reference's order of operations.
    // LibTorch's CPU SDPA kernel blocks the softmax differently, which compounds to 3e-5 relative
    // over four ACT steps; this stays under 1e-5.
    auto scores = torch::matmul(qt, kt.transpose(-1, -2));
    const double scale = std::sqrt(static_cast<double>(head_dim));
    scores = torch::GradMode::is_enabled() ? scores / scale : scores.div_(scale);
    out = torch::matmul(torch::softmax(scores.to(compute_dtype(scores.scalar_type())), -1).to(vt.scalar_type()), vt);
  }
  return o_proj(out.transpose(1, 2).reshape({B, L, heads * head_dim}));
}

SwiGLUImpl::SwiGLUImpl(int64_t hidden, int64_t intermediate) {
  gate_up_proj = register_module("gate_up_proj", CastedLinear(hidden, 2 * intermediate, false));
  down_proj = register_module("down_proj", CastedLinear(intermediate, hidden, false));
}

torch::Tensor SwiGLUImpl::forward(const torch::Tensor& x) {
  auto gate_up = gate_up_proj(x).chunk(2, -1);
  if (!torch::GradMode::is_enabled()) {
    // Without autograd (most of the recurrence) the same operations run in place: no new
    // intermediate-sized tensors, identical bits.
    auto gate = gate_up[0];
    torch::silu_(gate);
    return down_proj(gate.mul_(gate_up[1]));
  }
  return down_proj(F::silu(gate_up[0]) * gate_up[1]);
}

BlockImpl::BlockImpl(const HrmConfig& c) : eps(c.rms_norm_eps) {
  self_attn = register_module("self_attn", Attention(c.hidden_size, c.num_heads));
  mlp = register_module("mlp", SwiGLU(c.hidden_size, c.intermediate_size()));
}

torch::Tensor BlockImpl::forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  // Post-norm, as upstream.
  if (!torch::GradMode::is_enabled()) {
    // In place on the fresh sublayer outputs (a + x is x + a bit for bit).
    auto h = rms_norm_inplace(self_attn(x, cos, sin).add_(x), eps);
    return rms_norm_inplace(mlp(h).add_(h), eps);
  }
  auto h = rms_norm(x + self_attn(x, cos, sin), eps);
  return rms_norm(h + mlp(h), eps);
}

ReasoningModuleImpl::ReasoningModuleImpl(const HrmConfig& c, int64_t n_layers) {
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < n_layers; ++i) layers->push_back(Block(c));
}

torch::Tensor ReasoningModuleImpl::forward(const torch::Tensor& z, const torch::Tensor& injection,
                                           const torch::Tensor& cos, const torch::Tensor& sin) {
  auto h = z + injection;
  for (const auto& layer : *layers) h = layer->as<BlockImpl>()->forward(h, cos, sin);
  return h;
}

// ---- the model -------------------------------------------------------------------------------

HrmModelImpl::HrmModelImpl(HrmConfig config) : config_(std::move(config)) {
  config_.validate();
  const auto& c = config_;
  const double embed_std = 1.0 / std::sqrt(static_cast<double>(c.hidden_size));
  // Registration order = upstream's state-dict order: own buffers, then children.
  H_init = register_buffer("H_init", torch::empty({c.hidden_size}, c.dtype()));
  L_init = register_buffer("L_init", torch::empty({c.hidden_size}, c.dtype()));
  embed_tokens = register_module("embed_tokens", CastedEmbedding(c.vocab_size, c.hidden_size, embed_std));
  lm_head = register_module("lm_head", CastedLinear(c.hidden_size, c.vocab_size, false));
  q_head = register_module("q_head", CastedLinear(c.hidden_size, 2, true));
  if (c.puzzle_emb_ndim > 0)
    puzzle_emb = register_module("puzzle_emb", SparseEmbedding(c.num_puzzle_identifiers, c.puzzle_emb_ndim, c.batch_size, 0.0));
  const int64_t positions = c.seq_len + c.puzzle_emb_len();
  if (c.pos_encodings == "learned") {
    embed_pos = register_module("embed_pos", CastedEmbedding(positions, c.hidden_size, embed_std));
  } else {
    const int64_t dim = c.head_dim();
    nn::RopeSpec rope;  // the decoder LLM's RoPE, unscaled
    rope.head_dim = dim;
    rope.theta = c.rope_theta;
    const auto inv_freq = nn::rope_inverse_frequencies(rope);
    auto freqs = torch::outer(torch::arange(positions, torch::kFloat), inv_freq);
    auto emb = torch::cat({freqs, freqs}, -1);
    cos_ = emb.cos();
    sin_ = emb.sin();
  }
  H_level = register_module("H_level", ReasoningModule(c, c.H_layers));
  L_level = register_module("L_level", ReasoningModule(c, c.L_layers));
  reset_parameters(0);
}

void HrmModelImpl::reset_parameters(uint64_t seed) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(seed);
  const double embed_std = 1.0 / std::sqrt(static_cast<double>(config_.hidden_size));
  trunc_normal_(H_init, 1.0);
  trunc_normal_(L_init, 1.0);
  trunc_normal_(embed_tokens->embedding_weight, embed_std);
  trunc_normal_(lm_head->weight, 1.0 / std::sqrt(static_cast<double>(config_.hidden_size)));
  q_head->weight.zero_();
  q_head->bias.fill_(-5.0);
  if (puzzle_emb) puzzle_emb->weights.zero_();
  if (embed_pos) trunc_normal_(embed_pos->embedding_weight, embed_std);
  for (auto* level : {&H_level, &L_level})
    for (auto& linear : (*level)->modules(false)) {
      if (auto* l = linear->as<CastedLinearImpl>())
        trunc_normal_(l->weight, 1.0 / std::sqrt(static_cast<double>(l->weight.size(1))));
    }
}

NamedTensors HrmModelImpl::dense_parameters() {
  NamedTensors out;
  for (const auto& item : named_parameters(true)) out.emplace_back(item.key(), item.value());
  return out;
}

torch::Tensor HrmModelImpl::input_embeddings(const Batch& batch) {
  const auto& c = config_;
  const auto dtype = c.dtype();
  auto e = embed_tokens(batch.inputs, dtype);
  if (c.puzzle_emb_ndim > 0) {
    auto p = puzzle_emb->forward(batch.puzzle_identifiers, dtype);
    const int64_t P = c.puzzle_emb_len(), pad = P * c.hidden_size - p.size(-1);
    if (pad > 0) p = F::pad(p, F::PadFuncOptions({0, pad}));
    e = torch::cat({p.view({-1, P, c.hidden_size}), e}, -2);
  }
  if (c.pos_encodings == "learned") e = 0.707106781 * (e + embed_pos->embedding_weight.to(dtype));
  return std::sqrt(static_cast<double>(c.hidden_size)) * e;
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> HrmModelImpl::inner_forward(
    const torch::Tensor& z_H_in, const torch::Tensor& z_L_in, const Batch& batch) {
  const auto& c = config_;
  if (cos_.defined() && cos_.device() != z_H_in.device()) {
    cos_ = cos_.to(z_H_in.device());
    sin_ = sin_.to(z_H_in.device());
  }
  const auto x = input_embeddings(batch);
  torch::Tensor z_H = z_H_in, z_L = z_L_in;
  {
    // Every step but the last L and H call runs without autograd (the one-step gradient).
    torch::NoGradGuard no_grad;
    for (int64_t h = 0; h < c.H_cycles; ++h) {
      for (int64_t l = 0; l < c.L_cycles; ++l)
        if (!(h == c.H_cycles - 1 && l == c.L_cycles - 1)) z_L = L_level(z_L, z_H + x, cos_, sin_);
      if (h != c.H_cycles - 1) z_H = H_level(z_H, z_L, cos_, sin_);
    }
  }
  z_L = L_level(z_L, z_H + x, cos_, sin_);
  z_H = H_level(z_H, z_L, cos_, sin_);
  const int64_t P = c.puzzle_emb_len();
  auto logits = lm_head(z_H).narrow(1, P, c.seq_len);
  auto q = q_head(z_H.select(1, 0)).to(compute_dtype(z_H.scalar_type()));
  return {z_H.detach(), z_L.detach(), logits, q.select(-1, 0), q.select(-1, 1)};
}

Carry HrmModelImpl::initial_carry(const Batch& batch) const {
  const auto& c = config_;
  const int64_t B = batch.size(), L = c.seq_len + c.puzzle_emb_len();
  const auto opts = batch.inputs.options();
  Carry carry;
  carry.z_H = torch::zeros({B, L, c.hidden_size}, opts.dtype(c.dtype()));
  carry.z_L = torch::zeros({B, L, c.hidden_size}, opts.dtype(c.dtype()));
  carry.steps = torch::zeros({B}, opts.dtype(torch::kInt));
  carry.halted = torch::ones({B}, opts.dtype(torch::kBool));
  carry.current = Batch{torch::zeros_like(batch.inputs), torch::zeros_like(batch.labels),
                        torch::zeros_like(batch.puzzle_identifiers)};
  return carry;
}

std::pair<Carry, Outputs> HrmModelImpl::forward(const Carry& carry, const Batch& batch) {
  const auto& c = config_;
  const int64_t S = c.seq_len;
  if (batch.inputs.dim() != 2 || batch.inputs.size(1) != S || batch.labels.sizes() != batch.inputs.sizes() ||
      batch.puzzle_identifiers.dim() != 1 || batch.puzzle_identifiers.size(0) != batch.size())
    throw ShapeError("HRM batch: expected inputs and labels [B, " + std::to_string(S) + "] and puzzle_identifiers [B]");
  Carry next;
  {
    torch::NoGradGuard no_grad;
    // Halted rows restart from H_init/L_init with a fresh example from the same batch row.
    const auto halted = carry.halted;
    const auto reset = halted.view({-1, 1, 1});
    next.z_H = torch::where(reset, H_init, carry.z_H);
    next.z_L = torch::where(reset, L_init, carry.z_L);
    next.steps = torch::where(halted, torch::zeros_like(carry.steps), carry.steps);
    const auto row = halted.view({-1, 1});
    next.current.inputs = torch::where(row, batch.inputs, carry.current.inputs);
    next.current.labels = torch::where(row, batch.labels, carry.current.labels);
    next.current.puzzle_identifiers = torch::where(halted, batch.puzzle_identifiers, carry.current.puzzle_identifiers);
  }
  Outputs out;
  std::tie(next.z_H, next.z_L, out.logits, out.q_halt_logits, out.q_continue_logits) =
      inner_forward(next.z_H, next.z_L, next.current);

  torch::NoGradGuard no_grad;
  next.steps = next.steps + 1;
  const auto is_last = next.steps >= c.halt_max_steps;
  next.halted = is_last;
  if (is_training() && c.halt_max_steps > 1) {
    next.halted = next.halted | (out.q_halt_logits > out.q_continue_logits);
    // Exploration: with probability halt_exploration_prob a row must run at least U{2..Mmax} steps.
    const auto explore = torch::rand_like(out.q_halt_logits) < c.halt_exploration_prob;
    const auto min_steps = explore.to(torch::kInt) * torch::randint_like(next.steps, 2, c.halt_max_steps + 1);
    next.halted = next.halted & (next.steps >= min_steps);
    // Target Q from one more pass on the new carry (no replay buffer, no target network).
    auto [zh, zl, logits2, next_q_halt, next_q_continue] = inner_forward(next.z_H, next.z_L, next.current);
    out.target_q_continue =
        torch::sigmoid(torch::where(is_last, next_q_halt, torch::maximum(next_q_halt, next_q_continue)));
  }
  return {next, out};
}

}  // namespace hrmclara::hrm
