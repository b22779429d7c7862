// Data-parallel training on CPU with Gloo over loopback: 2 processes x batch B/2 against 1 process
// x batch B (losses, evaluation and weights), resume of a 2-process run, a rank killed mid-run, a
// config that differs between ranks, torchrun's own launch, and torchrun's environment parsing.
#include "test_util.h"

#include <hrmclara/distributed.h>
#include <hrmclara/errors.h>
#include <hrmclara/checkpoint.h>
#include <hrmclara/files.h>
#include <hrmclara/tensor_io.h>

#include <nlohmann/json.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <thread>

extern char** environ;

namespace hrmclara::test {
namespace {

using Json = nlohmann::json;

// A tiny HRM with a puzzle embedding (the sparse SignSGD path), no exploration (no per-rank
// randomness), on a generated Sudoku set: 3 steps per epoch of 8.
const char* kConfig = R"({
  "arch": {"name": "hrm", "hidden_size": 32, "num_heads": 2, "H_layers": 1, "L_layers": 1, "H_cycles": 1, "L_cycles": 2,
           "halt_max_steps": 3, "halt_exploration_prob": 0.0, "puzzle_emb_ndim": 32, "forward_dtype": "float32",
           "loss": {"name": "losses@ACTLossHead", "loss_type": "softmax_cross_entropy"}},
  "global_batch_size": 8, "epochs": 2, "eval_interval": 1, "lr": 1e-3, "lr_warmup_steps": 1, "puzzle_emb_lr": 1e-2,
  "log_every": 1, "eval_max_examples": 16, "checkpoint_every_steps": 2,
  "generate": {"kind": "sudoku-gen", "train": 24, "test": 16, "clues_min": 40, "clues_max": 50, "num_aug": 0, "seed": 3}})";

int free_port() {
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t n = sizeof a;
  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &n);
  const int port = ntohs(a.sin_port);
  ::close(s);
  return port;
}

// A process of hrm_train with extra environment variables, its output in `log`.
pid_t spawn(const std::vector<std::string>& args, const std::vector<std::string>& env, const std::string& log) {
  std::vector<std::string> envs;
  for (char** e = environ; *e; ++e) {
    const std::string v = *e;
    bool replaced = false;
    for (const auto& x : env) replaced = replaced || v.rfind(x.substr(0, x.find('=') + 1), 0) == 0;
    if (!replaced) envs.push_back(v);
  }
  for (const auto& x : env) envs.push_back(x);
  std::vector<char*> argv, envp;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (const auto& e : envs) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) throw std::runtime_error("posix_spawn " + args[0] + " failed");
  return pid;
}

// Waits for `pid` at most `seconds`; returns its exit code (or -signal), or -1000 on a timeout
// (the process is then killed).
int wait_for(pid_t pid, double seconds) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  for (;;) {
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return -1000;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

std::vector<std::string> train_args(const std::string& config, const std::vector<std::string>& extra) {
  std::vector<std::string> a = {tool("hrm_train"), "--config", config, "--no-progress", "--threads", "1", "--dist-timeout-s", "20"};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

// Runs `world` ranks of hrm_train (rank r's log in DIR/rank<r>.log); returns their exit codes.
std::vector<int> run_ranks(int world, const std::vector<std::vector<std::string>>& args_per_rank, const std::string& dir,
                           double seconds = 240) {
  const int port = free_port();
  std::vector<pid_t> pids;
  for (int r = 0; r < world; ++r)
    pids.push_back(spawn(args_per_rank[static_cast<size_t>(r)],
                         {"RANK=" + std::to_string(r), "WORLD_SIZE=" + std::to_string(world), "LOCAL_RANK=" + std::to_string(r),
                          "LOCAL_WORLD_SIZE=" + std::to_string(world), "MASTER_ADDR=127.0.0.1", "MASTER_PORT=" + std::to_string(port)},
                         dir + "/rank" + std::to_string(r) + ".log"));
  std::vector<int> codes;
  for (const pid_t p : pids) codes.push_back(wait_for(p, seconds));
  return codes;
}

std::vector<double> column(const std::string& metrics_jsonl, const std::string& key) {
  std::vector<double> out;
  std::ifstream in(metrics_jsonl);
  std::string line;
  while (std::getline(in, line)) {
    const auto j = Json::parse(line);
    if (j.contains(key) && j[key].is_number()) out.push_back(j[key].get<double>());
  }
  return out;
}

std::map<std::string, at::Tensor> weights(const std::string& model_pt) {
  std::map<std::string, at::Tensor> out;
  for (auto& [k, v] : load_tensor_archive(model_pt)) out[k] = v;
  return out;
}

double max_weight_difference(const std::string& a, const std::string& b) {
  const auto wa = weights(a), wb = weights(b);
  EXPECT_EQ(wa.size(), wb.size());
  double worst = 0;
  for (const auto& [k, v] : wa) {
    EXPECT_TRUE(wb.count(k)) << k;
    if (wb.count(k)) worst = std::max(worst, (v.to(at::kDouble) - wb.at(k).to(at::kDouble)).abs().max().item<double>());
  }
  return worst;
}

std::string log_of(const std::string& dir, int rank) { return read_bytes(dir + "/rank" + std::to_string(rank) + ".log"); }

class Distributed : public ::testing::Test {
 protected:
  void SetUp() override {
    write_bytes(dir / "config.json", kConfig);
    // The dataset is generated once, by a single process, before the runs share it.
    const auto r = run_command(tool("hrm_train") + " --config " + dir / "config.json" + " --out " + dir / "single" +
                                   " --no-progress --threads 1",
                               dir.path());
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  ScratchDir dir;
};

TEST_F(Distributed, TwoProcessesTrainAsOneWithTheWholeBatch) {
  const auto config = dir / "config.json";
  const auto codes = run_ranks(2, {train_args(config, {"--out", dir / "two"}), train_args(config, {"--out", dir / "two"})}, dir.path());
  ASSERT_EQ(codes, (std::vector<int>{0, 0})) << log_of(dir.path(), 0) << log_of(dir.path(), 1);

  // Losses step by step (the per-rank partial sums are added in another order: float rounding).
  const auto one = column(dir / "single/metrics.jsonl", "train/loss"), two = column(dir / "two/metrics.jsonl", "train/loss");
  ASSERT_EQ(one.size(), 6u);
  ASSERT_EQ(two.size(), one.size());
  for (size_t i = 0; i < one.size(); ++i) EXPECT_NEAR(two[i], one[i], 1e-5 * std::abs(one[i])) << "step " << i + 1;
  const auto acc1 = column(dir / "single/metrics.jsonl", "train/accuracy"), acc2 = column(dir / "two/metrics.jsonl", "train/accuracy");
  for (size_t i = 0; i < acc1.size(); ++i) EXPECT_NEAR(acc2[i], acc1[i], 1e-6) << "step " << i + 1;
  // The sharded evaluation covers the same examples.
  const auto e1 = column(dir / "single/metrics.jsonl", "eval/count"), e2 = column(dir / "two/metrics.jsonl", "eval/count");
  EXPECT_EQ(e1, e2);
  const auto l1 = column(dir / "single/metrics.jsonl", "eval/lm_loss"), l2 = column(dir / "two/metrics.jsonl", "eval/lm_loss");
  ASSERT_EQ(l1.size(), l2.size());
  for (size_t i = 0; i < l1.size(); ++i) EXPECT_NEAR(l2[i], l1[i], 1e-5 * std::abs(l1[i]));
  // The weights, the puzzle embedding (SignSGD over the gathered rows) included.
  EXPECT_LT(max_weight_difference(dir / "single/checkpoints/step_6/model.pt", dir / "two/checkpoints/step_6/model.pt"), 1e-5);
  EXPECT_TRUE(weights(dir / "two/checkpoints/step_6/model.pt").count("puzzle_emb.weights"));
  // Rank 1 wrote its own carry; rank 0 alone reported.
  EXPECT_TRUE(file_exists(dir / "two/checkpoints/step_6/rank_1.pt"));
  EXPECT_NE(log_of(dir.path(), 0).find("held-out puzzles solved exactly"), std::string::npos);
  EXPECT_EQ(log_of(dir.path(), 1).find("held-out puzzles solved exactly"), std::string::npos);
}

TEST_F(Distributed, AResumedTwoProcessRunContinuesExactly) {
  const auto config = dir / "config.json";
  auto codes = run_ranks(2, {train_args(config, {"--out", dir / "whole"}), train_args(config, {"--out", dir / "whole"})}, dir.path());
  ASSERT_EQ(codes, (std::vector<int>{0, 0})) << log_of(dir.path(), 0);
  codes = run_ranks(2, {train_args(config, {"--out", dir / "cut", "--max-steps", "3"}), train_args(config, {"--out", dir / "cut", "--max-steps", "3"})},
                    dir.path());
  ASSERT_EQ(codes, (std::vector<int>{0, 0})) << log_of(dir.path(), 0);
  const std::vector<std::string> resume = {tool("hrm_train"), "--resume", dir / "cut", "--no-progress", "--threads", "1", "--dist-timeout-s", "20"};
  codes = run_ranks(2, {resume, resume}, dir.path());
  ASSERT_EQ(codes, (std::vector<int>{0, 0})) << log_of(dir.path(), 0) << log_of(dir.path(), 1);
  const auto whole = column(dir / "whole/metrics.jsonl", "train/loss"), cut = column(dir / "cut/metrics.jsonl", "train/loss");
  ASSERT_EQ(cut.size(), whole.size());
  for (size_t i = 0; i < whole.size(); ++i) EXPECT_EQ(cut[i], whole[i]) << "step " << i + 1;
  EXPECT_EQ(max_weight_difference(dir / "whole/checkpoints/step_6/model.pt", dir / "cut/checkpoints/step_6/model.pt"), 0.0);
  // Another number of processes cannot resume it.
  const auto r = run_command(tool("hrm_train") + " --resume " + dir / "cut" + " --no-progress --threads 1", dir.path());
  EXPECT_EQ(r.exit_code, static_cast<int>(ExitCode::kConfig)) << r.err;
  EXPECT_NE(r.err.find("2 process(es)"), std::string::npos) << r.err;
}

TEST_F(Distributed, AKilledRankMakesTheOtherFailWithinTheTimeout) {
  const auto config = dir / "config.json";
  const int port = free_port();
  std::vector<std::string> args = train_args(config, {"--out", dir / "killed", "epochs=100000", "checkpoint_every_steps=0"});
  args[7] = "5";  // --dist-timeout-s 5
  std::vector<pid_t> pids;
  for (int r = 0; r < 2; ++r)
    pids.push_back(spawn(args,
                         {"RANK=" + std::to_string(r), "WORLD_SIZE=2", "LOCAL_RANK=" + std::to_string(r), "LOCAL_WORLD_SIZE=2",
                          "MASTER_ADDR=127.0.0.1", "MASTER_PORT=" + std::to_string(port)},
                         dir / ("rank" + std::to_string(r) + ".log")));
  // Wait until training runs (rank 0 logs steps), then kill rank 1.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (log_of(dir.path(), 0).find("step 3/") == std::string::npos && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_NE(log_of(dir.path(), 0).find("step 3/"), std::string::npos) << log_of(dir.path(), 0);
  ::kill(pids[1], SIGKILL);
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(wait_for(pids[1], 10), -SIGKILL);
  const int code = wait_for(pids[0], 30);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(code, static_cast<int>(ExitCode::kDistributed)) << log_of(dir.path(), 0);
  EXPECT_LT(took, 20.0);
  const auto log = log_of(dir.path(), 0);
  EXPECT_NE(log.find("hrm_train: error: "), std::string::npos) << log;
  EXPECT_NE(log.find("another rank died"), std::string::npos) << log;
}

TEST_F(Distributed, ConfigsThatDifferBetweenRanksAreRefusedAtStart) {
  const auto config = dir / "config.json";
  const auto codes = run_ranks(2, {train_args(config, {"--out", dir / "mismatch"}), train_args(config, {"--out", dir / "mismatch", "lr=0.002"})},
                               dir.path(), 120);
  EXPECT_EQ(codes, (std::vector<int>{static_cast<int>(ExitCode::kConfig), static_cast<int>(ExitCode::kConfig)}))
      << log_of(dir.path(), 0) << log_of(dir.path(), 1);
  EXPECT_NE(log_of(dir.path(), 0).find("rank 1's config differs from rank 0's (first at 'lr')"), std::string::npos) << log_of(dir.path(), 0);
  EXPECT_FALSE(file_exists(dir / "mismatch/config.json"));
}

TEST_F(Distributed, TorchrunLaunchesTheTrainer) {
  const std::string python = test_python();
  if (python.empty()) GTEST_SKIP() << "no Python with torch configured (torchrun comes with it)";
  const std::string torchrun = python.substr(0, python.rfind('/')) + "/torchrun";
  if (!file_exists(torchrun)) GTEST_SKIP() << torchrun << " missing";
  const auto r = run_command("timeout 240 " + torchrun + " --nproc-per-node 2 --master-port " + std::to_string(free_port()) +
                                 " --no-python " + tool("hrm_train") + " --config " + dir / "config.json" + " --out " +
                                 dir / "torchrun" + " --no-progress --threads 1 --dist-timeout-s 20",
                             dir.path());
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const auto one = column(dir / "single/metrics.jsonl", "train/loss"), tr = column(dir / "torchrun/metrics.jsonl", "train/loss");
  ASSERT_EQ(tr.size(), one.size());
  for (size_t i = 0; i < one.size(); ++i) EXPECT_NEAR(tr[i], one[i], 1e-5 * std::abs(one[i]));
}

// CLaRa stage 1 (compressor + decoder adapters and the memory rows), float32, dropout off: 4
// micro-batches per step, 2 per rank on 2 processes.
TEST(DistributedClara, TwoProcessesTrainAsOne) {
  ScratchDir dir;
  std::string rows;
  for (int i = 0; i < 4; ++i) rows += read_bytes(fixture("clara-train/stage1.jsonl"));
  write_bytes(dir / "rows.jsonl", rows);
  auto args = [&](const std::string& out) {
    return std::vector<std::string>{tool("clara_train"), "--stage", "stage1", "--base", fixture("clara-reference"), "--data",
                                    dir / "rows.jsonl", "--dtype", "float32", "--no-progress", "--threads", "1", "--out", out,
                                    "--dist-timeout-s", "20", "doc_max_length=32", "compr_rate=8", "lora_r=4", "train_batch_size=4",
                                    "micro_batch_size=1", "max_steps=4", "lora_dropout=0", "log_every=1"};
  };
  std::string single;
  for (const auto& a : args(dir / "one")) single += "'" + a + "' ";
  const auto r = run_command(single, dir.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto codes = run_ranks(2, {args(dir / "two"), args(dir / "two")}, dir.path());
  ASSERT_EQ(codes, (std::vector<int>{0, 0})) << log_of(dir.path(), 0) << log_of(dir.path(), 1);
  const auto one = column(dir / "one/metrics.jsonl", "train/loss"), two = column(dir / "two/metrics.jsonl", "train/loss");
  ASSERT_EQ(one.size(), 4u);
  ASSERT_EQ(two.size(), one.size());
  for (size_t i = 0; i < one.size(); ++i) EXPECT_NEAR(two[i], one[i], 1e-5 * std::abs(one[i])) << "step " << i + 1;
  EXPECT_NE(one[0], one[1]);
  const auto gn1 = column(dir / "one/metrics.jsonl", "train/grad_norm"), gn2 = column(dir / "two/metrics.jsonl", "train/grad_norm");
  for (size_t i = 0; i < gn1.size(); ++i) EXPECT_NEAR(gn2[i], gn1[i], 1e-4 * gn1[i]) << "step " << i + 1;
  const auto wa = read_safetensors(dir / "one/checkpoints/step_4/clara.safetensors");
  const auto wb = read_safetensors(dir / "two/checkpoints/step_4/clara.safetensors");
  ASSERT_EQ(wa.size(), wb.size());
  double worst = 0;
  for (size_t i = 0; i < wa.size(); ++i) {
    ASSERT_EQ(wa[i].first, wb[i].first);
    worst = std::max(worst, (wa[i].second.to(at::kDouble) - wb[i].second.to(at::kDouble)).abs().max().item<double>());
  }
  EXPECT_LT(worst, 1e-6);
  EXPECT_TRUE(file_exists(dir / "two/checkpoints/step_4/rank_1.pt"));
}

TEST(DistEnv, ReadsTorchrunsVariables) {
  auto with_env = [](const std::vector<std::pair<const char*, const char*>>& vars) {
    for (const char* k : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE"})
      ::unsetenv(k);
    for (const auto& [k, v] : vars) ::setenv(k, v, 1);
  };
  with_env({});
  EXPECT_FALSE(DistEnv::from_env().active());
  with_env({{"RANK", "1"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "2"}, {"MASTER_ADDR", "10.0.0.2"},
            {"MASTER_PORT", "1234"}, {"TORCHELASTIC_USE_AGENT_STORE", "True"}});
  auto e = DistEnv::from_env();
  EXPECT_TRUE(e.active());
  EXPECT_EQ(e.rank, 1);
  EXPECT_EQ(e.world_size, 4);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.master_addr, "10.0.0.2");
  EXPECT_EQ(e.master_port, 1234);
  EXPECT_TRUE(e.agent_store);
  with_env({{"RANK", "0"}});
  EXPECT_THROW(DistEnv::from_env(), ConfigError);
  with_env({{"RANK", "2"}, {"WORLD_SIZE", "2"}});
  EXPECT_THROW(DistEnv::from_env(), ConfigError);
  with_env({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "99999"}});
  EXPECT_THROW(DistEnv::from_env(), ConfigError);
  with_env({{"RANK", "x"}, {"WORLD_SIZE", "2"}});
  EXPECT_THROW(DistEnv::from_env(), ConfigError);
  with_env({});
}

}  // namespace
}  // namespace hrmclara::test
