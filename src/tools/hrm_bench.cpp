// hrm_bench: times HRM train or eval steps on random data and prints one JSON line.
// A train step = one ACT step with the loss head, backward of loss / batch, SignSGD, AdamATan2.
#include <hrmclara/cli.h>
#include <hrmclara/config.h>
#include <hrmclara/device.h>
#include <hrmclara/errors.h>
#include <hrmclara/hrm.h>
#include <hrmclara/info.h>
#include <hrmclara/optim.h>

#include <torch/torch.h>

#include <chrono>
#include <iostream>

using namespace hrmclara;

int main(int argc, char** argv) {
  return run_main("hrm_bench", [&] {
    ArgParser args("hrm_bench", "--config FILE.json --mode train|eval --steps N [--device D] [--threads T] [--dtype D]");
    args.option("config", "upstream arch fields plus batch_size, seq_len, vocab_size, num_puzzle_identifiers")
        .option("mode", "train or eval", "train")
        .option("steps", "timed steps", "10")
        .option("warmup", "untimed steps first", "2")
        .option("dtype", std::string(kDtypeChoices) + "; auto: the file's forward_dtype where the device runs it natively, else float32", "auto")
        .option("attention", "exact (reference order) or sdpa (LibTorch's kernel)", "exact")
        .common_options();
    if (!args.parse(argc, argv, 0)) return 0;
    const std::string mode = args.get("mode");
    if (mode != "train" && mode != "eval") throw UsageError("--mode must be train or eval");
    const int threads = configure_threads(static_cast<int>(args.get_int("threads")));
    const auto device = resolve_device(args.get("device"));
    const std::string attention = args.get("attention");
    if (attention != "exact" && attention != "sdpa") throw UsageError("--attention must be exact or sdpa");
    hrm::set_attention_kernel(attention == "sdpa" ? hrm::AttentionKernel::kSdpa : hrm::AttentionKernel::kExact);

    const std::string path = args.require("config");
    Json file = read_json_file(path);
    auto take = [&](const char* key) -> int64_t {
      if (!file.contains(key) || !file[key].is_number_integer()) throw ConfigError(path + ": missing integer '" + key + "'");
      const int64_t v = file[key].get<int64_t>();
      file.erase(key);
      return v;
    };
    const int64_t batch_size = take("batch_size"), seq_len = take("seq_len"), vocab = take("vocab_size"),
                  puzzles = take("num_puzzle_identifiers");
    file["forward_dtype"] = hrm::resolve_forward_dtype(args.get("dtype"), device, file.value("forward_dtype", std::string("auto")));
    const auto config = hrm::HrmConfig::from_arch_json(file, batch_size, seq_len, vocab, puzzles);

    torch::manual_seed(0);
    auto model = hrm::make_puzzle_model(config);
    model->to(device);
    if (model->puzzle_emb) model->puzzle_emb->sync_device();
    model->train(mode == "train");
    const auto opts = torch::TensorOptions().dtype(torch::kInt).device(device);
    const hrm::Batch batch{torch::randint(1, vocab, {batch_size, seq_len}, opts),
                           torch::randint(1, vocab, {batch_size, seq_len}, opts),
                           torch::randint(0, puzzles, {batch_size}, opts)};
    AdamATan2 adam(model->dense_parameters(), {1e-4, 0.9, 0.95, 0.1});
    std::unique_ptr<SparseSignSGD> sign;
    if (model->puzzle_emb)
      sign = std::make_unique<SparseSignSGD>(model->puzzle_emb->weights, model->puzzle_emb->local_weights,
                                             model->puzzle_emb->local_ids, 1e-2, 0.1);
    hrm::Carry carry = model->initial_carry(batch);
    auto step = [&] {
      if (mode == "eval") {
        torch::NoGradGuard no_grad;
        auto [next, out] = model->forward(carry, batch);
        hrm::act_loss(config, next, out);
        carry = next;
        return;
      }
      auto [next, out] = model->forward(carry, batch);
      auto result = hrm::act_loss(config, next, out);
      (result.loss / static_cast<double>(batch_size)).backward();
      if (sign) {
        sign->step();
        sign->zero_grad();
      }
      adam.step();
      adam.zero_grad();
      carry = next;
    };
    auto sync = [&] {
      if (device.is_cuda()) torch::cuda::synchronize();
    };
    const int64_t warmup = args.get_int("warmup"), steps = args.get_int("steps");
    if (steps < 1 || warmup < 0) throw UsageError("--steps must be >= 1 and --warmup >= 0");
    for (int64_t i = 0; i < warmup; ++i) step();
    sync();
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < steps; ++i) step();
    sync();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double peak_mb = peak_rss_mb();
    const double ms = 1000.0 * seconds / static_cast<double>(steps);
    Json line = {{"mode", mode},
                 {"device", device.str()},
                 {"threads", threads},
                 {"cpu_capability", cpu_info().aten_capability},
                 {"native_bfloat16", cpu_info().native_bfloat16},
                 {"dtype", config.forward_dtype},
                 {"attention", attention},
                 {"steps", steps},
                 {"ms_per_step", ms},
                 {"examples_per_s", static_cast<double>(batch_size) * 1000.0 / ms},
                 {"peak_rss_mb", peak_mb}};
    std::cout << line.dump() << std::endl;
    return 0;
  });
}
