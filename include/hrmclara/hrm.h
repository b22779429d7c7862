// HRM, the Hierarchical Reasoning Model (sapientinc/HRM, hrm_act_v1): the network with upstream's
// parameter names, its ACT (adaptive computation time) wrapper, and the ACT loss head.
//
// Names: HrmInner's state dict keys equal upstream's after "model.inner." (H_init,
// H_level.layers.0.self_attn.qkv_proj.weight, puzzle_emb.weights, ...), so upstream checkpoints
// load after strip_key_prefixes(..., {"model.inner."}).
#pragma once

#include <hrmclara/config.h>
#include <hrmclara/puzzle_dataset.h>
#include <hrmclara/reasoning_layers.h>
#include <hrmclara/tensor_io.h>

#include <c10/core/Device.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <map>
#include <string>
#include <vector>

namespace hrmclara::hrm {

// arch.name values: upstream HRM's and upstream TRM's model classes ("hrm" and "trm" are accepted
// as short forms and stored as these).
inline constexpr const char* kHrmArchName = "hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1";
inline constexpr const char* kTrmArchName = "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1";

// The config of both recurrent puzzle models: HRM (two modules, H and L) and TRM (one network that
// updates a latent z_L and an answer state z_H). `name` selects the model.
struct HrmConfig {
  std::string name = kHrmArchName;
  // Data-dependent fields (upstream injects them from dataset.json and the batch size).
  int64_t batch_size = 0;
  int64_t seq_len = 0;
  int64_t vocab_size = 0;
  int64_t num_puzzle_identifiers = 1;
  // Architecture (upstream's arch.* fields).
  int64_t puzzle_emb_ndim = 0;
  int64_t H_cycles = 2, L_cycles = 2, H_layers = 4, L_layers = 4;
  int64_t hidden_size = 512, num_heads = 8;
  double expansion = 4.0;
  std::string pos_encodings = "rope";  // rope | learned | none (TRM only)
  double rms_norm_eps = 1e-5, rope_theta = 10000.0;
  int64_t halt_max_steps = 16;
  double halt_exploration_prob = 0.1;
  // bfloat16 | float32 | float64 (verification) | auto (presets: bfloat16 where the device runs it
  // natively, else float32; resolved by resolve_forward_dtype before a model is built).
  std::string forward_dtype = "bfloat16";
  std::string loss_type = "stablemax_cross_entropy";  // or softmax_cross_entropy
  // TRM only (upstream's TinyRecursiveReasoningModel_ACTV1Config): token-mixing MLP instead of
  // attention; puzzle-prefix positions (0: ceil(puzzle_emb_ndim / hidden_size), HRM's rule);
  // halting on sigmoid(q_halt) alone, without the Q-continue target.
  bool mlp_t = false;
  int64_t trm_puzzle_emb_len = 16;
  bool no_ACT_continue = true;

  // Reads upstream's `arch` object (as in all_config.yaml) plus the data fields; unknown arch keys
  // are rejected by name, missing ones take upstream's defaults. Validates every field.
  static HrmConfig from_arch_json(const Json& arch, int64_t batch_size, int64_t seq_len, int64_t vocab_size,
                                  int64_t num_puzzle_identifiers);
  Json arch_json() const;  // upstream's arch layout (HRM's or TRM's keys)
  void validate() const;   // throws ConfigError naming the field

  int64_t head_dim() const { return hidden_size / num_heads; }
  bool is_trm() const { return name == kTrmArchName; }
  // Positions the puzzle embedding occupies before the tokens.
  int64_t puzzle_emb_len() const {
    return is_trm() && trm_puzzle_emb_len > 0 ? trm_puzzle_emb_len : (puzzle_emb_ndim + hidden_size - 1) / hidden_size;
  }
  int64_t intermediate_size() const;  // SwiGLU width with upstream's rounding
  torch::Dtype dtype() const;
};

// The forward dtype a tool runs: `spec` is its --dtype value (auto, or an explicit dtype) and
// `declared` the config's forward_dtype; see resolve_dtype (device.h) for the rules. Returns
// "bfloat16", "float32" or "float64"; float16 is a ConfigError (HRM's reference has no f16 path).
std::string resolve_forward_dtype(const std::string& spec, const c10::Device& device, const std::string& declared);

// Batches come from the shared puzzle datasets (puzzle_dataset.h).
using puzzles::Batch;
using puzzles::kIgnoreLabel;

// The ACT carry: recurrent states, step counts, halted flags and the example each row works on.
struct Carry {
  torch::Tensor z_H, z_L;  // [B, S + P, D] in forward dtype
  torch::Tensor steps;     // int32 [B]
  torch::Tensor halted;    // bool [B]
  Batch current;
};

struct Outputs {
  torch::Tensor logits;             // [B, S, V] forward dtype
  torch::Tensor q_halt_logits;      // f32 [B]
  torch::Tensor q_continue_logits;  // f32 [B]
  torch::Tensor target_q_continue;  // f32 [B], training with halt_max_steps > 1 only
};

// The layers (CastedLinear, Attention, SwiGLU, Block, ReasoningModule, ...) are shared with TRM:
// reasoning_layers.h.
using nn::AttentionKernel;
using nn::Block;
using nn::BlockImpl;
using nn::CastedEmbedding;
using nn::CastedLinear;
using nn::CastedLinearImpl;
using nn::ReasoningModule;
using nn::ReasoningModuleImpl;
using nn::SparseEmbedding;
using nn::set_attention_kernel;

// What HRM and TRM share: the input embeddings (tokens, puzzle prefix, positions), the LM and Q
// heads, the initial states, and the ACT wrapper (upstream's *_ACTV1.forward). A subclass builds
// its reasoning modules and the inner recurrence.
class PuzzleModelImpl : public torch::nn::Module {
 public:
  const HrmConfig& config() const { return config_; }

  // A carry whose rows are all halted, so the first step takes every row of `batch`.
  Carry initial_carry(const Batch& batch) const;

  // One ACT step. In training mode HRM halts on q_halt > q_continue and computes target_q_continue
  // with an extra no-grad pass; TRM (no_ACT_continue) halts on q_halt > 0; both with exploration.
  // In eval mode every row runs exactly halt_max_steps steps.
  std::pair<Carry, Outputs> forward(const Carry& carry, const Batch& batch);

  // The inner forward. Returns (z_H, z_L, logits, q_halt, q_continue).
  virtual std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> inner_forward(
      const torch::Tensor& z_H, const torch::Tensor& z_L, const Batch& batch) = 0;

  // The Q logits (q_halt, q_continue) an inner forward from (z_H, z_L) would give, without
  // autograd: the Q target's pass, which reads nothing else. This one runs inner_forward whole.
  virtual std::pair<torch::Tensor, torch::Tensor> next_q(const torch::Tensor& z_H, const torch::Tensor& z_L,
                                                         const Batch& batch);

  // Upstream's truncated-normal initialisation (JAX-style), q_head weight 0 / bias -5, puzzle
  // embedding 0; every reasoning module's linear layers with std 1/sqrt(fan_in).
  void reset_parameters(uint64_t seed);

  // The parameters AdamATan2 trains, by name: everything but the buffers (the puzzle embedding,
  // trained by SignSGD, and H_init/L_init, never trained).
  NamedTensors dense_parameters();

  torch::Tensor H_init, L_init;  // buffers [D], forward dtype
  CastedEmbedding embed_tokens{nullptr};
  CastedLinear lm_head{nullptr}, q_head{nullptr};
  SparseEmbedding puzzle_emb{nullptr};
  CastedEmbedding embed_pos{nullptr};

 protected:
  // Registers the shared parameters in upstream's state-dict order; the subclass registers its
  // reasoning modules after, then calls reset_parameters(0).
  explicit PuzzleModelImpl(HrmConfig config);
  torch::Tensor input_embeddings(const Batch& batch);
  // RoPE tables on `device` (undefined without rope).
  std::pair<torch::Tensor, torch::Tensor> rope_tables(const torch::Device& device);
  // logits over the sequence (the prefix dropped) and the Q logits from position 0.
  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> heads(const torch::Tensor& z_H);
  HrmConfig config_;

 private:
  torch::Tensor cos_, sin_;  // RoPE tables [S + P, head_dim], f32, not in the state dict
};
using PuzzleModel = std::shared_ptr<PuzzleModelImpl>;

// HRM (upstream HierarchicalReasoningModel_ACTV1_Inner): H_cycles x L_cycles of the L module under
// the H module, gradient through the last L and H step only (the one-step gradient).
class HrmModelImpl : public PuzzleModelImpl {
 public:
  explicit HrmModelImpl(HrmConfig config);
  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> inner_forward(
      const torch::Tensor& z_H, const torch::Tensor& z_L, const Batch& batch) override;
  // The same recurrence; the last H block computes position 0 only, and no lm_head.
  std::pair<torch::Tensor, torch::Tensor> next_q(const torch::Tensor& z_H, const torch::Tensor& z_L,
                                                 const Batch& batch) override;
  ReasoningModule H_level{nullptr}, L_level{nullptr};
};
TORCH_MODULE(HrmModel);

// The model config.name names (HRM or TRM, trm.h), built and initialised.
PuzzleModel make_puzzle_model(const HrmConfig& config);

// ---- loss head -------------------------------------------------------------------------------

// Per-token stablemax cross entropy in `compute` dtype (float64 where the device has it), 0 where
// labels == -100. logits [.., V], labels [..] -> [..].
torch::Tensor stablemax_cross_entropy(const torch::Tensor& logits, const torch::Tensor& labels, torch::Dtype compute);
torch::Tensor softmax_cross_entropy(const torch::Tensor& logits, const torch::Tensor& labels);

struct LossResult {
  torch::Tensor loss;  // lm + 0.5 (q_halt + q_continue), with grad
  std::map<std::string, torch::Tensor> metrics;  // count, accuracy, exact_accuracy, q_halt_accuracy, steps, *_loss
  bool all_halted = false;
};

// upstream ACTLossHead: labels are those of the carry's current examples.
LossResult act_loss(const HrmConfig& config, const Carry& new_carry, const Outputs& outputs);

// ---- checkpoints -----------------------------------------------------------------------------

// Reads an upstream run: all_config.yaml beside the checkpoint (or `config_path`) and dataset.json
// (beside it, or `dataset_json`, or <data_path>/train/dataset.json). Throws naming the file.
HrmConfig upstream_config(const std::string& checkpoint_path, const std::string& dataset_json, int64_t batch_size,
                          Json* full_config = nullptr);

// Our own checkpoint: a directory holding model.pt (a TorchScript-compatible tensor archive, keys
// as upstream's without prefixes) and config.json ({"arch": ..., "dataset": {seq_len, vocab_size,
// num_puzzle_identifiers}}). Written atomically.
void save_hrm_checkpoint(const PuzzleModelImpl& model, const std::string& dir, const Json& extra = Json::object());

// The config of either kind of checkpoint: ours (config.json in the directory or beside the file)
// or upstream's (all_config.yaml + dataset.json, see upstream_config).
HrmConfig checkpoint_config(const std::string& checkpoint_path, const std::string& dataset_json, int64_t batch_size);

// Loads an upstream step_N file (keys with or without "_orig_mod.", "model.inner.") or our own
// checkpoint into the model, strictly; the puzzle-embedding rows must equal the dataset's
// identifier count (upstream issue #2).
void load_hrm_weights(PuzzleModelImpl& model, const std::string& checkpoint_path);

// Throws NumericError "<source>: parameter|buffer '<name>' holds NaN or Inf" for the first
// floating-point tensor of the model that does (a corrupt checkpoint, or a diverged run).
void require_finite_weights(const PuzzleModelImpl& model, const std::string& source);

// Writes the weights as upstream does (torch.save of a dict with keys "model.inner.<name>"), so
// Python's torch.load + load_state_dict read them.
void export_upstream_state_dict(const PuzzleModelImpl& model, const std::string& path);

}  // namespace hrmclara::hrm
