// The decoder LLM's tokenizer: SentencePiece (through the plugin of tokenizer.h) plus Hugging
// Face "added tokens" -- special strings such as <s>, </s> or CLaRa's <MEM0>..<SEP> that are found
// in the text before SentencePiece runs and map straight to their ids -- and the chat template.
// Semantics follow transformers' fast tokenizer built from a legacy Mistral/Llama tokenizer.json
// (normalizer Prepend('▁') + Replace, no pre-tokenizer):
//  * special tokens are matched leftmost-longest, case-sensitive; spaces next to them stay in the
//    neighbouring text (unless the token was declared with lstrip / rstrip);
//  * every non-empty text segment is encoded by SentencePiece on its own, so each one gets its own
//    dummy-prefix '▁' (with `"legacy": false` in tokenizer_config.json only the first segment of
//    the text does, as transformers' non-legacy Llama tokenizer behaves);
//  * decoding replaces '▁' by ' ', joins runs of <0xNN> byte pieces and decodes them as UTF-8
//    (an invalid run becomes one U+FFFD per byte), emits special tokens as their text, and strips
//    one leading space from the whole string.
// This header needs no torch.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace hrmclara {

struct AddedToken {
  std::string content;
  int id = -1;
  bool special = true;   // dropped by decode(skip_special_tokens = true)
  bool lstrip = false;   // the match also swallows whitespace on its left
  bool rstrip = false;   // ... and on its right
};

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

class LlmTokenizer {
 public:
  // Loads `dir`/tokenizer.model, then tokenizer_config.json (bos/eos/unk/pad tokens,
  // add_bos_token, add_eos_token, legacy, chat_template, added_tokens_decoder),
  // special_tokens_map.json and added_tokens.json when present. The SentencePiece control
  // and unknown pieces (<unk>, <s>, </s>) are matched in text like the base tokenizer's own
  // added tokens. Throws IoError / FormatError naming the file.
  explicit LlmTokenizer(const std::string& dir);
  ~LlmTokenizer();
  LlmTokenizer(LlmTokenizer&&) noexcept;
  LlmTokenizer& operator=(LlmTokenizer&&) noexcept;

  // Adds special tokens, in order, after the current vocabulary (SentencePiece pieces + tokens
  // added before). A token that already exists keeps its id. Returns the ids of `tokens`.
  std::vector<int> add_special_tokens(const std::vector<std::string>& tokens);

  // Encodes text with added-token matching. `add_special_tokens` adds BOS (and EOS where the
  // tokenizer config asks for it), as transformers' tokenizer(text) does by default.
  std::vector<int> encode(const std::string& text, bool add_special_tokens = false) const;
  std::string decode(const std::vector<int>& ids, bool skip_special_tokens = false) const;

  // The token string of an id (a SentencePiece piece or an added token's content); throws
  // UsageError for an id out of range. token_to_id returns -1 for an unknown token.
  std::string id_to_token(int id) const;
  int token_to_id(const std::string& token) const;
  bool is_special(int id) const;

  int vocab_size() const;              // SentencePiece pieces + added tokens
  int sentencepiece_size() const;
  int bos_id() const;
  int eos_id() const;
  int unk_id() const;
  int pad_id() const;                  // -1 when the tokenizer has none
  void set_pad_id(int id);             // CLaRa uses pad = bos
  const std::vector<AddedToken>& added_tokens() const;

  // Renders a conversation with the model's chat template. Supported: the Mistral-instruct
  // template (the one tokenizer_config.json of Mistral-7B-Instruct-v0.2 ships, and the default
  // when the config has none): bos + for each user turn " [INST] " + content + " [/INST]" (the
  // optional leading system message is prepended to the first user turn followed by "\n\n"), and
  // for each assistant turn " " + content + eos. Roles must alternate user/assistant after the
  // optional system message; add_generation_prompt has no effect for this template. Throws
  // UsageError for bad conversations and FormatError for a template it does not know.
  std::string apply_chat_template(const std::vector<ChatMessage>& messages,
                                  bool add_generation_prompt = true) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace hrmclara
