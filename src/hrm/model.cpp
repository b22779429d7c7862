// HRM network and ACT step, following sapientinc/HRM models/hrm/hrm_act_v1.py and models/layers.py
// (see ../shared notes hrm-reference-spec.md §1-§2 for the semantics reproduced here).
#include <hrmclara/device.h>
#include <hrmclara/errors.h>
#include <hrmclara/hrm.h>

#include "nn/fused_ops.h"
#include "nn/transformer_ops.h"

#include <hrmclara/reasoning_layers.h>

#include <torch/torch.h>

#include <cfenv>
#include <cmath>

namespace hrmclara::hrm {

namespace F = torch::nn::functional;
using nn::trunc_normal_;

namespace {
// The precision the Q head's output is returned in: float32, or the activations' own when wider.
torch::Dtype compute_dtype(torch::Dtype activations) { return torch::promote_types(activations, torch::kFloat); }
}  // namespace

// ---- config ----------------------------------------------------------------------------------

int64_t HrmConfig::intermediate_size() const { return nn::swiglu_width(hidden_size, expansion); }

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
  Json a{{"name", name},
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
  if (is_trm()) {
    a["mlp_t"] = mlp_t;
    a["puzzle_emb_len"] = trm_puzzle_emb_len;
    a["no_ACT_continue"] = no_ACT_continue;
  }
  return a;
}

HrmConfig HrmConfig::from_arch_json(const Json& arch, int64_t batch_size, int64_t seq_len, int64_t vocab_size,
                                    int64_t num_puzzle_identifiers) {
  HrmConfig c;
  // The name picks the schema: TRM's has three more keys and upstream's trm.yaml defaults.
  if (arch.is_object() && arch.contains("name")) {
    if (!arch["name"].is_string()) throw ConfigError("arch.name must be a string");
    const std::string n = arch["name"].get<std::string>();
    if (n == "trm" || n == kTrmArchName) {
      c.name = kTrmArchName;
      c.H_cycles = 3, c.L_cycles = 6, c.H_layers = 0, c.L_layers = 2;
      c.puzzle_emb_ndim = c.hidden_size;  // trm.yaml: ${.hidden_size}
    } else if (n != "hrm" && n != kHrmArchName) {
      throw ConfigError("arch.name '" + n + "' is neither HRM (" + kHrmArchName + ", or hrm) nor TRM (" + kTrmArchName +
                        ", or trm)");
    }
  }
  Json a = merge_config(c.arch_json(), arch, "arch");
  a["name"] = c.name;
  if (c.is_trm()) {
    c.mlp_t = a["mlp_t"].get<bool>();
    c.trm_puzzle_emb_len = a["puzzle_emb_len"].get<int64_t>();
    c.no_ACT_continue = a["no_ACT_continue"].get<bool>();
  }
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
  // TRM has one network (L_level); its H_layers is ignored, as upstream.
  require((is_trm() || H_layers > 0) && H_layers >= 0 && L_layers > 0, "arch.H_layers and arch.L_layers must be positive");
  require(hidden_size > 0 && num_heads > 0 && hidden_size % num_heads == 0,
          "arch.hidden_size must be a positive multiple of arch.num_heads");
  require(pos_encodings == "rope" || pos_encodings == "learned" || (is_trm() && pos_encodings == "none"),
          is_trm() ? "arch.pos_encodings must be rope, learned or none" : "arch.pos_encodings must be rope or learned");
  if (is_trm()) {
    require(trm_puzzle_emb_len >= 0 && trm_puzzle_emb_len <= 4096, "arch.puzzle_emb_len must be in [0, 4096]");
    // Upstream fails on both at the first batch (a shape mismatch); say why here instead.
    require(puzzle_emb_ndim <= puzzle_emb_len() * hidden_size,
            "arch.puzzle_emb_ndim must fit in arch.puzzle_emb_len positions of hidden_size");
    require(puzzle_emb_ndim > 0 || trm_puzzle_emb_len == 0, "arch.puzzle_emb_len must be 0 when arch.puzzle_emb_ndim is 0");
  }
  require(pos_encodings != "rope" || head_dim() % 2 == 0, "rope needs an even head dimension");
  require(halt_max_steps >= 1, "arch.halt_max_steps must be >= 1");
  require(halt_exploration_prob >= 0 && halt_exploration_prob <= 1, "arch.halt_exploration_prob must be in [0, 1]");
  require(forward_dtype == "float32" || forward_dtype == "bfloat16" || forward_dtype == "float64" || forward_dtype == "auto",
          "arch.forward_dtype must be auto, bfloat16, float32 or float64");
  require(loss_type == "stablemax_cross_entropy" || loss_type == "softmax_cross_entropy",
          "arch.loss.loss_type must be stablemax_cross_entropy or softmax_cross_entropy");
  require(expansion > 0 && rms_norm_eps > 0 && rope_theta > 0, "expansion, rms_norm_eps and rope_theta must be positive");
}


// ---- the shared parts ---------------------------------------------------------------------------

PuzzleModelImpl::PuzzleModelImpl(HrmConfig config) : config_(std::move(config)) {
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
  } else if (c.pos_encodings == "rope") {
    const int64_t dim = c.head_dim();
    nn::RopeSpec rope;  // the decoder LLM's RoPE, unscaled
    rope.head_dim = dim;
    rope.theta = c.rope_theta;
    // float32 tables, as upstream; a float64 model (verification) gets them in float64, so that
    // its forward is the reference's math without any float32 step.
    const bool f64 = c.dtype() == torch::kDouble;
    const auto inv_freq = f64 ? 1.0 / torch::pow(c.rope_theta, torch::arange(0, dim, 2, torch::kDouble) / static_cast<double>(dim))
                              : nn::rope_inverse_frequencies(rope);
    auto freqs = torch::outer(torch::arange(positions, inv_freq.options()), inv_freq);
    auto emb = torch::cat({freqs, freqs}, -1);
    cos_ = emb.cos();
    sin_ = emb.sin();
  }
}

void PuzzleModelImpl::reset_parameters(uint64_t seed) {
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
  for (const auto& child : children())
    if (child->as<ReasoningModuleImpl>())
      for (auto& linear : child->modules(false))
        if (auto* l = linear->as<CastedLinearImpl>())
          trunc_normal_(l->weight, 1.0 / std::sqrt(static_cast<double>(l->weight.size(1))));
}

NamedTensors PuzzleModelImpl::dense_parameters() {
  NamedTensors out;
  for (const auto& item : named_parameters(true)) out.emplace_back(item.key(), item.value());
  return out;
}

torch::Tensor PuzzleModelImpl::input_embeddings(const Batch& batch) {
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

std::pair<torch::Tensor, torch::Tensor> PuzzleModelImpl::rope_tables(const torch::Device& device) {
  if (cos_.defined() && cos_.device() != device) {
    cos_ = cos_.to(device);
    sin_ = sin_.to(device);
  }
  return {cos_, sin_};
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> PuzzleModelImpl::heads(const torch::Tensor& z_H) {
  const int64_t P = config_.puzzle_emb_len();
  auto logits = lm_head(z_H).narrow(1, P, config_.seq_len);
  auto q = q_head(z_H.select(1, 0)).to(compute_dtype(z_H.scalar_type()));
  return {logits, q.select(-1, 0), q.select(-1, 1)};
}

// ---- HRM -------------------------------------------------------------------------------------

HrmModelImpl::HrmModelImpl(HrmConfig config) : PuzzleModelImpl(std::move(config)) {
  const auto& c = config_;
  if (c.is_trm()) throw ConfigError("HRM model built from a TRM config (use make_puzzle_model)");
  nn::BlockOptions block{c.hidden_size, c.num_heads, c.expansion, c.rms_norm_eps, 0};
  H_level = register_module("H_level", ReasoningModule(block, c.H_layers));
  L_level = register_module("L_level", ReasoningModule(block, c.L_layers));
  reset_parameters(0);
}

namespace {

// HRM's recurrence up to its last H call: every L call and every H call but the last. The last L
// call runs in the caller's grad mode (the one-step gradient), everything before it without.
void recur_to_last_h(HrmModelImpl& m, torch::Tensor& z_H, torch::Tensor& z_L, const torch::Tensor& x,
                     const torch::Tensor& cos, const torch::Tensor& sin) {
  const auto& c = m.config();
  {
    torch::NoGradGuard no_grad;
    for (int64_t h = 0; h < c.H_cycles; ++h) {
      for (int64_t l = 0; l < c.L_cycles; ++l)
        if (!(h == c.H_cycles - 1 && l == c.L_cycles - 1)) z_L = m.L_level(z_L, z_H + x, cos, sin);
      if (h != c.H_cycles - 1) z_H = m.H_level(z_H, z_L, cos, sin);
    }
  }
  z_L = m.L_level(z_L, z_H + x, cos, sin);
}

}  // namespace

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> HrmModelImpl::inner_forward(
    const torch::Tensor& z_H_in, const torch::Tensor& z_L_in, const Batch& batch) {
  const auto [cos, sin] = rope_tables(z_H_in.device());
  const auto x = input_embeddings(batch);
  torch::Tensor z_H = z_H_in, z_L = z_L_in;
  recur_to_last_h(*this, z_H, z_L, x, cos, sin);
  z_H = H_level(z_H, z_L, cos, sin);
  auto [logits, q_halt, q_continue] = heads(z_H);
  return {z_H.detach(), z_L.detach(), logits, q_halt, q_continue};
}

std::pair<torch::Tensor, torch::Tensor> HrmModelImpl::next_q(const torch::Tensor& z_H_in, const torch::Tensor& z_L_in,
                                                             const Batch& batch) {
  torch::NoGradGuard no_grad;
  const auto [cos, sin] = rope_tables(z_H_in.device());
  const auto x = input_embeddings(batch);
  torch::Tensor z_H = z_H_in, z_L = z_L_in;
  recur_to_last_h(*this, z_H, z_L, x, cos, sin);
  // Only position 0 of the last H call feeds the Q head: its last block skips the other 81
  // positions' output projection and MLP (about 2 % of a training step's FLOPs).
  const auto first = H_level->forward_first(z_H, z_L, cos, sin);
  const auto q = q_head(first.select(1, 0)).to(compute_dtype(first.scalar_type()));
  return {q.select(-1, 0), q.select(-1, 1)};
}

std::pair<torch::Tensor, torch::Tensor> PuzzleModelImpl::next_q(const torch::Tensor& z_H, const torch::Tensor& z_L,
                                                                const Batch& batch) {
  torch::NoGradGuard no_grad;
  auto [zh, zl, logits, q_halt, q_continue] = inner_forward(z_H, z_L, batch);
  return {q_halt, q_continue};
}

Carry PuzzleModelImpl::initial_carry(const Batch& batch) const {
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

std::pair<Carry, Outputs> PuzzleModelImpl::forward(const Carry& carry, const Batch& batch) {
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
  // Every weight runs 4-8 times in one step (the recurrence and the target pass): packed once.
  nn::fused::PackedWeightScope packed_weights;
  Outputs out;
  std::tie(next.z_H, next.z_L, out.logits, out.q_halt_logits, out.q_continue_logits) =
      inner_forward(next.z_H, next.z_L, next.current);

  torch::NoGradGuard no_grad;
  next.steps = next.steps + 1;
  const auto is_last = next.steps >= c.halt_max_steps;
  next.halted = is_last;
  if (is_training() && c.halt_max_steps > 1) {
    // TRM without the Q-continue head halts when sigmoid(q_halt) > 0.5.
    const bool q_continue = !(c.is_trm() && c.no_ACT_continue);
    next.halted = next.halted | (q_continue ? out.q_halt_logits > out.q_continue_logits : out.q_halt_logits > 0);
    // Exploration: with probability halt_exploration_prob a row must run at least U{2..Mmax} steps.
    const auto explore = torch::rand_like(out.q_halt_logits) < c.halt_exploration_prob;
    const auto min_steps = explore.to(torch::kInt) * torch::randint_like(next.steps, 2, c.halt_max_steps + 1);
    next.halted = next.halted & (next.steps >= min_steps);
    // Target Q from one more pass on the new carry (no replay buffer, no target network). Upstream
    // TRM's code for this (no_ACT_continue false) fails; it gets HRM's semantics here.
    if (q_continue) {
      auto [next_q_halt, next_q_continue] = next_q(next.z_H, next.z_L, next.current);
      out.target_q_continue =
          torch::sigmoid(torch::where(is_last, next_q_halt, torch::maximum(next_q_halt, next_q_continue)));
    }
  }
  return {next, out};
}

}  // namespace hrmclara::hrm
