// The decoder LLM's tokenizer: SentencePiece (through the plugin of tokenizer.h) plus Hugging Face
// "added tokens" -- special strings such as <s>, </s> or CLaRa's <MEM0>..<SEP> that are found in
// the text before SentencePiece runs and map straight to their ids -- and the chat template.
// Semantics follow transformers' AutoTokenizer (4.56, tokenizers 0.22) on such a folder: the fast
// tokenizer converted from tokenizer.model. Legacy (the default): normalizer Prepend('▁') +
// Replace(' ', '▁'), no pre-tokenizer; `"legacy": false`: no normalizer, pre-tokenizer
// Metaspace(prepend_scheme "first"). tests/fixtures/tokenizer-cases holds transformers' answers.
//  * Added tokens are matched leftmost-longest, case-sensitive. Those with normalized = false
//    (special tokens, as a rule) are matched in the raw text first; those with normalized = true
//    (by default the non-special ones) then in each remaining piece after normalization -- legacy:
//    as '▁' + content with spaces as '▁', so such a token also takes the space before it and is
//    not found right after other text. lstrip / rstrip swallow Unicode whitespace (not '▁') on
//    that side; otherwise spaces next to a token stay in the neighbouring text.
//  * Legacy: every text piece between raw-matched tokens gets its own dummy-prefix '▁' (also one
//    right after a special token); pieces after a normalized token get none. Non-legacy: only a
//    piece at the very start of the text gets a '▁', and only if it does not begin with a space.
//  * Decoding runs every token, added ones too, through Replace('▁', ' '), ByteFallback (runs of
//    <0xNN> pieces decode as UTF-8, an invalid run as one U+FFFD per byte), Fuse, and strips one
//    leading space from the whole string.
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
  bool normalized = false;  // matched in the normalized text, after the raw-text tokens (see above)
};

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

class LlmTokenizer {
 public:
  // Loads `dir`/tokenizer.model, then tokenizer_config.json (bos/eos/unk/pad/sep/cls/mask and
  // additional special tokens, add_bos_token, add_eos_token, legacy, chat_template,
  // added_tokens_decoder) and chat_template.jinja when present. As transformers does, it reads
  // special_tokens_map.json (whose tokens then replace the config's) and added_tokens.json only
  // when tokenizer_config.json has no added_tokens_decoder, and it refuses a token given in
  // tokenizer_config.json as an object without "__type": "AddedToken". Named special tokens missing
  // from the vocabulary are added after it. The SentencePiece control and unknown pieces (<unk>,
  // <s>, </s>) are matched in text like the base tokenizer's own added tokens. Throws IoError /
  // FormatError naming the file.
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
  // UsageError for an id out of range. token_to_id returns -1 for an unknown token. decode()
  // skips ids has_token() is false for (a model may have more embedding rows than the tokenizer
  // has tokens).
  std::string id_to_token(int id) const;
  bool has_token(int id) const;
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

  // Renders a conversation with the model's chat template: chat_template.jinja if the folder has
  // one, else tokenizer_config.json's chat_template (a string, or the list entry named "default").
  // Supported: the Mistral-instruct template (the one tokenizer_config.json of
  // Mistral-7B-Instruct-v0.2 ships): bos + for each user turn " [INST] " + content + " [/INST]"
  // (the optional leading system message is prepended to the first user turn followed by
  // "\n\n"), and for each assistant turn " " + content + eos. Roles must alternate
  // user/assistant after the optional system message; add_generation_prompt has no effect for
  // this template. Throws UsageError for bad conversations, FormatError for a template it does not
  // know and for a folder without a template (transformers has no default template either).
  std::string apply_chat_template(const std::vector<ChatMessage>& messages,
                                  bool add_generation_prompt = true) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace hrmclara
