// llm_bench: prompt (prefill) and generation throughput of the decoder LLM, with the KV cache and
// with full recomputation, plus peak memory. Prints one JSON line.
#include <hrmclara/cli.h>
#include <hrmclara/device.h>
#include <hrmclara/errors.h>
#include <hrmclara/llm.h>
#include <hrmclara/tensor_io.h>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <nlohmann/json.hpp>
#include <torch/cuda.h>

#include <chrono>
#include <iostream>

using namespace hrmclara;

int main(int argc, char** argv) {
  return run_main("llm_bench", [&] {
    ArgParser args("llm_bench", "(--model DIR | --config config.json) [--dtype D] [--batch B] [--prompt-tokens T]\n"
                                "                 [--new-tokens N] [--repeats R] [--device D] [--threads T]");
    args.option("model", "Hugging Face model directory to load")
        .option("config", "a config.json: the model gets random weights (e.g. models/llm/synthetic-100m.json)")
        .option("dtype", std::string(kDtypeChoices) + "; auto: the model's torch_dtype (bfloat16 for --config) where the device runs it natively, else float32", "auto")
        .option("batch", "sequences per batch", "1")
        .option("prompt-tokens", "prompt length", "128")
        .option("new-tokens", "tokens generated per sequence", "32")
        .option("repeats", "timed repetitions (the best is reported)", "3")
        .flag("skip-recompute", "do not time generation without the KV cache")
        .common_options();
    if (!args.parse(argc, argv, 0)) return 0;
    if (args.has("model") == args.has("config")) throw UsageError("give exactly one of --model and --config");
    const int threads = configure_threads(static_cast<int>(args.get_int("threads")));
    LlmLoadOptions load;
    load.device = resolve_device(args.get("device"));
    const LlmConfig declared = LlmConfig::load(args.has("model") ? args.get("model") + "/config.json" : args.get("config"));
    load.dtype = resolve_dtype(args.get("dtype"), load.device, declared.torch_dtype);
    const int64_t B = args.get_int("batch"), T = args.get_int("prompt-tokens"), N = args.get_int("new-tokens"),
                  repeats = args.get_int("repeats");
    if (B < 1 || T < 1 || N < 2 || repeats < 1)
      throw UsageError("--batch, --prompt-tokens and --repeats must be >= 1 and --new-tokens >= 2");

    const auto t_load = std::chrono::steady_clock::now();
    const DecoderLM model = args.has("model") ? DecoderLM::load(args.get("model"), load)
                                              : DecoderLM::random(LlmConfig::load(args.get("config")), load, 0);
    const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
    const double rss_after_load = peak_rss_mb();
    const auto& c = model.config();
    auto gen = at::make_generator<at::CPUGeneratorImpl>(1);
    const auto ids = at::randint(3, c.vocab_size, {B, T}, gen, at::kLong);

    auto sync = [&] {
      if (load.device.is_cuda()) torch::cuda::synchronize();
    };
    auto seconds = [&](const std::function<void()>& f) {
      double best = 1e30;
      f();  // warm-up
      for (int64_t r = 0; r < repeats; ++r) {
        sync();
        const auto t0 = std::chrono::steady_clock::now();
        f();
        sync();
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      return best;
    };
    GenerationOptions o;
    o.max_new_tokens = N;
    o.stop_at_eos = false;
    const double prefill_s = seconds([&] {
      c10::InferenceMode guard;
      auto cache = model.new_cache(B, T);
      LlmForwardInput in;
      in.input_ids = ids;
      LlmForwardOptions last;
      last.last_position_only = true;
      model.forward(in, &cache, last);
    });
    // Decode rate: the steps after the first token, whose cost is the prompt's forward.
    auto decode_rate = [&](bool cache) {
      o.use_cache = cache;
      double best = 1e30;
      for (int64_t r = 0; r <= repeats; ++r) {
        const auto res = generate(model, ids, at::Tensor(), o);
        if (r > 0) best = std::min(best, res.decode_seconds);
      }
      return static_cast<double>(B * (N - 1)) / best;
    };
    const double cached = decode_rate(true);
    const double recompute = args.has("skip-recompute") ? 0.0 : decode_rate(false);

    nlohmann::json line = {{"model", args.has("model") ? args.get("model") : args.get("config")},
                           {"parameters", c.parameter_count()},
                           {"dtype", dtype_name(load.dtype)},
                           {"device", load.device.str()},
                           {"threads", threads},
                           {"cpu_capability", cpu_info().aten_capability},
                           {"native_bfloat16", cpu_info().native_bfloat16},
                           {"batch", B},
                           {"prompt_tokens", T},
                           {"new_tokens", N},
                           {"load_s", load_s},
                           {"prefill_tokens_per_s", static_cast<double>(B * T) / prefill_s},
                           {"decode_tokens_per_s_cached", cached},
                           {"decode_tokens_per_s_recompute", recompute},
                           {"rss_after_load_mb", rss_after_load},
                           {"peak_rss_mb", peak_rss_mb()}};
    std::cout << line.dump() << std::endl;
    return 0;
  });
}
