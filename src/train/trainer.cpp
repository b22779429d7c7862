// The training loop shared by every task (see trainer.h). Torch-free: the task owns the tensors.
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/log.h>
#include <hrmclara/report.h>
#include <hrmclara/trainer.h>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <sstream>

namespace hrmclara {

namespace {

volatile std::sig_atomic_t g_stop = 0;

void on_stop_signal(int sig) {
  g_stop = 1;
  std::signal(sig, SIG_DFL);  // a second Ctrl-C ends the process at once
}

std::string checkpoints_dir(const std::string& run_dir) { return run_dir + "/checkpoints"; }

int64_t step_of(const std::string& name) {
  if (name.rfind("step_", 0) != 0) return -1;
  try {
    size_t used = 0;
    const int64_t s = std::stoll(name.substr(5), &used);
    return used == name.size() - 5 ? s : -1;
  } catch (...) {
    return -1;
  }
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const long s = static_cast<long>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, (s / 60) % 60);
  else
    std::snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
  return buf;
}

double metric_or(const Metrics& m, const std::string& key, double fallback) {
  auto it = m.find(key);
  return it == m.end() ? fallback : it->second;
}

}  // namespace

double cosine_schedule_factor(int64_t step, int64_t warmup_steps, int64_t total_steps, double min_ratio) {
  if (step < warmup_steps) return static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup_steps));
  const double progress = static_cast<double>(step - warmup_steps) /
                          static_cast<double>(std::max<int64_t>(1, total_steps - warmup_steps));
  return min_ratio + std::max(0.0, (1.0 - min_ratio) * 0.5 * (1.0 + std::cos(M_PI * progress)));
}

void install_stop_signal_handlers() {
  g_stop = 0;
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
}
bool stop_requested() { return g_stop != 0; }
void request_stop() { g_stop = 1; }

std::string latest_checkpoint(const std::string& run_dir) {
  const std::string dir = checkpoints_dir(run_dir);
  if (!is_directory(dir)) return "";
  const std::string pointer = dir + "/latest";
  if (file_exists(pointer)) {
    std::string name = read_file(pointer);
    while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
    if (step_of(name) >= 0 && file_exists(dir + "/" + name + "/trainer.json")) return dir + "/" + name;
  }
  // No (valid) pointer: the highest complete step directory.
  int64_t best = -1;
  std::string found;
  for (const auto& name : list_directory(dir)) {
    const int64_t s = step_of(name);
    if (s > best && file_exists(dir + "/" + name + "/trainer.json")) {
      best = s;
      found = dir + "/" + name;
    }
  }
  return found;
}

Trainer::Trainer(TrainTask& task, TrainerOptions options) : task_(task), opt_(std::move(options)) {
  if (opt_.run_dir.empty()) throw UsageError("the trainer needs a run directory");
  if (opt_.keep_checkpoints < 1) throw ConfigError("keep_checkpoints must be at least 1");
  if (opt_.log_every < 1) throw ConfigError("log_every must be at least 1");
}

void Trainer::start(const Json& config) {
  if (opt_.collective) require_same_on_all_ranks(*opt_.collective, config.dump(), "config");
  if (file_exists(opt_.run_dir + "/config.json"))
    throw UsageError(opt_.run_dir + ": already holds a run (use --resume " + opt_.run_dir + ", or another --out)");
  barrier();  // every rank has looked before rank 0 writes
  if (lead()) {
    make_directories(checkpoints_dir(opt_.run_dir));
    write_json_file(opt_.run_dir + "/config.json", config);
    write_file_atomically(opt_.run_dir + "/metrics.jsonl", "");
  }
  barrier();
  step_ = 0;
}

int64_t Trainer::resume() {
  const std::string ckpt = latest_checkpoint(opt_.run_dir);
  if (ckpt.empty()) throw IoError(opt_.run_dir + ": no checkpoint to resume from (expected checkpoints/step_N)");
  const Json state = read_json_file(ckpt + "/trainer.json");
  if (!state.contains("step") || !state["step"].is_number_integer())
    throw FormatError(ckpt + "/trainer.json: field 'step' must be an integer");
  task_.load(ckpt);
  step_ = state["step"].get<int64_t>();
  elapsed_s_ = state.value("elapsed_s", 0.0);
  last_checkpoint_ = ckpt;
  log_info("resumed " + opt_.run_dir + " at step " + std::to_string(step_) + " from " + ckpt);
  barrier();  // every rank has read the checkpoint
  if (!lead()) return step_;
  // Cut metrics.jsonl back to the checkpoint, so the file reads as one uninterrupted run.
  const std::string metrics = opt_.run_dir + "/metrics.jsonl";
  std::string kept;
  if (file_exists(metrics)) {
    std::istringstream lines(read_file(metrics));
    std::string line;
    while (std::getline(lines, line)) {
      if (line.empty()) continue;
      Json rec;
      try {
        rec = Json::parse(line);
      } catch (const std::exception&) {
        continue;  // a line cut off by a crash
      }
      if (rec.value("step", int64_t{0}) <= step_) kept += line + "\n";
    }
  }
  write_file_atomically(metrics, kept);
  return step_;
}

std::string Trainer::save_checkpoint() {
  const std::string dir = checkpoints_dir(opt_.run_dir);
  const std::string name = "step_" + std::to_string(step_);
  const std::string final_dir = dir + "/" + name;
  // Every rank writes into the same temp directory (so its name is the same on every rank), then
  // rank 0 completes it: trainer.json, the rename, latest.
  const std::string tmp = dir + "/." + name + ".tmp" + (opt_.collective ? std::string() : "-" + std::to_string(::getpid()));
  if (lead()) {
    remove_tree(tmp);
    make_directories(tmp);
  }
  barrier();
  try {
    task_.save(tmp);
    barrier();
    if (lead()) {
      write_json_file(tmp + "/trainer.json", Json{{"step", step_}, {"elapsed_s", elapsed_s_}});
      remove_tree(final_dir);
      rename_path(tmp, final_dir);
    }
  } catch (...) {
    try {
      if (lead()) remove_tree(tmp);
    } catch (const Error&) {
    }
    throw;
  }
  last_checkpoint_ = final_dir;
  if (!lead()) {
    barrier();  // rank 0 has renamed and pruned
    return final_dir;
  }
  write_file_atomically(dir + "/latest", name + "\n");
  // Keep the newest K.
  std::vector<std::pair<int64_t, std::string>> all;
  for (const auto& name : list_directory(dir)) {
    const int64_t s = step_of(name);
    if (s >= 0 && is_directory(dir + "/" + name)) all.emplace_back(s, dir + "/" + name);
  }
  std::sort(all.begin(), all.end());
  for (size_t i = 0; i + static_cast<size_t>(opt_.keep_checkpoints) < all.size(); ++i) remove_tree(all[i].second);
  log_debug("saved " + final_dir);
  barrier();
  return final_dir;
}

void Trainer::log_metrics(const Metrics& m, const std::string& prefix) {
  if (!lead()) return;
  Json rec{{"step", step_}, {"elapsed_s", elapsed_s_}};
  for (const auto& [k, v] : m) rec[prefix + k] = std::isfinite(v) ? Json(v) : Json(nullptr);
  std::ofstream out(opt_.run_dir + "/metrics.jsonl", std::ios::app);
  out << rec.dump() << "\n";
  if (!out) throw IoError(opt_.run_dir + "/metrics.jsonl: cannot append");
}

void Trainer::run_evaluation() {
  last_eval_ = task_.evaluate();
  log_metrics(last_eval_, "eval/");
  if (!lead()) return;
  std::ostringstream line;
  line << "eval at step " << step_ << ":";
  // The headline first: puzzles solved exactly.
  if (last_eval_.count("exact_accuracy")) line << " exact_accuracy=" << last_eval_.at("exact_accuracy");
  for (const auto& [k, v] : last_eval_)
    if (k != "exact_accuracy") line << " " << k << "=" << v;
  log_info(line.str());
}

Trainer::Outcome Trainer::run() {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  const int64_t total = task_.total_steps();
  const int64_t last_step = opt_.max_steps > 0 ? std::min(opt_.max_steps, total) : total;
  const bool tty = opt_.progress_bar && ::isatty(STDERR_FILENO) && lead();
  const int64_t first_step = step_;
  auto seconds = [&] { return std::chrono::duration<double>(Clock::now() - t0).count(); };
  const double elapsed_at_start = elapsed_s_;
  Outcome outcome = Outcome::kFinished;

  while (step_ < last_step) {
    const double lr_factor = opt_.lr_schedule ? opt_.lr_schedule(step_ + 1, total)
                                              : cosine_schedule_factor(step_ + 1, opt_.warmup_steps, total, opt_.lr_min_ratio);
    TrainTask::StepResult r = task_.train_step(step_ + 1, lr_factor);
    ++step_;
    elapsed_s_ = elapsed_at_start + seconds();
    const double loss = metric_or(r.metrics, "loss", std::nan(""));
    if (!std::isfinite(loss))
      throw NumericError("step " + std::to_string(step_) + ": the training loss is " + std::to_string(loss) +
                         (last_checkpoint_.empty() ? std::string(" (no checkpoint written yet)")
                                                   : "; the newest good checkpoint is " + last_checkpoint_));
    r.metrics["lr_factor"] = lr_factor;
    last_train_ = r.metrics;
    if (step_ % opt_.log_every == 0 || step_ == last_step) log_metrics(r.metrics, "train/");

    const double rate = static_cast<double>(step_ - first_step) / std::max(1e-9, seconds());
    // Tasks that score exact answers (puzzles) lead with them, held-out first once evaluated.
    char stats[160];
    if (r.metrics.count("exact_accuracy")) {
      char held_out[48] = "";
      if (last_eval_.count("exact_accuracy"))
        std::snprintf(held_out, sizeof held_out, " (held-out %.3f)", last_eval_.at("exact_accuracy"));
      std::snprintf(stats, sizeof stats, "exact %.3f%s acc %.3f loss %.4f", metric_or(r.metrics, "exact_accuracy", 0),
                    held_out, metric_or(r.metrics, "accuracy", 0), loss);
    } else {
      std::snprintf(stats, sizeof stats, "loss %.4f", loss);
    }
    if (tty) {
      const int width = 24;
      const int filled = static_cast<int>(width * static_cast<double>(step_) / static_cast<double>(last_step));
      std::fprintf(stderr, "\r[%s%s] %lld/%lld %s %.2f it/s ETA %s   ", std::string(filled, '=').c_str(),
                   std::string(width - filled, ' ').c_str(), static_cast<long long>(step_),
                   static_cast<long long>(last_step), stats, rate,
                   format_duration(static_cast<double>(last_step - step_) / std::max(rate, 1e-9)).c_str());
      std::fflush(stderr);
    } else if (step_ % opt_.log_every == 0 && lead()) {
      char buf[300];
      std::snprintf(buf, sizeof buf, "step %lld/%lld %s %.2f it/s ETA %s", static_cast<long long>(step_),
                    static_cast<long long>(last_step), stats, rate,
                    format_duration(static_cast<double>(last_step - step_) / std::max(rate, 1e-9)).c_str());
      log_info(buf);
    }

    bool time_up = opt_.max_minutes > 0 && seconds() >= opt_.max_minutes * 60.0;
    bool stop = stop_requested();
    if (opt_.collective) {
      // A signal or the clock on any rank stops every rank at this step.
      const auto agreed = opt_.collective->max({stop ? 1.0 : 0.0, time_up ? 1.0 : 0.0});
      stop = agreed[0] > 0;
      time_up = agreed[1] > 0;
    }
    const bool eval_now = r.end_of_period || (opt_.eval_every_steps > 0 && step_ % opt_.eval_every_steps == 0);
    if (tty && (eval_now || stop || time_up || step_ == last_step)) std::fputc('\n', stderr);
    if (stop) {
      save_checkpoint();
      if (lead()) log_info("stopped by signal at step " + std::to_string(step_) + "; checkpoint " + last_checkpoint_ +
               " (continue with --resume " + opt_.run_dir + ")");
      return Outcome::kInterrupted;
    }
    if (eval_now && step_ != last_step && !time_up) {
      run_evaluation();
      if (opt_.checkpoint_every_eval) save_checkpoint();
    } else if (opt_.checkpoint_every_steps > 0 && step_ % opt_.checkpoint_every_steps == 0) {
      save_checkpoint();
    }
    if (time_up) {
      outcome = Outcome::kTimeLimit;
      break;
    }
  }
  if (outcome == Outcome::kFinished && step_ >= last_step && last_step < total) outcome = Outcome::kStepLimit;
  run_evaluation();
  save_checkpoint();
  return outcome;
}

}  // namespace hrmclara
