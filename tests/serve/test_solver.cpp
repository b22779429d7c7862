// The embedding API: HrmSolver against the model run by hand, continuous batching, the Sudoku
// helpers; ClaraPipeline against ClaraModel, streaming, the index.
#include "test_util.h"

#include <hrmclara/clara.h>
#include <hrmclara/clara_pipeline.h>
#include <hrmclara/errors.h>
#include <hrmclara/hrm.h>
#include <hrmclara/hrm_solver.h>
#include <hrmclara/puzzle_build.h>

#include <torch/torch.h>

#include <map>
#include <thread>

namespace hrmclara::test {
namespace {

std::string sudoku_checkpoint() { return fixture("sudoku-trm"); }

// The model's own eval run, step by step: what the solver must reproduce for one puzzle. Returns
// per step the argmax tokens and q_halt.
struct Trace {
  std::vector<std::vector<int32_t>> tokens;
  std::vector<float> q_halt, q_continue;
};
Trace run_model_by_hand(const std::vector<int32_t>& puzzle, int64_t steps) {
  auto config = hrm::checkpoint_config(sudoku_checkpoint(), "", 1);
  auto model = hrm::make_puzzle_model(config);
  hrm::load_hrm_weights(*model, sudoku_checkpoint());
  model->eval();
  torch::NoGradGuard no_grad;
  hrm::Batch batch{torch::tensor(puzzle, torch::kInt).view({1, -1}), torch::zeros({1, 81}, torch::kInt),
                   torch::zeros({1}, torch::kInt)};
  auto carry = model->initial_carry(batch);
  Trace t;
  for (int64_t k = 0; k < steps; ++k) {
    auto [next, out] = model->forward(carry, batch);
    auto tok = out.logits.argmax(-1).to(torch::kInt).contiguous();
    t.tokens.emplace_back(tok.data_ptr<int32_t>(), tok.data_ptr<int32_t>() + 81);
    t.q_halt.push_back(out.q_halt_logits.item<float>());
    t.q_continue.push_back(out.q_continue_logits.item<float>());
    carry = next;
  }
  return t;
}

std::vector<std::vector<int32_t>> puzzles(int n, int clues, uint64_t seed0 = 100) {
  std::vector<std::vector<int32_t>> out;
  for (int i = 0; i < n; ++i) out.push_back(sudoku::generate(seed0 + static_cast<uint64_t>(i), clues));
  return out;
}

TEST(HrmSolver, MaxHaltingIsTheModelsEvalRun) {
  HrmSolverOptions o;
  o.halting = "max";
  const auto solver = HrmSolver::load(sudoku_checkpoint(), o);
  EXPECT_EQ(solver.info().max_steps, 16);
  EXPECT_EQ(solver.info().seq_len, 81);
  EXPECT_EQ(solver.info().parameters, 224258);
  for (const auto& p : puzzles(2, 50)) {
    const auto trace = run_model_by_hand(p, 16);
    const auto s = solver.solve(PuzzleInput{p, 0});
    EXPECT_EQ(s.steps, 16);
    EXPECT_EQ(s.tokens, trace.tokens.back());
    EXPECT_NEAR(s.q_halt, trace.q_halt.back(), 1e-4);
  }
}

TEST(HrmSolver, AdaptiveHaltingStopsWhereTheQHeadSaysHalt) {
  const auto solver = HrmSolver::load(sudoku_checkpoint());
  EXPECT_EQ(solver.info().halting, "adaptive");
  int early = 0;
  for (const auto& p : puzzles(4, 45, 7)) {
    const auto trace = run_model_by_hand(p, 16);
    // TRM without the continue head halts on q_halt > 0.
    size_t k = 0;
    while (k + 1 < trace.q_halt.size() && !(trace.q_halt[k] > 0)) ++k;
    const auto s = solver.solve(PuzzleInput{p, 0});
    EXPECT_EQ(s.steps, static_cast<int64_t>(k + 1));
    EXPECT_EQ(s.tokens, trace.tokens[k]);
    EXPECT_NEAR(s.halt_confidence, 1.0 / (1.0 + std::exp(-trace.q_halt[k])), 1e-5);
    early += s.steps < 16;
  }
  EXPECT_GT(early, 0) << "the trained model should halt some easy puzzles early";
}

TEST(HrmSolver, SolvesPuzzlesOfItsTrainingRange) {
  const auto solver = HrmSolver::load(sudoku_checkpoint());
  std::vector<PuzzleInput> in;
  for (const auto& p : puzzles(24, 50, 1000)) in.push_back({p, 0});
  const auto out = solver.solve(in);
  int solved = 0;
  for (size_t i = 0; i < in.size(); ++i) solved += sudoku::check(in[i].tokens, out[i].tokens).solved();
  EXPECT_GE(solved, 21) << "of 24 (the checkpoint solves ~96 % of held-out puzzles with 45-55 clues)";
}

TEST(HrmSolver, BatchesAndContinuousJoinsGiveEachPuzzleItsOwnAnswer) {
  const auto solver = HrmSolver::load(sudoku_checkpoint());
  const auto ps = puzzles(10, 46, 300);
  std::vector<PuzzleSolution> alone;
  for (const auto& p : ps) alone.push_back(solver.solve(PuzzleInput{p, 0}));
  std::vector<PuzzleInput> in;
  for (const auto& p : ps) in.push_back({p, 0});
  const auto together = solver.solve(in);
  for (size_t i = 0; i < ps.size(); ++i) {
    EXPECT_EQ(together[i].tokens, alone[i].tokens) << i;
    EXPECT_EQ(together[i].steps, alone[i].steps) << i;
  }
  // Puzzles join while others run: one every step, then the rest at once.
  auto batch = solver.continuous_batch();
  std::map<uint64_t, PuzzleSolution> got;
  size_t next = 0;
  int64_t max_active = 0;
  for (int step = 0; step < 200 && got.size() < ps.size(); ++step) {
    if (next < ps.size()) batch.add(PuzzleInput{ps[next], 0}, next), ++next;
    if (step == 4)
      while (next < ps.size()) batch.add(PuzzleInput{ps[next], 0}, next), ++next;
    max_active = std::max(max_active, batch.active());
    for (auto& f : batch.step()) got[f.tag] = f.solution;
  }
  EXPECT_EQ(batch.active(), 0);
  ASSERT_EQ(got.size(), ps.size());
  EXPECT_GT(max_active, 1);
  for (size_t i = 0; i < ps.size(); ++i) {
    EXPECT_EQ(got[i].tokens, alone[i].tokens) << i;
    EXPECT_EQ(got[i].steps, alone[i].steps) << i;
  }
  EXPECT_TRUE(batch.step().empty());
}

TEST(HrmSolver, ConcurrentCallersGetTheSequentialAnswers) {
  const auto solver = HrmSolver::load(sudoku_checkpoint());
  const auto ps = puzzles(8, 48, 700);
  std::vector<PuzzleSolution> want;
  for (const auto& p : ps) want.push_back(solver.solve(PuzzleInput{p, 0}));
  std::vector<PuzzleSolution> got(ps.size());
  std::vector<std::thread> threads;
  for (size_t t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (size_t i = t; i < ps.size(); i += 4) got[i] = solver.solve(PuzzleInput{ps[i], 0});
    });
  for (auto& th : threads) th.join();
  for (size_t i = 0; i < ps.size(); ++i) {
    EXPECT_EQ(got[i].tokens, want[i].tokens) << i;
    EXPECT_EQ(got[i].steps, want[i].steps) << i;
  }
}

// An upstream checkpoint (step_0 with all_config.yaml beside it) loads unchanged: with halting
// "max" the solver's answer is the argmax of upstream's own final eval logits (tests/fixtures/
// hrm-reference, made by running sapientinc/HRM), up to float32 near-ties.
TEST(HrmSolver, LoadsAnUpstreamCheckpointAndAnswersAsUpstream) {
  HrmSolverOptions o;
  o.halting = "max";
  o.dataset_json = fixture("hrm-reference/dataset.json");
  o.dtype = "float32";
  const auto solver = HrmSolver::load(fixture("hrm-reference/step_0"), o);
  EXPECT_EQ(solver.info().arch, hrm::kHrmArchName);
  EXPECT_EQ(solver.info().max_steps, 4);
  std::map<std::string, at::Tensor> batch, expected;
  for (auto& [k, v] : read_safetensors(fixture("hrm-reference/batch.safetensors"))) batch[k] = v;
  for (auto& [k, v] : read_safetensors(fixture("hrm-reference/expected.safetensors"))) expected[k] = v;
  const auto& inputs = batch.at("inputs");
  std::vector<PuzzleInput> in;
  for (int64_t b = 0; b < inputs.size(0); ++b) {
    const auto row = inputs[b].contiguous();
    in.push_back({std::vector<int32_t>(row.data_ptr<int32_t>(), row.data_ptr<int32_t>() + row.numel()),
                  batch.at("puzzle_identifiers")[b].item<int64_t>()});
  }
  const auto out = solver.solve(in);
  const auto logits = expected.at("eval.3.logits");
  const auto q_halt = expected.at("eval.3.q_halt_logits");
  for (size_t b = 0; b < in.size(); ++b) {
    EXPECT_EQ(out[b].steps, 4);
    EXPECT_NEAR(out[b].q_halt, q_halt[static_cast<int64_t>(b)].item<float>(), 1e-4);
    for (int64_t t = 0; t < logits.size(1); ++t) {
      const auto row = logits[static_cast<int64_t>(b)][t];
      const int64_t want = row.argmax().item<int64_t>();
      const int32_t got = out[b].tokens[static_cast<size_t>(t)];
      if (got != want)  // only where upstream's top two logits are within float32 noise
        EXPECT_LT(row[want].item<float>() - row[got].item<float>(), 1e-4) << "row " << b << " position " << t;
    }
  }
}

TEST(HrmSolver, RefusesBadInputNamingTheField) {
  const auto solver = HrmSolver::load(sudoku_checkpoint());
  auto message = [&](const PuzzleInput& p) {
    try {
      solver.solve(p);
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({std::vector<int32_t>(80, 1), 0}).find("tokens: 80 tokens"), std::string::npos);
  auto p = sudoku::generate(1, 40);
  p[12] = 11;
  EXPECT_NE(message({p, 0}).find("tokens[12] = 11 is outside [0, 11)"), std::string::npos);
  EXPECT_NE(message({sudoku::generate(1, 40), 1}).find("puzzle_identifier 1"), std::string::npos);
  auto batch = solver.continuous_batch();
  EXPECT_THROW(batch.add({std::vector<int32_t>(3, 1), 0}, 0), UsageError);
  EXPECT_EQ(batch.active(), 0);

  HrmSolverOptions o;
  o.halting = "sometimes";
  EXPECT_THROW(HrmSolver::load(sudoku_checkpoint(), o), UsageError);
  o = {};
  o.max_steps = -1;
  EXPECT_THROW(HrmSolver::load(sudoku_checkpoint(), o), UsageError);
  EXPECT_THROW(HrmSolver::load(fixture("no-such-checkpoint")), Error);
}

TEST(HrmSolver, MaxStepsCapsTheRun) {
  HrmSolverOptions o;
  o.halting = "max";
  o.max_steps = 3;
  const auto solver = HrmSolver::load(sudoku_checkpoint(), o);
  const auto p = sudoku::generate(5, 30);
  const auto s = solver.solve(PuzzleInput{p, 0});
  EXPECT_EQ(s.steps, 3);
  EXPECT_EQ(s.tokens, run_model_by_hand(p, 3).tokens.back());
}

TEST(Sudoku, ParseFormatCheckGenerate) {
  const std::string grid = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79";
  const auto t = sudoku::parse(grid);
  ASSERT_EQ(t.size(), 81u);
  EXPECT_EQ(t[0], 6);  // digit 5 -> token 6
  EXPECT_EQ(t[2], 1);  // blank
  EXPECT_EQ(sudoku::format(t), grid);
  // Separators are ignored, 0 is a blank.
  std::string pretty;
  for (int r = 0; r < 9; ++r) pretty += grid.substr(static_cast<size_t>(r) * 9, 3) + " | " + grid.substr(static_cast<size_t>(r) * 9 + 3, 3) + " | " +
                                        grid.substr(static_cast<size_t>(r) * 9 + 6, 3) + "\n";
  EXPECT_EQ(sudoku::parse(pretty), t);
  std::string zeros = grid;
  std::replace(zeros.begin(), zeros.end(), '.', '0');
  EXPECT_EQ(sudoku::parse(zeros), t);
  EXPECT_THROW(sudoku::parse(grid.substr(1)), UsageError);
  EXPECT_THROW(sudoku::parse(grid + "1"), UsageError);
  try {
    sudoku::parse("12a");
    FAIL();
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("character 3 is 'a'"), std::string::npos);
  }

  const std::string solution = "534678912672195348198342567859761423426853791713924856961537284287419635345286179";
  auto s = sudoku::parse(solution);
  auto v = sudoku::check(t, s);
  EXPECT_TRUE(v.solved());
  EXPECT_TRUE(v.conflicting_cells.empty());
  // Swap two digits of a row: both columns now repeat them.
  std::swap(s[0], s[1]);
  v = sudoku::check(t, s);
  EXPECT_TRUE(v.complete);
  EXPECT_FALSE(v.valid);
  EXPECT_FALSE(v.consistent);  // cell 0 and 1 were givens 5 and 3
  EXPECT_EQ(v.changed_givens, (std::vector<int>{0, 1}));
  EXPECT_FALSE(v.conflicting_cells.empty());
  std::swap(s[0], s[1]);
  s[80] = 1;  // a blank
  v = sudoku::check(t, s);
  EXPECT_FALSE(v.complete);
  EXPECT_FALSE(v.solved());
  EXPECT_THROW(sudoku::check(t, std::vector<int32_t>(80, 2)), ShapeError);

  const auto a = sudoku::generate(42, 36), b = sudoku::generate(42, 36), c = sudoku::generate(43, 36);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  puzzles::Sudoku grid_a{};
  int clues = 0;
  for (size_t i = 0; i < 81; ++i) {
    grid_a[i] = static_cast<uint8_t>(a[i] - 1);
    clues += a[i] > 1;
  }
  EXPECT_EQ(clues, 36);
  EXPECT_EQ(puzzles::count_solutions(grid_a, 2), 1);
  EXPECT_THROW(sudoku::generate(1, 16), UsageError);
}

// ---- ClaraPipeline -------------------------------------------------------------------------------

std::string clara_base() { return fixture("clara-reference"); }
std::string clara_ckpt() { return fixture("clara-train/ckpt_stage2"); }

ClaraPipelineOptions f32() {
  ClaraPipelineOptions o;
  o.dtype = "float32";
  o.device = "cpu";
  return o;
}

TEST(ClaraPipeline, AnswersAsTheModelDoesAndStreamsTheSameText) {
  const auto pipe = ClaraPipeline::load(clara_ckpt(), clara_base(), f32());
  EXPECT_EQ(pipe.info().memory_tokens, 4);
  EXPECT_TRUE(pipe.info().has_query_reasoner);
  EXPECT_FALSE(pipe.has_index());
  const std::vector<std::string> docs = {"Hamlet is a tragedy by William Shakespeare.", "The Eiffel Tower is in Paris."};
  ClaraGeneration g;
  g.max_new_tokens = 12;
  const auto reply = pipe.answer({"Who wrote Hamlet?", docs}, g);

  clara::ClaraLoadOptions lo;
  lo.dtype = at::kFloat;
  lo.pure_inference = true;
  const auto model = clara::ClaraModel::load(clara_ckpt(), clara_base(), lo);
  GenerationOptions go;
  go.max_new_tokens = 12;
  const auto direct = model.answer({"Who wrote Hamlet?"}, model.compress(docs), go);
  EXPECT_EQ(reply.answer, direct.texts[0]);
  EXPECT_GT(reply.generated_tokens, 0);
  EXPECT_LE(reply.generated_tokens, 12);

  std::string streamed;
  int pieces = 0;
  const auto again = pipe.answer({"Who wrote Hamlet?", docs}, g, [&](const std::string& piece) {
    streamed += piece;
    ++pieces;
    return true;
  });
  EXPECT_EQ(again.answer, reply.answer);
  EXPECT_EQ(streamed, reply.answer);
  EXPECT_GT(pieces, 1);

  // A sink that stops after its first piece ends that answer's generation.
  g.max_new_tokens = 40;
  int calls = 0;
  const auto stopped = pipe.answer({"Who wrote Hamlet?", docs}, g, [&](const std::string&) { return ++calls < 1; });
  EXPECT_EQ(calls, 1);
  EXPECT_LT(stopped.generated_tokens, 40);

  // compress() is the compressor's memory, n * hidden per document.
  const auto vectors = pipe.compress(docs);
  ASSERT_EQ(vectors.size(), 2u);
  EXPECT_EQ(vectors[0].size(), 4u * 64u);
  const auto want = model.compress(docs).to(at::kFloat).contiguous();
  EXPECT_FLOAT_EQ(vectors[1][5], want[1].reshape({-1})[5].item<float>());
}

TEST(ClaraPipeline, IndexAddSearchRetrieveAndBatch) {
  ScratchDir dir;
  auto o = f32();
  o.index_dir = dir / "index";
  o.create_index = true;
  auto pipe = ClaraPipeline::load(clara_ckpt(), clara_base(), o);
  ASSERT_TRUE(pipe.has_index());
  EXPECT_EQ(pipe.index_size(), 0);
  const std::vector<ClaraDocument> docs = {{"d1", "test", "Paris is the capital of France."},
                                           {"d2", "test", "The Nile is a river in Africa."},
                                           {"d3", "test", "Shakespeare wrote Hamlet."}};
  EXPECT_EQ(pipe.add_documents(docs), 3);
  EXPECT_EQ(pipe.add_documents(docs), 0);  // same texts: nothing to do
  EXPECT_THROW(pipe.add_documents({{"d1", "test", "Another text."}}), UsageError);
  EXPECT_EQ(pipe.add_documents({{"d1", "test", "Paris is in France."}}, /*replace=*/true), 1);
  EXPECT_EQ(pipe.index_size(), 3);
  const auto listed = pipe.index_documents();
  ASSERT_EQ(listed.size(), 3u);
  EXPECT_EQ(listed.back().id, "d1");  // a replaced document moves to the end
  EXPECT_EQ(listed.back().text, "Paris is in France.");

  const auto hits = pipe.search("Which river is in Africa?", 2);
  ASSERT_EQ(hits.size(), 2u);
  EXPECT_GE(hits[0].score, hits[1].score);
  EXPECT_FALSE(hits[0].text.empty());

  ClaraGeneration g;
  g.max_new_tokens = 6;
  ClaraQuestion q{"Which river is in Africa?", {}, {}, true, 2};
  const auto reply = pipe.answer(q, g);
  ASSERT_EQ(reply.passages.size(), 2u);
  EXPECT_EQ(reply.passages[0].id, hits[0].id);
  // Answering from those ids gives the same answer as retrieving them.
  ClaraQuestion by_ids{"Which river is in Africa?", {}, {hits[0].id, hits[1].id}};
  EXPECT_EQ(pipe.answer(by_ids, g).answer, reply.answer);

  // A batch is one decoder call: the same as the model's own batched answer.
  const auto batch = pipe.answer_batch({by_ids, ClaraQuestion{"Where is Paris?", {}, {"d1", "d3"}}}, g);
  ASSERT_EQ(batch.size(), 2u);
  EXPECT_EQ(batch[0].answer.empty() && batch[1].answer.empty(), false);
  EXPECT_THROW(pipe.answer_batch({by_ids, ClaraQuestion{"Where?", {}, {"d1"}}}, g), UsageError);

  // The index reopens with the documents (texts come back only with documents_jsonl).
  auto o2 = f32();
  o2.index_dir = dir / "index";
  const auto reopened = ClaraPipeline::load(clara_ckpt(), clara_base(), o2);
  EXPECT_EQ(reopened.index_size(), 3);
  EXPECT_EQ(reopened.search("Which river is in Africa?", 2)[0].id, hits[0].id);
}

TEST(ClaraPipeline, RefusesQuestionsItCannotAnswerNamingTheField) {
  ScratchDir dir;
  auto o = f32();
  o.index_dir = dir / "index";
  o.create_index = true;
  auto pipe = ClaraPipeline::load(clara_ckpt(), clara_base(), o);
  pipe.add_documents({{"d1", "", "Paris is the capital of France."}});
  auto message = [&](const ClaraQuestion& q) {
    try {
      pipe.validate(q);
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message({"Where?", {"a doc"}}), "no error");
  EXPECT_NE(message({"  ", {"a doc"}}).find("question is empty"), std::string::npos);
  EXPECT_NE(message({"Where?"}).find("exactly one of"), std::string::npos);
  EXPECT_NE(message({"Where?", {"a doc"}, {"d1"}}).find("exactly one of"), std::string::npos);
  EXPECT_NE(message({"Where?", {}, {"zz"}}).find("ids[0] = 'zz'"), std::string::npos);
  EXPECT_NE(message({"Where?", {}, {}, true, 5}).find("exceeds"), std::string::npos);
  EXPECT_NE(message({"Where?", {"<MEM0> sneaky"}}).find("control token"), std::string::npos);
  EXPECT_NE(message({"Where?", {""}}).find("documents[0] is empty"), std::string::npos);
  const auto no_index = ClaraPipeline::load(clara_ckpt(), clara_base(), f32());
  EXPECT_THROW(no_index.validate({"Where?", {}, {}, true}), UsageError);
  EXPECT_THROW(no_index.search("Where?", 1), UsageError);
  ClaraPipelineOptions bad = f32();
  bad.create_index = true;
  EXPECT_THROW(ClaraPipeline::load(clara_ckpt(), clara_base(), bad), UsageError);
}

}  // namespace
}  // namespace hrmclara::test
