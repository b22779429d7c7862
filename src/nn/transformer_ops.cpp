// Transformer building blocks; see transformer_ops.h.
#include "nn/transformer_ops.h"

#include <cmath>

namespace hrmclara::nn {

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const auto x32 = x.to(at::kFloat);
  const auto normed = x32 * at::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * normed.to(x.scalar_type());
}

at::Tensor rope_inverse_frequencies(const RopeSpec& s) {
  const auto exponents = at::arange(0, s.head_dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(s.head_dim);
  auto inv_freq = 1.0 / at::pow(s.theta, exponents);
  if (s.type == "linear") return inv_freq / s.factor;
  if (s.type == "llama3") {
    // Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, the band between
    // blended linearly in the inverse wavelength.
    const double old_len = static_cast<double>(s.original_max_positions);
    const double low_wavelen = old_len / s.low_freq_factor, high_wavelen = old_len / s.high_freq_factor;
    const auto wavelen = 2.0 * M_PI / inv_freq;
    auto scaled = at::where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq);
    const auto smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
    const auto blended = (1 - smooth) * scaled / s.factor + smooth * scaled;
    const auto medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
    return at::where(medium, blended, scaled);
  }
  return inv_freq;
}

std::pair<at::Tensor, at::Tensor> rope_cos_sin(const at::Tensor& inv_freq, const at::Tensor& positions,
                                                at::ScalarType dtype) {
  // [B, T, d/2] angles, duplicated to [B, T, d] (rotate-half layout), then a heads axis.
  const auto angles = positions.to(at::kFloat).unsqueeze(-1) * inv_freq.to(positions.device());
  const auto emb = at::cat({angles, angles}, -1).unsqueeze(1);
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  const auto rotated = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * cos + rotated * sin;
}

at::Tensor swiglu_mlp(const at::Tensor& x, const at::Tensor& gate_w, const at::Tensor& gate_b,
                      const at::Tensor& up_w, const at::Tensor& up_b, const at::Tensor& down_w,
                      const at::Tensor& down_b) {
  const auto gate = at::silu(at::linear(x, gate_w, gate_b));
  return at::linear(gate * at::linear(x, up_w, up_b), down_w, down_b);
}

AttentionMask attention_mask(const at::Tensor& key_valid, int64_t query_len, int64_t offset, int64_t window,
                             bool all_keys_valid) {
  const int64_t key_len = key_valid.size(1);
  if (all_keys_valid && window <= 0) {
    if (offset == 0 && query_len == key_len) return {at::Tensor(), true};
    if (query_len == 1) return {};  // one new token sees the whole cache
  }
  const auto opts = at::TensorOptions().dtype(at::kLong).device(key_valid.device());
  const auto q_index = (at::arange(query_len, opts) + offset).unsqueeze(1);  // [Tq, 1]
  const auto k_index = at::arange(key_len, opts).unsqueeze(0);               // [1, Tk]
  auto visible = k_index <= q_index;
  if (window > 0) visible = visible.logical_and(k_index > q_index - window);
  auto mask = visible.unsqueeze(0).logical_and(key_valid.to(at::kBool).unsqueeze(1));  // [B, Tq, Tk]
  mask = mask.logical_or((k_index == q_index).unsqueeze(0));
  return {mask.unsqueeze(1), false};
}

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const AttentionMask& mask) {
  const bool grouped = q.size(1) != k.size(1);
  return at::scaled_dot_product_attention(q, k, v, mask.mask.defined() ? std::optional<at::Tensor>(mask.mask) : std::nullopt,
                                          0.0, mask.causal, std::nullopt, grouped);
}

}  // namespace hrmclara::nn
