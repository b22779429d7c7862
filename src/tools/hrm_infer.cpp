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

hrm::Batch read_batch(const std::string& path) {
  std::map<std::string, torch::Tensor> t;
  for (auto& [k, v] : read_safetensors(path)) t[k] = v;
  for (const char* key : {"inputs", "labels", "puzzle_identifiers"}) {
    if (!t.count(key)) throw FormatError(path + ": missing tensor '" + std::string(key) + "'");
    if (!c10::isIntegralType(t[key].scalar_type(), /*includeBool=*/false))
      throw FormatError(path + ": tensor '" + std::string(key) + "' must be an integer tensor");
  }
  hrm::Batch b{t["inputs"].to(torch::kInt), t["labels"].to(torch::kInt), t["puzzle_identifiers"].to(torch::kInt)};
  if (b.inputs.dim() != 2 || b.labels.sizes() != b.inputs.sizes() || b.puzzle_identifiers.dim() != 1 ||
      b.puzzle_identifiers.size(0) != b.inputs.size(0))
    throw ShapeError(path + ": expected inputs and labels [B, S] and puzzle_identifiers [B]");
  return b;
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
    configure_threads(static_cast<int>(args.get_int("threads")));
    const auto device = resolve_device(args.get("device"));

    const std::string checkpoint = args.require("checkpoint");
    const hrm::Batch batch = read_batch(args.require("batch")).to(device);
    const auto config = hrm::checkpoint_config(checkpoint, args.get("dataset-json"), batch.size());
    if (batch.inputs.size(1) != config.seq_len)
      throw ShapeError(args.get("batch") + ": sequence length " + std::to_string(batch.inputs.size(1)) +
                       " but the model's seq_len is " + std::to_string(config.seq_len));
    auto model_config = config;
    model_config.forward_dtype = hrm::resolve_forward_dtype(args.get("dtype"), device, config.forward_dtype);
    hrm::HrmModel model(model_config);
    hrm::load_hrm_weights(*model, checkpoint);
    model->to(device);
    if (model->puzzle_emb) model->puzzle_emb->sync_device();
    model->train(mode == "train");
    const int64_t steps = args.has("steps") ? args.get_int("steps") : config.halt_max_steps;
    if (steps < 1) throw UsageError("--steps must be >= 1");

    NamedTensors out;
    auto put = [&](const std::string& name, const torch::Tensor& t) { out.emplace_back(name, t.detach().to(torch::kCPU)); };
    hrm::Carry carry = model->initial_carry(batch);
    for (int64_t k = 0; k < steps; ++k) {
      const bool want_grads = args.has("grads") && k == 0;
      std::optional<torch::NoGradGuard> no_grad;
      if (!want_grads) no_grad.emplace();
      auto [next, outputs] = model->forward(carry, batch);
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
