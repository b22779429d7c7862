// TRM, the Tiny Recursive Model (SamsungSAILMontreal/TinyRecursiveModels,
// models/recursive_reasoning/trm.py, arXiv 2510.04871): one small network, L_level, that refines
// a latent z_L from (z_H + input) L_cycles times and then the answer state z_H from z_L; H_cycles
// such rounds per ACT step, all but the last without autograd, the last backpropagated in full.
// With arch.mlp_t the blocks mix tokens with an MLP over the sequence instead of attention (the
// Sudoku variant).
//
// It shares the config (HrmConfig with name = kTrmArchName), the ACT wrapper, the loss head, the
// checkpoints and the training task with HRM (hrm.h, hrm_train.h). Parameter names equal
// upstream's after "model.inner." (L_level.layers.0.mlp_t.gate_up_proj.weight, ...).
#pragma once

#include <hrmclara/hrm.h>

namespace hrmclara::trm {

class TrmModelImpl : public hrm::PuzzleModelImpl {
 public:
  explicit TrmModelImpl(hrm::HrmConfig config);
  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> inner_forward(
      const torch::Tensor& z_H, const torch::Tensor& z_L, const hrm::Batch& batch) override;
  nn::ReasoningModule L_level{nullptr};
};
TORCH_MODULE(TrmModel);

}  // namespace hrmclara::trm
