// CLaRa's data side, torch-free: the three JSONL training formats of apple/ml-clara, the prompts
// (exact strings of upstream's modeling_clara.py, rendered through the tokenizer's chat template),
// Python's `random` (so that the paraphrase template choice is reproducible), and the micro-batch
// collate (upstream sft_dataset.make_collate_fn + CLaRa._prepare_encoder_inputs) as plain int64
// matrices that the model code turns into tensors.
//
// Row formats (one JSON object per line; blank lines are skipped):
//   stage1    {"data_type": "qa", "question": [q1..qm] | "q", "answers": [a1..am] | "answer": "a",
//              "docs": [doc]}  or  {"data_type": "paraphrase", "answers": [paraphrase], "docs": [doc]}
//   stage1_2  {"question": "q", "docs": [d1..dk], "answer": "a"}
//   stage2    {"question": "q", "docs": [d1..dN], "answer": "a", "pos_index": [i, ...]}
// Field aliases as upstream's preprocess_data: documents from "docs" | "context" | "content" (the
// first present); the answer from "answer" (string) | "answers" (list) | "golden_answers" (list;
// its first element, the only one read and checked) | "gold_answer" (string; upstream's docs show
// it for stage 2/3 data but its loader rejects it: here it is used only when none of the others is
// present). A JSON null counts as an absent field (HF datasets fills columns missing from a row
// with null). "data_type" defaults to "qa"; the question is ignored for paraphrase rows (whose
// target is answers[0]); "pos_index" defaults to []. Other fields are ignored. A UTF-8 byte-order
// mark on line 1 and CR before LF are dropped.
//
// Where this is stricter than upstream (which would train on garbage or crash later), the row is
// refused with "FILE:LINE: field 'X': what" (FormatError):
//  * a present field of the wrong type (upstream falls through to the next alias);
//  * an empty document list, an empty or whitespace-only document, question or answer;
//  * stage1 qa rows: question and answer counts differ (upstream zips them, and zips a string
//    question character by character; here a string is one question);
//  * stage1_2 / stage2 rows: more than one answer in "answers" (upstream would put the list's repr
//    in the prompt), a non-string question, data_type "paraphrase" (a stage-1 format);
//  * data_type other than "qa" / "paraphrase";
//  * pos_index entries that are not integers, are out of [0, number of docs) or repeat;
//  * a document count other than ClaraReadOptions::num_docs when that is set;
//  * text that is not valid UTF-8 (the field holding it is named), JSON that does not parse, a
//    row that is not an object, and a last line without newline that does not parse ("truncated");
//  * text containing a CLaRa control token -- "<MEM" digits ">", "<SEP>", "<ENC>", "<AE>" -- in a
//    document, question or answer. Upstream tokenizes such text as the token itself, which shifts
//    the memory slots (the decoder splices at the first <MEM0>) and breaks the [docs, n, hidden]
//    reshape of the compressor output. Refused rather than escaped: an escape would change the
//    text the model sees. ("<s>", "</s>", "<unk>" are left as upstream treats them: as BOS/EOS/UNK.)
// With skip_bad_rows such rows are skipped and counted instead.
#pragma once

#include <hrmclara/llm_tokenizer.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace hrmclara {

// --------------------------------------------------------------------------------------------
// Rows

enum class ClaraStage { kStage1, kStage1_2, kStage2 };
// "stage1", "stage1_2", "stage2" (upstream's --stage values); parse throws UsageError otherwise.
std::string clara_stage_name(ClaraStage stage);
ClaraStage parse_clara_stage(const std::string& name);

enum class ClaraDataType { kQa, kParaphrase };

struct ClaraRow {
  std::string source;                  // "FILE:LINE" (or whatever the caller sets), used in errors
  ClaraDataType data_type = ClaraDataType::kQa;
  std::vector<std::string> docs;       // stage1 / stage1_2: the k documents; stage2: the N candidates
  // stage1 qa: the m questions and m answers of the QA set (target = "Question: q\nAnswer: a" lines).
  // stage1 paraphrase: no question, one answer (the paraphrase). stage1_2 / stage2: one of each.
  std::vector<std::string> questions;
  std::vector<std::string> answers;
  std::vector<int> pos_index;          // indices into docs of the positive documents (stage2 metrics)
};

struct ClaraReadOptions {
  int num_docs = 0;           // > 0: every row must have exactly this many documents (stage1 /
                              // stage1_2: generation_top_k; stage2: the candidate count N)
  bool skip_bad_rows = false; // skip and count malformed rows instead of throwing
  size_t max_rows = 0;        // > 0: stop after this many good rows (upstream --max_samples)
};

struct ClaraReadResult {
  std::vector<ClaraRow> rows;
  size_t lines = 0;           // lines read (including blank and bad ones)
  size_t blank_lines = 0;     // whitespace-only lines, always skipped
  size_t bad_rows = 0;        // rows skipped under skip_bad_rows
  std::vector<std::string> errors;  // the messages of the first 100 skipped rows
};

// Reads a JSONL file of `stage`'s format (see above). Throws IoError when the file cannot be read
// and FormatError "FILE:LINE: field 'X': what" for the first bad row unless options.skip_bad_rows
// ("FILE:LINE: what" where no field can be named: not valid JSON, not an object, a truncated last
// line, invalid UTF-8 outside any string).
ClaraReadResult read_clara_rows(const std::string& path, ClaraStage stage, const ClaraReadOptions& options = {});

// Validates one parsed row of `stage` (the JSON text of one line) and returns it; `source` prefixes
// the errors. The reader calls this for every line.
ClaraRow parse_clara_row(const std::string& json_line, ClaraStage stage, const std::string& source,
                         const ClaraReadOptions& options = {});

// The first CLaRa control token ("<MEM" digits ">", "<SEP>", "<ENC>", "<AE>") found in `text`, or
// "" when there is none.
std::string find_clara_control_text(const std::string& text);

// A documents file: one JSON object per line, {"id": ..., "text": ...} ("source" optional; "document"
// for "text"), or upstream's rows ({"docs" | "context" | "content": [...]}: every document of the
// row, ids LINE-J). Missing ids become "L<line>". FormatError naming the file and line for a
// malformed line, an empty document or one holding CLaRa's control-token text.
struct ClaraDocumentRecord {
  std::string id, source, text;
};
std::vector<ClaraDocumentRecord> read_clara_documents(const std::string& path);

// --------------------------------------------------------------------------------------------
// Python's random.Random, for the parts of upstream that draw from it: MT19937 seeded as CPython
// seeds it from an int (init_by_array over the 32-bit words of |seed|, least significant first),
// getrandbits, random() and choice() through _randbelow_with_getrandbits. Same numbers as
// Python 3 for the same seed.
class PyRandom {
 public:
  explicit PyRandom(int64_t seed = 0) { seed_int(seed); }
  void seed_int(int64_t seed);                          // random.seed(seed)
  void seed_words(const std::vector<uint32_t>& words);  // random.seed(n), n given as 32-bit words, low first
  uint32_t next_uint32();                               // genrand_uint32
  uint64_t getrandbits(int k);                          // 0 <= k <= 64
  double random();                                      // [0, 1), 53 bits
  uint64_t randbelow(uint64_t n);                       // [0, n), n > 0, as _randbelow_with_getrandbits
  size_t choice_index(size_t size) { return static_cast<size_t>(randbelow(size)); }  // random.choice
  // The generator's whole state (624 words and the position), to save and restore a run exactly.
  std::vector<uint32_t> state() const;
  void set_state(const std::vector<uint32_t>& state);  // UsageError for a wrong size or position

 private:
  uint32_t state_[624] = {};
  int index_ = 624;
};

// --------------------------------------------------------------------------------------------
// Prompts (upstream modeling_clara.py; spec section 4)

extern const char* const kClaraQaSystemPrompt;
extern const char* const kClaraParaphraseSystemPrompt;
extern const char* const kClaraStandardSystemPrompt;
// The 13 paraphrase instructions, in upstream's order (index = what random.choice picks), each
// with one "{docs}".
const std::vector<std::string>& clara_paraphrase_templates();

// {"<MEM0>", ..., "<MEM{n-1}>", "<AE>", "<ENC>", "<SEP>"}: the tokens CLaRa adds, in its order.
std::vector<std::string> clara_special_tokens(int num_mem_tokens);
// The tokenizer of base_dir with clara_special_tokens(n) added and pad = bos (upstream
// _create_decoder_tokenizer).
LlmTokenizer load_clara_tokenizer(const std::string& base_dir, int num_mem_tokens);

// (<MEM0>...<MEM{n-1}><SEP>) repeated k times: the document slots of every decoder prompt.
std::string clara_docs_placeholder(int num_mem_tokens, int k);

struct ClaraPrompt {
  std::string prompt;      // system + user turn rendered with the chat template (generation prompt)
  std::string full_text;   // with the assistant turn (answer + EOS); == prompt when there is no answer
  int prompt_len = 0;      // token count of `prompt` encoded without special tokens
  int template_index = -1; // paraphrase prompts: which of the 13 templates
};

// User turns are passed through upstream's .replace(':\\ ', ': ') before rendering. `answer`
// absent = an inference prompt.
ClaraPrompt clara_qa_prompt(const LlmTokenizer& tok, int num_mem_tokens, int k, const std::vector<std::string>& questions,
                            const std::vector<std::string>& answers);
ClaraPrompt clara_paraphrase_prompt(const LlmTokenizer& tok, int num_mem_tokens, int k, int template_index,
                                    const std::optional<std::string>& answer);
ClaraPrompt clara_standard_prompt(const LlmTokenizer& tok, int num_mem_tokens, int k, const std::string& question,
                                  const std::optional<std::string>& answer);
// The training prompt of a row as upstream's collate builds it: stage1 qa -> QA prompt, stage1
// paraphrase -> paraphrase prompt (template = rng.choice over the 13, one draw per paraphrase
// row), stage1_2 / stage2 -> standard prompt with k slots.
ClaraPrompt clara_row_prompt(const LlmTokenizer& tok, const ClaraRow& row, ClaraStage stage, int num_mem_tokens, int k,
                             PyRandom& rng);

// --------------------------------------------------------------------------------------------
// Collate

// A row-major int64 matrix.
struct IdMatrix {
  int64_t rows = 0, cols = 0;
  std::vector<int64_t> data;
  int64_t at(int64_t r, int64_t c) const { return data[static_cast<size_t>(r * cols + c)]; }
  const int64_t* row(int64_t r) const { return data.data() + r * cols; }
};

// Left-pads (or right-truncates) each sequence to `length` (-1: the longest) with `pad_id`;
// returns ids and the 0/1 attention mask.
void left_pad(const std::vector<std::vector<int>>& seqs, int pad_id, int64_t length, IdMatrix& ids, IdMatrix& mask);

// Upstream _prepare_encoder_inputs: per text "<ENC><s>{text}</s>" encoded without special tokens,
// right-truncated and left-padded (pad id) to max_length + 3, then <MEM0>..<MEM{n-1}> appended with
// mask 1; shape [texts, max_length + 3 + n]. `truncated` counts texts that lost tokens.
struct ClaraEncoderInputs {
  IdMatrix input_ids, attention_mask;
  int truncated = 0;
};
ClaraEncoderInputs clara_encoder_inputs(const LlmTokenizer& tok, const std::vector<std::string>& texts, int max_length,
                                        int num_mem_tokens);

enum class ClaraTruncation {
  // Never removes answer tokens or the EOS. A decoder row longer than dec_max_len loses the tail of
  // its question (stage1_2 / stage2 standard prompt: whole code points cut from the end of the
  // question text, the prompt re-rendered and re-tokenized, as few as possible, possibly all of
  // it); the system prompt, the template text, the memory slots and the answer are never touched.
  // Stage-1 prompts (QA, paraphrase) have no question to shorten. A row that is still too long is
  // dropped from the batch and counted.
  kKeepAnswer,
  // Upstream: the tokenized full text is cut at dec_max_len on the right, which can cut the answer
  // and its EOS (a row whose prompt fills dec_max_len has no target at all).
  kRight,
};
std::string clara_truncation_name(ClaraTruncation t);      // "keep_answer", "right"
ClaraTruncation parse_clara_truncation(const std::string& name);

struct ClaraCollateOptions {
  int doc_max_length = 256;  // encoder budget per document (upstream --doc_max_length)
  int compr_rate = 32;       // n = doc_max_length / compr_rate memory tokens per document
  int generation_top_k = 5;  // k: documents per row (stage1 / stage1_2) or selected (stage2)
  int dec_max_len = 2048;    // upstream --max_len: decoder length limit, and the stage-2 query budget
  ClaraTruncation truncation = ClaraTruncation::kKeepAnswer;
  int num_mem_tokens() const { return compr_rate > 0 ? doc_max_length / compr_rate : 0; }
};

struct ClaraCollateStats {
  int truncated_docs = 0;     // documents longer than doc_max_length + 3 tokens: tail (and </s>) cut
  int truncated_queries = 0;  // stage2 questions longer than dec_max_len + 3 tokens in the query encoder
  int long_rows = 0;          // decoder rows longer than dec_max_len (before any shortening)
  int shortened_rows = 0;     // kKeepAnswer: rows whose question was shortened to fit
  int dropped_rows = 0;       // kKeepAnswer: rows left out because template + slots + answer do not fit
  int answer_cut_rows = 0;    // kRight: rows that lost answer tokens and/or the EOS
  int no_target_rows = 0;     // kRight: rows whose prompt fills dec_max_len (all labels -100)
  ClaraCollateStats& operator+=(const ClaraCollateStats& o);
};

struct ClaraBatch {
  ClaraStage stage = ClaraStage::kStage1;
  int num_mem_tokens = 0;
  int top_k = 0;                       // documents spliced per decoder row (k)
  // Encoder inputs of every document of the kept rows, row by row: [rows * num_docs, doc_max_length + 3 + n].
  IdMatrix enc_input_ids, enc_attention_mask;
  // stage2: the questions through the same encoder builder with max_length = dec_max_len (as
  // upstream's collate; inference uses doc_max_length): [rows, dec_max_len + 3 + n]. Always the
  // whole question (right-truncated there, as upstream), also where kKeepAnswer shortened it on the
  // decoder side. Empty for other stages.
  IdMatrix query_input_ids, query_attention_mask;
  // Decoder: full texts encoded without special tokens, left-padded (pad id) to the longest kept row.
  IdMatrix dec_input_ids, dec_attention_mask;
  // ids, -100 on the left pads and on the first prompt_len real tokens of each row.
  IdMatrix labels;
  // Per kept row:
  std::vector<size_t> row_index;       // position in the input rows (dropped rows are absent)
  std::vector<int> prompt_len;
  std::vector<int> num_docs;           // k (stage1 / stage1_2) or N (stage2)
  std::vector<int> template_index;     // paraphrase template, -1 for others
  std::vector<std::string> full_text;  // as rendered (after any shortening)
  std::vector<std::vector<int>> pos_index;
  ClaraCollateStats stats;
  int64_t size() const { return static_cast<int64_t>(row_index.size()); }
};

// Upstream's collate for `stage`. Every row must have k documents (stage1 / stage1_2) or the same
// N >= k documents (stage2); rows are re-checked for control-token text. Paraphrase rows draw their
// template from `rng` in row order (upstream: random.choice at collate time). The pad id is the
// tokenizer's (set it to bos, as load_clara_tokenizer does), and the tokenizer must hold exactly n
// memory tokens. When every row is dropped the batch has zero rows. Throws FormatError naming the
// row's source for bad rows, ConfigError for bad options, UsageError for an unsuitable tokenizer.
ClaraBatch clara_collate(const LlmTokenizer& tok, const std::vector<ClaraRow>& rows, ClaraStage stage,
                         const ClaraCollateOptions& options, PyRandom& rng);

}  // namespace hrmclara
