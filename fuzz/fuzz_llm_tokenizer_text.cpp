// Added-token matching and SentencePiece encoding of arbitrary text (src/llm/llm_tokenizer.cpp):
// the input is the text, encoded and decoded by two fixed tokenizers: CLaRa's (the clara-train
// fixture's folder with <MEM0>..<MEM3><AE><ENC><SEP> added, legacy) and a non-legacy one whose
// added tokens use lstrip, rstrip and normalized. Seeds: prompts and documents from the fixtures.
#include "fuzz_tokenizer_common.h"

#include <hrmclara/clara_data.h>

#include <memory>
#include <sys/stat.h>

namespace {
std::unique_ptr<hrmclara::LlmTokenizer> g_clara, g_strip;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  using namespace hrmclara_fuzz;
  const std::string fixtures = source_dir() + "/tests/fixtures/";
  try {
    g_clara = std::make_unique<hrmclara::LlmTokenizer>(
        hrmclara::load_clara_tokenizer(fixtures + "clara-train/ckpt_stage1", 4));
    const std::string dir = WorkDir::get().file("strip");
    ::mkdir(dir.c_str(), 0755);
    write_file(dir + "/tokenizer.model", read_whole_file(fixtures + "clara-reference/tokenizer.model"));
    write_file(dir + "/tokenizer_config.json", R"({
      "legacy": false, "add_bos_token": true, "add_eos_token": true,
      "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
      "added_tokens_decoder": {
        "0": {"content": "<unk>", "special": true, "normalized": false},
        "1": {"content": "<s>", "special": true, "normalized": false},
        "2": {"content": "</s>", "special": true, "normalized": false},
        "700": {"content": "[L]", "special": true, "lstrip": true, "normalized": false},
        "701": {"content": "[R]", "special": true, "rstrip": true, "normalized": false},
        "702": {"content": "[LR]", "special": false, "lstrip": true, "rstrip": true, "normalized": false},
        "703": {"content": "norm", "special": false, "normalized": true},
        "704": {"content": " sp ace", "special": false, "normalized": true},
        "705": {"content": "\u00e9t\u00e9", "special": false, "normalized": false}
      }})");
    g_strip = std::make_unique<hrmclara::LlmTokenizer>(dir);
  } catch (const std::exception& e) {
    die(std::string("cannot load the fixed tokenizers: ") + e.what());
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace hrmclara_fuzz;
  const std::string text(reinterpret_cast<const char*>(data), size);
  expect_typed_errors("clara tokenizer", [&] { exercise_tokenizer(*g_clara, text); });
  expect_typed_errors("lstrip/rstrip tokenizer", [&] { exercise_tokenizer(*g_strip, text); });
  expect_typed_errors("find_clara_control_text", [&] { (void)hrmclara::find_clara_control_text(text); });
  return 0;
}
