// clara_bench: times CLaRa's work on a model with random weights and prints one JSON line per
// measurement: compression throughput (documents/s), a stage-1 training step (forward, backward,
// AdamW), and answer latency (prefill and decode). With --memory-7b, the resident memory of a
// Mistral-7B-shaped CLaRa (sparse synthetic checkpoint, bf16) with three adapters.
// scripts/bench_clara.sh runs it next to the same work in transformers + peft.
#include <hrmclara/clara.h>
#include <hrmclara/clara_data.h>
#include <hrmclara/cli.h>
#include <hrmclara/device.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/info.h>
#include <hrmclara/llm.h>
#include <hrmclara/optim.h>
#include <hrmclara/tensor_io.h>

#include <torch/torch.h>

#include <chrono>
#include <functional>
#include <iostream>

using namespace hrmclara;
using namespace hrmclara::clara;

namespace {

double seconds_of(const std::function<void()>& f, int repeats) {
  f();  // warm-up
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

// Text of `words` words from a fixed list, the k-th call's words chosen by a formula that
// scripts/bench_clara_reference.py repeats, so both sides time the same token counts.
std::string synthetic_text(int& calls, int words) {
  static const char* const kWords[] = {"the", "river", "license", "program", "city", "north", "software", "free",
                                       "copy", "flows", "through", "keeps", "changed", "version", "shared", "users",
                                       "document", "question", "answer", "memory", "alps", "bank", "modify", "study"};
  const int k = calls++;
  std::string out;
  for (int i = 0; i < words; ++i) out += (i ? " " : "") + std::string(kWords[(k * 31 + i * 7 + (i * i) % 5) % 24]);
  return out + ".";
}

Json line_of(const std::string& what, const c10::ScalarType dtype, int threads) {
  return Json{{"bench", what},
              {"implementation", "hrmclara " + version()},
              {"dtype", dtype_name(dtype)},
              {"threads", threads},
              {"cpu_capability", cpu_info().aten_capability},
              {"native_bfloat16", cpu_info().native_bfloat16}};
}

int run_memory_7b(const ArgParser& args, int threads) {
  // Mistral-7B-Instruct-v0.2's shapes, CR 16 (n = 16), LoRA r 16: upstream's released compression-16.
  LlmConfig c = LlmConfig::load(args.require("tokenizer") + "/config.json");
  c.vocab_size = 32000, c.hidden_size = 4096, c.intermediate_size = 14336, c.num_hidden_layers = 32;
  c.num_attention_heads = 32, c.num_key_value_heads = 8, c.head_dim = 128, c.rope_theta = 1e6, c.sliding_window = 0;
  const std::string dir = args.require("work-dir") + "/mistral-7b";
  write_sparse_llm_checkpoint(dir, c, c10::kBFloat16, 3);
  for (const char* f : {"tokenizer.model", "tokenizer_config.json"}) copy_file(args.get("tokenizer") + "/" + f, dir + "/" + f);
  const double before = peak_rss_mb();
  ClaraConfig cfg;
  cfg.compr_rate = 16;
  cfg.doc_max_length = 256;
  cfg.lora_r = 16;
  cfg.generation_top_k = 5;
  cfg.training_stage = "stage2";  // decoder, encoder and query-reasoner adapters
  ClaraLoadOptions o;
  o.dtype = c10::kBFloat16;
  const auto t0 = std::chrono::steady_clock::now();
  const auto model = ClaraModel::create(dir, cfg, o);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  int64_t adapter_params = 0;
  for (const auto& name : model.adapter_names())
    for (const auto& t : model.adapter(name).parameters()) adapter_params += t.numel();
  Json line = line_of("memory_7b", c10::kBFloat16, threads);
  line["parameters"] = c.parameter_count();
  line["adapters"] = model.adapter_names();
  line["adapter_parameters"] = adapter_params;
  line["vocab_after_resize"] = model.base().config().vocab_size;
  line["load_s"] = load_s;
  line["rss_before_mb"] = before;
  line["peak_rss_mb"] = peak_rss_mb();
  std::cout << line.dump() << std::endl;
  remove_tree(dir);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return run_main("clara_bench", [&] {
    ArgParser args("clara_bench",
                   "(--model DIR | --config config.json --tokenizer DIR) [--what compress,train,answer] [--dtype D]\n"
                   "       [--docs N] [--doc-tokens T] [--compr-rate R] [--top-k K] [--new-tokens N] [--repeats R]\n"
                   "       clara_bench --memory-7b --tokenizer DIR --work-dir DIR");
    args.option("model", "a base model directory (config.json, safetensors, tokenizer.model)")
        .option("config", "a config.json: the base gets random weights (e.g. models/llm/synthetic-100m.json)")
        .option("tokenizer", "with --config: where tokenizer.model (and tokenizer_config.json) come from")
        .option("work-dir", "where the random base (and the sparse 7B checkpoint) are written", "/tmp")
        .option("what", "comma-separated: compress, train, answer", "compress,train,answer")
        .option("dtype", std::string(kDtypeChoices) + "; auto: bfloat16 where the device runs it natively, else float32", "auto")
        .option("docs", "documents compressed per timing", "32")
        .option("doc-tokens", "doc_max_length: tokens per document", "256")
        .option("compr-rate", "compression rate (n = doc-tokens / rate memory vectors)", "32")
        .option("top-k", "documents per question when answering", "5")
        .option("batch", "documents per compressor forward; questions per training micro-batch", "8")
        .option("new-tokens", "tokens generated per answer", "32")
        .option("repeats", "timed repetitions (the best is reported)", "3")
        .flag("memory-7b", "report the resident memory of a Mistral-7B-shaped CLaRa with three adapters instead")
        .common_options();
    if (!args.parse(argc, argv, 0)) return 0;
    const int threads = configure_threads(static_cast<int>(args.get_int("threads")));
    if (args.has("memory-7b")) return run_memory_7b(args, threads);
    if (args.has("model") == args.has("config")) throw UsageError("give exactly one of --model and --config");
    const auto device = resolve_device(args.get("device"));
    const int repeats = static_cast<int>(args.get_int("repeats"));
    std::string base = args.get("model");
    const LlmConfig declared = LlmConfig::load(args.has("model") ? base + "/config.json" : args.get("config"));
    const auto dtype = resolve_dtype(args.get("dtype"), device, declared.torch_dtype);
    if (args.has("config")) {
      base = args.get("work-dir") + "/clara-bench-base";
      write_random_llm(base, declared, dtype, 0, args.require("tokenizer"));
    }
    ClaraConfig cfg;
    cfg.doc_max_length = args.get_int("doc-tokens");
    cfg.compr_rate = args.get_int("compr-rate");
    cfg.generation_top_k = args.get_int("top-k");
    cfg.lora_r = 16;
    cfg.lora_dropout = 0.0;
    cfg.training_stage = "stage1";
    ClaraLoadOptions o;
    o.dtype = dtype;
    o.device = device;
    auto model = ClaraModel::create(base, cfg, o);
    const int64_t batch = args.get_int("batch");
    int rng = 0;  // synthetic_text calls so far
    // Documents long enough to fill doc_max_length tokens.
    std::vector<std::string> docs;
    for (int64_t i = 0; i < args.get_int("docs"); ++i) docs.push_back(synthetic_text(rng, static_cast<int>(cfg.doc_max_length)));
    const auto what = args.get("what");
    const auto wants = [&](const char* w) { return what.find(w) != std::string::npos; };

    if (wants("compress")) {
      const double s = seconds_of([&] { model.compress(docs, batch); }, repeats);
      Json line = line_of("compress", dtype, threads);
      line["documents"] = docs.size();
      line["doc_tokens"] = cfg.doc_max_length;
      line["memory_tokens"] = cfg.mem_tokens();
      line["batch"] = batch;
      line["seconds"] = s;
      line["documents_per_s"] = static_cast<double>(docs.size()) / s;
      line["peak_rss_mb"] = peak_rss_mb();
      std::cout << line.dump() << std::endl;
    }
    if (wants("train")) {
      // Upstream's stage 1: one document per row, a QA target; both adapters and the memory rows trained.
      std::vector<ClaraRow> rows;
      for (int64_t i = 0; i < batch; ++i) {
        ClaraRow r;
        r.source = "bench:" + std::to_string(i);
        r.docs = {docs[static_cast<size_t>(i) % docs.size()]};
        r.questions = {synthetic_text(rng, 8), synthetic_text(rng, 8)};
        r.answers = {synthetic_text(rng, 12), synthetic_text(rng, 12)};
        rows.push_back(r);
      }
      ClaraCollateOptions co;
      co.doc_max_length = static_cast<int>(cfg.doc_max_length);
      co.compr_rate = static_cast<int>(cfg.compr_rate);
      co.generation_top_k = 1;
      PyRandom py(0);
      const auto b = clara_collate(model.tokenizer(), rows, ClaraStage::kStage1, co, py);
      auto tensor = [&](const IdMatrix& m) { return at::tensor(m.data, at::kLong).view({m.rows, m.cols}); };
      ClaraTensors t{tensor(b.enc_input_ids), tensor(b.enc_attention_mask), tensor(b.dec_input_ids), tensor(b.dec_attention_mask),
                     tensor(b.labels), at::Tensor(), at::Tensor(), 1};
      auto params = model.prepare_training("stage1");
      std::vector<at::Tensor> trainable;
      for (auto& [name, p] : params) trainable.push_back(p);
      AdamW adamw(params, AdamW::Options{1e-4, 0.9, 0.95, 1e-8, 0.0});
      const double s = seconds_of(
          [&] {
            adamw.zero_grad();
            model.stage_forward("stage1", t, 0.1, true).total_loss.backward();
            clip_grad_norm(trainable, 1.0);
            adamw.step();
          },
          repeats);
      Json line = line_of("train_step_stage1", dtype, threads);
      line["micro_batch"] = batch;
      line["decoder_tokens"] = b.dec_input_ids.cols;
      line["ms_per_step"] = 1000.0 * s;
      line["peak_rss_mb"] = peak_rss_mb();
      std::cout << line.dump() << std::endl;
    }
    if (wants("answer")) {
      const int64_t k = cfg.generation_top_k;
      c10::InferenceMode inference;
      const auto memory = model.compress(std::vector<std::string>(docs.begin(), docs.begin() + k), batch);
      GenerationOptions g;
      g.max_new_tokens = args.get_int("new-tokens");
      g.stop_at_eos = false;
      ClaraAnswer best;
      double best_total = 1e30;
      for (int r = 0; r <= repeats; ++r) {
        const auto a = model.answer({synthetic_text(rng, 10) + "?"}, memory, g);
        if (r > 0 && a.prefill_seconds + a.decode_seconds < best_total) {
          best_total = a.prefill_seconds + a.decode_seconds;
          best = a;
        }
      }
      Json line = line_of("answer", dtype, threads);
      line["documents"] = k;
      line["new_tokens"] = g.max_new_tokens;
      line["prefill_ms"] = 1000.0 * best.prefill_seconds;
      line["decode_tokens_per_s"] = best.decode_steps > 0 ? static_cast<double>(best.decode_steps) / best.decode_seconds : 0.0;
      line["answer_ms"] = 1000.0 * best_total;
      line["peak_rss_mb"] = peak_rss_mb();
      std::cout << line.dump() << std::endl;
    }
    if (args.has("config")) remove_tree(base);
    return 0;
  });
}
