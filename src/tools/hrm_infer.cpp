// hrm_infer: runs K ACT steps of an HRM checkpoint on one batch and writes every output (the
// contract the external parity checks use).
#include <hrmclara/checkpoint.h>
#include <hrmclara/cli.h>
#include <hrmclara/device.h>
#include <hrmclara/errors.h>
#include <hrmclara/hrm.h>
#include <hrmclara/tensor_io.h>

#include <torch/torch.h>

#include <map>

using namespace hrmclara;

namespace {

// Far beyond any halt_max_steps (upstream uses 16); each step's outputs are kept for the file.
constexpr int64_t kMaxActSteps = 1024;

// The batch as int64 tensors: values are range-checked against the model before anything narrows
// them to int32 (where 2^32 + 1 would become 1) or indexes with them.
std::map<std::string, torch::Tensor> read_batch(const std::string& path) {
  std::map<std::string, torch::Tensor> t;
  for (auto& [k, v] : read_safetensors(path)) t[k] = v;
  for (const char* key : {"inputs", "labels", "puzzle_identifiers"}) {
    if (!t.count(key)) throw FormatError(path + ": missing tensor '" + std::string(key) + "'");
    if (!c10::isIntegralType(t[key].scalar_type(), /*includeBool=*/false))
      throw FormatError(path + ": tensor '" + std::string(key) + "' must be an integer tensor");
    t[key] = t[key].to(torch::kLong);
  }
  const auto& in = t["inputs"];
  if (in.dim() != 2 || t["labels"].sizes() != in.sizes() || t["puzzle_identifiers"].dim() != 1 ||
      t["puzzle_identifiers"].size(0) != in.size(0) || in.numel() == 0)
    throw ShapeError(path + ": expected inputs and labels [B, S] and puzzle_identifiers [B], B and S > 0");
  return t;
}

// The first element of `values` outside [0, limit) (labels may also be the ignore id -100), as
// "tensor[b, s] = v"; empty when all are in range.
std::string first_out_of_range(const torch::Tensor& values, int64_t limit, const std::string& name, bool labels) {
  auto bad = values.lt(0).logical_or(values.ge(limit));
  if (labels) bad = bad.logical_and(values.ne(-100));
  if (!bad.any().item<bool>()) return "";
  int64_t flat = bad.reshape({-1}).nonzero()[0][0].item<int64_t>();
  const int64_t value = values.reshape({-1})[flat].item<int64_t>();
  std::string index;
  for (int64_t d = values.dim() - 1; d >= 0; --d) {
    index = std::to_string(flat % values.size(d)) + (index.empty() ? "" : ", " + index);
    flat /= values.size(d);
  }
  return name + "[" + index + "] = " + std::to_string(value);
}

hrm::Batch checked_batch(const std::map<std::string, torch::Tensor>& t, const hrm::HrmConfig& config,
                         const std::string& path) {
  const std::pair<const char*, int64_t> limits[] = {
      {"inputs", config.vocab_size}, {"labels", config.vocab_size}, {"puzzle_identifiers", config.num_puzzle_identifiers}};
  for (const auto& [key, limit] : limits) {
    const std::string bad = first_out_of_range(t.at(key), limit, key, std::string(key) == "labels");
    if (!bad.empty())
      throw FormatError(path + ": " + bad + " is outside [0, " + std::to_string(limit) + ")" +
                        (std::string(key) == "labels" ? " and not the ignore label -100" : "") + " of the model");
  }
  return hrm::Batch{t.at("inputs").to(torch::kInt), t.at("labels").to(torch::kInt),
                    t.at("puzzle_identifiers").to(torch::kInt)};
}

// NaN/Inf outputs: name the parameter that holds them if one does (a corrupt checkpoint), else the
// output (an overflow), and stop with the numeric exit code rather than write them.
void require_finite_outputs(const torch::Tensor& logits, hrm::PuzzleModel& model, const std::string& checkpoint, int64_t step) {
  if (torch::isfinite(logits).all().item<bool>()) return;
  hrm::require_finite_weights(*model, checkpoint);
  throw NumericError("ACT step " + std::to_string(step) + ": the logits hold NaN or Inf");
}

}  // namespace

int main(int argc, char** argv) {
  return run_main("hrm_infer", [&] {
    ArgParser args("hrm_infer",
                   "--checkpoint PATH --batch BATCH.safetensors --out OUT.safetensors [--mode eval|train] [--steps K]\n"
                   "                 [--grads] [--device D] [--dtype D] [--dataset-json FILE]");
    args.option("checkpoint", "upstream step_N file (all_config.yaml beside it) or an hrmclara checkpoint")
        .option("batch", "safetensors with int32 inputs [B,S], labels [B,S], puzzle_identifiers [B]")
        .option("out", "where to write the outputs (safetensors)")
        .option("mode", "eval or train", "eval")
        .option("steps", "ACT steps to run (default: halt_max_steps)")
        .flag("grads", "train mode: also write grad.<name> of step 0's loss for every parameter")
        .option("dataset-json", "dataset.json with vocab_size, seq_len, num_puzzle_identifiers")
        .option("dtype", std::string(kDtypeChoices) + "; auto: the checkpoint's forward_dtype where the device runs it natively, else float32", "auto")
        .common_options();
    if (!args.parse(argc, argv, 0)) return 0;
    const std::string mode = args.get("mode");
    if (mode != "eval" && mode != "train") throw UsageError("--mode must be eval or train");
    if (args.has("grads") && mode != "train") throw UsageError("--grads needs --mode train");
    // Every flag is checked before anything loads.
    if (args.has("steps") && (args.get_int("steps") < 1 || args.get_int("steps") > kMaxActSteps))
      throw UsageError("--steps must be in [1, " + std::to_string(kMaxActSteps) + "]");
    configure_threads(static_cast<int>(args.get_int("threads")));
    const auto device = resolve_device(args.get("device"));

    const std::string checkpoint = args.require("checkpoint");
    const auto raw_batch = read_batch(args.require("batch"));
    const auto config = hrm::checkpoint_config(checkpoint, args.get("dataset-json"), raw_batch.at("inputs").size(0));
    if (raw_batch.at("inputs").size(1) != config.seq_len)
      throw ShapeError(args.get("batch") + ": sequence length " + std::to_string(raw_batch.at("inputs").size(1)) +
                       " but the model's seq_len is " + std::to_string(config.seq_len));
    const hrm::Batch batch = checked_batch(raw_batch, config, args.get("batch")).to(device);
    auto model_config = config;
    model_config.forward_dtype = hrm::resolve_forward_dtype(args.get("dtype"), device, config.forward_dtype);
    auto model = hrm::make_puzzle_model(model_config);
    hrm::load_hrm_weights(*model, checkpoint);
    model->to(device);
    if (model->puzzle_emb) model->puzzle_emb->sync_device();
    model->train(mode == "train");
    const int64_t steps = args.has("steps") ? args.get_int("steps") : config.halt_max_steps;

    NamedTensors out;
    auto put = [&](const std::string& name, const torch::Tensor& t) { out.emplace_back(name, t.detach().to(torch::kCPU)); };
    hrm::Carry carry = model->initial_carry(batch);
    for (int64_t k = 0; k < steps; ++k) {
      const bool want_grads = args.has("grads") && k == 0;
      std::optional<torch::NoGradGuard> no_grad;
      if (!want_grads) no_grad.emplace();
      auto [next, outputs] = model->forward(carry, batch);
      require_finite_outputs(outputs.logits, model, checkpoint, k);
      auto result = hrm::act_loss(model->config(), next, outputs);
      const std::string p = mode + "." + std::to_string(k) + ".";
      put(p + "logits", outputs.logits.to(torch::kFloat));
      put(p + "q_halt_logits", outputs.q_halt_logits);
      put(p + "q_continue_logits", outputs.q_continue_logits);
      if (outputs.target_q_continue.defined()) put(p + "target_q_continue", outputs.target_q_continue);
      put(p + "loss", result.loss.to(torch::kDouble));
      for (const auto& [name, value] : result.metrics) put(p + "metric." + name, value.to(torch::kDouble));
      put(p + "halted", next.halted);
      put(p + "steps", next.steps);
      put(p + "z_H", next.z_H.to(torch::kFloat));
      if (want_grads) {
        result.loss.backward();
        for (const auto& item : model->named_parameters(true))
          if (item.value().grad().defined()) put("grad.model.inner." + item.key(), item.value().grad());
        if (model->puzzle_emb && model->puzzle_emb->local_weights.grad().defined())
          put("grad.model.inner.puzzle_emb.local_weights", model->puzzle_emb->local_weights.grad());
      }
      carry = next;
    }
    write_safetensors(args.require("out"), out);
    return 0;
  });
}
