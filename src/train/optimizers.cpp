#include <hrmclara/errors.h>
#include <hrmclara/optim.h>

#include "nn/fused_ops.h"

#include <torch/torch.h>

#include <cmath>
#include <map>

namespace hrmclara {

AdamATan2::AdamATan2(NamedTensors params, Options options) : options_(options) {
  for (auto& [name, p] : params) slots_.push_back(Slot{name, p, {}, {}, 0});
}

void AdamATan2::step() {
  torch::NoGradGuard no_grad;
  const double lr = options_.lr, b1 = options_.beta1, b2 = options_.beta2, wd = options_.weight_decay;
  for (auto& s : slots_) {
    const auto& grad = s.param.grad();
    if (!grad.defined()) continue;
    if (!s.exp_avg.defined()) {
      s.exp_avg = torch::zeros_like(s.param);
      s.exp_avg_sq = torch::zeros_like(s.param);
    }
    s.step += 1;
    // float32 on the CPU: the same update in one vectorised pass over the four tensors (the
    // op-by-op form below reads and writes them eight times).
    if (nn::fused::adam_atan2_step(s.param, grad, s.exp_avg, s.exp_avg_sq, lr, b1, b2, wd, s.step)) continue;
    const double t = static_cast<double>(s.step);
    const double bias1 = 1.0 - std::pow(b1, t), bias2_sqrt = std::sqrt(1.0 - std::pow(b2, t));
    s.param.mul_(1.0 - lr * wd);
    s.exp_avg.lerp_(grad, 1.0 - b1);
    s.exp_avg_sq.lerp_(grad * grad, 1.0 - b2);
    s.param.add_(torch::atan2(s.exp_avg, s.exp_avg_sq.sqrt() / bias2_sqrt), -lr / bias1);
  }
}

void AdamATan2::zero_grad() {
  for (auto& s : slots_)
    if (s.param.grad().defined()) s.param.mutable_grad() = torch::Tensor();
}

NamedTensors AdamATan2::state() const {
  NamedTensors out;
  for (const auto& s : slots_) {
    if (!s.exp_avg.defined()) continue;
    out.emplace_back(s.name + ".exp_avg", s.exp_avg);
    out.emplace_back(s.name + ".exp_avg_sq", s.exp_avg_sq);
    out.emplace_back(s.name + ".step", torch::tensor(s.step, torch::kLong));
  }
  return out;
}

void AdamATan2::load_state(const NamedTensors& state) {
  std::map<std::string, torch::Tensor> by_name(state.begin(), state.end());
  torch::NoGradGuard no_grad;
  for (auto& s : slots_) {
    auto step = by_name.find(s.name + ".step");
    if (step == by_name.end()) {
      s.exp_avg = s.exp_avg_sq = torch::Tensor();
      s.step = 0;
      continue;
    }
    for (const char* key : {".exp_avg", ".exp_avg_sq"}) {
      auto it = by_name.find(s.name + key);
      if (it == by_name.end()) throw ShapeError("optimizer state: missing " + s.name + key);
      if (it->second.sizes() != s.param.sizes()) throw ShapeError("optimizer state: " + s.name + key + " has the wrong shape");
    }
    s.exp_avg = by_name[s.name + ".exp_avg"].to(s.param.options()).clone();
    s.exp_avg_sq = by_name[s.name + ".exp_avg_sq"].to(s.param.options()).clone();
    s.step = step->second.item<int64_t>();
  }
}

AdamW::AdamW(NamedTensors params, Options options) : params_(std::move(params)), slots_(params_.size()), options_(options) {}

void AdamW::step() {
  torch::NoGradGuard no_grad;
  const double lr = options_.lr, b1 = options_.beta1, b2 = options_.beta2, eps = options_.eps, wd = options_.weight_decay;
  for (size_t i = 0; i < params_.size(); ++i) {
    auto& p = params_[i].second;
    const auto& grad = p.grad();
    if (!grad.defined()) continue;
    auto& s = slots_[i];
    if (!s.exp_avg.defined()) {
      s.exp_avg = torch::zeros_like(p, torch::MemoryFormat::Preserve);
      s.exp_avg_sq = torch::zeros_like(p, torch::MemoryFormat::Preserve);
    }
    s.step += 1;
    const double t = static_cast<double>(s.step);
    p.mul_(1.0 - lr * wd);
    s.exp_avg.lerp_(grad, 1.0 - b1);
    s.exp_avg_sq.mul_(b2).addcmul_(grad, grad, 1.0 - b2);
    const double bias1 = 1.0 - std::pow(b1, t), bias2_sqrt = std::sqrt(1.0 - std::pow(b2, t));
    const auto denom = (s.exp_avg_sq.sqrt() / bias2_sqrt).add_(eps);
    p.addcdiv_(s.exp_avg, denom, -lr / bias1);
  }
}

void AdamW::zero_grad() {
  for (auto& [name, p] : params_)
    if (p.grad().defined()) p.mutable_grad() = torch::Tensor();
}

NamedTensors AdamW::state() const {
  NamedTensors out;
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& s = slots_[i];
    if (!s.exp_avg.defined()) continue;
    out.emplace_back(params_[i].first + ".exp_avg", s.exp_avg);
    out.emplace_back(params_[i].first + ".exp_avg_sq", s.exp_avg_sq);
    out.emplace_back(params_[i].first + ".step", torch::tensor(s.step, torch::kLong));
  }
  return out;
}

void AdamW::load_state(const NamedTensors& state) {
  std::map<std::string, torch::Tensor> by_name(state.begin(), state.end());
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& [name, p] = params_[i];
    auto& s = slots_[i];
    const auto step = by_name.find(name + ".step");
    if (step == by_name.end()) {
      s = Slot{};
      continue;
    }
    for (const char* key : {".exp_avg", ".exp_avg_sq"}) {
      auto it = by_name.find(name + key);
      if (it == by_name.end()) throw ShapeError("optimizer state: missing " + name + key);
      if (it->second.sizes() != p.sizes()) throw ShapeError("optimizer state: " + name + key + " has the wrong shape");
    }
    s.exp_avg = by_name[name + ".exp_avg"].to(p.options()).clone();
    s.exp_avg_sq = by_name[name + ".exp_avg_sq"].to(p.options()).clone();
    s.step = step->second.item<int64_t>();
  }
}

double clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> norms;
  for (const auto& p : params)
    if (p.grad().defined()) norms.push_back(p.grad().norm(2.0).to(torch::kFloat));
  if (norms.empty()) return 0.0;
  const double total = torch::stack(norms).norm(2.0).item<double>();
  const double coef = max_norm / (total + 1e-6);
  if (coef < 1.0)
    for (const auto& p : params)
      if (p.grad().defined()) p.grad().mul_(coef);
  return total;
}

SparseSignSGD::SparseSignSGD(torch::Tensor weights, torch::Tensor local_weights, torch::Tensor local_ids, double lr,
                             double weight_decay)
    : weights_(std::move(weights)),
      local_weights_(std::move(local_weights)),
      local_ids_(std::move(local_ids)),
      lr_(lr),
      weight_decay_(weight_decay) {}

void SparseSignSGD::step() {
  const auto& grad = local_weights_.grad();
  if (!grad.defined()) return;
  step(grad, local_ids_);
}

void SparseSignSGD::step(const torch::Tensor& grad, const torch::Tensor& local_ids) {
  torch::NoGradGuard no_grad;
  auto [ids, inverse, counts] = torch::_unique2(local_ids.to(torch::kLong), /*sorted=*/true, /*return_inverse=*/true);
  const int64_t d = grad.size(1);
  auto summed = torch::zeros({ids.size(0), d}, grad.options())
                    .scatter_add_(0, inverse.unsqueeze(-1).expand({-1, d}), grad);
  auto rows = weights_.index_select(0, ids);
  rows.mul_(1.0 - lr_ * weight_decay_).add_(summed.sign(), -lr_);
  weights_.index_copy_(0, ids, rows);
}

void SparseSignSGD::zero_grad() {
  if (local_weights_.grad().defined()) local_weights_.mutable_grad() = torch::Tensor();
}

}  // namespace hrmclara
