// CLaRa's JSONL rows, prompts, Python's random and the collate (see include/hrmclara/clara_data.h).
// No torch here: this file is in the library's torch-free object set.
#include <hrmclara/clara_data.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <set>

namespace hrmclara {
namespace {

using Json = nlohmann::json;

// ---------------------------------------------------------------------------------------------
// Small text helpers

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  size_t pos = 0;
  while ((pos = s.find(from, pos)) != std::string::npos) {
    s.replace(pos, from.size(), to);
    pos += to.size();
  }
  return s;
}

bool is_blank(const std::string& s) {
  // ASCII whitespace only; a document of other Unicode spaces is odd but is still text.
  return std::all_of(s.begin(), s.end(), [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; });
}

// Length of the valid UTF-8 sequence starting at s[i] (RFC 3629: no overlongs, no surrogates,
// nothing above U+10FFFF), or 0 when the byte there does not start one.
size_t utf8_sequence_length(const std::string& s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  if (c < 0x80) return 1;
  size_t len = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (i + len > s.size()) return 0;
  if (b(i + 1) < lo || b(i + 1) > hi) return 0;
  for (size_t k = 2; k < len; ++k)
    if (b(i + k) < 0x80 || b(i + k) > 0xBF) return 0;
  return len;
}

size_t first_invalid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const size_t len = utf8_sequence_length(s, i);
    if (len == 0) return i;
    i += len;
  }
  return std::string::npos;
}

// Byte offsets of the code point starts of valid UTF-8 `s`, plus s.size().
std::vector<size_t> code_point_bounds(const std::string& s) {
  std::vector<size_t> out;
  for (size_t i = 0; i < s.size();) {
    out.push_back(i);
    const size_t len = utf8_sequence_length(s, i);
    i += len == 0 ? 1 : len;
  }
  out.push_back(s.size());
  return out;
}

std::string json_type(const Json& j) {
  if (j.is_array()) return "a list";
  if (j.is_object()) return "an object";
  if (j.is_string()) return "a string";
  if (j.is_boolean()) return "a boolean";
  if (j.is_number_integer()) return "an integer";
  if (j.is_number()) return "a number";
  return std::string(j.type_name());
}

const std::string kMarker = "\xEF\xBF\xBF";  // U+FFFF, stands in for invalid bytes (see invalid_utf8_error)

// The path of the first key or string value of `j` holding kMarker ("docs[1]", "meta.x"), or "".
std::string marker_path(const Json& j, const std::string& path) {
  if (j.is_string()) return j.get_ref<const std::string&>().find(kMarker) != std::string::npos ? path : "";
  if (j.is_array()) {
    for (size_t i = 0; i < j.size(); ++i) {
      std::string p = marker_path(j[i], path + "[" + std::to_string(i) + "]");
      if (!p.empty()) return p;
    }
  } else if (j.is_object()) {
    for (auto it = j.begin(); it != j.end(); ++it) {
      const std::string here = path.empty() ? it.key() : path + "." + it.key();
      if (it.key().find(kMarker) != std::string::npos) return here;
      std::string p = marker_path(it.value(), here);
      if (!p.empty()) return p;
    }
  }
  return "";
}

// `line` with each byte that does not belong to a valid UTF-8 sequence replaced by "\\uffff" (the
// JSON escape of U+FFFF, kMarker once parsed).
std::string repair_utf8(const std::string& line) {
  std::string repaired;
  for (size_t i = 0; i < line.size();) {
    const size_t len = utf8_sequence_length(line, i);
    if (len == 0) {
      repaired += "\\uffff";
      ++i;
    } else {
      repaired.append(line, i, len);
      i += len;
    }
  }
  return repaired;
}

// The message for a line that is not valid UTF-8, naming the field that holds the bad bytes where
// it can: each invalid byte is replaced by the JSON escape of U+FFFF, the line parsed again, and the
// string holding U+FFFF looked up.
std::string invalid_utf8_error(const std::string& line, size_t bad, const std::string& source) {
  char byte[8];
  std::snprintf(byte, sizeof byte, "0x%02X", static_cast<unsigned>(static_cast<unsigned char>(line[bad])));
  const std::string what = "not valid UTF-8 (byte " + std::string(byte) + " at column " + std::to_string(bad + 1) + ")";
  std::string field;
  try {
    field = marker_path(Json::parse(repair_utf8(line)), "");
  } catch (const Json::exception&) {
  }
  return field.empty() ? source + ": " + what : source + ": field '" + field + "': " + what;
}

// ---------------------------------------------------------------------------------------------
// Row parsing

struct RowParser {
  const Json& j;
  ClaraStage stage;
  const std::string& source;

  [[noreturn]] void fail(const std::string& field, const std::string& what) const {
    throw FormatError(source + ": field '" + field + "': " + what);
  }
  // A present, non-null field, or nullptr.
  const Json* get(const char* key) const {
    auto it = j.find(key);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  }
  // Non-empty text without control tokens.
  std::string text(const Json& v, const std::string& field, const char* what_empty) const {
    if (!v.is_string()) fail(field, "expected a string, got " + json_type(v));
    const std::string s = v.get<std::string>();
    if (is_blank(s)) fail(field, what_empty);
    const std::string control = find_clara_control_text(s);
    if (!control.empty())
      fail(field, "contains '" + control +
                      "', a CLaRa control token; the tokenizer would read it as that token and corrupt the "
                      "memory-slot layout (remove or rewrite it in the data)");
    return s;
  }
  std::vector<std::string> text_list(const Json& v, const std::string& field, const char* what_empty) const {
    if (!v.is_array()) fail(field, "expected a list of strings, got " + json_type(v));
    if (v.empty()) fail(field, "empty list");
    std::vector<std::string> out;
    for (size_t i = 0; i < v.size(); ++i) out.push_back(text(v[i], field + "[" + std::to_string(i) + "]", what_empty));
    return out;
  }
};

}  // namespace

std::string clara_stage_name(ClaraStage stage) {
  switch (stage) {
    case ClaraStage::kStage1: return "stage1";
    case ClaraStage::kStage1_2: return "stage1_2";
    case ClaraStage::kStage2: return "stage2";
  }
  return "?";
}

ClaraStage parse_clara_stage(const std::string& name) {
  if (name == "stage1") return ClaraStage::kStage1;
  if (name == "stage1_2") return ClaraStage::kStage1_2;
  if (name == "stage2") return ClaraStage::kStage2;
  throw UsageError("unknown CLaRa stage '" + name + "' (expected stage1, stage1_2 or stage2)");
}

std::string find_clara_control_text(const std::string& text) {
  for (const char* t : {"<SEP>", "<ENC>", "<AE>"})
    if (text.find(t) != std::string::npos) return t;
  for (size_t pos = text.find("<MEM"); pos != std::string::npos; pos = text.find("<MEM", pos + 1)) {
    size_t e = pos + 4;
    while (e < text.size() && text[e] >= '0' && text[e] <= '9') ++e;
    if (e > pos + 4 && e < text.size() && text[e] == '>') return text.substr(pos, e + 1 - pos);
  }
  return "";
}

ClaraRow parse_clara_row(const std::string& json_line, ClaraStage stage, const std::string& source,
                         const ClaraReadOptions& options) {
  const size_t bad = first_invalid_utf8(json_line);
  if (bad != std::string::npos) throw FormatError(invalid_utf8_error(json_line, bad, source));
  Json j;
  try {
    j = Json::parse(json_line);
  } catch (const Json::exception& e) {
    std::string what = e.what();
    const size_t cut = what.find("] ");  // drop nlohmann's "[json.exception.parse_error.101] " prefix
    if (cut != std::string::npos) what = what.substr(cut + 2);
    throw FormatError(source + ": not valid JSON: " + what);
  }
  if (!j.is_object()) throw FormatError(source + ": the row is not a JSON object (got " + json_type(j) + ")");
  RowParser p{j, stage, source};
  ClaraRow row;
  row.source = source;

  // data_type: default "qa"; paraphrase rows are a stage-1 format.
  if (const Json* v = p.get("data_type")) {
    if (!v->is_string()) p.fail("data_type", "expected a string, got " + json_type(*v));
    const std::string t = v->get<std::string>();
    if (t == "qa") {
      row.data_type = ClaraDataType::kQa;
    } else if (t == "paraphrase") {
      row.data_type = ClaraDataType::kParaphrase;
    } else {
      p.fail("data_type", "'" + t + "' is neither 'qa' nor 'paraphrase'");
    }
    if (row.data_type == ClaraDataType::kParaphrase && stage != ClaraStage::kStage1)
      p.fail("data_type", "'paraphrase' rows are the stage1 format; " + clara_stage_name(stage) + " rows are question/answer rows");
  }

  // Documents: docs | context | content, the first present.
  const char* docs_key = nullptr;
  for (const char* key : {"docs", "context", "content"})
    if (p.get(key)) {
      docs_key = key;
      break;
    }
  if (!docs_key) p.fail("docs", "missing (also looked for 'context' and 'content')");
  row.docs = p.text_list(*p.get(docs_key), docs_key, "empty document");
  if (options.num_docs > 0 && static_cast<int>(row.docs.size()) != options.num_docs)
    p.fail(docs_key, std::to_string(row.docs.size()) + " documents, expected " + std::to_string(options.num_docs));

  // Answers: answer (string) | answers (list) | golden_answers (list, first) | gold_answer (string).
  std::string answer_key;
  if (const Json* v = p.get("answer")) {
    answer_key = "answer";
    row.answers = {p.text(*v, answer_key, "empty answer")};
  } else if (const Json* v = p.get("answers")) {
    answer_key = "answers";
    row.answers = p.text_list(*v, answer_key, "empty answer");
  } else if (const Json* v = p.get("golden_answers")) {
    answer_key = "golden_answers";  // only the first is used (and checked)
    if (!v->is_array()) p.fail(answer_key, "expected a list of strings, got " + json_type(*v));
    if (v->empty()) p.fail(answer_key, "empty list");
    row.answers = {p.text(v->front(), "golden_answers[0]", "empty answer")};
  } else if (const Json* v = p.get("gold_answer")) {
    answer_key = "gold_answer";
    row.answers = {p.text(*v, answer_key, "empty answer")};
  } else {
    p.fail("answer", "missing (also looked for 'answers', 'golden_answers' and 'gold_answer')");
  }

  // Questions.
  if (row.data_type == ClaraDataType::kParaphrase) {
    row.answers.resize(1);  // upstream trains on answers[0]; the question is ignored
  } else {
    const Json* q = p.get("question");
    if (!q) p.fail("question", "missing");
    if (stage == ClaraStage::kStage1) {
      row.questions = q->is_array() ? p.text_list(*q, "question", "empty question")
                                    : std::vector<std::string>{p.text(*q, "question", "empty question")};
      if (row.questions.size() != row.answers.size())
        p.fail(answer_key, std::to_string(row.answers.size()) + " answers for " + std::to_string(row.questions.size()) +
                               " questions (a stage1 QA set pairs them one to one)");
    } else {
      if (q->is_array())
        p.fail("question", "expected a string, got a list (lists of questions are the stage1 QA format)");
      row.questions = {p.text(*q, "question", "empty question")};
      if (row.answers.size() != 1)
        p.fail(answer_key, std::to_string(row.answers.size()) + " answers; " + clara_stage_name(stage) +
                               " rows have one answer (use 'answer')");
    }
  }

  // pos_index: default [].
  if (const Json* v = p.get("pos_index")) {
    if (!v->is_array()) p.fail("pos_index", "expected a list of integers, got " + json_type(*v));
    std::set<int64_t> seen;
    for (size_t i = 0; i < v->size(); ++i) {
      const Json& e = (*v)[i];
      const std::string field = "pos_index[" + std::to_string(i) + "]";
      if (!e.is_number_integer()) p.fail(field, "expected an integer, got " + json_type(e));
      const int64_t idx = e.is_number_unsigned() && e.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)
                              ? INT64_MAX
                              : e.get<int64_t>();
      if (idx < 0 || idx >= static_cast<int64_t>(row.docs.size()))
        p.fail(field, std::to_string(idx) + " is out of range for " + std::to_string(row.docs.size()) + " documents");
      if (!seen.insert(idx).second) p.fail(field, std::to_string(idx) + " is listed twice");
      row.pos_index.push_back(static_cast<int>(idx));
    }
  }
  return row;
}

ClaraReadResult read_clara_rows(const std::string& path, ClaraStage stage, const ClaraReadOptions& options) {
  require_regular_file(path);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path + ": cannot open for reading");
  ClaraReadResult result;
  std::string line;
  size_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    ++result.lines;
    const bool has_newline = !in.eof();  // getline stopped at '\n', not at the end of the file
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line_no == 1 && line.compare(0, 3, "\xEF\xBB\xBF") == 0) line.erase(0, 3);  // UTF-8 byte-order mark
    if (is_blank(line)) {
      ++result.blank_lines;
      continue;
    }
    const std::string source = path + ":" + std::to_string(line_no);
    try {
      try {
        result.rows.push_back(parse_clara_row(line, stage, source, options));
      } catch (const FormatError&) {
        // A last line without its newline that is not even JSON (bad bytes aside) was cut short.
        if (has_newline || Json::accept(repair_utf8(line))) throw;
        throw FormatError(source + ": truncated last line (no newline at the end of the file and not valid JSON)");
      }
    } catch (const FormatError& e) {
      if (!options.skip_bad_rows) throw;
      ++result.bad_rows;
      if (result.errors.size() < 100) result.errors.push_back(e.what());
      continue;
    }
    if (options.max_rows > 0 && result.rows.size() >= options.max_rows) break;
  }
  if (in.bad()) throw IoError(path + ": read error after line " + std::to_string(line_no));
  return result;
}

// ---------------------------------------------------------------------------------------------
// Python's random

void PyRandom::seed_int(int64_t seed) {
  // |seed| as 32-bit words, least significant first; 0 -> one zero word (as CPython).
  const uint64_t mag = seed < 0 ? uint64_t(0) - static_cast<uint64_t>(seed) : static_cast<uint64_t>(seed);
  std::vector<uint32_t> words;
  for (uint64_t v = mag; v != 0; v >>= 32) words.push_back(static_cast<uint32_t>(v & 0xFFFFFFFFu));
  if (words.empty()) words.push_back(0);
  seed_words(words);
}

void PyRandom::seed_words(const std::vector<uint32_t>& words) {
  std::vector<uint32_t> key = words;
  while (key.size() > 1 && key.back() == 0) key.pop_back();  // leading zero words do not change the int
  if (key.empty()) key.push_back(0);
  // init_genrand(19650218)
  uint32_t* mt = state_;
  mt[0] = 19650218u;
  for (int i = 1; i < 624; ++i) mt[i] = 1812433253u * (mt[i - 1] ^ (mt[i - 1] >> 30)) + static_cast<uint32_t>(i);
  // init_by_array(key)
  int i = 1;
  size_t j = 0;
  for (size_t k = std::max<size_t>(624, key.size()); k > 0; --k) {
    mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1664525u)) + key[j] + static_cast<uint32_t>(j);
    ++i;
    ++j;
    if (i >= 624) {
      mt[0] = mt[623];
      i = 1;
    }
    if (j >= key.size()) j = 0;
  }
  for (int k = 623; k > 0; --k) {
    mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1566083941u)) - static_cast<uint32_t>(i);
    ++i;
    if (i >= 624) {
      mt[0] = mt[623];
      i = 1;
    }
  }
  mt[0] = 0x80000000u;
  index_ = 624;
}

std::vector<uint32_t> PyRandom::state() const {
  std::vector<uint32_t> out(state_, state_ + 624);
  out.push_back(static_cast<uint32_t>(index_));
  return out;
}

void PyRandom::set_state(const std::vector<uint32_t>& state) {
  if (state.size() != 625 || state[624] > 624) throw UsageError("Python random state: expected 624 words and a position <= 624");
  std::copy(state.begin(), state.begin() + 624, state_);
  index_ = static_cast<int>(state[624]);
}

uint32_t PyRandom::next_uint32() {
  constexpr uint32_t kUpper = 0x80000000u, kLower = 0x7FFFFFFFu, kMatrixA = 0x9908B0DFu;
  if (index_ >= 624) {
    for (int k = 0; k < 624; ++k) {
      const uint32_t y = (state_[k] & kUpper) | (state_[(k + 1) % 624] & kLower);
      state_[k] = state_[(k + 397) % 624] ^ (y >> 1) ^ ((y & 1u) ? kMatrixA : 0u);
    }
    index_ = 0;
  }
  uint32_t y = state_[index_++];
  y ^= y >> 11;
  y ^= (y << 7) & 0x9D2C5680u;
  y ^= (y << 15) & 0xEFC60000u;
  y ^= y >> 18;
  return y;
}

uint64_t PyRandom::getrandbits(int k) {
  if (k < 0 || k > 64) throw UsageError("getrandbits: k = " + std::to_string(k) + " is outside [0, 64]");
  if (k == 0) return 0;
  if (k <= 32) return next_uint32() >> (32 - k);
  // Little-endian 32-bit words; the last one keeps its top bits.
  const uint64_t low = next_uint32();
  const uint64_t high = next_uint32() >> (64 - k);
  return low | (high << 32);
}

double PyRandom::random() {
  const uint32_t a = next_uint32() >> 5, b = next_uint32() >> 6;
  return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0);
}

uint64_t PyRandom::randbelow(uint64_t n) {
  if (n == 0) throw UsageError("randbelow: empty range (random.choice of an empty sequence)");
  int k = 0;
  for (uint64_t v = n; v != 0; v >>= 1) ++k;  // n.bit_length()
  uint64_t r = getrandbits(k);
  while (r >= n) r = getrandbits(k);
  return r;
}

// ---------------------------------------------------------------------------------------------
// Prompts

const char* const kClaraQaSystemPrompt =
    "You are a helpful assistant. Given a document, your task is to generate some single questions to cover all key "
    "information of the document and answer them sequentially.";
const char* const kClaraParaphraseSystemPrompt =
    "You are a helpful assistant. Your task is follow the instructions to paraphrase the background information.";
const char* const kClaraStandardSystemPrompt =
    "You are a helpful assistant. Your task is to extract relevant information from provided documents and to answer "
    "to questions as briefly as possible.";

const std::vector<std::string>& clara_paraphrase_templates() {
  static const std::vector<std::string> templates = {
      "Background: {docs} means the same as",
      "Background: {docs} Can you put the above sentences in your own terms?",
      "Background: {docs} Please provide a reinterpretation of the preceding background text.",
      "These two expressions are equivalent in essence:\n(1) {docs}\n(2)",
      "Background: {docs} is a paraphrase of what?",
      "Background: {docs} Could you give me a different version of the background sentences above?",
      "In other words, background: {docs} is just another way of saying:",
      "You're getting across the same point whether you say background: {docs} or",
      "Background: {docs} After unpacking the ideas in the background information above, we got:",
      "Background: {docs} Please offer a restatement of the background sentences I've just read.",
      "Background: {docs}, which also means:",
      "Strip away the mystery, and you'll find background: {docs} is simply another rendition of:",
      "The essence of background: {docs} is captured again in the following statement:",
  };
  return templates;
}

std::vector<std::string> clara_special_tokens(int num_mem_tokens) {
  if (num_mem_tokens < 1) throw UsageError("CLaRa needs at least one memory token, got " + std::to_string(num_mem_tokens));
  std::vector<std::string> out;
  for (int i = 0; i < num_mem_tokens; ++i) out.push_back("<MEM" + std::to_string(i) + ">");
  out.insert(out.end(), {"<AE>", "<ENC>", "<SEP>"});
  return out;
}

LlmTokenizer load_clara_tokenizer(const std::string& base_dir, int num_mem_tokens) {
  LlmTokenizer tok(base_dir);
  tok.add_special_tokens(clara_special_tokens(num_mem_tokens));
  tok.set_pad_id(tok.bos_id());
  return tok;
}

std::string clara_docs_placeholder(int num_mem_tokens, int k) {
  std::string slot;
  for (int i = 0; i < num_mem_tokens; ++i) slot += "<MEM" + std::to_string(i) + ">";
  slot += "<SEP>";
  std::string out;
  for (int j = 0; j < k; ++j) out += slot;
  return out;
}

namespace {

ClaraPrompt render_prompt(const LlmTokenizer& tok, const char* system, const std::string& user,
                          const std::optional<std::string>& answer) {
  std::vector<ChatMessage> messages = {{"system", system}, {"user", replace_all(user, ":\\ ", ": ")}};
  ClaraPrompt p;
  p.prompt = tok.apply_chat_template(messages, /*add_generation_prompt=*/true);
  p.prompt_len = static_cast<int>(tok.encode(p.prompt, false).size());
  if (answer) {
    messages.push_back({"assistant", *answer});
    p.full_text = tok.apply_chat_template(messages, /*add_generation_prompt=*/false);
  } else {
    p.full_text = p.prompt;
  }
  return p;
}

}  // namespace

ClaraPrompt clara_qa_prompt(const LlmTokenizer& tok, int num_mem_tokens, int k, const std::vector<std::string>& questions,
                            const std::vector<std::string>& answers) {
  if (questions.size() != answers.size())
    throw UsageError("clara_qa_prompt: " + std::to_string(questions.size()) + " questions but " +
                     std::to_string(answers.size()) + " answers");
  std::string target;
  for (size_t i = 0; i < questions.size(); ++i) {
    if (i > 0) target += "\n";
    target += "Question: " + questions[i] + "\nAnswer: " + answers[i];
  }
  return render_prompt(tok, kClaraQaSystemPrompt, "Background:\n" + clara_docs_placeholder(num_mem_tokens, k), target);
}

ClaraPrompt clara_paraphrase_prompt(const LlmTokenizer& tok, int num_mem_tokens, int k, int template_index,
                                    const std::optional<std::string>& answer) {
  const auto& templates = clara_paraphrase_templates();
  if (template_index < 0 || template_index >= static_cast<int>(templates.size()))
    throw UsageError("paraphrase template index " + std::to_string(template_index) + " is outside [0, " +
                     std::to_string(templates.size()) + ")");
  const std::string user = replace_all(templates[template_index], "{docs}", clara_docs_placeholder(num_mem_tokens, k));
  ClaraPrompt p = render_prompt(tok, kClaraParaphraseSystemPrompt, user, answer);
  p.template_index = template_index;
  return p;
}

ClaraPrompt clara_standard_prompt(const LlmTokenizer& tok, int num_mem_tokens, int k, const std::string& question,
                                  const std::optional<std::string>& answer) {
  return render_prompt(tok, kClaraStandardSystemPrompt,
                       "Background:\n" + clara_docs_placeholder(num_mem_tokens, k) + "\n\nQuestion:" + question, answer);
}

ClaraPrompt clara_row_prompt(const LlmTokenizer& tok, const ClaraRow& row, ClaraStage stage, int num_mem_tokens, int k,
                             PyRandom& rng) {
  if (stage == ClaraStage::kStage1) {
    if (row.data_type == ClaraDataType::kParaphrase) {
      if (row.answers.empty()) throw FormatError(row.source + ": field 'answers': a paraphrase row needs its paraphrase");
      const int index = static_cast<int>(rng.choice_index(clara_paraphrase_templates().size()));
      return clara_paraphrase_prompt(tok, num_mem_tokens, k, index, row.answers.front());
    }
    if (row.questions.size() != row.answers.size() || row.questions.empty())
      throw FormatError(row.source + ": field 'answers': " + std::to_string(row.answers.size()) + " answers for " +
                        std::to_string(row.questions.size()) + " questions");
    return clara_qa_prompt(tok, num_mem_tokens, k, row.questions, row.answers);
  }
  if (row.data_type == ClaraDataType::kParaphrase)
    throw FormatError(row.source + ": field 'data_type': 'paraphrase' rows are the stage1 format");
  if (row.questions.size() != 1 || row.answers.size() != 1)
    throw FormatError(row.source + ": field 'question': " + clara_stage_name(stage) +
                      " rows have one question and one answer, got " + std::to_string(row.questions.size()) + " and " +
                      std::to_string(row.answers.size()));
  return clara_standard_prompt(tok, num_mem_tokens, k, row.questions.front(), row.answers.front());
}

// ---------------------------------------------------------------------------------------------
// Collate

void left_pad(const std::vector<std::vector<int>>& seqs, int pad_id, int64_t length, IdMatrix& ids, IdMatrix& mask) {
  int64_t cols = length;
  if (cols < 0) {
    cols = 0;
    for (const auto& s : seqs) cols = std::max<int64_t>(cols, static_cast<int64_t>(s.size()));
  }
  const int64_t rows = static_cast<int64_t>(seqs.size());
  ids = IdMatrix{rows, cols, std::vector<int64_t>(static_cast<size_t>(rows * cols), pad_id)};
  mask = IdMatrix{rows, cols, std::vector<int64_t>(static_cast<size_t>(rows * cols), 0)};
  for (int64_t r = 0; r < rows; ++r) {
    const auto& s = seqs[static_cast<size_t>(r)];
    const int64_t keep = std::min<int64_t>(cols, static_cast<int64_t>(s.size()));  // right truncation
    const int64_t first = cols - keep;
    for (int64_t c = 0; c < keep; ++c) {
      ids.data[static_cast<size_t>(r * cols + first + c)] = s[static_cast<size_t>(c)];
      mask.data[static_cast<size_t>(r * cols + first + c)] = 1;
    }
  }
}

namespace {

// The ids of <MEM0>..<MEM{n-1}>, checking that the tokenizer holds exactly n of them.
std::vector<int> memory_token_ids(const LlmTokenizer& tok, int n) {
  std::vector<int> ids;
  for (int i = 0; i < n; ++i) {
    const int id = tok.token_to_id("<MEM" + std::to_string(i) + ">");
    if (id < 0)
      throw UsageError("the tokenizer has no <MEM" + std::to_string(i) + "> (" + std::to_string(n) +
                       " memory tokens needed); build it with load_clara_tokenizer");
    ids.push_back(id);
  }
  if (tok.token_to_id("<MEM" + std::to_string(n) + ">") >= 0)
    throw UsageError("the tokenizer has more than the " + std::to_string(n) +
                     " memory tokens of doc_max_length / compr_rate; it was built for another compression rate");
  return ids;
}

void append_columns(IdMatrix& m, const std::vector<int64_t>& tail) {
  IdMatrix out{m.rows, m.cols + static_cast<int64_t>(tail.size()), {}};
  out.data.reserve(static_cast<size_t>(out.rows * out.cols));
  for (int64_t r = 0; r < m.rows; ++r) {
    out.data.insert(out.data.end(), m.row(r), m.row(r) + m.cols);
    out.data.insert(out.data.end(), tail.begin(), tail.end());
  }
  m = std::move(out);
}

}  // namespace

ClaraEncoderInputs clara_encoder_inputs(const LlmTokenizer& tok, const std::vector<std::string>& texts, int max_length,
                                        int num_mem_tokens) {
  if (max_length < 1) throw ConfigError("encoder max_length must be positive, got " + std::to_string(max_length));
  const std::vector<int> mem = memory_token_ids(tok, num_mem_tokens);
  if (tok.token_to_id("<ENC>") < 0) throw UsageError("the tokenizer has no <ENC>; build it with load_clara_tokenizer");
  if (tok.pad_id() < 0) throw UsageError("the tokenizer has no pad id (CLaRa pads with bos; see load_clara_tokenizer)");
  const std::string bos = tok.id_to_token(tok.bos_id()), eos = tok.id_to_token(tok.eos_id());
  const int64_t length = max_length + 3;
  ClaraEncoderInputs out;
  std::vector<std::vector<int>> seqs;
  seqs.reserve(texts.size());
  for (const auto& text : texts) {
    seqs.push_back(tok.encode("<ENC>" + bos + text + eos, false));
    if (static_cast<int64_t>(seqs.back().size()) > length) ++out.truncated;
  }
  left_pad(seqs, tok.pad_id(), length, out.input_ids, out.attention_mask);
  append_columns(out.input_ids, std::vector<int64_t>(mem.begin(), mem.end()));
  append_columns(out.attention_mask, std::vector<int64_t>(mem.size(), 1));
  return out;
}

std::string clara_truncation_name(ClaraTruncation t) { return t == ClaraTruncation::kRight ? "right" : "keep_answer"; }

ClaraTruncation parse_clara_truncation(const std::string& name) {
  if (name == "keep_answer") return ClaraTruncation::kKeepAnswer;
  if (name == "right") return ClaraTruncation::kRight;
  throw ConfigError("unknown truncation '" + name + "' (expected keep_answer or right)");
}

ClaraCollateStats& ClaraCollateStats::operator+=(const ClaraCollateStats& o) {
  truncated_docs += o.truncated_docs;
  truncated_queries += o.truncated_queries;
  long_rows += o.long_rows;
  shortened_rows += o.shortened_rows;
  dropped_rows += o.dropped_rows;
  answer_cut_rows += o.answer_cut_rows;
  no_target_rows += o.no_target_rows;
  return *this;
}

namespace {

void check_row(const ClaraRow& row, ClaraStage stage, int k, size_t n_docs_stage2) {
  const auto fail = [&](const std::string& field, const std::string& what) {
    throw FormatError(row.source + ": field '" + field + "': " + what);
  };
  if (stage == ClaraStage::kStage2) {
    if (row.docs.size() != n_docs_stage2)
      fail("docs", std::to_string(row.docs.size()) + " candidates, but the batch's first row has " +
                       std::to_string(n_docs_stage2) + " (every stage2 row of a batch needs the same N)");
    if (static_cast<int>(row.docs.size()) < k)
      fail("docs", std::to_string(row.docs.size()) + " candidates, fewer than generation_top_k = " + std::to_string(k));
  } else if (static_cast<int>(row.docs.size()) != k) {
    fail("docs", std::to_string(row.docs.size()) + " documents; " + clara_stage_name(stage) +
                     " rows need exactly generation_top_k = " + std::to_string(k));
  }
  const auto check_text = [&](const std::string& s, const std::string& field, const char* what_empty) {
    if (is_blank(s)) fail(field, what_empty);
    if (first_invalid_utf8(s) != std::string::npos) fail(field, "not valid UTF-8");
    const std::string control = find_clara_control_text(s);
    if (!control.empty()) fail(field, "contains '" + control + "', a CLaRa control token");
  };
  for (size_t i = 0; i < row.docs.size(); ++i) check_text(row.docs[i], "docs[" + std::to_string(i) + "]", "empty document");
  if (row.data_type == ClaraDataType::kQa)
    for (size_t i = 0; i < row.questions.size(); ++i)
      check_text(row.questions[i], "question[" + std::to_string(i) + "]", "empty question");
  for (size_t i = 0; i < row.answers.size(); ++i)
    check_text(row.answers[i], "answers[" + std::to_string(i) + "]", "empty answer");
  for (int idx : row.pos_index)
    if (idx < 0 || idx >= static_cast<int>(row.docs.size()))
      fail("pos_index", std::to_string(idx) + " is out of range for " + std::to_string(row.docs.size()) + " documents");
}

}  // namespace

ClaraBatch clara_collate(const LlmTokenizer& tok, const std::vector<ClaraRow>& rows, ClaraStage stage,
                         const ClaraCollateOptions& options, PyRandom& rng) {
  if (options.doc_max_length < 1 || options.compr_rate < 1 || options.num_mem_tokens() < 1)
    throw ConfigError("doc_max_length (" + std::to_string(options.doc_max_length) + ") / compr_rate (" +
                      std::to_string(options.compr_rate) + ") must give at least one memory token");
  if (options.generation_top_k < 1)
    throw ConfigError("generation_top_k must be positive, got " + std::to_string(options.generation_top_k));
  if (options.dec_max_len < 1) throw ConfigError("dec_max_len must be positive, got " + std::to_string(options.dec_max_len));
  if (rows.empty()) throw UsageError("clara_collate: no rows");
  const int n = options.num_mem_tokens(), k = options.generation_top_k;
  memory_token_ids(tok, n);  // the tokenizer must match n
  if (tok.token_to_id("<SEP>") < 0) throw UsageError("the tokenizer has no <SEP>; build it with load_clara_tokenizer");
  if (tok.pad_id() < 0) throw UsageError("the tokenizer has no pad id (CLaRa pads with bos; see load_clara_tokenizer)");
  for (const auto& row : rows) check_row(row, stage, k, rows.front().docs.size());

  ClaraBatch batch;
  batch.stage = stage;
  batch.num_mem_tokens = n;
  batch.top_k = k;
  const int64_t limit = options.dec_max_len;
  std::vector<std::vector<int>> dec_ids;
  for (size_t i = 0; i < rows.size(); ++i) {
    const ClaraRow& row = rows[i];
    ClaraPrompt p = clara_row_prompt(tok, row, stage, n, k, rng);
    std::vector<int> ids = tok.encode(p.full_text, false);
    if (static_cast<int64_t>(ids.size()) > limit) {
      ++batch.stats.long_rows;
      if (options.truncation == ClaraTruncation::kRight) {
        // Upstream: keep the first dec_max_len tokens. The last token is always the answer's EOS.
        if (static_cast<int64_t>(ids.size()) > p.prompt_len) ++batch.stats.answer_cut_rows;
        if (p.prompt_len >= limit) ++batch.stats.no_target_rows;
        ids.resize(static_cast<size_t>(limit));
      } else if (stage == ClaraStage::kStage1) {
        // QA and paraphrase prompts hold nothing but template and slots before the answer.
        ++batch.stats.dropped_rows;
        continue;
      } else {
        // Standard prompt: keep the longest prefix (whole code points) of the question that fits.
        const std::string& question = row.questions.front();
        const std::string& answer = row.answers.front();
        const auto attempt = [&](size_t bytes, ClaraPrompt& prompt, std::vector<int>& prompt_ids) {
          prompt = clara_standard_prompt(tok, n, k, question.substr(0, bytes), answer);
          prompt_ids = tok.encode(prompt.full_text, false);
          return static_cast<int64_t>(prompt_ids.size()) <= limit;
        };
        ClaraPrompt best;
        std::vector<int> best_ids;
        if (!attempt(0, best, best_ids)) {
          ++batch.stats.dropped_rows;  // the answer does not fit even without a question
          continue;
        }
        const std::vector<size_t> bounds = code_point_bounds(question);
        size_t lo = 0, hi = bounds.size() - 1;  // bounds[lo] fits, bounds[hi] (the whole question) does not
        while (hi - lo > 1) {
          const size_t mid = lo + (hi - lo) / 2;
          ClaraPrompt candidate;
          std::vector<int> candidate_ids;
          if (attempt(bounds[mid], candidate, candidate_ids)) {
            lo = mid;
            best = std::move(candidate);
            best_ids = std::move(candidate_ids);
          } else {
            hi = mid;
          }
        }
        p = std::move(best);
        ids = std::move(best_ids);
        ++batch.stats.shortened_rows;
      }
    }
    batch.row_index.push_back(i);
    batch.prompt_len.push_back(p.prompt_len);
    batch.num_docs.push_back(static_cast<int>(row.docs.size()));
    batch.template_index.push_back(p.template_index);
    batch.full_text.push_back(std::move(p.full_text));
    batch.pos_index.push_back(row.pos_index);
    dec_ids.push_back(std::move(ids));
  }

  // Encoder inputs of the kept rows' documents (and, for stage2, their questions).
  std::vector<std::string> docs, questions;
  for (size_t i : batch.row_index) {
    docs.insert(docs.end(), rows[i].docs.begin(), rows[i].docs.end());
    if (stage == ClaraStage::kStage2) questions.push_back(rows[i].questions.front());
  }
  ClaraEncoderInputs enc = clara_encoder_inputs(tok, docs, options.doc_max_length, n);
  batch.enc_input_ids = std::move(enc.input_ids);
  batch.enc_attention_mask = std::move(enc.attention_mask);
  batch.stats.truncated_docs = enc.truncated;
  if (stage == ClaraStage::kStage2) {
    ClaraEncoderInputs q = clara_encoder_inputs(tok, questions, options.dec_max_len, n);
    batch.query_input_ids = std::move(q.input_ids);
    batch.query_attention_mask = std::move(q.attention_mask);
    batch.stats.truncated_queries = q.truncated;
  }

  // Decoder ids, mask and labels (-100 on the pads and the first prompt_len real tokens).
  left_pad(dec_ids, tok.pad_id(), -1, batch.dec_input_ids, batch.dec_attention_mask);
  batch.labels = batch.dec_input_ids;
  const int64_t cols = batch.labels.cols;
  for (int64_t r = 0; r < batch.labels.rows; ++r) {
    const int64_t first_valid = cols - static_cast<int64_t>(dec_ids[static_cast<size_t>(r)].size());
    const int64_t end = std::min<int64_t>(first_valid + batch.prompt_len[static_cast<size_t>(r)], cols);
    for (int64_t c = 0; c < end; ++c) batch.labels.data[static_cast<size_t>(r * cols + c)] = -100;
  }
  return batch;
}

// ---- documents files ------------------------------------------------------------------------

std::vector<ClaraDocumentRecord> read_clara_documents(const std::string& path) {
  require_regular_file(path);
  std::ifstream in(path);
  if (!in) throw IoError(path + ": cannot open");
  std::vector<ClaraDocumentRecord> docs;
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(number);
    Json j;
    try {
      j = Json::parse(line);
    } catch (const Json::exception&) {
      throw FormatError(where + ": not a JSON object");
    }
    if (!j.is_object()) throw FormatError(where + ": not a JSON object");
    const std::string source = j.contains("source") && j["source"].is_string() ? j["source"].get<std::string>() : where;
    std::string id;
    if (j.contains("id")) {
      if (j["id"].is_string()) id = j["id"].get<std::string>();
      else if (j["id"].is_number_integer()) id = std::to_string(j["id"].get<int64_t>());
      else throw FormatError(where + ": field 'id' must be a string or an integer");
    }
    bool found = false;
    for (const char* key : {"text", "document"}) {
      if (!j.contains(key)) continue;
      if (!j[key].is_string()) throw FormatError(where + ": field '" + key + "' must be a string");
      docs.push_back({id.empty() ? "L" + std::to_string(number) : id, source, j[key].get<std::string>()});
      found = true;
      break;
    }
    if (!found)
      for (const char* key : {"docs", "context", "content"}) {
        if (!j.contains(key)) continue;
        if (!j[key].is_array()) throw FormatError(where + ": field '" + key + "' must be a list of documents");
        for (size_t i = 0; i < j[key].size(); ++i) {
          if (!j[key][i].is_string()) throw FormatError(where + ": field '" + key + "' holds a non-string document");
          docs.push_back({(id.empty() ? "L" + std::to_string(number) : id) + "-" + std::to_string(i), source,
                          j[key][i].get<std::string>()});
        }
        found = true;
        break;
      }
    if (!found) throw FormatError(where + ": no 'text' (or upstream 'docs' / 'context' / 'content') field");
  }
  if (docs.empty()) throw FormatError(path + ": holds no document");
  for (const auto& d : docs) {
    if (d.text.find_first_not_of(" \t\r\n") == std::string::npos) throw FormatError(d.source + ": document '" + d.id + "' is empty");
    const std::string control = find_clara_control_text(d.text);
    if (!control.empty())
      throw FormatError(d.source + ": document '" + d.id + "' contains the CLaRa control token text '" + control +
                        "', which would shift the memory slots; remove or rewrite it");
  }
  return docs;
}


}  // namespace hrmclara
