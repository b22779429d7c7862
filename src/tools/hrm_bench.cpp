// hrm_bench: times HRM train or eval steps on random data and prints one JSON line.
// A train step = one ACT step with the loss head, backward of loss / batch, SignSGD, AdamATan2.
// The line also gives the step's matmul FLOPs, this machine's GEMM rate at the model's shapes, and
// the floor they imply (FLOPs / rate): how far the step is from being all matmul.
#include <hrmclara/cli.h>
#include <hrmclara/config.h>
#include <hrmclara/device.h>
#include <hrmclara/errors.h>
#include <hrmclara/hrm.h>
#include <hrmclara/info.h>
#include <hrmclara/optim.h>

#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <iostream>
#include <vector>

using namespace hrmclara;

namespace {

// ---- FLOPs (2 per multiply-add) of the matmuls, from the layer shapes ----------------------------

// One Block application's forward on x [B, L, D] (reasoning_layers.h): the attention mixer
// (qkv_proj, q k^T, p v, o_proj) or TRM's token MLP (on x^T [B, D, L]: gate_up, down), then the
// SwiGLU MLP (gate_up, down).
struct BlockShape {
  int64_t batch = 0, len = 0, hidden = 0, heads = 1, inter = 0;
  int64_t token_mlp_len = 0, token_inter = 0;  // TRM's mlp_t; 0 for attention
};

double block_forward_flops(const BlockShape& s) {
  const double B = static_cast<double>(s.batch), L = static_cast<double>(s.len), D = static_cast<double>(s.hidden),
               I = static_cast<double>(s.inter), N = B * L;
  double f = 0.0;
  if (s.token_mlp_len > 0) {
    const double T = static_cast<double>(s.token_inter), rows = B * D;
    f += 2 * rows * L * 2 * T + 2 * rows * T * L;
  } else {
    const double hd = D / static_cast<double>(s.heads);
    f += 2 * N * D * 3 * D;                                   // qkv_proj
    f += 2 * 2 * B * static_cast<double>(s.heads) * L * L * hd;  // scores and probabilities x v
    f += 2 * N * D * D;                                       // o_proj
  }
  f += 2 * N * D * 2 * I + 2 * N * I * D;  // gate_up_proj, down_proj
  return f;
}

// The same block's forward at position 0 only (BlockImpl::forward_first): the qkv projection of
// every position, the attention of one query, then o_proj and the MLP on B rows.
double block_first_forward_flops(const BlockShape& s) {
  if (s.token_mlp_len > 0) return block_forward_flops(s);
  const double B = static_cast<double>(s.batch), L = static_cast<double>(s.len), D = static_cast<double>(s.hidden),
               I = static_cast<double>(s.inter), N = B * L, hd = D / static_cast<double>(s.heads);
  return 2 * N * D * 3 * D + 2 * 2 * B * static_cast<double>(s.heads) * L * hd + 2 * B * D * D + 2 * B * D * 2 * I +
         2 * B * I * D;
}

// A matmul's backward computes the gradients of both operands: twice its forward. Every block of
// the gradient-carrying calls needs both (the input embeddings, and so every block's input,
// require grad).
constexpr double kBackwardFactor = 2.0;

struct StepFlops {
  double forward = 0, backward = 0;
  double total() const { return forward + backward; }
};

// One HRM ACT step (hrm/model.cpp): H_cycles x L_cycles L-level calls and H_cycles H-level calls
// (L_layers / H_layers blocks each), lm_head on every position and q_head on the first; the last
// L and H call carry the gradient; training with halt_max_steps > 1 runs the recurrence once more
// (no grad) for the Q target, whose last block computes position 0 only, with no lm_head.
StepFlops hrm_step_flops(const hrm::HrmConfig& c, bool train) {
  const int64_t L = c.seq_len + c.puzzle_emb_len();
  const BlockShape block{c.batch_size, L, c.hidden_size, c.num_heads, c.intermediate_size()};
  const double per_block = block_forward_flops(block);
  const double B = static_cast<double>(c.batch_size), D = static_cast<double>(c.hidden_size);
  const double heads_out = 2 * B * static_cast<double>(L) * D * static_cast<double>(c.vocab_size) + 2 * B * D * 2;
  const double blocks = static_cast<double>(c.H_cycles * c.L_cycles * c.L_layers + c.H_cycles * c.H_layers);
  const double inner = blocks * per_block + heads_out;
  StepFlops f;
  f.forward = inner;
  if (!train) return f;
  if (c.halt_max_steps > 1) f.forward += (blocks - 1) * per_block + block_first_forward_flops(block) + 2 * B * D * 2;
  f.backward = kBackwardFactor * (static_cast<double>(c.L_layers + c.H_layers) * per_block + heads_out);
  return f;
}

// One TRM ACT step (trm/model.cpp): H_cycles rounds of L_cycles z_L updates and one z_H update,
// each a call of the L_layers blocks; the last round carries the gradient. Without Q-continue
// (no_ACT_continue, the default) there is no extra pass for a Q target.
StepFlops trm_step_flops(const hrm::HrmConfig& c, bool train) {
  const int64_t L = c.seq_len + c.puzzle_emb_len();
  BlockShape block{c.batch_size, L, c.hidden_size, c.num_heads, c.intermediate_size()};
  if (c.mlp_t) {
    block.token_mlp_len = L;
    block.token_inter = nn::swiglu_width(L, c.expansion);
  }
  const double per_call = static_cast<double>(c.L_layers) * block_forward_flops(block);
  const double B = static_cast<double>(c.batch_size), D = static_cast<double>(c.hidden_size);
  const double heads_out = 2 * B * static_cast<double>(L) * D * static_cast<double>(c.vocab_size) + 2 * B * D * 2;
  const double round = static_cast<double>(c.L_cycles + 1) * per_call;
  const double inner = static_cast<double>(c.H_cycles) * round + heads_out;
  StepFlops f;
  f.forward = inner;
  if (!train) return f;
  if (c.halt_max_steps > 1 && !c.no_ACT_continue) f.forward += inner;
  f.backward = kBackwardFactor * (round + heads_out);
  return f;
}

StepFlops step_flops(const hrm::HrmConfig& c, bool train) {
  return c.is_trm() ? trm_step_flops(c, train) : hrm_step_flops(c, train);
}

// ---- this machine's GEMM rate --------------------------------------------------------------------

// The linear layers' shapes [M, K, N] of one block: [B*L, D] x [D, 3D], [D, D] (or TRM's token MLP
// [B*D, L] x [L, 2T], [T, L]), then [D, 2I], [I, D].
std::vector<std::array<int64_t, 3>> linear_shapes(const hrm::HrmConfig& c) {
  const int64_t L = c.seq_len + c.puzzle_emb_len(), M = c.batch_size * L, D = c.hidden_size, I = c.intermediate_size();
  std::vector<std::array<int64_t, 3>> shapes;
  if (c.is_trm() && c.mlp_t) {
    const int64_t T = nn::swiglu_width(L, c.expansion);
    shapes = {{c.batch_size * D, L, 2 * T}, {c.batch_size * D, T, L}};
  } else {
    shapes = {{M, D, 3 * D}, {M, D, D}};
  }
  shapes.push_back({M, D, 2 * I});
  shapes.push_back({M, I, D});
  return shapes;
}

// One run of every GEMM layout a step's linear layers use, at the model's shapes: forward
// x [M, K] W[N, K]^T (as CastedLinear runs it) and, for training, the backward's two: the input
// gradient g [M, N] W [N, K] and the weight gradient g^T [N, M] x [M, K]. Taken after every timed
// step, so that the floor is measured in the same moments as the step (a shared machine's speed
// drifts by tens of percent within a minute) and each GEMM in the layout the step runs it in.
class GemmProbe {
 public:
  enum Layout { kForward, kInputGrad, kWeightGrad, kLayouts };
  GemmProbe(const hrm::HrmConfig& c, const c10::Device& device, bool train) : device_(device), train_(train) {
    const auto opts = torch::TensorOptions().dtype(torch::kFloat).device(device);
    for (const auto& [M, K, N] : linear_shapes(c)) {
      Operands o;
      o.x = torch::randn({M, K}, opts);
      o.w = torch::randn({N, K}, opts);
      o.g = torch::randn({M, N}, opts);
      o.y = torch::empty({M, N}, opts);
      o.dx = torch::empty({M, K}, opts);
      o.dw = torch::empty({N, K}, opts);
      o.flops = 2.0 * static_cast<double>(M) * static_cast<double>(K) * static_cast<double>(N);
      o.name = std::to_string(M) + "x" + std::to_string(K) + "x" + std::to_string(N);
      flops_ += o.flops;
      ops_.push_back(std::move(o));
    }
  }
  // Runs each GEMM once; returns, per layout, the seconds all shapes took.
  std::array<double, kLayouts> run() {
    std::array<double, kLayouts> seconds{};
    for (auto& o : ops_) {
      for (int l = 0; l < (train_ ? kLayouts : 1); ++l) {
        const auto t0 = std::chrono::steady_clock::now();
        if (l == kForward) torch::mm_out(o.y, o.x, o.w.t());
        if (l == kInputGrad) torch::mm_out(o.dx, o.g, o.w);
        if (l == kWeightGrad) torch::mm_out(o.dw, o.g.t(), o.x);
        if (device_.is_cuda()) torch::cuda::synchronize();
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        seconds[l] += s;
        o.rates[l].push_back(o.flops / s / 1e9);
      }
    }
    return seconds;
  }
  void forget() {
    for (auto& o : ops_)
      for (auto& r : o.rates) r.clear();
  }
  double flops() const { return flops_; }  // of one run of one layout over the shapes
  // Median GFLOP/s of each shape and layout over the runs so far.
  Json by_shape() const {
    static const char* names[] = {"", " input_grad", " weight_grad"};
    Json out = Json::object();
    for (const auto& o : ops_)
      for (int l = 0; l < kLayouts; ++l)
        if (!o.rates[l].empty()) out[o.name + names[l]] = median(o.rates[l]);
    return out;
  }
  static double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n == 0 ? 0.0 : n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  }

 private:
  struct Operands {
    torch::Tensor x, w, g, y, dx, dw;
    double flops = 0;
    std::string name;
    std::array<std::vector<double>, kLayouts> rates;
  };
  c10::Device device_;
  bool train_;
  std::vector<Operands> ops_;
  double flops_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  return run_main("hrm_bench", [&] {
    ArgParser args("hrm_bench", "--config FILE.json --mode train|eval --steps N [--device D] [--threads T] [--dtype D]");
    args.option("config", "upstream arch fields plus batch_size, seq_len, vocab_size, num_puzzle_identifiers")
        .option("mode", "train or eval", "train")
        .option("steps", "timed steps", "10")
        .option("warmup", "untimed steps first", "2")
        .option("dtype", std::string(kDtypeChoices) + "; auto: the file's forward_dtype where the device runs it natively, else float32", "auto")
        .option("attention", "exact (reference order) or sdpa (LibTorch's kernel)", "exact")
        .option("fused", "on: the layers' fused float32 CPU kernels (default); off: the plain op chains", "on")
        .option("profile", "write the timed steps' operator trace here (Chrome trace JSON; slows the steps)", "")
        .common_options();
    if (!args.parse(argc, argv, 0)) return 0;
    const std::string mode = args.get("mode");
    if (mode != "train" && mode != "eval") throw UsageError("--mode must be train or eval");
    const int threads = configure_threads(static_cast<int>(args.get_int("threads")));
    keep_freed_memory();  // no page faults on the activations re-allocated every step
    const auto device = resolve_device(args.get("device"));
    const std::string attention = args.get("attention");
    if (attention != "exact" && attention != "sdpa") throw UsageError("--attention must be exact or sdpa");
    hrm::set_attention_kernel(attention == "sdpa" ? hrm::AttentionKernel::kSdpa : hrm::AttentionKernel::kExact);
    const std::string fused = args.get("fused");
    if (fused != "on" && fused != "off") throw UsageError("--fused must be on or off");
    nn::set_fused_kernels(fused == "on");

    const std::string path = args.require("config");
    Json file = read_json_file(path);
    auto take = [&](const char* key) -> int64_t {
      if (!file.contains(key) || !file[key].is_number_integer()) throw ConfigError(path + ": missing integer '" + key + "'");
      const int64_t v = file[key].get<int64_t>();
      file.erase(key);
      return v;
    };
    const int64_t batch_size = take("batch_size"), seq_len = take("seq_len"), vocab = take("vocab_size"),
                  puzzles = take("num_puzzle_identifiers");
    file["forward_dtype"] = hrm::resolve_forward_dtype(args.get("dtype"), device, file.value("forward_dtype", std::string("auto")));
    const auto config = hrm::HrmConfig::from_arch_json(file, batch_size, seq_len, vocab, puzzles);

    torch::manual_seed(0);
    auto model = hrm::make_puzzle_model(config);
    model->to(device);
    if (model->puzzle_emb) model->puzzle_emb->sync_device();
    model->train(mode == "train");
    const auto opts = torch::TensorOptions().dtype(torch::kInt).device(device);
    const hrm::Batch batch{torch::randint(1, vocab, {batch_size, seq_len}, opts),
                           torch::randint(1, vocab, {batch_size, seq_len}, opts),
                           torch::randint(0, puzzles, {batch_size}, opts)};
    AdamATan2 adam(model->dense_parameters(), {1e-4, 0.9, 0.95, 0.1});
    std::unique_ptr<SparseSignSGD> sign;
    if (model->puzzle_emb)
      sign = std::make_unique<SparseSignSGD>(model->puzzle_emb->weights, model->puzzle_emb->local_weights,
                                             model->puzzle_emb->local_ids, 1e-2, 0.1);
    hrm::Carry carry = model->initial_carry(batch);
    auto step = [&] {
      if (mode == "eval") {
        torch::NoGradGuard no_grad;
        auto [next, out] = model->forward(carry, batch);
        hrm::act_loss(config, next, out);
        carry = next;
        return;
      }
      auto [next, out] = model->forward(carry, batch);
      auto result = hrm::act_loss(config, next, out);
      (result.loss / static_cast<double>(batch_size)).backward();
      if (sign) {
        sign->step();
        sign->zero_grad();
      }
      adam.step();
      adam.zero_grad();
      carry = next;
    };
    auto sync = [&] {
      if (device.is_cuda()) torch::cuda::synchronize();
    };
    const int64_t warmup = args.get_int("warmup"), steps = args.get_int("steps");
    if (steps < 1 || warmup < 0) throw UsageError("--steps must be >= 1 and --warmup >= 0");
    const bool train = mode == "train";
    const auto flops = step_flops(config, train);
    // The floor of one step: its forward FLOPs at the forward layout's rate, its backward FLOPs
    // half at the input-gradient and half at the weight-gradient layout's rate, each rate taken
    // by the probe right after that step. Float32 only (the floor is a float32 goal).
    std::unique_ptr<GemmProbe> probe;
    if (config.dtype() == torch::kFloat) probe = std::make_unique<GemmProbe>(config, device, train);
    auto floor_of = [&](const std::array<double, GemmProbe::kLayouts>& s) {
      const double per_flop_fwd = s[GemmProbe::kForward] / probe->flops();
      if (!train) return flops.forward * per_flop_fwd;
      return flops.forward * per_flop_fwd +
             0.5 * flops.backward * (s[GemmProbe::kInputGrad] + s[GemmProbe::kWeightGrad]) / probe->flops();
    };
    for (int64_t i = 0; i < warmup; ++i) {
      step();
      if (probe) probe->run();
    }
    sync();
    if (probe) {
      if (warmup == 0) probe->run();  // (the warm-up steps' runs warmed it otherwise)
      probe->forget();                // warm, with no rates kept
    }
    std::vector<double> step_s, floor_s, ratios;
    {
      std::unique_ptr<torch::autograd::profiler::RecordProfile> profile;
      if (!args.get("profile").empty()) profile = std::make_unique<torch::autograd::profiler::RecordProfile>(args.get("profile"));
      for (int64_t i = 0; i < steps; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        step();
        sync();
        step_s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        if (!probe || profile) continue;
        floor_s.push_back(floor_of(probe->run()));
        ratios.push_back(step_s.back() / floor_s.back());
      }
    }
    double seconds = 0;
    for (double s : step_s) seconds += s;
    const double peak_mb = peak_rss_mb();
    const double ms = 1000.0 * seconds / static_cast<double>(steps);
    const double floor_ms = floor_s.empty() ? 0.0 : 1000.0 * GemmProbe::median(floor_s);
    std::vector<double> rates;
    for (double f : floor_s) rates.push_back(flops.total() / f / 1e9);
    const double best_rate = rates.empty() ? 0.0 : *std::max_element(rates.begin(), rates.end());
    Json line = {{"mode", mode},
                 {"device", device.str()},
                 {"threads", threads},
                 {"cpu_capability", cpu_info().aten_capability},
                 {"native_bfloat16", cpu_info().native_bfloat16},
                 {"dtype", config.forward_dtype},
                 {"attention", attention},
                 {"fused_kernels", fused == "on" ? std::string(nn::fused_kernels_capability()) : "off"},
                 {"steps", steps},
                 {"ms_per_step", ms},
                 {"examples_per_s", static_cast<double>(batch_size) * 1000.0 / ms},
                 {"peak_rss_mb", peak_mb},
                 // Matmul FLOPs of one step; this machine's float32 GEMM rate at the model's linear
                 // shapes in the layouts the step runs them (0 for other dtypes), measured after
                 // every timed step; floor = the step's FLOPs at those rates; the ratio is the median
                 // of the steps' own ratios. No floor with --profile (the probe would be profiled).
                 {"gflop_per_step", flops.total() / 1e9},
                 {"gflop_forward", flops.forward / 1e9},
                 {"gflop_backward", flops.backward / 1e9},
                 {"gemm_gflops", rates.empty() ? 0.0 : GemmProbe::median(rates)},
                 {"gemm_gflops_best", best_rate},
                 {"gemm_gflops_by_shape", probe && !floor_s.empty() ? probe->by_shape() : Json::object()},
                 {"floor_ms", floor_ms},
                 {"ratio_to_floor", ratios.empty() ? 0.0 : GemmProbe::median(ratios)}};
    std::cout << line.dump() << std::endl;
    return 0;
  });
}
