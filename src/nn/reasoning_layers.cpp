// The layers HRM and TRM share; see reasoning_layers.h.
#include <hrmclara/reasoning_layers.h>

#include <hrmclara/errors.h>

#include "nn/fused_ops.h"

#include <torch/torch.h>

#include <cmath>

namespace hrmclara::nn {

namespace F = torch::nn::functional;

// Truncation at +-2 in units of the underlying normal's std, which is std * 1.1368...
void trunc_normal_(torch::Tensor t, double std, double lower, double upper) {
  torch::NoGradGuard no_grad;
  if (std == 0.0) {
    t.zero_();
    return;
  }
  const double sqrt2 = std::sqrt(2.0);
  const double a = std::erf(lower / sqrt2), b = std::erf(upper / sqrt2);
  const double z = (b - a) / 2.0;
  const double c = 1.0 / std::sqrt(2.0 * M_PI);
  const double pdf_u = c * std::exp(-0.5 * lower * lower), pdf_l = c * std::exp(-0.5 * upper * upper);
  const double comp_std =
      std / std::sqrt(1.0 - (upper * pdf_u - lower * pdf_l) / z - std::pow((pdf_u - pdf_l) / z, 2.0));
  t.uniform_(a, b).erfinv_().mul_(sqrt2 * comp_std).clamp_(lower * comp_std, upper * comp_std);
}

int64_t swiglu_width(int64_t hidden, double expansion) {
  // Python's round is half-to-even, which nearbyint gives in the default rounding mode.
  const double raw = std::nearbyint(expansion * static_cast<double>(hidden) * 2.0 / 3.0);
  const int64_t n = static_cast<int64_t>(raw);
  return (n + 255) / 256 * 256;
}

torch::Tensor rms_norm(const torch::Tensor& x, double eps) { return fused::rms_norm(x, eps); }

void set_fused_kernels(bool enabled) { fused::set_enabled(enabled); }
bool fused_kernels_enabled() { return fused::enabled(); }
const char* fused_kernels_capability() { return fused::capability(); }

// ---- layers ----------------------------------------------------------------------------------

namespace {
AttentionKernel g_attention_kernel = AttentionKernel::kExact;
}  // namespace

void set_attention_kernel(AttentionKernel kernel) { g_attention_kernel = kernel; }

CastedLinearImpl::CastedLinearImpl(int64_t in, int64_t out, bool with_bias) {
  weight = register_parameter("weight", torch::empty({out, in}));
  trunc_normal_(weight, 1.0 / std::sqrt(static_cast<double>(in)));
  if (with_bias) bias = register_parameter("bias", torch::zeros({out}));
}

torch::Tensor CastedLinearImpl::forward(const torch::Tensor& x) {
  const auto dtype = x.scalar_type();
  if (!bias.defined()) return fused::linear(x, weight.to(dtype));
  return F::linear(x, weight.to(dtype), bias.to(dtype));
}

CastedEmbeddingImpl::CastedEmbeddingImpl(int64_t num, int64_t dim, double init_std) {
  embedding_weight = register_parameter("embedding_weight", torch::empty({num, dim}));
  trunc_normal_(embedding_weight, init_std);
}

torch::Tensor CastedEmbeddingImpl::forward(const torch::Tensor& ids, torch::Dtype dtype) {
  return F::embedding(ids.to(torch::kLong), embedding_weight.to(dtype));
}

SparseEmbeddingImpl::SparseEmbeddingImpl(int64_t num, int64_t dim, int64_t batch_size, double init_std) {
  weights = register_buffer("weights", torch::empty({num, dim}));
  trunc_normal_(weights, init_std);
  // Not registered: like upstream's non-persistent buffers, they are not part of the state dict.
  local_weights = torch::zeros({batch_size, dim}).requires_grad_(true);
  local_ids = torch::zeros({batch_size}, torch::kInt);
}

torch::Tensor SparseEmbeddingImpl::forward(const torch::Tensor& ids, torch::Dtype dtype) {
  if (!is_training()) return weights.index_select(0, ids.to(torch::kLong)).to(dtype);
  if (local_weights.device() != weights.device()) sync_device();
  if (ids.size(0) != local_weights.size(0))
    throw ShapeError("puzzle embedding: batch of " + std::to_string(ids.size(0)) + " rows, model built for batch_size " +
                     std::to_string(local_weights.size(0)));
  {
    torch::NoGradGuard no_grad;
    local_weights.copy_(weights.index_select(0, ids.to(torch::kLong)));
    local_ids.copy_(ids);
  }
  return local_weights.to(dtype);
}

void SparseEmbeddingImpl::sync_device() {
  local_weights = torch::zeros(local_weights.sizes(), weights.options()).requires_grad_(true);
  local_ids = local_ids.to(weights.device());
}

AttentionImpl::AttentionImpl(int64_t hidden, int64_t n_heads) : heads(n_heads), head_dim(hidden / n_heads) {
  qkv_proj = register_module("qkv_proj", CastedLinear(hidden, 3 * hidden, false));
  o_proj = register_module("o_proj", CastedLinear(hidden, hidden, false));
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  return o_proj(heads_output(x, cos, sin));
}

torch::Tensor AttentionImpl::heads_output(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  return mix(qkv_proj(x), cos, sin, x.size(1));
}

torch::Tensor AttentionImpl::forward_first(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  // Every position's keys and values; the query of position 0 alone (its row of the same qkv
  // projection), in the same order of operations as forward().
  return o_proj(mix(qkv_proj(x), cos, sin, 1));
}

torch::Tensor AttentionImpl::mix(const torch::Tensor& qkv, const torch::Tensor& cos, const torch::Tensor& sin,
                                 int64_t q_len) const {
  // Rows [0, D) of qkv_proj are Q, [D, 2D) K, [2D, 3D) V, head-major within each.
  if (g_attention_kernel == AttentionKernel::kSdpa) {
    auto [q, k, v] = fused::split_heads_rope(qkv, heads, cos, sin);
    if (q_len != q.size(2)) q = q.narrow(2, 0, q_len);
    return at::scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape({qkv.size(0), q_len, heads * head_dim});
  }
  // softmax(q k^T / sqrt(d)) v with RoPE and the softmax in f32: the reference's order of
  // operations (fused: one pass per batch row and head, one more for the gradient). LibTorch's
  // CPU SDPA kernel blocks the softmax differently, which compounds to 3e-5 relative over four
  // ACT steps; this stays under 1e-5.
  return fused::attention(qkv, heads, cos, sin, q_len);
}

SwiGLUImpl::SwiGLUImpl(int64_t hidden, int64_t intermediate) {
  gate_up_proj = register_module("gate_up_proj", CastedLinear(hidden, 2 * intermediate, false));
  down_proj = register_module("down_proj", CastedLinear(intermediate, hidden, false));
}

torch::Tensor SwiGLUImpl::forward(const torch::Tensor& x) { return down_proj(activation(x)); }

torch::Tensor SwiGLUImpl::activation(const torch::Tensor& x) {
  // Without autograd (most of the recurrence) the activation is computed tile by tile with the
  // projection (or overwrites the projection's gate half in place): no new [..., 2I] tensor.
  if (!torch::GradMode::is_enabled() && !gate_up_proj->bias.defined())
    return fused::gate_up_swiglu(x, gate_up_proj->weight.to(x.scalar_type()));
  return fused::swiglu(gate_up_proj(x));
}

BlockImpl::BlockImpl(const BlockOptions& o) : eps(o.rms_norm_eps) {
  if (o.token_mlp_len > 0)
    mlp_t = register_module("mlp_t", SwiGLU(o.token_mlp_len, swiglu_width(o.token_mlp_len, o.expansion)));
  else
    self_attn = register_module("self_attn", Attention(o.hidden_size, o.num_heads));
  mlp = register_module("mlp", SwiGLU(o.hidden_size, swiglu_width(o.hidden_size, o.expansion)));
}

torch::Tensor BlockImpl::forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  // Post-norm, as upstream. TRM's token MLP mixes positions: it runs on x^T [B, D, L] and the norm
  // (over the last axis) is taken there too, i.e. over positions, as upstream does.
  if (!torch::GradMode::is_enabled()) {
    // Each sublayer's output projection, residual add and norm in one (fused_ops.h; else in place
    // on the fresh projection: a + x is x + a bit for bit).
    const auto dtype = x.scalar_type();
    torch::Tensor h;
    if (mlp_t) {
      // x^T and h copied once each: the linear layers and the norm would each copy the strided
      // views otherwise.
      const auto xt = x.transpose(1, 2).contiguous();
      h = fused::linear_add_rms_norm(mlp_t->activation(xt), mlp_t->down_proj->weight.to(dtype), xt, eps)
              .transpose(1, 2)
              .contiguous();
    } else {
      h = fused::linear_add_rms_norm(self_attn->heads_output(x, cos, sin), self_attn->o_proj->weight.to(dtype), x,
                                     eps);
    }
    return fused::linear_add_rms_norm(mlp->activation(h), mlp->down_proj->weight.to(dtype), h, eps);
  }
  torch::Tensor h;
  if (mlp_t) {
    const auto xt = x.transpose(1, 2).contiguous();
    h = fused::add_rms_norm(xt, mlp_t(xt), eps).transpose(1, 2).contiguous();
  } else {
    h = fused::add_rms_norm(x, self_attn(x, cos, sin), eps);
  }
  return fused::add_rms_norm(h, mlp(h), eps);
}

torch::Tensor BlockImpl::forward_first(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  torch::NoGradGuard no_grad;
  // The token MLP mixes positions in its output projection too: computed whole.
  if (mlp_t) return forward(x, cos, sin).narrow(1, 0, 1);
  auto attn = self_attn->forward_first(x, cos, sin);
  auto h = fused::add_rms_norm_(attn, x.narrow(1, 0, 1), attn, eps);
  auto m = mlp(h);
  return fused::add_rms_norm_(m, h, m, eps);
}

ReasoningModuleImpl::ReasoningModuleImpl(const BlockOptions& o, int64_t n_layers) {
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < n_layers; ++i) layers->push_back(Block(o));
}

torch::Tensor ReasoningModuleImpl::forward(const torch::Tensor& z, const torch::Tensor& injection,
                                           const torch::Tensor& cos, const torch::Tensor& sin) {
  auto h = z + injection;
  for (const auto& layer : *layers) h = layer->as<BlockImpl>()->forward(h, cos, sin);
  return h;
}

torch::Tensor ReasoningModuleImpl::forward_first(const torch::Tensor& z, const torch::Tensor& injection,
                                                 const torch::Tensor& cos, const torch::Tensor& sin) {
  torch::NoGradGuard no_grad;
  auto h = z + injection;
  const size_t n = layers->size();
  if (n == 0) return h.narrow(1, 0, 1);
  for (size_t i = 0; i + 1 < n; ++i) h = layers[i]->as<BlockImpl>()->forward(h, cos, sin);
  return layers[n - 1]->as<BlockImpl>()->forward_first(h, cos, sin);
}

}  // namespace hrmclara::nn
