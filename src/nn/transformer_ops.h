// Transformer building blocks with the numerics of Hugging Face's Llama/Mistral modules, as plain
// functions over tensors so that any model (the decoder LLM here, LoRA-wrapped layers later) can
// compose them. Internal to the library.
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace hrmclara::nn {

// w * (x * rsqrt(mean(x^2) + eps)), the normalization computed in float32 and cast back to x's
// dtype before the weight multiplies (transformers' LlamaRMSNorm).
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

struct RopeSpec {
  int64_t head_dim = 0;
  double theta = 10000.0;
  std::string type = "default";  // default | linear | llama3
  double factor = 1.0, low_freq_factor = 1.0, high_freq_factor = 4.0;
  int64_t original_max_positions = 8192;
};

// float32 [head_dim / 2] inverse frequencies, computed as transformers does in float32.
at::Tensor rope_inverse_frequencies(const RopeSpec& spec);

// cos and sin [B, 1, T, head_dim] in `dtype` for int64 positions [B, T] (computed in float32).
std::pair<at::Tensor, at::Tensor> rope_cos_sin(const at::Tensor& inv_freq, const at::Tensor& positions,
                                                at::ScalarType dtype);

// x * cos + rotate_half(x) * sin for x [B, heads, T, head_dim].
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

// down(silu(gate(x)) * up(x)); biases may be undefined.
at::Tensor swiglu_mlp(const at::Tensor& x, const at::Tensor& gate_w, const at::Tensor& gate_b,
                      const at::Tensor& up_w, const at::Tensor& up_b, const at::Tensor& down_w,
                      const at::Tensor& down_b);

// Which keys each query may attend to, as a bool mask [B, 1, Tq, Tk] for scaled_dot_product_attention,
// or an undefined tensor when plain causal attention says it all (no padding, no cache offset, no
// window). Query i sits at sequence index `offset + i`; key j at index j. A key is visible when it
// is not padding (key_valid [B, Tk]), not in the future and, with a window, less than `window`
// positions back. Every query also sees itself, so rows of padding queries stay finite (their
// outputs are undefined in transformers and must be ignored).
struct AttentionMask {
  at::Tensor mask;
  bool causal = false;  // pass is_causal = true (only when mask is undefined)
};
AttentionMask attention_mask(const at::Tensor& key_valid, int64_t query_len, int64_t offset, int64_t window,
                             bool all_keys_valid);

// softmax(q k^T / sqrt(d) + mask) v with grouped-query heads (q [B, H, T, d], k/v [B, Hkv, Tk, d]).
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const AttentionMask& mask);

}  // namespace hrmclara::nn
