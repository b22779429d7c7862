// The raw float32 loops behind nn/fused_ops.h, one table per CPU capability. Internal to the library.
//
// fused_kernels.cpp is compiled once per capability (baseline, AVX2, AVX-512) with that
// capability's compiler flags, the way ATen compiles its own kernels, so that
// at::vec::Vectorized<float> is a real vector there; fused_ops.cpp picks the table that matches
// ATen's own choice (at::get_cpu_capability(), which honours ATEN_CPU_CAPABILITY), so a forced
// capability forces ours too. This header includes nothing from torch: the per-capability objects
// must not share inline code with the rest of the library (see src/CMakeLists.txt).
//
// Every kernel works on a range of rows [begin, end) so that the caller can split the rows over
// threads; pointers are to contiguous row-major float32 data.
#pragma once

#include <cstdint>

namespace hrmclara::nn::fused {

struct RopeSplitArgs {
  // qkv [B, L, 3 * heads * hd]; cos, sin [L, hd] or null (no rotation); q, k, v [B, heads, L, hd].
  const float* qkv;
  const float* cos;
  const float* sin;
  float* q;
  float* k;
  float* v;
  int64_t L, heads, hd;
};

struct RopeSplitBackwardArgs {
  // gq, gk, gv [B, heads, L, hd] (null: zero); cos, sin as above; gqkv [B, L, 3 * heads * hd].
  const float* gq;
  const float* gk;
  const float* gv;
  const float* cos;
  const float* sin;
  float* gqkv;
  int64_t L, heads, hd;
};

struct AttentionArgs {
  // qkv [B, L, 3 * heads * hd] as above; cos, sin [L, hd] or null (no rotation); the queries are
  // positions [0, Lq); out [B, Lq, heads * hd], each head's output in its own hd columns.
  const float* qkv;
  const float* cos;
  const float* sin;
  float* out;
  int64_t L, Lq, heads, hd;
  float scale;  // scores are divided by it (sqrt(hd))
  // If not null: the softmax probabilities [B, heads, Lq, L], for the backward pass.
  float* probs = nullptr;
};

struct AttentionBackwardArgs {
  // qkv, cos, sin as above (all L positions are queries); probs [B, heads, L, L] as the forward
  // wrote them; gout [B, L, heads * hd]; gqkv [B, L, 3 * heads * hd], every element written.
  const float* qkv;
  const float* cos;
  const float* sin;
  const float* probs;
  const float* gout;
  float* gqkv;
  int64_t L, heads, hd;
  float scale;
};

struct LinearArgs {
  // y [rows, n] = x [rows, k] w^T for w [n, k] packed by pack_linear_weight: panels of
  // linear_panel columns, panel p holding w[p * linear_panel + j][i] at [p][i][j] (zero past n).
  // x's rows are ldx apart (>= k), y's are contiguous.
  const float* x;
  const float* packed;
  float* y;
  int64_t k, n, ldx;
  // For linear_add_rms_norm: [rows, n], contiguous, not y.
  const float* residual = nullptr;
  float eps = 0.0f;
};

struct AdamAtan2Args {
  float* param;
  const float* grad;
  float* exp_avg;
  float* exp_avg_sq;
  float decay;       // 1 - lr * weight_decay
  float w1, w2;      // lerp weights 1 - beta1, 1 - beta2
  float bias2_sqrt;  // sqrt(1 - beta2^t)
  float step;        // -lr / (1 - beta1^t)
};

struct Kernels {
  const char* name;
  // Rows of n: s = x + r, y = s / sqrt(mean(s^2) + eps); rstd[i] = that 1 / sqrt (rstd may be null).
  // y may alias x or r.
  void (*add_rms_norm)(const float* x, const float* r, float* y, float* rstd, int64_t n, float eps, int64_t begin,
                       int64_t end);
  // gx = rstd * (gy - y * mean(gy * y)), the gradient of the above with respect to s.
  void (*rms_norm_backward)(const float* gy, const float* y, const float* rstd, float* gx, int64_t n, int64_t begin,
                            int64_t end);
  // Rows of gate_up [2I] -> rows of out [I] at out_stride: silu(gate) * up, gate the first half.
  // out may be gate_up itself (out_stride 2I): each element is read before it is written.
  void (*swiglu)(const float* gate_up, float* out, int64_t inter, int64_t out_stride, int64_t begin, int64_t end);
  void (*swiglu_backward)(const float* gout, const float* gate_up, float* ggate_up, int64_t inter, int64_t begin,
                          int64_t end);
  // Rows are the B * L positions.
  void (*rope_split)(const RopeSplitArgs& a, int64_t begin, int64_t end);
  void (*rope_split_backward)(const RopeSplitBackwardArgs& a, int64_t begin, int64_t end);
  // Rows of n: y = softmax(x / scale) for scale > 0; y may alias x.
  void (*scaled_softmax)(const float* x, float* y, int64_t n, float scale, int64_t begin, int64_t end);
  // gx = y * (gy - sum(gy * y)) / scale; gx may alias gy.
  void (*scaled_softmax_backward)(const float* gy, const float* y, float* gx, int64_t n, float scale, int64_t begin,
                                  int64_t end);
  // Work items [begin, end) of the B * heads (batch row, head) pairs: softmax(q k^T / scale) v for
  // the queries [0, Lq), with q and k rotated as rope_split does, written into out. No gradient.
  void (*attention)(const AttentionArgs& a, int64_t begin, int64_t end);
  // The same pairs: the gradient of the above with respect to qkv (Lq = L).
  void (*attention_backward)(const AttentionBackwardArgs& a, int64_t begin, int64_t end);
  // Columns per panel of a packed linear weight (two vectors), and the packing itself: panels
  // [begin, end) of w [n, k]'s ceil(n / linear_panel) panels of k * linear_panel floats.
  int64_t linear_panel;
  void (*pack_linear_weight)(const float* w, int64_t n, int64_t k, float* packed, int64_t begin, int64_t end);
  // Rows [begin, end) of the product above.
  void (*linear)(const LinearArgs& a, int64_t begin, int64_t end);
  // Panels [begin, end) of w [n, k] packed by columns, as the right operand of g w (g [rows, n]):
  // panel p holds w[i][p * linear_panel + j] at [p][i][j] (zero past k), n * linear_panel floats
  // per panel. The input gradient runs linear() on it with k = n.
  void (*pack_linear_columns)(const float* w, int64_t n, int64_t k, float* packed, int64_t begin, int64_t end);
  // Rows [begin, end) of SwiGLU's gate_up projection and activation in one: y [rows, n] =
  // silu(x wg^T) * (x wu^T) for w = [wg; wu] [2n, k] packed as above, n a multiple of linear_panel
  // (gate panel p pairs with up panel p + n / linear_panel). Rounds as linear then swiglu do.
  void (*linear_swiglu)(const LinearArgs& a, int64_t begin, int64_t end);
  // Rows [begin, end) of y = add_rms_norm(residual, x w^T) (the product, then add_rms_norm above
  // with x = residual, r = y = the product, no rstd): the same bits as the two calls.
  void (*linear_add_rms_norm)(const LinearArgs& a, int64_t begin, int64_t end);
  // Elements [begin, end) of one parameter: AdamATan2's update (src/train/optimizers.cpp).
  void (*adam_atan2)(const AdamAtan2Args& a, int64_t begin, int64_t end);
};

// Defined by the three compilations of fused_kernels.cpp (only the baseline one off x86-64).
const Kernels& kernels_default();
const Kernels& kernels_avx2();
const Kernels& kernels_avx512();

}  // namespace hrmclara::nn::fused
