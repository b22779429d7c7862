// HRM training task and evaluation (see hrm_train.h); the loop itself is the shared Trainer.
#include <hrmclara/checkpoint.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/hrm_train.h>
#include <hrmclara/log.h>
#include <hrmclara/puzzle_build.h>

#include <torch/torch.h>

#include <chrono>
#include <cstdlib>

#include <unistd.h>

namespace hrmclara::hrm {

Json default_train_config() {
  HrmConfig arch;  // upstream's arch defaults (hrm_v1.yaml)
  arch.puzzle_emb_ndim = arch.hidden_size;
  return Json{
      {"arch", arch.arch_json()},
      {"data_path", ""},
      {"global_batch_size", 768},
      {"epochs", 100000},
      {"eval_interval", 10000},
      {"checkpoint_every_eval", true},
      {"lr", 1e-4},
      {"lr_min_ratio", 1.0},
      {"lr_warmup_steps", 2000},
      {"beta1", 0.9},
      {"beta2", 0.95},
      {"weight_decay", 0.1},
      {"puzzle_emb_lr", 1e-2},
      {"puzzle_emb_weight_decay", 0.1},
      {"seed", 0},
      // Accepted so that upstream's all_config.yaml can be used as a config; not used.
      {"project_name", nullptr},
      {"run_name", nullptr},
      {"checkpoint_path", nullptr},
      {"eval_save_outputs", Json::array()},
      // TRM's pretrain.py keys. data_paths: one dataset (used when data_path is empty); the others
      // are accepted and unused, except ema (evaluate and checkpoint an exponential moving average
      // of the weights, as upstream) and freeze_weights (train only the puzzle embedding).
      {"data_paths", Json::array()},
      {"data_paths_test", Json::array()},
      {"evaluators", Json::array()},
      {"load_checkpoint", nullptr},
      {"min_eval_interval", 0},
      {"ema", false},
      {"ema_rate", 0.999},
      {"freeze_weights", false},
      // Ours.
      {"eval_batch_size", 0},
      {"eval_max_examples", 0},
      {"log_every", 10},
      {"eval_every_steps", 0},
      {"checkpoint_every_steps", 0},
      {"keep_checkpoints", 3},
      {"generate",
       {{"kind", ""}, {"train", 0}, {"test", 0}, {"clues_min", 0}, {"clues_max", 0}, {"num_aug", 0}, {"seed", 0}}},
  };
}

Json validated_train_config(const Json& user, const std::string& where) {
  Json schema = default_train_config();
  // Upstream writes nulls for unset names; any string is fine there.
  for (const char* k : {"project_name", "run_name", "checkpoint_path", "load_checkpoint"})
    if (user.contains(k)) schema[k] = user[k];
  for (const char* k : {"eval_save_outputs", "data_paths", "data_paths_test", "evaluators"})
    if (user.contains(k)) schema[k] = user[k];
  // The arch block's keys depend on the model: TRM adds its own (with upstream trm.yaml's defaults).
  if (user.contains("arch") && user["arch"].is_object() && user["arch"].contains("name")) {
    HrmConfig named;
    try {
      named = HrmConfig::from_arch_json(Json{{"name", user["arch"]["name"]}}, 1, 1, 1, 1);
    } catch (const ConfigError& e) {
      throw ConfigError(where + ": " + e.what());
    }
    const Json named_arch = named.arch_json();  // items() must not outlive the object
    for (const auto& [k, v] : named_arch.items())
      if (!schema["arch"].contains(k)) schema["arch"][k] = v;
    schema["arch"]["name"] = named.name;
  }
  Json c = merge_config(schema, user, where);
  auto positive = [&](const char* key) {
    if (c[key].get<double>() <= 0) throw ConfigError(where + ": '" + std::string(key) + "' must be positive");
  };
  for (const char* k : {"global_batch_size", "epochs", "eval_interval", "log_every", "keep_checkpoints"}) positive(k);
  for (const char* k : {"lr", "puzzle_emb_lr", "weight_decay", "puzzle_emb_weight_decay", "lr_warmup_steps",
                        "eval_batch_size", "eval_max_examples", "eval_every_steps", "checkpoint_every_steps"})
    if (c[k].get<double>() < 0) throw ConfigError(where + ": '" + std::string(k) + "' must not be negative");
  for (const char* k : {"beta1", "beta2"})
    if (c[k].get<double>() < 0 || c[k].get<double>() >= 1) throw ConfigError(where + ": '" + std::string(k) + "' must be in [0, 1)");
  if (c["ema_rate"].get<double>() < 0 || c["ema_rate"].get<double>() >= 1) throw ConfigError(where + ": 'ema_rate' must be in [0, 1)");
  for (const char* k : {"data_paths", "data_paths_test"}) {
    if (!c[k].is_array()) throw ConfigError(where + ": '" + std::string(k) + "' must be a list of paths");
    for (const auto& p : c[k])
      if (!p.is_string()) throw ConfigError(where + ": '" + std::string(k) + "' must be a list of paths");
  }
  if (c["data_paths"].size() > 1)
    throw ConfigError(where + ": 'data_paths' names " + std::to_string(c["data_paths"].size()) +
                      " datasets; one is supported (upstream would mix their puzzle identifiers)");
  if (c["lr_min_ratio"].get<double>() < 0 || c["lr_min_ratio"].get<double>() > 1)
    throw ConfigError(where + ": 'lr_min_ratio' must be in [0, 1]");
  const std::string kind = c["generate"]["kind"];
  if (!kind.empty() && kind != "sudoku-gen") throw ConfigError(where + ": generate.kind must be \"\" or \"sudoku-gen\"");
  // The arch block is checked by HrmConfig; its data fields (batch, seq_len, vocab, identifiers)
  // come from the dataset later, so any valid values do for this check.
  try {
    HrmConfig::from_arch_json(c["arch"], 1, 1, 1, 1);
  } catch (const ConfigError& e) {
    throw ConfigError(where + ": " + e.what());
  }
  return c;
}

Json apply_train_overrides(const Json& config, const std::vector<std::string>& overrides, const std::string& where) {
  // arch.name first: it decides which arch keys exist (e.g. arch.mlp_t needs arch.name=trm).
  std::vector<std::string> name, rest;
  for (const auto& o : overrides) (o.rfind("arch.name=", 0) == 0 ? name : rest).push_back(o);
  Json c = config;
  if (!name.empty()) c = validated_train_config(apply_overrides(c, name), where);
  return validated_train_config(apply_overrides(c, rest), where);
}

Json prepare_dataset(Json config) {
  if (config["data_path"].get<std::string>().empty() && !config["data_paths"].empty())
    config["data_path"] = config["data_paths"][0];
  if (!config["data_path"].get<std::string>().empty()) return config;
  const Json& g = config["generate"];
  if (g["kind"].get<std::string>().empty())
    throw ConfigError("data_path is empty and no generator is configured (set data_path=DIR)");
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  const char* home = std::getenv("HOME");
  const std::string cache = xdg && *xdg ? std::string(xdg) : std::string(home && *home ? home : ".") + "/.cache";
  const std::string name = "sudoku-gen-train" + std::to_string(g["train"].get<int64_t>()) + "-test" +
                           std::to_string(g["test"].get<int64_t>()) + "-clues" + std::to_string(g["clues_min"].get<int64_t>()) +
                           "-" + std::to_string(g["clues_max"].get<int64_t>()) + "-aug" + std::to_string(g["num_aug"].get<int64_t>()) +
                           "-seed" + std::to_string(g["seed"].get<int64_t>());
  const std::string dir = cache + "/hrmclara/data/" + name;
  if (!file_exists(dir + "/test/dataset.json")) {
    log_info("generating the Sudoku dataset once into " + dir);
    const auto t0 = std::chrono::steady_clock::now();
    // Built in a temp directory and renamed, so an interrupted generation is never mistaken for a dataset.
    const std::string tmp = dir + ".tmp-" + std::to_string(::getpid());
    remove_tree(tmp);
    puzzles::SudokuGenOptions opt;
    opt.train = g["train"].get<int64_t>();
    opt.test = g["test"].get<int64_t>();
    opt.clues_min = g["clues_min"].get<int>();
    opt.clues_max = g["clues_max"].get<int>();
    opt.num_aug = g["num_aug"].get<int>();
    opt.seed = g["seed"].get<uint64_t>();
    puzzles::generate_sudoku_dataset(tmp, opt);
    remove_tree(dir);
    rename_path(tmp, dir);
    log_info("generated in " +
             std::to_string(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()) + " s");
  }
  config["data_path"] = dir;
  return config;
}

// ---- evaluation ------------------------------------------------------------------------------

namespace {
// Scalar metric tensors as doubles, in one device-to-host copy (one sync per step on a GPU, not
// one per metric).
std::map<std::string, double> metrics_to_host(const std::map<std::string, torch::Tensor>& metrics) {
  std::vector<torch::Tensor> values;
  for (const auto& [name, v] : metrics) values.push_back(v.detach().to(torch::kDouble).reshape({}));
  const auto host = torch::stack(values).cpu();
  std::map<std::string, double> out;
  int64_t i = 0;
  for (const auto& [name, v] : metrics) out[name] = host[i++].item<double>();
  return out;
}
}  // namespace

EvalResult evaluate_model(PuzzleModelImpl& model, const PuzzleDataset& data, int64_t batch_size, int64_t max_examples,
                          bool keep_predictions, ProcessGroup* group) {
  if (group && keep_predictions) throw UsageError("evaluate_model: predictions are kept by single-process evaluation only");
  const auto& c = model.config();
  const auto& meta = data.metadata();
  if (meta.seq_len != c.seq_len || meta.vocab_size != c.vocab_size)
    throw ShapeError(data.dir() + ": seq_len " + std::to_string(meta.seq_len) + " / vocab_size " +
                     std::to_string(meta.vocab_size) + " do not match the model's " + std::to_string(c.seq_len) + " / " +
                     std::to_string(c.vocab_size));
  for (int32_t id : data.example_identifiers())
    if (id >= c.num_puzzle_identifiers)
      throw ShapeError(data.dir() + ": puzzle identifier " + std::to_string(id) + " is outside the model's " +
                       std::to_string(c.num_puzzle_identifiers) + " puzzle embeddings");
  const bool was_training = model.is_training();
  model.eval();
  torch::NoGradGuard no_grad;
  const auto device = model.H_init.device();
  std::map<std::string, double> sums;
  std::vector<torch::Tensor> inputs, labels, ids, preds, q_halt;
  int64_t seen = 0, index = 0;
  for (auto& rows : sequential_batches(data, batch_size)) {
    if (max_examples > 0 && seen >= max_examples) break;
    if (max_examples > 0 && seen + static_cast<int64_t>(rows.size()) > max_examples) rows.resize(static_cast<size_t>(max_examples - seen));
    const int64_t n = static_cast<int64_t>(rows.size());
    seen += n;
    if (group && index++ % group->world_size() != group->rank()) continue;  // another rank's batch
    const Batch batch = data.gather(rows, batch_size).to(device);
    Carry carry = model.initial_carry(batch);
    Outputs out;
    LossResult loss;
    for (int64_t k = 0; k < c.halt_max_steps; ++k) {
      std::tie(carry, out) = model.forward(carry, batch);
      loss = act_loss(c, carry, out);
      if (loss.all_halted) break;
    }
    // NaN/Inf logits would score as silently wrong predictions: name the parameter behind them.
    if (!torch::isfinite(out.logits).all().item<bool>()) {
      require_finite_weights(model, "evaluation");
      throw NumericError("evaluation: the logits hold NaN or Inf");
    }
    for (const auto& [name, v] : metrics_to_host(loss.metrics)) sums[name] += v;
    if (keep_predictions) {
      inputs.push_back(batch.inputs.narrow(0, 0, n).cpu());
      labels.push_back(batch.labels.narrow(0, 0, n).cpu());
      ids.push_back(batch.puzzle_identifiers.narrow(0, 0, n).cpu());
      preds.push_back(out.logits.argmax(-1).narrow(0, 0, n).to(torch::kInt).cpu());
      q_halt.push_back(out.q_halt_logits.narrow(0, 0, n).to(torch::kFloat).cpu());
    }
  }
  if (was_training) model.train();
  if (group) {
    // Every rank ends up with the sums over all ranks (the same keys on every rank: act_loss's).
    for (const char* k : {"count", "accuracy", "exact_accuracy", "q_halt_accuracy", "lm_loss", "q_halt_loss", "steps"}) sums[k] += 0.0;
    group->all_reduce_sum(sums);
  }
  EvalResult r;
  const double count = std::max(1.0, sums["count"]);
  r.metrics["count"] = sums["count"];
  for (const char* k : {"accuracy", "exact_accuracy", "q_halt_accuracy", "lm_loss", "q_halt_loss"}) r.metrics[k] = sums[k] / count;
  r.metrics["mean_steps"] = sums["steps"] / count;
  if (keep_predictions && !preds.empty()) {
    r.inputs = torch::cat(inputs);
    r.labels = torch::cat(labels);
    r.puzzle_identifiers = torch::cat(ids);
    r.predictions = torch::cat(preds);
    r.q_halt_logits = torch::cat(q_halt);
  }
  return r;
}

// ---- the training task -----------------------------------------------------------------------

HrmTrainTask::HrmTrainTask(const Json& config, const c10::Device& device, ProcessGroup* group)
    : config_(config), device_(device), group_(group) {
  if (group_) {
    rank_ = group_->rank();
    world_ = group_->world_size();
  }
  const std::string data_path = config["data_path"];
  if (data_path.empty()) throw ConfigError("data_path is empty");
  train_ = std::make_unique<PuzzleDataset>(data_path + "/train");
  if (is_directory(data_path + "/test"))
    test_ = std::make_unique<PuzzleDataset>(data_path + "/test");
  else
    log_warn(data_path + "/test: missing; evaluation is skipped");
  const auto& meta = train_->metadata();
  batch_size_ = config["global_batch_size"].get<int64_t>();
  if (batch_size_ % world_ != 0)
    throw ConfigError("global_batch_size " + std::to_string(batch_size_) + " is not divisible by the " + std::to_string(world_) +
                      " processes of the run");
  local_batch_ = batch_size_ / world_;
  // The model's batch (its sparse embedding's rows) is this rank's share of the global batch.
  const auto model_config =
      HrmConfig::from_arch_json(config["arch"], local_batch_, meta.seq_len, meta.vocab_size, meta.num_puzzle_identifiers);
  const uint64_t seed = config["seed"].get<uint64_t>();
  model_ = make_puzzle_model(model_config);
  model_->reset_parameters(seed);
  model_->to(device_);
  if (group_) {
    // Same seed, same weights; rank 0's are broadcast all the same, so that no rank can differ.
    std::vector<torch::Tensor> state;
    for (const auto& p : model_->parameters()) state.push_back(p.detach());
    for (const auto& b : model_->buffers()) state.push_back(b.detach());
    if (model_->puzzle_emb) state.push_back(model_->puzzle_emb->weights);
    group_->broadcast(state, 0);
  }
  if (model_->puzzle_emb) model_->puzzle_emb->sync_device();
  model_->train();
  adam_ = std::make_unique<AdamATan2>(
      model_->dense_parameters(),
      AdamATan2::Options{config["lr"].get<double>(), config["beta1"].get<double>(), config["beta2"].get<double>(),
                         config["weight_decay"].get<double>()});
  if (model_->puzzle_emb)  // puzzle_emb_ndim 0: no embedding to train
  sign_ = std::make_unique<SparseSignSGD>(model_->puzzle_emb->weights, model_->puzzle_emb->local_weights,
                                          model_->puzzle_emb->local_ids, config["puzzle_emb_lr"].get<double>(),
                                          config["puzzle_emb_weight_decay"].get<double>());
  if (config["ema"].get<bool>()) {
    torch::NoGradGuard no_grad;
    for (auto& [name, p] : model_->dense_parameters()) ema_.emplace_back(name, p.detach().clone());
  }
  sampler_ = std::make_unique<TrainSampler>(*train_, batch_size_, config["eval_interval"].get<int64_t>(), seed);
  // Upstream: total_steps = int(epochs * total_groups * mean_puzzle_examples / global_batch_size).
  total_steps_ = static_cast<int64_t>(config["epochs"].get<double>() * static_cast<double>(meta.total_groups) *
                                      meta.mean_puzzle_examples / static_cast<double>(batch_size_));
  if (sampler_->batches_in_iteration(0) == 0)
    throw ShapeError(data_path + "/train: fewer examples per iteration than one batch of " + std::to_string(batch_size_) +
                     " (lower global_batch_size)");
  if (total_steps_ < 1) throw ConfigError("the run has no steps (epochs * examples < global_batch_size)");
  // Exploration draws from the device's generator: seed it for a reproducible run (each rank its
  // own stream, as upstream seeds seed + RANK).
  torch::manual_seed(seed + static_cast<uint64_t>(rank_));
}

TrainTask::StepResult HrmTrainTask::train_step(int64_t /*step*/, double lr_factor) {
  auto rows = sampler_->batch_at(position_);
  if (!rows) {
    position_ = {position_.iteration + 1, 0};
    rows = sampler_->batch_at(position_);
    if (!rows) throw ShapeError(train_->dir() + ": an iteration produced no batch");
  }
  // This rank's contiguous slice of the global batch (upstream's split), padded to the local batch.
  std::vector<int64_t> mine;
  for (int64_t i = rank_ * local_batch_; i < std::min<int64_t>((rank_ + 1) * local_batch_, rows->size()); ++i)
    mine.push_back((*rows)[static_cast<size_t>(i)]);
  const Batch batch = train_->gather(mine, local_batch_).to(device_);
  if (!carry_) carry_ = model_->initial_carry(batch);
  auto [next, out] = model_->forward(*carry_, batch);
  LossResult result = act_loss(model_->config(), next, out);
  const double scale = 1.0 / static_cast<double>(batch_size_);
  (result.loss * scale).backward();
  if (group_) {
    // Summed over ranks: each rank's loss was already divided by the global batch.
    std::vector<torch::Tensor> grads;
    for (const auto& [name, p] : model_->dense_parameters())
      if (p.grad().defined()) grads.push_back(p.mutable_grad());
    group_->all_reduce_sum(grads);
  }
  if (sign_) {
    sign_->set_lr(config_["puzzle_emb_lr"].get<double>() * lr_factor);
    if (group_) {
      // upstream CastedSparseEmbeddingSignSGD_Distributed: every rank's rows and ids, gathered.
      const auto& g = sign_->local_weights().grad();
      if (g.defined()) sign_->step(group_->all_gather_cat(g), group_->all_gather_cat(sign_->local_ids()));
    } else {
      sign_->step();
    }
    sign_->zero_grad();
  }
  adam_->set_lr(config_["lr"].get<double>() * lr_factor);
  if (!config_["freeze_weights"].get<bool>()) adam_->step();
  adam_->zero_grad();
  update_ema();
  carry_ = std::move(next);

  StepResult r;
  result.metrics["loss"] = result.loss;
  auto host = metrics_to_host(result.metrics);
  if (group_) group_->all_reduce_sum(host);
  // Upstream's reduction: losses per global batch, the rest per halted example.
  const double count = std::max(1.0, host.at("count"));
  for (const auto& [name, x] : host) {
    const bool is_loss = name.size() >= 4 && name.compare(name.size() - 4, 4, "loss") == 0;
    r.metrics[name] = name == "count" ? x : x / (is_loss ? static_cast<double>(batch_size_) : count);
  }
  ++position_.batch;
  r.end_of_period = position_.batch >= sampler_->batches_in_iteration(position_.iteration);
  if (r.end_of_period) position_ = {position_.iteration + 1, 0};
  return r;
}

void HrmTrainTask::update_ema() {
  if (ema_.empty()) return;
  // upstream EMAHelper.update: shadow = (1 - mu) * param + mu * shadow, after every step.
  torch::NoGradGuard no_grad;
  const double mu = config_["ema_rate"].get<double>();
  const auto params = model_->dense_parameters();
  for (size_t i = 0; i < ema_.size(); ++i) ema_[i].second.mul_(mu).add_(params[i].second, 1.0 - mu);
}

void HrmTrainTask::swap_ema() const {
  torch::NoGradGuard no_grad;
  const auto params = model_->dense_parameters();
  for (size_t i = 0; i < ema_.size(); ++i) {
    auto raw = params[i].second.detach().clone();
    params[i].second.detach().copy_(ema_[i].second);
    ema_[i].second.copy_(raw);
  }
}

Metrics HrmTrainTask::evaluate() {
  if (!test_) return {};
  const int64_t eval_batch = config_["eval_batch_size"].get<int64_t>() > 0 ? config_["eval_batch_size"].get<int64_t>() : batch_size_;
  // With EMA, upstream evaluates (and checkpoints) the averaged weights.
  swap_ema();
  Metrics m;
  try {
    m = evaluate_model(*model_, *test_, eval_batch, config_["eval_max_examples"].get<int64_t>(), false, group_).metrics;
  } catch (...) {
    swap_ema();
    throw;
  }
  swap_ema();
  return m;
}

void HrmTrainTask::save(const std::string& dir) const {
  if (rank_ != 0) {
    // Everything but the carry and the random stream is the same on every rank: rank 0 saves it.
    save_tensor_archive(dir + "/rank_" + std::to_string(rank_) + ".pt", rank_state());
    return;
  }
  // model.pt holds what upstream's checkpoint holds: the EMA weights when ema is on. The weights
  // being trained go to train_state.pt ("raw.*") so that a resumed run continues exactly.
  NamedTensors state;
  if (!ema_.empty()) {
    for (const auto& [name, p] : model_->dense_parameters()) state.emplace_back("raw." + name, p.detach().clone());
    swap_ema();
    try {
      save_hrm_checkpoint(*model_, dir, config_);
    } catch (...) {
      swap_ema();
      throw;
    }
    swap_ema();
  } else {
    save_hrm_checkpoint(*model_, dir, config_);
  }
  for (auto& [k, v] : adam_->state()) state.emplace_back("adam." + k, v);
  for (auto& item : rank_state()) state.push_back(std::move(item));
  save_tensor_archive(dir + "/train_state.pt", state);
  write_json_file(dir + "/data_position.json",
                  Json{{"iteration", position_.iteration}, {"batch", position_.batch}, {"world_size", world_}});
}

NamedTensors HrmTrainTask::rank_state() const {
  NamedTensors state;
  if (carry_) {
    state.emplace_back("carry.z_H", carry_->z_H);
    state.emplace_back("carry.z_L", carry_->z_L);
    state.emplace_back("carry.steps", carry_->steps);
    state.emplace_back("carry.halted", carry_->halted);
    state.emplace_back("carry.inputs", carry_->current.inputs);
    state.emplace_back("carry.labels", carry_->current.labels);
    state.emplace_back("carry.puzzle_identifiers", carry_->current.puzzle_identifiers);
  }
  {
    auto gen = at::globalContext().defaultGenerator(device_);
    std::lock_guard<std::mutex> lock(gen.mutex());
    state.emplace_back("rng.device", gen.get_state());
  }
  if (!device_.is_cpu()) {
    auto gen = at::globalContext().defaultGenerator(c10::Device(c10::kCPU));
    std::lock_guard<std::mutex> lock(gen.mutex());
    state.emplace_back("rng.cpu", gen.get_state());
  }
  return state;
}

void HrmTrainTask::restore_rank_state(std::map<std::string, torch::Tensor>& s, const std::string& state_path) {
  if (s.count("carry.z_H")) {
    for (const char* k : {"carry.z_L", "carry.steps", "carry.halted", "carry.inputs", "carry.labels", "carry.puzzle_identifiers"})
      if (!s.count(k)) throw FormatError(state_path + ": missing '" + std::string(k) + "'");
    Carry c;
    c.z_H = s["carry.z_H"].to(device_);
    c.z_L = s["carry.z_L"].to(device_);
    c.steps = s["carry.steps"].to(device_);
    c.halted = s["carry.halted"].to(device_);
    c.current = Batch{s["carry.inputs"], s["carry.labels"], s["carry.puzzle_identifiers"]}.to(device_);
    if (c.z_H.size(0) != local_batch_)
      throw ShapeError(state_path + ": the carry's batch size differs from this run's (global_batch_size / processes)");
    carry_ = c;
  }
  if (!s.count("rng.device")) throw FormatError(state_path + ": missing 'rng.device'");
  {
    auto gen = at::globalContext().defaultGenerator(device_);
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(s["rng.device"]);
  }
  if (s.count("rng.cpu")) {
    auto gen = at::globalContext().defaultGenerator(c10::Device(c10::kCPU));
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(s["rng.cpu"]);
  }
}

void HrmTrainTask::load(const std::string& dir) {
  // A checkpoint holds one carry per process: it resumes with the number of processes that wrote it.
  {
    const std::string pos_path = dir + "/data_position.json";
    const Json pos = read_json_file(pos_path);
    const int64_t saved_world = pos.value("world_size", int64_t{1});
    if (saved_world != world_)
      throw ConfigError(dir + ": written by a run of " + std::to_string(saved_world) + " process(es); resume it with " +
                        std::to_string(saved_world) + " (this run has " + std::to_string(world_) + ")");
  }
  load_hrm_weights(*model_, dir);
  const std::string state_path = dir + "/train_state.pt";
  std::map<std::string, torch::Tensor> s;
  for (auto& [k, v] : load_tensor_archive(state_path)) s[k] = v;
  NamedTensors adam_state;
  for (const auto& [k, v] : s)
    if (k.rfind("adam.", 0) == 0) adam_state.emplace_back(k.substr(5), v);
  adam_->load_state(adam_state);
  if (!ema_.empty()) {
    // model.pt held the averages; the trained weights come from train_state.pt.
    torch::NoGradGuard no_grad;
    const auto params = model_->dense_parameters();
    for (size_t i = 0; i < params.size(); ++i) {
      const std::string key = "raw." + params[i].first;
      if (!s.count(key)) throw FormatError(state_path + ": missing '" + key + "' (saved without ema?)");
      if (s[key].sizes() != params[i].second.sizes()) throw ShapeError(state_path + ": '" + key + "' has the wrong shape");
      ema_[i].second.copy_(params[i].second);
      params[i].second.detach().copy_(s[key]);
    }
  }
  restore_rank_state(s, state_path);
  const std::string pos_path = dir + "/data_position.json";
  const Json pos = read_json_file(pos_path);
  if (!pos.contains("iteration") || !pos.contains("batch")) throw FormatError(pos_path + ": needs 'iteration' and 'batch'");
  position_ = {pos["iteration"].get<int64_t>(), pos["batch"].get<int64_t>()};
  if (rank_ != 0) {
    // This rank's own carry and random stream.
    const std::string rank_path = dir + "/rank_" + std::to_string(rank_) + ".pt";
    std::map<std::string, torch::Tensor> r;
    for (auto& [k, v] : load_tensor_archive(rank_path)) r[k] = v;
    restore_rank_state(r, rank_path);
  }
}

}  // namespace hrmclara::hrm
