// hrm_bench's roofline figures: the matmul FLOPs of a step counted from the layer shapes (checked
// here against a hand count for a tiny model), the GEMM rate and the floor they imply.
#include <hrmclara/config.h>

#include <cmath>
#include <string>

#include "test_util.h"

namespace hrmclara {
namespace {

using test::run_command;
using test::ScratchDir;
using test::tool;

Json bench_line(const std::string& out) {
  const auto start = out.rfind("\n{");
  return Json::parse(start == std::string::npos ? out : out.substr(start + 1));
}

TEST(HrmBench, CountsTheMatmulFlopsOfAStepAndTheFloor) {
  ScratchDir dir;
  // B 2, 4 tokens + 1 puzzle position (L 5), D 8, 2 heads (hd 4), SwiGLU width 256 (upstream's
  // rounding of 8 * 4 * 2/3 up to a multiple of 256), vocab 5, one layer per level, 2 x 2 cycles.
  write_json_file(dir / "tiny.json", Json{{"batch_size", 2},          {"seq_len", 4},         {"vocab_size", 5},
                                          {"num_puzzle_identifiers", 1}, {"hidden_size", 8},     {"num_heads", 2},
                                          {"H_layers", 1},              {"L_layers", 1},         {"H_cycles", 2},
                                          {"L_cycles", 2},              {"expansion", 4.0},        {"puzzle_emb_ndim", 8},
                                          {"halt_max_steps", 2},        {"forward_dtype", "float32"}});
  // One block on N = B * L = 10 rows: qkv 2*10*8*24 = 3840, q k^T and p v 2 * 2*2*2*5*5*4 = 1600,
  // o_proj 2*10*8*8 = 1280, gate_up 2*10*8*512 = 81920, down 2*10*256*8 = 40960: 129600.
  const double block = 129600;
  // An inner forward: 4 L calls + 2 H calls of one block, lm_head 2*10*8*5 = 800, q_head 2*2*8*2 = 64.
  const double inner = 6 * block + 864;
  // The Q target's pass: 5 blocks, then one at position 0 only (qkv 3840 for all rows, one query's
  // attention 2 * 2*2*2*1*5*4 = 320, o_proj 2*2*8*8 = 256, gate_up 2*2*8*512 = 16384, down
  // 2*2*256*8 = 8192), and q_head 64 (no lm_head).
  const double q_pass = 5 * block + (3840 + 320 + 256 + 16384 + 8192) + 64;
  const double train = inner + q_pass + 2 * (2 * block + 864) /* backward */;
  for (const std::string mode : {"train", "eval"}) {
    const auto r = run_command(tool("hrm_bench") + " --config " + dir / "tiny.json" + " --mode " + mode +
                                   " --steps 1 --warmup 0 --threads 1",
                               dir.path());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const Json j = bench_line(r.out);
    const double want = mode == "train" ? train : inner;
    EXPECT_NEAR(j["gflop_per_step"].get<double>() * 1e9, want, 1e-6 * want) << r.out;
    EXPECT_NEAR((j["gflop_forward"].get<double>() + j["gflop_backward"].get<double>()) * 1e9, want, 1e-6 * want);
    const double rate = j["gemm_gflops"].get<double>();
    EXPECT_GT(rate, 0.0) << r.out;
    // Four shapes; training adds the backward's two layouts of each.
    EXPECT_EQ(j["gemm_gflops_by_shape"].size(), mode == "train" ? 12u : 4u) << r.out;
    if (mode == "train") {
      EXPECT_TRUE(j["gemm_gflops_by_shape"].contains("10x8x24 weight_grad")) << r.out;
    }
    // One timed step: the floor, the rate and the ratio are that step's.
    EXPECT_NEAR(j["floor_ms"].get<double>(), want / (rate * 1e6), 1e-9 * want);
    EXPECT_NEAR(j["ratio_to_floor"].get<double>(), j["ms_per_step"].get<double>() / j["floor_ms"].get<double>(), 1e-6);
    EXPECT_TRUE(j["fused_kernels"].is_string());
  }
}

TEST(HrmBench, CountsTrmStepsWithEitherMixer) {
  ScratchDir dir;
  // TRM: B 2, 4 tokens + 2 prefix positions (L 6), D 8, vocab 5, 2 layers, H_cycles 2 x L_cycles 2:
  // per ACT step 2 rounds of (2 + 1) calls of the 2 blocks; the last round with gradient; no Q
  // target pass (no_ACT_continue).
  Json config{{"batch_size", 2},   {"seq_len", 4},          {"vocab_size", 5},     {"num_puzzle_identifiers", 1},
              {"name", "trm"},     {"hidden_size", 8},      {"num_heads", 2},      {"H_layers", 0},
              {"L_layers", 2},     {"H_cycles", 2},         {"L_cycles", 2},       {"expansion", 4.0},
              {"puzzle_emb_ndim", 8}, {"puzzle_emb_len", 2}, {"halt_max_steps", 2}, {"forward_dtype", "float32"}};
  // N = 12 rows. MLP: gate_up 2*12*8*512 = 98304, down 2*12*256*8 = 49152 -> 147456.
  // Attention: qkv 2*12*8*24 = 4608, q k^T and p v 2 * 2*2*2*6*6*4 = 2304, o_proj 2*12*8*8 = 1536.
  // Token MLP on [B*D = 16, L = 6], width 256: gate_up 2*16*6*512 = 98304, down 2*16*256*6 = 49152.
  const double mlp = 147456, attention = 4608 + 2304 + 1536, token_mlp = 98304 + 49152;
  const double heads = 2 * 12 * 8 * 5 + 2 * 2 * 8 * 2;
  for (const bool mlp_t : {false, true}) {
    config["mlp_t"] = mlp_t;
    config["pos_encodings"] = mlp_t ? "none" : "rope";
    write_json_file(dir / "trm.json", config);
    const double call = 2 * ((mlp_t ? token_mlp : attention) + mlp);
    const double round = 3 * call;
    const double want = (2 * round + heads) + 2 * (round + heads);
    const auto r = run_command(tool("hrm_bench") + " --config " + dir / "trm.json" + " --mode train --steps 1 --warmup 0 --threads 1",
                               dir.path());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const Json j = bench_line(r.out);
    EXPECT_NEAR(j["gflop_per_step"].get<double>() * 1e9, want, 1e-6 * want) << (mlp_t ? "mlp_t " : "attention ") << r.out;
    EXPECT_EQ(j["gemm_gflops_by_shape"].size(), 12u) << r.out;
  }
}

}  // namespace
}  // namespace hrmclara
