// Training and evaluating HRM on puzzle datasets: the training config (upstream's PretrainConfig
// plus our keys), the HRM TrainTask the shared Trainer drives, and evaluation.
#pragma once

#include <hrmclara/hrm.h>
#include <hrmclara/optim.h>
#include <hrmclara/process_group.h>
#include <hrmclara/puzzle_dataset.h>
#include <hrmclara/trainer.h>

#include <c10/core/Device.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace hrmclara::hrm {

// HRM trains on the shared puzzle datasets.
using puzzles::PuzzleDataset;
using puzzles::SamplerPosition;
using puzzles::TrainSampler;
using puzzles::sequential_batches;

// Every key a training config may hold, with upstream's defaults (config/cfg_pretrain.yaml and
// config/arch/hrm_v1.yaml) where upstream has the key. Our additions:
//   eval_batch_size (0: global_batch_size), eval_max_examples (0: the whole test split),
//   log_every, eval_every_steps, checkpoint_every_steps, keep_checkpoints,
//   generate {kind: "" | "sudoku-gen", train, test, clues_min, clues_max, num_aug, seed}: a dataset
//   made on first use and cached (used when data_path is empty).
Json default_train_config();

// Merges a user config (a preset file, upstream's all_config.yaml, overrides) into the defaults;
// unknown keys and wrong types are ConfigErrors naming the key and `where`.
Json validated_train_config(const Json& user, const std::string& where);

// Applies key=value overrides (apply_overrides) and validates; arch.name=... goes first, so that
// the keys of the model it names (arch.mlp_t for TRM) can be set in the same command line.
Json apply_train_overrides(const Json& config, const std::vector<std::string>& overrides, const std::string& where);

// Resolves config["data_path"]: when it is empty and config["generate"] names a generator, the
// dataset is generated once into the cache (${XDG_CACHE_HOME:-~/.cache}/hrmclara/data/<name>)
// and data_path is set to it. Returns the resolved config.
Json prepare_dataset(Json config);

struct EvalResult {
  // count, accuracy, exact_accuracy, q_halt_accuracy, mean_steps, lm_loss, q_halt_loss (per example)
  Metrics metrics;
  // With keep_predictions: one row per real (non-padding) example, in file order.
  torch::Tensor inputs, labels, puzzle_identifiers, predictions;  // int32
  torch::Tensor q_halt_logits;                                      // f32 [N]
};

// Runs every example of `data` (or the first max_examples) through halt_max_steps eval-mode ACT
// steps, as upstream's evaluate() does, and sums the metrics over examples.
// With `group`, the batches are shared out across ranks (batch i to rank i mod world size) and the
// metrics summed over ranks: every rank gets the metrics of the whole set (not with keep_predictions).
EvalResult evaluate_model(PuzzleModelImpl& model, const PuzzleDataset& data, int64_t batch_size, int64_t max_examples = 0,
                          bool keep_predictions = false, ProcessGroup* group = nullptr);

class HrmTrainTask : public TrainTask {
 public:
  // `config` must be validated and its data_path resolved. With `group` (data parallel, as
  // upstream's pretrain.py under torchrun): each rank trains on its contiguous slice of every global
  // batch (global_batch_size / world size rows), the loss is scaled by 1 / global_batch_size and the
  // dense gradients are summed over ranks, the puzzle-embedding gradients and ids are gathered from
  // every rank before the SignSGD step, metrics are summed over ranks, evaluation is sharded. Each
  // rank keeps its own ACT carry and random stream (seed + rank) and saves them in rank_<r>.pt.
  HrmTrainTask(const Json& config, const c10::Device& device, ProcessGroup* group = nullptr);

  int64_t total_steps() const override { return total_steps_; }
  StepResult train_step(int64_t step, double lr_factor) override;
  Metrics evaluate() override;
  void save(const std::string& dir) const override;
  void load(const std::string& dir) override;

  PuzzleModelImpl& model() { return *model_; }
  const Json& config() const { return config_; }
  const SamplerPosition& position() const { return position_; }

 private:
  Json config_;
  c10::Device device_;
  std::unique_ptr<PuzzleDataset> train_, test_;
  PuzzleModel model_;
  std::unique_ptr<AdamATan2> adam_;
  std::unique_ptr<SparseSignSGD> sign_;
  std::unique_ptr<TrainSampler> sampler_;
  SamplerPosition position_;
  std::optional<Carry> carry_;
  // EMA shadows of dense_parameters(), in that order (empty without ema).
  mutable NamedTensors ema_;
  void update_ema();
  void swap_ema() const;
  NamedTensors rank_state() const;  // this rank's carry and random stream
  void restore_rank_state(std::map<std::string, torch::Tensor>& state, const std::string& path);  // exchanges the model's weights and the shadows
  int64_t batch_size_ = 0, total_steps_ = 0;
  ProcessGroup* group_ = nullptr;
  int rank_ = 0, world_ = 1;
  int64_t local_batch_ = 0;  // batch_size_ / world_
};

}  // namespace hrmclara::hrm
