// Fused CPU kernels for the element-wise chains of the HRM/TRM layers (reasoning_layers.cpp), and
// their linear layers on the kernels' own GEMM (with the chains that follow fused in), with
// autograd support. Internal to the library.
//
// Each op has a plain form: the ATen op chain the layers used before, kept here as the reference
// and as the fallback. The fused kernels run for float32 tensors on the CPU (when enabled, the
// default); any other dtype (float64 for the parity tests, bf16) or device takes the plain form,
// so its numerics are exactly those of the chain. For float32 the fused forms agree with the
// plain ones to rounding: the element-wise parts round as the chain does (SwiGLU's exp is the
// kernels' own, within about 1 ulp of ATen's), the row reductions (sum of squares, max/sum of the
// softmax, the dot products of the backward passes) add in another order. tests/nn/test_fused_ops.cpp states the bounds per op.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace hrmclara::nn::fused {

// Whether the fused kernels run for float32 CPU tensors (default true; see
// reasoning_layers.h: set_fused_kernels). The tests and benchmarks switch them off to compare.
bool enabled();
void set_enabled(bool on);
// The table in use: "avx512", "avx2" or "default", following ATen's CPU capability.
const char* capability();

// x * rsqrt(mean(x^2) + eps) over the last dimension, no weight, computed in float32 (or float64
// activations' own) and cast back: the plain op chain (reasoning_layers.h: rms_norm).
at::Tensor rms_norm(const at::Tensor& x, double eps);

// rms_norm(x + r) over the last dimension without a weight, in float32 (float64 stays float64):
// h = x + r; h * rsqrt(mean(h^2) + eps). Differentiable in x and r.
at::Tensor add_rms_norm(const at::Tensor& x, const at::Tensor& r, double eps);
// The same without autograd, written into `out` (a tensor nobody else holds, of x's shape; it may
// be x or r themselves). Returns out, except for dtypes narrower than float32 (bf16), whose
// normalisation runs out of place in float32 as rms_norm's does (out then holds x + r).
at::Tensor add_rms_norm_(at::Tensor out, const at::Tensor& x, const at::Tensor& r, double eps);

// SwiGLU's activation: gate_up [..., 2I] -> silu(gate) * up [..., I], gate the first half (as
// chunk(2, -1)). Differentiable. Without grad mode the plain form runs in place on gate_up.
at::Tensor swiglu(const at::Tensor& gate_up);

// The attention input: qkv [B, L, 3 * heads * hd] (rows [0, D) of qkv_proj are Q, then K, then V)
// split into q, k, v [B, heads, L, hd], with RoPE (NeoX rotate_half; cos, sin [L, hd], or undefined
// for none) applied to q and k in float32. Differentiable in qkv. The fused form writes q, k, v
// contiguous; the plain form returns transposed views as the layers did.
std::tuple<at::Tensor, at::Tensor, at::Tensor> split_heads_rope(const at::Tensor& qkv, int64_t heads,
                                                                const at::Tensor& cos, const at::Tensor& sin);

// softmax(scores / scale) over the last dimension, computed in float32 (float64 stays float64)
// and returned in scores' dtype. Differentiable. Without grad mode it may overwrite `scores`.
at::Tensor scaled_softmax(const at::Tensor& scores, double scale);

// softmax(q k^T / sqrt(hd)) v for the queries at positions [0, q_len), with q, k, v split from
// qkv [B, L, 3 * heads * hd] and rotated as split_heads_rope does: [B, q_len, heads * hd], each
// head's output in its hd columns (as the output projection reads it). Differentiable in qkv.
// Without autograd the fused kernel does it all per (batch row, head) in cache-sized tiles, with no
// [B, heads, L, L] scores tensor; with autograd and q_len = L the same kernel also keeps the
// probabilities, and one backward kernel per pair gives the gradient (other q_len: the op chain of
// split_heads_rope, matmul, scaled_softmax, matmul). Its sums run in another order than the GEMMs',
// so it agrees with the chain to rounding.
at::Tensor attention(const at::Tensor& qkv, int64_t heads, const at::Tensor& cos, const at::Tensor& sin, int64_t q_len);

// x [..., k] w^T for w [n, k], no bias: the layers' linear product. Inside a PackedWeightScope, for
// float32 CPU tensors with the fused kernels on and ATen's AVX2 table in use, the forward runs on
// the kernels' own GEMM (fused_kernels.cpp: linear) against a copy of w packed once per scope;
// everywhere else it is at::linear (MKL). Differentiable: the input gradient g w runs on the same
// GEMM (w packed by columns, once per scope with the forward's copy; measured faster than MKL's
// sgemm at most of the HRM and TRM layers' shapes), the weight gradient g^T x is at::linear's own
// MKL product, bit for bit (a reduction over all rows, where the kernels' GEMM was measured no
// faster). The kernels' sums run in another order than MKL's, so the forward and the input
// gradient agree with at::linear's to rounding.
at::Tensor linear(const at::Tensor& x, const at::Tensor& w);
// The kernels' GEMM whatever the CPU and scope (w packed on every call): for the tests.
at::Tensor linear_packed(const at::Tensor& x, const at::Tensor& w);

// swiglu(linear(x, w)) for SwiGLU's gate_up weight w [2I, k]. Without grad mode, where linear()
// would run on the kernels' GEMM (and I is whole panels), one kernel computes each tile of gate and
// up and writes silu(gate) * up: the [..., 2I] projection is never stored. The same rounding as
// the two ops.
at::Tensor gate_up_swiglu(const at::Tensor& x, const at::Tensor& w);
// That kernel whatever the CPU and scope, without autograd: for the tests.
at::Tensor gate_up_swiglu_packed(const at::Tensor& x, const at::Tensor& w);

// Without autograd: add_rms_norm_(y, residual, y, eps) of y = linear(x, w), the post-norm
// sublayer's output projection, residual and norm. Where linear() would run on the kernels' GEMM
// (and residual is a contiguous float32 tensor of y's shape), one kernel does both, a group of
// rows at a time: the same bits as the two calls, one pass over memory fewer.
at::Tensor linear_add_rms_norm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& residual, double eps);
// That kernel whatever the CPU and scope: for the tests.
at::Tensor linear_add_rms_norm_packed(const at::Tensor& x, const at::Tensor& w, const at::Tensor& residual, double eps);

// While one is alive on a thread, linear() keeps each weight's packed copy for reuse: one HRM
// training step runs every weight 4-8 times (the recurrence and the target pass), packing it once.
// A weight is repacked when its storage or version counter changed. Meant to span one forward
// pass, during which the weights do not change; the copies are dropped when the outermost scope
// ends.
class PackedWeightScope {
 public:
  PackedWeightScope();
  ~PackedWeightScope();
  PackedWeightScope(const PackedWeightScope&) = delete;
  PackedWeightScope& operator=(const PackedWeightScope&) = delete;
};

// The plain forms (the references of the tests).
namespace plain {
at::Tensor add_rms_norm(const at::Tensor& x, const at::Tensor& r, double eps);
at::Tensor swiglu(const at::Tensor& gate_up);
std::tuple<at::Tensor, at::Tensor, at::Tensor> split_heads_rope(const at::Tensor& qkv, int64_t heads,
                                                                const at::Tensor& cos, const at::Tensor& sin);
at::Tensor scaled_softmax(const at::Tensor& scores, double scale);
at::Tensor attention(const at::Tensor& qkv, int64_t heads, const at::Tensor& cos, const at::Tensor& sin, int64_t q_len);
}  // namespace plain

// AdamATan2's update of one parameter (see optim.h) in one pass; false when it does not apply
// (not float32 CPU contiguous tensors of one shape, or the kernels are off), leaving all untouched.
bool adam_atan2_step(at::Tensor& param, const at::Tensor& grad, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                     double lr, double beta1, double beta2, double weight_decay, int64_t step);

}  // namespace hrmclara::nn::fused
