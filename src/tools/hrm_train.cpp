// hrm_train: trains HRM on a puzzle dataset. With no arguments it generates (once, cached) a
// Sudoku dataset and trains the preset sized for a 2-core CPU, embedded in the binary.
#include <hrmclara/cli.h>
#include <hrmclara/config.h>
#include <hrmclara/device.h>
#include <hrmclara/process_group.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/hrm_train.h>
#include <hrmclara/log.h>
#include <hrmclara/report.h>
#include <hrmclara/trainer.h>

#include <torch/torch.h>

#include <ctime>
#include <iostream>

#include "default_preset.h"  // kDefaultHrmPreset: models/hrm/sudoku-2core.json, embedded at build time

using namespace hrmclara;

namespace {

Json read_config(const std::string& path) {
  const bool yaml = path.size() > 5 && (path.substr(path.size() - 5) == ".yaml" || path.substr(path.size() - 4) == ".yml");
  return yaml ? read_yaml_file(path) : read_json_file(path);
}

std::string default_run_dir() {
  char buf[64];
  const std::time_t now = std::time(nullptr);
  std::strftime(buf, sizeof buf, "runs/hrm-%Y%m%d-%H%M%S", std::localtime(&now));
  return buf;
}

int64_t count_parameters(hrm::PuzzleModelImpl& model) {
  int64_t n = 0;
  for (const auto& p : model.parameters()) n += p.numel();
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  return run_main("hrm_train", [&] {
    ArgParser args("hrm_train",
                   "[--config FILE.json|all_config.yaml] [key=value ...] [--out RUNDIR] [--resume RUNDIR]\n"
                   "                 [--max-minutes M] [--max-steps N] [--device D] [--dtype D]");
    args.option("config", "preset (models/hrm/*.json) or upstream all_config.yaml; default: the embedded Sudoku preset")
        .option("out", "run directory for checkpoints, metrics.jsonl and curves.svg (default runs/hrm-<time>)")
        .option("resume", "continue the run in RUNDIR from its newest checkpoint, exactly")
        .option("max-minutes", "stop after this many minutes (evaluate and save first)", "0")
        .option("max-steps", "stop after this step (evaluate and save first)", "0")
        .flag("no-progress", "no live progress bar (log lines instead)")
        .flag("print-config", "print the resolved config and exit")
        .option("dtype", std::string(kDtypeChoices) + "; auto: the config's arch.forward_dtype where the device runs it natively, else float32", "auto")
        .distributed_options()
        .common_options();
    if (!args.parse(argc, argv)) return 0;
    // From here on SIGINT/SIGTERM ask the trainer to save and stop after the current step.
    install_stop_signal_handlers();
    configure_threads(static_cast<int>(args.get_int("threads")));
    keep_freed_memory();  // no page faults on the activations re-allocated every step
    auto device = resolve_device(args.get("device"));
    // Under torchrun: this process's rank of the run (and the GPU of its local rank).
    const auto group = join_distributed_run(args, device);

    Json config;
    std::string run_dir;
    const bool resume = args.has("resume");
    if (resume) {
      run_dir = args.get("resume");
      const std::string saved = resume_config_path(args);
      config = hrm::validated_train_config(read_json_file(saved), saved);
    } else {
      const std::string source = args.has("config") ? args.get("config") : "the embedded preset (models/hrm/sudoku-2core.json)";
      Json user = args.has("config") ? read_config(args.get("config")) : Json::parse(kDefaultHrmPreset);
      config = hrm::validated_train_config(user, source);
      config = hrm::apply_train_overrides(config, args.positionals(), "command line");
      if (args.has("print-config")) {
        std::cout << config.dump(2) << std::endl;
        return 0;
      }
      // One rank generates a missing dataset; the others wait for it.
      if (group && group->rank() != 0) group->barrier();
      config = hrm::prepare_dataset(config);
      if (group && group->rank() == 0) group->barrier();
      run_dir = args.has("out") ? args.get("out") : default_run_dir();
    }

    config["arch"]["forward_dtype"] =
        hrm::resolve_forward_dtype(args.get("dtype"), device, config["arch"]["forward_dtype"].get<std::string>());
    hrm::HrmTrainTask task(config, device, group.get());
    const auto& mc = task.model().config();
    const std::string layers = mc.is_trm() ? "TRM" + std::string(mc.mlp_t ? " (token MLP)" : "") + ", " +
                                                 std::to_string(mc.L_layers) + " layers"
                                           : "HRM, " + std::to_string(mc.H_layers) + "+" + std::to_string(mc.L_layers) + " layers";
    log_info("model: " + std::to_string(count_parameters(task.model())) + " parameters, " + layers + ", hidden " +
             std::to_string(mc.hidden_size) + ", " + std::to_string(mc.H_cycles) + "x" + std::to_string(mc.L_cycles) +
             " cycles, up to " + std::to_string(mc.halt_max_steps) + " ACT steps, " +
             mc.forward_dtype + "; " + std::to_string(task.total_steps()) + " steps of batch " +
             std::to_string(config["global_batch_size"].get<int64_t>()) + " on " + describe_device(device));
    log_info("data: " + config["data_path"].get<std::string>() + "; run: " + run_dir);

    TrainerOptions opt;
    opt.run_dir = run_dir;
    opt.warmup_steps = config["lr_warmup_steps"].get<int64_t>();
    opt.lr_min_ratio = config["lr_min_ratio"].get<double>();
    opt.log_every = config["log_every"].get<int64_t>();
    opt.eval_every_steps = config["eval_every_steps"].get<int64_t>();
    opt.checkpoint_every_steps = config["checkpoint_every_steps"].get<int64_t>();
    opt.checkpoint_every_eval = config["checkpoint_every_eval"].get<bool>();
    opt.keep_checkpoints = config["keep_checkpoints"].get<int64_t>();
    opt.max_minutes = args.get_double("max-minutes");
    opt.max_steps = args.get_int("max-steps");
    opt.progress_bar = !args.has("no-progress");
    opt.collective = group.get();
    Trainer trainer(task, opt);
    if (resume)
      trainer.resume();
    else
      trainer.start(config);
    const auto outcome = trainer.run();

    if (group && group->rank() != 0) return 0;  // rank 0 reports
    if (group)
      log_info("distributed: " + std::to_string(group->world_size()) + " processes (" + group->backend() + "), " +
               std::to_string(group->seconds_in_collectives()) + " s in collectives on rank 0");
    const std::string metrics = run_dir + "/metrics.jsonl";
    write_training_plot(metrics, run_dir + "/curves.svg");
    std::cout << summary_table(read_metric_series(metrics),
                               {"eval/exact_accuracy", "eval/accuracy", "eval/mean_steps", "train/exact_accuracy",
                                "train/accuracy", "train/loss", "train/steps"});
    if (trainer.last_eval().count("exact_accuracy"))
      std::cout << "held-out puzzles solved exactly: " << trainer.last_eval().at("exact_accuracy") * 100.0 << " % of "
                << static_cast<int64_t>(trainer.last_eval().at("count")) << "\n";
    const char* how = outcome == Trainer::Outcome::kFinished    ? "finished"
                      : outcome == Trainer::Outcome::kTimeLimit ? "time limit reached"
                      : outcome == Trainer::Outcome::kStepLimit ? "step limit reached"
                                                                : "interrupted";
    std::cout << how << " at step " << trainer.step() << "; checkpoint " << trainer.last_checkpoint() << "; curves "
              << run_dir << "/curves.svg" << std::endl;
    Json last{{"step", trainer.step()}, {"run_dir", run_dir}};
    for (const auto& [k, v] : trainer.last_eval()) last["eval/" + k] = v;
    std::cout << last.dump() << std::endl;
    return 0;
  });
}
