// LlmTokenizer's folder (src/llm/llm_tokenizer.cpp): tokenizer_config.json (named and additional
// special tokens, added_tokens_decoder, legacy, chat_template), special_tokens_map.json,
// added_tokens.json and chat_template.jinja beside the clara-reference fixture's tokenizer.model,
// then encoding, decoding, the chat template and CLaRa's added tokens. The input is five parts
// (fuzz_common.h's split_parts; "@absent" leaves a file out): the four files and a text.
// Seeds: the fixtures' tokenizer folders (fuzz/seeds.py).
#include "fuzz_tokenizer_common.h"

#include <sys/stat.h>

namespace {
std::string g_dir;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  using namespace hrmclara_fuzz;
  g_dir = WorkDir::get().file("tokenizer");
  ::mkdir(g_dir.c_str(), 0755);
  write_file(g_dir + "/tokenizer.model", read_whole_file(source_dir() + "/tests/fixtures/clara-reference/tokenizer.model"));
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace hrmclara_fuzz;
  const auto parts = split_parts(data, size, 5);
  write_part(parts, 0, g_dir + "/tokenizer_config.json");
  write_part(parts, 1, g_dir + "/special_tokens_map.json");
  write_part(parts, 2, g_dir + "/added_tokens.json");
  write_part(parts, 3, g_dir + "/chat_template.jinja");
  const std::string text = parts.size() > 4 ? parts[4] : "Hello <s> world</s>";
  expect_typed_errors("LlmTokenizer", [&] {
    hrmclara::LlmTokenizer tok(g_dir);
    exercise_tokenizer(tok, text);
    try {
      (void)tok.apply_chat_template({{"system", "Be brief."}, {"user", text}, {"assistant", text}, {"user", "?"}});
    } catch (const hrmclara::Error&) {
    }
    tok.add_special_tokens({"<MEM0>", "<MEM1>", "<AE>", "<ENC>", "<SEP>"});
    exercise_tokenizer(tok, text + "<MEM0><MEM1><SEP>" + text);
  });
  return 0;
}
