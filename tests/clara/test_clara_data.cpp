// CLaRa's data side against tests/fixtures/clara-train (made by running upstream apple/ml-clara):
// the JSONL rows of the three stages, the rendered prompts and prompt lengths (prompts.json), the
// collate's encoder / query / decoder matrices and labels (expected.safetensors, stage1.*,
// stage1_2.*, stage2.*), the paraphrase template choice of Python's random; then every kind of bad
// row, and both decoder truncation modes on rows longer than dec_max_len (the `right` numbers come
// from upstream's tokenizer call, run with transformers 4.56.2 on the fixture tokenizer).
#include <hrmclara/clara_data.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/llm_tokenizer.h>
#include <hrmclara/tensor_io.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <map>

#include "test_util.h"

namespace hrmclara {
namespace {

using test::error_of;
using test::fixture;
using test::same_tensor;
using test::ScratchDir;
using test::write_bytes;
using Json = nlohmann::json;

const std::string kTrain = fixture("clara-train");
const std::string kBase = fixture("clara-reference");
constexpr int kMem = 4;  // doc_max_length 32 / compr_rate 8

const LlmTokenizer& tokenizer() {
  static const LlmTokenizer t = load_clara_tokenizer(kBase, kMem);
  return t;
}

const Json& prompts_json() {
  static const Json j = Json::parse(read_file(kTrain + "/prompts.json"));
  return j;
}

const std::map<std::string, at::Tensor>& expected() {
  static const std::map<std::string, at::Tensor> m = [] {
    std::map<std::string, at::Tensor> out;
    for (auto& [name, t] : read_safetensors(kTrain + "/expected.safetensors")) out[name] = t.clone();
    return out;
  }();
  return m;
}

at::Tensor as_tensor(const IdMatrix& m) {
  return at::from_blob(const_cast<int64_t*>(m.data.data()), {m.rows, m.cols}, at::kLong).clone();
}

std::vector<int64_t> row_of(const IdMatrix& m, int64_t r) { return {m.row(r), m.row(r) + m.cols}; }

struct StageCase {
  const char* name;
  ClaraStage stage;
  int k, num_docs, dec_max_len;
};
const StageCase kStages[] = {
    {"stage1", ClaraStage::kStage1, 1, 1, 2048},
    {"stage1_2", ClaraStage::kStage1_2, 2, 2, 2048},
    {"stage2", ClaraStage::kStage2, 2, 4, 256},
};

ClaraCollateOptions options_for(const StageCase& s, ClaraTruncation truncation = ClaraTruncation::kKeepAnswer) {
  ClaraCollateOptions o;
  o.doc_max_length = 32;
  o.compr_rate = 8;
  o.generation_top_k = s.k;
  o.dec_max_len = s.dec_max_len;
  o.truncation = truncation;
  return o;
}

std::vector<ClaraRow> fixture_rows(const StageCase& s) {
  ClaraReadOptions ro;
  ro.num_docs = s.num_docs;
  return read_clara_rows(kTrain + "/" + s.name + ".jsonl", s.stage, ro).rows;
}

// ---------------------------------------------------------------------------------------------
// Python's random

TEST(ClaraData, PyRandomMatchesPython) {
  // Python 3.11: r = random.Random(seed); [r.getrandbits(32) for _ in range(3)], r.getrandbits(64),
  // r.getrandbits(5), r.getrandbits(33), r.random(), [r.choice(range(13)) for _ in range(8)].
  struct Case {
    std::vector<uint32_t> words;  // the seed as 32-bit words, low first
    int64_t seed;                 // or as an int64 (when it fits)
    bool int_seed;
    std::vector<uint32_t> u32;
    uint64_t u64, b5, b33;
    double rnd;
    std::vector<size_t> choices;
  };
  const Case cases[] = {
      {{}, 0, true, {3626764237u, 1654615998u, 3255389356u}, 7758176404715800194ull, 1, 5407006266ull, 0.5112747213686085,
       {6, 12, 4, 7, 5, 9, 3, 8}},
      {{}, 1, true, {577090037u, 2444712010u, 3639700191u}, 14089154938208861744ull, 2, 1095513148ull, 0.49543508709194095,
       {7, 7, 10, 6, 12, 3, 1, 7}},
      {{}, 20240611, true, {2610631461u, 3517375838u, 3311027704u}, 4774920967835875799ull, 25, 643558825ull,
       0.7182433661609465, {5, 5, 0, 3, 11, 10, 4, 9}},
      {{}, (int64_t(1) << 40) + 5, true, {2166296868u, 2220160828u, 1153647273u}, 17077747508935831298ull, 0,
       6575419849ull, 0.8179643216302002, {12, 12, 0, 2, 1, 12, 2, 3}},
      {{}, -7, true, {1390851128u, 4071050724u, 647892279u}, 12007621696699967246ull, 1, 4606078771ull,
       0.5358820043066892, {5, 9, 0, 8, 3, 0, 1, 6}},
      // 2**70 + 3: three words
      {{3u, 0u, 64u}, 0, false, {701776502u, 1422058157u, 4284124921u}, 4520051459833054743ull, 20, 1209442044ull,
       0.03324660183942185, {0, 5, 8, 3, 5, 2, 6, 7}},
  };
  for (const auto& c : cases) {
    PyRandom r;
    if (c.int_seed) {
      r.seed_int(c.seed);
    } else {
      r.seed_words(c.words);
    }
    SCOPED_TRACE(c.int_seed ? std::to_string(c.seed) : "2**70+3");
    for (uint32_t want : c.u32) EXPECT_EQ(r.getrandbits(32), want);
    EXPECT_EQ(r.getrandbits(64), c.u64);
    EXPECT_EQ(r.getrandbits(5), c.b5);
    EXPECT_EQ(r.getrandbits(33), c.b33);
    EXPECT_EQ(r.random(), c.rnd);
    for (size_t want : c.choices) EXPECT_EQ(r.choice_index(13), want);
  }
  // r = random.Random(123); [r._randbelow(1000000007) for _ in range(4)]
  PyRandom r(123);
  for (uint64_t want : {56224985ull, 287416172ull, 93615979ull, 825660639ull}) EXPECT_EQ(r.randbelow(1000000007), want);
  EXPECT_EQ(r.getrandbits(0), 0u);
  // r = random.Random(5); [r._randbelow(16) for _ in range(6)], [r._randbelow(1) for _ in range(3)],
  // [r._randbelow(2**40 + 1) for _ in range(2)], r.getrandbits(32): powers of two, n = 1 (one bit
  // drawn and discarded each time), rejection above 32 bits.
  PyRandom r5(5);
  for (uint64_t want : {8u, 11u, 0u, 14u, 7u, 1u}) EXPECT_EQ(r5.randbelow(16), want);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(r5.randbelow(1), 0u);
  for (uint64_t want : {834282677672ull, 225673734504ull}) EXPECT_EQ(r5.randbelow((1ull << 40) + 1), want);
  EXPECT_EQ(r5.getrandbits(32), 2465058629u);
  EXPECT_NE(error_of<UsageError>([&] { r.randbelow(0); }).find("empty"), std::string::npos);
  EXPECT_NE(error_of<UsageError>([&] { r.getrandbits(65); }).find("65"), std::string::npos);
}

TEST(ClaraData, ParaphraseTemplateChoiceMatchesFixture) {
  const Json& t = prompts_json()["paraphrase_template"];
  PyRandom rng(20240611);
  const size_t index = rng.choice_index(clara_paraphrase_templates().size());
  EXPECT_EQ(index, t["index"].get<size_t>());
  EXPECT_EQ(clara_paraphrase_templates().at(index), t["template"].get<std::string>());
  ASSERT_EQ(clara_paraphrase_templates().size(), 13u);
  for (const auto& s : clara_paraphrase_templates()) EXPECT_NE(s.find("{docs}"), std::string::npos) << s;
}

// ---------------------------------------------------------------------------------------------
// Rows

TEST(ClaraData, ReadsFixtureRows) {
  const auto s1 = read_clara_rows(kTrain + "/stage1.jsonl", ClaraStage::kStage1, {});
  ASSERT_EQ(s1.rows.size(), 2u);
  EXPECT_EQ(s1.lines, 2u);
  EXPECT_EQ(s1.bad_rows, 0u);
  EXPECT_EQ(s1.rows[0].data_type, ClaraDataType::kQa);
  EXPECT_EQ(s1.rows[0].questions,
            (std::vector<std::string>{"Where does the Rhine rise?", "Which way does the Rhine flow?"}));
  EXPECT_EQ(s1.rows[0].answers, (std::vector<std::string>{"In the Swiss Alps.", "North."}));
  EXPECT_EQ(s1.rows[0].docs.size(), 1u);
  EXPECT_EQ(s1.rows[0].source, kTrain + "/stage1.jsonl:1");
  EXPECT_EQ(s1.rows[1].data_type, ClaraDataType::kParaphrase);
  EXPECT_TRUE(s1.rows[1].questions.empty());
  EXPECT_EQ(s1.rows[1].answers, (std::vector<std::string>{"Under copyleft, changed copies must keep the same license."}));

  const auto s12 = read_clara_rows(kTrain + "/stage1_2.jsonl", ClaraStage::kStage1_2, {});
  ASSERT_EQ(s12.rows.size(), 2u);
  EXPECT_EQ(s12.rows[1].questions, (std::vector<std::string>{"What must a changed copy keep?"}));
  EXPECT_EQ(s12.rows[1].answers, (std::vector<std::string>{"The same license."}));
  EXPECT_EQ(s12.rows[0].docs.size(), 2u);
  EXPECT_TRUE(s12.rows[0].pos_index.empty());

  const auto s2 = read_clara_rows(kTrain + "/stage2.jsonl", ClaraStage::kStage2, {});
  ASSERT_EQ(s2.rows.size(), 2u);
  EXPECT_EQ(s2.rows[0].docs.size(), 4u);
  EXPECT_EQ(s2.rows[0].pos_index, (std::vector<int>{0, 2}));
  EXPECT_EQ(s2.rows[1].pos_index, (std::vector<int>{1}));
  EXPECT_EQ(s2.rows[1].answers, (std::vector<std::string>{"The freedom of the software."}));

  ClaraReadOptions limited;
  limited.max_rows = 1;
  EXPECT_EQ(read_clara_rows(kTrain + "/stage2.jsonl", ClaraStage::kStage2, limited).rows.size(), 1u);
  EXPECT_NE(error_of<IoError>([] { read_clara_rows(kTrain + "/missing.jsonl", ClaraStage::kStage2, {}); }).find("missing.jsonl"),
            std::string::npos);
  EXPECT_EQ(parse_clara_stage("stage1_2"), ClaraStage::kStage1_2);
  EXPECT_EQ(clara_stage_name(ClaraStage::kStage2), "stage2");
  EXPECT_NE(error_of<UsageError>([] { parse_clara_stage("stage3"); }).find("stage3"), std::string::npos);
}

TEST(ClaraData, AliasesNullsAndLineEndings) {
  ScratchDir dir;
  const std::string path = dir / "rows.jsonl";
  // BOM, CRLF, aliases, nulls (HF datasets' filler for missing columns), a valid last line without newline.
  write_bytes(path,
              "\xEF\xBB\xBF{\"question\": \"Q1?\", \"context\": [\"C1.\", \"C2.\"], \"golden_answers\": [\"G1\", \"\", 3]}\r\n"
              "{\"question\": \"Q2?\", \"docs\": null, \"content\": [\"D1.\", \"D2.\"], \"answer\": null, \"answers\": [\"A2\"]}\n"
              "   \t\n"
              "{\"question\": \"Q3?\", \"docs\": [\"E1.\", \"E2.\"], \"gold_answer\": \"Gold\", \"pos_index\": null, \"data_type\": null}\n"
              "{\"question\": \"Q4?\", \"docs\": [\"F1.\", \"F2.\"], \"answer\": \"Teacher\", \"gold_answer\": \"Gold\", \"extra\": 7}");
  const auto r = read_clara_rows(path, ClaraStage::kStage1_2, {});
  ASSERT_EQ(r.rows.size(), 4u);
  EXPECT_EQ(r.lines, 5u);
  EXPECT_EQ(r.blank_lines, 1u);
  EXPECT_EQ(r.rows[0].docs, (std::vector<std::string>{"C1.", "C2."}));
  EXPECT_EQ(r.rows[0].answers, (std::vector<std::string>{"G1"}));  // golden_answers -> first
  EXPECT_EQ(r.rows[0].questions, (std::vector<std::string>{"Q1?"}));
  EXPECT_EQ(r.rows[1].docs, (std::vector<std::string>{"D1.", "D2."}));
  EXPECT_EQ(r.rows[1].answers, (std::vector<std::string>{"A2"}));
  EXPECT_EQ(r.rows[2].answers, (std::vector<std::string>{"Gold"}));  // gold_answer when nothing else
  EXPECT_EQ(r.rows[2].data_type, ClaraDataType::kQa);
  EXPECT_EQ(r.rows[3].answers, (std::vector<std::string>{"Teacher"}));  // answer wins over gold_answer
  EXPECT_EQ(r.rows[3].source, path + ":5");

  // Stage 1: a string question is one question; a paraphrase row ignores its question and keeps answers[0].
  write_bytes(dir / "s1.jsonl",
              "{\"question\": \"Q?\", \"answer\": \"A.\", \"docs\": [\"D.\"]}\n"
              "{\"data_type\": \"paraphrase\", \"question\": 5, \"answers\": [\"P1\", \"P2\"], \"docs\": [\"D.\"]}\n");
  const auto s1 = read_clara_rows(dir / "s1.jsonl", ClaraStage::kStage1, {});
  ASSERT_EQ(s1.rows.size(), 2u);
  EXPECT_EQ(s1.rows[0].questions, (std::vector<std::string>{"Q?"}));
  EXPECT_EQ(s1.rows[0].answers, (std::vector<std::string>{"A."}));
  EXPECT_TRUE(s1.rows[1].questions.empty());
  EXPECT_EQ(s1.rows[1].answers, (std::vector<std::string>{"P1"}));
}

struct BadRow {
  ClaraStage stage;
  std::string line;
  std::string want;  // the message after "FILE:3: "
};

TEST(ClaraData, BadRowsNameFileLineAndField) {
  const std::map<ClaraStage, std::string> good = {
      {ClaraStage::kStage1, R"({"data_type": "qa", "question": ["Q?"], "answers": ["A."], "docs": ["Doc."]})"},
      {ClaraStage::kStage1_2, R"({"question": "Q?", "docs": ["D1.", "D2."], "answer": "A."})"},
      {ClaraStage::kStage2, R"({"question": "Q?", "docs": ["D1.", "D2.", "D3."], "answer": "A.", "pos_index": [0]})"},
  };
  const auto S1 = ClaraStage::kStage1, S12 = ClaraStage::kStage1_2, S2 = ClaraStage::kStage2;
  const std::vector<BadRow> cases = {
      {S12, R"({"question": "Q?", "answer": "A."})", "field 'docs': missing"},
      {S12, R"({"question": "Q?", "docs": "D1.", "answer": "A."})", "field 'docs': expected a list of strings, got a string"},
      {S12, R"({"question": "Q?", "content": {"a": 1}, "answer": "A."})", "field 'content': expected a list of strings, got an object"},
      {S12, R"({"question": "Q?", "docs": [], "answer": "A."})", "field 'docs': empty list"},
      {S12, R"({"question": "Q?", "docs": ["D1.", 5], "answer": "A."})", "field 'docs[1]': expected a string, got an integer"},
      {S12, R"({"question": "Q?", "docs": ["D1.", ""], "answer": "A."})", "field 'docs[1]': empty document"},
      {S12, R"({"question": "Q?", "docs": [" \n\t ", "D2."], "answer": "A."})", "field 'docs[0]': empty document"},
      {S12, R"({"question": "Q?", "docs": ["D1.", "D2."], "answer": 5})", "field 'answer': expected a string, got an integer"},
      {S12, R"({"question": "Q?", "docs": ["D1.", "D2."]})", "field 'answer': missing"},
      {S12, R"({"question": "Q?", "docs": ["D1.", "D2."], "answers": []})", "field 'answers': empty list"},
      {S12, R"({"question": "Q?", "docs": ["D1.", "D2."], "answers": ["a", "b"]})", "field 'answers': 2 answers; stage1_2 rows have one answer"},
      {S12, R"({"question": "Q?", "docs": ["D1.", "D2."], "golden_answers": []})", "field 'golden_answers': empty list"},
      {S12, R"({"question": "Q?", "docs": ["D1.", "D2."], "golden_answers": [7, "b"]})", "field 'golden_answers[0]': expected a string, got an integer"},
      {S12, R"({"question": "Q?", "docs": ["D1.", "D2."], "answer": "  "})", "field 'answer': empty answer"},
      {S12, R"({"docs": ["D1.", "D2."], "answer": "A."})", "field 'question': missing"},
      {S12, R"({"question": "", "docs": ["D1.", "D2."], "answer": "A."})", "field 'question': empty question"},
      {S2, R"({"question": ["Q?"], "docs": ["D1.", "D2."], "answer": "A."})", "field 'question': expected a string, got a list"},
      {S1, R"({"question": ["Q1?", "Q2?"], "answers": ["A."], "docs": ["D."]})", "field 'answers': 1 answers for 2 questions"},
      {S1, R"({"question": ["Q1?", 7], "answers": ["A.", "B."], "docs": ["D."]})", "field 'question[1]': expected a string, got an integer"},
      {S1, R"({"data_type": "summary", "question": ["Q?"], "answers": ["A."], "docs": ["D."]})", "field 'data_type': 'summary' is neither 'qa' nor 'paraphrase'"},
      {S1, R"({"data_type": 3, "question": ["Q?"], "answers": ["A."], "docs": ["D."]})", "field 'data_type': expected a string, got an integer"},
      {S12, R"({"data_type": "paraphrase", "answers": ["P."], "docs": ["D1.", "D2."]})", "field 'data_type': 'paraphrase' rows are the stage1 format"},
      {S2, R"({"question": "Q?", "docs": ["D1.", "D2.", "D3."], "answer": "A.", "pos_index": [3]})", "field 'pos_index[0]': 3 is out of range for 3 documents"},
      {S2, R"({"question": "Q?", "docs": ["D1.", "D2.", "D3."], "answer": "A.", "pos_index": [0, -1]})", "field 'pos_index[1]': -1 is out of range for 3 documents"},
      {S2, R"({"question": "Q?", "docs": ["D1.", "D2.", "D3."], "answer": "A.", "pos_index": [0.5]})", "field 'pos_index[0]': expected an integer, got a number"},
      {S2, R"({"question": "Q?", "docs": ["D1.", "D2.", "D3."], "answer": "A.", "pos_index": ["0"]})", "field 'pos_index[0]': expected an integer, got a string"},
      {S2, R"({"question": "Q?", "docs": ["D1.", "D2.", "D3."], "answer": "A.", "pos_index": [true]})", "field 'pos_index[0]': expected an integer, got a boolean"},
      {S2, R"({"question": "Q?", "docs": ["D1.", "D2.", "D3."], "answer": "A.", "pos_index": [1, 1]})", "field 'pos_index[1]': 1 is listed twice"},
      {S2, R"({"question": "Q?", "docs": ["D1.", "D2.", "D3."], "answer": "A.", "pos_index": 0})", "field 'pos_index': expected a list of integers, got an integer"},
      {S12, R"({"question": "Q?", "docs": ["See <MEM0> here.", "D2."], "answer": "A."})", "field 'docs[0]': contains '<MEM0>', a CLaRa control token"},
      {S12, R"({"question": "Q?", "docs": ["D1.", "x<MEM12>y"], "answer": "A."})", "field 'docs[1]': contains '<MEM12>'"},
      {S2, R"({"question": "Q <SEP>?", "docs": ["D1.", "D2."], "answer": "A."})", "field 'question': contains '<SEP>'"},
      {S1, R"({"question": ["Q?"], "answers": ["<ENC> A."], "docs": ["D."]})", "field 'answers[0]': contains '<ENC>'"},
      {S12, R"({"question": "Q?", "docs": ["D1.", "D2."], "answer": "<AE>"})", "field 'answer': contains '<AE>'"},
      {S12, "{\"question\": \"Q?\", \"docs\": [\"D1.\", \"D\xFF\"], \"answer\": \"A.\"}", "field 'docs[1]': not valid UTF-8 (byte 0xFF at column 38)"},
      {S12, "{\"question\": \"Q\xC3(?\", \"docs\": [\"D1.\", \"D2.\"], \"answer\": \"A.\"}", "field 'question': not valid UTF-8 (byte 0xC3 at column 16)"},
      {S12, "{\"question\": \"Q?\", \"docs\": [\"D1.\", \"D2.\"], \"answer\": \"\xED\xA0\x80\"}", "field 'answer': not valid UTF-8 (byte 0xED"},
      {S12, "{\"question\": \"Q?\"\xFE, \"docs\": [\"D1.\", \"D2.\"], \"answer\": \"A.\"}", "not valid UTF-8 (byte 0xFE at column 18)"},
      {S12, R"({"question": "Q?", "docs": ["D1.", "D2."], "answer": "A.")", "not valid JSON: "},
      {S12, R"([1, 2])", "the row is not a JSON object (got a list)"},
      {S12, R"("text")", "the row is not a JSON object (got a string)"},
  };
  ScratchDir dir;
  int i = 0;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.line);
    const std::string path = dir / ("bad" + std::to_string(i++) + ".jsonl");
    // line 1 good, line 2 blank, line 3 bad, line 4 good
    write_bytes(path, good.at(c.stage) + "\n\n" + c.line + "\n" + good.at(c.stage) + "\n");
    const std::string msg = error_of<FormatError>([&] { read_clara_rows(path, c.stage, {}); });
    EXPECT_EQ(msg.rfind(path + ":3: " + c.want, 0), 0u) << msg;
    ClaraReadOptions skip;
    skip.skip_bad_rows = true;
    const auto r = read_clara_rows(path, c.stage, skip);
    EXPECT_EQ(r.rows.size(), 2u);
    EXPECT_EQ(r.bad_rows, 1u);
    EXPECT_EQ(r.blank_lines, 1u);
    EXPECT_EQ(r.lines, 4u);
    ASSERT_EQ(r.errors.size(), 1u);
    EXPECT_EQ(r.errors[0], msg);
    if (r.rows.size() == 2) {
      EXPECT_EQ(r.rows[0].source, path + ":1");
      EXPECT_EQ(r.rows[1].source, path + ":4");
    }
  }

  // A document count other than the one asked for.
  const std::string path = dir / "count.jsonl";
  write_bytes(path, good.at(S2) + "\n");
  ClaraReadOptions four;
  four.num_docs = 4;
  EXPECT_EQ(error_of<FormatError>([&] { read_clara_rows(path, S2, four); }), path + ":1: field 'docs': 3 documents, expected 4");
}

TEST(ClaraData, TruncatedLastLine) {
  ScratchDir dir;
  const std::string good = R"({"question": "Q?", "docs": ["D1.", "D2."], "answer": "A."})";
  for (const std::string& tail : {std::string(R"({"question": "Q?", "docs": ["D1.", "D)"),
                                  std::string("{\"question\": \"Q?\", \"docs\": [\"D1.\", \"D\xC3")}) {
    const std::string path = dir / "cut.jsonl";
    write_bytes(path, good + "\n\n" + tail);
    EXPECT_EQ(error_of<FormatError>([&] { read_clara_rows(path, ClaraStage::kStage1_2, {}); }),
              path + ":3: truncated last line (no newline at the end of the file and not valid JSON)");
    ClaraReadOptions skip;
    skip.skip_bad_rows = true;
    const auto r = read_clara_rows(path, ClaraStage::kStage1_2, skip);
    EXPECT_EQ(r.rows.size(), 1u);
    EXPECT_EQ(r.bad_rows, 1u);
    // The same text followed by a newline is an ordinary bad row, not a truncated one.
    write_bytes(path, good + "\n\n" + tail + "\n");
    const std::string msg = error_of<FormatError>([&] { read_clara_rows(path, ClaraStage::kStage1_2, {}); });
    EXPECT_EQ(msg.rfind(path + ":3: ", 0), 0u);
    EXPECT_EQ(msg.find("truncated"), std::string::npos) << msg;
  }
  // A complete last row without its newline is a row; a file of blank lines has none.
  const std::string path = dir / "ok.jsonl";
  write_bytes(path, good + "\n" + good);
  EXPECT_EQ(read_clara_rows(path, ClaraStage::kStage1_2, {}).rows.size(), 2u);
  write_bytes(path, "\n \n\r\n");
  const auto r = read_clara_rows(path, ClaraStage::kStage1_2, {});
  EXPECT_EQ(r.rows.size(), 0u);
  EXPECT_EQ(r.blank_lines, 3u);
}

TEST(ClaraData, ControlTokenText) {
  EXPECT_EQ(find_clara_control_text("plain <MEM> <MEM1 <SE P> MEM0"), "");
  EXPECT_EQ(find_clara_control_text("a<MEM>b<MEM7>c"), "<MEM7>");
  EXPECT_EQ(find_clara_control_text("x <SEP>"), "<SEP>");
  EXPECT_EQ(find_clara_control_text("<ENC>"), "<ENC>");
  EXPECT_EQ(find_clara_control_text("<AE>"), "<AE>");
  EXPECT_EQ(find_clara_control_text("<MEM123>"), "<MEM123>");
  EXPECT_EQ(find_clara_control_text("</s> and <s> stay as upstream treats them"), "");
}

// ---------------------------------------------------------------------------------------------
// Prompts

TEST(ClaraData, PromptsMatchFixture) {
  const LlmTokenizer& tok = tokenizer();
  for (const auto& s : kStages) {
    SCOPED_TRACE(s.name);
    const auto rows = fixture_rows(s);
    const Json& want = prompts_json()[s.name];
    ASSERT_EQ(rows.size(), want.size());
    PyRandom rng(20240611);  // seeded right before the collate call, as the fixture's generator did
    for (size_t i = 0; i < rows.size(); ++i) {
      const ClaraPrompt p = clara_row_prompt(tok, rows[i], s.stage, kMem, s.k, rng);
      EXPECT_EQ(p.full_text, want[i]["full_text"].get<std::string>()) << i;
      EXPECT_EQ(p.prompt_len, want[i]["prompt_len"].get<int>()) << i;
      EXPECT_EQ(tok.encode(p.full_text).size(), want[i]["n_tokens"].get<size_t>()) << i;
      EXPECT_EQ(p.full_text.rfind(p.prompt, 0), 0u) << "the prompt is the full text's beginning";
      const bool paraphrase = rows[i].data_type == ClaraDataType::kParaphrase;
      EXPECT_EQ(p.template_index, paraphrase ? prompts_json()["paraphrase_template"]["index"].get<int>() : -1);
    }
    // Only the paraphrase row drew: one choice (one 4-bit draw for 9), then Python's next word.
    if (s.stage == ClaraStage::kStage1) EXPECT_EQ(rng.getrandbits(32), 3517375838u);
    if (s.stage != ClaraStage::kStage1) EXPECT_EQ(rng.getrandbits(32), 2610631461u);
  }
  // The standard prompt at inference (no answer) is the generation prompt.
  const ClaraPrompt inf = clara_standard_prompt(tok, kMem, 2, "Q?", std::nullopt);
  EXPECT_EQ(inf.full_text, inf.prompt);
  EXPECT_EQ(inf.prompt,
            std::string("<s> [INST] ") + kClaraStandardSystemPrompt + "\n\nBackground:\n" + clara_docs_placeholder(kMem, 2) +
                "\n\nQuestion:Q? [/INST]");
  // upstream's .replace(':\ ', ': ') on the user turn
  EXPECT_NE(clara_standard_prompt(tok, kMem, 1, "a:\\ b", std::nullopt).prompt.find("Question:a: b [/INST]"),
            std::string::npos);
  EXPECT_EQ(clara_docs_placeholder(2, 2), "<MEM0><MEM1><SEP><MEM0><MEM1><SEP>");
  EXPECT_EQ(clara_special_tokens(2), (std::vector<std::string>{"<MEM0>", "<MEM1>", "<AE>", "<ENC>", "<SEP>"}));
  // Paraphrase template 3 has newlines around the slots.
  const ClaraPrompt para = clara_paraphrase_prompt(tok, kMem, 1, 3, std::string("P."));
  EXPECT_NE(para.prompt.find("equivalent in essence:\n(1) " + clara_docs_placeholder(kMem, 1) + "\n(2) [/INST]"),
            std::string::npos)
      << para.prompt;
  EXPECT_EQ(para.full_text, para.prompt + " P.</s>");
}

TEST(ClaraData, TokenizerSetUp) {
  const LlmTokenizer& tok = tokenizer();
  EXPECT_EQ(tok.pad_id(), tok.bos_id());
  EXPECT_EQ(tok.pad_id(), 1);
  EXPECT_EQ(tok.token_to_id("<MEM0>"), 640);
  EXPECT_EQ(tok.token_to_id("<MEM3>"), 643);
  EXPECT_EQ(tok.token_to_id("<AE>"), 644);
  EXPECT_EQ(tok.token_to_id("<ENC>"), 645);
  EXPECT_EQ(tok.token_to_id("<SEP>"), 646);
  EXPECT_EQ(tok.vocab_size(), 647);
}

// ---------------------------------------------------------------------------------------------
// Collate against the fixture

void expect_fixture_batch(const StageCase& s, ClaraTruncation truncation) {
  const auto rows = fixture_rows(s);
  PyRandom rng(20240611);
  const ClaraBatch b = clara_collate(tokenizer(), rows, s.stage, options_for(s, truncation), rng);
  const std::string p = std::string(s.name) + ".";
  const auto& e = expected();
  EXPECT_TRUE(same_tensor(as_tensor(b.enc_input_ids), e.at(p + "enc_input_ids"))) << p;
  EXPECT_TRUE(same_tensor(as_tensor(b.enc_attention_mask), e.at(p + "enc_attention_mask"))) << p;
  EXPECT_TRUE(same_tensor(as_tensor(b.dec_input_ids), e.at(p + "dec_input_ids"))) << p;
  EXPECT_TRUE(same_tensor(as_tensor(b.dec_attention_mask), e.at(p + "dec_attention_mask"))) << p;
  EXPECT_TRUE(same_tensor(as_tensor(b.labels), e.at(p + "labels"))) << p;
  if (s.stage == ClaraStage::kStage2) {
    EXPECT_TRUE(same_tensor(as_tensor(b.query_input_ids), e.at(p + "query_input_ids"))) << p;
    EXPECT_TRUE(same_tensor(as_tensor(b.query_attention_mask), e.at(p + "query_attention_mask"))) << p;
  } else {
    EXPECT_EQ(b.query_input_ids.rows, 0);
    EXPECT_EQ(b.query_attention_mask.rows, 0);
  }
  const Json& want = prompts_json()[s.name];
  ASSERT_EQ(b.size(), static_cast<int64_t>(want.size()));
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(b.prompt_len[i], want[i]["prompt_len"].get<int>());
    EXPECT_EQ(b.full_text[i], want[i]["full_text"].get<std::string>());
    EXPECT_EQ(b.row_index[i], i);
    EXPECT_EQ(b.num_docs[i], s.num_docs);
    EXPECT_EQ(b.pos_index[i], rows[i].pos_index);
  }
  EXPECT_EQ(b.top_k, s.k);
  EXPECT_EQ(b.num_mem_tokens, kMem);
  // The fixture README: documents without </s> (right-truncated) -- stage1 [True, False],
  // stage1_2 [True, False, True, True], stage2 all kept.
  EXPECT_EQ(b.stats.truncated_docs, s.stage == ClaraStage::kStage2 ? 0 : 1);
  EXPECT_EQ(b.stats.truncated_queries, 0);
  EXPECT_EQ(b.stats.long_rows, 0);
  EXPECT_EQ(b.stats.dropped_rows + b.stats.shortened_rows + b.stats.answer_cut_rows + b.stats.no_target_rows, 0);
}

TEST(ClaraData, CollateStage1MatchesFixture) {
  expect_fixture_batch(kStages[0], ClaraTruncation::kKeepAnswer);
  expect_fixture_batch(kStages[0], ClaraTruncation::kRight);
  const auto rows = fixture_rows(kStages[0]);
  PyRandom rng(20240611);
  EXPECT_EQ(clara_collate(tokenizer(), rows, ClaraStage::kStage1, options_for(kStages[0]), rng).template_index,
            (std::vector<int>{-1, 9}));
}

TEST(ClaraData, CollateStage1_2MatchesFixture) {
  expect_fixture_batch(kStages[1], ClaraTruncation::kKeepAnswer);
  expect_fixture_batch(kStages[1], ClaraTruncation::kRight);
}

TEST(ClaraData, CollateStage2MatchesFixture) {
  expect_fixture_batch(kStages[2], ClaraTruncation::kKeepAnswer);
  expect_fixture_batch(kStages[2], ClaraTruncation::kRight);
}

// The inference-side inputs built from the same pieces: the standard prompt without an answer,
// left-padded (generate_from_compressed_documents_and_questions), and the query encoder with the
// doc_max_length budget (generate_from_questions).
TEST(ClaraData, InferenceInputsMatchFixture) {
  const Json inf = Json::parse(read_file(kTrain + "/inference.json"));
  const LlmTokenizer& tok = tokenizer();
  std::vector<std::vector<int>> seqs;
  for (size_t i = 0; i < inf["stage1"]["questions"].size(); ++i) {
    const ClaraPrompt p = clara_standard_prompt(tok, kMem, 2, inf["stage1"]["questions"][i].get<std::string>(), std::nullopt);
    EXPECT_EQ(p.prompt, inf["stage1"]["prompts"][i].get<std::string>());
    seqs.push_back(tok.encode(p.prompt));
  }
  IdMatrix ids, mask;
  left_pad(seqs, tok.pad_id(), -1, ids, mask);
  EXPECT_TRUE(same_tensor(as_tensor(ids), expected().at("infer.stage1.dec_input_ids")));
  EXPECT_TRUE(same_tensor(as_tensor(mask), expected().at("infer.stage1.dec_attention_mask")));
  const ClaraEncoderInputs q =
      clara_encoder_inputs(tok, inf["e2e"]["questions"].get<std::vector<std::string>>(), 32, kMem);
  EXPECT_TRUE(same_tensor(as_tensor(q.input_ids), expected().at("infer.e2e.query_input_ids")));
}

TEST(ClaraData, EncoderInputs) {
  const LlmTokenizer& tok = tokenizer();
  const std::string long_doc(400, 'x');
  const ClaraEncoderInputs in = clara_encoder_inputs(tok, {"A short document.", long_doc}, 32, kMem);
  ASSERT_EQ(in.input_ids.rows, 2);
  ASSERT_EQ(in.input_ids.cols, 32 + 3 + kMem);
  EXPECT_EQ(in.truncated, 1);
  const std::vector<int> short_ids = tok.encode("<ENC><s>A short document.</s>");
  const int64_t pads = 35 - static_cast<int64_t>(short_ids.size());
  std::vector<int64_t> want(static_cast<size_t>(pads), 1);
  want.insert(want.end(), short_ids.begin(), short_ids.end());
  for (int64_t m = 640; m < 644; ++m) want.push_back(m);
  EXPECT_EQ(row_of(in.input_ids, 0), want);
  std::vector<int64_t> want_mask(static_cast<size_t>(pads), 0);
  want_mask.resize(35 + kMem, 1);
  EXPECT_EQ(row_of(in.attention_mask, 0), want_mask);
  // The long document: no pads, starts <ENC> <s>, loses its tail and </s>, then the memory tokens.
  const auto long_row = row_of(in.input_ids, 1);
  EXPECT_EQ(long_row[0], 645);
  EXPECT_EQ(long_row[1], 1);
  EXPECT_NE(long_row[34], 2);
  EXPECT_EQ(std::vector<int64_t>(long_row.end() - kMem, long_row.end()), (std::vector<int64_t>{640, 641, 642, 643}));
  EXPECT_EQ(row_of(in.attention_mask, 1), std::vector<int64_t>(35 + kMem, 1));

  IdMatrix ids, mask;
  left_pad({{5, 6, 7}, {8}, {}}, 1, -1, ids, mask);
  EXPECT_EQ(ids.data, (std::vector<int64_t>{5, 6, 7, 1, 1, 8, 1, 1, 1}));
  EXPECT_EQ(mask.data, (std::vector<int64_t>{1, 1, 1, 0, 0, 1, 0, 0, 0}));
  left_pad({{5, 6, 7}}, 0, 2, ids, mask);  // right truncation
  EXPECT_EQ(ids.data, (std::vector<int64_t>{5, 6}));
}

// ---------------------------------------------------------------------------------------------
// Decoder truncation

ClaraRow qa_row(const std::string& source, std::vector<std::string> docs, const std::string& q, const std::string& a) {
  ClaraRow r;
  r.source = source;
  r.docs = std::move(docs);
  r.questions = {q};
  r.answers = {a};
  return r;
}

const std::string kLongAnswer =
    "The Rhine, which rises in the Swiss Alps and flows north through Basel, Strasbourg and Cologne to the North Sea.";
const std::string kLongQuestion =
    "Which river flows through Basel, the Swiss city on the border with France and Germany, and which sea does it "
    "finally reach after passing Strasbourg, Mannheim, Cologne and Duisburg?";

std::vector<ClaraRow> long_rows() {
  return {qa_row("r0", {"D1.", "D2."}, "Which river flows through Basel?", kLongAnswer),
          qa_row("r1", {"E1.", "E2."}, "What must a changed copy keep?", "The same license."),
          qa_row("r2", {"F1.", "F2."}, kLongQuestion, "The Rhine.")};
}

ClaraCollateOptions long_options(ClaraTruncation t, int dec_max_len) {
  StageCase s{"stage1_2", ClaraStage::kStage1_2, 2, 2, dec_max_len};
  return options_for(s, t);
}

TEST(ClaraData, RightTruncationReproducesUpstream) {
  // Upstream's tokenizer(..., padding='longest', truncation=True, max_length=140) and _mask_prompt on
  // these rows (transformers 4.56.2, the fixture tokenizer): shape [3, 140], full lengths
  // [190, 129, 205], prompt_len [125, 122, 197]; per row (pads, supervised labels, last 6 ids, sum of
  // the supervised labels) = (0, 15, [272 292 299 266 349 586], 6711), (11, 7, [280 340 567 375 589 2],
  // 2560), (0, 0, [310 399 348 287 582 587], 0).
  const LlmTokenizer& tok = tokenizer();
  PyRandom rng(0);
  const ClaraBatch b = clara_collate(tok, long_rows(), ClaraStage::kStage1_2, long_options(ClaraTruncation::kRight, 140), rng);
  ASSERT_EQ(b.size(), 3);
  ASSERT_EQ(b.dec_input_ids.cols, 140);
  EXPECT_EQ(b.prompt_len, (std::vector<int>{125, 122, 197}));
  const int64_t pads[] = {0, 11, 0}, targets[] = {15, 7, 0}, sums[] = {6711, 2560, 0};
  const std::vector<int64_t> last[] = {{272, 292, 299, 266, 349, 586}, {280, 340, 567, 375, 589, 2}, {310, 399, 348, 287, 582, 587}};
  for (int64_t r = 0; r < 3; ++r) {
    SCOPED_TRACE(r);
    const auto ids = row_of(b.dec_input_ids, r), mask = row_of(b.dec_attention_mask, r), labels = row_of(b.labels, r);
    EXPECT_EQ(std::count(mask.begin(), mask.end(), 0), pads[r]);
    int64_t n_targets = 0, sum = 0;
    for (int64_t v : labels)
      if (v != -100) ++n_targets, sum += v;
    EXPECT_EQ(n_targets, targets[r]);
    EXPECT_EQ(sum, sums[r]);
    EXPECT_EQ(std::vector<int64_t>(ids.end() - 6, ids.end()), last[r]);
    // The row is the first 140 ids of the full text.
    const std::vector<int> full = tok.encode(b.full_text[static_cast<size_t>(r)]);
    const std::vector<int64_t> head(full.begin(), full.begin() + std::min<size_t>(full.size(), 140));
    EXPECT_EQ(std::vector<int64_t>(ids.begin() + pads[r], ids.end()), head);
  }
  EXPECT_EQ(b.stats.long_rows, 2);
  EXPECT_EQ(b.stats.answer_cut_rows, 2);
  EXPECT_EQ(b.stats.no_target_rows, 1);
  EXPECT_EQ(b.stats.dropped_rows + b.stats.shortened_rows, 0);

  // Stage 2: the query encoder's budget is dec_max_len + 3 (upstream collate); a longer question
  // loses its tail and </s> there, and is counted.
  StageCase s2{"stage2", ClaraStage::kStage2, 2, 2, 40};
  const auto rows = long_rows();
  const ClaraBatch q = clara_collate(tok, {rows[1], rows[2]}, ClaraStage::kStage2, options_for(s2, ClaraTruncation::kRight), rng);
  ASSERT_EQ(q.size(), 2);
  EXPECT_EQ(q.query_input_ids.cols, 40 + 3 + kMem);
  EXPECT_EQ(q.stats.truncated_queries, 1);
  EXPECT_EQ(q.stats.no_target_rows, 2);
  const std::vector<int> full_q = tok.encode("<ENC><s>" + kLongQuestion + "</s>");
  const auto q1 = row_of(q.query_input_ids, 1);
  EXPECT_EQ(std::vector<int64_t>(q1.begin(), q1.begin() + 43), std::vector<int64_t>(full_q.begin(), full_q.begin() + 43));
  const auto m0 = row_of(q.query_attention_mask, 0);
  EXPECT_EQ(std::count(m0.begin(), m0.end(), 0),
            43 - static_cast<int64_t>(tok.encode("<ENC><s>" + rows[1].questions[0] + "</s>").size()));
}

TEST(ClaraData, KeepAnswerTruncationKeepsAnswerAndEos) {
  const LlmTokenizer& tok = tokenizer();
  const int limit = 140;
  PyRandom rng(0);
  const auto rows = long_rows();
  const ClaraBatch b = clara_collate(tok, rows, ClaraStage::kStage1_2, long_options(ClaraTruncation::kKeepAnswer, limit), rng);
  // r0: template + slots + its long answer (65 tokens with EOS) do not fit in 140 -> dropped.
  // r1 fits; r2 keeps its answer and EOS and loses the tail of its question.
  ASSERT_EQ(b.size(), 2);
  EXPECT_EQ(b.row_index, (std::vector<size_t>{1, 2}));
  EXPECT_EQ(b.stats.long_rows, 2);
  EXPECT_EQ(b.stats.dropped_rows, 1);
  EXPECT_EQ(b.stats.shortened_rows, 1);
  EXPECT_EQ(b.stats.answer_cut_rows + b.stats.no_target_rows, 0);
  // Encoder rows: only the kept rows' documents.
  EXPECT_EQ(b.enc_input_ids.rows, 4);
  EXPECT_LE(b.dec_input_ids.cols, limit);

  const ClaraPrompt untouched = clara_standard_prompt(tok, kMem, 2, kLongQuestion, std::string("The Rhine."));
  const std::vector<int> full = tok.encode(untouched.full_text);
  const size_t answer_tokens = full.size() - static_cast<size_t>(untouched.prompt_len);  // " The Rhine.</s>"
  const auto ids = row_of(b.dec_input_ids, 1), labels = row_of(b.labels, 1), mask = row_of(b.dec_attention_mask, 1);
  const int64_t real = std::count(mask.begin(), mask.end(), 1);
  EXPECT_LE(real, limit);
  // Same answer tokens, EOS last, all supervised; nothing else supervised.
  EXPECT_EQ(std::vector<int64_t>(ids.end() - static_cast<int64_t>(answer_tokens), ids.end()),
            std::vector<int64_t>(full.end() - static_cast<int64_t>(answer_tokens), full.end()));
  EXPECT_EQ(ids.back(), tok.eos_id());
  EXPECT_EQ(std::vector<int64_t>(labels.end() - static_cast<int64_t>(answer_tokens), labels.end()),
            std::vector<int64_t>(full.end() - static_cast<int64_t>(answer_tokens), full.end()));
  EXPECT_EQ(std::count_if(labels.begin(), labels.end(), [](int64_t v) { return v != -100; }),
            static_cast<int64_t>(answer_tokens));
  EXPECT_EQ(b.prompt_len[1], real - static_cast<int64_t>(answer_tokens));
  // The memory slots and the template are whole: k x (<MEM0..3><SEP>), then "\n\nQuestion:" + a prefix.
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 640), 2);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 646), 2);
  const std::string& text = b.full_text[1];
  const std::string head = std::string("<s> [INST] ") + kClaraStandardSystemPrompt + "\n\nBackground:\n" +
                           clara_docs_placeholder(kMem, 2) + "\n\nQuestion:";
  ASSERT_EQ(text.rfind(head, 0), 0u) << text;
  const std::string tail = " [/INST] The Rhine.</s>";
  ASSERT_GE(text.size(), head.size() + tail.size());
  EXPECT_EQ(text.substr(text.size() - tail.size()), tail);
  const std::string kept = text.substr(head.size(), text.size() - head.size() - tail.size());
  EXPECT_LT(kept.size(), kLongQuestion.size());
  EXPECT_GT(kept.size(), 10u);
  EXPECT_EQ(kLongQuestion.rfind(kept, 0), 0u) << "the question keeps its beginning";
  // As much as fits: one more character would not.
  const ClaraPrompt more = clara_standard_prompt(tok, kMem, 2, kLongQuestion.substr(0, kept.size() + 1), std::string("The Rhine."));
  EXPECT_GT(tok.encode(more.full_text).size(), static_cast<size_t>(limit));
  // The short row is untouched (left-padded to the batch's longest).
  EXPECT_EQ(b.full_text[0], clara_standard_prompt(tok, kMem, 2, rows[1].questions[0], rows[1].answers[0]).full_text);

  // A stage-1 paraphrase row has no question to shorten: dropped when too long; all dropped -> empty batch.
  ClaraRow para;
  para.source = "p0";
  para.data_type = ClaraDataType::kParaphrase;
  para.docs = {"D."};
  para.answers = {kLongAnswer};
  StageCase s1{"stage1", ClaraStage::kStage1, 1, 1, 100};
  const ClaraBatch pb = clara_collate(tok, {para}, ClaraStage::kStage1, options_for(s1), rng);
  EXPECT_EQ(pb.size(), 0);
  EXPECT_EQ(pb.stats.dropped_rows, 1);
  EXPECT_EQ(pb.dec_input_ids.rows, 0);
  EXPECT_EQ(pb.enc_input_ids.rows, 0);
  // With room it is kept whole, answer and EOS included.
  s1.dec_max_len = 2048;
  const ClaraBatch pk = clara_collate(tok, {para}, ClaraStage::kStage1, options_for(s1), rng);
  ASSERT_EQ(pk.size(), 1);
  EXPECT_EQ(row_of(pk.dec_input_ids, 0).back(), tok.eos_id());

  EXPECT_EQ(parse_clara_truncation("right"), ClaraTruncation::kRight);
  EXPECT_EQ(clara_truncation_name(ClaraTruncation::kKeepAnswer), "keep_answer");
  EXPECT_NE(error_of<ConfigError>([] { parse_clara_truncation("left"); }).find("left"), std::string::npos);
}

TEST(ClaraData, CollateRefusesBadRowsAndOptions) {
  const LlmTokenizer& tok = tokenizer();
  PyRandom rng(0);
  StageCase s12{"stage1_2", ClaraStage::kStage1_2, 2, 2, 256};
  StageCase s2{"stage2", ClaraStage::kStage2, 2, 3, 256};
  const auto ok = qa_row("f.jsonl:1", {"D1.", "D2."}, "Q?", "A.");
  EXPECT_EQ(error_of<FormatError>([&] {
              clara_collate(tok, {ok, qa_row("f.jsonl:2", {"D1.", "D2.", "D3."}, "Q?", "A.")}, ClaraStage::kStage1_2,
                            options_for(s12), rng);
            }),
            "f.jsonl:2: field 'docs': 3 documents; stage1_2 rows need exactly generation_top_k = 2");
  EXPECT_EQ(error_of<FormatError>([&] {
              clara_collate(tok, {qa_row("g:1", {"a", "b", "c"}, "Q?", "A."), qa_row("g:2", {"a", "b"}, "Q?", "A.")},
                            ClaraStage::kStage2, options_for(s2), rng);
            }).rfind("g:2: field 'docs': 2 candidates, but the batch's first row has 3", 0),
            0u);
  EXPECT_NE(error_of<FormatError>([&] {
              clara_collate(tok, {qa_row("h:1", {"a"}, "Q?", "A.")}, ClaraStage::kStage2, options_for(s2), rng);
            }).find("h:1: field 'docs': 1 candidates, fewer than generation_top_k = 2"),
            std::string::npos);
  EXPECT_EQ(error_of<FormatError>([&] {
              clara_collate(tok, {qa_row("m:7", {"D1.", "a <SEP> b"}, "Q?", "A.")}, ClaraStage::kStage1_2, options_for(s12), rng);
            }).rfind("m:7: field 'docs[1]': contains '<SEP>'", 0),
            0u);
  EXPECT_EQ(error_of<FormatError>([&] {
              clara_collate(tok, {qa_row("m:8", {"D1.", "D2."}, "<MEM1>?", "A.")}, ClaraStage::kStage1_2, options_for(s12), rng);
            }).rfind("m:8: field 'question[0]': contains '<MEM1>'", 0),
            0u);
  EXPECT_EQ(error_of<FormatError>([&] {
              clara_collate(tok, {qa_row("m:9", {"D1.", ""}, "Q?", "A.")}, ClaraStage::kStage1_2, options_for(s12), rng);
            }),
            "m:9: field 'docs[1]': empty document");
  EXPECT_NE(error_of<UsageError>([&] { clara_collate(tok, {}, ClaraStage::kStage1_2, options_for(s12), rng); }).find("no rows"),
            std::string::npos);
  ClaraCollateOptions bad = options_for(s12);
  bad.compr_rate = 64;  // 32 / 64 = 0 memory tokens
  EXPECT_NE(error_of<ConfigError>([&] { clara_collate(tok, {ok}, ClaraStage::kStage1_2, bad, rng); }).find("memory token"),
            std::string::npos);
  bad = options_for(s12);
  bad.compr_rate = 4;  // n = 8, but the tokenizer holds 4
  EXPECT_NE(error_of<UsageError>([&] { clara_collate(tok, {ok}, ClaraStage::kStage1_2, bad, rng); }).find("<MEM4>"),
            std::string::npos);
  bad.compr_rate = 16;  // n = 2, the tokenizer holds more
  EXPECT_NE(error_of<UsageError>([&] { clara_collate(tok, {ok}, ClaraStage::kStage1_2, bad, rng); }).find("more than the 2"),
            std::string::npos);
  const LlmTokenizer plain(kBase);
  EXPECT_NE(error_of<UsageError>([&] { clara_collate(plain, {ok}, ClaraStage::kStage1_2, options_for(s12), rng); }).find("<MEM0>"),
            std::string::npos);
}

}  // namespace
}  // namespace hrmclara
