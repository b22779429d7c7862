// Puzzle datasets (HRM and TRM) in upstream's on-disk layout (sapientinc/HRM dataset/common.py):
//   <split>/dataset.json and <split>/<set>__{inputs,labels,puzzle_identifiers,puzzle_indices,
//   group_indices}.npy
// and the two ways upstream walks them (puzzle_dataset.py): training batches sampled by groups
// (one random puzzle per group, shuffled, several epochs per "iteration"), and the test split in
// file order with a padded last batch.
//
// Unlike upstream, sampling is a pure function of (seed, iteration), so a run can be resumed at an
// exact batch by storing only its SamplerPosition.
#pragma once

#include <hrmclara/config.h>

#include <torch/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace hrmclara::puzzles {

inline constexpr int64_t kIgnoreLabel = -100;

// One batch: int32 tensors inputs [B, S], labels [B, S] (ignore = -100), puzzle_identifiers [B].
struct Batch {
  torch::Tensor inputs, labels, puzzle_identifiers;
  Batch to(const torch::Device& device) const;
  int64_t size() const { return inputs.size(0); }
};

struct PuzzleMetadata {
  int64_t pad_id = 0;
  std::optional<int64_t> ignore_label_id;  // null in JSON: no label is ignored
  int64_t blank_identifier_id = 0;
  int64_t vocab_size = 0;
  int64_t seq_len = 0;
  int64_t num_puzzle_identifiers = 0;
  int64_t total_groups = 0;
  double mean_puzzle_examples = 0;
  std::vector<std::string> sets;

  // Throws ConfigError naming `path` and the field when a field is missing or of the wrong type.
  static PuzzleMetadata from_json(const Json& json, const std::string& path);
  Json to_json() const;
};

// One split directory (e.g. data/sudoku/train), every set loaded into memory and validated.
class PuzzleDataset {
 public:
  // Reads <split_dir>/dataset.json and the arrays of every set. Throws IoError for missing files
  // and FormatError / ShapeError naming the file for wrong dtypes, shapes, inconsistent indices,
  // identifiers or tokens out of range, and an empty dataset.
  explicit PuzzleDataset(const std::string& split_dir);

  const PuzzleMetadata& metadata() const { return meta_; }
  const std::string& dir() const { return dir_; }
  int64_t num_examples() const;
  int64_t num_groups() const;

  // Rows `example_ids` (global example numbers over all sets, in set order) as a batch of int32
  // tensors, labels equal to ignore_label_id mapped to -100, padded with blank rows (inputs =
  // pad_id, labels = -100, identifier = blank_identifier_id) up to `batch_size`.
  Batch gather(const std::vector<int64_t>& example_ids, int64_t batch_size) const;

  // The puzzle identifier of every example (int32 [N]).
  const std::vector<int32_t>& example_identifiers() const { return example_identifier_; }

  struct Set {
    std::string name;
    int64_t first_example = 0;  // global number of the set's first example
    std::vector<int64_t> puzzle_indices, group_indices;  // as on disk
  };
  const std::vector<Set>& sets() const { return sets_; }

 private:
  std::string dir_;
  PuzzleMetadata meta_;
  std::vector<Set> sets_;
  std::vector<uint8_t> inputs_u8_, labels_u8_;   // used when every token fits in a byte
  std::vector<int32_t> inputs_i32_, labels_i32_; // otherwise
  std::vector<int32_t> example_identifier_;
  bool bytes_ = true;
};

// Where a training run is in its data: the iteration (a block of `epochs_per_iteration` epochs)
// and the next batch within it.
struct SamplerPosition {
  int64_t iteration = 0;
  int64_t batch = 0;
};

// Upstream's training order: per iteration, the concatenation of `epochs_per_iteration` random
// permutations of all groups; for each group one random puzzle, and from it up to the remaining
// batch space of its examples, chosen without replacement; a trailing incomplete batch is dropped.
class TrainSampler {
 public:
  TrainSampler(const PuzzleDataset& data, int64_t batch_size, int64_t epochs_per_iteration, uint64_t seed);

  // The example ids of the batch at `pos`, or nothing when the iteration has no such batch.
  std::optional<std::vector<int64_t>> batch_at(const SamplerPosition& pos);
  int64_t batches_in_iteration(int64_t iteration);

 private:
  void build(int64_t iteration);
  const PuzzleDataset& data_;
  int64_t batch_size_, epochs_;
  uint64_t seed_;
  int64_t built_ = -1;
  std::vector<std::vector<int64_t>> batches_;
};

// The test split in file order, `batch_size` examples at a time; the last batch is padded.
std::vector<std::vector<int64_t>> sequential_batches(const PuzzleDataset& data, int64_t batch_size);

}  // namespace hrmclara::puzzles
