// The one training loop, written once for every task: learning-rate schedule, time budget,
// SIGINT/SIGTERM, metrics (RUNDIR/metrics.jsonl), progress bar, evaluation cadence, and
// checkpoints that resume exactly. What is specific to a model (its batches, forward/backward,
// optimizers, what a checkpoint holds) lives behind TrainTask.
//
// Run directory layout:
//   RUNDIR/config.json                 the validated config the run was started with
//   RUNDIR/metrics.jsonl               one JSON object per logged step (train/* and eval/* keys, "step")
//   RUNDIR/checkpoints/step_N/         everything to resume (TrainTask::save plus trainer.json)
//   RUNDIR/checkpoints/latest          the name of the newest complete checkpoint
//   RUNDIR/curves.svg                  loss and accuracy curves, written at the end
#pragma once

#include <hrmclara/config.h>
#include <hrmclara/distributed.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>

namespace hrmclara {

using Metrics = std::map<std::string, double>;

// Upstream's cosine_schedule_with_warmup_lr_lambda as a factor of the base lr: step / warmup
// during warm-up, then min_ratio + (1 - min_ratio) * 0.5 * (1 + cos(pi * progress)).
double cosine_schedule_factor(int64_t step, int64_t warmup_steps, int64_t total_steps, double min_ratio);

class TrainTask {
 public:
  virtual ~TrainTask() = default;

  // Steps in the whole run (the schedule's horizon).
  virtual int64_t total_steps() const = 0;

  struct StepResult {
    Metrics metrics;             // reported under "train/<name>"; must contain "loss"
    bool end_of_period = false;  // an evaluation period (e.g. eval_interval epochs) ends here
  };
  // One optimisation step on the next batch. `step` counts from 1; every optimizer's lr is its
  // base lr times `lr_factor`.
  virtual StepResult train_step(int64_t step, double lr_factor) = 0;

  // Evaluates on held-out data; reported under "eval/<name>".
  virtual Metrics evaluate() = 0;

  // Everything needed to continue exactly (weights, optimizer state, data position, RNG state,
  // recurrent carry), written into the existing empty directory `dir`.
  virtual void save(const std::string& dir) const = 0;
  virtual void load(const std::string& dir) = 0;
};

struct TrainerOptions {
  std::string run_dir;
  int64_t warmup_steps = 0;
  double lr_min_ratio = 1.0;
  int64_t log_every = 10;           // metrics.jsonl and non-tty progress lines
  int64_t eval_every_steps = 0;     // extra evaluations (0: only at period ends and the end)
  int64_t checkpoint_every_steps = 0;
  bool checkpoint_every_eval = true;
  int64_t keep_checkpoints = 3;     // newest K kept
  double max_minutes = 0;           // 0: no limit; else stop, evaluate and save after this long
  int64_t max_steps = 0;            // 0: the task's total_steps; else stop after this step
  bool progress_bar = true;         // a live bar on stderr when it is a terminal
  // The lr factor of optimizer step `step` (1-based); when unset, cosine_schedule_factor with
  // warmup_steps and lr_min_ratio (HRM's schedule).
  std::function<double(int64_t step, int64_t total_steps)> lr_schedule;
  // Data-parallel runs (distributed.h): every rank runs the loop; rank 0 alone writes the run
  // directory (config, metrics, the checkpoint's shared files and trainer.json, progress), every
  // rank writes its own part of a checkpoint (TrainTask::save) between barriers; ranks agree on
  // stopping (a signal or the time limit on any rank stops all at the same step); a config that
  // differs between ranks is refused at start. Null: one process.
  Collective* collective = nullptr;
};

class Trainer {
 public:
  // The task must outlive the trainer. A new run writes `config` to RUNDIR/config.json.
  Trainer(TrainTask& task, TrainerOptions options);

  // Starts a new run in options.run_dir (which must not hold a run yet).
  void start(const Json& config);
  // Loads the newest checkpoint of options.run_dir; metrics.jsonl is cut back to that step.
  // Returns the step resumed at.
  int64_t resume();

  enum class Outcome { kFinished, kTimeLimit, kStepLimit, kInterrupted };
  // Trains until the end, the time or step limit, or SIGINT/SIGTERM; the last two still save a
  // checkpoint (and the time limit also evaluates) before returning. Throws NumericError (with
  // the step and the newest checkpoint) if the loss stops being finite.
  Outcome run();

  int64_t step() const { return step_; }
  const Metrics& last_eval() const { return last_eval_; }
  const Metrics& last_train() const { return last_train_; }
  // The checkpoint directory written last (empty if none).
  const std::string& last_checkpoint() const { return last_checkpoint_; }

  // Writes a checkpoint of the current state now (atomically: temp dir + rename).
  std::string save_checkpoint();

 private:
  void log_metrics(const Metrics& m, const std::string& prefix);
  bool lead() const { return !opt_.collective || opt_.collective->rank() == 0; }
  void barrier() {
    if (opt_.collective) opt_.collective->barrier();
  }
  void run_evaluation();
  TrainTask& task_;
  TrainerOptions opt_;
  int64_t step_ = 0;
  double elapsed_s_ = 0;  // training seconds of the whole run, resumed processes included
  Metrics last_eval_, last_train_;
  std::string last_checkpoint_;
};

// Newest complete checkpoint directory of a run (empty if none).
std::string latest_checkpoint(const std::string& run_dir);

// Installs SIGINT/SIGTERM handlers that ask the loop to stop (a second signal kills as usual).
void install_stop_signal_handlers();
bool stop_requested();
void request_stop();  // for tests

}  // namespace hrmclara
