// CLaRa's JSONL training data (src/clara/clara_data.cpp): read_clara_rows for each stage, strict
// and with skip_bad_rows, then the collate of the rows that were read, with CLaRa's tokenizer
// (the clara-train fixture's folder) and small budgets so that truncation paths run.
// Seeds: the stage*.jsonl fixtures and hand-made rows (fuzz/seeds.py).
#include "fuzz_common.h"

#include <hrmclara/clara_data.h>

#include <algorithm>
#include <memory>

namespace {
std::unique_ptr<hrmclara::LlmTokenizer> g_tok;
constexpr int kMem = 4;  // doc_max_length 16 / compr_rate 4
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  using namespace hrmclara_fuzz;
  try {
    g_tok = std::make_unique<hrmclara::LlmTokenizer>(
        hrmclara::load_clara_tokenizer(source_dir() + "/tests/fixtures/clara-train/ckpt_stage1", kMem));
  } catch (const std::exception& e) {
    die(std::string("cannot load the CLaRa tokenizer: ") + e.what());
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace hrmclara_fuzz;
  const std::string path = WorkDir::get().file("rows.jsonl");
  write_file(path, data, size);
  using hrmclara::ClaraStage;
  for (ClaraStage stage : {ClaraStage::kStage1, ClaraStage::kStage1_2, ClaraStage::kStage2}) {
    expect_typed_errors("read_clara_rows", [&] { (void)hrmclara::read_clara_rows(path, stage); });
    expect_typed_errors("read_clara_rows (skip_bad_rows)", [&] {
      hrmclara::ClaraReadOptions options;
      options.skip_bad_rows = true;
      options.max_rows = 8;
      const auto result = hrmclara::read_clara_rows(path, stage, options);
      if (result.rows.size() + result.bad_rows + result.blank_lines > result.lines)
        die("read_clara_rows: more rows than lines");
      if (result.rows.empty()) return;
      for (auto truncation : {hrmclara::ClaraTruncation::kKeepAnswer, hrmclara::ClaraTruncation::kRight}) {
        hrmclara::ClaraCollateOptions o;
        o.doc_max_length = 16;
        o.compr_rate = 4;
        o.generation_top_k = static_cast<int>(std::min<size_t>(std::max<size_t>(result.rows[0].docs.size(), 1), 4));
        o.dec_max_len = 96;
        o.truncation = truncation;
        hrmclara::PyRandom rng(7);
        try {
          const auto batch = hrmclara::clara_collate(*g_tok, result.rows, stage, o, rng);
          if (batch.dec_input_ids.data.size() != static_cast<size_t>(batch.dec_input_ids.rows * batch.dec_input_ids.cols))
            die("clara_collate: decoder ids do not fill their matrix");
        } catch (const hrmclara::Error&) {
        }
      }
    });
  }
  return 0;
}
