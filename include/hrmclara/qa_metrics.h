// Question-answering and retrieval metrics of upstream CLaRa (apple/ml-clara evaluation/evaluate.py
// EvaluationMetrics / ResultCalculator, and openrlhf/trainer/sft_trainer.py RetrievalMetrics),
// torch-free. Every number matches the Python code's to the last bit: the same normalization, the
// same float operations in the same order (tests/fixtures/clara-train/metrics.json).
//
// normalize_answer(t) = collapse_whitespace(remove_articles(remove_punctuation(lower(t)))):
//   lower               Python's str.lower() (see "Unicode" below)
//   remove_punctuation  drops the 32 ASCII characters of Python's string.punctuation
//                       !"#$%&'()*+,-./:;<=>?@[\]^_`{|}~ -- and nothing else: curly quotes, dashes
//                       and other non-ASCII punctuation stay, as upstream keeps them
//   remove_articles     re.sub(r"\b(a|an|the)\b", " ", t): every whole word a / an / the becomes
//                       one space ("theater" and "thé" are untouched)
//   collapse_whitespace " ".join(t.split()): split on Python's whitespace, join with one space
// Before normalizing, bool_mapping maps exactly "True" -> "yes" and "False" -> "no" (case-sensitive,
// no trimming: "true" and " True" stay as they are).
//
// Unicode. Text is UTF-8. Bytes that are not valid UTF-8 are carried through unchanged and count
// as non-word, non-space characters (Python's surrogateescape view of such bytes).
//   - lower(): Python's full mapping for ASCII, Latin-1, Latin Extended-A/B and Additional,
//     Greek and Greek Extended (with the final-sigma rule: a capital sigma that ends a word
//     becomes ς), Cyrillic, Armenian, Georgian, Cherokee, Glagolitic, Deseret, letterlike signs,
//     Roman numerals, circled and fullwidth letters, and U+0130 (İ -> "i" + U+0307). Checked
//     against Python 3.11 over every assigned code point below U+30000: it differs on 413 of them
//     (Latin Extended-C/D, Cyrillic Extended-B and a few historic scripts, left unchanged here).
//   - Word characters for the article rule (Python's \w): ASCII letters, digits and '_', and every
//     non-ASCII code point except whitespace, Latin-1 punctuation and symbols, combining
//     diacritics, General Punctuation, currency, arrows, mathematical and technical symbols, box
//     drawing, shapes, dingbats, CJK symbols and punctuation, fullwidth ASCII punctuation, emoji,
//     private use and escaped bytes. Python's differs on 5411 assigned code points (mostly the
//     vowel signs of Indic and South-East Asian scripts and rare symbols), which changes a result
//     only where such a character touches a lone "a", "an" or "the".
//   - Whitespace: exactly Python's str.isspace() set (ASCII \t\n\v\f\r, \x1c-\x1f, space, U+0085,
//     U+00A0, U+1680, U+2000-200A, U+2028, U+2029, U+202F, U+205F, U+3000).
//   - No accent folding: "thé café" != "the cafe", as upstream.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace hrmclara::qa {

// ---- one answer --------------------------------------------------------------------------------

std::string python_lower(std::string_view text);               // str.lower() (subset, see above)
std::vector<std::string> python_split(std::string_view text);  // str.split() with no argument
std::string bool_mapping(std::string_view text);               // "True" -> "yes", "False" -> "no"
std::string normalize_answer(std::string_view text);           // no bool mapping

// The scores of evaluate.py; each applies bool_mapping then normalize_answer to both sides.
bool exact_match(std::string_view prediction, std::string_view gold);
// "acc": every token of the normalized gold occurs among the prediction's (vacuously true for an
// empty gold).
bool cover_exact_match(std::string_view prediction, std::string_view gold);
// Token-multiset F1; 0 when either normalized side is "yes", "no" or "noanswer" and they differ,
// and 0 when nothing is shared (so two empty answers score EM 1 but F1 0).
double f1_score(std::string_view prediction, std::string_view gold);

struct AnswerScores {
  bool em = false;
  bool cover_em = false;
  double f1 = 0.0;
};
AnswerScores score_answer(std::string_view prediction, std::string_view gold);

// ---- a result list -----------------------------------------------------------------------------

// One evaluated question, as a row of evaluate.py's result list.
struct QaResult {
  std::string prediction;              // "CLaRa_normal_output"
  std::vector<std::string> golds;      // "golden_answers", or the single "answer"
  std::vector<int64_t> topk_idx;       // retrieved candidates, best first (stage 2 only)
  std::vector<int64_t> pos_index;      // the positive candidates (stage 2 only)
};

// Which gold answer a row is scored against. evaluate.py scores golden_answers[0] only (kFirst,
// the default); kBest takes, per metric, the best over all golds (the usual SQuAD convention; not
// what upstream reports).
enum class GoldPolicy { kFirst, kBest };

// ResultCalculator.calculate_basic_metrics: means over the rows of F1, cover-EM ("acc"), EM, and
// of the number of whitespace-separated words of the raw prediction. Throws UsageError for an
// empty list or a row without gold.
struct BasicMetrics {
  double f1 = 0.0, acc = 0.0, em = 0.0, avg_output_length = 0.0;
  int64_t count = 0;
};
BasicMetrics basic_metrics(const std::vector<QaResult>& results, GoldPolicy policy = GoldPolicy::kFirst);

// Recall@k = |set(topk_idx[:k]) & set(pos_index)| / |set(pos_index)|, Precision@k = the same
// hits / k (k, not the number of retrieved candidates).
struct RetrievalAtK {
  int64_t k = 0;
  double recall = 0.0, precision = 0.0;
};
struct RetrievalMetrics {
  std::vector<RetrievalAtK> at;  // one per k, in the order given
  int64_t samples = 0;           // rows averaged over
  const RetrievalAtK& at_k(int64_t k) const;  // throws UsageError for a k not computed
};

// evaluate.py calculate_stage2_metrics: averaged over ALL rows; a row without positives adds 0 to
// recall (and its hits, 0, to precision). Throws UsageError for an empty list or k < 1.
RetrievalMetrics retrieval_metrics(const std::vector<QaResult>& results, const std::vector<int64_t>& ks = {1, 3, 5});

// The trainer's RetrievalMetrics.calculate_recall_and_precision: rows without positives are
// skipped; averaged over the others (`samples` = their number; all zeros when there are none).
RetrievalMetrics trainer_retrieval_metrics(const std::vector<std::vector<int64_t>>& pos_indices,
                                           const std::vector<std::vector<int64_t>>& pred_indices,
                                           const std::vector<int64_t>& ks = {1, 3, 5});

// calculate_stage2_metrics as a whole, with upstream's key names in upstream's order: f1, acc, em,
// avg_output_length, recall@k..., precision@k...
struct Stage2Metrics {
  BasicMetrics basic;
  RetrievalMetrics retrieval;
  std::vector<std::pair<std::string, double>> named() const;
};
Stage2Metrics stage2_metrics(const std::vector<QaResult>& results, const std::vector<int64_t>& ks = {1, 3, 5},
                             GoldPolicy policy = GoldPolicy::kFirst);

// The trainer's names: recall_k..., precision_k...
std::vector<std::pair<std::string, double>> trainer_named(const RetrievalMetrics& metrics);

}  // namespace hrmclara::qa
