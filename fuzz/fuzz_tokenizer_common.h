// What the tokenizer harnesses check on a loaded LlmTokenizer.
#pragma once

#include "fuzz_common.h"

#include <hrmclara/llm_tokenizer.h>

namespace hrmclara_fuzz {

// Encodes and decodes `text` every way the library does, checking that every id is in the
// vocabulary and that decoded text encodes again.
inline void exercise_tokenizer(const hrmclara::LlmTokenizer& tok, const std::string& text) {
  const int vocab = tok.vocab_size();
  for (bool special : {false, true}) {
    const std::vector<int> ids = tok.encode(text, special);
    for (int id : ids) {
      if (id < 0 || id >= vocab)
        die("LlmTokenizer::encode returned id " + std::to_string(id) + " outside [0, " + std::to_string(vocab) + ")");
      (void)tok.id_to_token(id);
      (void)tok.is_special(id);
    }
    for (bool skip : {false, true}) {
      const std::string back = tok.decode(ids, skip);
      for (int id : tok.encode(back, false))
        if (id < 0 || id >= vocab) die("LlmTokenizer::encode(decode(...)) returned id " + std::to_string(id));
    }
  }
  for (const auto& t : tok.added_tokens())
    if (tok.token_to_id(t.content) < 0) die("LlmTokenizer: added token '" + t.content + "' has no id");
}

}  // namespace hrmclara_fuzz
