// Scoring CLaRa's answers as upstream's evaluation/evaluate.py does, torch-free: reading
// prediction files, per-example scores, the summary (qa_metrics.h computes the numbers) and the
// JSON that `clara_eval` writes.
//
// Prediction rows (JSONL, one object per line, blank lines skipped; or one JSON array of such
// objects, as evaluate.py's result files hold):
//   prediction   "prediction" | "CLaRa_normal_output" (upstream's name): a string
//   golds        "golden_answers" (a non-empty list of strings, or one string) | "answer" (a string)
//                | "answers" | "golds" (non-empty lists of strings; "golds" is what clara_eval --out
//                writes, so its files can be scored again), the first present; "" is a valid gold
//   question     "question": a string (optional, copied to the per-example output)
//   retrieval    "topk_idx" (retrieved candidates, best first) and "pos_index" (the positives):
//                lists of non-negative integers; a row counts for retrieval only with both
// A JSON null counts as an absent field; other fields are ignored. A missing or mistyped field is
// a FormatError "FILE:LINE: field 'X': what" ("FILE: entry I" in an array file).
#pragma once

#include <hrmclara/qa_metrics.h>

#include <cstdint>
#include <string>
#include <vector>

namespace hrmclara::qa {

struct EvalExample {
  std::string source;         // "FILE:LINE", for errors
  std::string question;       // "" when unknown
  bool has_question = false;
  QaResult result;            // prediction, golds, topk_idx, pos_index
  bool has_retrieval = false; // both topk_idx and pos_index were given
};

// IoError when the file cannot be read; FormatError for a bad row (see above) or a file without rows.
std::vector<EvalExample> read_eval_predictions(const std::string& path);

// "first" (evaluate.py: golden_answers[0]) or "best" (per metric, the best over all golds);
// UsageError otherwise.
GoldPolicy parse_gold_policy(const std::string& name);
std::string gold_policy_name(GoldPolicy policy);

// One example's scores under `policy` (kBest: each metric's best over the golds). UsageError for
// a result without gold.
struct ExampleScores {
  bool em = false, cover_em = false;
  double f1 = 0.0;
};
ExampleScores score_example(const QaResult& result, GoldPolicy policy);

// The metrics of a set of examples: basic_metrics over all of them and, over the examples with
// retrieval, retrieval_metrics for each k of `ks` that is at most the smallest number of
// candidates retrieved (none when no example has retrieval or one retrieved nothing).
struct EvalReport {
  GoldPolicy policy = GoldPolicy::kFirst;
  BasicMetrics basic;
  RetrievalMetrics retrieval;   // `at` empty when there is nothing to report
  int64_t retrieval_rows = 0;   // examples with retrieval
};
EvalReport evaluate_examples(const std::vector<EvalExample>& examples, GoldPolicy policy,
                             const std::vector<int64_t>& ks = {1, 3, 5});

// The per-example line: {"question" (when known), "prediction", "golds", "em", "f1", "cover_em",
// "topk_idx", "pos_index" (when the example has retrieval)}.
std::string eval_example_json(const EvalExample& example, const ExampleScores& scores);
// The summary as one JSON object, evaluate.py's names in its order -- f1, acc (cover-EM), em,
// avg_output_length, recall@k..., precision@k... -- then count, retrieval_count (with retrieval)
// and gold ("first" | "best").
std::string eval_report_json(const EvalReport& report);
// The summary for people, a few lines ending in '\n'.
std::string eval_report_text(const EvalReport& report);

}  // namespace hrmclara::qa
