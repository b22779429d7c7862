// The float32 loops of nn/fused_ops.h; see fused_kernels.h. Compiled once per CPU capability with
// CPU_CAPABILITY set (src/CMakeLists.txt), so Vectorized<float> is 16 lanes of AVX-512, 8 of AVX2,
// or ATen's portable scalar version, and exp/atan2 are the same (Sleef) routines ATen's own kernels
// of that capability use. Contraction of a * b + c into one FMA is switched off for this file
// (-ffp-contract=off): the element-wise formulas below then round exactly as the plain ATen op
// chains they replace, which makes most of them bitwise equal to those chains; explicit fmadd is
// used only inside the reductions, whose summation order differs from ATen's anyway.
#include "nn/fused_kernels.h"

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <limits>

#include <utility>

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

// Horizontal sum / max of a vector: ATen's shuffle trees on AVX2 and AVX-512, a loop otherwise.
inline float hsum(const Vec& v) {
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, v);
}

inline float hmax(const Vec& v) {
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, v);
}

// Sum of a[j] * b[j] over a row, in two vector accumulators (the rows here are a few hundred long).
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

// silu(g) as ATen writes it, g / (1 + exp(-g)).
inline Vec silu(const Vec& g) { return g / (Vec(1.0f) + g.neg().exp()); }

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
  const Vec sig = one / (one + g.neg().exp());
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

void rope_split(const RopeSplitArgs& a, int64_t begin, int64_t end) {
  const int64_t H = a.heads, hd = a.hd, L = a.L, D = H * hd;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t b = row / L, l = row % L;
    const float* src = a.qkv + row * 3 * D;
    const float* c = a.cos ? a.cos + l * hd : nullptr;
    const float* s = a.sin ? a.sin + l * hd : nullptr;
    for (int64_t h = 0; h < H; ++h) {
      const int64_t dst = ((b * H + h) * L + l) * hd;
      if (c) {
        rotate(src + h * hd, c, s, a.q + dst, hd);
        rotate(src + D + h * hd, c, s, a.k + dst, hd);
      } else {
        copy(src + h * hd, a.q + dst, hd);
        copy(src + D + h * hd, a.k + dst, hd);
      }
      copy(src + 2 * D + h * hd, a.v + dst, hd);
    }
  }
}

void rope_split_backward(const RopeSplitBackwardArgs& a, int64_t begin, int64_t end) {
  const int64_t H = a.heads, hd = a.hd, L = a.L, D = H * hd;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t b = row / L, l = row % L;
    float* out = a.gqkv + row * 3 * D;
    const float* c = a.cos ? a.cos + l * hd : nullptr;
    const float* s = a.sin ? a.sin + l * hd : nullptr;
    for (int64_t h = 0; h < H; ++h) {
      const int64_t src = ((b * H + h) * L + l) * hd;
      const float* parts[2] = {a.gq, a.gk};
      for (int p = 0; p < 2; ++p) {
        float* dst = out + p * D + h * hd;
        if (!parts[p])
          zero(dst, hd);
        else if (c)
          rotate_back(parts[p] + src, c, s, dst, hd);
        else
          copy(parts[p] + src, dst, hd);
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

void scaled_softmax(const float* x, float* y, int64_t n, float scale, int64_t begin, int64_t end) {
  const Divide divide(scale);
  const float lowest = -std::numeric_limits<float>::infinity();
  for (int64_t i = begin; i < end; ++i) {
    const float* xr = x + i * n;
    float* yr = y + i * n;
    // The plain chain takes max(x / scale); with scale > 0 that is max(x) / scale exactly, so the
    // max runs on x and the division once per element in the exp pass.
    Vec mx(lowest);
    int64_t j = 0;
    for (; j + W <= n; j += W) mx = at::vec::maximum(mx, Vec::loadu(xr + j));
    if (j < n) mx = at::vec::maximum(mx, load_tail(xr + j, n - j, lowest));
    const Vec m = divide(Vec(hmax(mx)));
    Vec sum0(0.0f), sum1(0.0f);
    for (j = 0; j + W <= n; j += W) {
      const Vec e = (divide(Vec::loadu(xr + j)) - m).exp();
      e.store(yr + j);
      sum0 = sum0 + e;
      std::swap(sum0, sum1);
    }
    if (j < n) {
      // Lanes past the row are -inf: exp gives 0 and the sum is unchanged.
      const Vec e = (divide(load_tail(xr + j, n - j, lowest)) - m).exp();
      e.store(yr + j, static_cast<int>(n - j));
      sum0 = sum0 + e;
    }
    const Vec inv(1.0f / hsum(sum0 + sum1));
    for (j = 0; j + W <= n; j += W) (Vec::loadu(yr + j) * inv).store(yr + j);
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
                             adam_atan2};
  return table;
}

}  // namespace hrmclara::nn::fused
