// The fused CPU kernels of the HRM/TRM layers (src/nn/fused_ops.h) against the plain ATen op chains
// they replace: forward and gradients, random shapes (row lengths that are not multiples of any
// vector width, single rows, non-contiguous inputs), the no-grad in-place forms, the float64
// fallback (checked by finite differences, as torch.autograd.gradcheck does), whole blocks (the
// attention block and TRM's token-mixing block) and AdamATan2's fused step.
//
// Bounds, all relative to the largest magnitude of the reference (test::rel_error), and the largest
// errors measured over these tests with ATen's AVX-512, AVX2 and scalar kernels (the fused ones
// follow ATen's choice; ZzPrintMeasuredErrors prints them):
// - split_heads_rope, forward and backward: bitwise (measured 0). Each output element is one
//   product, or two products and one sum, rounded exactly as the plain chain rounds them (the
//   kernels are compiled without FMA contraction), and the split/transposes only move values.
// - add_rms_norm, swiglu, scaled_softmax forward: 1e-6, about 8 float32 ulps (measured 2.4e-7).
//   The element-wise parts round as the chains do, but the row reductions (RMSNorm's sum of
//   squares, the softmax's sum, the backward passes' dot products) add in another order than
//   ATen's reductions, and the plain chains' vector kernels leave their last few elements to
//   scalar std::exp where the fused ones use the vector exp (both within 1 ulp of exp). SwiGLU's
//   sigmoid uses the kernels' own exp (about 1 ulp; measured 1.1e-8 on the activation, and
//   SwigluAtTheEdgesOfExpsRange checks it element by element where exp over- and underflows). A
//   real fault (a missing 1/n, the wrong half of gate_up, a dropped scale) is 1e-2 or more.
// - their gradients: 1e-6 (measured 2.5e-7), but 2e-6 for the softmax's (measured 1.04e-6; see
//   kSoftmaxGradTol).
// - attention without autograd (one kernel for RoPE, q k^T, softmax, p v): 2e-6 (measured 8.4e-7;
//   1.2e-6 for the autograd path's forward with scalar kernels).
//   Its dot products and weighted sums add in their own order (not the GEMMs'), and it applies
//   the softmax's 1 / sum to the output rather than to the probabilities. With autograd the
//   forward output is the same bit for bit, and the gradient (dO V^T, the softmax backward, dS K,
//   dS^T Q, P^T dO, RoPE back) is bounded at 4e-6 (measured 3.4e-7), for the same reordered sums
//   and the softmax backward's cancellation.
// - whole blocks (attention, and TRM's token mixing), fused against plain: 1e-5, forward and
//   gradients (measured 4.8e-7): the per-op differences pass through matmuls and two norms.
// - AdamATan2: parameters 1e-6 (measured 2.7e-8; bitwise with AVX2 kernels), see that test.
// - linear (the kernels' GEMM, x w^T): against the float64 product, no worse than at::linear's
//   (MKL) error plus 2e-6 relative (measured 8.1e-7; see kLinearTol); so is its input gradient g w,
//   which runs on the same GEMM; its weight gradient is at::linear's product, bit for bit.
#include <hrmclara/optim.h>
#include <hrmclara/reasoning_layers.h>

#include <torch/torch.h>

#include <cstdlib>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "nn/fused_ops.h"
#include "test_util.h"

namespace hrmclara::nn {
namespace {

using test::rel_error;

constexpr double kTol = 1e-6;
// The softmax backward's dot product sum(gy * y) cancels against gy in (gy - dot): the difference
// of the two implementations' dot products is ~1 ulp of the largest gy * y, which relative to the
// largest gradient element can be several ulps (measured 1.04e-6 since the vector's lanes are summed
// one by one; 8.7e-7 with ATen's shuffle tree).
constexpr double kSoftmaxGradTol = 2e-6;
// The fused attention's sums (q.k over d, p v over positions) add in their own order, not the
// GEMMs', and the softmax's 1 / sum scales the output instead of the probabilities.
constexpr double kAttentionTol = 2e-6;
// Its gradient: the same reordered sums, then the softmax backward's cancellation (kSoftmaxGradTol)
// and two more products.
constexpr double kAttentionGradTol = 4e-6;
// The kernels' GEMM adds each output's k products in one FMA chain, in order; MKL splits them into
// several partial sums for some shapes, which is more accurate by up to ~k/2 ulps of the partial
// sums (measured 8.1e-7 relative over MKL's own error at k = 700).
constexpr double kLinearTol = 2e-6;

// The largest error seen per op, printed at the end of the suite (the figures in the header).
std::map<std::string, double>& measured() {
  static std::map<std::string, double> m;
  return m;
}
double record(const std::string& what, double err) {
  auto& m = measured()[what];
  m = std::max(m, err);
  return err;
}

// Switches the fused kernels for one scope.
struct FusedScope {
  explicit FusedScope(bool on) : was(fused::enabled()) { fused::set_enabled(on); }
  ~FusedScope() { fused::set_enabled(was); }
  bool was;
};

// A float32 tensor of `sizes`, non-contiguous when asked (a transposed copy viewed back, so the
// values are the same but the strides are not).
torch::Tensor random(std::vector<int64_t> sizes, bool contiguous = true, torch::Dtype dtype = torch::kFloat) {
  if (contiguous || sizes.size() < 2) return torch::randn(sizes, dtype);
  std::swap(sizes[0], sizes.back());
  return torch::randn(sizes, dtype).transpose(0, static_cast<int64_t>(sizes.size()) - 1);
}

// Row lengths around the vector widths (8 and 16 floats) and the model's.
const std::vector<int64_t> kLengths = {1, 7, 13, 16, 33, 82, 256};

TEST(FusedOps, KernelTableFollowsAtenCapability) {
  const std::string aten = at::get_cpu_capability();
  const std::string ours = fused::capability();
#if defined(__x86_64__)
  EXPECT_EQ(ours, aten == "AVX512" ? "avx512" : aten == "AVX2" ? "avx2" : "default") << aten;
#else
  EXPECT_EQ(ours, "default");
#endif
  // scripts/test.sh's forced runs name their set; the kernels must follow it.
  if (const char* set = std::getenv("HRMCLARA_KERNEL_SET")) {
    if (std::string(set) == "avx2") EXPECT_EQ(ours, "avx2");
    if (std::string(set) == "scalar") EXPECT_EQ(ours, "default");
  }
}

// ---- add + RMSNorm ---------------------------------------------------------------------------------

TEST(FusedOps, AddRmsNormForwardAndGradients) {
  torch::manual_seed(1);
  for (const int64_t n : kLengths) {
    for (const bool contiguous : {true, false}) {
      const auto x0 = random({3, 5, n}, contiguous), r0 = random({3, 5, n}) * 3.0;
      const auto gy = torch::randn({3, 5, n});
      auto run = [&](bool fused_on) {
        FusedScope scope(fused_on);
        const auto x = x0.clone().requires_grad_(true), r = r0.clone().requires_grad_(true);
        const auto y = fused::add_rms_norm(x, r, 1e-5);
        y.backward(gy);
        return std::vector<torch::Tensor>{y.detach(), x.grad(), r.grad()};
      };
      const auto f = run(true), p = run(false);
      const std::string at = "n=" + std::to_string(n) + (contiguous ? "" : " strided");
      EXPECT_LE(record("add_rms_norm forward", rel_error(f[0], p[0])), kTol) << at;
      // With one element a row normalises to +-1 and its gradient is eps-sized rounding noise.
      if (n > 1) {
        EXPECT_LE(record("add_rms_norm backward", rel_error(f[1], p[1])), kTol) << at;
        EXPECT_LE(record("add_rms_norm backward", rel_error(f[2], p[2])), kTol) << at;
      }
      // Against float64, the fused forward is as close as the plain one (same float32 rounding).
      const auto y64 = fused::plain::add_rms_norm(x0.to(torch::kDouble), r0.to(torch::kDouble), 1e-5);
      EXPECT_LE(rel_error(f[0], y64), 1e-6) << at;
    }
  }
}

TEST(FusedOps, AddRmsNormInPlaceWritesTheBufferAndMatches) {
  torch::manual_seed(2);
  torch::NoGradGuard no_grad;
  for (const int64_t n : kLengths) {
    const auto x = torch::randn({4, 9, n}), r = torch::randn({4, 9, n});
    const auto want = fused::plain::add_rms_norm(x, r, 1e-5);
    const auto out_of_place = fused::add_rms_norm(x, r, 1e-5);
    // into r (the sublayer output, as the blocks call it), into x, and into a third buffer
    auto r1 = r.clone();
    const auto a = fused::add_rms_norm_(r1, x, r1, 1e-5);
    EXPECT_TRUE(a.is_same(r1));
    auto x1 = x.clone();
    const auto b = fused::add_rms_norm_(x1, x1, r, 1e-5);
    EXPECT_TRUE(b.is_same(x1));
    auto out = torch::empty_like(x);
    fused::add_rms_norm_(out, x, r, 1e-5);
    EXPECT_TRUE(a.equal(out_of_place)) << n;
    EXPECT_TRUE(b.equal(out_of_place)) << n;
    EXPECT_TRUE(out.equal(out_of_place)) << n;
    EXPECT_LE(rel_error(a, want), kTol) << n;
  }
}

// ---- SwiGLU ------------------------------------------------------------------------------------------

// swiglu(gu0) and the gradient of <swiglu(gu0), go> with respect to gu0, fused or plain.
std::vector<torch::Tensor> swiglu_and_gradient(const torch::Tensor& gu0, const torch::Tensor& go, bool fused_on) {
  FusedScope scope(fused_on);
  const auto gu = gu0.clone().requires_grad_(true);
  const auto y = fused::swiglu(gu);
  y.backward(go);
  return {y.detach(), gu.grad()};
}

TEST(FusedOps, SwigluForwardAndGradients) {
  torch::manual_seed(3);
  for (const int64_t inter : kLengths) {
    for (const bool contiguous : {true, false}) {
      // Large enough values that exp over- and underflows in both halves of the range.
      const auto gu0 = random({2, 7, 2 * inter}, contiguous) * 8.0;
      const auto go = torch::randn({2, 7, inter});
      const auto f = swiglu_and_gradient(gu0, go, true), p = swiglu_and_gradient(gu0, go, false);
      const std::string at = "I=" + std::to_string(inter) + (contiguous ? "" : " strided");
      EXPECT_LE(record("swiglu forward", rel_error(f[0], p[0])), kTol) << at;
      EXPECT_LE(record("swiglu backward", rel_error(f[1], p[1])), kTol) << at;
      // The gate is the first half: its gradient's second half is silu(gate) * gout.
      EXPECT_LE(rel_error(f[1].narrow(-1, inter, inter), torch::silu(gu0.narrow(-1, 0, inter)) * go), kTol) << at;
    }
  }
}

TEST(FusedOps, SwigluAtTheEdgesOfExpsRange) {
  // The fused sigmoid's exp (fused_kernels.cpp: exp_fast) against ATen's around its over- and
  // underflow thresholds (e^88.72, e^-87.3), far beyond them, at the infinities and NaN: the same
  // values to a few ulps, element by element, the same infinities and the same NaNs.
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> gates = {-1000.0f, -104.0f, -100.0f, -89.0f, -88.8f, -88.72f, -88.5f, -88.0f, -87.4f, -87.3f,
                                    -87.0f,   -60.0f,  -20.0f,  -3.0f,  -1.278f, -1e-3f, -0.0f,   0.0f,   1e-30f,  2.5f,
                                    20.0f,    60.0f,   87.0f,   87.3f,  87.4f,   88.0f,  88.72f,  88.8f,  89.0f,   104.0f,
                                    1000.0f,  inf,     -inf,    nan};
  const int64_t n = static_cast<int64_t>(gates.size());
  const auto gate = torch::tensor(gates);
  // Every gate with three ups (and in rows long enough for the vector loops and their tails).
  const auto up = torch::tensor(std::vector<float>{1.0f, -0.75f, 3.0f}).repeat({n});
  const auto gu0 = torch::cat({gate.repeat_interleave(3), up}).view({1, 2 * 3 * n});
  const auto go = torch::linspace(-2, 2, 3 * n).view({1, 3 * n});
  const auto f = swiglu_and_gradient(gu0, go, true), p = swiglu_and_gradient(gu0, go, false);
  for (int i = 0; i < 2; ++i) {
    const std::string what = i == 0 ? "forward" : "backward";
    EXPECT_TRUE(torch::isnan(f[i]).equal(torch::isnan(p[i]))) << what << ": NaN in the same places";
    EXPECT_TRUE(torch::isinf(f[i]).equal(torch::isinf(p[i]))) << what << ": infinities in the same places";
    const auto finite = torch::isfinite(p[i]);
    const auto fv = f[i].masked_select(finite).to(torch::kDouble), pv = p[i].masked_select(finite).to(torch::kDouble);
    if (i == 0) {
      // silu(g) * up: relative to each element (exp's ulp, the division's and the product's).
      EXPECT_LE(((fv - pv).abs() / pv.abs().clamp_min(1e-30)).max().item<double>(), 5e-7) << what;
    } else {
      // The gradient's 1 + g (1 - sig) cancels near g = -1.278: relative to the largest element.
      EXPECT_LE(rel_error(fv, pv), kTol) << what;
    }
  }
}

TEST(FusedOps, SwigluWithoutGradOverwritesTheGateHalf) {
  torch::manual_seed(4);
  torch::NoGradGuard no_grad;
  for (const int64_t inter : kLengths) {
    const auto gu = torch::randn({3, 5, 2 * inter}) * 4.0;
    const auto want = fused::plain::swiglu(gu.clone());
    auto buffer = gu.clone();
    const auto got = fused::swiglu(buffer);
    EXPECT_EQ(got.data_ptr(), buffer.data_ptr()) << "in place on the gate half";
    EXPECT_EQ(got.sizes(), want.sizes());
    EXPECT_LE(rel_error(got, want), kTol) << inter;
    torch::GradMode::set_enabled(true);
    EXPECT_TRUE(got.equal(fused::swiglu(gu.clone().requires_grad_(true)).detach())) << "same kernel with autograd";
    torch::GradMode::set_enabled(false);
  }
}

// ---- split into heads + RoPE ---------------------------------------------------------------------

// The model's tables: cos/sin of positions x inverse frequencies, duplicated halves.
std::pair<torch::Tensor, torch::Tensor> rope_tables(int64_t L, int64_t hd) {
  const auto inv = 1.0 / torch::pow(10000.0, torch::arange(0, hd, 2, torch::kFloat) / static_cast<double>(hd));
  const auto freqs = torch::outer(torch::arange(L, torch::kFloat), inv);
  const auto emb = torch::cat({freqs, freqs}, -1);
  return {emb.cos(), emb.sin()};
}

TEST(FusedOps, SplitHeadsRopeIsBitwiseThePlainChain) {
  torch::manual_seed(5);
  struct Shape {
    int64_t B, L, heads, hd;
  };
  for (const auto& s : {Shape{2, 5, 1, 2}, Shape{3, 7, 2, 14}, Shape{2, 82, 4, 64}, Shape{1, 9, 3, 34}}) {
    for (const bool rope : {true, false}) {
      for (const bool contiguous : {true, false}) {
        auto [cos, sin] = rope_tables(s.L, s.hd);
        if (!rope) cos = sin = torch::Tensor();
        const auto qkv0 = random({s.B, s.L, 3 * s.heads * s.hd}, contiguous);
        const auto gq = torch::randn({s.B, s.heads, s.L, s.hd}), gk = torch::randn_like(gq), gv = torch::randn_like(gq);
        auto run = [&](bool fused_on) {
          FusedScope scope(fused_on);
          const auto qkv = qkv0.clone().requires_grad_(true);
          auto [q, k, v] = fused::split_heads_rope(qkv, s.heads, cos, sin);
          ((q * gq).sum() + (k * gk).sum() + (v * gv).sum()).backward();
          return std::vector<torch::Tensor>{q.detach(), k.detach(), v.detach(), qkv.grad()};
        };
        const auto f = run(true), p = run(false);
        const std::string at = "hd=" + std::to_string(s.hd) + (rope ? " rope" : "") + (contiguous ? "" : " strided");
        for (size_t i = 0; i < 4; ++i) {
          EXPECT_TRUE(test::same_tensor(f[i], p[i])) << at << " output " << i;
          record(i < 3 ? "split_heads_rope forward" : "split_heads_rope backward", rel_error(f[i], p[i]));
        }
        EXPECT_TRUE(f[0].is_contiguous() && f[1].is_contiguous() && f[2].is_contiguous()) << at;
        // The no-grad form is the same kernel.
        torch::NoGradGuard no_grad;
        auto [q, k, v] = fused::split_heads_rope(qkv0, s.heads, cos, sin);
        EXPECT_TRUE(q.equal(f[0]) && k.equal(f[1]) && v.equal(f[2])) << at;
      }
    }
  }
}

TEST(FusedOps, SplitHeadsRopeGradientOfUnusedOutputsIsZero) {
  torch::manual_seed(6);
  auto [cos, sin] = rope_tables(6, 8);
  const auto qkv = torch::randn({2, 6, 3 * 2 * 8}).requires_grad_(true);
  auto [q, k, v] = fused::split_heads_rope(qkv, 2, cos, sin);
  q.sum().backward();
  const auto g = qkv.grad();
  EXPECT_EQ(g.narrow(-1, 16, 32).abs().max().item<float>(), 0.0f);
  EXPECT_GT(g.narrow(-1, 0, 16).abs().max().item<float>(), 0.0f);
}

// ---- softmax(x / scale) ---------------------------------------------------------------------------

TEST(FusedOps, ScaledSoftmaxForwardAndGradients) {
  torch::manual_seed(7);
  for (const int64_t n : kLengths) {
    for (const bool contiguous : {true, false}) {
      // Scores of attention's size (|q.k| up to ~100), including a row of -inf but one.
      auto s0 = random({2, 3, 5, n}, contiguous) * 30.0;
      if (n > 1) s0.select(2, 1).narrow(-1, 1, n - 1).fill_(-std::numeric_limits<float>::infinity());
      const auto gy = torch::randn({2, 3, 5, n});
      for (const double scale : {8.0, std::sqrt(14.0)}) {
        auto run = [&](bool fused_on) {
          FusedScope scope(fused_on);
          const auto s = s0.clone().requires_grad_(true);
          const auto y = fused::scaled_softmax(s, scale);
          y.backward(gy);
          return std::vector<torch::Tensor>{y.detach(), s.grad()};
        };
        const auto f = run(true), p = run(false);
        const std::string at = "n=" + std::to_string(n) + " scale " + std::to_string(scale) + (contiguous ? "" : " strided");
        EXPECT_LE(record("scaled_softmax forward", rel_error(f[0], p[0])), kTol) << at;
        EXPECT_LE(record("scaled_softmax backward", rel_error(f[1], p[1])), kSoftmaxGradTol) << at;
        EXPECT_TRUE(torch::isfinite(f[1]).all().item<bool>()) << at;
        // In place without grad: the scores' own storage.
        torch::NoGradGuard no_grad;
        auto buffer = s0.contiguous().clone();
        const auto y = fused::scaled_softmax(buffer, scale);
        EXPECT_EQ(y.data_ptr(), buffer.data_ptr()) << at;
        EXPECT_TRUE(y.equal(f[0])) << at;
      }
    }
  }
}

// ---- attention ------------------------------------------------------------------------------------

// The attention cases: odd and vector-sized lengths and head sizes (hd 2 to 64, with and without a
// vector tail), with and without RoPE, contiguous and strided qkv [B, L, 3 * heads * hd].
struct AttentionCase {
  int64_t B, L, heads, hd;
  torch::Tensor cos, sin, qkv;
  std::string label;
};

void for_each_attention_case(const std::function<void(const AttentionCase&)>& f) {
  struct Shape {
    int64_t B, L, heads, hd;
  };
  for (const auto& s : {Shape{2, 5, 1, 2}, Shape{3, 7, 2, 14}, Shape{2, 82, 4, 64}, Shape{1, 9, 3, 34}, Shape{2, 33, 2, 16},
                        Shape{1, 17, 1, 40}}) {
    for (const bool rope : {true, false}) {
      for (const bool contiguous : {true, false}) {
        auto [cos, sin] = rope_tables(s.L, s.hd);
        if (!rope) cos = sin = torch::Tensor();
        const std::string label = "L=" + std::to_string(s.L) + " heads=" + std::to_string(s.heads) +
                                  " hd=" + std::to_string(s.hd) + (rope ? " rope" : "") + (contiguous ? "" : " strided");
        f(AttentionCase{s.B, s.L, s.heads, s.hd, cos, sin, random({s.B, s.L, 3 * s.heads * s.hd}, contiguous), label});
      }
    }
  }
}

TEST(FusedOps, AttentionWithoutGradMatchesThePlainChain) {
  torch::manual_seed(12);
  for_each_attention_case([](const AttentionCase& s) {
    const auto &cos = s.cos, &sin = s.sin, &qkv = s.qkv;
    const std::string& at = s.label;
    torch::NoGradGuard no_grad;
    const auto whole = fused::attention(qkv, s.heads, cos, sin, s.L);
    ASSERT_EQ(whole.sizes(), torch::IntArrayRef({s.B, s.L, s.heads * s.hd})) << at;
    EXPECT_LE(record("attention (no grad)", rel_error(whole, fused::plain::attention(qkv, s.heads, cos, sin, s.L))),
              kAttentionTol)
        << at;
    // Fewer queries (forward_first's one, and a count that leaves a partial block of rows): the
    // same rows bit for bit, since each query's sums do not depend on its neighbours.
    for (const int64_t q_len : {int64_t{1}, std::min<int64_t>(s.L, 6)}) {
      const auto part = fused::attention(qkv, s.heads, cos, sin, q_len);
      EXPECT_TRUE(part.equal(whole.narrow(1, 0, q_len))) << at << " q_len " << q_len;
      EXPECT_LE(rel_error(part, fused::plain::attention(qkv, s.heads, cos, sin, q_len)), kAttentionTol) << at;
    }
    // With the fused kernels off, the dispatch is the plain chain itself.
    FusedScope off(false);
    EXPECT_TRUE(fused::attention(qkv, s.heads, cos, sin, s.L).equal(fused::plain::attention(qkv, s.heads, cos, sin, s.L)))
        << at;
  });
}

TEST(FusedOps, AttentionWithAutogradMatchesTheChainsGradient) {
  // With autograd, the kernels' forward (keeping the probabilities) and backward passes against
  // the float32 plain chain and its autograd gradient, on the cases above; the forward output is
  // the no-grad kernel's, bit for bit. Fewer queries than positions take the differentiable chain.
  torch::manual_seed(13);
  for_each_attention_case([](const AttentionCase& s) {
    const auto gy = torch::randn({s.B, s.L, s.heads * s.hd});
    auto run = [&](bool fused_on) {
      FusedScope scope(fused_on);
      const auto qkv = s.qkv.detach().clone().requires_grad_(true);
      const auto y = fused::attention(qkv, s.heads, s.cos, s.sin, s.L);
      (y * gy).sum().backward();
      return std::make_pair(y.detach(), qkv.grad());
    };
    const auto [yf, gf] = run(true);
    const auto [yp, gp] = run(false);
    ASSERT_TRUE(gf.defined()) << s.label;
    {
      torch::NoGradGuard no_grad;
      EXPECT_TRUE(yf.equal(fused::attention(s.qkv, s.heads, s.cos, s.sin, s.L))) << s.label << ": the no-grad kernel's output";
    }
    EXPECT_LE(record("attention (autograd) forward", rel_error(yf, yp)), kAttentionTol) << s.label;
    EXPECT_LE(record("attention (autograd) gradient", rel_error(gf, gp)), kAttentionGradTol) << s.label;
  });
  // Fewer queries with autograd: the chain of fused ops, against the float64 plain chain.
  auto [cos, sin] = rope_tables(9, 8);
  const auto qkv0 = torch::randn({2, 9, 3 * 2 * 8});
  const auto gy = torch::randn({2, 4, 16});
  const auto qkv = qkv0.clone().requires_grad_(true);
  (fused::attention(qkv, 2, cos, sin, 4) * gy).sum().backward();
  const auto qkv64 = qkv0.to(torch::kDouble).requires_grad_(true);
  (fused::plain::attention(qkv64, 2, cos.to(torch::kDouble), sin.to(torch::kDouble), 4) * gy.to(torch::kDouble))
      .sum()
      .backward();
  EXPECT_LE(rel_error(qkv.grad(), qkv64.grad().to(torch::kFloat)), 1e-5);
  // float64 runs the plain chain, bit for bit.
  torch::NoGradGuard no_grad;
  const auto c64 = cos.to(torch::kDouble), s64 = sin.to(torch::kDouble), x64 = qkv0.to(torch::kDouble);
  EXPECT_TRUE(fused::attention(x64, 2, c64, s64, 9).equal(fused::plain::attention(x64, 2, c64, s64, 9)));
}

// ---- float64: the plain chains, checked by finite differences -----------------------------------

// Directional derivative check: <gy, J u> from autograd against (f(x + h u) - f(x - h u)) / 2h.
void expect_gradient_matches_differences(const std::function<torch::Tensor(const torch::Tensor&)>& f,
                                         const torch::Tensor& x0, const std::string& what) {
  const auto x = x0.clone().requires_grad_(true);
  const auto y = f(x);
  const auto gy = torch::randn_like(y);
  y.backward(gy);
  for (int trial = 0; trial < 3; ++trial) {
    const auto u = torch::randn_like(x0);
    const double h = 1e-6;
    torch::NoGradGuard no_grad;
    const double numeric = ((f(x0 + h * u) - f(x0 - h * u)) * gy).sum().item<double>() / (2 * h);
    const double analytic = (x.grad() * u).sum().item<double>();
    EXPECT_NEAR(analytic, numeric, 1e-6 * std::max(1.0, std::abs(numeric))) << what;
  }
}

TEST(FusedOps, Float64TakesThePlainChainsAndTheirGradientsCheckOut) {
  torch::manual_seed(8);
  const auto d = torch::kDouble;
  const auto x = torch::randn({3, 4, 13}, d), r = torch::randn({3, 4, 13}, d);
  auto [cos32, sin32] = rope_tables(4, 6);
  const auto cos = cos32.to(d), sin = sin32.to(d);
  // Bitwise the plain forms (nothing fused runs for float64).
  EXPECT_TRUE(fused::add_rms_norm(x, r, 1e-5).equal(fused::plain::add_rms_norm(x, r, 1e-5)));
  EXPECT_TRUE(fused::swiglu(x.narrow(-1, 0, 12)).equal(fused::plain::swiglu(x.narrow(-1, 0, 12))));
  EXPECT_TRUE(fused::scaled_softmax(x, 3.0).equal(fused::plain::scaled_softmax(x, 3.0)));
  const auto qkv = torch::randn({2, 4, 3 * 2 * 6}, d);
  EXPECT_TRUE(std::get<0>(fused::split_heads_rope(qkv, 2, cos, sin)).equal(std::get<0>(fused::plain::split_heads_rope(qkv, 2, cos, sin))));

  expect_gradient_matches_differences([&](const torch::Tensor& t) { return fused::add_rms_norm(t, r, 1e-5); }, x, "rms x");
  expect_gradient_matches_differences([&](const torch::Tensor& t) { return fused::add_rms_norm(x, t, 1e-5); }, r, "rms r");
  expect_gradient_matches_differences([](const torch::Tensor& t) { return fused::swiglu(t); }, torch::randn({3, 5, 14}, d), "swiglu");
  expect_gradient_matches_differences([](const torch::Tensor& t) { return fused::scaled_softmax(t, 2.5); }, x, "softmax");
  expect_gradient_matches_differences(
      [&](const torch::Tensor& t) {
        auto [q, k, v] = fused::split_heads_rope(t, 2, cos, sin);
        return torch::cat({q, 2 * k, 3 * v}, -1);
      },
      qkv, "rope");
}

// The fused float32 gradients against the float64 ones just checked: float32 rounding only.
TEST(FusedOps, Float32GradientsAgreeWithTheCheckedFloat64Ones) {
  torch::manual_seed(9);
  const auto x = torch::randn({6, 256}), r = torch::randn({6, 256}), gy = torch::randn({6, 256});
  auto grads = [&](torch::Dtype dtype) {
    const auto a = x.to(dtype, false, true).requires_grad_(true), b = r.to(dtype, false, true).requires_grad_(true);
    const auto h = fused::add_rms_norm(a, b, 1e-5);
    const auto s = fused::scaled_softmax(h * 10, 8.0);
    const auto y = fused::swiglu(torch::cat({s, h}, -1));
    y.backward(gy.to(dtype));
    return std::vector<torch::Tensor>{y, a.grad(), b.grad()};
  };
  const auto f32 = grads(torch::kFloat), f64 = grads(torch::kDouble);
  for (size_t i = 0; i < 3; ++i) EXPECT_LE(record("chain float32 vs float64", rel_error(f32[i], f64[i])), 2e-6) << i;
}

// ---- blocks ------------------------------------------------------------------------------------------

struct BlockRun {
  torch::Tensor out, grad_x;
  std::vector<torch::Tensor> grads;
};

BlockRun run_block(Block& block, const torch::Tensor& x0, const torch::Tensor& cos, const torch::Tensor& sin,
                   bool fused_on, bool with_grad) {
  FusedScope scope(fused_on);
  // As the models run their blocks: the linear layers on the kernels' GEMM where the CPU's table
  // takes it (AVX2), with the no-grad forward's fused SwiGLU projection and output norms.
  fused::PackedWeightScope packed;
  BlockRun r;
  if (!with_grad) {
    torch::NoGradGuard no_grad;
    r.out = block->forward(x0, cos, sin);
    return r;
  }
  for (auto& p : block->parameters()) p.mutable_grad() = torch::Tensor();
  const auto x = x0.clone().requires_grad_(true);
  r.out = block->forward(x, cos, sin);
  (r.out * torch::linspace(-1, 1, r.out.numel()).view(r.out.sizes())).sum().backward();
  r.out = r.out.detach();
  r.grad_x = x.grad();
  for (auto& p : block->parameters()) r.grads.push_back(p.grad().clone());
  return r;
}

void expect_block_matches_plain(const BlockOptions& o, int64_t B, int64_t L, bool rope) {
  torch::manual_seed(10);
  Block block(o);
  torch::Tensor cos, sin;
  if (rope) std::tie(cos, sin) = rope_tables(L, o.hidden_size / o.num_heads);
  const auto x = torch::randn({B, L, o.hidden_size});
  for (const bool with_grad : {false, true}) {
    const auto f = run_block(block, x, cos, sin, true, with_grad), p = run_block(block, x, cos, sin, false, with_grad);
    const std::string what = o.token_mlp_len > 0 ? "token-mixing block" : "attention block";
    EXPECT_LE(record(what + " forward", rel_error(f.out, p.out)), 1e-5) << (with_grad ? "grad mode" : "no grad");
    if (!with_grad) continue;
    EXPECT_LE(record(what + " gradients", rel_error(f.grad_x, p.grad_x)), 1e-5);
    ASSERT_EQ(f.grads.size(), p.grads.size());
    for (size_t i = 0; i < f.grads.size(); ++i)
      EXPECT_LE(record(what + " gradients", rel_error(f.grads[i], p.grads[i])), 1e-5) << "parameter " << i;
  }
  // bf16 never takes a fused kernel: bitwise the plain chains.
  block->to(torch::kBFloat16);
  const auto xb = x.to(torch::kBFloat16);
  torch::NoGradGuard no_grad;
  const auto fb = run_block(block, xb, cos, sin, true, false), pb = run_block(block, xb, cos, sin, false, false);
  EXPECT_TRUE(fb.out.equal(pb.out)) << "bf16";
}

TEST(FusedOps, AttentionBlockMatchesThePlainChains) {
  BlockOptions o;
  o.hidden_size = 64;
  o.num_heads = 4;
  expect_block_matches_plain(o, 3, 11, true);
  expect_block_matches_plain(o, 2, 9, false);
}

TEST(FusedOps, TokenMixingBlockMatchesThePlainChains) {
  // TRM's mlp_t: the first norm runs over positions (the transposed axis).
  BlockOptions o;
  o.hidden_size = 48;
  o.num_heads = 1;
  o.token_mlp_len = 11;
  expect_block_matches_plain(o, 3, 11, false);
}

// ---- linear ----------------------------------------------------------------------------------------

TEST(FusedOps, LinearOnTheKernelsGemmIsAsAccurateAsMkl) {
  torch::manual_seed(12);
  // Rows around the micro-kernel's block of 6, columns around the panel (2 vectors) and the
  // chunk of panels the kernel sweeps at a time (k = 700: a chunk of under 16 columns).
  for (const int64_t rows : {1, 5, 6, 7, 13, 100})
    for (const int64_t k : {1, 7, 33, 256, 700})
      for (const int64_t n : {1, 11, 16, 17, 40, 96}) {
        const auto x = random({rows, k}, rows % 2 == 0), w = random({n, k}, k % 2 == 1);
        const auto ours = fused::linear_packed(x, w), mkl = at::linear(x, w);
        const auto truth = at::linear(x.to(torch::kDouble), w.to(torch::kDouble));
        ASSERT_EQ(ours.sizes(), mkl.sizes());
        const double err = rel_error(ours.to(torch::kDouble), truth), mkl_err = rel_error(mkl.to(torch::kDouble), truth);
        record("linear (vs float64, over MKL's)", err - mkl_err);
        EXPECT_LE(err, mkl_err + kLinearTol) << rows << "x" << k << " n " << n;
      }
  // Batched rows [B, L, k], as the layers call it; rows read in place one stride apart (the
  // no-grad SwiGLU's gate half of gate_up), and views whose rows are not evenly spaced.
  const auto w = torch::randn({48, 64});
  const auto base = torch::randn({3, 11, 128}), wide = torch::randn({3, 12, 64});
  for (const auto& x : {torch::randn({3, 11, 64}), base.narrow(-1, 0, 64), base.narrow(-1, 64, 64),
                        wide.narrow(1, 1, 10), wide.narrow(1, 0, 1), base.narrow(0, 1, 1).narrow(-1, 3, 64),
                        torch::randn({11, 3, 64}).transpose(0, 1), torch::randn({3, 64, 11}).transpose(1, 2)}) {
    const auto ours = fused::linear_packed(x, w);
    auto sizes = x.sizes().vec();
    sizes.back() = 48;
    ASSERT_EQ(ours.sizes(), sizes);
    EXPECT_LE(rel_error(ours, at::linear(x, w)), kLinearTol) << x.sizes() << " " << x.strides();
  }
}

TEST(FusedOps, LinearGradientsAreAsAccurateAsMklsAndTheWeightGradientIsBitForBit) {
  torch::manual_seed(13);
  // The input gradient g w runs on the kernels' GEMM (w packed by columns, the sum over n in one
  // FMA chain): against the float64 product, no worse than at::linear's plus kLinearTol. Rows
  // and widths around the micro-kernel's 6 rows and the panel; n = 700 for a long reduction;
  // strided x and gradients that are not contiguous (a transposed view).
  for (const int64_t rows : {1, 7, 13})
    for (const int64_t k : {1, 17, 40})
      for (const int64_t n : {5, 24, 700}) {
        const auto x0 = random({2, rows, k}, rows % 2 == 1), w0 = torch::randn({n, k});
        const auto gy = k == 17 ? torch::randn({2, n, rows}).transpose(1, 2) : torch::randn({2, rows, n});
        auto grads = [&](bool packed) {
          auto x = x0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
          const auto y = packed ? fused::linear_packed(x, w) : at::linear(x, w);
          y.backward(gy);
          return std::make_pair(x.grad(), w.grad());
        };
        const auto [gx, gw] = grads(true);
        const auto [px, pw] = grads(false);
        const auto truth = at::matmul(gy.to(torch::kDouble), w0.to(torch::kDouble));
        ASSERT_EQ(gx.sizes(), px.sizes());
        const double err = rel_error(gx.to(torch::kDouble), truth), mkl_err = rel_error(px.to(torch::kDouble), truth);
        record("linear input gradient (vs float64, over MKL's)", err - mkl_err);
        EXPECT_LE(err, mkl_err + kLinearTol) << rows << "x" << k << " n " << n;
        // The weight gradient g^T x is at::linear's own product.
        EXPECT_TRUE(gw.equal(pw)) << rows << "x" << k << " n " << n;
      }
  // Only the weight needs a gradient: no input gradient, and no packed copy for it.
  auto w = torch::randn({24, 40}).requires_grad_(true);
  const auto x = torch::randn({3, 40});
  fused::linear_packed(x, w).sum().backward();
  EXPECT_LE(rel_error(w.grad(), torch::ones({24, 3}).mm(x)), kTol);
}

TEST(FusedOps, LinearReusesPackedWeightsOnlyWhileTheyAreUnchanged) {
  torch::manual_seed(14);
  const auto x = torch::randn({4, 9, 32});
  auto w = torch::randn({16, 32});
  // Outside a scope: at::linear itself.
  EXPECT_TRUE(fused::linear(x, w).equal(at::linear(x, w)));
  const bool kernels_gemm = std::string(fused::capability()) == "avx2";
  fused::PackedWeightScope scope;
  const auto first = fused::linear(x, w);
  EXPECT_TRUE(first.equal(kernels_gemm ? fused::linear_packed(x, w) : at::linear(x, w)));
  EXPECT_TRUE(fused::linear(x, w).equal(first));  // the cached copy
  // Changed in place (the version counter moves) and replaced: never the stale copy.
  w.mul_(-2.0);
  EXPECT_LE(rel_error(fused::linear(x, w), -2.0 * first), kLinearTol);
  w = torch::randn({16, 32});
  EXPECT_LE(rel_error(fused::linear(x, w), at::linear(x, w)), kLinearTol);
  {
    FusedScope off(false);
    EXPECT_TRUE(fused::linear(x, w).equal(at::linear(x, w)));
  }
  // The input gradient's copy of the weight (packed with the forward's) follows it too.
  const auto gy = torch::randn({4, 9, 16});
  auto input_grad = [&] {
    auto xg = x.clone().requires_grad_(true);
    fused::linear(xg, w).backward(gy);
    return xg.grad();
  };
  const auto before = input_grad();
  EXPECT_LE(rel_error(before, at::matmul(gy, w)), kLinearTol);
  EXPECT_TRUE(input_grad().equal(before));  // the cached copies
  w.mul_(3.0);
  EXPECT_LE(rel_error(input_grad(), 3.0 * before), kLinearTol);
}

TEST(FusedOps, GateUpSwigluKernelRoundsAsLinearThenSwiglu) {
  torch::manual_seed(15);
  torch::NoGradGuard no_grad;
  const int64_t panel = std::string(fused::capability()) == "avx512" ? 32 : 16;
  for (const int64_t rows : {1, 7, 50})
    for (const int64_t inter : {panel, 3 * panel}) {
      const auto w = torch::randn({2 * inter, 40}) * 0.3;
      const auto base = torch::randn({rows, 2, 40});
      for (const auto& x : {base.select(1, 0), base.select(1, 1).contiguous()}) {
        const auto fused_out = fused::gate_up_swiglu_packed(x, w);
        // The same GEMM's tiles, then the same activation: bit for bit.
        EXPECT_TRUE(fused_out.equal(fused::swiglu(fused::linear_packed(x, w)))) << rows << " " << inter;
        EXPECT_LE(rel_error(fused_out, fused::plain::swiglu(at::linear(x, w))), kLinearTol);
      }
    }
  // Halves that are not whole panels: refused by the kernel, computed by the two ops in a scope.
  const auto x = torch::randn({5, 24}), w = torch::randn({2 * (panel + 3), 24});
  EXPECT_THROW(fused::gate_up_swiglu_packed(x, w), std::invalid_argument);
  fused::PackedWeightScope scope;
  EXPECT_LE(rel_error(fused::gate_up_swiglu(x, w), fused::plain::swiglu(at::linear(x, w))), kLinearTol);
}

TEST(FusedOps, LinearAddRmsNormKernelRoundsAsTheTwoOps) {
  torch::manual_seed(16);
  torch::NoGradGuard no_grad;
  // Rows around the kernel's groups of 48, widths around the vectors.
  for (const int64_t rows : {1, 47, 48, 49, 101})
    for (const int64_t n : {7, 16, 40}) {
      const auto x = torch::randn({rows, 2, 33}).select(1, 1), w = torch::randn({n, 33}) * 0.2,
                 residual = torch::randn({rows, n});
      const auto fused_out = fused::linear_add_rms_norm_packed(x, w, residual, 1e-5);
      auto y = fused::linear_packed(x, w);
      EXPECT_TRUE(fused_out.equal(fused::add_rms_norm_(y, residual, y, 1e-5))) << rows << " " << n;
      EXPECT_LE(rel_error(fused_out, fused::plain::add_rms_norm(residual, at::linear(x, w), 1e-5)), kLinearTol);
    }
  // A residual of another shape is refused, not read out of bounds.
  EXPECT_THROW(fused::linear_add_rms_norm_packed(torch::randn({4, 8}), torch::randn({16, 8}), torch::randn({4, 8}), 1e-5),
               std::invalid_argument);
}

// ---- AdamATan2 -------------------------------------------------------------------------------------

TEST(FusedOps, AdamAtan2FusedStepMatchesTheOpByOpStep) {
  torch::manual_seed(11);
  for (const int64_t n : {1, 15, 1000, 40000}) {
    const auto p0 = torch::randn({n}), g1 = torch::randn({n}) * 1e-3, g2 = torch::randn({n});
    auto run = [&](bool fused_on) {
      FusedScope scope(fused_on);
      auto p = p0.clone().requires_grad_(true);
      AdamATan2 adam({{"p", p}}, {1e-2, 0.9, 0.95, 0.1});
      for (const auto& g : {g1, g2, g1}) {
        p.mutable_grad() = g.clone();
        adam.step();
      }
      return p.detach();
    };
    const auto f = run(true), plain = run(false);
    // The parameters to a few ulps; the moves p - p0 relative to the largest move (~0.05 here, of
    // which one ulp of a parameter of size ~4 is already 1e-5).
    EXPECT_LE(record("adam_atan2 parameters", rel_error(f, plain)), kTol) << n;
    EXPECT_LE(record("adam_atan2 updates", rel_error(f - p0, plain - p0)), 1e-4) << n;
  }
}

// Last in the file: prints the largest error of each op over the suite's runs.
TEST(FusedOps, ZzPrintMeasuredErrors) {
  for (const auto& [what, err] : measured()) std::printf("  fused vs plain, %-28s max relative error %.3g\n", what.c_str(), err);
  std::printf("  kernels: %s\n", fused::capability());
}

}  // namespace
}  // namespace hrmclara::nn
