// clara_eval: EM, F1, cover-EM and retrieval Recall@k / Precision@k of CLaRa answers, computed as
// upstream's evaluation/evaluate.py does, from a predictions file or by running a checkpoint on
// stage1_2 / stage2 rows.
#include <hrmclara/clara.h>
#include <hrmclara/clara_data.h>
#include <hrmclara/clara_eval.h>
#include <hrmclara/cli.h>
#include <hrmclara/device.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/llm_config.h>
#include <hrmclara/log.h>

#include <torch/torch.h>

#include <iostream>
#include <string>
#include <vector>

using namespace hrmclara;
using namespace hrmclara::clara;

namespace {

const char* kUsage =
    "(--predictions PRED.jsonl | --base BASE_DIR --model CKPT --data ROWS.jsonl --stage stage1_2|stage2)\n"
    "       [--out PER_EXAMPLE.jsonl] [--gold first|best] [--top-k K] [--max-new-tokens N] [--batch-size B]\n"
    "       [--dtype D] [--device D]\n"
    "PRED.jsonl rows: {\"prediction\" | \"CLaRa_normal_output\", \"golden_answers\": [...] | \"answer\", \"question\"?,\n"
    "\"topk_idx\"?, \"pos_index\"?} (or one JSON array of them). A checkpoint is loaded as evaluate.py loads it\n"
    "(pure_inference) and answers greedily: stage1_2 rows {question, docs[k], answer} from their documents,\n"
    "stage2 rows {question, docs[N], answer, pos_index} end to end (its query reasoner picks the top K of the N).\n"
    "Prints a summary and, as the last line, one JSON object: f1, acc (cover-EM), em, avg_output_length,\n"
    "recall@k, precision@k (k in 1, 3, 5 up to the number retrieved), count, retrieval_count, gold.";

// Runs the checkpoint on the rows of --data and returns one example per row.
std::vector<qa::EvalExample> run_checkpoint(const ArgParser& a) {
  const std::string stage_name = a.require("stage");
  if (stage_name != "stage1_2" && stage_name != "stage2")
    throw UsageError("--stage: unknown stage '" + stage_name + "' (clara_eval evaluates stage1_2 or stage2 rows)");
  const ClaraStage stage = parse_clara_stage(stage_name);
  const std::string base = a.require("base"), model_dir = a.require("model"), data = a.require("data");
  const int64_t batch_size = a.get_int("batch-size");
  if (batch_size < 1) throw UsageError("--batch-size must be at least 1");
  if (a.has("top-k") && stage != ClaraStage::kStage2) throw UsageError("--top-k applies to stage2 (end-to-end) evaluation");
  if (a.has("top-k") && a.get_int("top-k") < 1) throw UsageError("--top-k must be at least 1");
  if (a.has("max-new-tokens") && a.get_int("max-new-tokens") < 1) throw UsageError("--max-new-tokens must be at least 1");

  configure_threads(static_cast<int>(a.get_int("threads")));
  const auto device = resolve_device(a.get("device"));
  const auto rows = read_clara_rows(data, stage).rows;
  if (rows.empty()) throw FormatError(data + ": holds no rows");
  const auto check_top_k = [&](int64_t k) {  // every row must have k candidates to choose from
    for (const auto& row : rows)
      if (k > static_cast<int64_t>(row.docs.size()))
        throw UsageError(row.source + ": --top-k " + std::to_string(k) + " exceeds the row's " + std::to_string(row.docs.size()) +
                         " candidate documents");
  };
  if (a.has("top-k")) check_top_k(a.get_int("top-k"));  // before the model loads

  ClaraLoadOptions o;
  o.device = device;
  o.dtype = resolve_dtype(a.get("dtype"), device, LlmConfig::load(base + "/config.json").torch_dtype);
  o.training_stage = stage_name;
  o.pure_inference = true;  // as evaluate.py: every adapter the checkpoint holds
  if (stage == ClaraStage::kStage1_2) o.generation_top_k = static_cast<int64_t>(rows.front().docs.size());
  else if (a.has("top-k")) o.generation_top_k = a.get_int("top-k");
  const auto model = ClaraModel::load(model_dir, base, o);  // logs what it loaded
  const int64_t top_k = a.has("top-k") ? a.get_int("top-k") : model.config().generation_top_k;
  if (stage == ClaraStage::kStage2) check_top_k(top_k);

  GenerationOptions g;  // greedy
  g.max_new_tokens = a.has("max-new-tokens") ? a.get_int("max-new-tokens") : model.config().max_new_tokens;

  std::vector<qa::EvalExample> out;
  for (size_t start = 0; start < rows.size();) {
    // A batch: up to --batch-size consecutive rows with the same number of documents.
    size_t end = start + 1;
    while (end < rows.size() && end - start < static_cast<size_t>(batch_size) && rows[end].docs.size() == rows[start].docs.size())
      ++end;
    std::vector<std::string> questions, docs;
    for (size_t r = start; r < end; ++r) {
      questions.push_back(rows[r].questions.front());
      docs.insert(docs.end(), rows[r].docs.begin(), rows[r].docs.end());
    }
    const auto memory = model.compress(docs);
    const ClaraAnswer ans = stage == ClaraStage::kStage2 ? model.answer_end_to_end(questions, memory, top_k, g)
                                                         : model.answer(questions, memory, g);
    for (size_t r = start; r < end; ++r) {
      qa::EvalExample ex;
      ex.source = rows[r].source;
      ex.question = rows[r].questions.front();
      ex.has_question = true;
      ex.result.prediction = ans.texts[r - start];
      ex.result.golds = {rows[r].answers.front()};
      if (stage == ClaraStage::kStage2) {
        const auto picked = ans.topk_idx[static_cast<int64_t>(r - start)].contiguous();
        ex.result.topk_idx.assign(picked.data_ptr<int64_t>(), picked.data_ptr<int64_t>() + picked.numel());
        ex.result.pos_index.assign(rows[r].pos_index.begin(), rows[r].pos_index.end());
        ex.has_retrieval = true;
      }
      out.push_back(std::move(ex));
    }
    log_info("answered " + std::to_string(end) + " of " + std::to_string(rows.size()) + " questions");
    start = end;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  return run_main("clara_eval", [&] {
    ArgParser a("clara_eval", kUsage);
    a.option("predictions", "score this predictions file (JSONL, or a JSON array of rows)")
        .option("base", "the base model directory (config.json, safetensors, tokenizer.model)")
        .option("model", "CLaRa checkpoint to run (upstream layout or ours)")
        .option("data", "rows to answer (stage1_2 or stage2 format)")
        .option("stage", "stage1_2 (answer from the row's documents) or stage2 (retrieve the top K of them, then answer)")
        .option("out", "write one JSON line per example: question, prediction, golds, em, f1, cover_em, topk_idx, pos_index")
        .option("gold", "first (evaluate.py: golden_answers[0]) or best (the best score over all gold answers)", "first")
        .option("top-k", "stage2: documents retrieved per question (default: the checkpoint's generation_top_k)")
        .option("max-new-tokens", "tokens generated per answer (default: the config's max_new_tokens)")
        .option("batch-size", "questions answered together", "8")
        .option("dtype", std::string(kDtypeChoices) + "; auto: the base's torch_dtype where the device runs it natively", "auto")
        .common_options();
    if (!a.parse(argc, argv, 0)) return 0;
    const auto policy = qa::parse_gold_policy(a.get("gold"));

    std::vector<qa::EvalExample> examples;
    if (a.has("predictions")) {
      for (const char* other : {"base", "model", "data", "stage", "top-k", "max-new-tokens"})
        if (a.has(other)) throw UsageError(std::string("--") + other + " runs a checkpoint; it does not go with --predictions");
      examples = qa::read_eval_predictions(a.get("predictions"));
    } else {
      if (!a.has("model") && !a.has("data") && !a.has("stage") && !a.has("base"))
        throw UsageError("give --predictions FILE, or --base, --model, --data and --stage (see --help)");
      examples = run_checkpoint(a);
    }

    const auto report = qa::evaluate_examples(examples, policy);
    if (a.has("out")) {
      std::string lines;
      for (const auto& ex : examples) lines += qa::eval_example_json(ex, qa::score_example(ex.result, policy)) + "\n";
      write_file_atomically(a.get("out"), lines);
    }
    std::cout << qa::eval_report_text(report);
    std::cout << qa::eval_report_json(report) << std::endl;
    return 0;
  });
}
