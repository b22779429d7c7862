// The embedding API for HRM and TRM: load a checkpoint (ours or upstream's), solve puzzles, one
// batch at a time or continuously (a finished puzzle leaves the batch, a waiting one takes its
// place). No torch types: a caller needs this header and libhrmclara, nothing of LibTorch.
//
//   auto solver = hrmclara::HrmSolver::load("runs/sudoku/final");
//   auto grid = hrmclara::sudoku::parse("53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79");
//   auto s = solver.solve({grid});
//   auto verdict = hrmclara::sudoku::check(grid, s.tokens);
//
// Thread safety: every const member may be called from any number of threads at once; calls that
// run the model take turns on it (one forward at a time per solver), so concurrent callers get the
// same answers as sequential ones. A ContinuousBatch belongs to one thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace hrmclara {

struct HrmSolverOptions {
  std::string device = "auto";  // auto (MPS, then CUDA, then CPU), cpu, cuda, cuda:N, mps
  std::string dtype = "auto";   // auto: the checkpoint's forward_dtype where the device runs it natively, else float32
  // Upstream checkpoints: dataset.json when it is neither beside the checkpoint nor found through
  // all_config.yaml's data_path.
  std::string dataset_json;
  // adaptive: a puzzle stops when its Q head says halt (q_halt > q_continue; TRM without the
  // continue head: q_halt > 0) or at max_steps. max: every puzzle runs max_steps steps (upstream's
  // evaluation).
  std::string halting = "adaptive";
  int64_t max_steps = 0;  // 0: the checkpoint's halt_max_steps
  int threads = 0;        // intra-op threads (0: LibTorch's default)
};

// One puzzle in the checkpoint's token vocabulary (Sudoku: sudoku::parse makes it).
struct PuzzleInput {
  std::vector<int32_t> tokens;      // exactly seq_len ids in [0, vocab_size)
  int64_t puzzle_identifier = 0;    // in [0, num_puzzle_identifiers)
};

struct PuzzleSolution {
  std::vector<int32_t> tokens;  // the argmax of the final step's logits, seq_len ids
  int64_t steps = 0;            // ACT steps run
  float q_halt = 0.0f;          // the Q head's logits at the final step
  float q_continue = 0.0f;
  double halt_confidence = 0.0;  // sigmoid(q_halt): the model's belief that its answer is right
};

struct HrmSolverInfo {
  std::string arch;    // upstream's arch.name (HRM's or TRM's model class)
  std::string device;  // e.g. "cpu", "cuda:0"
  std::string dtype;   // float32, bfloat16, float64
  std::string halting;
  int64_t seq_len = 0, vocab_size = 0, num_puzzle_identifiers = 0;
  int64_t max_steps = 0;    // steps a puzzle may take
  int64_t parameters = 0;   // trainable parameter count
};

class HrmSolver {
 public:
  // `checkpoint`: our checkpoint directory (model.pt + config.json), its model.pt, or an upstream
  // step_N file with all_config.yaml beside it. Errors (hrmclara::Error subclasses, errors.h) name
  // the file and what is wrong.
  static HrmSolver load(const std::string& checkpoint, const HrmSolverOptions& options = {});

  HrmSolver(HrmSolver&&) noexcept;
  HrmSolver& operator=(HrmSolver&&) noexcept;
  ~HrmSolver();

  const HrmSolverInfo& info() const;

  // Throws UsageError naming the field ("tokens[12] = 40 is outside [0, 11)") for a puzzle the
  // model cannot take; solve() checks every input this way before running anything.
  void validate(const PuzzleInput& puzzle) const;

  // Solves the puzzles as one batch. Results are in input order.
  std::vector<PuzzleSolution> solve(const std::vector<PuzzleInput>& puzzles) const;
  PuzzleSolution solve(const PuzzleInput& puzzle) const;

  // Continuous batching: puzzles join at any step and leave as soon as they halt, so a batch
  // never waits for its slowest member. Each puzzle gets exactly the result solve() gives it alone
  // (up to floating-point reassociation of the batched matrix products).
  class ContinuousBatch {
   public:
    struct Finished {
      uint64_t tag;  // what add() was given
      PuzzleSolution solution;
    };
    ContinuousBatch(ContinuousBatch&&) noexcept;
    ContinuousBatch& operator=(ContinuousBatch&&) noexcept;
    ~ContinuousBatch();
    // Queues a puzzle (validated now) to join at the next step.
    void add(const PuzzleInput& puzzle, uint64_t tag);
    int64_t active() const;   // puzzles in the batch or waiting to join
    // Runs one ACT step on every active puzzle; returns those that halted in it.
    std::vector<Finished> step();

   private:
    friend class HrmSolver;
    struct Impl;
    explicit ContinuousBatch(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
  };
  ContinuousBatch continuous_batch() const;

 private:
  struct Impl;
  explicit HrmSolver(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

// Sudoku in upstream's token layout: 81 cells row by row, token = digit + 1 (1 = blank, 2..10 =
// digits 1..9; 0 is padding), vocabulary 11.
namespace sudoku {

// 81 characters, 1-9 for givens and 0 or . for blanks; spaces, newlines, '|', '-' and '+' between
// them are ignored (grids pasted with separators). UsageError naming the position otherwise.
std::vector<int32_t> parse(std::string_view grid);
// 81 characters, '.' for blanks; a token outside the digits prints as '?'.
std::string format(const std::vector<int32_t>& tokens);

struct Verdict {
  bool complete = false;    // every cell holds a digit
  bool valid = false;       // complete, and every row, column and box holds 1-9 once
  bool consistent = false;  // every given of the puzzle is kept
  std::vector<int> conflicting_cells;  // cells (0-80) whose digit repeats in their row, column or box
  std::vector<int> changed_givens;     // cells where the solution differs from a given
  bool solved() const { return valid && consistent; }
};
// Checks `solution` (tokens) against `puzzle` (tokens). ShapeError unless both hold 81 tokens.
Verdict check(const std::vector<int32_t>& puzzle, const std::vector<int32_t>& solution);

// A generated puzzle with a unique solution and `clues` givens (17 to 81; more when the carving
// reaches a minimal puzzle first), the same for the same seed.
std::vector<int32_t> generate(uint64_t seed, int clues = 30);

}  // namespace sudoku
}  // namespace hrmclara
