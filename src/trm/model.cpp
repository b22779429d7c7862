// TRM's inner recurrence (upstream TinyRecursiveReasoningModel_ACTV1_Inner); see trm.h. The ACT
// wrapper, embeddings and heads are PuzzleModelImpl's (src/hrm/model.cpp).
#include <hrmclara/errors.h>
#include <hrmclara/trm.h>

#include <torch/torch.h>

namespace hrmclara::trm {

TrmModelImpl::TrmModelImpl(hrm::HrmConfig config) : PuzzleModelImpl(std::move(config)) {
  const auto& c = config_;
  if (!c.is_trm()) throw ConfigError("TRM model built from an HRM config (use make_puzzle_model)");
  // mlp_t mixes all positions: the puzzle prefix and the tokens.
  nn::BlockOptions block{c.hidden_size, c.num_heads, c.expansion, c.rms_norm_eps,
                         c.mlp_t ? c.seq_len + c.puzzle_emb_len() : 0};
  L_level = register_module("L_level", nn::ReasoningModule(block, c.L_layers));
  reset_parameters(0);
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> TrmModelImpl::inner_forward(
    const torch::Tensor& z_H_in, const torch::Tensor& z_L_in, const hrm::Batch& batch) {
  const auto& c = config_;
  const auto [cos, sin] = rope_tables(z_H_in.device());
  const auto x = input_embeddings(batch);
  torch::Tensor z_H = z_H_in, z_L = z_L_in;
  {
    // H_cycles - 1 rounds without autograd ...
    torch::NoGradGuard no_grad;
    for (int64_t h = 0; h + 1 < c.H_cycles; ++h) {
      for (int64_t l = 0; l < c.L_cycles; ++l) z_L = L_level(z_L, z_H + x, cos, sin);
      z_H = L_level(z_H, z_L, cos, sin);
    }
  }
  // ... and the last one with it, through every step.
  for (int64_t l = 0; l < c.L_cycles; ++l) z_L = L_level(z_L, z_H + x, cos, sin);
  z_H = L_level(z_H, z_L, cos, sin);
  auto [logits, q_halt, q_continue] = heads(z_H);
  return {z_H.detach(), z_L.detach(), logits, q_halt, q_continue};
}

}  // namespace hrmclara::trm

namespace hrmclara::hrm {

// Here rather than in src/hrm/: the factory is the one place that knows both models.
PuzzleModel make_puzzle_model(const HrmConfig& config) {
  if (config.is_trm()) return std::make_shared<trm::TrmModelImpl>(config);
  return std::make_shared<HrmModelImpl>(config);
}

}  // namespace hrmclara::hrm
