// CLaRa's training task on the shared Trainer (see include/hrmclara/clara_train.h).
#include <hrmclara/clara_train.h>
#include <hrmclara/checkpoint.h>
#include <hrmclara/device.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/log.h>
#include <hrmclara/qa_metrics.h>
#include <hrmclara/tensor_io.h>

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <random>

namespace hrmclara::clara {

// ---- config -----------------------------------------------------------------------------------

Json default_clara_train_config() {
  return Json{
      {"//", ""},  // a comment, as presets carry
      {"stage", "stage1"},
      {"base", ""},
      {"init", ""},
      {"train_data", ""},
      {"eval_data", ""},
      // 0: the init checkpoint's value (a fresh stage-1 model: upstream's 256 / 32 / 1 / 16).
      {"doc_max_length", 0},
      {"compr_rate", 0},
      {"generation_top_k", 0},
      {"lora_r", 0},
      {"lora_alpha", 0.0},
      {"lora_dropout", 0.1},
      {"dec_max_len", 2048},
      {"truncation", "keep_answer"},
      {"skip_bad_rows", false},
      {"max_samples", 0},
      {"paraphrase_seed", 20240611},
      {"train_batch_size", 128},
      {"micro_batch_size", 2},
      {"epochs", 1.0},
      {"max_steps", 0},
      {"lr", 1e-4},
      {"lr_scheduler", "cosine_with_min_lr"},
      {"warmup_ratio", 0.03},
      {"min_lr_ratio", 0.1},
      {"weight_decay", 0.0},
      {"adam_betas", {0.9, 0.95}},
      {"adam_eps", 1e-8},
      {"max_grad_norm", 1.0},
      {"mse_loss", true},
      {"train_base", false},
      {"dtype", "auto"},
      {"seed", 42},
      {"log_every", 1},
      {"eval_every_steps", 0},
      {"eval_max_examples", 32},
      {"eval_max_new_tokens", 64},
      {"checkpoint_every_steps", 0},
      {"keep_checkpoints", 2},
  };
}

Json validated_clara_train_config(const Json& user, const std::string& where, bool require_inputs) {
  Json c = merge_config(default_clara_train_config(), user, where);
  auto fail = [&](const std::string& key, const std::string& what) { throw ConfigError(where + ": '" + key + "' " + what); };
  try {
    c["stage"] = canonical_stage(c["stage"].get<std::string>());
  } catch (const ConfigError& e) {
    fail("stage", e.what());
  }
  for (const char* k : {"train_batch_size", "micro_batch_size", "dec_max_len", "log_every", "keep_checkpoints"})
    if (c[k].get<double>() < 1) fail(k, "must be >= 1");
  for (const char* k : {"doc_max_length", "compr_rate", "generation_top_k", "lora_r", "lora_alpha", "max_samples", "max_steps", "eval_max_new_tokens",
                        "lr", "warmup_ratio", "weight_decay", "eval_every_steps", "eval_max_examples", "checkpoint_every_steps",
                        "adam_eps", "max_grad_norm"})
    if (c[k].get<double>() < 0) fail(k, "must not be negative");
  if (!(c["epochs"].get<double>() > 0)) fail("epochs", "must be positive");
  if (c["train_batch_size"].get<int64_t>() % c["micro_batch_size"].get<int64_t>() != 0)
    fail("train_batch_size", "must be a multiple of micro_batch_size (gradient accumulation = train / micro)");
  if (!(c["lora_dropout"].get<double>() >= 0 && c["lora_dropout"].get<double>() < 1)) fail("lora_dropout", "must be in [0, 1)");
  if (!(c["min_lr_ratio"].get<double>() >= 0 && c["min_lr_ratio"].get<double>() <= 1)) fail("min_lr_ratio", "must be in [0, 1]");
  const std::string sched = c["lr_scheduler"];
  if (sched != "cosine_with_min_lr" && sched != "constant" && sched != "linear_warmup")
    fail("lr_scheduler", "must be cosine_with_min_lr, constant or linear_warmup");
  if (!c["adam_betas"].is_array() || c["adam_betas"].size() != 2) fail("adam_betas", "must be [beta1, beta2]");
  for (const auto& b : c["adam_betas"])
    if (!b.is_number() || b.get<double>() < 0 || b.get<double>() >= 1) fail("adam_betas", "must hold two numbers in [0, 1)");
  parse_clara_truncation(c["truncation"].get<std::string>());
  if (!require_inputs) return c;
  if (c["base"].get<std::string>().empty()) fail("base", "is empty: give the base model directory (--base)");
  if (c["train_data"].get<std::string>().empty()) fail("train_data", "is empty: give the training rows (train_data=FILE)");
  if (c["stage"] != "stage1" && c["init"].get<std::string>().empty())
    fail("init", "is empty: " + c["stage"].get<std::string>() + " starts from an earlier stage's checkpoint (--init)");
  return c;
}

double cosine_with_min_lr_factor(int64_t step, int64_t warmup_steps, int64_t total_steps, double min_ratio) {
  // transformers' lr_lambda(current_step) with current_step = step - 1 (the scheduler steps after
  // the optimizer, from 0).
  const int64_t current = step - 1;
  if (current < warmup_steps) return static_cast<double>(current) / static_cast<double>(std::max<int64_t>(1, warmup_steps));
  const double progress =
      static_cast<double>(current - warmup_steps) / static_cast<double>(std::max<int64_t>(1, total_steps - warmup_steps));
  const double cosine = std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * 2.0 * 0.5 * progress)));
  return cosine * (1.0 - min_ratio) + min_ratio;
}

double clara_lr_factor(const std::string& scheduler, int64_t step, int64_t warmup_steps, int64_t total_steps, double min_ratio) {
  if (scheduler == "constant") return 1.0;
  if (scheduler == "linear_warmup")
    return step - 1 < warmup_steps ? static_cast<double>(step - 1) / static_cast<double>(std::max<int64_t>(1, warmup_steps)) : 1.0;
  return cosine_with_min_lr_factor(step, warmup_steps, total_steps, min_ratio);
}

// ---- the task -------------------------------------------------------------------------------------

namespace {

at::Tensor to_tensor(const IdMatrix& m) { return at::tensor(m.data, at::kLong).view({m.rows, m.cols}); }

ClaraTensors tensors_of(const ClaraBatch& b, const c10::Device& device) {
  ClaraTensors t;
  t.enc_ids = to_tensor(b.enc_input_ids).to(device);
  t.enc_mask = to_tensor(b.enc_attention_mask).to(device);
  t.dec_ids = to_tensor(b.dec_input_ids).to(device);
  t.dec_mask = to_tensor(b.dec_attention_mask).to(device);
  t.labels = to_tensor(b.labels).to(device);
  if (b.query_input_ids.rows > 0) {
    t.query_ids = to_tensor(b.query_input_ids).to(device);
    t.query_mask = to_tensor(b.query_attention_mask).to(device);
  }
  t.docs_per_row = b.num_docs.empty() ? 1 : b.num_docs.front();
  return t;
}

std::vector<int64_t> permutation(int64_t n, uint64_t seed) {
  // Fisher-Yates over mt19937_64, whose output the standard fixes: the same order everywhere.
  std::mt19937_64 rng(seed);
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
  for (int64_t i = n - 1; i > 0; --i) std::swap(order[static_cast<size_t>(i)], order[rng() % static_cast<uint64_t>(i + 1)]);
  return order;
}

// The row's answer text, as scored by evaluation: the answers joined as the target is.
std::string target_of(const ClaraRow& row) {
  if (row.answers.size() == 1) return row.answers.front();
  std::string out;
  for (size_t i = 0; i < row.answers.size(); ++i)
    out += (i ? "\n" : "") + std::string("Question: ") + (i < row.questions.size() ? row.questions[i] : "") + "\nAnswer: " + row.answers[i];
  return out;
}

}  // namespace

ClaraTrainTask::ClaraTrainTask(const Json& config, const c10::Device& device, ProcessGroup* group)
    : config_(config), device_(device), paraphrase_rng_(config["paraphrase_seed"].get<int64_t>()), group_(group) {
  if (group_) {
    rank_ = group_->rank();
    world_ = group_->world_size();
  }
  stage_ = config_["stage"].get<std::string>();
  data_stage_ = parse_clara_stage(stage_);
  const std::string base = config_["base"], init = config_["init"];
  const uint64_t seed = config_["seed"].get<uint64_t>();
  torch::manual_seed(seed);  // LoRA dropout draws from the default generator

  ClaraLoadOptions o;
  o.device = device;
  o.dtype = resolve_dtype(config_["dtype"].get<std::string>(), device, LlmConfig::load(base + "/config.json").torch_dtype);
  o.seed = seed;
  std::vector<std::string> overrides = {"lora_dropout=" + std::to_string(config_["lora_dropout"].get<double>())};
  for (const char* k : {"doc_max_length", "compr_rate", "generation_top_k", "lora_r"})
    if (config_[k].get<int64_t>() > 0) overrides.push_back(std::string(k) + "=" + std::to_string(config_[k].get<int64_t>()));
  if (config_["lora_alpha"].get<double>() > 0) overrides.push_back("lora_alpha=" + std::to_string(config_["lora_alpha"].get<double>()));
  o.config_overrides = overrides;
  if (init.empty()) {
    ClaraConfig fresh;
    fresh.apply_overrides(overrides, "the training config");
    fresh.training_stage = stage_;
    model_ = std::make_unique<ClaraModel>(ClaraModel::create(base, fresh, o));
  } else {
    o.training_stage = stage_;
    o.pure_inference = false;
    model_ = std::make_unique<ClaraModel>(ClaraModel::load(init, base, o));
  }
  log_info(model_->load_report());
  if (world_ > 1) torch::manual_seed(seed + static_cast<uint64_t>(rank_));  // each rank its own dropout masks
  const auto& mc = model_->config();

  ClaraReadOptions ro;
  ro.skip_bad_rows = config_["skip_bad_rows"].get<bool>();
  ro.max_rows = config_["max_samples"].get<size_t>();
  if (data_stage_ != ClaraStage::kStage2) ro.num_docs = static_cast<int>(mc.generation_top_k);
  const auto train = read_clara_rows(config_["train_data"], data_stage_, ro);
  rows_ = train.rows;
  if (train.bad_rows > 0)
    log_warn(std::to_string(train.bad_rows) + " malformed rows of " + config_["train_data"].get<std::string>() +
             " skipped (first: " + train.errors.front() + ")");
  if (!config_["eval_data"].get<std::string>().empty()) {
    ClaraReadOptions eo = ro;
    eo.max_rows = 0;
    eval_rows_ = read_clara_rows(config_["eval_data"], data_stage_, eo).rows;
  }
  collate_.doc_max_length = static_cast<int>(mc.doc_max_length);
  collate_.compr_rate = static_cast<int>(mc.compr_rate);
  collate_.generation_top_k = static_cast<int>(mc.generation_top_k);
  collate_.dec_max_len = config_["dec_max_len"].get<int>();
  collate_.truncation = parse_clara_truncation(config_["truncation"]);

  const int64_t batch = config_["train_batch_size"].get<int64_t>(), micro = config_["micro_batch_size"].get<int64_t>();
  accumulation_ = batch / micro;
  steps_per_epoch_ = static_cast<int64_t>(rows_.size()) / batch;
  if (steps_per_epoch_ < 1)
    throw ConfigError(config_["train_data"].get<std::string>() + ": " + std::to_string(rows_.size()) +
                      " rows, fewer than one batch of train_batch_size " + std::to_string(batch));
  total_steps_ = config_["max_steps"].get<int64_t>() > 0
                     ? config_["max_steps"].get<int64_t>()
                     : static_cast<int64_t>(std::ceil(config_["epochs"].get<double>() * static_cast<double>(steps_per_epoch_)));
  mse_weight_ = config_["mse_loss"].get<bool>() && stage_ != "stage2" ? 0.1 : 0.0;
  order_ = permutation(static_cast<int64_t>(rows_.size()), seed);

  // What trains, as upstream's stage; and float32 masters of it when computing in a lower precision.
  working_ = model_->prepare_training(stage_);
  if (config_["train_base"].get<bool>())
    for (auto& [name, w] : model_->base().named_weights()) {
      if (name == "model.embed_tokens.weight" && stage_ == "stage1") continue;  // the memory rows train separately
      w.set_requires_grad(true);
      working_.emplace_back("base." + name, w);
    }
  for (auto& [name, w] : working_) {
    if (w.scalar_type() == at::kFloat) {
      masters_.emplace_back(name, w);  // the model's own tensor: nothing to copy
    } else {
      masters_.emplace_back(name, w.detach().to(at::kFloat).clone());
    }
  }
  if (group_) {
    // Same seed, same fresh adapters; rank 0's are broadcast all the same (the trainable tensors
    // only: the frozen base is read from the same files by every rank).
    std::vector<at::Tensor> state;
    for (auto& [name, m] : masters_) state.push_back(m.detach());
    group_->broadcast(state, 0);
    copy_masters_to_model();
  }
  const auto& betas = config_["adam_betas"];
  optimizer_ = std::make_unique<AdamW>(masters_, AdamW::Options{config_["lr"].get<double>(), betas[0].get<double>(),
                                                                 betas[1].get<double>(), config_["adam_eps"].get<double>(),
                                                                 config_["weight_decay"].get<double>()});
  log_info("clara_train " + stage_ + ": " + std::to_string(rows_.size()) + " rows, " + std::to_string(total_steps_) +
           " steps of " + std::to_string(batch) + " (" + std::to_string(accumulation_) + " micro-batches of " + std::to_string(micro) +
           "), " + std::to_string(masters_.size()) + " trainable tensors, compute " + dtype_name(model_->base().dtype()) + " on " +
           describe_device(device));
}

std::vector<ClaraRow> ClaraTrainTask::next_rows(int64_t count) {
  const int64_t per_epoch = steps_per_epoch_ * config_["train_batch_size"].get<int64_t>();
  std::vector<ClaraRow> out;
  while (static_cast<int64_t>(out.size()) < count) {
    if (cursor_ >= per_epoch) {  // the rest of the epoch is dropped (drop_last), a new order drawn
      ++epoch_;
      cursor_ = 0;
      order_ = permutation(static_cast<int64_t>(rows_.size()), config_["seed"].get<uint64_t>() + static_cast<uint64_t>(epoch_));
    }
    out.push_back(rows_[static_cast<size_t>(order_[static_cast<size_t>(cursor_++)])]);
  }
  return out;
}

void ClaraTrainTask::copy_masters_to_model() {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < working_.size(); ++i)
    if (!working_[i].second.is_same(masters_[i].second)) working_[i].second.copy_(masters_[i].second);
}

Metrics ClaraTrainTask::accumulate_gradients() {
  const int64_t micro = config_["micro_batch_size"].get<int64_t>();
  const auto rows = next_rows(config_["train_batch_size"].get<int64_t>());
  // Collate every micro-batch first: rows that cannot fit are dropped, and the step's objective is
  // the mean over the micro-batches that remain of each one's token mean.
  std::vector<ClaraBatch> batches;
  ClaraCollateStats stats;
  for (int64_t m = 0; m < accumulation_; ++m) {
    const std::vector<ClaraRow> part(rows.begin() + m * micro, rows.begin() + (m + 1) * micro);
    auto b = clara_collate(model_->tokenizer(), part, data_stage_, collate_, paraphrase_rng_);
    stats += b.stats;
    if (b.size() > 0) batches.push_back(std::move(b));
  }
  if (batches.empty())
    throw ShapeError(config_["train_data"].get<std::string>() + ": every row of a step was dropped (" +
                     std::to_string(stats.dropped_rows) + " rows do not fit dec_max_len " + std::to_string(collate_.dec_max_len) +
                     " even without their question): raise dec_max_len");
  for (auto& [name, w] : working_)
    if (w.grad().defined()) w.mutable_grad() = at::Tensor();
  for (auto& [name, m] : masters_) m.mutable_grad() = torch::zeros_like(m);
  Metrics out;
  double loss = 0, qa = 0, mse = 0;
  int64_t targets = 0, tokens = 0;
  std::vector<std::vector<int64_t>> pos, pred;
  const auto t0 = std::chrono::steady_clock::now();
  int64_t index = 0;
  for (const auto& b : batches) {
    if (index++ % world_ != rank_) continue;  // another rank's micro-batch
    const auto t = tensors_of(b, device_);
    const auto r = model_->stage_forward(stage_, t, mse_weight_, /*train=*/true);
    (r.total_loss / static_cast<double>(batches.size())).backward();
    // Float32 accumulation of the gradients (what DeepSpeed's bf16 optimizer does).
    for (size_t i = 0; i < working_.size(); ++i) {
      auto& w = working_[i].second;
      if (!w.grad().defined()) continue;
      if (!w.is_same(masters_[i].second)) {
        masters_[i].second.mutable_grad().add_(w.grad().to(at::kFloat));
        w.mutable_grad() = at::Tensor();
      }
    }
    loss += r.total_loss.item<double>();
    qa += r.loss.item<double>();
    mse += r.mse.item<double>();
    targets += r.target_index.size(0);
    tokens += t.dec_mask.sum().item<int64_t>() + t.enc_mask.sum().item<int64_t>();
    if (r.topk_idx.defined()) {
      const auto idx = r.topk_idx.to(at::kCPU);
      for (int64_t i = 0; i < idx.size(0); ++i) {
        pred.emplace_back(idx[i].data_ptr<int64_t>(), idx[i].data_ptr<int64_t>() + idx.size(1));
        const auto& p = b.pos_index[static_cast<size_t>(i)];
        pos.emplace_back(p.begin(), p.end());
      }
    }
  }
  if (group_) {
    // The objective's gradient: every rank's share summed (each was divided by the step's count).
    std::vector<at::Tensor> grads;
    for (auto& [name, m] : masters_) grads.push_back(m.mutable_grad());
    group_->all_reduce_sum(grads);
    std::map<std::string, double> sums = {{"loss", loss}, {"qa", qa}, {"mse", mse}, {"targets", static_cast<double>(targets)},
                                          {"tokens", static_cast<double>(tokens)}};
    group_->all_reduce_sum(sums);
    loss = sums["loss"];
    qa = sums["qa"];
    mse = sums["mse"];
    targets = static_cast<int64_t>(sums["targets"]);
    tokens = static_cast<int64_t>(sums["tokens"]);
    if (data_stage_ == ClaraStage::kStage2) {
      // Retrieval metrics over every rank's rows.
      const auto all = group_->all_gather(Json{{"pos", pos}, {"pred", pred}}.dump());
      pos.clear();
      pred.clear();
      for (const auto& text : all) {
        const auto j = Json::parse(text);
        for (const auto& p : j["pos"]) pos.push_back(p.get<std::vector<int64_t>>());
        for (const auto& p : j["pred"]) pred.push_back(p.get<std::vector<int64_t>>());
      }
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double n = std::max<double>(1.0, static_cast<double>(batches.size()));
  out["loss"] = loss / n;
  out["qa_loss"] = qa / n;
  out["mse"] = mse / n;
  out["supervised_tokens"] = static_cast<double>(targets);
  out["tokens_per_s"] = static_cast<double>(tokens) / std::max(seconds, 1e-9);
  out["dropped_rows"] = stats.dropped_rows;
  out["shortened_rows"] = stats.shortened_rows;
  out["truncated_docs"] = stats.truncated_docs;
  if (!pred.empty()) {
    const int64_t k = model_->config().generation_top_k;
    std::vector<int64_t> ks = {1};
    if (k > 1) ks.push_back(k);
    const auto rm = qa::trainer_retrieval_metrics(pos, pred, ks);
    for (const auto& at : rm.at) {
      out["recall@" + std::to_string(at.k)] = at.recall;
      out["precision@" + std::to_string(at.k)] = at.precision;
    }
  }
  return out;
}

TrainTask::StepResult ClaraTrainTask::train_step(int64_t step, double lr_factor) {
  StepResult r;
  r.metrics = accumulate_gradients();
  std::vector<at::Tensor> params;
  for (const auto& [name, m] : masters_) params.push_back(m);
  r.metrics["grad_norm"] = clip_grad_norm(params, config_["max_grad_norm"].get<double>());
  const double lr = config_["lr"].get<double>() * lr_factor;
  optimizer_->set_lr(lr);
  optimizer_->step();
  optimizer_->zero_grad();
  copy_masters_to_model();
  r.metrics["lr"] = lr;
  r.metrics["epoch"] = static_cast<double>(epoch_);
  // An evaluation period ends with each epoch.
  r.end_of_period = step % steps_per_epoch_ == 0;
  return r;
}

Metrics ClaraTrainTask::evaluate() {
  if (eval_rows_.empty()) return {};
  torch::NoGradGuard no_grad;
  const int64_t micro = config_["micro_batch_size"].get<int64_t>();
  const int64_t limit = config_["eval_max_examples"].get<int64_t>() > 0
                            ? std::min<int64_t>(config_["eval_max_examples"].get<int64_t>(), static_cast<int64_t>(eval_rows_.size()))
                            : static_cast<int64_t>(eval_rows_.size());
  PyRandom rng(config_["paraphrase_seed"].get<int64_t>());  // the same templates at every evaluation
  Metrics out;
  double loss = 0, zero_loss = 0;
  int64_t batches = 0, correct = 0, zero_correct = 0, target_count = 0;
  std::vector<qa::QaResult> results;
  const int64_t n = model_->mem_tokens();
  for (int64_t start = 0; start < limit; start += micro) {
    const std::vector<ClaraRow> part(eval_rows_.begin() + start, eval_rows_.begin() + std::min(limit, start + micro));
    PyRandom copy = rng;
    const auto b = clara_collate(model_->tokenizer(), part, data_stage_, collate_, rng);
    if (b.size() > 0) {
      // Teacher-forced: the loss, and the share of target tokens the decoder predicts exactly, from
      // the compressed documents and from zeroed memory vectors (what it guesses without them).
      const auto t = tensors_of(b, device_);
      const auto r = model_->stage_forward(stage_, t, 0.0, false);
      const auto zero = model_->stage_forward(stage_, t, 0.0, false, /*zero_memory=*/true);
      const auto labels = t.labels.narrow(1, 1, t.labels.size(1) - 1);
      const auto targets = labels.masked_select(labels.ne(-100)).to(at::kCPU);
      loss += r.loss.item<double>();
      zero_loss += zero.loss.item<double>();
      correct += r.logits_at_targets.argmax(-1).to(at::kCPU).eq(targets).sum().item<int64_t>();
      zero_correct += zero.logits_at_targets.argmax(-1).to(at::kCPU).eq(targets).sum().item<int64_t>();
      target_count += targets.numel();
      ++batches;
    }
    if (config_["eval_max_new_tokens"].get<int64_t>() == 0) continue;  // teacher-forced metrics only
    // Generation: the prompt without the answer, the documents compressed, greedy decoding.
    GenerationOptions g;
    g.max_new_tokens = config_["eval_max_new_tokens"].get<int64_t>();
    for (const auto& row : part) {
      qa::QaResult res;
      res.golds = {target_of(row)};
      if (data_stage_ == ClaraStage::kStage2) {
        const auto a = model_->answer_end_to_end({row.questions.front()}, model_->compress(row.docs), model_->config().generation_top_k, g);
        res.prediction = a.texts.front();
        const auto idx = a.topk_idx[0];
        res.topk_idx.assign(idx.data_ptr<int64_t>(), idx.data_ptr<int64_t>() + idx.size(0));
        res.pos_index.assign(row.pos_index.begin(), row.pos_index.end());
      } else {
        ClaraRow bare = row;
        bare.answers.clear();
        const int k = static_cast<int>(row.docs.size());
        ClaraPrompt prompt;
        if (data_stage_ == ClaraStage::kStage1 && row.data_type == ClaraDataType::kParaphrase)
          prompt = clara_paraphrase_prompt(model_->tokenizer(), static_cast<int>(n), k,
                                           static_cast<int>(copy.choice_index(clara_paraphrase_templates().size())), std::nullopt);
        else if (data_stage_ == ClaraStage::kStage1)
          prompt = clara_qa_prompt(model_->tokenizer(), static_cast<int>(n), k, {}, {});  // the QA set is the target
        else
          prompt = clara_standard_prompt(model_->tokenizer(), static_cast<int>(n), k, row.questions.front(), std::nullopt);
        res.prediction = model_->generate_from_prompts({prompt.prompt}, model_->compress(row.docs), g).texts.front();
      }
      results.push_back(std::move(res));
    }
  }
  out["loss"] = batches ? loss / static_cast<double>(batches) : std::nan("");
  out["loss_zero_memory"] = batches ? zero_loss / static_cast<double>(batches) : std::nan("");
  out["token_accuracy"] = target_count ? static_cast<double>(correct) / static_cast<double>(target_count) : 0.0;
  out["token_accuracy_zero_memory"] = target_count ? static_cast<double>(zero_correct) / static_cast<double>(target_count) : 0.0;
  if (results.empty()) return out;
  const auto basic = qa::basic_metrics(results);
  out["em"] = basic.em;
  out["f1"] = basic.f1;
  out["cover_em"] = basic.acc;
  out["count"] = static_cast<double>(basic.count);
  if (data_stage_ == ClaraStage::kStage2) {
    const auto rm = qa::retrieval_metrics(results, {1, model_->config().generation_top_k});
    for (const auto& at : rm.at) {
      out["recall@" + std::to_string(at.k)] = at.recall;
      out["precision@" + std::to_string(at.k)] = at.precision;
    }
  }
  return out;
}

NamedTensors ClaraTrainTask::rng_state() const {
  NamedTensors state;
  {
    auto gen = at::globalContext().defaultGenerator(c10::Device(c10::kCPU));
    std::lock_guard<std::mutex> lock(gen.mutex());
    state.emplace_back("rng.cpu", gen.get_state());
  }
  if (!device_.is_cpu()) {
    auto gen = at::globalContext().defaultGenerator(device_);
    std::lock_guard<std::mutex> lock(gen.mutex());
    state.emplace_back("rng.device", gen.get_state());
  }
  return state;
}

void ClaraTrainTask::restore_rng(std::map<std::string, torch::Tensor>& s) {
  {
    auto gen = at::globalContext().defaultGenerator(c10::Device(c10::kCPU));
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(s["rng.cpu"]);
  }
  if (s.count("rng.device") && !device_.is_cpu()) {
    auto gen = at::globalContext().defaultGenerator(device_);
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(s["rng.device"]);
  }
}

void ClaraTrainTask::save(const std::string& dir) const {
  if (rank_ != 0) {
    // The model, optimizer and data position are the same on every rank: rank 0 saves them.
    save_tensor_archive(dir + "/rank_" + std::to_string(rank_) + ".pt", rng_state());
    return;
  }
  model_->save_upstream(dir);
  model_->save(dir);
  NamedTensors state;
  for (auto& [k, v] : optimizer_->state()) state.emplace_back("optimizer." + k, v);
  for (size_t i = 0; i < working_.size(); ++i) {
    const auto& [name, w] = working_[i];
    if (!w.is_same(masters_[i].second) || name.rfind("base.", 0) == 0) state.emplace_back("master." + name, masters_[i].second);
  }
  for (auto& item : rng_state()) state.push_back(std::move(item));
  const auto py = paraphrase_rng_.state();
  state.emplace_back("rng.python", torch::tensor(std::vector<int64_t>(py.begin(), py.end()), torch::kLong));
  save_tensor_archive(dir + "/train_state.pt", state);
  write_json_file(dir + "/data_position.json", Json{{"epoch", epoch_}, {"cursor", cursor_}, {"world_size", world_}});
}

void ClaraTrainTask::load(const std::string& dir) {
  {
    const Json pos = read_json_file(dir + "/data_position.json");
    const int64_t saved_world = pos.value("world_size", int64_t{1});
    if (saved_world != world_)
      throw ConfigError(dir + ": written by a run of " + std::to_string(saved_world) + " process(es); resume it with " +
                        std::to_string(saved_world) + " (this run has " + std::to_string(world_) + ")");
  }
  ClaraLoadOptions o;
  o.device = device_;
  o.dtype = model_->base().dtype();
  o.training_stage = stage_;
  o.pure_inference = true;  // every adapter exactly as saved
  model_ = std::make_unique<ClaraModel>(ClaraModel::load(dir, config_["base"].get<std::string>(), o));
  const std::string state_path = dir + "/train_state.pt";
  std::map<std::string, torch::Tensor> s;
  for (auto& [k, v] : load_tensor_archive(state_path)) s[k] = v;
  working_ = model_->prepare_training(stage_);
  if (config_["train_base"].get<bool>())
    for (auto& [name, w] : model_->base().named_weights()) {
      if (name == "model.embed_tokens.weight" && stage_ == "stage1") continue;
      const auto it = s.find("master.base." + name);
      if (it == s.end()) throw FormatError(state_path + ": missing 'master.base." + name + "'");
      model_->base().set_weight(name, it->second);
      auto fresh = model_->base().weight(name);
      fresh.set_requires_grad(true);
      working_.emplace_back("base." + name, fresh);
    }
  masters_.clear();
  for (auto& [name, w] : working_) {
    const auto it = s.find("master." + name);
    if (w.scalar_type() == at::kFloat) {
      masters_.emplace_back(name, w);
    } else {
      if (it == s.end()) throw FormatError(state_path + ": missing 'master." + name + "'");
      masters_.emplace_back(name, it->second.to(device_, at::kFloat).clone());
    }
  }
  const auto& betas = config_["adam_betas"];
  optimizer_ = std::make_unique<AdamW>(masters_, AdamW::Options{config_["lr"].get<double>(), betas[0].get<double>(),
                                                                 betas[1].get<double>(), config_["adam_eps"].get<double>(),
                                                                 config_["weight_decay"].get<double>()});
  NamedTensors opt_state;
  for (const auto& [k, v] : s)
    if (k.rfind("optimizer.", 0) == 0) opt_state.emplace_back(k.substr(10), v);
  optimizer_->load_state(opt_state);
  if (!s.count("rng.cpu") || !s.count("rng.python")) throw FormatError(state_path + ": missing the random generators' state");
  restore_rng(s);
  if (rank_ != 0) {
    const std::string rank_path = dir + "/rank_" + std::to_string(rank_) + ".pt";
    std::map<std::string, torch::Tensor> r;
    for (auto& [k, v] : load_tensor_archive(rank_path)) r[k] = v;
    if (!r.count("rng.cpu")) throw FormatError(rank_path + ": missing 'rng.cpu'");
    restore_rng(r);
  }
  const auto py = s["rng.python"].to(torch::kLong).contiguous();
  paraphrase_rng_.set_state(std::vector<uint32_t>(py.data_ptr<int64_t>(), py.data_ptr<int64_t>() + py.numel()));
  const Json pos = read_json_file(dir + "/data_position.json");
  if (!pos.contains("epoch") || !pos.contains("cursor")) throw FormatError(dir + "/data_position.json: needs 'epoch' and 'cursor'");
  epoch_ = pos["epoch"].get<int64_t>();
  cursor_ = pos["cursor"].get<int64_t>();
  order_ = permutation(static_cast<int64_t>(rows_.size()), config_["seed"].get<uint64_t>() + static_cast<uint64_t>(epoch_));
}

}  // namespace hrmclara::clara
