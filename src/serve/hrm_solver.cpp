// HrmSolver (include/hrmclara/hrm_solver.h): the HRM/TRM models behind a torch-free API, with
// per-puzzle halting and continuous batching, plus the Sudoku helpers.
#include <hrmclara/device.h>
#include <hrmclara/errors.h>
#include <hrmclara/hrm.h>
#include <hrmclara/hrm_solver.h>
#include <hrmclara/puzzle_build.h>
#include <hrmclara/tensor_io.h>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <filesystem>
#include <mutex>
#include <random>

namespace hrmclara {

namespace {

// Far beyond any halt_max_steps upstream uses (16); a bound on the work one puzzle can ask for.
constexpr int64_t kMaxSolverSteps = 1024;

}  // namespace

struct HrmSolver::Impl {
  hrm::HrmConfig config;
  hrm::PuzzleModel model;
  torch::Device device{torch::kCPU};
  HrmSolverInfo info;
  bool adaptive = true;
  bool q_continue_head = true;  // halting compares q_halt with q_continue (HRM; TRM with ACT continue)
  std::mutex model_mutex;       // one forward at a time

  // One ACT step on `carry` (rows that are halted start afresh from `batch`'s row), deciding
  // halting by the solver's rule rather than the model's eval rule (every row runs all steps).
  std::pair<hrm::Carry, hrm::Outputs> step(const hrm::Carry& carry, const hrm::Batch& batch) {
    std::lock_guard<std::mutex> lock(model_mutex);
    torch::InferenceMode inference;
    auto [next, out] = model->forward(carry, batch);
    auto halted = next.steps >= info.max_steps;
    if (adaptive)
      halted = halted | (q_continue_head ? out.q_halt_logits > out.q_continue_logits : out.q_halt_logits > 0);
    next.halted = halted;
    return {next, out};
  }
};

HrmSolver::HrmSolver(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
HrmSolver::HrmSolver(HrmSolver&&) noexcept = default;
HrmSolver& HrmSolver::operator=(HrmSolver&&) noexcept = default;
HrmSolver::~HrmSolver() = default;

HrmSolver HrmSolver::load(const std::string& checkpoint, const HrmSolverOptions& options) {
  if (options.halting != "adaptive" && options.halting != "max")
    throw UsageError("halting must be adaptive or max, not '" + options.halting + "'");
  if (options.max_steps < 0 || options.max_steps > kMaxSolverSteps)
    throw UsageError("max_steps must be in [0, " + std::to_string(kMaxSolverSteps) + "] (0: the checkpoint's halt_max_steps)");
  if (options.threads < 0) throw UsageError("threads must be >= 0");
  if (options.threads > 0) configure_threads(options.threads);
  std::error_code ec;
  if (!std::filesystem::exists(checkpoint, ec)) throw IoError(checkpoint + ": no such checkpoint (file or directory)");
  auto impl = std::make_shared<Impl>();
  impl->device = resolve_device(options.device);
  auto config = hrm::checkpoint_config(checkpoint, options.dataset_json, 1);
  config.forward_dtype = hrm::resolve_forward_dtype(options.dtype, impl->device, config.forward_dtype);
  impl->config = config;
  impl->model = hrm::make_puzzle_model(config);
  hrm::load_hrm_weights(*impl->model, checkpoint);
  // A checkpoint with NaN or Inf weights would answer every request with garbage: refuse it,
  // naming the tensor.
  hrm::require_finite_weights(*impl->model, checkpoint);
  impl->model->to(impl->device);
  if (impl->model->puzzle_emb) impl->model->puzzle_emb->sync_device();
  impl->model->eval();
  impl->adaptive = options.halting == "adaptive";
  impl->q_continue_head = !(config.is_trm() && config.no_ACT_continue);

  auto& info = impl->info;
  info.arch = config.name;
  info.device = impl->device.str();
  info.dtype = dtype_name(config.dtype());
  info.halting = options.halting;
  info.seq_len = config.seq_len;
  info.vocab_size = config.vocab_size;
  info.num_puzzle_identifiers = config.num_puzzle_identifiers;
  info.max_steps = options.max_steps > 0 ? options.max_steps : config.halt_max_steps;
  for (const auto& p : impl->model->parameters()) info.parameters += p.numel();
  return HrmSolver(std::move(impl));
}

const HrmSolverInfo& HrmSolver::info() const { return impl_->info; }

void HrmSolver::validate(const PuzzleInput& puzzle) const {
  const auto& info = impl_->info;
  if (static_cast<int64_t>(puzzle.tokens.size()) != info.seq_len)
    throw UsageError("tokens: " + std::to_string(puzzle.tokens.size()) + " tokens, the model takes exactly " +
                     std::to_string(info.seq_len));
  for (size_t i = 0; i < puzzle.tokens.size(); ++i)
    if (puzzle.tokens[i] < 0 || puzzle.tokens[i] >= info.vocab_size)
      throw UsageError("tokens[" + std::to_string(i) + "] = " + std::to_string(puzzle.tokens[i]) + " is outside [0, " +
                       std::to_string(info.vocab_size) + ")");
  if (puzzle.puzzle_identifier < 0 || puzzle.puzzle_identifier >= info.num_puzzle_identifiers)
    throw UsageError("puzzle_identifier " + std::to_string(puzzle.puzzle_identifier) + " is outside [0, " +
                     std::to_string(info.num_puzzle_identifiers) + ")");
}

// ---- continuous batching ----------------------------------------------------------------------

struct HrmSolver::ContinuousBatch::Impl {
  std::shared_ptr<HrmSolver::Impl> solver;
  std::deque<std::pair<PuzzleInput, uint64_t>> waiting;
  hrm::Carry carry;            // rows of the puzzles in the batch (none halted)
  std::vector<uint64_t> tags;  // the tag of each row
};

HrmSolver::ContinuousBatch::ContinuousBatch(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HrmSolver::ContinuousBatch::ContinuousBatch(ContinuousBatch&&) noexcept = default;
HrmSolver::ContinuousBatch& HrmSolver::ContinuousBatch::operator=(ContinuousBatch&&) noexcept = default;
HrmSolver::ContinuousBatch::~ContinuousBatch() = default;

HrmSolver::ContinuousBatch HrmSolver::continuous_batch() const {
  auto impl = std::make_unique<ContinuousBatch::Impl>();
  impl->solver = impl_;
  return ContinuousBatch(std::move(impl));
}

void HrmSolver::ContinuousBatch::add(const PuzzleInput& puzzle, uint64_t tag) {
  HrmSolver(impl_->solver).validate(puzzle);
  impl_->waiting.emplace_back(puzzle, tag);
}

int64_t HrmSolver::ContinuousBatch::active() const {
  return static_cast<int64_t>(impl_->tags.size() + impl_->waiting.size());
}

std::vector<HrmSolver::ContinuousBatch::Finished> HrmSolver::ContinuousBatch::step() {
  auto& s = *impl_->solver;
  auto& self = *impl_;
  if (self.tags.empty() && self.waiting.empty()) return {};
  const int64_t S = s.info.seq_len;
  const int64_t kept = static_cast<int64_t>(self.tags.size());
  const int64_t joining = static_cast<int64_t>(self.waiting.size());
  const auto int_opts = torch::TensorOptions().dtype(torch::kInt);

  // The step's batch: rows in flight (their inputs come from the carry) then the joining puzzles.
  hrm::Batch batch;
  hrm::Carry carry;
  {
    torch::InferenceMode inference;
    std::vector<int32_t> inputs(static_cast<size_t>(joining * S));
    std::vector<int32_t> ids(static_cast<size_t>(joining));
    for (int64_t j = 0; j < joining; ++j) {
      const auto& [puzzle, tag] = self.waiting[static_cast<size_t>(j)];
      std::copy(puzzle.tokens.begin(), puzzle.tokens.end(), inputs.begin() + j * S);
      ids[static_cast<size_t>(j)] = static_cast<int32_t>(puzzle.puzzle_identifier);
      self.tags.push_back(tag);
    }
    self.waiting.clear();
    hrm::Batch fresh;
    if (joining > 0) {
      fresh.inputs = torch::from_blob(inputs.data(), {joining, S}, int_opts).clone().to(s.device);
      fresh.labels = torch::full({joining, S}, hrm::kIgnoreLabel, int_opts.device(s.device));
      fresh.puzzle_identifiers = torch::from_blob(ids.data(), {joining}, int_opts).clone().to(s.device);
    }
    if (kept == 0) {
      batch = fresh;
      carry = s.model->initial_carry(fresh);
    } else if (joining == 0) {
      carry = self.carry;
      batch = self.carry.current;
    } else {
      const auto init = s.model->initial_carry(fresh);
      carry.z_H = torch::cat({self.carry.z_H, init.z_H});
      carry.z_L = torch::cat({self.carry.z_L, init.z_L});
      carry.steps = torch::cat({self.carry.steps, init.steps});
      carry.halted = torch::cat({self.carry.halted, init.halted});
      carry.current.inputs = torch::cat({self.carry.current.inputs, init.current.inputs});
      carry.current.labels = torch::cat({self.carry.current.labels, init.current.labels});
      carry.current.puzzle_identifiers = torch::cat({self.carry.current.puzzle_identifiers, init.current.puzzle_identifiers});
      batch.inputs = torch::cat({self.carry.current.inputs, fresh.inputs});
      batch.labels = torch::cat({self.carry.current.labels, fresh.labels});
      batch.puzzle_identifiers = torch::cat({self.carry.current.puzzle_identifiers, fresh.puzzle_identifiers});
    }
  }

  auto [next, out] = s.step(carry, batch);

  torch::InferenceMode inference;
  const auto halted = next.halted.to(torch::kCPU);
  const auto* h = halted.data_ptr<bool>();
  const int64_t B = halted.size(0);
  std::vector<int64_t> done, keep;
  for (int64_t i = 0; i < B; ++i) (h[i] ? done : keep).push_back(i);

  std::vector<Finished> finished;
  if (!done.empty()) {
    const auto idx = torch::tensor(done, torch::TensorOptions().dtype(torch::kLong)).to(s.device);
    const auto tokens = out.logits.index_select(0, idx).argmax(-1).to(torch::kInt).to(torch::kCPU).contiguous();
    const auto steps = next.steps.index_select(0, idx).to(torch::kLong).to(torch::kCPU);
    const auto qh = out.q_halt_logits.index_select(0, idx).to(torch::kFloat).to(torch::kCPU);
    const auto qc = out.q_continue_logits.index_select(0, idx).to(torch::kFloat).to(torch::kCPU);
    for (size_t k = 0; k < done.size(); ++k) {
      Finished f;
      f.tag = self.tags[static_cast<size_t>(done[k])];
      const auto* t = tokens.data_ptr<int32_t>() + static_cast<int64_t>(k) * S;
      f.solution.tokens.assign(t, t + S);
      f.solution.steps = steps[static_cast<int64_t>(k)].item<int64_t>();
      f.solution.q_halt = qh[static_cast<int64_t>(k)].item<float>();
      f.solution.q_continue = qc[static_cast<int64_t>(k)].item<float>();
      f.solution.halt_confidence = 1.0 / (1.0 + std::exp(-static_cast<double>(f.solution.q_halt)));
      finished.push_back(std::move(f));
    }
  }
  std::vector<uint64_t> tags;
  for (int64_t i : keep) tags.push_back(self.tags[static_cast<size_t>(i)]);
  self.tags = std::move(tags);
  if (keep.empty()) {
    self.carry = hrm::Carry{};
  } else if (done.empty()) {
    self.carry = next;
  } else {
    const auto idx = torch::tensor(keep, torch::TensorOptions().dtype(torch::kLong)).to(s.device);
    self.carry.z_H = next.z_H.index_select(0, idx);
    self.carry.z_L = next.z_L.index_select(0, idx);
    self.carry.steps = next.steps.index_select(0, idx);
    self.carry.halted = next.halted.index_select(0, idx);
    self.carry.current.inputs = next.current.inputs.index_select(0, idx);
    self.carry.current.labels = next.current.labels.index_select(0, idx);
    self.carry.current.puzzle_identifiers = next.current.puzzle_identifiers.index_select(0, idx);
  }
  return finished;
}

std::vector<PuzzleSolution> HrmSolver::solve(const std::vector<PuzzleInput>& puzzles) const {
  for (const auto& p : puzzles) validate(p);
  auto batch = continuous_batch();
  for (size_t i = 0; i < puzzles.size(); ++i) batch.add(puzzles[i], i);
  std::vector<PuzzleSolution> out(puzzles.size());
  while (batch.active() > 0)
    for (auto& f : batch.step()) out[f.tag] = std::move(f.solution);
  return out;
}

PuzzleSolution HrmSolver::solve(const PuzzleInput& puzzle) const { return solve(std::vector<PuzzleInput>{puzzle})[0]; }

// ---- Sudoku -----------------------------------------------------------------------------------

namespace sudoku {

std::vector<int32_t> parse(std::string_view grid) {
  std::vector<int32_t> tokens;
  tokens.reserve(81);
  for (size_t i = 0; i < grid.size(); ++i) {
    const char c = grid[i];
    if (c == ' ' || c == '\n' || c == '\r' || c == '\t' || c == '|' || c == '-' || c == '+') continue;
    if (c != '.' && (c < '0' || c > '9'))
      throw UsageError("puzzle: character " + std::to_string(i + 1) + " is '" + std::string(1, c) +
                       "' (cells are 1-9, or 0 or . for a blank)");
    if (tokens.size() == 81) throw UsageError("puzzle: more than 81 cells");
    tokens.push_back(c == '.' ? 1 : c - '0' + 1);
  }
  if (tokens.size() != 81) throw UsageError("puzzle: " + std::to_string(tokens.size()) + " cells, a Sudoku has 81");
  return tokens;
}

std::string format(const std::vector<int32_t>& tokens) {
  std::string out;
  out.reserve(tokens.size());
  for (const int32_t t : tokens) out.push_back(t == 1 ? '.' : (t >= 2 && t <= 10 ? static_cast<char>('0' + t - 1) : '?'));
  return out;
}

Verdict check(const std::vector<int32_t>& puzzle, const std::vector<int32_t>& solution) {
  if (puzzle.size() != 81 || solution.size() != 81)
    throw ShapeError("sudoku::check: a puzzle and a solution of 81 tokens each (got " + std::to_string(puzzle.size()) +
                     " and " + std::to_string(solution.size()) + ")");
  Verdict v;
  auto digit = [](int32_t t) { return t >= 2 && t <= 10 ? t - 1 : 0; };
  v.complete = std::all_of(solution.begin(), solution.end(), [&](int32_t t) { return digit(t) != 0; });
  for (int cell = 0; cell < 81; ++cell) {
    const int d = digit(solution[static_cast<size_t>(cell)]);
    const int r = cell / 9, c = cell % 9;
    bool conflict = false;
    for (int other = 0; other < 81 && d != 0 && !conflict; ++other) {
      if (other == cell) continue;
      const int r2 = other / 9, c2 = other % 9;
      const bool shares = r2 == r || c2 == c || (r2 / 3 == r / 3 && c2 / 3 == c / 3);
      conflict = shares && digit(solution[static_cast<size_t>(other)]) == d;
    }
    if (conflict) v.conflicting_cells.push_back(cell);
    const int given = digit(puzzle[static_cast<size_t>(cell)]);
    if (given != 0 && given != d) v.changed_givens.push_back(cell);
  }
  v.valid = v.complete && v.conflicting_cells.empty();
  v.consistent = v.changed_givens.empty();
  return v;
}

std::vector<int32_t> generate(uint64_t seed, int clues) {
  if (clues < 17 || clues > 81) throw UsageError("clues must be in [17, 81], not " + std::to_string(clues));
  std::mt19937_64 rng(seed);
  const auto solution = puzzles::random_sudoku_solution(rng);
  const auto puzzle = puzzles::carve_sudoku(solution, clues, rng);
  std::vector<int32_t> tokens(81);
  for (size_t i = 0; i < 81; ++i) tokens[i] = puzzle[i] + 1;
  return tokens;
}

}  // namespace sudoku
}  // namespace hrmclara
