// Training CLaRa's three stages on the shared Trainer (trainer.h): the training config (upstream's
// train_sft.py hyper-parameters plus ours), the schedule, and the CLaRa TrainTask. Semantics follow
// upstream's DeepSpeed runs: gradient accumulation over train_batch_size / micro_batch_size
// micro-batches whose losses are each a token mean (the objective is the mean of per-micro-batch
// means), clipping to max_grad_norm, AdamW (betas 0.9 / 0.95, eps 1e-8), upstream's
// cosine_with_min_lr schedule (warm-up ceil(0.03 * steps), floor 0.1 * lr) or constant (stage 2).
#pragma once

#include <hrmclara/clara.h>
#include <hrmclara/clara_data.h>
#include <hrmclara/process_group.h>
#include <hrmclara/config.h>
#include <hrmclara/optim.h>
#include <hrmclara/trainer.h>

#include <c10/core/Device.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace hrmclara::clara {

// Every key a clara_train config may hold, with defaults (upstream's train_sft.py CLI defaults and
// scripts where they exist):
//   stage, base, init, train_data, eval_data: what to train and on what ("init" empty: a fresh
//     stage-1 model on the base; stage1_2 / stage2 need the earlier stage's checkpoint);
//   doc_max_length, compr_rate, generation_top_k, lora_r, lora_alpha, lora_dropout: the model;
//   dec_max_len, truncation (keep_answer | right), skip_bad_rows, max_samples, paraphrase_seed;
//   train_batch_size, micro_batch_size, epochs, max_steps (0: from epochs);
//   lr, lr_scheduler (cosine_with_min_lr | constant | linear_warmup), warmup_ratio, min_lr_ratio,
//   weight_decay, adam_betas, adam_eps, max_grad_norm, mse_loss (weight 0.1), train_base (also
//   train every base weight: only for small models trained from scratch);
//   dtype (auto | float32 | bfloat16: the compute dtype; trainable tensors keep float32 masters);
//   seed, log_every, eval_every_steps, eval_max_examples, eval_max_new_tokens (0: teacher-forced
//   evaluation only: loss and token accuracy, also with zeroed memory),
//   checkpoint_every_steps, keep_checkpoints.
Json default_clara_train_config();
// Merges a user config (a preset, overrides) into the defaults; ConfigError naming the key.
// require_inputs=false checks every value but lets base/train_data/init be empty (--print-config).
Json validated_clara_train_config(const Json& user, const std::string& where, bool require_inputs = true);

// transformers' get_cosine_with_min_lr_schedule_with_warmup as upstream's DeepSpeed runs use it:
// the factor of the base lr for optimizer step `step` (1-based): lambda(step - 1), i.e. 0 for the
// first step of a warm-up, then min_ratio + (1 - min_ratio) * 0.5 * (1 + cos(pi * progress)).
double cosine_with_min_lr_factor(int64_t step, int64_t warmup_steps, int64_t total_steps, double min_ratio);
// The factor for `scheduler` (cosine_with_min_lr, constant, linear_warmup: constant after warm-up).
double clara_lr_factor(const std::string& scheduler, int64_t step, int64_t warmup_steps, int64_t total_steps,
                       double min_ratio);

class ClaraTrainTask : public TrainTask {
 public:
  // `config` must be validated. Loads the base and the stage's initial model (upstream's
  // from_pretrained semantics for `init`), reads the data, seeds everything from config["seed"].
  // With `group` (data parallel under torchrun, as upstream's DeepSpeed runs): every rank collates
  // the step's micro-batches (so the paraphrase draws stay in step), runs forward and backward on
  // its share (micro-batch m on rank m mod world size), and the float32 master gradients are summed
  // over ranks, which gives the single-process objective: the mean over the step's micro-batches of
  // each one's token mean. Only trainable tensors are communicated, never the frozen base. Rank 0
  // writes checkpoints; the other ranks add their random state (rank_<r>.pt).
  ClaraTrainTask(const Json& config, const c10::Device& device, ProcessGroup* group = nullptr);

  int64_t total_steps() const override { return total_steps_; }
  StepResult train_step(int64_t step, double lr_factor) override;
  Metrics evaluate() override;
  // A checkpoint in upstream's layout (adapters.pth, decoder_first_last_layers.pth, config.json),
  // which upstream's from_pretrained reads, plus ours (clara.safetensors) and the resume state
  // (optimizer moments, float32 masters, RNG and data position).
  void save(const std::string& dir) const override;
  void load(const std::string& dir) override;

  // One optimizer step's gradients without the update: runs the micro-batches of the next
  // train_batch_size rows and leaves the accumulated float32 gradients on the masters. Returns
  // the step's metrics. (train_step = this + clipping + AdamW.)
  Metrics accumulate_gradients();

  ClaraModel& model() { return *model_; }
  const Json& config() const { return config_; }
  // The trainable float32 tensors by name (PEFT runtime names; "model.embed_tokens.weight[mem]").
  const NamedTensors& masters() const { return masters_; }
  int64_t gradient_accumulation() const { return accumulation_; }
  // Rows read, and rows skipped as malformed, from train_data.
  int64_t train_rows() const { return static_cast<int64_t>(rows_.size()); }

 private:
  std::vector<ClaraRow> next_rows(int64_t count);
  void copy_masters_to_model();
  Json config_;
  c10::Device device_;
  std::string stage_;
  ClaraStage data_stage_;
  std::unique_ptr<ClaraModel> model_;
  std::vector<ClaraRow> rows_, eval_rows_;
  ClaraCollateOptions collate_;
  NamedTensors working_, masters_;  // the model's trainable tensors and their float32 masters
  std::unique_ptr<AdamW> optimizer_;
  PyRandom paraphrase_rng_;
  int64_t epoch_ = 0, cursor_ = 0;  // data position: epoch, and index into its permutation
  std::vector<int64_t> order_;      // the permutation of rows_ for epoch_
  int64_t accumulation_ = 1, total_steps_ = 0, steps_per_epoch_ = 0;
  double mse_weight_ = 0;
  ProcessGroup* group_ = nullptr;
  int rank_ = 0, world_ = 1;
  NamedTensors rng_state() const;
  void restore_rng(std::map<std::string, torch::Tensor>& state);
};

}  // namespace hrmclara::clara
