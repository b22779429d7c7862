// Prediction files, per-example scores and summaries of clara_eval (see include/hrmclara/clara_eval.h).
// No torch here: this file is in the library's torch-free object set.
#include <hrmclara/clara_eval.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <sstream>

namespace hrmclara::qa {
namespace {

using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;

std::string type_name(const Json& v) {
  if (v.is_string()) return "a string";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number()) return "a number";
  if (v.is_array()) return "a list";
  if (v.is_object()) return "an object";
  return "null";
}

// The field, or nullptr when it is absent or null.
const Json* field(const Json& row, const char* name) {
  const auto it = row.find(name);
  if (it == row.end() || it->is_null()) return nullptr;
  return &*it;
}

[[noreturn]] void fail(const std::string& where, const std::string& name, const std::string& what) {
  throw FormatError(where + ": field '" + name + "': " + what);
}

std::vector<std::string> string_list(const Json& v, const std::string& where, const std::string& name) {
  if (v.is_string()) return {v.get<std::string>()};
  if (!v.is_array()) fail(where, name, "expected a list of strings, got " + type_name(v));
  if (v.empty()) fail(where, name, "empty list (no gold answer)");
  std::vector<std::string> out;
  for (size_t i = 0; i < v.size(); ++i) {
    if (!v[i].is_string()) fail(where, name, "entry " + std::to_string(i) + " is " + type_name(v[i]) + ", not a string");
    out.push_back(v[i].get<std::string>());
  }
  return out;
}

std::vector<int64_t> index_list(const Json& v, const std::string& where, const std::string& name) {
  if (!v.is_array()) fail(where, name, "expected a list of integers, got " + type_name(v));
  std::vector<int64_t> out;
  for (size_t i = 0; i < v.size(); ++i) {
    if (!v[i].is_number_integer() || v[i].get<int64_t>() < 0)
      fail(where, name, "entry " + std::to_string(i) + " is not a non-negative integer");
    out.push_back(v[i].get<int64_t>());
  }
  return out;
}

EvalExample parse_example(const Json& row, const std::string& where) {
  if (!row.is_object()) throw FormatError(where + ": not a JSON object");
  EvalExample ex;
  ex.source = where;
  const Json* prediction = nullptr;
  std::string prediction_name;
  for (const char* name : {"prediction", "CLaRa_normal_output"})
    if ((prediction = field(row, name))) {
      prediction_name = name;
      break;
    }
  if (!prediction) throw FormatError(where + ": no prediction (field 'prediction' or 'CLaRa_normal_output')");
  if (!prediction->is_string()) fail(where, prediction_name, "expected a string, got " + type_name(*prediction));
  ex.result.prediction = prediction->get<std::string>();

  if (const Json* g = field(row, "golden_answers")) {
    ex.result.golds = string_list(*g, where, "golden_answers");
  } else if (const Json* a = field(row, "answer")) {
    if (!a->is_string()) fail(where, "answer", "expected a string, got " + type_name(*a));
    ex.result.golds = {a->get<std::string>()};
  } else if (const Json* as = field(row, "answers")) {
    ex.result.golds = string_list(*as, where, "answers");
  } else if (const Json* gs = field(row, "golds")) {
    ex.result.golds = string_list(*gs, where, "golds");
  } else {
    throw FormatError(where + ": no gold answer (field 'golden_answers', 'answer', 'answers' or 'golds')");
  }

  if (const Json* q = field(row, "question")) {
    if (!q->is_string()) fail(where, "question", "expected a string, got " + type_name(*q));
    ex.question = q->get<std::string>();
    ex.has_question = true;
  }
  const Json* topk = field(row, "topk_idx");
  const Json* pos = field(row, "pos_index");
  if (topk) ex.result.topk_idx = index_list(*topk, where, "topk_idx");
  if (pos) ex.result.pos_index = index_list(*pos, where, "pos_index");
  ex.has_retrieval = topk && pos;
  return ex;
}

std::string fixed(double v, int digits = 4) {
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%.*f", digits, v);
  return buffer;
}

}  // namespace

std::vector<EvalExample> read_eval_predictions(const std::string& path) {
  std::string bytes = read_file(path);
  if (bytes.compare(0, 3, "\xEF\xBB\xBF") == 0) bytes.erase(0, 3);
  std::vector<EvalExample> out;
  const size_t first = bytes.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && bytes[first] == '[') {
    // One JSON array (evaluate.py's result files).
    Json all;
    try {
      all = Json::parse(bytes);
    } catch (const Json::exception& e) {
      throw FormatError(path + ": not valid JSON (" + std::string(e.what()) + ")");
    }
    for (size_t i = 0; i < all.size(); ++i) out.push_back(parse_example(all[i], path + ": entry " + std::to_string(i)));
  } else {
    size_t start = 0, line_no = 0;
    while (start < bytes.size()) {
      size_t end = bytes.find('\n', start);
      const bool has_newline = end != std::string::npos;
      if (!has_newline) end = bytes.size();
      std::string line = bytes.substr(start, end - start);
      start = end + 1;
      ++line_no;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.find_first_not_of(" \t") == std::string::npos) continue;
      const std::string where = path + ":" + std::to_string(line_no);
      Json row;
      try {
        row = Json::parse(line);
      } catch (const Json::exception&) {
        throw FormatError(where + (has_newline ? ": not valid JSON" : ": not valid JSON (a truncated last line?)"));
      }
      out.push_back(parse_example(row, where));
    }
  }
  if (out.empty()) throw FormatError(path + ": holds no predictions");
  return out;
}

GoldPolicy parse_gold_policy(const std::string& name) {
  if (name == "first") return GoldPolicy::kFirst;
  if (name == "best") return GoldPolicy::kBest;
  throw UsageError("--gold: '" + name + "' is neither 'first' (evaluate.py) nor 'best'");
}

std::string gold_policy_name(GoldPolicy policy) { return policy == GoldPolicy::kFirst ? "first" : "best"; }

ExampleScores score_example(const QaResult& result, GoldPolicy policy) {
  if (result.golds.empty()) throw UsageError("an example has no gold answer");
  ExampleScores s;
  if (policy == GoldPolicy::kFirst) {
    const auto a = score_answer(result.prediction, result.golds.front());
    s.em = a.em;
    s.cover_em = a.cover_em;
    s.f1 = a.f1;
    return s;
  }
  for (const auto& gold : result.golds) {
    const auto a = score_answer(result.prediction, gold);
    s.em = s.em || a.em;
    s.cover_em = s.cover_em || a.cover_em;
    s.f1 = std::max(s.f1, a.f1);
  }
  return s;
}

EvalReport evaluate_examples(const std::vector<EvalExample>& examples, GoldPolicy policy, const std::vector<int64_t>& ks) {
  if (examples.empty()) throw UsageError("no examples to evaluate");
  EvalReport report;
  report.policy = policy;
  std::vector<QaResult> all, with_retrieval;
  for (const auto& e : examples) {
    all.push_back(e.result);
    if (e.has_retrieval) with_retrieval.push_back(e.result);
  }
  report.basic = basic_metrics(all, policy);
  report.retrieval_rows = static_cast<int64_t>(with_retrieval.size());
  if (!with_retrieval.empty()) {
    size_t retrieved = with_retrieval.front().topk_idx.size();
    for (const auto& r : with_retrieval) retrieved = std::min(retrieved, r.topk_idx.size());
    std::vector<int64_t> usable;
    for (const int64_t k : ks)
      if (k >= 1 && static_cast<size_t>(k) <= retrieved) usable.push_back(k);
    if (!usable.empty()) report.retrieval = retrieval_metrics(with_retrieval, usable);
  }
  return report;
}

std::string eval_example_json(const EvalExample& example, const ExampleScores& scores) {
  OrderedJson j;
  if (example.has_question) j["question"] = example.question;
  j["prediction"] = example.result.prediction;
  j["golds"] = example.result.golds;
  j["em"] = scores.em;
  j["f1"] = scores.f1;
  j["cover_em"] = scores.cover_em;
  if (example.has_retrieval) {
    j["topk_idx"] = example.result.topk_idx;
    j["pos_index"] = example.result.pos_index;
  }
  return j.dump();
}

std::string eval_report_json(const EvalReport& report) {
  OrderedJson j;
  j["f1"] = report.basic.f1;
  j["acc"] = report.basic.acc;
  j["em"] = report.basic.em;
  j["avg_output_length"] = report.basic.avg_output_length;
  for (const auto& a : report.retrieval.at) j["recall@" + std::to_string(a.k)] = a.recall;
  for (const auto& a : report.retrieval.at) j["precision@" + std::to_string(a.k)] = a.precision;
  j["count"] = report.basic.count;
  if (report.retrieval_rows > 0) j["retrieval_count"] = report.retrieval_rows;
  j["gold"] = gold_policy_name(report.policy);
  return j.dump();
}

std::string eval_report_text(const EvalReport& report) {
  std::ostringstream out;
  out << "examples            " << report.basic.count << " (scored against "
      << (report.policy == GoldPolicy::kFirst ? "the first gold answer, as evaluate.py" : "the best of the gold answers")
      << ")\n";
  out << "EM                  " << fixed(report.basic.em) << "\n";
  out << "F1                  " << fixed(report.basic.f1) << "\n";
  out << "cover-EM (acc)      " << fixed(report.basic.acc) << "\n";
  out << "avg output length   " << fixed(report.basic.avg_output_length, 2) << " words\n";
  if (report.retrieval_rows > 0) {
    out << "retrieval           " << report.retrieval_rows << " examples with topk_idx and pos_index\n";
    for (const auto& a : report.retrieval.at)
      out << "  @" << a.k << (a.k < 10 ? " " : "") << "               recall " << fixed(a.recall) << ", precision "
          << fixed(a.precision) << "\n";
    if (report.retrieval.at.empty()) out << "  (an example retrieved no candidate: no recall or precision)\n";
  }
  return out.str();
}

}  // namespace hrmclara::qa
