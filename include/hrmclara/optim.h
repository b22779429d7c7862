// Optimizers of the HRM recipe, on any device, with state that can be saved and restored.
#pragma once

#include <hrmclara/tensor_io.h>

#include <torch/types.h>

#include <string>
#include <vector>

namespace hrmclara {

// AdamATan2 exactly as the adam-atan2 package (imoneoi) updates, per element in f32:
//   p *= 1 - lr*wd;  m = lerp(m, g, 1-b1);  v = lerp(v, g*g, 1-b2);
//   p -= lr / (1 - b1^t) * atan2(m, sqrt(v) / sqrt(1 - b2^t))
// No epsilon: atan2 is bounded. Parameters without a gradient are skipped.
class AdamATan2 {
 public:
  struct Options {
    double lr = 1e-4, beta1 = 0.9, beta2 = 0.95, weight_decay = 0.1;
  };
  AdamATan2(NamedTensors params, Options options);

  void step();
  void zero_grad();
  void set_lr(double lr) { options_.lr = lr; }
  double lr() const { return options_.lr; }

  // "<param>.exp_avg", "<param>.exp_avg_sq", "<param>.step" for every parameter that has state.
  NamedTensors state() const;
  // Restores state() output; throws ShapeError naming a missing or mis-shaped entry.
  void load_state(const NamedTensors& state);

 private:
  struct Slot {
    std::string name;
    torch::Tensor param, exp_avg, exp_avg_sq;
    int64_t step = 0;
  };
  std::vector<Slot> slots_;
  Options options_;
};

// AdamW exactly as torch.optim.AdamW's single-tensor path (what DeepSpeed's FusedAdam in AdamW mode
// computes, up to rounding), per element in the parameter's dtype:
//   p *= 1 - lr*wd;  m = lerp(m, g, 1-b1);  v = b2*v + (1-b2)*g*g
//   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// Parameters without a gradient are skipped (not even decayed), as torch does.
class AdamW {
 public:
  struct Options {
    double lr = 1e-4, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.0;
  };
  AdamW(NamedTensors params, Options options);

  void step();
  void zero_grad();
  void set_lr(double lr) { options_.lr = lr; }
  double lr() const { return options_.lr; }
  const NamedTensors& params() const { return params_; }

  // "<param>.exp_avg", "<param>.exp_avg_sq", "<param>.step" for every parameter with state.
  NamedTensors state() const;
  void load_state(const NamedTensors& state);  // ShapeError naming a missing or misshaped entry

 private:
  struct Slot {
    torch::Tensor exp_avg, exp_avg_sq;
    int64_t step = 0;
  };
  NamedTensors params_;
  std::vector<Slot> slots_;
  Options options_;
};

// torch.nn.utils.clip_grad_norm_: scales every gradient by max_norm / (total_norm + 1e-6) when the
// total L2 norm exceeds max_norm; returns the total norm before clipping.
double clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm);

// SignSGD with decoupled weight decay for HRM's sparse puzzle embedding: the gradient of the
// batch's local rows is summed per unique identifier, and only those rows of `weights` are
// updated: w = w * (1 - lr*wd) - lr * sign(g).
class SparseSignSGD {
 public:
  SparseSignSGD(torch::Tensor weights, torch::Tensor local_weights, torch::Tensor local_ids, double lr,
                double weight_decay);
  void step();
  // The step from given gradients [n, D] and their ids [n] (data-parallel runs: every rank's rows).
  void step(const torch::Tensor& grad, const torch::Tensor& ids);
  void zero_grad();
  void set_lr(double lr) { lr_ = lr; }
  const torch::Tensor& local_weights() const { return local_weights_; }
  const torch::Tensor& local_ids() const { return local_ids_; }
  double lr() const { return lr_; }

 private:
  torch::Tensor weights_, local_weights_, local_ids_;
  double lr_, weight_decay_;
};

}  // namespace hrmclara
