// The error contract (include/hrmclara/errors.h, README "Tools"): every tool reports bad input as
// exactly one stderr line "<tool>: error: ..." naming the file or field, and exits with the code of
// its class. (Errors found only after a model has loaded run with --log-level warn: at the default
// level the tools log the load on stderr first.) This walks a table of bad inputs, built here, through every tool; each run is bounded
// by `timeout`, so a hang fails the test instead of stalling it.
#include "hostile_inputs.h"
#include "test_util.h"

#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/tensor_io.h>

#include <sys/stat.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cmath>
#include <set>

namespace hrmclara {
namespace {

using test::fixture;
using test::ScratchDir;

struct Case {
  std::string name;     // what is wrong
  std::string command;  // tool and arguments; {D} is the scratch folder, {F} the fixtures
  int code;             // the expected exit code
  std::string names;    // what the one stderr line must contain (the file or field)
};

std::string expand(std::string s, const std::string& dir) {
  for (const auto& [key, value] : {std::pair<std::string, std::string>{"{D}", dir}, {"{F}", std::string(HRMCLARA_TEST_FIXTURES)}})
    for (size_t at; (at = s.find(key)) != std::string::npos;) s.replace(at, key.size(), value);
  return s;
}

void copy_into(const std::string& from_dir, const std::string& to_dir, const std::vector<std::string>& names) {
  make_directories(to_dir);
  for (const auto& n : names) test::write_bytes(to_dir + "/" + n, test::read_bytes(from_dir + "/" + n));
}

// The bad inputs, each in its own file or folder under `d`.
void build_inputs(const ScratchDir& d) {
  const std::string hrm = fixture("hrm-reference"), llm = fixture("clara-reference");
  test::write_bytes(d / "garbage.pt", "not a zip at all");
  std::string deep = "\x80\x02";
  deep += std::string(50000, ']') + std::string(49999, 'a') + ".";
  test::write_pickle_archive(d / "deep.pt", deep);
  ::mkfifo((d / "fifo").c_str(), 0600);

  // HRM checkpoints beside their all_config.yaml: a pickle that contains itself, an alias bomb, a
  // flipped byte, a NaN weight.
  copy_into(hrm, d / "hrm-selfref", {"all_config.yaml"});
  test::write_pickle_archive(d / "hrm-selfref/step_0", std::string("\x80\x02]q\x00h\x00" "a.", 9));
  copy_into(hrm, d / "hrm-bomb", {"step_0"});
  const std::string yaml = test::yaml_alias_bomb();
  test::write_bytes(d / "hrm-bomb/all_config.yaml", yaml);
  copy_into(hrm, d / "hrm-nan", {"all_config.yaml"});
  auto weights = read_torch_save(hrm + "/step_0");
  NamedTensors with_nan;
  std::string poisoned;
  for (auto [name, t] : weights) {
    t = t.clone();
    if (poisoned.empty() && t.is_floating_point() && name.find("lm_head") != std::string::npos) {
      t.view(-1)[0] = NAN;
      poisoned = name;
    }
    with_nan.emplace_back(name, t);
  }
  ASSERT_FALSE(poisoned.empty());
  write_torch_save(d / "hrm-nan/step_0", with_nan);
  copy_into(hrm, d / "hrm-flip", {"all_config.yaml", "step_0"});
  {
    std::string bytes = test::read_bytes(d / "hrm-flip/step_0");
    bytes[bytes.size() / 2] ^= 0x10;  // inside the largest storage record
    test::write_bytes(d / "hrm-flip/step_0", bytes);
  }
  // HRM batches: a token above 2^32 (it was narrowed to 1 and ran), a label and a puzzle id out of
  // range, a wrong sequence length.
  auto batch = read_safetensors(hrm + "/batch.safetensors");
  auto with = [&](const std::string& key, const std::function<torch::Tensor(torch::Tensor)>& change) {
    NamedTensors out;
    for (const auto& [name, t] : batch) out.emplace_back(name, name == key ? change(t.to(torch::kLong).clone()) : t);
    return out;
  };
  write_safetensors(d / "batch-wide.st", with("inputs", [](torch::Tensor t) { t[0][0] = (int64_t{1} << 32) + 1; return t; }));
  write_safetensors(d / "batch-label.st", with("labels", [](torch::Tensor t) { t[1][2] = 5000; return t; }));
  write_safetensors(d / "batch-puzzle.st", with("puzzle_identifiers", [](torch::Tensor t) { t[0] = -3; return t; }));
  NamedTensors short_batch;
  for (const auto& [name, t] : batch) short_batch.emplace_back(name, name == "puzzle_identifiers" ? t : t.narrow(1, 0, 5).contiguous());
  write_safetensors(d / "batch-short.st", short_batch);

  // LLM model folders: config.json a link to /dev/zero, a config field of the wrong type, a NaN
  // weight; inputs with an id outside the vocabulary and NaN embeddings.
  const std::vector<std::string> model_files = {"config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
                                                "model-00002-of-00002.safetensors", "tokenizer.model", "tokenizer_config.json"};
  make_directories(d / "llm-zero");
  ::symlink("/dev/zero", (d / "llm-zero/config.json").c_str());
  copy_into(llm, d / "llm-badfield", model_files);
  std::string config = test::read_bytes(llm + "/config.json");
  config.replace(config.find("\"hidden_size\""), 13, "\"hidden_size\": \"wide\", \"unused_hidden_size\"");
  test::write_bytes(d / "llm-badfield/config.json", config);
  copy_into(llm, d / "llm-nan", model_files);
  auto shard = read_safetensors(llm + "/model-00001-of-00002.safetensors");
  NamedTensors poisoned_shard;
  for (auto [name, t] : shard) {
    t = t.clone();
    if (name == "model.layers.0.input_layernorm.weight") t[0] = INFINITY;  // every token passes it
    poisoned_shard.emplace_back(name, t);
  }
  write_safetensors(d / "llm-nan/model-00001-of-00002.safetensors", poisoned_shard);
  write_safetensors(d / "ids-big.st", {{"input_ids", torch::tensor({{1, 5, 100000}}, torch::kLong)}});
  write_safetensors(d / "ids-ok.st", {{"input_ids", torch::tensor({{1, 5, 7}}, torch::kLong)}});
  write_safetensors(d / "embeds-nan.st", {{"inputs_embeds", torch::full({1, 2, 64}, NAN)}});

  // CLaRa inputs: a malformed JSONL row, a PDF that is not one, a predictions file with a bad row.
  test::write_bytes(d / "rows.jsonl", R"({"data_type": "paraphrase", "answers": ["a"], "docs": ["d"]})" "\n"
                                     R"({"data_type": "qa", "question": 3, "answers": ["a"], "docs": ["d"]})" "\n");
  test::write_bytes(d / "broken.pdf", "%PDF-1.4\nthis is not a PDF body\n");
  test::write_bytes(d / "pred.jsonl", "{\"prediction\": \"a\", \"golden_answers\": [\"a\"]}\n[1, 2]\n");
}

const std::vector<Case>& cases() {
  static const std::vector<Case> table = {
      // 2: usage. Unknown flags, out-of-range common flags, sampling settings and bounds, all
      // checked before anything loads (the model paths here do not exist).
      {"unknown flag", "ckpt_inspect {F}/io/state_dict.pt --frobnicate", 2, "--frobnicate"},
      {"unknown flag", "hrm_infer --frobnicate", 2, "--frobnicate"},
      {"unknown flag", "hrm_train --frobnicate", 2, "--frobnicate"},
      {"unknown flag", "hrm_eval --frobnicate", 2, "--frobnicate"},
      {"unknown flag", "hrm_data sudoku --frobnicate", 2, "--frobnicate"},
      {"unknown flag", "hrm_bench --frobnicate", 2, "--frobnicate"},
      {"unknown flag", "hrmclara_info --frobnicate", 2, "--frobnicate"},
      {"unknown flag", "llm_tool generate --frobnicate", 2, "--frobnicate"},
      {"unknown flag", "llm_bench --frobnicate", 2, "--frobnicate"},
      {"unknown flag", "clara_infer compress --frobnicate", 2, "--frobnicate"},
      {"unknown flag", "clara_train --frobnicate", 2, "--frobnicate"},
      {"unknown flag", "clara_prepare --frobnicate", 2, "--frobnicate"},
      {"unknown flag", "clara_eval --frobnicate", 2, "--frobnicate"},
      {"unknown flag", "clara_bench --frobnicate", 2, "--frobnicate"},
      {"negative threads", "hrm_infer --threads -1 --checkpoint {D}/none --batch {D}/none --out {D}/o.st", 2, "--threads"},
      {"threads beyond int", "hrmclara_info --threads 99999999999", 2, "--threads"},
      {"threads beyond the cores", "hrm_train --threads 100000", 2, "--threads"},
      {"threads not a number", "llm_tool generate --model {D}/none --prompt x --threads many", 2, "--threads"},
      {"zero temperature", "llm_tool generate --model {D}/none --prompt x --sample --temperature 0", 2, "temperature"},
      {"top_p above one", "llm_tool generate --model {D}/none --prompt x --sample --top-p 1.5", 2, "top_p"},
      {"unbounded max-new-tokens", "llm_tool generate --model {D}/none --prompt x --max-new-tokens 99999999", 2, "max_new_tokens"},
      {"unbounded ACT steps", "hrm_infer --checkpoint {D}/none --batch {D}/none --out {D}/o.st --steps 100000", 2, "--steps"},
      // 3: I/O. Missing files, a FIFO, a link to /dev/zero, a directory.
      {"missing checkpoint", "ckpt_inspect {D}/absent.pt", 3, "absent.pt"},
      {"FIFO checkpoint", "ckpt_inspect {D}/fifo", 3, "fifo: is a FIFO"},
      {"FIFO batch", "hrm_infer --checkpoint {F}/hrm-reference/step_0 --batch {D}/fifo --out {D}/o.st", 3, "fifo: is a FIFO"},
      {"config.json is /dev/zero", "llm_tool info --model {D}/llm-zero", 3, "config.json: is a device"},
      {"directory as data", "clara_eval --predictions {D}", 3, "is a directory"},
      // 4: corrupt or wrong format.
      {"not a zip", "ckpt_inspect {D}/garbage.pt", 4, "garbage.pt"},
      {"pickle nested 50,000 deep", "ckpt_inspect {D}/deep.pt", 4, "deep.pt: data.pkl: nested more than"},
      {"pickle containing itself", "hrm_infer --checkpoint {D}/hrm-selfref/step_0 --dataset-json {F}/hrm-reference/dataset.json --batch {F}/hrm-reference/batch.safetensors --out {D}/o.st",
       4, "step_0: data.pkl: an object contains itself"},
      {"YAML alias bomb", "hrm_infer --checkpoint {D}/hrm-bomb/step_0 --dataset-json {F}/hrm-reference/dataset.json --batch {F}/hrm-reference/batch.safetensors --out {D}/o.st", 4,
       "all_config.yaml: YAML expands"},
      {"flipped checkpoint byte", "hrm_infer --checkpoint {D}/hrm-flip/step_0 --dataset-json {F}/hrm-reference/dataset.json --batch {F}/hrm-reference/batch.safetensors --out {D}/o.st",
       4, "fails its CRC-32 check"},
      {"token above 2^32", "hrm_infer --checkpoint {F}/hrm-reference/step_0 --batch {D}/batch-wide.st --out {D}/o.st", 4,
       "inputs[0, 0] = 4294967297 is outside"},
      {"label out of range", "hrm_infer --checkpoint {F}/hrm-reference/step_0 --batch {D}/batch-label.st --out {D}/o.st", 4,
       "labels[1, 2] = 5000 is outside"},
      {"puzzle id out of range", "hrm_infer --checkpoint {F}/hrm-reference/step_0 --batch {D}/batch-puzzle.st --out {D}/o.st", 4,
       "puzzle_identifiers[0] = -3 is outside"},
      {"token id out of the vocabulary", "llm_tool forward --model {F}/clara-reference --in {D}/ids-big.st --out {D}/o.st", 4,
       "ids-big.st: tensor 'input_ids' holds 100000"},
      {"malformed JSONL row", "clara_train --stage stage1 --base {F}/clara-reference --data {D}/rows.jsonl --out {D}/run --max-steps 1 --log-level warn", 4,
       "rows.jsonl:2"},
      {"not a PDF", "clara_prepare --base {F}/clara-reference --input {D}/broken.pdf --out {D}/docs.jsonl", 4, "broken.pdf"},
      {"bad predictions row", "clara_eval --predictions {D}/pred.jsonl", 4, "pred.jsonl:2"},
      // 5: config.
      {"config field of the wrong type", "llm_tool info --model {D}/llm-badfield", 5, "field 'hidden_size'"},
      {"unknown HRM config key", "hrm_train no_such_key=1 --max-steps 1 --out {D}/hrm-run", 5, "no_such_key"},
      {"unknown CLaRa config key", "clara_train --stage stage1 --print-config no_such_key=1", 5, "no_such_key"},
      // 6: shapes.
      {"batch of the wrong length", "hrm_infer --checkpoint {F}/hrm-reference/step_0 --batch {D}/batch-short.st --out {D}/o.st", 6,
       "sequence length 5"},
      // 7: device.
      {"absent device", "hrm_infer --checkpoint {F}/hrm-reference/step_0 --batch {F}/hrm-reference/batch.safetensors --out {D}/o.st --device cuda:99",
       7, "cuda:99"},
      // hrmclara_serve: flags, key file and model checked before it listens (timeout 120 ends a
      // server that wrongly started).
      {"serve without a model", "hrmclara_serve", 2, "give a model"},
      {"serve on a port out of range", "hrmclara_serve --hrm {F}/sudoku-trm --port 70000", 2, "--port"},
      {"serve with a zero queue", "hrmclara_serve --hrm {F}/sudoku-trm --queue 0 --port 0", 2, "--queue"},
      {"serve a missing checkpoint", "hrmclara_serve --hrm {D}/none --port 0", 3, "{D}/none"},
      {"serve with a FIFO key file", "hrmclara_serve --hrm {F}/sudoku-trm --api-key-file {D}/fifo --port 0", 3, "fifo: is a FIFO"},
      {"serve CLaRa without its base", "hrmclara_serve --clara {F}/clara-train/ckpt_stage2 --port 0", 2, "--base"},
      {"serve a NaN HRM weight", "hrmclara_serve --hrm {D}/hrm-nan/step_0 --dataset-json {F}/hrm-reference/dataset.json --port 0", 8, "lm_head"},
      // 8: NaN/Inf.
      {"NaN HRM weight", "hrm_infer --checkpoint {D}/hrm-nan/step_0 --dataset-json {F}/hrm-reference/dataset.json --batch {F}/hrm-reference/batch.safetensors --out {D}/o.st", 8, "lm_head"},
      {"Inf LLM weight", "llm_tool forward --model {D}/llm-nan --in {D}/ids-ok.st --out {D}/o.st --log-level warn", 8, "model.layers.0.input_layernorm.weight"},
      {"Inf LLM weight, generating", "llm_tool generate --model {D}/llm-nan --prompt 'The Licensor' --max-new-tokens 4 --log-level warn", 8,
       "model.layers.0.input_layernorm.weight"},
      {"NaN input embeddings", "llm_tool forward --model {F}/clara-reference --in {D}/embeds-nan.st --out {D}/o.st", 8,
       "embeds-nan.st: tensor 'inputs_embeds'"},
  };
  return table;
}

TEST(ErrorContract, EveryToolReportsBadInputAsOneLineWithItsClassCode) {
  ScratchDir dir;
  build_inputs(dir);
  if (HasFatalFailure()) return;
  std::set<std::string> tools;
  for (const auto& c : cases()) {
    const std::string command = expand(c.command, dir.path());
    const std::string tool = command.substr(0, command.find(' '));
    tools.insert(tool);
    const auto r = test::run_command("timeout 120 " + test::tool(tool) + command.substr(tool.size()), dir.path());
    SCOPED_TRACE(c.name + ": " + command);
    EXPECT_EQ(r.exit_code, c.code) << r.err;
    EXPECT_EQ(test::count_lines(r.err), 1) << r.err;
    EXPECT_EQ(r.err.rfind(tool + ": error: ", 0), 0u) << r.err;
    EXPECT_NE(r.err.find(expand(c.names, dir.path())), std::string::npos) << r.err;
    // No failed run leaves an output behind.
    EXPECT_FALSE(file_exists(dir / "o.st")) << "o.st written";
  }
  // Every tool is in the table.
  for (const char* t : {"ckpt_inspect", "hrm_infer", "hrm_train", "hrm_eval", "hrm_data", "hrm_bench", "hrmclara_info", "llm_tool",
                        "llm_bench", "clara_infer", "clara_train", "clara_prepare", "clara_eval", "clara_bench", "hrmclara_serve"})
    EXPECT_TRUE(tools.count(t)) << t << " has no case";
}

TEST(ErrorContract, ChatGenerationOnAModelWithMoreRowsThanTokensRunsToTheEnd) {
  // clara-reference has 647 embedding rows and 640 tokens: greedy chat generation emitted id 641 and
  // llm_tool stopped with "token id 641 is outside the vocabulary".
  ScratchDir dir;
  const auto r = test::run_command("timeout 120 " + test::tool("llm_tool") + " generate --model " + fixture("clara-reference") +
                                       " --prompt hi --chat --greedy --ignore-eos --max-new-tokens 48 --log-level warn",
                                   dir.path());
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(r.err.empty()) << r.err;
}

}  // namespace
}  // namespace hrmclara
