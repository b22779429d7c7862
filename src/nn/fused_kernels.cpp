// The float32 loops of nn/fused_ops.h; see fused_kernels.h. Compiled once per CPU capability with
// CPU_CAPABILITY set (src/CMakeLists.txt), so Vectorized<float> is 16 lanes of AVX-512, 8 of AVX2,
// or ATen's portable scalar version, and exp/atan2 are the same (Sleef) routines ATen's own kernels
// of that capability use (except SwiGLU's sigmoid and the fused attention's softmax, which take
// exp_fast below). Contraction of a * b + c into one FMA is switched off for this file
// (-ffp-contract=off): the element-wise formulas below then round exactly as the plain ATen op
// chains they replace, which makes most of them bitwise equal to those chains; explicit fmadd is
// used only inside the reductions, whose summation order differs from ATen's anyway.
#include "nn/fused_kernels.h"

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <limits>

#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

#ifndef HRMCLARA_FUSED_CAP
#error "compile with HRMCLARA_FUSED_CAP set to default, avx2 or avx512"
#endif
#define HRMCLARA_PASTE2(a, b) a##b
#define HRMCLARA_PASTE(a, b) HRMCLARA_PASTE2(a, b)
#define HRMCLARA_STR2(a) #a
#define HRMCLARA_STR(a) HRMCLARA_STR2(a)

namespace hrmclara::nn::fused {

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t W = Vec::size();

// A vector of the `count` (< W) floats at p, the other lanes `fill`.
inline Vec load_tail(const float* p, int64_t count, float fill) {
  return Vec::set(Vec(fill), Vec::loadu(p, count), count);
}

// Horizontal sum / max of a vector, lane by lane through memory. (ATen's AVX-512 shuffle trees,
// vec_reduce_all, draw a false GCC 12 -Wuninitialized where they are inlined into the attention
// kernels. A NaN lane may be dropped by the max; where a max feeds a softmax, its numerators are
// NaN then anyway.)
inline float hsum(const Vec& v) {
  float lanes[W];
  v.store(lanes);
  float total = lanes[0];
  for (int64_t l = 1; l < W; ++l) total += lanes[l];
  return total;
}

inline float hmax(const Vec& v) {
  float lanes[W];
  v.store(lanes);
  float top = lanes[0];
  for (int64_t l = 1; l < W; ++l) top = std::max(top, lanes[l]);
  return top;
}

inline float dot(const float* a, const float* b, int64_t n) {
  Vec acc0(0.0f), acc1(0.0f);
  int64_t j = 0;
  for (; j + 2 * W <= n; j += 2 * W) {
    acc0 = at::vec::fmadd(Vec::loadu(a + j), Vec::loadu(b + j), acc0);
    acc1 = at::vec::fmadd(Vec::loadu(a + j + W), Vec::loadu(b + j + W), acc1);
  }
  for (; j + W <= n; j += W) acc0 = at::vec::fmadd(Vec::loadu(a + j), Vec::loadu(b + j), acc0);
  if (j < n) acc1 = at::vec::fmadd(Vec::loadu(a + j, n - j), Vec::loadu(b + j, n - j), acc1);
  return hsum(acc0 + acc1);
}

// ---- residual add + weightless RMSNorm --------------------------------------------------------

void add_rms_norm(const float* x, const float* r, float* y, float* rstd, int64_t n, float eps, int64_t begin,
                  int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const float* xr = x + i * n;
    const float* rr = r + i * n;
    float* yr = y + i * n;
    // Pass 1: s = x + r (stored, since y may alias x or r) and its sum of squares.
    Vec acc0(0.0f), acc1(0.0f);
    int64_t j = 0;
    for (; j + W <= n; j += W) {
      const Vec s = Vec::loadu(xr + j) + Vec::loadu(rr + j);
      s.store(yr + j);
      acc0 = at::vec::fmadd(s, s, acc0);
      std::swap(acc0, acc1);
    }
    if (j < n) {
      const Vec s = Vec::loadu(xr + j, n - j) + Vec::loadu(rr + j, n - j);
      s.store(yr + j, static_cast<int>(n - j));
      acc0 = at::vec::fmadd(s, s, acc0);
    }
    // As the plain chain: mean in float32, + eps, then 1 / sqrt (ATen's rsqrt is that division).
    const float mean = hsum(acc0 + acc1) / static_cast<float>(n);
    const float inv = 1.0f / std::sqrt(mean + eps);
    if (rstd) rstd[i] = inv;
    const Vec scale(inv);
    for (j = 0; j + W <= n; j += W) (Vec::loadu(yr + j) * scale).store(yr + j);
    if (j < n) (Vec::loadu(yr + j, n - j) * scale).store(yr + j, static_cast<int>(n - j));
  }
}

void rms_norm_backward(const float* gy, const float* y, const float* rstd, float* gx, int64_t n, int64_t begin,
                       int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const float* gr = gy + i * n;
    const float* yr = y + i * n;
    float* out = gx + i * n;
    const Vec m(dot(gr, yr, n) / static_cast<float>(n));
    const Vec inv(rstd[i]);
    int64_t j = 0;
    for (; j + W <= n; j += W) (inv * (Vec::loadu(gr + j) - Vec::loadu(yr + j) * m)).store(out + j);
    if (j < n)
      (inv * (Vec::loadu(gr + j, n - j) - Vec::loadu(yr + j, n - j) * m)).store(out + j, static_cast<int>(n - j));
  }
}

// ---- SwiGLU activation ------------------------------------------------------------------------

// e^x for SwiGLU's sigmoid and the fused attention's softmax, about 3x cheaper than ATen's Sleef
// expf (exp_u10), whose cost made SwiGLU and its gradient the largest element-wise items of a TRM
// step. x = n ln2 + r with
// |r| <= ln2 / 2 (Cody-Waite: ln2's high part has 9 significant bits, so n * kLn2Hi is exact);
// e^r = 1 + r + r^2 P(r), P of degree 4 fitted for this file to the relative error of e^r
// (Lawson-weighted least squares on Chebyshev nodes: 3.1e-9 before rounding, ~1.1 ulp evaluated in
// float32); 2^n multiplied in as two powers of two built in the exponent bits (each stays normal).
// x is clamped to [-104, 89] first: there 2^n runs from 2^-150 to 2^128, so the products underflow
// to subnormals and 0 (below e^-103.97) and overflow to inf (above e^88.72) as the true values
// do, without compare-and-select fix-ups. NaN stays NaN.
inline Vec exp_fast(const Vec& x) {
  // (clamp may turn NaN into a bound; the blend at the end gives NaN back, and n stays finite.)
  const Vec xc = at::vec::clamp(x, Vec(-104.0f), Vec(89.0f));
  const Vec n = (xc * Vec(1.44269504088896341f)).round();
  // r = x - n ln2, with ln2 = 0.693359375 - 2.12194440e-4.
  const Vec r = at::vec::fmadd(n, Vec(2.12194440e-4f), at::vec::fmadd(n, Vec(-0.693359375f), xc));
  Vec p(0.0013814610429108143f);
  p = at::vec::fmadd(p, r, Vec(0.008368710055947304f));
  p = at::vec::fmadd(p, r, Vec(0.04166838899254799f));
  p = at::vec::fmadd(p, r, Vec(0.1666652113199234f));
  p = at::vec::fmadd(p, r, Vec(0.4999999403953552f));
  const Vec er = at::vec::fmadd(r * r, p, r) + Vec(1.0f);
  // 2^n = 2^na 2^nb with na = floor(n / 2) (an arithmetic shift), nb = n - na.
  using IVec = at::vec::Vectorized<int32_t>;
  const IVec ni = at::vec::convert_to_int_of_same_size(n), na = ni >> IVec(1), nb = ni - na;
  auto pow2 = [](const IVec& k) { return at::vec::cast<float>((k + IVec(127)) << IVec(23)); };
  return Vec::blendv((er * pow2(na)) * pow2(nb), x, x.isnan());
}

// silu(g) in ATen's form, g / (1 + exp(-g)), with exp_fast.
inline Vec silu(const Vec& g) { return g / (Vec(1.0f) + exp_fast(g.neg())); }

void swiglu(const float* gate_up, float* out, int64_t inter, int64_t out_stride, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const float* g = gate_up + i * 2 * inter;
    const float* u = g + inter;
    float* o = out + i * out_stride;
    int64_t j = 0;
    for (; j + W <= inter; j += W) (silu(Vec::loadu(g + j)) * Vec::loadu(u + j)).store(o + j);
    if (j < inter) {
      const int64_t c = inter - j;
      (silu(Vec::loadu(g + j, c)) * Vec::loadu(u + j, c)).store(o + j, static_cast<int>(c));
    }
  }
}

// d/dgate = gout * up * sig * (1 + g * (1 - sig)) (in the order autograd's mul then silu_backward
// round it), d/dup = gout * silu(g), with silu(g) = g * sig: one division per element instead of
// two (the forward's g / (1 + exp(-g)) is at most an ulp away).
inline void swiglu_grad(const Vec& go, const Vec& g, const Vec& u, Vec& gg, Vec& gu) {
  const Vec one(1.0f);
  const Vec sig = one / (one + exp_fast(g.neg()));
  gg = ((go * u) * sig) * (one + g * (one - sig));
  gu = go * (g * sig);
}

void swiglu_backward(const float* gout, const float* gate_up, float* ggate_up, int64_t inter, int64_t begin,
                     int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const float* g = gate_up + i * 2 * inter;
    const float* u = g + inter;
    const float* go = gout + i * inter;
    float* dg = ggate_up + i * 2 * inter;
    float* du = dg + inter;
    Vec a, b;
    int64_t j = 0;
    for (; j + W <= inter; j += W) {
      swiglu_grad(Vec::loadu(go + j), Vec::loadu(g + j), Vec::loadu(u + j), a, b);
      a.store(dg + j);
      b.store(du + j);
    }
    if (j < inter) {
      const int64_t c = inter - j;
      swiglu_grad(Vec::loadu(go + j, c), Vec::loadu(g + j, c), Vec::loadu(u + j, c), a, b);
      a.store(dg + j, static_cast<int>(c));
      b.store(du + j, static_cast<int>(c));
    }
  }
}

// ---- RoPE fused with the split into heads -----------------------------------------------------

// NeoX rotate_half: with x = [x1, x2] (halves of h), out = [x1 c1 - x2 s1, x2 c2 + x1 s2]; the
// plain chain x * cos + cat(-x2, x1) * sin rounds each product, then the sum, exactly so.
void rotate(const float* x, const float* c, const float* s, float* out, int64_t hd) {
  const int64_t h = hd / 2;
  int64_t j = 0;
  for (; j + W <= h; j += W) {
    const Vec x1 = Vec::loadu(x + j), x2 = Vec::loadu(x + h + j);
    (x1 * Vec::loadu(c + j) - x2 * Vec::loadu(s + j)).store(out + j);
    (x2 * Vec::loadu(c + h + j) + x1 * Vec::loadu(s + h + j)).store(out + h + j);
  }
  if (j < h) {
    const int64_t n = h - j;
    const int cnt = static_cast<int>(n);
    const Vec x1 = Vec::loadu(x + j, n), x2 = Vec::loadu(x + h + j, n);
    (x1 * Vec::loadu(c + j, n) - x2 * Vec::loadu(s + j, n)).store(out + j, cnt);
    (x2 * Vec::loadu(c + h + j, n) + x1 * Vec::loadu(s + h + j, n)).store(out + h + j, cnt);
  }
}

// The transpose of rotate: [g1 c1 + g2 s2, g2 c2 - g1 s1].
void rotate_back(const float* g, const float* c, const float* s, float* out, int64_t hd) {
  const int64_t h = hd / 2;
  int64_t j = 0;
  for (; j + W <= h; j += W) {
    const Vec g1 = Vec::loadu(g + j), g2 = Vec::loadu(g + h + j);
    (g1 * Vec::loadu(c + j) + g2 * Vec::loadu(s + h + j)).store(out + j);
    (g2 * Vec::loadu(c + h + j) - g1 * Vec::loadu(s + j)).store(out + h + j);
  }
  if (j < h) {
    const int64_t n = h - j;
    const int cnt = static_cast<int>(n);
    const Vec g1 = Vec::loadu(g + j, n), g2 = Vec::loadu(g + h + j, n);
    (g1 * Vec::loadu(c + j, n) + g2 * Vec::loadu(s + h + j, n)).store(out + j, cnt);
    (g2 * Vec::loadu(c + h + j, n) - g1 * Vec::loadu(s + j, n)).store(out + h + j, cnt);
  }
}

inline void copy(const float* src, float* dst, int64_t n) {
  int64_t j = 0;
  for (; j + W <= n; j += W) Vec::loadu(src + j).store(dst + j);
  if (j < n) Vec::loadu(src + j, n - j).store(dst + j, static_cast<int>(n - j));
}

inline void zero(float* dst, int64_t n) {
  int64_t j = 0;
  for (; j + W <= n; j += W) Vec(0.0f).store(dst + j);
  if (j < n) Vec(0.0f).store(dst + j, static_cast<int>(n - j));
}

// One row of hd at position pos rotated with the tables' row pos, or copied where there are no
// tables (cos null: RoPE off); rope_row_back applies the transpose.
inline void rope_row(const float* src, const float* cos, const float* sin, int64_t pos, float* dst, int64_t hd) {
  if (cos)
    rotate(src, cos + pos * hd, sin + pos * hd, dst, hd);
  else
    copy(src, dst, hd);
}

inline void rope_row_back(const float* g, const float* cos, const float* sin, int64_t pos, float* dst, int64_t hd) {
  if (cos)
    rotate_back(g, cos + pos * hd, sin + pos * hd, dst, hd);
  else
    copy(g, dst, hd);
}

void rope_split(const RopeSplitArgs& a, int64_t begin, int64_t end) {
  const int64_t H = a.heads, hd = a.hd, L = a.L, D = H * hd;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t b = row / L, l = row % L;
    const float* src = a.qkv + row * 3 * D;
    for (int64_t h = 0; h < H; ++h) {
      const int64_t dst = ((b * H + h) * L + l) * hd;
      rope_row(src + h * hd, a.cos, a.sin, l, a.q + dst, hd);
      rope_row(src + D + h * hd, a.cos, a.sin, l, a.k + dst, hd);
      copy(src + 2 * D + h * hd, a.v + dst, hd);
    }
  }
}

void rope_split_backward(const RopeSplitBackwardArgs& a, int64_t begin, int64_t end) {
  const int64_t H = a.heads, hd = a.hd, L = a.L, D = H * hd;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t b = row / L, l = row % L;
    float* out = a.gqkv + row * 3 * D;
    for (int64_t h = 0; h < H; ++h) {
      const int64_t src = ((b * H + h) * L + l) * hd;
      const float* parts[2] = {a.gq, a.gk};
      for (int p = 0; p < 2; ++p) {
        float* dst = out + p * D + h * hd;
        if (parts[p])
          rope_row_back(parts[p] + src, a.cos, a.sin, l, dst, hd);
        else
          zero(dst, hd);
      }
      if (a.gv)
        copy(a.gv + src, out + 2 * D + h * hd, hd);
      else
        zero(out + 2 * D + h * hd, hd);
    }
  }
}

// ---- softmax(x / scale) over rows ----------------------------------------------------------------

// x / scale for scale > 0. A power of two takes the multiplication by its inverse, which is then
// exact and rounds as the division (the same value for every x); other scales divide.
struct Divide {
  explicit Divide(float scale) : by(scale), inv(1.0f / scale) {
    int e = 0;
    exact_inverse = std::frexp(scale, &e) == 0.5f;
  }
  Vec operator()(const Vec& x) const { return exact_inverse ? x * inv : x / by; }
  Vec by, inv;
  bool exact_inverse;
};

// y[j] = exp(x[j] / scale - max(x) / scale) for j < n (the softmax's numerators; y may be x), with
// the given exp; returns 1 / their sum. The plain chain takes max(x / scale); with scale > 0 that
// is max(x) / scale exactly, so the max runs on x and the division once per element in the exp
// pass.
template <class Exp>
inline float softmax_numerators(const float* x, float* y, int64_t n, const Divide& divide, const Exp& exp) {
  const float lowest = -std::numeric_limits<float>::infinity();
  Vec mx(lowest);
  int64_t j = 0;
  for (; j + W <= n; j += W) mx = at::vec::maximum(mx, Vec::loadu(x + j));
  if (j < n) mx = at::vec::maximum(mx, load_tail(x + j, n - j, lowest));
  const Vec m = divide(Vec(hmax(mx)));
  Vec sum0(0.0f), sum1(0.0f);
  for (j = 0; j + W <= n; j += W) {
    const Vec e = exp(divide(Vec::loadu(x + j)) - m);
    e.store(y + j);
    sum0 = sum0 + e;
    std::swap(sum0, sum1);
  }
  if (j < n) {
    // Lanes past the row are -inf: exp gives 0 and the sum is unchanged.
    const Vec e = exp(divide(load_tail(x + j, n - j, lowest)) - m);
    e.store(y + j, static_cast<int>(n - j));
    sum0 = sum0 + e;
  }
  return 1.0f / hsum(sum0 + sum1);
}

void scaled_softmax(const float* x, float* y, int64_t n, float scale, int64_t begin, int64_t end) {
  const Divide divide(scale);
  for (int64_t i = begin; i < end; ++i) {
    float* yr = y + i * n;
    const Vec inv(softmax_numerators(x + i * n, yr, n, divide, [](const Vec& v) { return v.exp(); }));
    int64_t j = 0;
    for (; j + W <= n; j += W) (Vec::loadu(yr + j) * inv).store(yr + j);
    if (j < n) (Vec::loadu(yr + j, n - j) * inv).store(yr + j, static_cast<int>(n - j));
  }
}

void scaled_softmax_backward(const float* gy, const float* y, float* gx, int64_t n, float scale, int64_t begin,
                             int64_t end) {
  const Divide divide(scale);
  for (int64_t i = begin; i < end; ++i) {
    const float* gr = gy + i * n;
    const float* yr = y + i * n;
    float* out = gx + i * n;
    const Vec d(dot(gr, yr, n));
    int64_t j = 0;
    for (; j + W <= n; j += W) divide((Vec::loadu(gr + j) - d) * Vec::loadu(yr + j)).store(out + j);
    if (j < n) {
      const int64_t c = n - j;
      divide((Vec::loadu(gr + j, c) - d) * Vec::loadu(yr + j, c)).store(out + j, static_cast<int>(c));
    }
  }
}

// ---- attention without autograd: RoPE, q k^T, softmax, p v in one pass per (batch row, head) -----

// What the unfused chain does in four passes over memory (split into heads with RoPE, the scores
// GEMM, the softmax, the p v GEMM, then a copy back to [B, L, D]) runs here per (batch row, head)
// on tiles that stay in the L1/L2 caches: the rotated keys transposed (kt [hd, Lp]), the values
// (vb [L, hdp]), and R <= 6 query rows at a time with their R score rows. Every score is a sum over
// d in order and every output a sum over key positions in order (one FMA per term), the same for
// any R, so a query's output does not depend on which other queries are computed with it. Measured
// on a 2-core AVX2 machine, a no-grad attention block (qkv_proj, this, o_proj) takes 0.92x the
// time of the same block with the op chain.
struct AttentionScratch {
  std::vector<float> kt, vb, q, s, row;
};

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// acc[r][v] = sum_k a[r * a_row + k * a_k] * b[k * ldb + v * W] (lanes of W) for R rows: the one
// micro-kernel of every product here, with the terms added in the order of k. (a_k != 1 reads a
// transposed: the backward pass's P^T and dS^T products need no transposed copies.)
template <int R, int NV>
inline void tile_products(const float* a, int64_t a_row, int64_t a_k, const float* b, int64_t ldb, int64_t K,
                          Vec (&acc)[R][NV]) {
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = Vec(0.0f);
  for (int64_t k = 0; k < K; ++k) {
    Vec bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = Vec::loadu(b + k * ldb + v * W);
    for (int r = 0; r < R; ++r) {
      const Vec ak(a[r * a_row + k * a_k]);
      for (int v = 0; v < NV; ++v) acc[r][v] = at::vec::fmadd(ak, bv[v], acc[r][v]);
    }
  }
}

// The query rows of one block (6 fill AVX2's 16 vector registers in the tiles: 12 accumulators).
constexpr int kQueryRows = 6;

// Blocks of up to kQueryRows rows [0, n): f(std::integral_constant<int, R>, first row).
template <class F>
inline void row_blocks(int64_t n, const F& f) {
  int64_t i = 0;
  for (; i + kQueryRows <= n; i += kQueryRows) f(std::integral_constant<int, kQueryRows>(), i);
  switch (n - i) {
    case 5: f(std::integral_constant<int, 5>(), i); break;
    case 4: f(std::integral_constant<int, 4>(), i); break;
    case 3: f(std::integral_constant<int, 3>(), i); break;
    case 2: f(std::integral_constant<int, 2>(), i); break;
    case 1: f(std::integral_constant<int, 1>(), i); break;
    default: break;
  }
}

// out[r][c] = sum_k a[r * a_row + k * a_k] * b[k][c] (times row_scale[r] if given) for R rows and
// the columns c < cols (b's rows are ldb apart and readable up to round_up(cols, W)), rows of out
// ldo apart. between() runs after each tile of columns (the forward prefetches there).
struct Nothing {
  void operator()() const {}
};

template <int R, class Between = Nothing>
void product_rows(const float* a, int64_t a_row, int64_t a_k, const float* b, int64_t ldb, int64_t K, int64_t cols,
                  float* out, int64_t ldo, const float* row_scale = nullptr, const Between& between = Between()) {
  const int64_t padded = round_up(cols, W);
  auto put = [&](Vec v, int r, int64_t c) {
    if (row_scale) v = v * Vec(row_scale[r]);
    const int64_t n = std::min<int64_t>(W, cols - c);
    if (n >= W)
      v.store(out + r * ldo + c);
    else if (n > 0)
      v.store(out + r * ldo + c, static_cast<int>(n));
  };
  int64_t c0 = 0;
  for (; c0 + 2 * W <= padded; c0 += 2 * W) {
    Vec acc[R][2];
    tile_products<R, 2>(a, a_row, a_k, b + c0, ldb, K, acc);
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < 2; ++v) put(acc[r][v], r, c0 + v * W);
    between();
  }
  if (c0 < padded) {
    Vec acc[R][1];
    tile_products<R, 1>(a, a_row, a_k, b + c0, ldb, K, acc);
    for (int r = 0; r < R; ++r) put(acc[r][0], r, c0);
  }
}

// ---- linear layers ------------------------------------------------------------------------------

// y = x w^T with w packed into panels of two vectors' columns: the micro-kernel above reads a
// panel's k-th row as two consecutive vectors, and x's rows in place (contiguous in k: no packing
// of the activations). The panels of one chunk of columns (kLinearChunkBytes of packed weight, so
// that it stays in L2) are swept by every block of rows before the next chunk. Each output is one
// FMA chain over k in order, and is written once: no zeroing pass over y and no copies of x, on
// which MKL's sgemm spent about a tenth of its time in the HRM bench step (K = 256 or 768, M in
// the thousands; perf: mscale and scopy).
constexpr int64_t kLinearPanel = 2 * W;
constexpr int64_t kLinearChunkBytes = 256 * 1024;

void pack_linear_weight(const float* w, int64_t n, int64_t k, float* packed, int64_t begin, int64_t end) {
  for (int64_t p = begin; p < end; ++p) {
    float* dst = packed + p * k * kLinearPanel;
    const float* src = w + p * kLinearPanel * k;
    const int64_t cols = std::min<int64_t>(kLinearPanel, n - p * kLinearPanel);
    for (int64_t i = 0; i < k; ++i) {
      for (int64_t j = 0; j < cols; ++j) dst[i * kLinearPanel + j] = src[j * k + i];
      for (int64_t j = cols; j < kLinearPanel; ++j) dst[i * kLinearPanel + j] = 0.0f;
    }
  }
}

// Blocks of rows [begin, end) against chunks of `panels` panels (of `panel_floats` each):
// f(rows constant, first row, panel).
template <class F>
void linear_sweep(int64_t begin, int64_t end, int64_t panels, int64_t panel_floats, const F& f) {
  const int64_t chunk = std::max<int64_t>(1, kLinearChunkBytes / (panel_floats * static_cast<int64_t>(sizeof(float))));
  for (int64_t p0 = 0; p0 < panels; p0 += chunk) {
    const int64_t p1 = std::min(panels, p0 + chunk);
    row_blocks(end - begin, [&](auto rows, int64_t i) {
      for (int64_t p = p0; p < p1; ++p) f(rows, begin + i, p);
    });
  }
}

void linear(const LinearArgs& a, int64_t begin, int64_t end) {
  const int64_t panels = (a.n + kLinearPanel - 1) / kLinearPanel;
  linear_sweep(begin, end, panels, a.k * kLinearPanel, [&](auto rows, int64_t i, int64_t p) {
    constexpr int R = decltype(rows)::value;
    Vec acc[R][2];
    tile_products<R, 2>(a.x + i * a.ldx, a.ldx, 1, a.packed + p * a.k * kLinearPanel, kLinearPanel, a.k, acc);
    float* y = a.y + i * a.n;
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < 2; ++v) {
        const int64_t c = p * kLinearPanel + v * W, cols = std::min<int64_t>(W, a.n - c);
        if (cols >= W)
          acc[r][v].store(y + r * a.n + c);
        else if (cols > 0)
          acc[r][v].store(y + r * a.n + c, static_cast<int>(cols));
      }
  });
}

void linear_swiglu(const LinearArgs& a, int64_t begin, int64_t end) {
  const int64_t panels = a.n / kLinearPanel;  // of the gate half; the up half's follow
  linear_sweep(begin, end, panels, 2 * a.k * kLinearPanel, [&](auto rows, int64_t i, int64_t p) {
    constexpr int R = decltype(rows)::value;
    const float* x = a.x + i * a.ldx;
    Vec acc[R][2], act[R][2];  // (act lives on the stack: the up tile needs the registers)
    tile_products<R, 2>(x, a.ldx, 1, a.packed + p * a.k * kLinearPanel, kLinearPanel, a.k, acc);
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < 2; ++v) act[r][v] = silu(acc[r][v]);
    tile_products<R, 2>(x, a.ldx, 1, a.packed + (p + panels) * a.k * kLinearPanel, kLinearPanel, a.k, acc);
    float* y = a.y + i * a.n + p * kLinearPanel;
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < 2; ++v) (act[r][v] * acc[r][v]).store(y + r * a.n + v * W);
  });
}

// ---- the linear layers' gradients -------------------------------------------------------------

// Panels [begin, end) of w [n, k] by columns (fused_kernels.h): the input gradient g w is linear()
// on w packed so, w's rows being its reduction.
void pack_linear_columns(const float* w, int64_t n, int64_t k, float* packed, int64_t begin, int64_t end) {
  for (int64_t p = begin; p < end; ++p) {
    float* dst = packed + p * n * kLinearPanel;
    const int64_t c0 = p * kLinearPanel, cols = std::min(kLinearPanel, k - c0);
    for (int64_t i = 0; i < n; ++i) {
      const float* src = w + i * k + c0;
      float* d = dst + i * kLinearPanel;
      if (cols == kLinearPanel) {
        Vec::loadu(src).store(d);
        Vec::loadu(src + W).store(d + W);
      } else {
        for (int64_t j = 0; j < cols; ++j) d[j] = src[j];
        for (int64_t j = cols; j < kLinearPanel; ++j) d[j] = 0.0f;
      }
    }
  }
}

// Rows per product-then-norm group: their y ([48, n], 48 KB for n = 256) is still in L2 when the
// norm reads it back, and the packed weight is swept once per group (from L3 when it outgrows L2,
// as the down projection's 768 KB does).
constexpr int64_t kLinearNormRows = 8 * kQueryRows;

void linear_add_rms_norm(const LinearArgs& a, int64_t begin, int64_t end) {
  for (int64_t g = begin; g < end; g += kLinearNormRows) {
    const int64_t e = std::min(end, g + kLinearNormRows);
    linear(a, g, e);
    add_rms_norm(a.residual, a.y, a.y, nullptr, a.n, a.eps, g, e);
  }
}

// Keys are transposed kKeyRows at a time: dst[d * ld_dst + r] = src[r * hd + d] for r < 8, d < hd.
constexpr int64_t kKeyRows = 8;

inline void transpose_rows(const float* src, int64_t hd, float* dst, int64_t ld_dst) {
  int64_t d = 0;
#if defined(CPU_CAPABILITY_AVX2)
  for (; d + kKeyRows <= hd; d += kKeyRows) at::vec::transpose_mxn<float, 8, 8>(src + d, hd, dst + d * ld_dst, ld_dst);
#elif defined(CPU_CAPABILITY_AVX512)
  for (; d + kKeyRows <= hd; d += kKeyRows) at::vec::transpose_mxn<float>(src + d, hd, dst + d * ld_dst, ld_dst, 8, 8);
#endif
  for (; d < hd; ++d)
    for (int64_t r = 0; r < kKeyRows; ++r) dst[d * ld_dst + r] = src[r * hd + d];
}

// Asks for the q, k and v rows [j0, j1) of one (batch row, head) pair (hd floats at three places in
// each row, rows 3D apart) to be brought to the L2 cache: the rows are too far apart for the
// hardware prefetchers. (Always inlined: GCC's interprocedural analysis takes a function that only
// prefetches for one without effects and drops the calls to it, prefetches and all.)
__attribute__((always_inline)) inline void prefetch_rows(const AttentionArgs& a, int64_t item, int64_t j0, int64_t j1) {
  const int64_t hd = a.hd, H = a.heads, D = H * hd, ld = 3 * D;
  const char* base = reinterpret_cast<const char*>(a.qkv + (item / H) * a.L * ld + (item % H) * hd);
  const int64_t bytes = hd * static_cast<int64_t>(sizeof(float));
  for (int64_t j = j0; j < j1; ++j)
    for (int p = 0; p < 3; ++p) {
      const char* row = base + (j * ld + p * D) * static_cast<int64_t>(sizeof(float));
      for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(row + o, 0, 2);
    }
}

// The next pair's rows [j, end), asked for one row at a time between the tiles of this pair's
// blocks (measured on a 2-core Zen 3, 32 x 82 tokens, 4 heads of 64: best of 150 calls 2.10-2.20
// ms, against 2.14-2.33 ms with a block's rows asked at once and 2.7-3.6 ms with none).
struct NextRows {
  const AttentionArgs* a = nullptr;
  int64_t item = 0, j = 0, end = 0;
  void one() {
    if (j < end) {
      prefetch_rows(*a, item, j, j + 1);
      ++j;
    }
  }
  void rest() {
    while (j < end) one();
  }
};

// R query rows [i0, i0 + R) of one (batch row, head) pair: scores, softmax, output rows (and the
// probabilities into probs, rows of L, when asked), with the next pair's rows prefetched between.
template <int R>
void attention_rows(const AttentionArgs& a, AttentionScratch& w, const float* base, int64_t h, int64_t i0, float* out,
                    float* probs, NextRows& next) {
  const int64_t hd = a.hd, D = a.heads * hd, ld = 3 * D, L = a.L, Lp = round_up(L, W), hdp = round_up(hd, W);
  for (int r = 0; r < R; ++r) rope_row(base + (i0 + r) * ld + h * hd, a.cos, a.sin, i0 + r, w.q.data() + r * hd, hd);
  float* s = w.s.data();
  auto prefetch_one = [&] { next.one(); };
  product_rows<R>(w.q.data(), hd, 1, w.kt.data(), Lp, hd, Lp, s, Lp, nullptr, prefetch_one);
  // The padding columns' scores become -inf, so the softmax runs on whole vectors and gives them 0.
  const float lowest = -std::numeric_limits<float>::infinity();
  for (int r = 0; r < R; ++r) std::fill(s + r * Lp + L, s + (r + 1) * Lp, lowest);
  const Divide divide(a.scale);
  float inv[R];
  for (int r = 0; r < R; ++r)
    inv[r] = softmax_numerators(s + r * Lp, s + r * Lp, Lp, divide, [](const Vec& v) { return exp_fast(v); });
  if (probs) {
    // Each numerator times 1 / sum.
    for (int r = 0; r < R; ++r) {
      const float* e = s + r * Lp;
      float* pr = probs + (i0 + r) * L;
      const Vec iv(inv[r]);
      int64_t j = 0;
      for (; j + W <= L; j += W) (Vec::loadu(e + j) * iv).store(pr + j);
      if (j < L) (Vec::loadu(e + j, L - j) * iv).store(pr + j, static_cast<int>(L - j));
    }
  }
  // The output rows: 1 / sum applied here rather than to the probabilities.
  product_rows<R>(s, Lp, 1, w.vb.data(), hdp, L, hd, out, D, inv, prefetch_one);
  next.rest();
}

void attention(const AttentionArgs& a, int64_t begin, int64_t end) {
  thread_local AttentionScratch w;
  const int64_t hd = a.hd, H = a.heads, D = H * hd, ld = 3 * D, L = a.L, Lp = round_up(L, W), hdp = round_up(hd, W);
  w.kt.assign(static_cast<size_t>(hd * Lp), 0.0f);
  w.vb.assign(static_cast<size_t>(L * hdp), 0.0f);
  w.q.resize(static_cast<size_t>(kQueryRows * hd));
  w.s.resize(static_cast<size_t>(kQueryRows * Lp));
  w.row.resize(static_cast<size_t>(kKeyRows * hd));
  for (int64_t item = begin; item < end; ++item) {
    const int64_t b = item / H, h = item % H;
    const float* base = a.qkv + b * L * ld;
    // Keys rotated 8 rows at a time and transposed in 8x8 blocks (rows past L are zeros, so the
    // padding columns of kt stay 0), values copied to whole vectors.
    for (int64_t j0 = 0; j0 < L; j0 += kKeyRows) {
      for (int64_t r = 0; r < kKeyRows; ++r) {
        float* row = w.row.data() + r * hd;
        const int64_t j = j0 + r;
        if (j >= L) {
          zero(row, hd);
          continue;
        }
        rope_row(base + j * ld + D + h * hd, a.cos, a.sin, j, row, hd);
        copy(base + j * ld + 2 * D + h * hd, w.vb.data() + j * hdp, hd);
      }
      transpose_rows(w.row.data(), hd, w.kt.data() + j0, Lp);
    }
    // The next pair's rows, spread over this pair's blocks of queries.
    const int64_t blocks = (a.Lq + kQueryRows - 1) / kQueryRows, per_block = (L + blocks - 1) / blocks;
    auto next_rows = [&](int64_t block) {
      NextRows next;
      if (item + 1 < end) next = NextRows{&a, item + 1, std::min(L, block * per_block), std::min(L, (block + 1) * per_block)};
      return next;
    };
    float* out = a.out + b * a.Lq * D + h * hd;
    float* probs = a.probs ? a.probs + item * a.Lq * L : nullptr;
    row_blocks(a.Lq, [&](auto rows, int64_t i) {
      NextRows next = next_rows(i / kQueryRows);
      attention_rows<decltype(rows)::value>(a, w, base, h, i, out + i * D, probs, next);
    });
  }
}

// ---- the attention's backward pass -------------------------------------------------------------

struct AttentionGradScratch {
  std::vector<float> qr, kr, vt, go, ds, dp, row;
};

// Per (batch row, head) pair, with P the forward's probabilities and dO the output's gradient:
// dP = dO V^T; dS = P (dP - rowsum(P dP)) / scale (scaled_softmax_backward's formula); dQ = dS K,
// dK = dS^T Q, dV = P^T dO; dQ and dK rotated back (RoPE's transpose) into gqkv's q and k columns.
void attention_backward(const AttentionBackwardArgs& a, int64_t begin, int64_t end) {
  thread_local AttentionGradScratch w;
  const AttentionArgs rows{a.qkv, nullptr, nullptr, nullptr, a.L, a.L, a.heads, a.hd, a.scale};
  const int64_t hd = a.hd, H = a.heads, D = H * hd, ld = 3 * D, L = a.L, Lp = round_up(L, W), hdp = round_up(hd, W);
  w.qr.assign(static_cast<size_t>(L * hdp), 0.0f);
  w.kr.assign(static_cast<size_t>(L * hdp), 0.0f);
  w.go.assign(static_cast<size_t>(L * hdp), 0.0f);
  w.vt.assign(static_cast<size_t>(hd * Lp), 0.0f);
  w.ds.assign(static_cast<size_t>(L * Lp), 0.0f);
  w.dp.resize(static_cast<size_t>(kQueryRows * Lp));
  w.row.resize(static_cast<size_t>(std::max(kKeyRows, static_cast<int64_t>(kQueryRows)) * hdp));
  const Divide divide(a.scale);
  for (int64_t item = begin; item < end; ++item) {
    const int64_t b = item / H, h = item % H;
    const float* base = a.qkv + b * L * ld;
    const float* P = a.probs + item * L * L;
    const float* gout = a.gout + b * L * D + h * hd;
    float* gbase = a.gqkv + b * L * ld + h * hd;
    // Rotated q and k, dO's rows, and V transposed (8 rows at a time, as the forward's keys).
    for (int64_t j0 = 0; j0 < L; j0 += kKeyRows) {
      for (int64_t r = 0; r < kKeyRows; ++r) {
        const int64_t j = j0 + r;
        float* vrow = w.row.data() + r * hd;
        if (j >= L) {
          zero(vrow, hd);
          continue;
        }
        const float* src = base + j * ld + h * hd;
        rope_row(src, a.cos, a.sin, j, w.qr.data() + j * hdp, hd);
        rope_row(src + D, a.cos, a.sin, j, w.kr.data() + j * hdp, hd);
        copy(src + 2 * D, vrow, hd);
        copy(gout + j * D, w.go.data() + j * hdp, hd);
      }
      transpose_rows(w.row.data(), hd, w.vt.data() + j0, Lp);
    }
    // The next pair's q, k, v rows, a few after each block of rows below.
    NextRows next;
    if (item + 1 < end) next = NextRows{&rows, item + 1, 0, L};
    const int64_t per_block = (L + 2 * kQueryRows - 1) / (2 * kQueryRows) + 1;
    auto prefetch_some = [&] {
      for (int64_t t = 0; t < per_block; ++t) next.one();
    };
    // dS, R query rows at a time (dP only lives for its block).
    row_blocks(L, [&](auto rows, int64_t i0) {
      constexpr int R = decltype(rows)::value;
      product_rows<R>(w.go.data() + i0 * hdp, hdp, 1, w.vt.data(), Lp, hd, Lp, w.dp.data(), Lp);
      for (int r = 0; r < R; ++r) {
        const float* pr = P + (i0 + r) * L;
        const float* dpr = w.dp.data() + r * Lp;
        float* dsr = w.ds.data() + (i0 + r) * Lp;
        const Vec d(dot(dpr, pr, L));
        int64_t j = 0;
        for (; j + W <= L; j += W) divide((Vec::loadu(dpr + j) - d) * Vec::loadu(pr + j)).store(dsr + j);
        if (j < L) divide((Vec::loadu(dpr + j, L - j) - d) * Vec::loadu(pr + j, L - j)).store(dsr + j, static_cast<int>(L - j));
      }
      prefetch_some();
    });
    // dQ = dS K and dK = dS^T Q through a row of scratch, rotated back into place; dV = P^T dO
    // straight into place.
    auto place = [&](const float* g, int64_t j, int64_t part) {
      rope_row_back(g, a.cos, a.sin, j, gbase + j * ld + part * D, hd);
    };
    row_blocks(L, [&](auto rows, int64_t i0) {
      constexpr int R = decltype(rows)::value;
      product_rows<R>(w.ds.data() + i0 * Lp, Lp, 1, w.kr.data(), hdp, L, hd, w.row.data(), hdp);
      for (int r = 0; r < R; ++r) place(w.row.data() + r * hdp, i0 + r, 0);
      product_rows<R>(w.ds.data() + i0, 1, Lp, w.qr.data(), hdp, L, hd, w.row.data(), hdp);
      for (int r = 0; r < R; ++r) place(w.row.data() + r * hdp, i0 + r, 1);
      product_rows<R>(P + i0, 1, L, w.go.data(), hdp, L, hd, gbase + i0 * ld + 2 * D, ld);
      prefetch_some();
    });
    next.rest();
  }
}

// ---- AdamATan2 ----------------------------------------------------------------------------------

// torch.lerp's formula: start + w (end - start) for |w| < 0.5, else end - (end - start)(1 - w).
inline Vec lerp(const Vec& start, const Vec& end, float w) {
  if (std::abs(w) < 0.5f) return at::vec::fmadd(Vec(w), end - start, start);
  return at::vec::fmadd(Vec(w - 1.0f), end - start, end);
}

inline void adam_vec(const AdamAtan2Args& a, int64_t j, int64_t count) {
  const bool full = count == W;
  auto load = [&](const float* p) { return full ? Vec::loadu(p + j) : Vec::loadu(p + j, count); };
  auto store = [&](const Vec& v, float* p) {
    if (full)
      v.store(p + j);
    else
      v.store(p + j, static_cast<int>(count));
  };
  const Vec g = load(a.grad);
  const Vec m = lerp(load(a.exp_avg), g, a.w1);
  const Vec v = lerp(load(a.exp_avg_sq), g * g, a.w2);
  store(m, a.exp_avg);
  store(v, a.exp_avg_sq);
  const Vec p = load(a.param) * Vec(a.decay);
  store(at::vec::fmadd(Vec(a.step), m.atan2(v.sqrt() / Vec(a.bias2_sqrt)), p), a.param);
}

void adam_atan2(const AdamAtan2Args& a, int64_t begin, int64_t end) {
  int64_t j = begin;
  for (; j + W <= end; j += W) adam_vec(a, j, W);
  if (j < end) adam_vec(a, j, end - j);
}

}  // namespace

const Kernels& HRMCLARA_PASTE(kernels_, HRMCLARA_FUSED_CAP)() {
  static const Kernels table{HRMCLARA_STR(HRMCLARA_FUSED_CAP),
                             add_rms_norm,
                             rms_norm_backward,
                             swiglu,
                             swiglu_backward,
                             rope_split,
                             rope_split_backward,
                             scaled_softmax,
                             scaled_softmax_backward,
                             attention,
                             attention_backward,
                             kLinearPanel,
                             pack_linear_weight,
                             linear,
                             pack_linear_columns,
                             linear_swiglu,
                             linear_add_rms_norm,
                             adam_atan2};
  return table;
}

}  // namespace hrmclara::nn::fused
