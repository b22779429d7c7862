// Puzzle datasets in upstream's layout, and the training / test orders (see puzzle_dataset.h).
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/puzzle_dataset.h>
#include <hrmclara/tensor_io.h>

#include <torch/torch.h>

#include <algorithm>
#include <numeric>
#include <random>

namespace hrmclara::puzzles {

namespace {

int64_t int_field(const Json& j, const char* key, const std::string& path) {
  if (!j.contains(key) || !j[key].is_number_integer())
    throw ConfigError(path + ": field '" + key + "' must be an integer");
  return j[key].get<int64_t>();
}

// A 1-D or 2-D integer array from <dir>/<set>__<name>.npy, as int64 values on the CPU.
at::Tensor read_int_array(const std::string& path, int dims) {
  if (!file_exists(path)) throw IoError(path + ": missing (not a dataset in upstream's layout?)");
  at::Tensor t = read_npy(path);
  if (!c10::isIntegralType(t.scalar_type(), /*includeBool=*/false))
    throw FormatError(path + ": expected an integer array, found " + dtype_name(t.scalar_type()));
  if (t.dim() != dims)
    throw ShapeError(path + ": expected " + std::to_string(dims) + " dimensions, found shape " + shape_text(t.sizes().vec()));
  return t.to(at::kLong).contiguous();
}

// Checks an index array: starts at 0, never decreases, ends at `end`.
std::vector<int64_t> check_indices(const at::Tensor& t, int64_t end, const std::string& path, const char* what) {
  std::vector<int64_t> v(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
  if (v.size() < 2) throw ShapeError(path + ": " + what + " needs at least 2 entries (the dataset is empty)");
  if (v.front() != 0) throw FormatError(path + ": " + what + " must start at 0");
  for (size_t i = 1; i < v.size(); ++i)
    if (v[i] <= v[i - 1])
      throw FormatError(path + ": " + what + " must increase strictly (entry " + std::to_string(i) + ")");
  if (v.back() != end)
    throw ShapeError(path + ": " + what + " ends at " + std::to_string(v.back()) + " but there are " +
                     std::to_string(end) + " rows");
  return v;
}

uint64_t mix_seed(uint64_t seed, uint64_t a, uint64_t b) {
  // splitmix64 over the three values: independent, reproducible streams per (seed, iteration, set).
  uint64_t x = seed ^ (a * 0x9E3779B97F4A7C15ull) ^ (b * 0xC2B2AE3D27D4EB4Full);
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

PuzzleMetadata PuzzleMetadata::from_json(const Json& j, const std::string& path) {
  if (!j.is_object()) throw ConfigError(path + ": expected a JSON object");
  PuzzleMetadata m;
  m.pad_id = int_field(j, "pad_id", path);
  if (!j.contains("ignore_label_id")) throw ConfigError(path + ": field 'ignore_label_id' is missing");
  if (!j["ignore_label_id"].is_null()) m.ignore_label_id = int_field(j, "ignore_label_id", path);
  m.blank_identifier_id = int_field(j, "blank_identifier_id", path);
  m.vocab_size = int_field(j, "vocab_size", path);
  m.seq_len = int_field(j, "seq_len", path);
  m.num_puzzle_identifiers = int_field(j, "num_puzzle_identifiers", path);
  m.total_groups = int_field(j, "total_groups", path);
  if (!j.contains("mean_puzzle_examples") || !j["mean_puzzle_examples"].is_number())
    throw ConfigError(path + ": field 'mean_puzzle_examples' must be a number");
  m.mean_puzzle_examples = j["mean_puzzle_examples"].get<double>();
  if (!j.contains("sets") || !j["sets"].is_array() || j["sets"].empty())
    throw ConfigError(path + ": field 'sets' must be a non-empty list of names");
  for (const auto& s : j["sets"]) {
    if (!s.is_string()) throw ConfigError(path + ": field 'sets' must hold strings");
    m.sets.push_back(s.get<std::string>());
  }
  if (m.vocab_size <= 0 || m.seq_len <= 0 || m.num_puzzle_identifiers <= 0)
    throw ConfigError(path + ": vocab_size, seq_len and num_puzzle_identifiers must be positive");
  if (m.pad_id < 0 || m.pad_id >= m.vocab_size) throw ConfigError(path + ": pad_id is outside the vocabulary");
  if (m.blank_identifier_id < 0 || m.blank_identifier_id >= m.num_puzzle_identifiers)
    throw ConfigError(path + ": blank_identifier_id is outside [0, num_puzzle_identifiers)");
  return m;
}

Json PuzzleMetadata::to_json() const {
  return Json{{"pad_id", pad_id},
              {"ignore_label_id", ignore_label_id ? Json(*ignore_label_id) : Json(nullptr)},
              {"blank_identifier_id", blank_identifier_id},
              {"vocab_size", vocab_size},
              {"seq_len", seq_len},
              {"num_puzzle_identifiers", num_puzzle_identifiers},
              {"total_groups", total_groups},
              {"mean_puzzle_examples", mean_puzzle_examples},
              {"sets", sets}};
}

PuzzleDataset::PuzzleDataset(const std::string& split_dir) : dir_(split_dir) {
  const std::string meta_path = split_dir + "/dataset.json";
  if (!is_directory(split_dir)) throw IoError(split_dir + ": no such dataset directory");
  if (!file_exists(meta_path)) throw IoError(meta_path + ": missing (not a dataset in upstream's layout?)");
  meta_ = PuzzleMetadata::from_json(read_json_file(meta_path), meta_path);

  std::vector<at::Tensor> inputs, labels;
  int64_t examples = 0;
  for (const auto& name : meta_.sets) {
    const std::string base = split_dir + "/" + name + "__";
    at::Tensor in = read_int_array(base + "inputs.npy", 2);
    at::Tensor lab = read_int_array(base + "labels.npy", 2);
    at::Tensor ids = read_int_array(base + "puzzle_identifiers.npy", 1);
    at::Tensor pidx = read_int_array(base + "puzzle_indices.npy", 1);
    at::Tensor gidx = read_int_array(base + "group_indices.npy", 1);
    if (in.size(1) != meta_.seq_len)
      throw ShapeError(base + "inputs.npy: rows have " + std::to_string(in.size(1)) + " tokens but dataset.json says seq_len " +
                       std::to_string(meta_.seq_len));
    if (lab.sizes() != in.sizes())
      throw ShapeError(base + "labels.npy: shape " + shape_text(lab.sizes().vec()) + " differs from inputs " +
                       shape_text(in.sizes().vec()));
    if (in.numel() > 0 && (in.min().item<int64_t>() < 0 || in.max().item<int64_t>() >= meta_.vocab_size))
      throw FormatError(base + "inputs.npy: token outside [0, vocab_size=" + std::to_string(meta_.vocab_size) + ")");
    if (lab.numel() > 0) {
      auto valid = meta_.ignore_label_id ? lab.ne(*meta_.ignore_label_id) : at::ones_like(lab, at::kBool);
      auto bad = valid & (lab.lt(0) | lab.ge(meta_.vocab_size));
      if (bad.any().item<bool>())
        throw FormatError(base + "labels.npy: label outside [0, vocab_size=" + std::to_string(meta_.vocab_size) + ")");
    }
    const int64_t puzzles = ids.size(0);
    Set set;
    set.name = name;
    set.first_example = examples;
    set.puzzle_indices = check_indices(pidx, in.size(0), base + "puzzle_indices.npy", "puzzle_indices");
    if (static_cast<int64_t>(set.puzzle_indices.size()) != puzzles + 1)
      throw ShapeError(base + "puzzle_indices.npy: has " + std::to_string(set.puzzle_indices.size()) + " entries for " +
                       std::to_string(puzzles) + " puzzle identifiers (expected one more)");
    set.group_indices = check_indices(gidx, puzzles, base + "group_indices.npy", "group_indices");
    const auto* id = ids.data_ptr<int64_t>();
    for (int64_t p = 0; p < puzzles; ++p) {
      if (id[p] < 0 || id[p] >= meta_.num_puzzle_identifiers)
        throw FormatError(base + "puzzle_identifiers.npy: identifier " + std::to_string(id[p]) + " of puzzle " +
                          std::to_string(p) + " is outside [0, num_puzzle_identifiers=" +
                          std::to_string(meta_.num_puzzle_identifiers) + ")");
      for (int64_t e = set.puzzle_indices[p]; e < set.puzzle_indices[p + 1]; ++e)
        example_identifier_.push_back(static_cast<int32_t>(id[p]));
    }
    examples += in.size(0);
    inputs.push_back(in);
    labels.push_back(lab);
    sets_.push_back(std::move(set));
  }
  if (examples == 0) throw ShapeError(split_dir + ": the dataset has no examples");

  at::Tensor all_in = at::cat(inputs), all_lab = at::cat(labels);
  if (meta_.ignore_label_id) all_lab.masked_fill_(all_lab.eq(*meta_.ignore_label_id), kIgnoreLabel);
  // Bytes when every token and label fits (all upstream tasks): a quarter of the memory.
  bytes_ = all_in.min().item<int64_t>() >= 0 && all_in.max().item<int64_t>() < 255 && all_lab.min().item<int64_t>() >= -100 &&
           all_lab.max().item<int64_t>() < 255 && meta_.pad_id < 255;
  if (bytes_) {
    // -100 is stored as 255 and mapped back in gather().
    all_lab = all_lab.masked_fill(all_lab.eq(kIgnoreLabel), 255);
    at::Tensor a = all_in.to(at::kByte).contiguous(), b = all_lab.to(at::kByte).contiguous();
    inputs_u8_.assign(a.data_ptr<uint8_t>(), a.data_ptr<uint8_t>() + a.numel());
    labels_u8_.assign(b.data_ptr<uint8_t>(), b.data_ptr<uint8_t>() + b.numel());
  } else {
    at::Tensor a = all_in.to(at::kInt).contiguous(), b = all_lab.to(at::kInt).contiguous();
    inputs_i32_.assign(a.data_ptr<int32_t>(), a.data_ptr<int32_t>() + a.numel());
    labels_i32_.assign(b.data_ptr<int32_t>(), b.data_ptr<int32_t>() + b.numel());
  }
}

int64_t PuzzleDataset::num_examples() const { return static_cast<int64_t>(example_identifier_.size()); }

int64_t PuzzleDataset::num_groups() const {
  int64_t n = 0;
  for (const auto& s : sets_) n += static_cast<int64_t>(s.group_indices.size()) - 1;
  return n;
}

Batch Batch::to(const torch::Device& device) const {
  return Batch{inputs.to(device), labels.to(device), puzzle_identifiers.to(device)};
}

Batch PuzzleDataset::gather(const std::vector<int64_t>& example_ids, int64_t batch_size) const {
  const int64_t n = static_cast<int64_t>(example_ids.size()), S = meta_.seq_len;
  if (n > batch_size) throw ShapeError(dir_ + ": " + std::to_string(n) + " examples do not fit a batch of " + std::to_string(batch_size));
  auto inputs = torch::full({batch_size, S}, meta_.pad_id, torch::kInt);
  auto labels = torch::full({batch_size, S}, kIgnoreLabel, torch::kInt);
  auto ids = torch::full({batch_size}, meta_.blank_identifier_id, torch::kInt);
  int32_t* in = inputs.data_ptr<int32_t>();
  int32_t* lab = labels.data_ptr<int32_t>();
  int32_t* id = ids.data_ptr<int32_t>();
  for (int64_t r = 0; r < n; ++r) {
    const int64_t e = example_ids[r];
    if (e < 0 || e >= num_examples()) throw ShapeError(dir_ + ": example " + std::to_string(e) + " out of range");
    id[r] = example_identifier_[e];
    if (bytes_) {
      const uint8_t* src_in = &inputs_u8_[e * S];
      const uint8_t* src_lab = &labels_u8_[e * S];
      for (int64_t s = 0; s < S; ++s) {
        in[r * S + s] = src_in[s];
        lab[r * S + s] = src_lab[s] == 255 ? static_cast<int32_t>(kIgnoreLabel) : src_lab[s];
      }
    } else {
      std::copy_n(&inputs_i32_[e * S], S, in + r * S);
      std::copy_n(&labels_i32_[e * S], S, lab + r * S);
    }
  }
  return Batch{inputs, labels, ids};
}

TrainSampler::TrainSampler(const PuzzleDataset& data, int64_t batch_size, int64_t epochs_per_iteration, uint64_t seed)
    : data_(data), batch_size_(batch_size), epochs_(epochs_per_iteration), seed_(seed) {
  if (batch_size <= 0) throw ConfigError("global_batch_size must be positive");
  if (epochs_per_iteration <= 0) throw ConfigError("epochs per iteration (eval_interval) must be positive");
}

void TrainSampler::build(int64_t iteration) {
  batches_.clear();
  for (size_t si = 0; si < data_.sets().size(); ++si) {
    const auto& set = data_.sets()[si];
    std::mt19937_64 rng(mix_seed(seed_, static_cast<uint64_t>(iteration), si));
    const int64_t groups = static_cast<int64_t>(set.group_indices.size()) - 1;
    std::vector<int64_t> order;
    order.reserve(static_cast<size_t>(groups * epochs_));
    for (int64_t e = 0; e < epochs_; ++e) {
      std::vector<int64_t> perm(static_cast<size_t>(groups));
      std::iota(perm.begin(), perm.end(), 0);
      // Own Fisher-Yates: std::shuffle differs between standard libraries, and a run must sample
      // the same batches on Linux and macOS.
      for (int64_t i = groups - 1; i > 0; --i) std::swap(perm[i], perm[rng() % static_cast<uint64_t>(i + 1)]);
      order.insert(order.end(), perm.begin(), perm.end());
    }
    std::vector<int64_t> batch, pick;
    for (int64_t g : order) {
      const int64_t first = set.group_indices[g], last = set.group_indices[g + 1];
      const int64_t puzzle = first + static_cast<int64_t>(rng() % static_cast<uint64_t>(last - first));
      const int64_t start = set.puzzle_indices[puzzle], size = set.puzzle_indices[puzzle + 1] - start;
      const int64_t take = std::min(size, batch_size_ - static_cast<int64_t>(batch.size()));
      pick.resize(static_cast<size_t>(size));
      std::iota(pick.begin(), pick.end(), 0);
      // Partial Fisher-Yates: the first `take` entries are a uniform choice without replacement.
      for (int64_t i = 0; i < take; ++i) std::swap(pick[i], pick[i + static_cast<int64_t>(rng() % static_cast<uint64_t>(size - i))]);
      for (int64_t i = 0; i < take; ++i) batch.push_back(set.first_example + start + pick[i]);
      if (static_cast<int64_t>(batch.size()) == batch_size_) {
        batches_.push_back(std::move(batch));
        batch.clear();
      }
    }
    // A trailing incomplete batch is dropped, as upstream does.
  }
  built_ = iteration;
}

int64_t TrainSampler::batches_in_iteration(int64_t iteration) {
  if (built_ != iteration) build(iteration);
  return static_cast<int64_t>(batches_.size());
}

std::optional<std::vector<int64_t>> TrainSampler::batch_at(const SamplerPosition& pos) {
  if (built_ != pos.iteration) build(pos.iteration);
  if (pos.batch < 0 || pos.batch >= static_cast<int64_t>(batches_.size())) return std::nullopt;
  return batches_[static_cast<size_t>(pos.batch)];
}

std::vector<std::vector<int64_t>> sequential_batches(const PuzzleDataset& data, int64_t batch_size) {
  if (batch_size <= 0) throw ConfigError("batch size must be positive");
  std::vector<std::vector<int64_t>> out;
  for (int64_t start = 0; start < data.num_examples(); start += batch_size) {
    std::vector<int64_t> b;
    for (int64_t e = start; e < std::min(start + batch_size, data.num_examples()); ++e) b.push_back(e);
    out.push_back(std::move(b));
  }
  return out;
}

}  // namespace hrmclara::puzzles
