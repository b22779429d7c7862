// clara_train: trains one of CLaRa's three stages on the shared Trainer. The config is a preset
// (models/clara/*.json) with key=value overrides; --base, --init and --data set the common keys.
#include <hrmclara/clara_train.h>
#include <hrmclara/cli.h>
#include <hrmclara/process_group.h>
#include <hrmclara/config.h>
#include <hrmclara/device.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/log.h>
#include <hrmclara/report.h>
#include <hrmclara/trainer.h>

#include <torch/torch.h>

#include <cmath>
#include <ctime>
#include <iostream>

using namespace hrmclara;
using namespace hrmclara::clara;

namespace {

std::string default_run_dir() {
  char buf[64];
  const std::time_t now = std::time(nullptr);
  std::strftime(buf, sizeof buf, "runs/clara-%Y%m%d-%H%M%S", std::localtime(&now));
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  return run_main("clara_train", [&] {
    ArgParser args("clara_train",
                   "[--config FILE.json] [key=value ...] [--stage S] [--base DIR] [--init DIR] [--data ROWS.jsonl]\n"
                   "                   [--eval-data ROWS.jsonl] --out RUNDIR | --resume RUNDIR [--max-minutes M] [--max-steps N]\n"
                   "                   [--device D] [--dtype D]");
    args.option("config", "a preset (models/clara/stage1.json, stage1_2.json, stage2.json) or a run's config.json")
        .option("stage", "stage1 | stage1_2 | stage2 (or compress-pretrain | instruction-tune | end-to-end); sets 'stage'")
        .option("base", "the base model directory; sets 'base'")
        .option("init", "the earlier stage's checkpoint (upstream layout or ours); sets 'init'")
        .option("data", "training rows (JSONL of the stage's format); sets 'train_data'")
        .option("eval-data", "held-out rows for periodic evaluation (generation, EM/F1); sets 'eval_data'")
        .option("out", "run directory (checkpoints, metrics.jsonl, curves.svg); default runs/clara-<time>")
        .option("resume", "continue the run in RUNDIR from its newest checkpoint, exactly")
        .option("max-minutes", "stop after this many minutes (evaluate and save first)", "0")
        .option("max-steps", "stop after this optimizer step (evaluate and save first)", "0")
        .option("dtype", std::string(kDtypeChoices) + "; sets 'dtype' (compute dtype; float32 masters are kept)")
        .flag("no-progress", "log lines instead of a live progress bar")
        .flag("print-config", "print the resolved config and exit")
        .distributed_options()
        .common_options();
    if (!args.parse(argc, argv)) return 0;
    install_stop_signal_handlers();
    configure_threads(static_cast<int>(args.get_int("threads")));
    auto device = resolve_device(args.get("device"));
    // Under torchrun: this process's rank of the run (and the GPU of its local rank).
    const auto group = join_distributed_run(args, device);

    Json config;
    std::string run_dir;
    const bool resume = args.has("resume");
    if (resume) {
      run_dir = args.get("resume");
      const std::string saved = resume_config_path(args);
      config = validated_clara_train_config(read_json_file(saved), saved);
    } else {
      Json user = args.has("config") ? read_json_file(args.get("config")) : Json::object();
      for (const auto& [flag, key] : std::vector<std::pair<std::string, std::string>>{
               {"stage", "stage"}, {"base", "base"}, {"init", "init"}, {"data", "train_data"}, {"eval-data", "eval_data"}, {"dtype", "dtype"}})
        if (args.has(flag)) user[key] = args.get(flag);
      user = apply_overrides(merge_config(default_clara_train_config(), user, args.has("config") ? args.get("config") : "flags"),
                             args.positionals());
      const std::string where = args.has("config") ? args.get("config") + " with the command line" : "the command line";
      if (args.has("print-config")) {
        config = validated_clara_train_config(user, where, /*require_inputs=*/false);
        std::cout << config.dump(2) << std::endl;
        return 0;
      }
      config = validated_clara_train_config(user, where);
      run_dir = args.has("out") ? args.get("out") : default_run_dir();
    }

    ClaraTrainTask task(config, device, group.get());
    TrainerOptions opt;
    opt.run_dir = run_dir;
    opt.log_every = config["log_every"].get<int64_t>();
    opt.eval_every_steps = config["eval_every_steps"].get<int64_t>();
    opt.checkpoint_every_steps = config["checkpoint_every_steps"].get<int64_t>();
    opt.keep_checkpoints = config["keep_checkpoints"].get<int64_t>();
    opt.max_minutes = args.get_double("max-minutes");
    opt.max_steps = args.get_int("max-steps");
    opt.progress_bar = !args.has("no-progress");
    opt.collective = group.get();
    const std::string scheduler = config["lr_scheduler"];
    const double warmup_ratio = config["warmup_ratio"].get<double>(), min_ratio = config["min_lr_ratio"].get<double>();
    opt.lr_schedule = [=](int64_t step, int64_t total) {
      const auto warmup = static_cast<int64_t>(std::ceil(warmup_ratio * static_cast<double>(total)));
      return clara_lr_factor(scheduler, step, warmup, total, min_ratio);
    };
    Trainer trainer(task, opt);
    if (resume) trainer.resume();
    else trainer.start(config);
    const auto outcome = trainer.run();

    if (group && group->rank() != 0) return 0;  // rank 0 reports
    const std::string metrics = run_dir + "/metrics.jsonl";
    write_training_plot(metrics, run_dir + "/curves.svg");
    std::cout << summary_table(read_metric_series(metrics), {"train/loss", "train/qa_loss", "train/mse", "train/lr", "train/grad_norm",
                                                              "eval/loss", "eval/em", "eval/f1", "eval/recall@1"});
    const char* how = outcome == Trainer::Outcome::kFinished    ? "finished"
                      : outcome == Trainer::Outcome::kTimeLimit ? "time limit reached"
                      : outcome == Trainer::Outcome::kStepLimit ? "step limit reached"
                                                                : "interrupted";
    std::cout << how << " at step " << trainer.step() << "; checkpoint " << trainer.last_checkpoint() << " (upstream layout: "
              << "adapters.pth, decoder_first_last_layers.pth, config.json)" << std::endl;
    Json last{{"step", trainer.step()}, {"run_dir", run_dir}, {"checkpoint", trainer.last_checkpoint()}};
    for (const auto& [k, v] : trainer.last_train()) last["train/" + k] = std::isfinite(v) ? Json(v) : Json(nullptr);
    for (const auto& [k, v] : trainer.last_eval()) last["eval/" + k] = std::isfinite(v) ? Json(v) : Json(nullptr);
    std::cout << last.dump() << std::endl;
    return 0;
  });
}
