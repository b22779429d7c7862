// The LLM tokenizer against the CLaRa fixture: tokenizer_expected.json (SentencePiece ids,
// added-token splitting, decoding with and without special tokens, made with transformers 4.56 /
// tokenizers 0.22) and prompts.json (chat template renderings and generated text).
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/llm_tokenizer.h>
#include <hrmclara/tokenizer.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "test_util.h"

using namespace hrmclara;
using namespace hrmclara::test;

namespace {

const std::string kDir = fixture("clara-reference");
const std::vector<std::string> kClaraTokens = {"<MEM0>", "<MEM1>", "<MEM2>", "<MEM3>", "<AE>", "<ENC>", "<SEP>"};

nlohmann::json load_json(const std::string& name) { return nlohmann::json::parse(read_file(kDir + "/" + name)); }

LlmTokenizer clara_tokenizer() {
  LlmTokenizer t(kDir);
  t.add_special_tokens(kClaraTokens);
  return t;
}

std::vector<int> ints(const nlohmann::json& j) { return j.get<std::vector<int>>(); }

// A model directory holding the fixture's tokenizer.model and the given JSON files.
std::string tokenizer_dir(const ScratchDir& scratch, const std::string& name,
                          const std::vector<std::pair<std::string, std::string>>& files) {
  const std::string dir = scratch.path() + "/" + name;
  make_directories(dir);
  copy_file(kDir + "/tokenizer.model", dir + "/tokenizer.model");
  for (const auto& [file, text] : files) write_file_atomically(dir + "/" + file, text);
  return dir;
}

}  // namespace

TEST(LlmTokenizer, EveryFixtureCaseEncodesAndDecodesLikeTransformers) {
  const auto expected = load_json("tokenizer_expected.json");
  const SentencePiece spm(kDir + "/tokenizer.model");
  const auto tok = clara_tokenizer();
  ASSERT_EQ(tok.sentencepiece_size(), expected["spm_vocab_size"].get<int>());
  ASSERT_EQ(tok.vocab_size(), expected["vocab_size"].get<int>());
  for (const auto& a : expected["added_tokens"]) EXPECT_EQ(tok.token_to_id(a["content"]), a["id"].get<int>());
  for (const auto& [content, id] : expected["matched_special_tokens"].items()) EXPECT_EQ(tok.token_to_id(content), id.get<int>());
  EXPECT_EQ(tok.bos_id(), expected["bos_id"].get<int>());
  EXPECT_EQ(tok.eos_id(), expected["eos_id"].get<int>());
  EXPECT_EQ(tok.unk_id(), expected["unk_id"].get<int>());

  ASSERT_GE(expected["cases"].size(), 13u);
  for (const auto& c : expected["cases"]) {
    const std::string text = c["text"];
    EXPECT_EQ(spm.encode(text), ints(c["spm_ids"])) << text;
    const auto ids = tok.encode(text);
    EXPECT_EQ(ids, ints(c["clara_ids"])) << text;
    std::vector<std::string> tokens;
    for (int id : ids) tokens.push_back(tok.id_to_token(id));
    EXPECT_EQ(tokens, c["clara_tokens"].get<std::vector<std::string>>()) << text;
    EXPECT_EQ(tok.decode(ints(c["clara_ids"])), c["clara_decode"].get<std::string>()) << text;
    EXPECT_EQ(tok.decode(ints(c["clara_ids"]), true), c["clara_decode_skip_special"].get<std::string>()) << text;
  }
}

TEST(LlmTokenizer, ChatTemplateRendersAndCountsThePromptAsUpstreamCLaRa) {
  const auto prompts = load_json("prompts.json");
  const auto tok = clara_tokenizer();
  for (const auto& sample : prompts["samples"]) {
    std::vector<ChatMessage> messages;
    for (const auto& m : sample["messages"]) messages.push_back({m["role"], m["content"]});
    EXPECT_EQ(tok.apply_chat_template(messages), sample["full_text"].get<std::string>());
    messages.pop_back();  // the prompt-only rendering drops the assistant turn
    const auto prompt = tok.apply_chat_template(messages, true);
    EXPECT_EQ(prompt, sample["prompt_text"].get<std::string>());
    EXPECT_EQ(static_cast<int>(tok.encode(prompt).size()), sample["prompt_len"].get<int>());
  }
  // Multi-turn: later user turns get no system text.
  const auto text = tok.apply_chat_template({{"user", "a"}, {"assistant", "b"}, {"user", "c"}});
  EXPECT_EQ(text, "<s> [INST] a [/INST] b</s> [INST] c [/INST]");
  EXPECT_NE(error_of<UsageError>([&] { tok.apply_chat_template({{"user", "a"}, {"user", "b"}}); }).find("alternate"),
            std::string::npos);
  EXPECT_NE(error_of<UsageError>([&] { tok.apply_chat_template({{"tool", "a"}}); }).find("role 'tool'"), std::string::npos);
}

TEST(LlmTokenizer, GenerationPromptsAndGeneratedTextRoundTrip) {
  const auto prompts = load_json("prompts.json");
  const auto tok = clara_tokenizer();
  for (const auto& p : prompts["generation_prompts"]) {
    const std::string text = p;
    auto with_bos = tok.encode(text, /*add_special_tokens=*/true);
    auto plain = tok.encode(text);
    plain.insert(plain.begin(), tok.bos_id());
    EXPECT_EQ(with_bos, plain);
    EXPECT_EQ(tok.decode(with_bos, true), text);
  }
  // Invalid UTF-8 byte runs decode to one U+FFFD per byte.
  const int b = tok.token_to_id("<0xE4>"), c = tok.token_to_id("<0xB8>"), a = tok.token_to_id("<0x41>");
  ASSERT_GE(b, 0);
  EXPECT_EQ(tok.decode({b, c}), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(tok.decode({a, b, c}), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(tok.decode({b, c, tok.token_to_id("<0x96>")}), "\xE4\xB8\x96");  // a valid 3-byte run
}

TEST(LlmTokenizer, AddingTokensKeepsExistingIdsAndExtendsTheVocabulary) {
  LlmTokenizer tok(kDir);
  EXPECT_EQ(tok.vocab_size(), 640);
  EXPECT_EQ(tok.add_special_tokens({"<MEM0>", "<s>", "<MEM1>", "<MEM0>"}), (std::vector<int>{640, 1, 641, 640}));
  EXPECT_EQ(tok.vocab_size(), 642);
  EXPECT_TRUE(tok.is_special(640));
  EXPECT_FALSE(tok.is_special(300));
  EXPECT_EQ(tok.token_to_id("<nope>"), -1);
  EXPECT_THROW(tok.id_to_token(642), UsageError);
  tok.set_pad_id(1);
  EXPECT_EQ(tok.pad_id(), 1);
  EXPECT_EQ(tok.decode({1, 640, 2}, true), "");
}

TEST(LlmTokenizer, ReadsAddedTokensStripFlagsAndSpecialTokenMaps) {
  ScratchDir scratch;
  const std::string config = R"({
    "add_bos_token": true, "add_eos_token": true, "pad_token": "<pad>",
    "added_tokens_decoder": {
      "640": {"content": "<L>", "lstrip": true, "rstrip": false, "special": true},
      "641": {"content": "<R>", "lstrip": false, "rstrip": true, "special": false}
    }})";
  const std::string dir = tokenizer_dir(scratch, "strip",
                                        {{"tokenizer_config.json", config},
                                         {"added_tokens.json", R"({"<pad>": 642})"},
                                         {"special_tokens_map.json", R"({"additional_special_tokens": ["<X>"]})"}});
  const LlmTokenizer tok(dir);
  EXPECT_EQ(tok.vocab_size(), 644);
  EXPECT_EQ(tok.token_to_id("<X>"), 643);
  EXPECT_EQ(tok.pad_id(), 642);
  // lstrip eats the spaces before <L>; rstrip eats those after <R>.
  const LlmTokenizer plain(kDir);
  auto expect = plain.encode("a");
  expect.insert(expect.begin(), 1);
  expect.push_back(640);
  for (int id : plain.encode("b")) expect.push_back(id);
  expect.push_back(641);
  for (int id : plain.encode("c")) expect.push_back(id);
  expect.push_back(2);
  EXPECT_EQ(tok.encode("a  <L>b<R>   c", true), expect);
  // <R> is not special: skip_special_tokens keeps it.
  EXPECT_EQ(tok.decode({641}, true), "<R>");
  EXPECT_EQ(tok.decode({640}, true), "");
}

TEST(LlmTokenizer, NonLegacyTokenizersPrefixOnlyTheFirstSegment) {
  ScratchDir scratch;
  const std::string dir = tokenizer_dir(scratch, "nonlegacy", {{"tokenizer_config.json", R"({"legacy": false})"}});
  LlmTokenizer tok(dir);
  const LlmTokenizer legacy(kDir);
  // Plain text is the same either way; after a special token the non-legacy tokenizer adds no '▁'.
  EXPECT_EQ(tok.encode("Hello world"), legacy.encode("Hello world"));
  const auto ids = tok.encode("<s>Hello");
  const auto legacy_ids = legacy.encode("<s>Hello");
  ASSERT_GE(ids.size(), 2u);
  EXPECT_EQ(ids[0], 1);
  EXPECT_NE(ids, legacy_ids);
  EXPECT_EQ(tok.id_to_token(legacy_ids[1]).rfind("\xE2\x96\x81", 0), 0u);  // legacy: '▁' first
  EXPECT_NE(tok.id_to_token(ids[1]).rfind("\xE2\x96\x81", 0), 0u);         // non-legacy: none
}

TEST(LlmTokenizer, BadFilesGiveErrorsNamingTheFile) {
  ScratchDir scratch;
  EXPECT_NE(error_of<IoError>([&] { LlmTokenizer t(scratch.path()); }).find("tokenizer.model: missing"), std::string::npos);
  const std::string bad = tokenizer_dir(scratch, "bad", {{"tokenizer_config.json", "{\"add_bos_token\": "}});
  EXPECT_NE(error_of<FormatError>([&] { LlmTokenizer t(bad); }).find("bad/tokenizer_config.json: not valid JSON"),
            std::string::npos);
  const std::string wrong = tokenizer_dir(scratch, "wrong", {{"tokenizer_config.json", R"({"add_bos_token": "yes"})"}});
  EXPECT_NE(error_of<FormatError>([&] { LlmTokenizer t(wrong); }).find("field 'add_bos_token'"), std::string::npos);
  const std::string unknown = tokenizer_dir(scratch, "unknown", {{"tokenizer_config.json", R"({"eos_token": "<eot>"})"}});
  EXPECT_NE(error_of<FormatError>([&] { LlmTokenizer t(unknown); }).find("eos_token '<eot>' is not in the vocabulary"),
            std::string::npos);
  const std::string chatml =
      tokenizer_dir(scratch, "chatml", {{"tokenizer_config.json", R"({"chat_template": "{% for m in messages %}<|im_start|>{% endfor %}"})"}});
  const LlmTokenizer t(chatml);
  EXPECT_NE(error_of<FormatError>([&] { t.apply_chat_template({{"user", "x"}}); }).find("chat_template"), std::string::npos);
}
