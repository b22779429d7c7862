// clara_eval: every case of tests/fixtures/clara-train/metrics.json (computed by upstream's
// evaluate.py) through a predictions file, the gold policies, the retrieval k's, checkpoint runs
// on the fixture's stage1_2 and stage2 rows against ClaraModel called directly (and against the
// upstream texts of inference.json), and bad input as one-line errors.
#include <hrmclara/clara.h>
#include <hrmclara/clara_data.h>
#include <hrmclara/clara_eval.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <sstream>

#include "test_util.h"

namespace hrmclara {
namespace {

using nlohmann::ordered_json;
using test::fixture;
using test::run_command;
using test::ScratchDir;
using test::tool;
using test::write_bytes;
using Json = nlohmann::json;

const std::string kBase = fixture("clara-reference");
const std::string kTrain = fixture("clara-train");

ordered_json metrics_fixture() { return ordered_json::parse(read_file(kTrain + "/metrics.json")); }

std::vector<Json> read_lines(const std::string& path) {
  std::vector<Json> out;
  std::istringstream in(read_file(path));
  for (std::string line; std::getline(in, line);) out.push_back(Json::parse(line));
  return out;
}

// The last stdout line, parsed (the order of its keys kept).
ordered_json summary_of(const std::string& out) {
  std::string text = out;
  while (!text.empty() && text.back() == '\n') text.pop_back();
  return ordered_json::parse(text.substr(text.find_last_of('\n') + 1));
}

bool one_line(const std::string& s) { return !s.empty() && s.find('\n') == s.size() - 1; }

std::string eval_tool() { return tool("clara_eval"); }

}  // namespace

TEST(ClaraEval, FixturePairsThroughAPredictionsFileMatchEvaluatePy) {
  ScratchDir dir;
  const auto j = metrics_fixture();
  ASSERT_EQ(j["pairs"].size(), 18u);
  // Every spelling of the fields: prediction / CLaRa_normal_output, answer / golden_answers.
  std::string file;
  for (size_t i = 0; i < j["pairs"].size(); ++i) {
    const auto& p = j["pairs"][i];
    ordered_json row;
    row[i % 2 == 0 ? "prediction" : "CLaRa_normal_output"] = p["prediction"];
    if (i % 3 == 0) row["golden_answers"] = ordered_json::array({p["gold"]});
    else row["answer"] = p["gold"];
    row["question"] = "q" + std::to_string(i);
    file += row.dump() + "\n";
  }
  write_bytes(dir / "pred.jsonl", file);
  const auto r = run_command(eval_tool() + " --predictions " + (dir / "pred.jsonl") + " --out " + (dir / "per.jsonl"), dir.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto per = read_lines(dir / "per.jsonl");
  ASSERT_EQ(per.size(), 18u);
  double f1 = 0, em = 0, acc = 0, words = 0;
  for (size_t i = 0; i < per.size(); ++i) {
    const auto& want = j["pairs"][i];
    const std::string why = want["why"];
    EXPECT_EQ(per[i]["question"], "q" + std::to_string(i));
    EXPECT_EQ(per[i]["prediction"], want["prediction"].get<std::string>()) << why;
    EXPECT_EQ(per[i]["golds"], Json::array({want["gold"].get<std::string>()})) << why;
    EXPECT_EQ(per[i]["em"].get<bool>(), want["em"].get<bool>()) << why;
    EXPECT_EQ(per[i]["cover_em"].get<bool>(), want["cover_em"].get<bool>()) << why;
    EXPECT_EQ(per[i]["f1"].get<double>(), want["f1"].get<double>()) << why;  // the same bits
    f1 += want["f1"].get<double>();
    em += want["em"].get<bool>() ? 1 : 0;
    acc += want["cover_em"].get<bool>() ? 1 : 0;
    std::istringstream split(want["prediction"].get<std::string>());
    for (std::string w; split >> w;) ++words;
  }
  // Means in row order, as ResultCalculator sums them.
  const auto s = summary_of(r.out);
  EXPECT_EQ(s["count"], 18);
  EXPECT_EQ(s["gold"], "first");
  EXPECT_EQ(s["f1"].get<double>(), f1 / 18);
  EXPECT_EQ(s["em"].get<double>(), em / 18);
  EXPECT_EQ(s["acc"].get<double>(), acc / 18);
  EXPECT_EQ(s["avg_output_length"].get<double>(), words / 18);
  EXPECT_FALSE(s.contains("recall@1"));
  EXPECT_NE(r.out.find("cover-EM (acc)"), std::string::npos) << r.out;
}

TEST(ClaraEval, FixtureStage2RowsReproduceCalculateStage2Metrics) {
  ScratchDir dir;
  const auto j = metrics_fixture();
  const auto& want = j["evaluate_py_calculate_stage2_metrics"];
  std::string jsonl;
  for (const auto& row : j["stage2_results"]) jsonl += row.dump() + "\n";
  write_bytes(dir / "stage2.jsonl", jsonl);
  write_bytes(dir / "stage2.json", j["stage2_results"].dump(1));  // evaluate.py's own result file: one array
  for (const auto& file : {dir / "stage2.jsonl", dir / "stage2.json"}) {
    SCOPED_TRACE(file);
    const auto r = run_command(eval_tool() + " --predictions " + file + " --out " + (dir / "per.jsonl"), dir.path());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto s = summary_of(r.out);
    // Same names, same order, same bits; then the counts.
    auto it = s.begin();
    for (const auto& [key, value] : want.items()) {
      ASSERT_NE(it, s.end());
      EXPECT_EQ(it.key(), key);
      EXPECT_EQ(it.value().get<double>(), value.get<double>()) << key;
      ++it;
    }
    EXPECT_EQ(s["count"], 3);
    EXPECT_EQ(s["retrieval_count"], 3);
    const auto per = read_lines(dir / "per.jsonl");
    ASSERT_EQ(per.size(), 3u);
    EXPECT_EQ(per[0]["topk_idx"], Json::array({1, 3, 0, 2, 4}));
    EXPECT_EQ(per[2]["pos_index"], Json::array());
    EXPECT_FALSE(per[0].contains("question"));
    // The per-example file scores again to the same numbers.
    const auto again = run_command(eval_tool() + " --predictions " + (dir / "per.jsonl"), dir.path());
    ASSERT_EQ(again.exit_code, 0) << again.err;
    EXPECT_EQ(summary_of(again.out), s);
  }
}

TEST(ClaraEval, GoldPolicyFirstIsUpstreamsAndBestTakesTheBestGold) {
  ScratchDir dir;
  write_bytes(dir / "p.jsonl",
              "{\"prediction\": \"Elbe\", \"golden_answers\": [\"Danube\", \"Elbe\"]}\n"
              "{\"prediction\": \"the Elbe river\", \"golden_answers\": [\"Elbe\", \"Elbe river\"]}\n");
  auto r = run_command(eval_tool() + " --predictions " + (dir / "p.jsonl") + " --out " + (dir / "first.jsonl"), dir.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto s = summary_of(r.out);
  EXPECT_EQ(s["em"].get<double>(), 0.0);  // golden_answers[0] only, as evaluate.py
  EXPECT_EQ(s["acc"].get<double>(), 0.5);
  EXPECT_EQ(s["f1"].get<double>(), (0.0 + 2.0 / 3.0) / 2);
  const auto first = read_lines(dir / "first.jsonl");
  EXPECT_FALSE(first[0]["em"].get<bool>());
  EXPECT_EQ(first[1]["f1"].get<double>(), 2.0 / 3.0);

  r = run_command(eval_tool() + " --gold best --predictions " + (dir / "p.jsonl") + " --out " + (dir / "best.jsonl"), dir.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  s = summary_of(r.out);
  EXPECT_EQ(s["gold"], "best");
  EXPECT_EQ(s["em"].get<double>(), 1.0);
  EXPECT_EQ(s["f1"].get<double>(), 1.0);
  const auto best = read_lines(dir / "best.jsonl");
  EXPECT_TRUE(best[0]["em"].get<bool>());
  EXPECT_TRUE(best[1]["em"].get<bool>());
}

TEST(ClaraEval, RetrievalKsStopAtTheNumberRetrieved) {
  ScratchDir dir;
  write_bytes(dir / "p.jsonl",
              "{\"prediction\": \"a\", \"answer\": \"a\", \"topk_idx\": [2, 0], \"pos_index\": [0]}\n"
              "{\"prediction\": \"b\", \"answer\": \"c\", \"topk_idx\": [1, 3], \"pos_index\": [0, 3]}\n"
              "{\"prediction\": \"b\", \"answer\": \"b\"}\n");  // no retrieval: scored for EM only
  const auto r = run_command(eval_tool() + " --predictions " + (dir / "p.jsonl"), dir.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto s = summary_of(r.out);
  EXPECT_EQ(s["count"], 3);
  EXPECT_EQ(s["retrieval_count"], 2);
  EXPECT_EQ(s["em"].get<double>(), 2.0 / 3.0);
  EXPECT_EQ(s["recall@1"].get<double>(), 0.0);
  EXPECT_EQ(s["precision@1"].get<double>(), 0.0);
  EXPECT_FALSE(s.contains("recall@3"));  // two retrieved: k = 3 and 5 are not reported
  EXPECT_FALSE(s.contains("precision@5"));
  // The library with k = 2 requested: both rows half-recalled or fully.
  const auto examples = qa::read_eval_predictions(dir / "p.jsonl");
  const auto report = qa::evaluate_examples(examples, qa::GoldPolicy::kFirst, {1, 2, 3});
  ASSERT_EQ(report.retrieval.at.size(), 2u);
  EXPECT_EQ(report.retrieval.at_k(2).recall, (1.0 + 0.5) / 2);
  EXPECT_EQ(report.retrieval.at_k(2).precision, (0.5 + 0.5) / 2);
}

// ---- checkpoints -----------------------------------------------------------------------------------------

namespace {

GenerationOptions greedy(int64_t n) {
  GenerationOptions o;
  o.max_new_tokens = n;
  return o;
}

Json inference_json() { return Json::parse(read_file(kTrain + "/inference.json")); }

}  // namespace

TEST(ClaraEval, CheckpointOnStage1_2RowsAnswersAsClaraModel) {
  ScratchDir dir;
  const auto r = run_command(eval_tool() + " --base " + kBase + " --model " + kTrain + "/ckpt_stage1 --data " + kTrain +
                                 "/stage1_2.jsonl --stage stage1_2 --dtype float32 --max-new-tokens 8 --out " + (dir / "per.jsonl"),
                             dir.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto per = read_lines(dir / "per.jsonl");
  const auto rows = read_clara_rows(kTrain + "/stage1_2.jsonl", ClaraStage::kStage1_2).rows;
  ASSERT_EQ(per.size(), rows.size());

  clara::ClaraLoadOptions o;  // as evaluate.py loads it
  o.training_stage = "stage1_2";
  o.generation_top_k = 2;
  o.pure_inference = true;
  const auto model = clara::ClaraModel::load(kTrain + "/ckpt_stage1", kBase, o);
  std::vector<std::string> questions, docs;
  for (const auto& row : rows) {
    questions.push_back(row.questions.front());
    docs.insert(docs.end(), row.docs.begin(), row.docs.end());
  }
  const auto want = model.answer(questions, model.compress(docs), greedy(8));
  const auto upstream = inference_json()["stage1"]["texts"].get<std::vector<std::string>>();
  double em = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(per[i]["question"], questions[i]);
    EXPECT_EQ(per[i]["prediction"], want.texts[i]);
    EXPECT_EQ(per[i]["prediction"], upstream[i]);  // what upstream's model generated
    EXPECT_EQ(per[i]["golds"], Json::array({rows[i].answers.front()}));
    EXPECT_EQ(per[i]["em"].get<bool>(), qa::exact_match(want.texts[i], rows[i].answers.front()));
    EXPECT_FALSE(per[i].contains("topk_idx"));
    em += qa::exact_match(want.texts[i], rows[i].answers.front()) ? 1 : 0;
  }
  const auto s = summary_of(r.out);
  EXPECT_EQ(s["count"], 2);
  EXPECT_EQ(s["em"].get<double>(), em / 2);
  EXPECT_FALSE(s.contains("recall@1"));
}

TEST(ClaraEval, CheckpointOnStage2RowsRetrievesAndAnswersAsClaraModel) {
  ScratchDir dir;
  const auto r = run_command(eval_tool() + " --base " + kBase + " --model " + kTrain + "/ckpt_stage2 --data " + kTrain +
                                 "/stage2.jsonl --stage stage2 --dtype float32 --max-new-tokens 8 --batch-size 1 --out " +
                                 (dir / "per.jsonl"),
                             dir.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto per = read_lines(dir / "per.jsonl");
  const auto rows = read_clara_rows(kTrain + "/stage2.jsonl", ClaraStage::kStage2).rows;
  ASSERT_EQ(per.size(), rows.size());

  clara::ClaraLoadOptions o;
  o.training_stage = "stage2";
  o.pure_inference = true;
  const auto model = clara::ClaraModel::load(kTrain + "/ckpt_stage2", kBase, o);
  ASSERT_EQ(model.config().generation_top_k, 2);  // the checkpoint's, the default top-k
  const auto upstream = inference_json()["e2e"];
  std::vector<qa::QaResult> results;
  for (size_t i = 0; i < rows.size(); ++i) {  // --batch-size 1: one question per call
    const auto want = model.answer_end_to_end({rows[i].questions.front()}, model.compress(rows[i].docs), 2, greedy(8));
    EXPECT_EQ(per[i]["prediction"], want.texts[0]);
    EXPECT_EQ(per[i]["prediction"], upstream["texts"][i]);
    std::vector<int64_t> topk(want.topk_idx[0].data_ptr<int64_t>(), want.topk_idx[0].data_ptr<int64_t>() + 2);
    EXPECT_EQ(per[i]["topk_idx"].get<std::vector<int64_t>>(), topk);
    EXPECT_EQ(per[i]["pos_index"].get<std::vector<int64_t>>(), std::vector<int64_t>(rows[i].pos_index.begin(), rows[i].pos_index.end()));
    results.push_back({want.texts[0], {rows[i].answers.front()}, topk, {rows[i].pos_index.begin(), rows[i].pos_index.end()}});
  }
  const auto s = summary_of(r.out);
  const auto m = qa::stage2_metrics(results, {1}).named();
  for (const auto& [key, value] : m) EXPECT_EQ(s[key].get<double>(), value) << key;
  EXPECT_TRUE(s.contains("recall@1"));
  EXPECT_FALSE(s.contains("recall@3"));  // top-2 retrieved
  EXPECT_EQ(s["retrieval_count"], 2);

  // --top-k 1 retrieves one document per question.
  const auto one = run_command(eval_tool() + " --base " + kBase + " --model " + kTrain + "/ckpt_stage2 --data " + kTrain +
                                   "/stage2.jsonl --stage stage2 --dtype float32 --max-new-tokens 2 --top-k 1 --out " + (dir / "k1.jsonl"),
                               dir.path());
  ASSERT_EQ(one.exit_code, 0) << one.err;
  for (const auto& line : read_lines(dir / "k1.jsonl")) EXPECT_EQ(line["topk_idx"].size(), 1u);
}

TEST(ClaraEval, BadInputIsOneLineError) {
  ScratchDir dir;
  write_bytes(dir / "good.jsonl", "{\"prediction\": \"a\", \"answer\": \"a\"}\n");
  write_bytes(dir / "broken.jsonl", "{\"prediction\": \"a\", \"answer\": \"a\"}\n{\"prediction\": \"a\", \n");
  write_bytes(dir / "no-gold.jsonl", "\n{\"prediction\": \"a\", \"answer\": \"a\"}\n{\"prediction\": \"b\", \"question\": \"q\"}\n");
  write_bytes(dir / "empty-gold.jsonl", "{\"prediction\": \"a\", \"golden_answers\": []}\n");
  write_bytes(dir / "no-pred.jsonl", "{\"answer\": \"a\"}\n");
  write_bytes(dir / "bad-topk.jsonl", "{\"prediction\": \"a\", \"answer\": \"a\", \"topk_idx\": [1, \"x\"], \"pos_index\": [1]}\n");
  write_bytes(dir / "empty.jsonl", "\n\n");
  write_bytes(dir / "bad-row.jsonl", "{\"question\": \"q\", \"docs\": [], \"answer\": \"a\"}\n");
  const std::string ckpt = " --base " + kBase + " --model " + kTrain + "/ckpt_stage1 --dtype float32 --data " + kTrain + "/stage1_2.jsonl";
  const struct {
    std::string args;
    int code;
    std::string what;
  } cases[] = {
      {"", 2, "give --predictions FILE"},
      {" --predictions " + (dir / "good.jsonl") + " --gold last", 2, "--gold: 'last'"},
      {" --predictions " + (dir / "good.jsonl") + " --model x", 2, "--model runs a checkpoint"},
      {" --predictions " + (dir / "good.jsonl") + " --bogus", 2, "unknown option --bogus"},
      {" --predictions " + (dir / "missing.jsonl"), 3, dir / "missing.jsonl"},
      {" --predictions " + (dir / "broken.jsonl"), 4, dir / "broken.jsonl:2: not valid JSON"},
      {" --predictions " + (dir / "no-gold.jsonl"), 4, dir / "no-gold.jsonl:3: no gold answer"},
      {" --predictions " + (dir / "empty-gold.jsonl"), 4, dir / "empty-gold.jsonl:1: field 'golden_answers': empty list"},
      {" --predictions " + (dir / "no-pred.jsonl"), 4, dir / "no-pred.jsonl:1: no prediction"},
      {" --predictions " + (dir / "bad-topk.jsonl"), 4, dir / "bad-topk.jsonl:1: field 'topk_idx'"},
      {" --predictions " + (dir / "empty.jsonl"), 4, dir / "empty.jsonl: holds no predictions"},
      {ckpt + " --stage stage3", 2, "--stage: unknown stage 'stage3'"},
      {ckpt + " --stage stage1", 2, "unknown stage 'stage1'"},
      {ckpt, 2, "missing required option --stage"},
      {ckpt + " --stage stage1_2 --top-k 2", 2, "--top-k applies to stage2"},
      {" --base " + kBase + " --model " + (dir / "no-model") + " --dtype float32 --data " + kTrain + "/stage1_2.jsonl --stage stage1_2", 3,
       dir / "no-model"},
      {" --base " + kBase + " --model " + kTrain + "/ckpt_stage1 --dtype float32 --data " + (dir / "bad-row.jsonl") + " --stage stage1_2",
       4, dir / "bad-row.jsonl:1: field 'docs'"},
      {" --base " + kBase + " --model " + kTrain + "/ckpt_stage2 --dtype float32 --data " + kTrain + "/stage2.jsonl --stage stage2 --top-k 5",
       2, "--top-k 5 exceeds the row's 4 candidate documents"},
  };
  for (const auto& c : cases) {
    const auto r = run_command(eval_tool() + c.args, dir.path());
    EXPECT_EQ(r.exit_code, c.code) << c.args << "\n" << r.err;
    EXPECT_TRUE(one_line(r.err)) << c.args << "\n" << r.err;
    EXPECT_EQ(r.err.rfind("clara_eval: error: ", 0), 0u) << r.err;
    EXPECT_NE(r.err.find(c.what), std::string::npos) << c.args << "\n" << r.err;
  }
}

}  // namespace hrmclara
