// clara_train: the schedule against transformers', one optimizer step against the upstream
// fixture, gradient accumulation as upstream's DeepSpeed runs average it, exact resume, and the
// tool end to end on the fixture model (all three stages, checkpoints in upstream's layout).
#include <hrmclara/clara.h>
#include <hrmclara/clara_train.h>
#include <hrmclara/config.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/report.h>
#include <hrmclara/tensor_io.h>
#include <hrmclara/trainer.h>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>

#include "test_util.h"

using namespace hrmclara;
using namespace hrmclara::clara;
using namespace hrmclara::test;

namespace {

const std::string kBase = fixture("clara-reference");
const std::string kTrain = fixture("clara-train");

std::map<std::string, torch::Tensor> fixture_tensors() {
  std::map<std::string, torch::Tensor> m;
  for (auto& [k, v] : read_safetensors(kTrain + "/expected.safetensors")) m[k] = v.clone();
  return m;
}


// The fixture's stage-1 step as a training config: its two rows, one micro-batch, float32,
// dropout off, no schedule (the fixture stepped torch's AdamW once at lr 1e-4).
Json fixture_stage1_config(const std::string& data) {
  return validated_clara_train_config(Json{{"stage", "stage1"},
                                           {"base", kBase},
                                           {"init", kBase},
                                           {"train_data", data},
                                           {"train_batch_size", 2},
                                           {"micro_batch_size", 2},
                                           {"lr", 1e-4},
                                           {"lr_scheduler", "constant"},
                                           {"lora_dropout", 0.0},
                                           {"dtype", "float32"},
                                           {"max_steps", 1},
                                           {"seed", 1}},
                                      "test");
}

// `copies` copies of the fixture's stage-1 rows, as a JSONL file.
std::string repeated_rows(const ScratchDir& dir, int copies) {
  const std::string rows = read_bytes(kTrain + "/stage1.jsonl");
  std::string out;
  for (int i = 0; i < copies; ++i) out += rows;
  write_bytes(dir / "rows.jsonl", out);
  return dir / "rows.jsonl";
}

}  // namespace

TEST(ClaraTrain, ScheduleIsTransformersCosineWithMinLr) {
  // Values from transformers 4.56.2 get_cosine_with_min_lr_schedule_with_warmup (warm-up 3 of 100
  // steps, min_lr_rate 0.1), read before each optimizer step as DeepSpeed applies them.
  const std::vector<std::pair<int64_t, double>> want = {{1, 0.0}, {2, 0.3333333333333333}, {3, 0.6666666666666666}, {4, 1.0},
                                                        {5, 0.9997640060704818}, {50, 0.586396198162632},
                                                        {99, 0.10094372819302977}, {100, 0.10023599392951829}};
  for (const auto& [step, factor] : want) EXPECT_NEAR(cosine_with_min_lr_factor(step, 3, 100, 0.1), factor, 1e-15) << step;
  // Upstream's 3-step debug run (warm-up ceil(0.03 * 3) = 1): 0, 1, 0.55 (its log shows the lr after each step).
  EXPECT_DOUBLE_EQ(clara_lr_factor("cosine_with_min_lr", 1, 1, 3, 0.1), 0.0);
  EXPECT_DOUBLE_EQ(clara_lr_factor("cosine_with_min_lr", 2, 1, 3, 0.1), 1.0);
  EXPECT_NEAR(clara_lr_factor("cosine_with_min_lr", 3, 1, 3, 0.1), 0.55, 1e-15);
  EXPECT_DOUBLE_EQ(clara_lr_factor("constant", 1, 1, 3, 0.1), 1.0);
  EXPECT_DOUBLE_EQ(clara_lr_factor("linear_warmup", 2, 4, 10, 0.1), 0.25);
}

TEST(ClaraTrain, OneStepMatchesTheUpstreamFixture) {
  auto e = fixture_tensors();
  ClaraTrainTask task(fixture_stage1_config(kTrain + "/stage1.jsonl"), torch::kCPU);
  EXPECT_EQ(task.gradient_accumulation(), 1);
  EXPECT_EQ(task.total_steps(), 1);
  const auto r = task.train_step(1, 1.0);
  EXPECT_LE(std::abs(r.metrics.at("loss") / e["stage1.total_loss"].item<double>() - 1), 1e-5) << r.metrics.at("loss");
  EXPECT_LE(std::abs(r.metrics.at("grad_norm") / e["stage1.grad_norm"].item<double>() - 1), 1e-5);
  int checked = 0;
  double worst = 0;
  for (const auto& [name, t] : task.masters()) {
    const std::string key = "stage1.step." + (name == "model.embed_tokens.weight[mem]" ? std::string("model.embed_tokens.weight") : name);
    ASSERT_TRUE(e.count(key)) << key;
    const double err = rel_error(t, e[key]);
    EXPECT_LE(err, 1e-5) << key;
    worst = std::max(worst, err);
    ++checked;
  }
  EXPECT_EQ(checked, 57);
  // The next loss: the fixture's batch again, after the step.
  ClaraTensors b{e["stage1.enc_input_ids"], e["stage1.enc_attention_mask"], e["stage1.dec_input_ids"],
                 e["stage1.dec_attention_mask"], e["stage1.labels"], torch::Tensor(), torch::Tensor(), 1};
  torch::NoGradGuard no_grad;
  const auto after = task.model().stage_forward("stage1", b, 0.1, false);
  EXPECT_LE(rel_error(after.total_loss, e["stage1.after_step.total_loss"]), 1e-5);
  EXPECT_LE(rel_error(after.loss, e["stage1.after_step.loss"]), 1e-5);
  std::cout << "[ measured ] one stage-1 step: " << checked << " tensors, largest relative error " << worst
            << "; next loss " << rel_error(after.total_loss, e["stage1.after_step.total_loss"]) << std::endl;
}

TEST(ClaraTrain, AccumulationAveragesMicroBatchMeansAsUpstream) {
  // Two micro-batches of one row each: the step's gradient is that of (mean CE of row A + mean CE
  // of row B) / 2 (+ MSE), not of the token mean over both rows (which one micro-batch of two gives).
  ScratchDir dir;
  Json cfg = fixture_stage1_config(kTrain + "/stage1.jsonl");
  cfg["micro_batch_size"] = 1;
  ClaraTrainTask task(cfg, torch::kCPU);
  ASSERT_EQ(task.gradient_accumulation(), 2);
  task.accumulate_gradients();
  std::map<std::string, torch::Tensor> accumulated;
  for (const auto& [name, t] : task.masters()) accumulated[name] = t.grad().clone();

  // Directly: each row alone through the collate, the mean of the two losses, one backward.
  auto direct_grads = [&](bool per_row) {
    ClaraTrainTask fresh(fixture_stage1_config(kTrain + "/stage1.jsonl"), torch::kCPU);
    auto& model = fresh.model();
    const auto rows = read_clara_rows(kTrain + "/stage1.jsonl", ClaraStage::kStage1).rows;
    ClaraCollateOptions co;
    co.doc_max_length = 32;
    co.compr_rate = 8;
    co.generation_top_k = 1;
    PyRandom rng(20240611);
    auto tensors = [&](const std::vector<ClaraRow>& part) {
      const auto b = clara_collate(model.tokenizer(), part, ClaraStage::kStage1, co, rng);
      auto t = [](const IdMatrix& m) { return torch::tensor(m.data, torch::kLong).view({m.rows, m.cols}); };
      return ClaraTensors{t(b.enc_input_ids), t(b.enc_attention_mask), t(b.dec_input_ids), t(b.dec_attention_mask),
                          t(b.labels), torch::Tensor(), torch::Tensor(), 1};
    };
    torch::Tensor total;
    if (per_row) {
      total = (model.stage_forward("stage1", tensors({rows[0]}), 0.1, false).total_loss +
               model.stage_forward("stage1", tensors({rows[1]}), 0.1, false).total_loss) /
              2.0;
    } else {
      total = model.stage_forward("stage1", tensors(rows), 0.1, false).total_loss;
    }
    total.backward();
    std::map<std::string, torch::Tensor> g;
    for (const auto& [name, t] : fresh.masters()) g[name] = t.grad().clone();
    return g;
  };
  const auto per_row = direct_grads(true), pooled = direct_grads(false);
  double worst = 0, pooled_gap = 0;
  for (const auto& [name, g] : accumulated) {
    worst = std::max(worst, rel_error(g, per_row.at(name)));
    pooled_gap = std::max(pooled_gap, rel_error(g, pooled.at(name)));
  }
  EXPECT_LE(worst, 1e-5);
  EXPECT_GT(pooled_gap, 1e-2) << "the two objectives must differ on these rows for the test to tell them apart";
  std::cout << "[ measured ] accumulation vs mean of per-row means " << worst << "; vs the pooled token mean " << pooled_gap
            << std::endl;
}

TEST(ClaraTrain, ResumedRunEqualsTheUninterruptedOneStepForStep) {
  // LoRA dropout on, gradient accumulation, paraphrase templates drawn, data reshuffled per epoch:
  // everything the resume state must carry.
  ScratchDir dir;
  Json cfg = fixture_stage1_config(repeated_rows(dir, 3));  // 6 rows
  cfg["micro_batch_size"] = 1;
  cfg["lora_dropout"] = 0.1;
  cfg["epochs"] = 2.0;
  cfg["max_steps"] = 0;
  cfg["lr_scheduler"] = "cosine_with_min_lr";
  cfg["lr"] = 1e-3;
  TrainerOptions opt;
  opt.log_every = 1;
  opt.progress_bar = false;
  opt.lr_schedule = [](int64_t step, int64_t total) { return clara_lr_factor("cosine_with_min_lr", step, 1, total, 0.1); };
  opt.run_dir = dir / "full";
  {
    ClaraTrainTask task(cfg, torch::kCPU);
    ASSERT_EQ(task.total_steps(), 6);
    Trainer t(task, opt);
    t.start(cfg);
    ASSERT_EQ(t.run(), Trainer::Outcome::kFinished);
  }
  opt.run_dir = dir / "split";
  {
    ClaraTrainTask task(cfg, torch::kCPU);
    TrainerOptions o = opt;
    o.max_steps = 4;  // mid-epoch
    Trainer t(task, o);
    t.start(cfg);
    ASSERT_EQ(t.run(), Trainer::Outcome::kStepLimit);
  }
  {
    torch::manual_seed(999);  // the resumed run must not depend on the process's generator
    ClaraTrainTask task(cfg, torch::kCPU);
    Trainer t(task, opt);
    ASSERT_EQ(t.resume(), 4);
    ASSERT_EQ(t.run(), Trainer::Outcome::kFinished);
  }
  auto losses = [&](const std::string& run) {
    for (const auto& s : read_metric_series(run + "/metrics.jsonl"))
      if (s.name == "train/loss") return s.y;
    return std::vector<double>{};
  };
  const auto a = losses(dir / "full"), b = losses(dir / "split");
  ASSERT_EQ(a.size(), 6u);
  ASSERT_EQ(b.size(), 6u);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]) << "step " << i + 1;
  EXPECT_NE(a[0], a[3]);  // the steps differ (dropout, data order): the comparison is not trivial
  const auto wa = read_safetensors(dir / "full/checkpoints/step_6/clara.safetensors");
  const auto wb = read_safetensors(dir / "split/checkpoints/step_6/clara.safetensors");
  expect_same_tensors(wb, wa);
}

TEST(ClaraTrain, ToolTrainsEveryStageAndWritesUpstreamCheckpoints) {
  ScratchDir dir;
  const std::string tool_path = tool("clara_train") + " --base " + kBase + " --no-progress --threads 1 --log-level warn ";
  // stage 1 from a fresh model on the base, then stage1_2 and stage2 from its checkpoint.
  auto r = run_command(tool_path + "--stage stage1 --data " + repeated_rows(dir, 2) + " --out " + (dir / "s1") +
                           " doc_max_length=32 compr_rate=8 lora_r=4 train_batch_size=2 micro_batch_size=1 max_steps=2"
                           " eval_data=" + kTrain + "/stage1.jsonl eval_max_new_tokens=4",
                       dir.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string ckpt = dir / "s1/checkpoints/step_2";
  for (const char* f : {"adapters.pth", "decoder_first_last_layers.pth", "config.json", "clara.safetensors", "train_state.pt"})
    EXPECT_TRUE(file_exists(ckpt + "/" + f)) << f;
  EXPECT_NE(r.out.find("\"eval/f1\""), std::string::npos) << r.out;
  r = run_command(tool_path + "--config " + fixture("../../models/clara/stage1_2.json") + " --init " + ckpt + " --data " + kTrain +
                      "/stage1_2.jsonl --out " + (dir / "s12") + " generation_top_k=2 train_batch_size=2 micro_batch_size=1 max_steps=1",
                  dir.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = run_command(tool_path + "--config " + fixture("../../models/clara/stage2.json") + " --init " + ckpt + " --data " + kTrain +
                      "/stage2.jsonl --eval-data " + kTrain + "/stage2.jsonl --out " + (dir / "s2") +
                      " generation_top_k=2 dec_max_len=256 train_batch_size=2 micro_batch_size=2 max_steps=1 eval_max_new_tokens=2",
                  dir.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Json last = Json::parse(r.out.substr(r.out.rfind('\n', r.out.size() - 2) + 1));
  EXPECT_TRUE(last.contains("train/recall@1")) << last;
  EXPECT_TRUE(last.contains("eval/recall@2")) << last;
  // The stage-2 checkpoint holds three adapters and loads as upstream's end-to-end model.
  ClaraLoadOptions o;
  o.training_stage = "stage2";
  o.pure_inference = true;
  const auto model = ClaraModel::load(dir / "s2/checkpoints/step_1", kBase, o);
  EXPECT_EQ(model.adapter_names(), (std::vector<std::string>{kDecoderAdapter, kEncoderAdapter, kQueryAdapter}));
  // Resume of a finished run adds nothing and exits cleanly; a run directory is never reused.
  r = run_command(tool_path + "--resume " + (dir / "s12"), dir.path());
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = run_command(tool_path + "--stage stage1 --data " + kTrain + "/stage1.jsonl --out " + (dir / "s1") +
                      " doc_max_length=32 compr_rate=8 lora_r=4 train_batch_size=2",
                  dir.path());
  EXPECT_EQ(r.exit_code, 2) << r.err;
}

TEST(ClaraTrain, BadConfigsAndFlagsAreOneLineErrors) {
  ScratchDir dir;
  const std::string t = tool("clara_train") + " --base " + kBase + " --log-level warn ";
  auto expect_error = [&](const std::string& args, int code, const std::string& needle) {
    const auto r = run_command(t + args, dir.path());
    EXPECT_EQ(r.exit_code, code) << args << "\n" << r.err;
    EXPECT_EQ(count_lines(r.err), 1) << args << "\n" << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << args << "\n" << r.err;
  };
  const std::string data = " --data " + kTrain + "/stage1.jsonl --out " + (dir / "x");
  expect_error("--stage stage1" + data + " no_such_key=1", 5, "no_such_key");
  expect_error("--stage stage1" + data + " train_batch_size=3 micro_batch_size=2", 5, "train_batch_size");
  expect_error("--stage stage2" + data, 5, "'init'");
  expect_error("--stage stage9" + data, 5, "stage9");
  expect_error("--stage stage1 --out " + (dir / "x"), 5, "train_data");
  expect_error("--stage stage1" + data + " lr_scheduler=linear", 5, "lr_scheduler");
  expect_error("--stage stage1" + data + " doc_max_length=32 compr_rate=8 train_batch_size=4", 5, "fewer than one batch");
  expect_error("--resume " + (dir / "nothing"), 3, "nothing");
  // Every shipped preset validates once base and data are given.
  for (const char* preset : {"stage1", "stage1_2", "stage2"}) {
    const std::string path = fixture(std::string("../../models/clara/") + preset + ".json");
    Json c = read_json_file(path);
    c["base"] = kBase;
    c["init"] = kBase;
    c["train_data"] = "rows.jsonl";
    EXPECT_NO_THROW(validated_clara_train_config(c, path)) << path;
  }
  // --print-config shows a preset before any input is named, and still checks the values.
  const std::string preset = fixture("../../models/clara/stage1_2.json");
  const auto printed = run_command(tool("clara_train") + " --config " + preset + " lr=3e-5 --print-config", dir.path());
  ASSERT_EQ(printed.exit_code, 0) << printed.err;
  const Json shown = Json::parse(printed.out);
  EXPECT_EQ(shown["stage"], "stage1_2");
  EXPECT_DOUBLE_EQ(shown["lr"].get<double>(), 3e-5);
  const auto bad_print = run_command(tool("clara_train") + " --config " + preset + " lr=-1 --print-config", dir.path());
  EXPECT_EQ(bad_print.exit_code, 5) << bad_print.err;
  EXPECT_NE(bad_print.err.find("'lr'"), std::string::npos) << bad_print.err;
  write_bytes(dir / "bad.jsonl", "{\"data_type\": \"qa\", \"question\": [\"q\"], \"answers\": [\"a\"], \"docs\": []}\n");
  expect_error("--stage stage1 --data " + (dir / "bad.jsonl") + " --out " + (dir / "y"), 4, "bad.jsonl:1");
}
