// Fused element-wise ops of the HRM/TRM layers; see fused_ops.h. This file holds the plain forms,
// the autograd functions and the threading; the float32 loops are in fused_kernels.cpp.
//
// Compiled with OpenMP (src/CMakeLists.txt) because at::parallel_for is an inline OpenMP region in
// the wheel's LibTorch: without it the loops would run on one thread.
#include "nn/fused_ops.h"

#include "nn/fused_kernels.h"

#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/autograd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <unordered_map>

namespace hrmclara::nn::fused {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::atomic<bool> g_enabled{true};

const Kernels& table() {
  // ATen's choice, made once (ATEN_CPU_CAPABILITY is read at start-up there too).
  static const Kernels* chosen = [] {
#if defined(HRMCLARA_FUSED_X86)
    const std::string cap = at::get_cpu_capability();
    if (cap == "AVX512") return &kernels_avx512();
    if (cap == "AVX2") return &kernels_avx2();
#endif
    return &kernels_default();
  }();
  return *chosen;
}

bool fusable(const at::Tensor& t) {
  return g_enabled.load(std::memory_order_relaxed) && t.defined() && t.device().is_cpu() &&
         t.scalar_type() == at::kFloat;
}

// The precision of the layers' element-wise reductions: float32, or the activations' own when
// wider (float64).
at::ScalarType compute_dtype(at::ScalarType t) { return at::promote_types(t, at::kFloat); }

// Splits `rows` rows of `row_cost` elements each over ATen's intra-op threads, in chunks of at
// least ~8k elements: smaller chunks cost more in the fork/join than the work they save.
template <class F>
void parallel_rows(int64_t rows, int64_t row_cost, const F& f) {
  const int64_t grain = std::max<int64_t>(1, 8192 / std::max<int64_t>(1, row_cost));
  at::parallel_for(0, rows, grain, f);
}

int64_t rows_of(const at::Tensor& t) { return t.dim() == 0 ? 1 : t.numel() / t.size(-1); }

// The data of an optional float tensor (RoPE's tables, a gradient that may be absent, a residual),
// or null.
const float* data_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr<float>() : nullptr; }

// ---- add + RMSNorm ----------------------------------------------------------------------------

void add_rms_norm_into(const at::Tensor& x, const at::Tensor& r, at::Tensor& y, float* rstd, double eps) {
  const int64_t n = x.size(-1), rows = rows_of(x);
  const float *xp = x.const_data_ptr<float>(), *rp = r.const_data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const auto& k = table();
  parallel_rows(rows, n, [&](int64_t b, int64_t e) { k.add_rms_norm(xp, rp, yp, rstd, n, static_cast<float>(eps), b, e); });
}

struct AddRmsNormFn : public torch::autograd::Function<AddRmsNormFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& r, double eps) {
    const auto xc = x.contiguous(), rc = r.contiguous();
    auto y = at::empty(xc.sizes(), xc.options());
    auto rstd = at::empty({rows_of(xc)}, xc.options());
    add_rms_norm_into(xc, rc, y, rstd.data_ptr<float>(), eps);
    ctx->save_for_backward({y, rstd});
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& y = saved[0];
    const auto& rstd = saved[1];
    const auto gy = grads[0].contiguous();
    auto gx = at::empty(y.sizes(), y.options());
    const int64_t n = y.size(-1);
    const float *gp = gy.const_data_ptr<float>(), *yp = y.const_data_ptr<float>(), *sp = rstd.const_data_ptr<float>();
    float* out = gx.data_ptr<float>();
    const auto& k = table();
    parallel_rows(rows_of(y), n, [&](int64_t b, int64_t e) { k.rms_norm_backward(gp, yp, sp, out, n, b, e); });
    return {gx, gx, at::Tensor()};
  }
};

// ---- SwiGLU -------------------------------------------------------------------------------------

struct SwigluFn : public torch::autograd::Function<SwigluFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& gate_up) {
    const auto gu = gate_up.contiguous();
    const int64_t inter = gu.size(-1) / 2;
    auto sizes = gu.sizes().vec();
    sizes.back() = inter;
    auto out = at::empty(sizes, gu.options());
    const float* in = gu.const_data_ptr<float>();
    float* o = out.data_ptr<float>();
    const auto& k = table();
    parallel_rows(rows_of(gu), 2 * inter, [&](int64_t b, int64_t e) { k.swiglu(in, o, inter, inter, b, e); });
    ctx->save_for_backward({gu});
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto gu = ctx->get_saved_variables()[0];
    const auto go = grads[0].contiguous();
    const int64_t inter = gu.size(-1) / 2;
    auto ggu = at::empty(gu.sizes(), gu.options());
    const float *gp = go.const_data_ptr<float>(), *in = gu.const_data_ptr<float>();
    float* out = ggu.data_ptr<float>();
    const auto& k = table();
    parallel_rows(rows_of(gu), 4 * inter, [&](int64_t b, int64_t e) { k.swiglu_backward(gp, in, out, inter, b, e); });
    return {ggu};
  }
};

// ---- linear layers -----------------------------------------------------------------------------

// Rows [0, rows) over the threads in blocks of the micro-kernel's rows, so that only the last
// block of all is short: f(begin, end).
template <class F>
void for_row_blocks(int64_t rows, const F& f) {
  constexpr int64_t block = 6;  // fused_kernels.cpp: kQueryRows
  at::parallel_for(0, (rows + block - 1) / block, 1,
                   [&](int64_t b, int64_t e) { f(b * block, std::min(rows, e * block)); });
}

// w [n, k] packed by one of the kernels' packers (fused_kernels.h): `panels` panels of
// `panel_floats` floats, split over the threads.
at::Tensor pack_panels(const at::Tensor& w,
                       void (*pack)(const float*, int64_t, int64_t, float*, int64_t, int64_t), int64_t panels,
                       int64_t panel_floats) {
  const auto wc = w.contiguous();
  auto packed = at::empty({panels * panel_floats}, wc.options());
  const float* src = wc.const_data_ptr<float>();
  float* dst = packed.data_ptr<float>();
  const int64_t n = wc.size(0), k = wc.size(1);
  parallel_rows(panels, panel_floats, [&](int64_t b, int64_t e) { pack(src, n, k, dst, b, e); });
  return packed;
}

int64_t panels_of(int64_t size) { return (size + table().linear_panel - 1) / table().linear_panel; }

// w [n, k] packed as the right operand of x w^T (fused_kernels.h: LinearArgs).
at::Tensor pack_weight(const at::Tensor& w) {
  return pack_panels(w, table().pack_linear_weight, panels_of(w.size(0)), w.size(1) * table().linear_panel);
}

// Rows of x one stride apart (the no-grad SwiGLU leaves its activation as the gate half of each
// gate_up row: read in place, as MKL would), or else a contiguous copy.
int64_t row_stride(const at::Tensor& x) {
  const int64_t k = x.size(-1);
  if (k > 1 && x.stride(-1) != 1) return 0;
  int64_t ld = 0, expected = 0;  // ld: the stride of the innermost row dimension longer than 1
  for (int64_t i = x.dim() - 2; i >= 0; --i) {
    if (x.size(i) == 1) continue;
    if (ld == 0)
      ld = x.stride(i);
    else if (x.stride(i) != expected)
      return 0;
    expected = x.stride(i) * x.size(i);
  }
  if (ld == 0) return k;  // a single row
  return ld >= k ? ld : 0;
}

// x as the kernels read it: rows one stride apart (returned in ldx) or a contiguous copy.
at::Tensor rows_of_x(const at::Tensor& x, int64_t& ldx) {
  const int64_t stride = row_stride(x);
  ldx = stride > 0 ? stride : x.size(-1);
  return stride > 0 ? x : x.contiguous();
}

using LinearKernel = void (*)(const LinearArgs& a, int64_t begin, int64_t end);

// y [..., n] from x [..., k] and a packed weight by one of the linear kernels (a residual [..., n]
// and eps for linear_add_rms_norm).
at::Tensor run_linear_kernel(LinearKernel kernel, const at::Tensor& x, const at::Tensor& packed, int64_t n,
                             const at::Tensor& residual = at::Tensor(), double eps = 0.0) {
  int64_t ldx = 0;
  const auto xc = rows_of_x(x, ldx);
  const int64_t k = xc.size(-1), rows = rows_of(xc);
  auto sizes = xc.sizes().vec();
  sizes.back() = n;
  auto y = at::empty(sizes, xc.options());
  LinearArgs args{xc.const_data_ptr<float>(), packed.const_data_ptr<float>(), y.data_ptr<float>(), k, n, ldx};
  args.residual = data_or_null(residual);
  args.eps = static_cast<float>(eps);
  for_row_blocks(rows, [&](int64_t b, int64_t e) { kernel(args, b, e); });
  return y;
}

at::Tensor linear_run(const at::Tensor& x, const at::Tensor& packed, int64_t n) {
  return run_linear_kernel(table().linear, x, packed, n);
}

at::Tensor gate_up_swiglu_run(const at::Tensor& x, const at::Tensor& packed, int64_t inter) {
  return run_linear_kernel(table().linear_swiglu, x, packed, inter);
}

bool residual_fits(const at::Tensor& x, const at::Tensor& w, const at::Tensor& residual) {
  if (!fusable(residual) || !residual.is_contiguous() || residual.dim() != x.dim()) return false;
  for (int64_t i = 0; i + 1 < x.dim(); ++i)
    if (residual.size(i) != x.size(i)) return false;
  return residual.size(-1) == w.size(0);
}

at::Tensor linear_add_rms_norm_run(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& residual,
                                   double eps) {
  return run_linear_kernel(table().linear_add_rms_norm, x, packed, residual.size(-1), residual, eps);
}

// w [n, k] packed as the right operand of the input gradient g w (g [rows, n]): linear_run(g, this, k).
at::Tensor pack_weight_for_input_grad(const at::Tensor& w) {
  return pack_panels(w, table().pack_linear_columns, panels_of(w.size(1)), w.size(0) * table().linear_panel);
}

struct PackedLinearFn : public torch::autograd::Function<PackedLinearFn> {
  // packed: w for the forward; packed_t: w for the input gradient (packed with the forward's copy,
  // once per scope; empty: packed here if the gradient is needed).
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, const at::Tensor& packed,
                            const at::Tensor& packed_t) {
    ctx->save_for_backward({x, w});
    ctx->saved_data["packed_t"] = packed_t;
    return linear_run(x, packed, w.size(0));
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // The input gradient g w on the kernels' GEMM too (linear() with w packed by columns: its sum
    // over n runs in another order than MKL's, so it agrees with at::linear's to rounding); the
    // weight gradient g^T x, a reduction over all rows, is at::linear's own product (mm with x
    // folded to 2-D), bit for bit.
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& w = saved[1];
    const int64_t n = w.size(0), k = w.size(1);
    const auto g = grads[0].reshape({-1, n});
    at::Tensor gx, gw;
    if (ctx->needs_input_grad(0)) {
      auto packed_t = ctx->saved_data["packed_t"].toTensor();
      if (packed_t.numel() == 0) packed_t = pack_weight_for_input_grad(w);
      gx = linear_run(g, packed_t, k).view(x.sizes());
    }
    if (ctx->needs_input_grad(1)) gw = g.t().mm(x.reshape({-1, k}));
    return {gx, gw, at::Tensor(), at::Tensor()};
  }
};

struct PackedCopy {
  at::Tensor weight;  // held, so that no other tensor can take its TensorImpl's address meanwhile
  const void* data = nullptr;
  uint32_t version = 0;
  at::Tensor packed;
  at::Tensor packed_t;  // for the input gradient, packed when a gradient is first needed
};

struct PackedCache {
  int depth = 0;
  std::unordered_map<const void*, PackedCopy> copies;  // by the weight's TensorImpl
};

thread_local PackedCache t_packed;

bool packed_linear_applies(const at::Tensor& x, const at::Tensor& w) {
  // Measured only against MKL's AVX2 sgemm (10-12 % faster on the HRM layers' forward shapes, 5 %
  // off a bench-2core.json training step); on AVX-512 and the portable build MKL stays.
  static const bool avx2 = std::string(table().name) == "avx2";
  return avx2 && t_packed.depth > 0 && fusable(x) && fusable(w) && x.dim() >= 2 && w.dim() == 2 &&
         x.size(-1) == w.size(1) && x.numel() > 0;
}

PackedCopy& packed_copy(const at::Tensor& w) {
  auto& copy = t_packed.copies[w.unsafeGetTensorImpl()];
  const void* data = w.const_data_ptr();
  const uint32_t version = w._version();
  if (!copy.packed.defined() || copy.data != data || copy.version != version) {
    copy.packed = pack_weight(w);
    copy.packed_t = at::Tensor();
    copy.weight = w;
    copy.data = data;
    copy.version = version;
  }
  return copy;
}

// ---- split into heads + RoPE ------------------------------------------------------------------

bool rope_tables_fit(const at::Tensor& cos, const at::Tensor& sin, int64_t L, int64_t hd) {
  if (!cos.defined() && !sin.defined()) return true;
  auto ok = [&](const at::Tensor& t) {
    return t.defined() && t.device().is_cpu() && t.scalar_type() == at::kFloat && t.dim() == 2 && t.size(0) == L &&
           t.size(1) == hd && t.is_contiguous();
  };
  return ok(cos) && ok(sin);
}

// q, k, v [B, heads, L, hd] from qkv [B, L, 3 * heads * hd].
variable_list split_heads_rope_run(const at::Tensor& qkv, int64_t heads, const at::Tensor& cos, const at::Tensor& sin) {
  const auto in = qkv.contiguous();
  const int64_t B = in.size(0), L = in.size(1), hd = in.size(2) / (3 * heads);
  auto q = at::empty({B, heads, L, hd}, in.options());
  auto k = at::empty_like(q), v = at::empty_like(q);
  const RopeSplitArgs args{in.const_data_ptr<float>(),
                           data_or_null(cos),
                           data_or_null(sin),
                           q.data_ptr<float>(),
                           k.data_ptr<float>(),
                           v.data_ptr<float>(),
                           L,
                           heads,
                           hd};
  const auto& kern = table();
  parallel_rows(B * L, in.size(2), [&](int64_t b, int64_t e) { kern.rope_split(args, b, e); });
  return {q, k, v};
}

// The rotary tables ride along as a plain argument, not tensor inputs: they are constants (no
// gradient), and autograd's bookkeeping refuses undefined tensors (no rotary embedding).
struct RopeTables {
  at::Tensor cos, sin;
};

struct SplitHeadsRopeFn : public torch::autograd::Function<SplitHeadsRopeFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& qkv, int64_t heads, const RopeTables& rope) {
    ctx->saved_data["heads"] = heads;
    ctx->saved_data["cos"] = rope.cos;
    ctx->saved_data["sin"] = rope.sin;
    ctx->saved_data["B"] = qkv.size(0);
    ctx->saved_data["L"] = qkv.size(1);
    return split_heads_rope_run(qkv, heads, rope.cos, rope.sin);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const int64_t heads = ctx->saved_data["heads"].toInt(), B = ctx->saved_data["B"].toInt(),
                  L = ctx->saved_data["L"].toInt();
    const auto cos = ctx->saved_data["cos"].toTensor(), sin = ctx->saved_data["sin"].toTensor();
    at::Tensor g[3];
    int64_t hd = 0;
    for (int i = 0; i < 3; ++i) {
      if (grads[i].defined()) {
        g[i] = grads[i].contiguous();
        hd = g[i].size(-1);
      }
    }
    if (hd == 0) return {at::Tensor(), at::Tensor(), at::Tensor()};
    auto opts = (g[0].defined() ? g[0] : g[1].defined() ? g[1] : g[2]).options();
    auto gqkv = at::empty({B, L, 3 * heads * hd}, opts);
    const RopeSplitBackwardArgs args{data_or_null(g[0]), data_or_null(g[1]), data_or_null(g[2]),
                                     data_or_null(cos),  data_or_null(sin),  gqkv.data_ptr<float>(),
                                     L,                  heads,              hd};
    const auto& kern = table();
    parallel_rows(B * L, 3 * heads * hd, [&](int64_t b, int64_t e) { kern.rope_split_backward(args, b, e); });
    return {gqkv, at::Tensor(), at::Tensor()};
  }
};

// ---- softmax(x / scale) -------------------------------------------------------------------------

void softmax_rows(const at::Tensor& x, at::Tensor& y, double scale) {
  const int64_t n = x.size(-1);
  const float* xp = x.const_data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const auto& k = table();
  // exp makes a row ~4x the cost of a plain element-wise pass.
  parallel_rows(rows_of(x), 4 * n, [&](int64_t b, int64_t e) { k.scaled_softmax(xp, yp, n, static_cast<float>(scale), b, e); });
}

struct ScaledSoftmaxFn : public torch::autograd::Function<ScaledSoftmaxFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& scores, double scale) {
    const auto x = scores.contiguous();
    auto y = at::empty(x.sizes(), x.options());
    softmax_rows(x, y, scale);
    ctx->save_for_backward({y});
    ctx->saved_data["scale"] = scale;
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto y = ctx->get_saved_variables()[0];
    const double scale = ctx->saved_data["scale"].toDouble();
    const auto gy = grads[0].contiguous();
    auto gx = at::empty(y.sizes(), y.options());
    const int64_t n = y.size(-1);
    const float *gp = gy.const_data_ptr<float>(), *yp = y.const_data_ptr<float>();
    float* out = gx.data_ptr<float>();
    const auto& k = table();
    parallel_rows(rows_of(y), 2 * n, [&](int64_t b, int64_t e) {
      k.scaled_softmax_backward(gp, yp, out, n, static_cast<float>(scale), b, e);
    });
    return {gx, at::Tensor()};
  }
};

// ---- attention (RoPE, q k^T, softmax, p v) with autograd -----------------------------------------

// The scores' divisor, sqrt(head dim), for the forward and backward kernels alike.
float attention_scale(int64_t hd) { return static_cast<float>(std::sqrt(static_cast<double>(hd))); }

AttentionArgs attention_args(const at::Tensor& in, int64_t heads, const at::Tensor& cos, const at::Tensor& sin,
                             at::Tensor& out, int64_t q_len) {
  const int64_t hd = in.size(2) / 3 / heads;
  return AttentionArgs{in.const_data_ptr<float>(),
                       data_or_null(cos),
                       data_or_null(sin),
                       out.data_ptr<float>(),
                       in.size(1),
                       q_len,
                       heads,
                       hd,
                       attention_scale(hd)};
}

// The forward kernel keeps the probabilities [B, heads, L, L] (a fifth of the size of the chain's
// saved tensors); the backward kernel takes qkv again for the rotated q and k.
struct AttentionFn : public torch::autograd::Function<AttentionFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& qkv, int64_t heads, const RopeTables& rope) {
    const auto in = qkv.contiguous();
    const int64_t B = in.size(0), L = in.size(1);
    auto out = at::empty({B, L, in.size(2) / 3}, in.options());
    auto probs = at::empty({B, heads, L, L}, in.options());
    AttentionArgs args = attention_args(in, heads, rope.cos, rope.sin, out, L);
    args.probs = probs.data_ptr<float>();
    const auto& kern = table();
    at::parallel_for(0, B * heads, 1, [&](int64_t b, int64_t e) { kern.attention(args, b, e); });
    ctx->save_for_backward({in, probs});
    ctx->saved_data["heads"] = heads;
    ctx->saved_data["cos"] = rope.cos;
    ctx->saved_data["sin"] = rope.sin;
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    const auto saved = ctx->get_saved_variables();
    const auto &in = saved[0], &probs = saved[1];
    const int64_t heads = ctx->saved_data["heads"].toInt();
    const auto cos = ctx->saved_data["cos"].toTensor(), sin = ctx->saved_data["sin"].toTensor();
    const auto gout = grads[0].contiguous();
    const int64_t B = in.size(0), L = in.size(1), hd = in.size(2) / 3 / heads;
    auto gqkv = at::empty(in.sizes(), in.options());
    const AttentionBackwardArgs args{in.const_data_ptr<float>(),
                                     data_or_null(cos),
                                     data_or_null(sin),
                                     probs.const_data_ptr<float>(),
                                     gout.const_data_ptr<float>(),
                                     gqkv.data_ptr<float>(),
                                     L,
                                     heads,
                                     hd,
                                     attention_scale(hd)};
    const auto& kern = table();
    at::parallel_for(0, B * heads, 1, [&](int64_t b, int64_t e) { kern.attention_backward(args, b, e); });
    return {gqkv, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor rms_norm(const at::Tensor& x, double eps) {
  const auto in_dtype = x.scalar_type();
  const auto h = x.to(compute_dtype(in_dtype));
  return (h * at::rsqrt(h.pow(2).mean(-1, /*keepdim=*/true) + eps)).to(in_dtype);
}

bool enabled() { return g_enabled.load(); }
void set_enabled(bool on) { g_enabled.store(on); }
const char* capability() { return table().name; }

// ---- the plain forms: the layers' op chains as they were ----------------------------------------

namespace {
// The attention as the layers ran it op by op: q, k, v [B, heads, L, hd] (queries narrowed to the
// first q_len positions), softmax(q k^T / sqrt(hd)) v with the given split and softmax, back to
// [B, q_len, heads * hd].
template <class Split, class Softmax>
at::Tensor attention_chain(const at::Tensor& qkv, int64_t heads, const at::Tensor& cos, const at::Tensor& sin,
                           int64_t q_len, const Split& split, const Softmax& softmax) {
  auto [q, k, v] = split(qkv, heads, cos, sin);
  if (q_len != q.size(2)) q = q.narrow(2, 0, q_len);
  const auto scores = at::matmul(q, k.transpose(-1, -2));
  const auto o = at::matmul(softmax(scores, std::sqrt(static_cast<double>(q.size(-1)))), v);
  return o.transpose(1, 2).reshape({qkv.size(0), q_len, qkv.size(2) / 3});
}
}  // namespace

namespace plain {

at::Tensor add_rms_norm(const at::Tensor& x, const at::Tensor& r, double eps) { return rms_norm(x + r, eps); }

at::Tensor swiglu(const at::Tensor& gate_up) {
  auto parts = gate_up.chunk(2, -1);
  if (!at::GradMode::is_enabled()) {
    // In place on gate_up (a fresh projection output): no intermediate-sized tensors.
    auto gate = parts[0];
    at::silu_(gate);
    return gate.mul_(parts[1]);
  }
  return at::silu(parts[0]) * parts[1];
}

namespace {
// NeoX rotate_half on the last dimension.
at::Tensor rotate_half(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}
}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> split_heads_rope(const at::Tensor& qkv, int64_t heads,
                                                                const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t B = qkv.size(0), L = qkv.size(1), hd = qkv.size(2) / (3 * heads);
  const auto view = qkv.view({B, L, 3 * heads, hd});
  auto q = view.narrow(2, 0, heads), k = view.narrow(2, heads, heads), v = view.narrow(2, 2 * heads, heads);
  if (cos.defined()) {
    // RoPE in the tables' float32 (float64 activations keep float64), back to the activation dtype.
    const auto dtype = q.scalar_type(), rope_dtype = compute_dtype(dtype);
    const auto c = cos.unsqueeze(-2).to(rope_dtype), s = sin.unsqueeze(-2).to(rope_dtype);
    auto qf = q.to(rope_dtype), kf = k.to(rope_dtype);
    if (!at::GradMode::is_enabled()) {
      q = (qf * c).add_(rotate_half(qf).mul_(s)).to(dtype);
      k = (kf * c).add_(rotate_half(kf).mul_(s)).to(dtype);
    } else {
      q = (qf * c + rotate_half(qf) * s).to(dtype);
      k = (kf * c + rotate_half(kf) * s).to(dtype);
    }
  }
  return {q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)};
}

at::Tensor scaled_softmax(const at::Tensor& scores, double scale) {
  const auto dtype = scores.scalar_type();
  const auto scaled = at::GradMode::is_enabled() ? scores / scale : at::Tensor(scores).div_(scale);
  return at::softmax(scaled.to(compute_dtype(dtype)), -1).to(dtype);
}

at::Tensor attention(const at::Tensor& qkv, int64_t heads, const at::Tensor& cos, const at::Tensor& sin, int64_t q_len) {
  return attention_chain(qkv, heads, cos, sin, q_len, plain::split_heads_rope, plain::scaled_softmax);
}

}  // namespace plain

// ---- dispatch -------------------------------------------------------------------------------------

at::Tensor add_rms_norm(const at::Tensor& x, const at::Tensor& r, double eps) {
  RECORD_FUNCTION("hrmclara::add_rms_norm", std::vector<c10::IValue>());  // (seen by hrm_bench --profile)
  if (!fusable(x) || !fusable(r) || x.sizes() != r.sizes() || x.dim() == 0) return plain::add_rms_norm(x, r, eps);
  if (at::GradMode::is_enabled() && (x.requires_grad() || r.requires_grad())) return AddRmsNormFn::apply(x, r, eps);
  at::NoGradGuard no_grad;
  auto y = at::empty(x.sizes(), x.options());
  add_rms_norm_into(x.contiguous(), r.contiguous(), y, nullptr, eps);
  return y;
}

at::Tensor add_rms_norm_(at::Tensor out, const at::Tensor& x, const at::Tensor& r, double eps) {
  RECORD_FUNCTION("hrmclara::add_rms_norm_", std::vector<c10::IValue>());  // (seen by hrm_bench --profile)
  if (fusable(x) && fusable(r) && fusable(out) && x.sizes() == r.sizes() && out.sizes() == x.sizes() &&
      out.is_contiguous() && x.dim() > 0) {
    add_rms_norm_into(x.contiguous(), r.contiguous(), out, nullptr, eps);
    return out;
  }
  // The plain in-place chain: the sum into out, then the scale in float32 (or float64); narrower
  // dtypes are normalised out of place in float32, as rms_norm does.
  if (out.is_same(x))
    out.add_(r);
  else if (out.is_same(r))
    out.add_(x);
  else
    out.copy_(x).add_(r);
  if (out.scalar_type() != compute_dtype(out.scalar_type())) return rms_norm(out, eps);
  return out.mul_(at::rsqrt(out.pow(2).mean(-1, /*keepdim=*/true) + eps));
}

at::Tensor swiglu(const at::Tensor& gate_up) {
  RECORD_FUNCTION("hrmclara::swiglu", std::vector<c10::IValue>());  // (seen by hrm_bench --profile)
  if (!fusable(gate_up) || gate_up.dim() == 0 || gate_up.size(-1) % 2 != 0) return plain::swiglu(gate_up);
  if (at::GradMode::is_enabled() && gate_up.requires_grad()) return SwigluFn::apply(gate_up);
  // Without autograd the result overwrites the gate half of gate_up, as the plain form does: the
  // down projection reads it with a row stride of 2I, and no new tensor is made.
  const auto gu = gate_up.contiguous();
  const int64_t inter = gu.size(-1) / 2;
  float* p = gu.data_ptr<float>();
  const auto& k = table();
  parallel_rows(rows_of(gu), 2 * inter, [&](int64_t b, int64_t e) { k.swiglu(p, p, inter, 2 * inter, b, e); });
  return gu.narrow(-1, 0, inter);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> split_heads_rope(const at::Tensor& qkv, int64_t heads,
                                                                const at::Tensor& cos, const at::Tensor& sin) {
  RECORD_FUNCTION("hrmclara::split_heads_rope", std::vector<c10::IValue>());  // (seen by hrm_bench --profile)
  if (!fusable(qkv) || qkv.dim() != 3 || heads <= 0 || qkv.size(2) % (3 * heads) != 0 ||
      (qkv.size(2) / (3 * heads)) % 2 != 0 || !rope_tables_fit(cos, sin, qkv.size(1), qkv.size(2) / (3 * heads)))
    return plain::split_heads_rope(qkv, heads, cos, sin);
  const auto out = at::GradMode::is_enabled() && qkv.requires_grad() ? SplitHeadsRopeFn::apply(qkv, heads, RopeTables{cos, sin})
                                                                      : split_heads_rope_run(qkv, heads, cos, sin);
  return {out[0], out[1], out[2]};
}

at::Tensor scaled_softmax(const at::Tensor& scores, double scale) {
  RECORD_FUNCTION("hrmclara::scaled_softmax", std::vector<c10::IValue>());  // (seen by hrm_bench --profile)
  // (The kernel takes the row max before dividing, which needs scale > 0.)
  if (!fusable(scores) || scores.dim() == 0 || !(scale > 0)) return plain::scaled_softmax(scores, scale);
  if (at::GradMode::is_enabled() && scores.requires_grad()) return ScaledSoftmaxFn::apply(scores, scale);
  if (scores.is_contiguous()) {
    at::Tensor y = scores;
    softmax_rows(scores, y, scale);
    return y;
  }
  const auto x = scores.contiguous();
  auto y = at::empty(x.sizes(), x.options());
  softmax_rows(x, y, scale);
  return y;
}

at::Tensor attention(const at::Tensor& qkv, int64_t heads, const at::Tensor& cos, const at::Tensor& sin, int64_t q_len) {
  RECORD_FUNCTION("hrmclara::attention", std::vector<c10::IValue>());  // (seen by hrm_bench --profile)
  const bool fits = qkv.dim() == 3 && heads > 0 && qkv.size(2) % (3 * heads) == 0 &&
                    (qkv.size(2) / (3 * heads)) % 2 == 0 && q_len >= 0 && q_len <= qkv.size(1) &&
                    rope_tables_fit(cos, sin, qkv.size(1), qkv.size(2) / (3 * heads));
  if (!fusable(qkv) || !fits) return attention_chain(qkv, heads, cos, sin, q_len, split_heads_rope, scaled_softmax);
  if (at::GradMode::is_enabled() && qkv.requires_grad()) {
    // With autograd: the kernels' forward (keeping the probabilities) and backward passes, for
    // every position as a query (the model's training passes); the op chain otherwise.
    if (q_len != qkv.size(1) || qkv.size(0) == 0 || qkv.size(1) == 0)
      return attention_chain(qkv, heads, cos, sin, q_len, split_heads_rope, scaled_softmax);
    return AttentionFn::apply(qkv, heads, RopeTables{cos, sin});
  }
  at::NoGradGuard no_grad;
  const auto in = qkv.contiguous();
  const int64_t B = in.size(0), D = in.size(2) / 3;
  auto out = at::empty({B, q_len, D}, in.options());
  if (q_len == 0 || B == 0) return out;
  const AttentionArgs args = attention_args(in, heads, cos, sin, out, q_len);
  const auto& kern = table();
  // One (batch row, head) pair is ~2 L^2 hd multiply-adds: a work item on its own.
  at::parallel_for(0, B * heads, 1, [&](int64_t b, int64_t e) { kern.attention(args, b, e); });
  return out;
}

namespace {

// The input-gradient copy of w for a differentiable product (empty: none is needed).
at::Tensor packed_for_input_grad(PackedCopy& copy, const at::Tensor& x, const at::Tensor& w) {
  if (!x.requires_grad()) return at::empty({0}, w.options());
  if (!copy.packed_t.defined()) copy.packed_t = pack_weight_for_input_grad(w);
  return copy.packed_t;
}

bool differentiable(const at::Tensor& x, const at::Tensor& w) {
  return at::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad());
}

bool gate_up_fits(const at::Tensor& w) { return w.size(0) % 2 == 0 && (w.size(0) / 2) % table().linear_panel == 0; }

}  // namespace

at::Tensor linear(const at::Tensor& x, const at::Tensor& w) {
  if (!packed_linear_applies(x, w)) return at::linear(x, w);
  RECORD_FUNCTION("hrmclara::linear", std::vector<c10::IValue>());  // (seen by hrm_bench --profile)
  auto& copy = packed_copy(w);
  if (!differentiable(x, w)) return linear_run(x, copy.packed, w.size(0));
  return PackedLinearFn::apply(x, w, copy.packed, packed_for_input_grad(copy, x, w));
}

at::Tensor gate_up_swiglu(const at::Tensor& x, const at::Tensor& w) {
  // (With autograd the kernel would have to store the product for the backward as well: measured
  // 1.4 % slower on a TRM training step than the GEMM, then swiglu.)
  if (differentiable(x, w) || !packed_linear_applies(x, w) || !gate_up_fits(w)) return swiglu(fused::linear(x, w));
  RECORD_FUNCTION("hrmclara::gate_up_swiglu", std::vector<c10::IValue>());  // (seen by hrm_bench --profile)
  return gate_up_swiglu_run(x, packed_copy(w).packed, w.size(0) / 2);
}

at::Tensor gate_up_swiglu_packed(const at::Tensor& x, const at::Tensor& w) {
  if (!fusable(x) || !fusable(w) || x.dim() < 2 || w.dim() != 2 || x.size(-1) != w.size(1) || !gate_up_fits(w))
    throw std::invalid_argument("gate_up_swiglu_packed: float32 CPU x [..., k] and w [2n, k], n whole panels, expected");
  at::NoGradGuard no_grad;
  return gate_up_swiglu_run(x, pack_weight(w), w.size(0) / 2);
}

at::Tensor linear_add_rms_norm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& residual, double eps) {
  if (at::GradMode::is_enabled() || !packed_linear_applies(x, w) || !residual_fits(x, w, residual)) {
    auto y = fused::linear(x, w);
    return add_rms_norm_(y, residual, y, eps);
  }
  RECORD_FUNCTION("hrmclara::linear_add_rms_norm", std::vector<c10::IValue>());  // (seen by hrm_bench --profile)
  return linear_add_rms_norm_run(x, packed_copy(w).packed, residual, eps);
}

at::Tensor linear_add_rms_norm_packed(const at::Tensor& x, const at::Tensor& w, const at::Tensor& residual, double eps) {
  if (!fusable(x) || !fusable(w) || x.dim() < 2 || w.dim() != 2 || x.size(-1) != w.size(1) ||
      !residual_fits(x, w, residual))
    throw std::invalid_argument("linear_add_rms_norm_packed: float32 CPU x [..., k], w [n, k], residual [..., n] expected");
  at::NoGradGuard no_grad;
  return linear_add_rms_norm_run(x, pack_weight(w), residual, eps);
}

at::Tensor linear_packed(const at::Tensor& x, const at::Tensor& w) {
  if (!fusable(x) || !fusable(w) || x.dim() < 2 || w.dim() != 2 || x.size(-1) != w.size(1))
    throw std::invalid_argument("linear_packed: float32 CPU x [..., k] and w [n, k] expected");
  const auto packed = pack_weight(w);
  if (!differentiable(x, w)) return linear_run(x, packed, w.size(0));
  return PackedLinearFn::apply(x, w, packed, at::empty({0}, w.options()));
}

PackedWeightScope::PackedWeightScope() { ++t_packed.depth; }

PackedWeightScope::~PackedWeightScope() {
  if (--t_packed.depth == 0) t_packed.copies.clear();
}

bool adam_atan2_step(at::Tensor& param, const at::Tensor& grad, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                     double lr, double beta1, double beta2, double weight_decay, int64_t step) {
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&param, &grad, &exp_avg, &exp_avg_sq})
    if (!fusable(*t) || !t->is_contiguous() || t->numel() != param.numel()) return false;
  const double t = static_cast<double>(step);
  // The scalars as the op-by-op update makes them (computed in double, used in float32).
  AdamAtan2Args a{param.data_ptr<float>(),
                  grad.const_data_ptr<float>(),
                  exp_avg.data_ptr<float>(),
                  exp_avg_sq.data_ptr<float>(),
                  static_cast<float>(1.0 - lr * weight_decay),
                  static_cast<float>(1.0 - beta1),
                  static_cast<float>(1.0 - beta2),
                  static_cast<float>(std::sqrt(1.0 - std::pow(beta2, t))),
                  static_cast<float>(-lr / (1.0 - std::pow(beta1, t)))};
  const auto& k = table();
  at::parallel_for(0, param.numel(), 16384, [&](int64_t b, int64_t e) { k.adam_atan2(a, b, e); });
  // Written through raw pointers: tell autograd's version counters, as in-place ops would.
  for (at::Tensor* t : {&param, &exp_avg, &exp_avg_sq}) t->unsafeGetTensorImpl()->bump_version();
  return true;
}

}  // namespace hrmclara::nn::fused
