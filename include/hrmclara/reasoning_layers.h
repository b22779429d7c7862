// The layers HRM and TRM are built from (upstream's models/layers.py, shared by sapientinc/HRM and
// SamsungSAILMontreal/TinyRecursiveModels): linear and embedding layers that keep f32 weights and
// cast them to the activations' dtype, the sparse puzzle embedding, non-causal attention with
// RoPE, SwiGLU, and the post-norm block (attention, or TRM's token-mixing MLP, then SwiGLU).
//
// Parameter names equal upstream's (qkv_proj.weight, gate_up_proj.weight, mlp_t.down_proj.weight,
// ...), so the models' state dicts match upstream checkpoints key for key.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>

namespace hrmclara::nn {

// JAX-style truncated normal, in place: the result's actual std equals `std` (upstream's
// trunc_normal_init_). std 0 zeroes the tensor.
void trunc_normal_(torch::Tensor t, double std, double lower = -2.0, double upper = 2.0);

// SwiGLU's inner width as upstream rounds it: _find_multiple(round(expansion * hidden * 2/3), 256).
int64_t swiglu_width(int64_t hidden, double expansion);

// x * rsqrt(mean(x^2) + eps) without a weight, computed in float32 (or float64 activations' own).
torch::Tensor rms_norm(const torch::Tensor& x, double eps);

// The fused CPU kernels of the layers' element-wise chains (residual add + RMSNorm, SwiGLU's
// activation, RoPE with the split into heads, the attention softmax; forward and backward) run for
// float32 on the CPU; other dtypes and devices always take the plain op chains. On by default;
// off gives the plain chains for float32 too (to compare). The capability is that of ATen's
// kernels: "avx512", "avx2" or "default".
void set_fused_kernels(bool enabled);
bool fused_kernels_enabled();
const char* fused_kernels_capability();

// kExact: softmax(q k^T / sqrt d) v with an f32 softmax, as the reference (the default);
// kSdpa: LibTorch's scaled_dot_product_attention (a blocked kernel; not bit-compatible).
enum class AttentionKernel { kExact, kSdpa };
void set_attention_kernel(AttentionKernel kernel);

class CastedLinearImpl : public torch::nn::Module {
 public:
  CastedLinearImpl(int64_t in, int64_t out, bool bias);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight, bias;
};
TORCH_MODULE(CastedLinear);

class CastedEmbeddingImpl : public torch::nn::Module {
 public:
  CastedEmbeddingImpl(int64_t num, int64_t dim, double init_std);
  torch::Tensor forward(const torch::Tensor& ids, torch::Dtype dtype);
  torch::Tensor embedding_weight;
};
TORCH_MODULE(CastedEmbedding);

// The sparse puzzle embedding: a persistent buffer `weights` trained by SignSGD, and per-batch
// rows `local_weights` (not in the state dict) that receive the gradient in training.
class SparseEmbeddingImpl : public torch::nn::Module {
 public:
  SparseEmbeddingImpl(int64_t num, int64_t dim, int64_t batch_size, double init_std);
  torch::Tensor forward(const torch::Tensor& ids, torch::Dtype dtype);
  torch::Tensor weights;        // buffer [N, d]
  torch::Tensor local_weights;  // [B, d], requires grad
  torch::Tensor local_ids;      // int32 [B]
  // Re-creates the local rows on the device of `weights` (call after moving the model).
  void sync_device();
};
TORCH_MODULE(SparseEmbedding);

class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(int64_t hidden, int64_t heads);
  // cos/sin: RoPE tables [L, head_dim], or undefined for no rotary embedding.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);
  // The output at position 0 only, [B, 1, D]: its query over every position's keys and values.
  torch::Tensor forward_first(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);
  // forward() before the output projection: the heads' outputs [B, L, D].
  torch::Tensor heads_output(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);
  int64_t heads, head_dim;
  CastedLinear qkv_proj{nullptr}, o_proj{nullptr};

 private:
  // The heads' outputs [B, q_len, D] from the projection qkv [B, L, 3D], for the queries at
  // positions [0, q_len): RoPE, softmax(q k^T / sqrt(head_dim)) v, with the chosen kernel.
  torch::Tensor mix(const torch::Tensor& qkv, const torch::Tensor& cos, const torch::Tensor& sin, int64_t q_len) const;
};
TORCH_MODULE(Attention);

class SwiGLUImpl : public torch::nn::Module {
 public:
  SwiGLUImpl(int64_t hidden, int64_t intermediate);
  torch::Tensor forward(const torch::Tensor& x);
  // forward() before the down projection: silu(gate) * up [..., intermediate].
  torch::Tensor activation(const torch::Tensor& x);
  CastedLinear gate_up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(SwiGLU);

struct BlockOptions {
  int64_t hidden_size = 0, num_heads = 1;
  double expansion = 4.0, rms_norm_eps = 1e-5;
  // TRM's mlp_t: mix tokens with a SwiGLU over the sequence axis (this many positions) instead of
  // attention; 0 for attention.
  int64_t token_mlp_len = 0;
};

// Post-norm block: h = rms_norm(x + mixer(x)); out = rms_norm(h + mlp(h)), where the mixer is
// self_attn or, with token_mlp_len, mlp_t applied to x transposed to [B, D, L].
class BlockImpl : public torch::nn::Module {
 public:
  explicit BlockImpl(const BlockOptions& options);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);
  // forward(x)[:, :1] without autograd, computing no more than position 0 needs after the mixer
  // (for a pass that reads only the Q head, at position 0).
  torch::Tensor forward_first(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);
  double eps;
  Attention self_attn{nullptr};
  SwiGLU mlp_t{nullptr};
  SwiGLU mlp{nullptr};
};
TORCH_MODULE(Block);

// z + injection through the blocks.
class ReasoningModuleImpl : public torch::nn::Module {
 public:
  ReasoningModuleImpl(const BlockOptions& options, int64_t layers);
  torch::Tensor forward(const torch::Tensor& z, const torch::Tensor& injection, const torch::Tensor& cos,
                        const torch::Tensor& sin);
  // forward(...)[:, :1] without autograd: the last block computes position 0 only.
  torch::Tensor forward_first(const torch::Tensor& z, const torch::Tensor& injection, const torch::Tensor& cos,
                              const torch::Tensor& sin);
  torch::nn::ModuleList layers;
};
TORCH_MODULE(ReasoningModule);

}  // namespace hrmclara::nn
