// Upstream CLaRa's QA and retrieval metrics: every case of tests/fixtures/clara-train/metrics.json
// (computed by the real evaluate.py and sft_trainer.py) reproduced bit for bit, and the edges of the
// normalization (Unicode included) against values Python 3.11 gives.
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/qa_metrics.h>

#include <nlohmann/json.hpp>

#include "test_util.h"

namespace hrmclara {
namespace {

using nlohmann::ordered_json;
using test::error_of;
using test::fixture;

ordered_json metrics_fixture() { return ordered_json::parse(read_file(fixture("clara-train/metrics.json"))); }

std::vector<int64_t> ints(const ordered_json& a) { return a.get<std::vector<int64_t>>(); }

TEST(QaMetrics, FixturePairsMatchEvaluatePy) {
  const auto j = metrics_fixture();
  ASSERT_EQ(j["pairs"].size(), 18u);
  for (const auto& pair : j["pairs"]) {
    const std::string pred = pair["prediction"], gold = pair["gold"], why = pair["why"];
    EXPECT_EQ(qa::normalize_answer(qa::bool_mapping(pred)), pair["normalized_prediction"].get<std::string>()) << why;
    EXPECT_EQ(qa::normalize_answer(qa::bool_mapping(gold)), pair["normalized_gold"].get<std::string>()) << why;
    EXPECT_EQ(qa::exact_match(pred, gold), pair["em"].get<bool>()) << why;
    EXPECT_EQ(qa::cover_exact_match(pred, gold), pair["cover_em"].get<bool>()) << why;
    // Bit-identical doubles (0.6666666666666666 is what Python's (2*p*r)/(p+r) gives).
    EXPECT_EQ(qa::f1_score(pred, gold), pair["f1"].get<double>()) << why;
    const auto all = qa::score_answer(pred, gold);
    EXPECT_EQ(all.em, pair["em"].get<bool>()) << why;
    EXPECT_EQ(all.cover_em, pair["cover_em"].get<bool>()) << why;
    EXPECT_EQ(all.f1, pair["f1"].get<double>()) << why;
  }
}

std::vector<qa::QaResult> fixture_results(const ordered_json& j) {
  std::vector<qa::QaResult> rows;
  for (const auto& r : j["stage2_results"])
    rows.push_back({r["CLaRa_normal_output"], {r["answer"].get<std::string>()}, ints(r["topk_idx"]), ints(r["pos_index"])});
  return rows;
}

TEST(QaMetrics, FixtureStage2MetricsMatchResultCalculator) {
  const auto j = metrics_fixture();
  const auto& want = j["evaluate_py_calculate_stage2_metrics"];
  const auto got = qa::stage2_metrics(fixture_results(j)).named();
  ASSERT_EQ(got.size(), want.size());
  size_t i = 0;
  for (const auto& [key, value] : want.items()) {  // same names, same order, same bits
    EXPECT_EQ(got[i].first, key);
    EXPECT_EQ(got[i].second, value.get<double>()) << key;
    ++i;
  }
  // precision@5 = (0.4 + 0.2 + 0) / 3 rounds to 0.20000000000000004 only when summed in row order.
  EXPECT_NE(qa::retrieval_metrics(fixture_results(j)).at_k(5).precision, 0.2);
}

TEST(QaMetrics, FixtureTrainerRetrievalSkipsRowsWithoutPositives) {
  const auto j = metrics_fixture();
  std::vector<std::vector<int64_t>> pos, pred;
  for (const auto& r : j["stage2_results"]) {
    pos.push_back(ints(r["pos_index"]));
    pred.push_back(ints(r["topk_idx"]));
  }
  const auto m = qa::trainer_retrieval_metrics(pos, pred);
  const auto& want = j["sft_trainer_RetrievalMetrics"];
  EXPECT_EQ(m.samples, want["valid_samples"].get<int64_t>());
  const auto got = qa::trainer_named(m);
  ASSERT_EQ(got.size(), want["metrics"].size());
  for (const auto& [key, value] : got) EXPECT_EQ(value, want["metrics"][key].get<double>()) << key;
  // evaluate.py's version of the same rows averages over all three.
  EXPECT_EQ(qa::retrieval_metrics(fixture_results(j)).samples, 3);
}

TEST(QaMetrics, NormalizationEdges) {
  // Expected values printed by Python 3.11 running upstream's normalize_answer.
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"a an the", ""},
      {"The the-ater", "theater"},  // punctuation goes before the article rule
      {"A's", "as"},
      {"an.", ""},
      {"THE\tEnd\n of\u00a0an\u3000era\x1c!", "end of era"},  // Python's whitespace set
      {"\u201cThe\u201d Elbe", "\u201c \u201d elbe"},           // curly quotes stay, but bound words
      {"the\u0301 end", "\u0301 end"},                          // a combining mark is not \w
      {"th\u00e9 the", "th\u00e9"},
      {"\u00c9ire\u2014the Isle", "\u00e9ire\u2014 isle"},
      {"the_end", "theend"},
      {"A\u200bthe", "\u200b"},
      {"the\u20ac5", "\u20ac5"},
      {"x\u2192the\u2190y", "x\u2192 \u2190y"},
      {"a\u00bd", "a\u00bd"},  // a vulgar fraction is \w (numeric)
      {"\u00c6sir", "\u00e6sir"},
      {"\u03a3\u0391\u03a3 \u039f\u0394\u039f\u03a3.", "\u03c3\u03b1\u03c2 \u03bf\u03b4\u03bf\u03c2"},  // final sigma
      {"\u01c4emal, \u1e9e and \u0130stanbul", "\u01c6emal \u00df and i\u0307stanbul"},
      {"\uff21\uff22\uff23 the \uff12", "\uff41\uff42\uff43 \uff12"},
      // Not UTF-8: bytes pass through and are not word characters (Python's surrogateescape).
      {"a \xff the\xfe", "\xff \xfe"},
  };
  for (const auto& [text, want] : cases) EXPECT_EQ(qa::normalize_answer(text), want) << text;
  // bool_mapping is exact: no case folding, no trimming.
  EXPECT_EQ(qa::bool_mapping("True"), "yes");
  EXPECT_EQ(qa::bool_mapping("False"), "no");
  EXPECT_EQ(qa::bool_mapping("TRUE"), "TRUE");
  EXPECT_EQ(qa::bool_mapping(" True"), " True");
  // normalize_answer alone does not map booleans; the scores do.
  EXPECT_EQ(qa::normalize_answer("True"), "true");
  EXPECT_TRUE(qa::exact_match("True", "yes"));
}

TEST(QaMetrics, PythonLowerAndSplit) {
  EXPECT_EQ(qa::python_lower("\u00c0\u00c9\u00ce\u00d5\u00dc \u00d7"), "\u00e0\u00e9\u00ee\u00f5\u00fc \u00d7");
  EXPECT_EQ(qa::python_lower("\u0416\u0401 \u0531"), "\u0436\u0451 \u0561");          // Cyrillic, Armenian
  EXPECT_EQ(qa::python_lower("\u212a\u2126\u216b"), "k\u03c9\u217b");                   // Kelvin, Ohm, Roman XII
  EXPECT_EQ(qa::python_lower("\u03a3"), "\u03c3");                                       // a lone sigma
  EXPECT_EQ(qa::python_lower("\u0391\u03a3'\u0392"), "\u03b1\u03c3'\u03b2");             // not final: a letter follows
  EXPECT_EQ(qa::python_lower("\u0391\u03a3'"), "\u03b1\u03c2'");                         // final
  EXPECT_EQ(qa::python_lower("\u1f08\u1fbc"), "\u1f00\u1fb3");                           // Greek Extended
  EXPECT_EQ(qa::python_lower("Stra\u00dfe"), "stra\u00dfe");
  EXPECT_EQ(qa::python_split(" a\t\nb\u3000\u2028c\u00a0\u00a0\u200bd "),
            (std::vector<std::string>{"a", "b", "c", "\u200bd"}));  // zero-width space is not whitespace
  EXPECT_TRUE(qa::python_split(" \u0085\u2029 ").empty());
}

TEST(QaMetrics, ScoresOnTheirOwn) {
  EXPECT_EQ(qa::f1_score("New York New York", "New York"), 2.0 * 1.0 * 0.5 / 1.5);
  EXPECT_EQ(qa::f1_score("yes sir", "yes"), 0.0);  // gold yes/no vs anything else: 0, not 2/3
  EXPECT_EQ(qa::f1_score("yes", "yes sir"), 0.0);  // prediction yes/no vs anything else
  EXPECT_EQ(qa::f1_score("sir yes sir", "sir yes"), 0.8);
  EXPECT_EQ(qa::f1_score("noanswer", "noanswer"), 1.0);
  EXPECT_TRUE(qa::cover_exact_match("the river Elbe flows", "Elbe river"));
  EXPECT_FALSE(qa::cover_exact_match("Elbe", "Elbe river"));
  EXPECT_TRUE(qa::exact_match("", "  the  "));  // both normalize to ""
}

TEST(QaMetrics, GoldenAnswersScoreTheFirstLikeUpstream) {
  const std::vector<qa::QaResult> rows = {{"Hamburg", {"Berlin", "Hamburg"}, {}, {}},
                                          {"the Elbe river", {"Elbe", "Elbe river"}, {}, {}}};
  const auto first = qa::basic_metrics(rows);
  EXPECT_EQ(first.em, 0.0);
  EXPECT_EQ(first.acc, 0.5);
  EXPECT_EQ(first.f1, (0.0 + 2.0 * 0.5 * 1.0 / 1.5) / 2);
  EXPECT_EQ(first.avg_output_length, (1 + 3) / 2.0);  // raw words, articles counted
  const auto best = qa::basic_metrics(rows, qa::GoldPolicy::kBest);
  EXPECT_EQ(best.em, 1.0);
  EXPECT_EQ(best.acc, 1.0);
  EXPECT_EQ(best.f1, 1.0);
  EXPECT_EQ(best.count, 2);
}

TEST(QaMetrics, RetrievalEdges) {
  // Repeated candidates count once (Python sets); precision divides by k even when fewer were
  // retrieved.
  const std::vector<qa::QaResult> rows = {{"x", {"x"}, {3, 3, 1}, {3, 3}}};
  const auto m = qa::retrieval_metrics(rows, {1, 2, 10});
  EXPECT_EQ(m.at_k(1).recall, 1.0);
  EXPECT_EQ(m.at_k(2).precision, 0.5);
  EXPECT_EQ(m.at_k(10).precision, 0.1);
  EXPECT_EQ(m.at_k(10).recall, 1.0);
  EXPECT_NE(error_of<UsageError>([&] { (void)m.at_k(5); }).find("k = 5"), std::string::npos);
  EXPECT_THROW(qa::retrieval_metrics(rows, {0}), UsageError);
  EXPECT_THROW(qa::retrieval_metrics({}, {1}), UsageError);
  EXPECT_THROW(qa::basic_metrics({}), UsageError);
  EXPECT_THROW(qa::basic_metrics({{"x", {}, {}, {}}}), UsageError);
  // The trainer: no row with positives -> zeros over 0 samples; zip() stops at the shorter list.
  const auto none = qa::trainer_retrieval_metrics({{}, {}}, {{1}, {2}}, {1});
  EXPECT_EQ(none.samples, 0);
  EXPECT_EQ(none.at_k(1).recall, 0.0);
  const auto zipped = qa::trainer_retrieval_metrics({{1}, {2}}, {{1}}, {1});
  EXPECT_EQ(zipped.samples, 1);
  EXPECT_EQ(zipped.at_k(1).precision, 1.0);
}

}  // namespace
}  // namespace hrmclara
