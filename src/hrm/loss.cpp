// The ACT loss head (sapientinc/HRM models/losses.py): stablemax or softmax cross entropy with
// per-example normalisation, Q-halt / Q-continue BCE, and upstream's metrics.
#include <hrmclara/hrm.h>

#include <torch/torch.h>

namespace hrmclara::hrm {

namespace F = torch::nn::functional;

torch::Tensor stablemax_cross_entropy(const torch::Tensor& logits, const torch::Tensor& labels, torch::Dtype compute) {
  const auto x = logits.to(compute);
  // s(x) = 1/(1 - x + eps) for x < 0, x + 1 otherwise. eps = 1e-30 underflows to 0 in float32,
  // where 1 - x >= 1 keeps the division safe anyway.
  const auto s = torch::where(x < 0, 1.0 / (1.0 - x + 1e-30), x + 1.0);
  const auto logprobs = torch::log(s / s.sum(-1, /*keepdim=*/true));
  const auto valid = labels != kIgnoreLabel;
  const auto index = torch::where(valid, labels, torch::zeros_like(labels)).to(torch::kLong).unsqueeze(-1);
  const auto picked = logprobs.gather(-1, index).squeeze(-1);
  return -torch::where(valid, picked, torch::zeros_like(picked));
}

torch::Tensor softmax_cross_entropy(const torch::Tensor& logits, const torch::Tensor& labels) {
  const int64_t V = logits.size(-1);
  return F::cross_entropy(logits.to(torch::kFloat).reshape({-1, V}), labels.to(torch::kLong).reshape({-1}),
                          F::CrossEntropyFuncOptions().ignore_index(kIgnoreLabel).reduction(torch::kNone))
      .view(labels.sizes());
}

LossResult act_loss(const HrmConfig& config, const Carry& new_carry, const Outputs& outputs) {
  const auto& labels = new_carry.current.labels;
  // float64 where the device has it (the reference computes stablemax in float64); MPS has none.
  const auto compute = labels.device().is_mps() ? torch::kFloat : torch::kDouble;
  LossResult result;
  torch::Tensor mask, divisor, seq_correct;
  {
    torch::NoGradGuard no_grad;
    mask = labels != kIgnoreLabel;
    const auto counts = mask.sum(-1);
    divisor = counts.clamp_min(1).unsqueeze(-1);
    const auto is_correct = mask & (outputs.logits.argmax(-1) == labels);
    seq_correct = is_correct.sum(-1) == counts;
    const auto valid = new_carry.halted & (counts > 0);
    const auto zero = torch::zeros({}, outputs.q_halt_logits.options());
    auto& m = result.metrics;
    m["count"] = valid.sum();
    m["accuracy"] = torch::where(valid, (is_correct.to(torch::kFloat) / divisor).sum(-1), zero).sum();
    m["exact_accuracy"] = (valid & seq_correct).sum();
    m["q_halt_accuracy"] = (valid & ((outputs.q_halt_logits >= 0) == seq_correct)).sum();
    m["steps"] = torch::where(valid, new_carry.steps, torch::zeros_like(new_carry.steps)).sum();
    result.all_halted = new_carry.halted.all().item<bool>();
  }
  const auto per_token = config.loss_type == "softmax_cross_entropy"
                             ? softmax_cross_entropy(outputs.logits, labels)
                             : stablemax_cross_entropy(outputs.logits, labels, compute);
  const auto lm_loss = (per_token / divisor).sum();
  const auto bce_sum = F::BinaryCrossEntropyWithLogitsFuncOptions().reduction(torch::kSum);
  const auto q_halt_loss =
      F::binary_cross_entropy_with_logits(outputs.q_halt_logits, seq_correct.to(outputs.q_halt_logits.scalar_type()), bce_sum);
  result.metrics["lm_loss"] = lm_loss.detach();
  result.metrics["q_halt_loss"] = q_halt_loss.detach();
  torch::Tensor q_continue_loss = torch::zeros({}, q_halt_loss.options());
  if (outputs.target_q_continue.defined()) {
    q_continue_loss = F::binary_cross_entropy_with_logits(outputs.q_continue_logits, outputs.target_q_continue, bce_sum);
    result.metrics["q_continue_loss"] = q_continue_loss.detach();
  }
  result.loss = lm_loss + 0.5 * (q_halt_loss + q_continue_loss);
  return result;
}

}  // namespace hrmclara::hrm
