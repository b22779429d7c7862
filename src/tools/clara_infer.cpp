// clara_infer: CLaRa from the command line.
//   step        one training micro-batch of a stage, every tensor written (the parity contract)
//   compress    documents -> a memory index (compressed once, searched many times)
//   answer      a question answered from given documents or index entries
//   ask         end to end: the query reasoner retrieves from the index, the decoder answers
//   paraphrase  the Base model's paraphrase of documents
#include <hrmclara/clara.h>
#include <hrmclara/clara_data.h>
#include <hrmclara/clara_index.h>
#include <hrmclara/cli.h>
#include <hrmclara/config.h>
#include <hrmclara/device.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/log.h>
#include <hrmclara/optim.h>
#include <hrmclara/tensor_io.h>

#include <torch/torch.h>

#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

using namespace hrmclara;
using namespace hrmclara::clara;

namespace {

const char* kUsage =
    "usage: clara_infer <command> [options]   (clara_infer <command> --help for its options)\n"
    "\n"
    "commands:\n"
    "  step --stage stage1|stage1_2|stage2 --base BASE_DIR --init DIR --data ROWS.jsonl --out OUT.safetensors\n"
    "       [--fresh-adapters FILE] [key=value ...] [--adamw-step] [--dtype float32|bfloat16] [--device D]\n"
    "  compress --base BASE_DIR --model DIR --docs DOCS.jsonl --index OUT_INDEX\n"
    "  answer --base BASE_DIR --model DIR (--docs DOCS.jsonl | --index IDX --ids 3,7) (--question Q | --questions FILE)\n"
    "  ask --base BASE_DIR --model DIR --index IDX (--question Q | --questions FILE) [--top-k K]\n"
    "  paraphrase --base BASE_DIR --model DIR --docs DOCS.jsonl [--template I]\n"
    "\n"
    "DOCS.jsonl: one document per line, {\"id\": ..., \"text\": ...} (\"source\" optional), or upstream's rows\n"
    "({\"docs\" | \"context\" | \"content\": [...]}: every document of the row, ids LINE-J).\n";

// Options every model command takes.
void model_options(ArgParser& a, const std::string& default_dtype) {
  a.option("base", "the base model directory (config.json, safetensors, tokenizer.model)")
      .option("dtype", std::string(kDtypeChoices) + "; auto: the base's torch_dtype where the device runs it natively", default_dtype)
      .common_options();
}

c10::Device setup_device(const ArgParser& a) {
  configure_threads(static_cast<int>(a.get_int("threads")));
  return resolve_device(a.get("device"));
}

c10::ScalarType model_dtype(const ArgParser& a, const c10::Device& device) {
  const std::string base = a.require("base");
  return resolve_dtype(a.get("dtype"), device, LlmConfig::load(base + "/config.json").torch_dtype);
}

std::vector<std::string> split_commas(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

std::vector<std::string> read_questions(const ArgParser& a) {
  if (a.has("question") == a.has("questions")) throw UsageError("give exactly one of --question and --questions");
  if (a.has("question")) return {a.get("question")};
  require_regular_file(a.get("questions"));
  std::ifstream in(a.get("questions"));
  if (!in) throw IoError(a.get("questions") + ": cannot open");
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line))
    if (line.find_first_not_of(" \t\r") != std::string::npos) out.push_back(line);
  if (out.empty()) throw FormatError(a.get("questions") + ": holds no question");
  return out;
}

void decoding_options(ArgParser& a) {
  a.option("max-new-tokens", "tokens generated per answer (default: the config's max_new_tokens)")
      .flag("sample", "sampled decoding instead of greedy")
      .option("temperature", "sampling temperature", "1.0")
      .option("top-p", "sampling: nucleus probability mass", "1.0")
      .option("sample-top-k", "sampling: keep the K most likely tokens (0 = all)", "0")
      .option("seed", "sampling seed", "0")
      .flag("json", "one JSON line per question instead of text");
}

GenerationOptions generation_options(const ArgParser& a, const ClaraModel& model) {
  GenerationOptions o;
  o.max_new_tokens = a.has("max-new-tokens") ? a.get_int("max-new-tokens") : model.config().max_new_tokens;
  if (o.max_new_tokens < 1) throw UsageError("--max-new-tokens must be >= 1");
  o.do_sample = a.has("sample");
  o.temperature = a.get_double("temperature");
  o.top_p = a.get_double("top-p");
  o.top_k = a.get_int("sample-top-k");
  o.seed = static_cast<uint64_t>(a.get_int("seed"));
  return o;
}

ClaraModel load_model(const ArgParser& a, const c10::Device& device) {
  ClaraLoadOptions o;
  o.device = device;
  o.dtype = model_dtype(a, device);
  o.pure_inference = true;  // inference uses every adapter the checkpoint holds
  auto model = ClaraModel::load(a.require("model"), a.require("base"), o);
  return model;
}

// ---- step -----------------------------------------------------------------------------------------

at::Tensor to_tensor(const IdMatrix& m) { return at::tensor(m.data, at::kLong).view({m.rows, m.cols}); }

int cmd_step(int argc, char** argv) {
  ArgParser a("clara_infer step",
              "--stage stage1|stage1_2|stage2 --base BASE_DIR --init DIR --data ROWS.jsonl --out OUT.safetensors\n"
              "       [--fresh-adapters FILE] [key=value ...] [--adamw-step] [--dtype float32|bfloat16] [--device D]\n"
              "keys: generation_top_k, doc_max_length, compr_rate, lora_r, lora_alpha (CLaRa config); dec_max_len\n"
              "      (decoder length and stage-2 query length, 2048), truncation (right | keep_answer; right),\n"
              "      paraphrase_seed (Python random seed of the paraphrase template choice, 20240611),\n"
              "      mse_weight (0.1 in stage1 / stage1_2, 0 in stage2), lr (1e-4), max_grad_norm (1.0)");
  a.option("stage", "stage1, stage1_2 or stage2 (upstream's names; compress-pretrain, instruction-tune, end-to-end)")
      .option("init", "checkpoint whose values initialise the stage (upstream layout or ours)")
      .option("data", "JSONL rows of the stage's format; all of them form the micro-batch")
      .option("out", "safetensors to write every tensor to")
      .option("fresh-adapters", "safetensors with the values of freshly created adapters, by PEFT runtime name")
      .flag("adamw-step", "clip the gradient norm to max_grad_norm, take one AdamW step, and run the batch again");
  model_options(a, "float32");
  if (!a.parse(argc, argv)) return 0;
  const auto device = setup_device(a);
  const std::string stage = canonical_stage(a.require("stage"));
  const std::string base = a.require("base"), init = a.require("init"), out_path = a.require("out");

  // key=value: CLaRa config fields go to the model, the rest are this command's.
  std::vector<std::string> config_overrides;
  Json step = {{"dec_max_len", 2048}, {"truncation", "right"}, {"paraphrase_seed", 20240611},
               {"mse_weight", stage == "stage2" ? 0.0 : 0.1}, {"lr", 1e-4}, {"max_grad_norm", 1.0}};
  std::vector<std::string> step_overrides;
  for (const auto& kv : a.positionals()) {
    const auto eq = kv.find('=');
    if (eq == std::string::npos) throw UsageError("expected key=value, got '" + kv + "'");
    const std::string key = kv.substr(0, eq);
    if (step.contains(key)) step_overrides.push_back(kv);
    else if (key == "generation_top_k" || key == "doc_max_length" || key == "compr_rate" || key == "lora_r" || key == "lora_alpha")
      config_overrides.push_back(kv);
    else
      throw UsageError("unknown key '" + key + "' (see --help)");
  }
  step = apply_overrides(step, step_overrides);

  ClaraLoadOptions o;
  o.device = device;
  o.dtype = resolve_dtype(a.get("dtype"), device, "float32");
  if (o.dtype != c10::kFloat && o.dtype != c10::kBFloat16) throw UsageError("--dtype must be float32 or bfloat16 for step");
  o.training_stage = stage;
  o.pure_inference = false;
  o.config_overrides = config_overrides;
  if (a.has("fresh-adapters")) o.fresh_adapter_values = read_safetensors(a.get("fresh-adapters"));
  auto model = ClaraModel::load(init, base, o);
  const auto& cfg = model.config();

  ClaraCollateOptions co;
  co.doc_max_length = static_cast<int>(cfg.doc_max_length);
  co.compr_rate = static_cast<int>(cfg.compr_rate);
  co.generation_top_k = static_cast<int>(cfg.generation_top_k);
  co.dec_max_len = step["dec_max_len"].get<int>();
  co.truncation = parse_clara_truncation(step["truncation"].get<std::string>());
  const ClaraStage data_stage = parse_clara_stage(stage);
  ClaraReadOptions ro;
  if (data_stage != ClaraStage::kStage2) ro.num_docs = static_cast<int>(cfg.generation_top_k);
  const auto rows = read_clara_rows(a.require("data"), data_stage, ro).rows;
  PyRandom rng(step["paraphrase_seed"].get<int64_t>());
  const auto batch = clara_collate(model.tokenizer(), rows, data_stage, co, rng);
  if (batch.size() == 0) throw FormatError(a.get("data") + ": no row fits dec_max_len " + std::to_string(co.dec_max_len));

  ClaraTensors t;
  t.enc_ids = to_tensor(batch.enc_input_ids);
  t.enc_mask = to_tensor(batch.enc_attention_mask);
  t.dec_ids = to_tensor(batch.dec_input_ids);
  t.dec_mask = to_tensor(batch.dec_attention_mask);
  t.labels = to_tensor(batch.labels);
  if (data_stage == ClaraStage::kStage2) {
    t.query_ids = to_tensor(batch.query_input_ids);
    t.query_mask = to_tensor(batch.query_attention_mask);
  }
  t.docs_per_row = batch.num_docs.front();

  NamedTensors out;
  const std::string p = stage + ".";
  auto put = [&](const std::string& name, const at::Tensor& value) {
    out.emplace_back(p + name, value.detach().to(at::kCPU).contiguous().clone());  // later steps change tensors in place
  };
  put("enc_input_ids", t.enc_ids);
  put("enc_attention_mask", t.enc_mask);
  put("dec_input_ids", t.dec_ids);
  put("dec_attention_mask", t.dec_mask);
  put("labels", t.labels);
  if (t.query_ids.defined()) {
    put("query_input_ids", t.query_ids);
    put("query_attention_mask", t.query_mask);
  }
  // Freshly created adapters (stage1_2's decoder): their initial values.
  if (stage == "stage1_2")
    for (const auto& [name, value] : model.adapter(kDecoderAdapter).named_parameters()) put("init." + name, value);

  const auto params = model.prepare_training(stage);
  auto public_name = [](const std::string& name) {
    return name == "model.embed_tokens.weight[mem]" ? std::string("model.embed_tokens.weight") : name;
  };
  const double mse_weight = step["mse_weight"].get<double>();
  const auto r = model.stage_forward(stage, t, mse_weight, /*train=*/false);
  put("memory", r.memory.to(at::kFloat));
  put("splice_index", r.splice_index);
  put("target_index", r.target_index);
  put("logits_at_targets", r.logits_at_targets);
  put("loss", r.loss.to(at::kFloat));
  put("mse", r.mse.to(at::kFloat));
  put("total_loss", r.total_loss.to(at::kFloat));
  if (r.scores.defined()) {
    put("scores", r.scores);
    put("topk_idx", r.topk_idx);
    const int64_t k = cfg.generation_top_k;
    if (k < r.scores.size(1)) {
      const auto sorted = std::get<0>(r.scores.detach().sort(-1, /*descending=*/true));
      put("topk_gap", sorted.select(1, k - 1) - sorted.select(1, k));
    }
  }
  r.total_loss.backward();
  std::vector<at::Tensor> with_grad;
  NamedTensors named_with_grad;
  for (const auto& [name, param] : params) {
    if (!param.grad().defined()) continue;
    put("grad." + public_name(name), param.grad().to(at::kFloat));
    with_grad.push_back(param);
    named_with_grad.emplace_back(name, param);
  }
  if (a.has("adamw-step")) {
    // upstream: DeepSpeed's clipping to max_grad_norm, then FusedAdam in AdamW mode (betas 0.9 /
    // 0.95, eps 1e-8, weight decay 0), one micro-batch per step.
    const double norm = clip_grad_norm(with_grad, step["max_grad_norm"].get<double>());
    put("grad_norm", torch::tensor(norm, torch::kFloat));
    AdamW adamw(named_with_grad, AdamW::Options{step["lr"].get<double>(), 0.9, 0.95, 1e-8, 0.0});
    adamw.step();
    for (const auto& [name, param] : params) put("step." + public_name(name), param.to(at::kFloat));
    torch::NoGradGuard no_grad;
    const auto after = model.stage_forward(stage, t, mse_weight, false);
    put("after_step.loss", after.loss.to(at::kFloat));
    put("after_step.mse", after.mse.to(at::kFloat));
    put("after_step.total_loss", after.total_loss.to(at::kFloat));
  }
  write_safetensors(out_path, out);
  log_info(stage + ": loss " + std::to_string(r.loss.item<double>()) + ", mse " + std::to_string(r.mse.item<double>()) + "; " +
           std::to_string(out.size()) + " tensors written to " + out_path);
  return 0;
}

// ---- inference ------------------------------------------------------------------------------------

int cmd_compress(int argc, char** argv) {
  ArgParser a("clara_infer compress", "--base BASE_DIR --model DIR --docs DOCS.jsonl --index OUT_INDEX [--batch-size N]");
  a.option("model", "CLaRa checkpoint (upstream layout or ours)")
      .option("docs", "documents, one per JSONL line")
      .option("index", "index directory to create or append to")
      .option("batch-size", "documents per compressor forward", "8")
      .flag("replace", "re-compress documents whose id is already in the index (default: refuse)");
  model_options(a, "auto");
  if (!a.parse(argc, argv, 0)) return 0;
  const auto device = setup_device(a);
  const auto docs = read_clara_documents(a.require("docs"));
  auto model = load_model(a, device);
  const int64_t H = model.base().config().hidden_size;
  auto index = MemoryIndex::open_or_create(a.require("index"), model.mem_tokens(), H, model.base().dtype());
  std::vector<ClaraDocumentRecord> todo;
  size_t unchanged = 0;
  for (const auto& d : docs) {
    const auto doc = NewDocument::from_text(d.id, d.source, d.text);
    if (index.contains_id(d.id) && index.document(d.id).text_hash == doc.text_hash) {
      ++unchanged;  // already compressed from the same text
      continue;
    }
    todo.push_back(d);
  }
  if (!todo.empty()) {
    std::vector<std::string> texts;
    std::vector<NewDocument> entries;
    for (const auto& d : todo) {
      texts.push_back(d.text);
      entries.push_back(NewDocument::from_text(d.id, d.source, d.text));
    }
    const auto memory = model.compress(texts, a.get_int("batch-size"));
    AppendOptions ao;
    ao.replace_existing = a.has("replace");
    index.append(entries, memory.to(at::kCPU), ao);
  }
  log_info("compressed " + std::to_string(todo.size()) + " documents into " + a.get("index") + " (" +
           std::to_string(unchanged) + " already there with the same text; the index holds " + std::to_string(index.size()) + ")");
  std::cout << Json{{"compressed", todo.size()}, {"unchanged", unchanged}, {"index_size", index.size()}}.dump() << std::endl;
  return 0;
}

void print_answers(const ArgParser& a, const std::vector<std::string>& questions, const ClaraAnswer& ans,
                   const std::vector<std::vector<std::pair<std::string, double>>>& retrieved,
                   const std::vector<std::string>& documents) {
  for (size_t i = 0; i < questions.size(); ++i) {
    if (a.has("json")) {
      Json line = {{"question", questions[i]}, {"answer", ans.texts[i]}};
      if (!retrieved.empty()) {
        Json hits = Json::array();
        for (const auto& [id, score] : retrieved[i]) hits.push_back({{"id", id}, {"score", score}});
        line["retrieved"] = hits;
      }
      if (!documents.empty()) line["documents"] = documents;
      std::cout << line.dump() << std::endl;
    } else {
      if (!retrieved.empty()) {
        std::cout << "retrieved:";
        for (const auto& [id, score] : retrieved[i]) std::cout << " " << id << " (" << score << ")";
        std::cout << "\n";
      }
      std::cout << ans.texts[i] << std::endl;
    }
  }
}

int cmd_answer(int argc, char** argv) {
  ArgParser a("clara_infer answer",
              "--base BASE_DIR --model DIR (--docs DOCS.jsonl | --index IDX --ids 3,7) (--question Q | --questions FILE)");
  a.option("model", "CLaRa checkpoint (upstream layout or ours)")
      .option("docs", "the documents to answer from (all of them, in order)")
      .option("index", "a memory index made by clara_infer compress")
      .option("ids", "with --index: comma-separated document ids, in the order they go into the prompt")
      .option("question", "the question")
      .option("questions", "a file with one question per line (each answered from the same documents)");
  decoding_options(a);
  model_options(a, "auto");
  if (!a.parse(argc, argv, 0)) return 0;
  if (a.has("docs") == a.has("index")) throw UsageError("give exactly one of --docs and --index");
  if (a.has("index") != a.has("ids")) throw UsageError("--index and --ids go together");
  const auto questions = read_questions(a);
  const auto device = setup_device(a);
  std::vector<std::string> ids;
  std::vector<std::string> texts;
  if (a.has("docs"))
    for (const auto& d : read_clara_documents(a.get("docs"))) {
      ids.push_back(d.id);
      texts.push_back(d.text);
    }
  auto model = load_model(a, device);
  at::Tensor memory;
  if (a.has("index")) {
    const auto index = MemoryIndex::open(a.get("index"));
    ids = split_commas(a.get("ids"));
    if (ids.empty()) throw UsageError("--ids names no document");
    if (index.n() != model.mem_tokens() || index.hidden() != model.base().config().hidden_size)
      throw ShapeError(a.get("index") + ": vectors of n " + std::to_string(index.n()) + ", hidden " + std::to_string(index.hidden()) +
                       " do not fit this model (n " + std::to_string(model.mem_tokens()) + ")");
    memory = index.rows(ids).to(device, model.base().dtype());
  } else {
    memory = model.compress(texts);
  }
  const int64_t k = memory.size(0);
  const auto repeated = memory.unsqueeze(0).expand({static_cast<int64_t>(questions.size()), k, memory.size(1), memory.size(2)})
                            .reshape({-1, memory.size(1), memory.size(2)});
  const auto ans = model.answer(questions, repeated, generation_options(a, model));
  print_answers(a, questions, ans, {}, ids);
  return 0;
}

int cmd_ask(int argc, char** argv) {
  ArgParser a("clara_infer ask", "--base BASE_DIR --model DIR --index IDX (--question Q | --questions FILE) [--top-k K]");
  a.option("model", "CLaRa checkpoint (an end-to-end one has a query reasoner; others use the encoder)")
      .option("index", "a memory index made by clara_infer compress")
      .option("question", "the question")
      .option("questions", "a file with one question per line")
      .option("top-k", "documents retrieved and spliced (default: the config's generation_top_k)");
  decoding_options(a);
  model_options(a, "auto");
  if (!a.parse(argc, argv, 0)) return 0;
  const auto questions = read_questions(a);
  const auto device = setup_device(a);
  auto model = load_model(a, device);
  const auto index = MemoryIndex::open(a.require("index"));
  if (index.n() != model.mem_tokens() || index.hidden() != model.base().config().hidden_size)
    throw ShapeError(a.get("index") + ": vectors of n " + std::to_string(index.n()) + ", hidden " + std::to_string(index.hidden()) +
                     " do not fit this model (n " + std::to_string(model.mem_tokens()) + ")");
  const int64_t k = a.has("top-k") ? a.get_int("top-k") : model.config().generation_top_k;
  if (k < 1) throw UsageError("--top-k must be >= 1");
  if (k > index.size())
    throw UsageError("--top-k " + std::to_string(k) + " exceeds the " + std::to_string(index.size()) + " documents of " + a.get("index"));
  const auto queries = model.encode_queries(questions);
  const auto hits = index.search(queries.to(at::kCPU), k);
  std::vector<std::vector<std::pair<std::string, double>>> retrieved;
  std::vector<at::Tensor> memories;
  for (const auto& row : hits) {
    std::vector<std::string> ids;
    retrieved.emplace_back();
    for (const auto& h : row) {
      ids.push_back(h.id);
      retrieved.back().emplace_back(h.id, h.score);
    }
    memories.push_back(index.rows(ids));
  }
  const auto memory = at::cat(memories, 0).to(device, model.base().dtype());
  const auto ans = model.answer(questions, memory, generation_options(a, model));
  print_answers(a, questions, ans, retrieved, {});
  return 0;
}

int cmd_paraphrase(int argc, char** argv) {
  ArgParser a("clara_infer paraphrase", "--base BASE_DIR --model DIR --docs DOCS.jsonl [--template I] [--per-prompt K]");
  a.option("model", "CLaRa checkpoint (the Base, stage-1 model paraphrases)")
      .option("docs", "documents, one per JSONL line")
      .option("template", "which of upstream's 13 paraphrase instructions (0-12); default: drawn with --seed", "-1")
      .option("per-prompt", "documents per paraphrase prompt", "1");
  decoding_options(a);
  model_options(a, "auto");
  if (!a.parse(argc, argv, 0)) return 0;
  const auto device = setup_device(a);
  const auto docs = read_clara_documents(a.require("docs"));
  const int64_t per = a.get_int("per-prompt");
  if (per < 1 || static_cast<int64_t>(docs.size()) % per != 0)
    throw UsageError("--per-prompt must divide the " + std::to_string(docs.size()) + " documents");
  auto model = load_model(a, device);
  std::vector<std::string> texts;
  for (const auto& d : docs) texts.push_back(d.text);
  const auto memory = model.compress(texts);
  const auto ans = model.paraphrase(memory, per, static_cast<int>(a.get_int("template")), generation_options(a, model));
  for (size_t i = 0; i < ans.texts.size(); ++i) {
    if (a.has("json")) std::cout << Json{{"documents", docs[i * static_cast<size_t>(per)].id}, {"paraphrase", ans.texts[i]}}.dump() << std::endl;
    else std::cout << ans.texts[i] << std::endl;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return run_main("clara_infer", [&] {
    if (print_version_if_asked("clara_infer", argc, argv)) return 0;
    if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
      std::cout << kUsage;
      return argc < 2 ? 2 : 0;
    }
    const std::string command = argv[1];
    if (command == "step") return cmd_step(argc - 1, argv + 1);
    if (command == "compress") return cmd_compress(argc - 1, argv + 1);
    if (command == "answer") return cmd_answer(argc - 1, argv + 1);
    if (command == "ask") return cmd_ask(argc - 1, argv + 1);
    if (command == "paraphrase") return cmd_paraphrase(argc - 1, argv + 1);
    throw UsageError("unknown command '" + command + "' (step, compress, answer, ask or paraphrase)");
  });
}
