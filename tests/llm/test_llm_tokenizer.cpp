// The LLM tokenizer against the CLaRa reference fixture: tokenizer_expected.json (SentencePiece
// ids, the added-token split, CLaRa ids, decoding with and without special tokens), prompts.json
// (chat template renderings, prompt lengths, generation prompts and generated text) and the ids
// expected.safetensors was computed from; then the config files it reads, the chat template and
// its errors against tokenizer-cases/expected.json (what transformers' AutoTokenizer does with each
// configuration, made by tests/scripts/make_tokenizer_cases.py).
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/llm_tokenizer.h>
#include <hrmclara/tensor_io.h>
#include <hrmclara/tokenizer.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <map>

#include "test_util.h"

namespace hrmclara {
namespace {

using test::error_of;
using test::fixture;
using test::ScratchDir;
using Json = nlohmann::json;

const std::string kDir = fixture("clara-reference");

Json fixture_json(const std::string& name) { return Json::parse(read_file(kDir + "/" + name)); }

const Json& expected() {
  static const Json j = fixture_json("tokenizer_expected.json");
  return j;
}

const Json& prompts() {
  static const Json j = fixture_json("prompts.json");
  return j;
}

const std::map<std::string, at::Tensor>& reference_tensors() {
  static const std::map<std::string, at::Tensor> m = [] {
    std::map<std::string, at::Tensor> out;
    for (auto& [name, t] : read_safetensors(kDir + "/expected.safetensors")) out[name] = t.clone();
    return out;
  }();
  return m;
}

// CLaRa's added tokens, in the order the fixture lists (and CLaRa adds) them.
std::vector<std::string> clara_token_names() {
  std::vector<std::string> names;
  for (const auto& t : expected()["added_tokens"]) names.push_back(t["content"]);
  return names;
}

LlmTokenizer clara_tokenizer() {
  LlmTokenizer t(kDir);
  t.add_special_tokens(clara_token_names());
  return t;
}

std::vector<int> ints(const Json& j) { return j.get<std::vector<int>>(); }

std::vector<int> concat(std::vector<int> a, const std::vector<int>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// The ids of row `row` where `mask` is 1 (the padding removed).
std::vector<int> unpadded_row(const std::string& ids_name, const std::string& mask_name, int64_t row) {
  const at::Tensor ids = reference_tensors().at(ids_name)[row];
  const at::Tensor mask = reference_tensors().at(mask_name)[row];
  std::vector<int> out;
  for (int64_t j = 0; j < ids.size(0); ++j)
    if (mask[j].item<int64_t>() != 0) out.push_back(static_cast<int>(ids[j].item<int64_t>()));
  return out;
}

std::vector<int> tensor_row(const std::string& name, int64_t row) {
  const at::Tensor t = reference_tensors().at(name)[row];
  std::vector<int> out;
  for (int64_t j = 0; j < t.size(0); ++j) out.push_back(static_cast<int>(t[j].item<int64_t>()));
  return out;
}

std::vector<ChatMessage> chat_messages(const Json& messages) {
  std::vector<ChatMessage> out;
  for (const auto& m : messages) out.push_back({m["role"], m["content"]});
  return out;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// A model folder holding the fixture's tokenizer.model and the given files.
std::string model_dir(const ScratchDir& scratch, const std::string& name,
                      const std::vector<std::pair<std::string, std::string>>& files) {
  const std::string dir = scratch / name;
  make_directories(dir);
  copy_file(kDir + "/tokenizer.model", dir + "/tokenizer.model");
  for (const auto& [file, text] : files) write_file_atomically(dir + "/" + file, text);
  return dir;
}

// ---- tokenizer-cases/expected.json ------------------------------------------------------------

const Json& transformers_cases() {
  static const Json j = Json::parse(read_file(fixture("tokenizer-cases/expected.json")));
  return j;
}

const Json& case_config(const std::string& name) { return transformers_cases()["configs"].at(name); }

// The model folder of a configuration: the fixture folder it names, or one holding the fixture's
// tokenizer.model and the files it lists (the very text transformers loaded).
std::string case_dir(const ScratchDir& scratch, const std::string& name) {
  const Json& c = case_config(name);
  if (c.contains("dir")) return fixture(c["dir"].get<std::string>());
  std::vector<std::pair<std::string, std::string>> files;
  for (const auto& [file, text] : c["files"].items()) files.emplace_back(file, text.get<std::string>());
  return model_dir(scratch, name, files);
}

LlmTokenizer case_tokenizer(const ScratchDir& scratch, const std::string& name) {
  const Json& c = case_config(name);
  EXPECT_FALSE(c.contains("error")) << name << ": " << c.value("error", "");
  LlmTokenizer tok(case_dir(scratch, name));
  if (c.contains("add_special_tokens")) tok.add_special_tokens(c["add_special_tokens"].get<std::vector<std::string>>());
  return tok;
}

int id_or_none(const Json& j) { return j.is_null() ? -1 : j.get<int>(); }

// Vocabulary size, the named ids, every added token with its flags, and which ids are special.
void expect_vocabulary(const LlmTokenizer& tok, const std::string& name) {
  SCOPED_TRACE("configuration " + name);
  const Json& c = case_config(name);
  EXPECT_EQ(tok.vocab_size(), c["vocab_size"].get<int>());
  EXPECT_EQ(tok.bos_id(), id_or_none(c["bos_id"]));
  EXPECT_EQ(tok.eos_id(), id_or_none(c["eos_id"]));
  EXPECT_EQ(tok.unk_id(), id_or_none(c["unk_id"]));
  EXPECT_EQ(tok.pad_id(), id_or_none(c["pad_id"]));
  auto added = tok.added_tokens();
  std::sort(added.begin(), added.end(), [](const AddedToken& a, const AddedToken& b) { return a.id < b.id; });
  ASSERT_EQ(added.size(), c["added_tokens"].size());
  for (size_t i = 0; i < added.size(); ++i) {
    const Json& e = c["added_tokens"][i];
    EXPECT_EQ(added[i].id, e["id"].get<int>());
    EXPECT_EQ(added[i].content, e["content"].get<std::string>());
    EXPECT_EQ(added[i].special, e["special"].get<bool>()) << added[i].content;
    EXPECT_EQ(added[i].lstrip, e["lstrip"].get<bool>()) << added[i].content;
    EXPECT_EQ(added[i].rstrip, e["rstrip"].get<bool>()) << added[i].content;
    EXPECT_EQ(added[i].normalized, e["normalized"].get<bool>()) << added[i].content;
    EXPECT_EQ(tok.token_to_id(added[i].content), added[i].id);
  }
  std::vector<int> special;
  for (int id = 0; id < tok.vocab_size(); ++id)
    if (tok.is_special(id)) special.push_back(id);
  EXPECT_EQ(special, ints(c["special_ids"]));
}

// encode(text) without and with special tokens; returns how many texts were checked.
size_t expect_encodes(const LlmTokenizer& tok, const std::string& name) {
  SCOPED_TRACE("configuration " + name);
  const Json& c = case_config(name);
  for (const auto& e : c["encode"]) {
    const std::string text = e["text"];
    EXPECT_EQ(tok.encode(text), ints(e["ids"])) << text;
    EXPECT_EQ(tok.encode(text, /*add_special_tokens=*/true), ints(e["ids_with_special"])) << text;
  }
  return c["encode"].size();
}

// decode(ids) with and without skip_special_tokens (the ids given as their tokens too).
size_t expect_decodes(const LlmTokenizer& tok, const std::string& name) {
  SCOPED_TRACE("configuration " + name);
  const Json& c = case_config(name);
  for (const auto& d : c["decode"]) {
    const auto ids = ints(d["ids"]);
    const auto tokens = d["tokens"].get<std::vector<std::string>>();
    EXPECT_EQ(ids.size(), tokens.size());
    for (size_t i = 0; i < ids.size() && i < tokens.size(); ++i) EXPECT_EQ(tok.token_to_id(tokens[i]), ids[i]) << tokens[i];
    EXPECT_EQ(tok.decode(ids), d["text"].get<std::string>()) << d["tokens"].dump();
    EXPECT_EQ(tok.decode(ids, /*skip_special_tokens=*/true), d["text_skip_special"].get<std::string>()) << d["tokens"].dump();
  }
  return c["decode"].size();
}

// apply_chat_template with and without add_generation_prompt; a conversation transformers
// refuses must be refused too. Returns how many conversations were checked.
size_t expect_chats(const LlmTokenizer& tok, const std::string& name) {
  SCOPED_TRACE("configuration " + name);
  const Json& c = case_config(name);
  for (const auto& ch : c["chat"]) {
    std::vector<ChatMessage> messages;
    for (const auto& m : ch["messages"]) messages.push_back({m[0], m[1]});
    if (ch.contains("error")) {
      EXPECT_THROW(tok.apply_chat_template(messages), Error) << ch["messages"].dump() << " (transformers: " << ch["error"] << ")";
      continue;
    }
    EXPECT_EQ(tok.apply_chat_template(messages, true), ch["text"].get<std::string>()) << ch["messages"].dump();
    EXPECT_EQ(tok.apply_chat_template(messages, false), ch["text_no_generation_prompt"].get<std::string>()) << ch["messages"].dump();
  }
  return c["chat"].size();
}

void expect_all(const LlmTokenizer& tok, const std::string& name) {
  expect_vocabulary(tok, name);
  expect_encodes(tok, name);
  expect_decodes(tok, name);
  expect_chats(tok, name);
}

// ---- tokenizer_expected.json ------------------------------------------------------------------

TEST(LlmTokenizerFixture, SentencePieceIdsPiecesAndDecodeOfEveryCase) {
  const SentencePiece spm(kDir + "/tokenizer.model");
  ASSERT_EQ(spm.vocab_size(), expected()["spm_vocab_size"].get<int>());
  ASSERT_FALSE(expected()["cases"].empty());
  for (const auto& c : expected()["cases"]) {
    const std::string text = c["text"];
    EXPECT_EQ(spm.encode(text), ints(c["spm_ids"])) << text;
    EXPECT_EQ(spm.encode_pieces(text), c["spm_pieces"].get<std::vector<std::string>>()) << text;
    EXPECT_EQ(spm.decode(ints(c["spm_ids"])), c["spm_decode"].get<std::string>()) << text;
  }
}

TEST(LlmTokenizerFixture, VocabularyAndSpecialIdsAfterAddingTheClaraTokens) {
  LlmTokenizer tok = clara_tokenizer();
  EXPECT_EQ(tok.sentencepiece_size(), expected()["spm_vocab_size"].get<int>());
  EXPECT_EQ(tok.vocab_size(), expected()["vocab_size"].get<int>());
  for (const auto& a : expected()["added_tokens"]) {
    EXPECT_EQ(tok.token_to_id(a["content"]), a["id"].get<int>()) << a["content"];
    EXPECT_EQ(tok.id_to_token(a["id"].get<int>()), a["content"].get<std::string>());
    EXPECT_TRUE(tok.is_special(a["id"].get<int>()));
  }
  for (const auto& [content, id] : expected()["matched_special_tokens"].items()) {
    EXPECT_EQ(tok.token_to_id(content), id.get<int>()) << content;
    EXPECT_EQ(tok.encode(content), std::vector<int>{id.get<int>()}) << content;  // matched in text
  }
  EXPECT_EQ(tok.bos_id(), expected()["bos_id"].get<int>());
  EXPECT_EQ(tok.eos_id(), expected()["eos_id"].get<int>());
  EXPECT_EQ(tok.unk_id(), expected()["unk_id"].get<int>());
  EXPECT_EQ(tok.pad_id(), -1);  // tokenizer_config.json has "pad_token": null
  tok.set_pad_id(tok.bos_id());  // CLaRa: pad = bos
  EXPECT_EQ(tok.pad_id(), expected()["pad_id"].get<int>());
  std::vector<int> mem_ids;
  for (int i = 0; i < static_cast<int>(expected()["mem_token_ids"].size()); ++i)
    mem_ids.push_back(tok.token_to_id("<MEM" + std::to_string(i) + ">"));
  EXPECT_EQ(mem_ids, ints(expected()["mem_token_ids"]));
  EXPECT_EQ(tok.token_to_id("<AE>"), expected()["ae_id"].get<int>());
  EXPECT_EQ(tok.token_to_id("<ENC>"), expected()["enc_id"].get<int>());
  EXPECT_EQ(tok.token_to_id("<SEP>"), expected()["sep_id"].get<int>());
}

// The fixture's segments, each encoded on its own, give its clara_ids: the rule the tokenizer
// implements, checked on the fixture itself with plain SentencePiece.
TEST(LlmTokenizerFixture, SegmentsEncodedSeparatelyGiveTheClaraIds) {
  const SentencePiece spm(kDir + "/tokenizer.model");
  const LlmTokenizer tok = clara_tokenizer();
  for (const auto& c : expected()["cases"]) {
    std::string joined;
    std::vector<int> ids;
    for (const auto& s : c["segments"]) {
      const std::string kind = s[0], text = s[1];
      joined += text;
      if (kind == "special") {
        ids.push_back(tok.token_to_id(text));
      } else {
        const auto piece_ids = spm.encode(text);
        ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
      }
    }
    EXPECT_EQ(joined, c["text"].get<std::string>());
    EXPECT_EQ(ids, ints(c["clara_ids"])) << c["text"];
  }
}

TEST(LlmTokenizerFixture, ClaraIdsTokensAndBothDecodesOfEveryCase) {
  const LlmTokenizer tok = clara_tokenizer();
  ASSERT_EQ(expected()["cases"].size(), 13u);
  for (const auto& c : expected()["cases"]) {
    const std::string text = c["text"];
    const auto ids = tok.encode(text);
    EXPECT_EQ(ids, ints(c["clara_ids"])) << text;
    std::vector<std::string> tokens;
    for (int id : ints(c["clara_ids"])) tokens.push_back(tok.id_to_token(id));
    EXPECT_EQ(tokens, c["clara_tokens"].get<std::vector<std::string>>()) << text;
    EXPECT_EQ(tok.decode(ints(c["clara_ids"])), c["clara_decode"].get<std::string>()) << text;
    EXPECT_EQ(tok.decode(ints(c["clara_ids"]), /*skip_special_tokens=*/true),
              c["clara_decode_skip_special"].get<std::string>())
        << text;
  }
}

// transformers' AutoTokenizer on the fixture folder as it is and with CLaRa's tokens added
// (tokenizer-cases "reference", "clara"): special tokens next to each other and to whitespace,
// empty and space-only texts, every case above; with and without special tokens.
TEST(LlmTokenizerFixture, ReferenceAndClaraMatchTransformers) {
  ScratchDir scratch;
  const LlmTokenizer plain = case_tokenizer(scratch, "reference");
  expect_vocabulary(plain, "reference");
  EXPECT_GE(expect_encodes(plain, "reference"), 15u);
  const LlmTokenizer clara = case_tokenizer(scratch, "clara");
  EXPECT_EQ(case_config("clara")["add_special_tokens"].get<std::vector<std::string>>(), clara_token_names());
  expect_vocabulary(clara, "clara");
  EXPECT_GT(expect_encodes(clara, "clara"), expected()["cases"].size());
  expect_decodes(clara, "clara");
}

TEST(LlmTokenizerFixture, AddSpecialTokensPutsBosInFrontOfEveryCase) {
  const LlmTokenizer tok = clara_tokenizer();  // add_bos_token true, add_eos_token false
  for (const auto& c : expected()["cases"])
    EXPECT_EQ(tok.encode(c["text"], /*add_special_tokens=*/true), concat({tok.bos_id()}, ints(c["clara_ids"]))) << c["text"];
}

TEST(LlmTokenizerFixture, PlainTextRoundTripsThroughEncodeAndDecode) {
  const LlmTokenizer tok = clara_tokenizer();
  std::vector<std::string> texts;
  for (const auto& c : expected()["cases"])
    if (c["segments"].size() <= 1 && (c["segments"].empty() || c["segments"][0][0] == "text")) texts.push_back(c["text"]);
  for (const auto& t : prompts()["documents"]) texts.push_back(t);
  for (const auto& t : prompts()["generation_candidates"]) texts.push_back(t);
  texts.push_back(prompts()["system_prompt"]);
  ASSERT_GT(texts.size(), 10u);
  for (const auto& text : texts) {
    EXPECT_EQ(tok.decode(tok.encode(text)), text);
    EXPECT_EQ(tok.decode(tok.encode(text, true), true), text);
  }
}

// ---- prompts.json and the ids of expected.safetensors -----------------------------------------

TEST(LlmTokenizerPrompts, ChatTemplateRendersEverySampleAndItsPromptLength) {
  const LlmTokenizer tok = clara_tokenizer();
  ASSERT_FALSE(prompts()["samples"].empty());
  for (const auto& sample : prompts()["samples"]) {
    auto messages = chat_messages(sample["messages"]);
    EXPECT_EQ(tok.apply_chat_template(messages), sample["full_text"].get<std::string>());
    ASSERT_EQ(messages.back().role, "assistant");
    messages.pop_back();  // the prompt-only rendering
    const std::string prompt = tok.apply_chat_template(messages, /*add_generation_prompt=*/true);
    EXPECT_EQ(prompt, sample["prompt_text"].get<std::string>());
    EXPECT_EQ(tok.apply_chat_template(messages, false), prompt);  // no effect for this template
    EXPECT_EQ(static_cast<int>(tok.encode(prompt).size()), sample["prompt_len"].get<int>());
  }
}

TEST(LlmTokenizerPrompts, ChatTemplateIdsAreTheDecoderBatch) {
  const LlmTokenizer tok = clara_tokenizer();
  const auto& samples = prompts()["samples"];
  ASSERT_EQ(reference_tensors().at("decoder.input_ids").size(0), static_cast<int64_t>(samples.size()));
  for (size_t i = 0; i < samples.size(); ++i) {
    const auto row = static_cast<int64_t>(i);
    EXPECT_EQ(tok.encode(samples[i]["full_text"]), unpadded_row("decoder.input_ids", "decoder.attention_mask", row));
    EXPECT_EQ(static_cast<int64_t>(tok.encode(samples[i]["prompt_text"]).size()),
              reference_tensors().at("decoder.prompt_len")[row].item<int64_t>());
  }
}

TEST(LlmTokenizerPrompts, GenerationPromptsAreBosPlusTheTextIds) {
  const LlmTokenizer tok = clara_tokenizer();
  const auto& texts = prompts()["generation_prompts"];
  ASSERT_EQ(reference_tensors().at("input_ids").size(0), static_cast<int64_t>(texts.size()));
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::string text = texts[i];
    const auto ids = tok.encode(text, /*add_special_tokens=*/true);
    ASSERT_FALSE(ids.empty());
    EXPECT_EQ(ids[0], tok.bos_id());
    EXPECT_EQ(ids, concat({tok.bos_id()}, tok.encode(text)));
    EXPECT_EQ(ids, unpadded_row("input_ids", "attention_mask", static_cast<int64_t>(i)));
    EXPECT_EQ(tok.decode(ids, true), text);
  }
}

// The greedy tokens of the tiny random model include bytes that do not form valid UTF-8: they
// decode to one U+FFFD per byte, as tokenizers' ByteFallback does.
TEST(LlmTokenizerPrompts, GeneratedIdsDecodeToTheGeneratedText) {
  const LlmTokenizer tok = clara_tokenizer();
  const auto& texts = prompts()["generated_text"];
  ASSERT_EQ(reference_tensors().at("generate.output_ids").size(0), static_cast<int64_t>(texts.size()));
  bool saw_replacement = false;
  for (size_t i = 0; i < texts.size(); ++i) {
    const auto ids = tensor_row("generate.output_ids", static_cast<int64_t>(i));
    EXPECT_EQ(tok.decode(ids, /*skip_special_tokens=*/true), texts[i].get<std::string>()) << i;
    saw_replacement |= contains(texts[i], "\xEF\xBF\xBD");
  }
  EXPECT_TRUE(saw_replacement);  // the invalid-UTF-8 path was exercised
}

TEST(LlmTokenizerPrompts, EmbedsAndEncoderIdsAreTheReferenceInputs) {
  const LlmTokenizer tok = clara_tokenizer();
  EXPECT_EQ(concat({tok.bos_id()}, tok.encode(prompts()["embeds_text"])), tensor_row("embeds.input_ids", 0));

  // Encoder rows: [pads][<ENC> <s> doc </s>, right-truncated][<MEM0>..].
  const auto& strings = prompts()["encoder_strings"];
  const auto mem_ids = ints(expected()["mem_token_ids"]);
  const auto max_doc_ids = static_cast<size_t>(reference_tensors().at("compress.input_ids").size(1)) - mem_ids.size();
  ASSERT_EQ(strings.size(), prompts()["documents"].size());
  for (size_t i = 0; i < strings.size(); ++i) {
    EXPECT_EQ(strings[i].get<std::string>(), "<ENC><s>" + prompts()["documents"][i].get<std::string>() + "</s>");
    auto ids = tok.encode(strings[i]);
    EXPECT_EQ(static_cast<int>(ids.size()), prompts()["encoder_untruncated_lengths"][i].get<int>());
    ids.resize(std::min(ids.size(), max_doc_ids));
    EXPECT_EQ(concat(ids, mem_ids), unpadded_row("compress.input_ids", "compress.attention_mask", static_cast<int64_t>(i)));
  }
}

// ---- added tokens and the files that declare them ---------------------------------------------

TEST(LlmTokenizerAddedTokens, AddingKeepsExistingIdsAndAppendsNewOnes) {
  LlmTokenizer tok(kDir);
  const int n = tok.sentencepiece_size();
  EXPECT_EQ(tok.vocab_size(), n);
  EXPECT_EQ(tok.add_special_tokens({"<MEM0>", "<s>", "<MEM1>", "<MEM0>"}), (std::vector<int>{n, tok.bos_id(), n + 1, n}));
  EXPECT_EQ(tok.vocab_size(), n + 2);
  EXPECT_EQ(tok.add_special_tokens(clara_token_names())[1], n + 1);  // <MEM1> keeps its id
  EXPECT_EQ(tok.vocab_size(), expected()["vocab_size"].get<int>());

  // A SentencePiece piece keeps its id, and from now on it is matched in text as a whole.
  const SentencePiece spm(kDir + "/tokenizer.model");
  const std::string piece = expected()["cases"][0]["spm_pieces"][3];  // "ll" of "Hello"
  const int piece_id = spm.piece_to_id(piece);
  const int size_before = tok.vocab_size();
  EXPECT_EQ(tok.add_special_tokens({piece}), std::vector<int>{piece_id});
  EXPECT_EQ(tok.vocab_size(), size_before);
  EXPECT_TRUE(tok.is_special(piece_id));
  EXPECT_EQ(tok.encode(piece), std::vector<int>{piece_id});
  EXPECT_EQ(tok.decode({piece_id}, true), "");

  EXPECT_FALSE(tok.is_special(spm.piece_to_id(expected()["cases"][0]["spm_pieces"][1])));
  EXPECT_EQ(tok.token_to_id("<MEM99>"), -1);
  EXPECT_EQ(tok.token_to_id(""), -1);
  EXPECT_NE(error_of<UsageError>([&] { tok.id_to_token(tok.vocab_size()); }).find("outside the vocabulary"), std::string::npos);
  EXPECT_THROW(tok.id_to_token(-1), UsageError);
  // decode() drops ids it has no token for (a model may have more rows), as transformers' fast
  // tokenizers do, instead of aborting a generated answer midway.
  EXPECT_EQ(tok.decode({tok.vocab_size()}), "");
  EXPECT_FALSE(tok.has_token(tok.vocab_size()));
  EXPECT_THROW(tok.set_pad_id(tok.vocab_size()), UsageError);
  EXPECT_THROW(tok.add_special_tokens({""}), UsageError);
  tok.set_pad_id(tok.bos_id());
  EXPECT_EQ(tok.decode({tok.pad_id(), tok.token_to_id("<MEM0>"), tok.eos_id()}, true), "");
  // skip_special_tokens drops the pad id also when it is a plain piece.
  const int plain_piece = spm.piece_to_id(expected()["cases"][0]["spm_pieces"][1]);  // "H"
  EXPECT_EQ(tok.decode({plain_piece}, true), tok.id_to_token(plain_piece));
  tok.set_pad_id(plain_piece);
  EXPECT_TRUE(tok.is_special(plain_piece));
  EXPECT_EQ(tok.decode({plain_piece}, true), "");

  const auto& added = tok.added_tokens();
  ASSERT_FALSE(added.empty());
  EXPECT_EQ(added.back().content, piece);
}

TEST(LlmTokenizerAddedTokens, ByteRunsDecodeAsUtf8OrOneReplacementPerByte) {
  // transformers' decodes of <0xNN> runs: valid UTF-8, truncated, mixed with a plain byte, ended
  // by a piece, overlong, a surrogate, above U+10FFFF, a leading space byte (stripped once),
  // special tokens around and inside a run.
  const LlmTokenizer tok(kDir);
  ASSERT_GE(expect_decodes(tok, "reference"), 14u);
  const std::string replacement = "\xEF\xBF\xBD";
  bool valid_run = false, invalid_run = false;
  for (const auto& d : case_config("reference")["decode"]) {
    const std::string text = d["text"];
    valid_run |= contains(text, "\xE4\xB8\x96");  // 世 from three byte pieces
    invalid_run |= contains(text, replacement + replacement);
  }
  EXPECT_TRUE(valid_run);
  EXPECT_TRUE(invalid_run);
  // Added tokens go through the same decoder chain: '▁' in one becomes a space, and one that looks
  // like a byte piece joins the byte run.
  ScratchDir scratch;
  expect_all(case_tokenizer(scratch, "decoder_chain"), "decoder_chain");
}

TEST(LlmTokenizerAddedTokens, StripFlagsAndSpecialFlagsFromTokenizerConfig) {
  // <L> lstrip, <R> rstrip and not special, <LR> both, and </s> redeclared with rstrip
  // (tokenizer-cases "strip"); texts with ASCII and Unicode whitespace around them.
  ScratchDir scratch;
  const LlmTokenizer tok = case_tokenizer(scratch, "strip");
  const int n = LlmTokenizer(kDir).sentencepiece_size();
  ASSERT_EQ(n, transformers_cases()["sentencepiece_size"].get<int>());
  expect_vocabulary(tok, "strip");
  EXPECT_GE(expect_encodes(tok, "strip"), 30u);
  expect_decodes(tok, "strip");
  EXPECT_EQ(tok.vocab_size(), n + 3);
  ASSERT_EQ(tok.added_tokens().size(), 6u);  // <unk> <s> </s> + 3
  EXPECT_TRUE(tok.added_tokens()[3].lstrip);
  EXPECT_TRUE(tok.added_tokens()[4].rstrip);
  // <R> is not special, so (as in transformers) it is a normalized token: matched as '▁<R>' in
  // the normalized text, it takes one space before it along and is not found right after text.
  EXPECT_TRUE(tok.added_tokens()[4].normalized);
  EXPECT_FALSE(tok.added_tokens()[3].normalized);

  // lstrip swallows the whitespace before <L>, rstrip the whitespace after <LR>; the other side
  // stays in the neighbouring text. Unicode whitespace (U+00A0, U+3000) counts, as in tokenizers.
  const LlmTokenizer plain(kDir);
  EXPECT_EQ(tok.encode("a  <L> b"), concat(concat(plain.encode("a"), {n}), plain.encode(" b")));
  EXPECT_EQ(tok.encode("a\n<LR>\n b"), concat(concat(plain.encode("a"), {n + 2}), plain.encode("b")));
  EXPECT_EQ(tok.encode("  <L>"), std::vector<int>{n});
  EXPECT_EQ(tok.encode("a\xC2\xA0<LR>\xE3\x80\x80" "b"), concat(concat(plain.encode("a"), {n + 2}), plain.encode("b")));
  // The config's flags replace those of the base tokenizer's own </s>.
  EXPECT_EQ(tok.encode("a</s>  b"), concat(concat(plain.encode("a"), {tok.eos_id()}), plain.encode("b")));
  EXPECT_NE(plain.encode("a</s>  b"), tok.encode("a</s>  b"));
  // Leftmost-longest: <LR> beats <L> at the same position.
  EXPECT_EQ(tok.encode("<LR><L>"), (std::vector<int>{n + 2, n}));

  // Not special: kept by skip_special_tokens.
  EXPECT_FALSE(tok.is_special(n + 1));
  EXPECT_EQ(tok.decode({n + 1}, true), "<R>");
  EXPECT_EQ(tok.decode({n, n + 2}, true), "");
  EXPECT_EQ(tok.decode({n, n + 1, n + 2}), "<L><R><LR>");
}

TEST(LlmTokenizerAddedTokens, AddedTokensJsonAndSpecialTokensMap) {
  ScratchDir scratch;
  const int n = LlmTokenizer(kDir).sentencepiece_size();
  const LlmTokenizer plain(kDir);
  // tokenizer_config.json without added_tokens_decoder, added_tokens.json, special_tokens_map.json
  // (tokenizer-cases "maps"): the map's tokens replace the config's (eos becomes <eot>), and the
  // named tokens missing from the vocabulary follow added_tokens.json's, in transformers' order.
  const LlmTokenizer tok = case_tokenizer(scratch, "maps");
  expect_all(tok, "maps");
  EXPECT_EQ(tok.pad_id(), n);
  EXPECT_TRUE(tok.is_special(n));
  EXPECT_EQ(tok.token_to_id("<plain>"), n + 1);
  EXPECT_FALSE(tok.is_special(n + 1));  // added_tokens.json alone does not make a token special
  EXPECT_EQ(tok.eos_id(), n + 2);       // special_tokens_map.json wins
  EXPECT_EQ(tok.token_to_id("<eot>"), n + 2);
  EXPECT_EQ(tok.token_to_id("<X>"), n + 3);
  EXPECT_EQ(tok.token_to_id("<Y>"), n + 4);
  EXPECT_TRUE(tok.is_special(n + 4));
  EXPECT_EQ(tok.vocab_size(), n + 5);
  // add_bos_token false, add_eos_token true.
  EXPECT_EQ(tok.encode("x<pad><plain>", true), concat(plain.encode("x"), {n, n + 1, tok.eos_id()}));
  EXPECT_EQ(tok.decode(tok.encode("x<pad><plain><X>", true), true), "x<plain>");

  // With added_tokens_decoder in tokenizer_config.json, neither file is read.
  const LlmTokenizer decoder = case_tokenizer(scratch, "decoder_and_map");
  expect_all(decoder, "decoder_and_map");
  EXPECT_EQ(decoder.eos_id(), plain.eos_id());
  EXPECT_EQ(decoder.token_to_id("<plain>"), -1);

  // A named special token missing from the vocabulary is appended, as transformers does: given
  // as a string, or as a serialized AddedToken (normalized unless it says otherwise).
  for (const std::string name : {"eot", "eot_addedtoken", "eot_addedtoken_flags", "extra_addedtoken"}) {
    const LlmTokenizer t = case_tokenizer(scratch, name);
    expect_all(t, name);
  }
  const LlmTokenizer eot = case_tokenizer(scratch, "eot");
  EXPECT_EQ(eot.eos_id(), n);
  EXPECT_EQ(eot.vocab_size(), n + 1);
  EXPECT_EQ(eot.encode("a<eot>"), concat(plain.encode("a"), {n}));

  // What transformers refuses to load: a token in tokenizer_config.json as a plain object.
  size_t refused = 0;
  for (const auto& [name, c] : transformers_cases()["configs"].items()) {
    if (!c.contains("error")) continue;
    ++refused;
    const std::string dir = case_dir(scratch, name);
    const std::string message = error_of<FormatError>([&] { LlmTokenizer t(dir); });
    EXPECT_TRUE(contains(message, dir + "/tokenizer_config.json: field '")) << name << ": " << message;
    EXPECT_TRUE(contains(message, "__type")) << name << ": " << message;
  }
  EXPECT_EQ(refused, 2u);
}

TEST(LlmTokenizerAddedTokens, NonLegacyPrefixesOnlyTheStartOfTheText) {
  ScratchDir scratch;
  // `"legacy": false` (tokenizer-cases "nonlegacy", "nonlegacy_strip"): transformers' fast
  // tokenizer then has no normalizer and a Metaspace(prepend_scheme "first") pre-tokenizer.
  const LlmTokenizer tok = case_tokenizer(scratch, "nonlegacy");
  EXPECT_GE(expect_encodes(tok, "nonlegacy"), 15u);
  expect_all(tok, "nonlegacy");
  expect_all(case_tokenizer(scratch, "nonlegacy_strip"), "nonlegacy_strip");

  const LlmTokenizer legacy(kDir);
  const std::string marker = "\xE2\x96\x81";
  EXPECT_EQ(tok.encode("Hello world"), legacy.encode("Hello world"));  // one plain text segment: same
  // ... but a text that starts with a space gets no extra '▁'.
  EXPECT_NE(tok.encode(" Hello"), legacy.encode(" Hello"));
  EXPECT_EQ(tok.encode(" Hello"), tok.encode("Hello"));
  // After a special token the legacy tokenizer starts the text with '▁', the non-legacy one not.
  const auto legacy_ids = legacy.encode("<s>Hello");
  const auto ids = tok.encode("<s>Hello");
  ASSERT_GE(legacy_ids.size(), 2u);
  ASSERT_GE(ids.size(), 2u);
  EXPECT_EQ(ids[0], tok.bos_id());  // no lone '▁' before a leading special token
  EXPECT_EQ(legacy.id_to_token(legacy_ids[1]).rfind(marker, 0), 0u);
  EXPECT_NE(tok.id_to_token(ids[1]).rfind(marker, 0), 0u);
  EXPECT_EQ(tok.decode(ids), "<s>Hello");
  // A space after the special token is one '▁', not two.
  const auto spaced = tok.encode("<s> Hello");
  EXPECT_EQ(std::vector<int>(spaced.begin() + 1, spaced.end()), legacy.encode("Hello"));
}

// ---- chat template ----------------------------------------------------------------------------

TEST(LlmTokenizerChat, MultiTurnAndTemplateSources) {
  // transformers' renderings with the fixture's template: multi-turn with and without a system
  // message, ending on either role; later user turns get no system text. CLaRa's added tokens
  // change nothing. The conversations it refuses are refused.
  const LlmTokenizer plain(kDir);
  EXPECT_GE(expect_chats(plain, "reference"), 10u);
  expect_chats(clara_tokenizer(), "reference");
  size_t refused = 0;
  for (const auto& ch : case_config("reference")["chat"]) refused += ch.contains("error") ? 1 : 0;
  EXPECT_GE(refused, 5u);

  // Where the template comes from: chat_template.jinja (which beats tokenizer_config.json's), a
  // list of named templates ("default"); no template at all (an empty config, no config, only a
  // chat_template.json, which AutoTokenizer does not read) is refused as transformers refuses it.
  ScratchDir scratch;
  for (const std::string name : {"chat_jinja", "chat_named", "chat_jinja_beats_config", "chat_none", "chat_bare", "chat_template_json"}) {
    const LlmTokenizer tok = case_tokenizer(scratch, name);
    expect_vocabulary(tok, name);
    EXPECT_EQ(expect_chats(tok, name), 2u);
  }
  const LlmTokenizer none = case_tokenizer(scratch, "chat_none");
  const std::string message = error_of<FormatError>([&] { none.apply_chat_template({{"user", "q"}}); });
  EXPECT_TRUE(contains(message, "no chat template")) << message;
}

TEST(LlmTokenizerChat, BadConversationsAreUsageErrors) {
  const LlmTokenizer tok = clara_tokenizer();
  EXPECT_TRUE(contains(error_of<UsageError>([&] { tok.apply_chat_template({{"user", "a"}, {"user", "b"}}); }), "alternate"));
  EXPECT_TRUE(contains(error_of<UsageError>([&] { tok.apply_chat_template({{"assistant", "a"}}); }), "alternate"));
  EXPECT_TRUE(contains(
      error_of<UsageError>([&] { tok.apply_chat_template({{"system", "s"}, {"assistant", "a"}, {"user", "b"}}); }), "alternate"));
  EXPECT_TRUE(contains(error_of<UsageError>([&] { tok.apply_chat_template({{"user", "a"}, {"system", "s"}}); }), "role 'system'"));
  EXPECT_TRUE(contains(error_of<UsageError>([&] { tok.apply_chat_template({{"tool", "a"}}); }), "role 'tool'"));
  EXPECT_TRUE(contains(error_of<UsageError>([&] { tok.apply_chat_template({}); }), "no messages"));
}

// ---- errors -----------------------------------------------------------------------------------

TEST(LlmTokenizerErrors, MissingModelIsAnIoErrorNamingTheFile) {
  ScratchDir scratch;
  const std::string message = error_of<IoError>([&] { LlmTokenizer t(scratch.path()); });
  EXPECT_TRUE(contains(message, scratch / "tokenizer.model")) << message;
  EXPECT_EQ(test::count_lines(message), 0);
}

TEST(LlmTokenizerErrors, BadConfigFilesAreFormatErrorsNamingFileAndField) {
  ScratchDir scratch;
  struct Case {
    std::string file, text, expect;
  };
  const std::vector<Case> cases = {
      {"tokenizer_config.json", "{\"add_bos_token\": ", "tokenizer_config.json: malformed JSON"},
      {"tokenizer_config.json", "[1, 2]", "tokenizer_config.json: expected a JSON object"},
      {"tokenizer_config.json", R"({"add_bos_token": "yes"})", "field 'add_bos_token'"},
      {"tokenizer_config.json", R"({"legacy": 0})", "field 'legacy'"},
      {"tokenizer_config.json", R"({"bos_token": 1})", "field 'bos_token'"},
      {"tokenizer_config.json", R"({"chat_template": 7})", "field 'chat_template'"},
      {"tokenizer_config.json", R"({"added_tokens_decoder": {"x": {"content": "<a>"}}})", "added_tokens_decoder['x']"},
      {"tokenizer_config.json", R"({"added_tokens_decoder": {"700": {"special": true}}})", "added_tokens_decoder['700']"},
      {"tokenizer_config.json", R"({"added_tokens_decoder": {"700": {"content": "<s>"}}})", "'<s>' has id 700"},
      {"tokenizer_config.json", R"({"added_tokens_decoder": {"1": {"content": "<a>"}}})", "id 1 is given to both"},
      {"added_tokens.json", R"({"<a>": "700"})", "added_tokens.json: the id of '<a>'"},
      {"special_tokens_map.json", R"({"additional_special_tokens": "<a>"})", "special_tokens_map.json: field 'additional_special_tokens'"},
      {"special_tokens_map.json", "{", "special_tokens_map.json: malformed JSON"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string dir = model_dir(scratch, "case" + std::to_string(i), {{cases[i].file, cases[i].text}});
    const std::string message = error_of<FormatError>([&] { LlmTokenizer t(dir); });
    EXPECT_TRUE(contains(message, dir + "/" + cases[i].file)) << message;
    EXPECT_TRUE(contains(message, cases[i].expect)) << message;
    EXPECT_EQ(test::count_lines(message), 0) << message;
  }
}

TEST(LlmTokenizerErrors, UnsupportedChatTemplatesAreFormatErrorsWhenUsed) {
  ScratchDir scratch;
  const std::vector<std::string> templates = {
      "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>{% endfor %}",
      // Mistral v0.1's first template: '[INST] ' without the leading space renders differently.
      "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + "
      "message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token + ' ' }}{% endif %}{% endfor %}",
  };
  for (size_t i = 0; i < templates.size(); ++i) {
    const std::string dir = model_dir(scratch, "t" + std::to_string(i), {{"tokenizer_config.json", Json{{"chat_template", templates[i]}}.dump()}});
    const LlmTokenizer tok(dir);  // loading works; the tokenizer still encodes
    EXPECT_FALSE(tok.encode("hi").empty());
    const std::string message = error_of<FormatError>([&] { tok.apply_chat_template({{"user", "x"}}); });
    EXPECT_TRUE(contains(message, dir + "/tokenizer_config.json")) << message;
    EXPECT_TRUE(contains(message, "chat_template")) << message;
  }
}

}  // namespace
}  // namespace hrmclara
