// Upstream HRM runs: config from all_config.yaml + dataset.json, weights from step_N files (or our
// own checkpoints), and export back to upstream's layout.
#include <hrmclara/checkpoint.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/hrm.h>

#include <torch/serialize.h>
#include <torch/torch.h>

namespace hrmclara::hrm {

namespace {

int64_t int_field(const Json& j, const std::string& key, const std::string& file) {
  if (!j.contains(key) || !j[key].is_number_integer()) throw ConfigError(file + ": missing integer field '" + key + "'");
  return j[key].get<int64_t>();
}

// The model config from an arch object and dataset metadata; errors name `config_file`.
HrmConfig config_from(const Json& arch, int64_t batch_size, const Json& meta, const std::string& meta_path,
                      const std::string& config_file) {
  const int64_t seq_len = int_field(meta, "seq_len", meta_path), vocab = int_field(meta, "vocab_size", meta_path),
                puzzles = int_field(meta, "num_puzzle_identifiers", meta_path);
  try {
    return HrmConfig::from_arch_json(arch, batch_size, seq_len, vocab, puzzles);
  } catch (const ConfigError& e) {
    throw ConfigError(config_file + ": " + e.what());
  }
}
}  // namespace

HrmConfig upstream_config(const std::string& checkpoint_path, const std::string& dataset_json, int64_t batch_size,
                          Json* full_config) {
  const std::string dir = containing_directory(checkpoint_path);
  const std::string yaml_path = dir + "/all_config.yaml";
  if (!file_exists(yaml_path)) throw IoError(yaml_path + ": no all_config.yaml beside the checkpoint");
  const Json cfg = read_yaml_file(yaml_path);
  if (!cfg.contains("arch") || !cfg["arch"].is_object()) throw ConfigError(yaml_path + ": no 'arch' section");
  std::string meta_path = dataset_json;
  if (meta_path.empty()) {
    meta_path = dir + "/dataset.json";
    if (!file_exists(meta_path) && cfg.contains("data_path") && cfg["data_path"].is_string())
      meta_path = cfg["data_path"].get<std::string>() + "/train/dataset.json";
  }
  if (!file_exists(meta_path))
    throw IoError(meta_path + ": dataset.json not found (pass --dataset-json, or put it beside the checkpoint)");
  const Json meta = read_json_file(meta_path);
  if (batch_size <= 0) {
    if (!cfg.contains("global_batch_size")) throw ConfigError(yaml_path + ": no global_batch_size");
    batch_size = cfg["global_batch_size"].get<int64_t>();
  }
  if (full_config) *full_config = cfg;
  return config_from(cfg["arch"], batch_size, meta, meta_path, yaml_path);
}

void save_hrm_checkpoint(const PuzzleModelImpl& model, const std::string& dir, const Json& extra) {
  make_directories(dir);
  const auto& c = model.config();
  Json config = extra;
  config["arch"] = c.arch_json();
  config["dataset"] = {{"seq_len", c.seq_len}, {"vocab_size", c.vocab_size}, {"num_puzzle_identifiers", c.num_puzzle_identifiers}};
  save_tensor_archive(dir + "/model.pt", module_state(model));
  write_json_file(dir + "/config.json", config);
}

HrmConfig checkpoint_config(const std::string& checkpoint_path, const std::string& dataset_json, int64_t batch_size) {
  const std::string ours = containing_directory(checkpoint_path) + "/config.json";
  if (file_exists(ours)) {
    const Json cfg = read_json_file(ours);
    if (cfg.contains("arch") && cfg.contains("dataset")) {
      Json meta = cfg["dataset"];
      std::string meta_path = ours;
      if (!dataset_json.empty()) {
        meta = read_json_file(dataset_json);
        meta_path = dataset_json;
      }
      if (batch_size <= 0) batch_size = cfg.value("global_batch_size", int64_t{1});
      return config_from(cfg["arch"], batch_size, meta, meta_path, ours);
    }
  }
  return upstream_config(checkpoint_path, dataset_json, batch_size);
}

void require_finite_weights(const PuzzleModelImpl& model, const std::string& source) {
  for (const auto& item : model.named_parameters(true))
    if (item.value().is_floating_point() && !torch::isfinite(item.value()).all().item<bool>())
      throw NumericError(source + ": parameter '" + item.key() + "' holds NaN or Inf");
  for (const auto& item : model.named_buffers(true))
    if (item.value().is_floating_point() && !torch::isfinite(item.value()).all().item<bool>())
      throw NumericError(source + ": buffer '" + item.key() + "' holds NaN or Inf");
}

void load_hrm_weights(PuzzleModelImpl& model, const std::string& checkpoint_path) {
  const std::string file = is_directory(checkpoint_path) ? checkpoint_path + "/model.pt" : checkpoint_path;
  auto state = strip_key_prefixes(load_tensors(file), {"model.inner."});
  const auto& c = model.config();
  for (const auto& [name, t] : state) {
    if (name == "puzzle_emb.weights" && t.dim() == 2 && t.size(0) != c.num_puzzle_identifiers)
      throw ShapeError(checkpoint_path + ": puzzle_emb.weights has " + std::to_string(t.size(0)) +
                       " rows but the dataset declares num_puzzle_identifiers = " +
                       std::to_string(c.num_puzzle_identifiers) +
                       " (evaluate with the dataset the checkpoint was trained on)");
    if (name == "embed_tokens.embedding_weight" && t.dim() == 2 && t.size(0) != c.vocab_size)
      throw ShapeError(checkpoint_path + ": embed_tokens has " + std::to_string(t.size(0)) +
                       " rows but the dataset declares vocab_size = " + std::to_string(c.vocab_size));
  }
  load_state_dict(model, state, /*strict=*/true, checkpoint_path);
}

void export_upstream_state_dict(const PuzzleModelImpl& model, const std::string& path) {
  NamedTensors state;
  for (const auto& [name, t] : module_state(model)) state.emplace_back("model.inner." + name, t);
  write_torch_save(path, state);
}

}  // namespace hrmclara::hrm
