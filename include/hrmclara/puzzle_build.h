// Builders of HRM's puzzle datasets in upstream's on-disk layout (sapientinc/HRM dataset/*.py),
// and the grid helpers they share. Torch-free.
//
// Layout written by every builder (one set named "all"):
//   <out>/identifiers.json                   ["<blank>", name of identifier 1, ...]
//   <out>/{train,test}/dataset.json          pad_id, ignore_label_id, blank_identifier_id,
//                                            vocab_size, seq_len, num_puzzle_identifiers,
//                                            total_groups, mean_puzzle_examples, sets=["all"]
//   <out>/{train,test}/all__inputs.npy       uint8 [examples, seq_len]
//   <out>/{train,test}/all__labels.npy       uint8 [examples, seq_len]
//   <out>/{train,test}/all__puzzle_identifiers.npy  int32 [puzzles]
//   <out>/{train,test}/all__puzzle_indices.npy      int32 [puzzles + 1]
//   <out>/{train,test}/all__group_indices.npy       int32 [groups + 1]
// Puzzle p owns example rows [puzzle_indices[p], puzzle_indices[p+1]); group g owns puzzles
// [group_indices[g], group_indices[g+1]) (an original puzzle and its augmentations).
// pad_id = 0, ignore_label_id = 0, blank_identifier_id = 0 for every task.
//
// Unlike upstream every random choice comes from one std::mt19937_64 seeded by the caller and
// consumed in a fixed order (no std::*_distribution, whose algorithms differ between standard
// libraries), so the same seed gives the same bytes on every platform.
//
// Errors: IoError for unreadable inputs or unwritable outputs, FormatError for malformed input
// (the message starts with "file:line" or "file: field"), UsageError for bad options.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace hrmclara::puzzles {

// ---- random helpers (portable: only mt19937_64's raw output is used) ------------------------

// Uniform integer in [0, n) by rejection sampling; n must be > 0.
uint64_t rand_below(std::mt19937_64& rng, uint64_t n);

// Fisher-Yates shuffle with rand_below.
template <typename T>
void shuffle_in_place(std::vector<T>& v, std::mt19937_64& rng) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[static_cast<size_t>(rand_below(rng, i))]);
}

// ---- grids and the dihedral group ---------------------------------------------------------

// A rows x cols grid of bytes, row-major.
struct Grid {
  int rows = 0, cols = 0;
  std::vector<uint8_t> cells;

  Grid() = default;
  Grid(int rows_, int cols_, uint8_t fill = 0)
      : rows(rows_), cols(cols_), cells(static_cast<size_t>(rows_) * static_cast<size_t>(cols_), fill) {}
  uint8_t& at(int r, int c) { return cells[static_cast<size_t>(r) * static_cast<size_t>(cols) + static_cast<size_t>(c)]; }
  uint8_t at(int r, int c) const { return cells[static_cast<size_t>(r) * static_cast<size_t>(cols) + static_cast<size_t>(c)]; }
  bool operator==(const Grid& o) const { return rows == o.rows && cols == o.cols && cells == o.cells; }
  bool operator!=(const Grid& o) const { return !(*this == o); }
};

// Upstream's dataset/common.py dihedral_transform, numpy semantics: 0 identity, 1 rot90 (numpy's
// rot90, counter-clockwise), 2 rot180, 3 rot270, 4 flip left-right, 5 flip up-down, 6 transpose,
// 7 fliplr(rot90) (anti-transpose). Throws UsageError for tid outside 0..7.
Grid dihedral_transform(const Grid& grid, int tid);
// The inverse id, upstream's DIHEDRAL_INVERSE = [0, 3, 2, 1, 4, 5, 6, 7].
int dihedral_inverse(int tid);
Grid inverse_dihedral_transform(const Grid& grid, int tid);

// ---- Sudoku ----------------------------------------------------------------------------------

// 81 cells row-major; 0 = blank, 1..9 = digit.
using Sudoku = std::array<uint8_t, 81>;

// Every cell 1..9 and every row, column and box a permutation of 1..9.
bool is_valid_sudoku_solution(const Sudoku& grid);
// `solution` is valid and agrees with every given (non-zero) cell of `puzzle`.
bool sudoku_solution_matches(const Sudoku& puzzle, const Sudoku& solution);
// The number of solutions of `puzzle`, counted up to `limit` (returns min(count, limit));
// 0 when givens conflict or a value is outside 0..9. Bitmask backtracking with
// fewest-candidates-first cell choice.
int count_solutions(const Sudoku& puzzle, int limit = 2);
// The first solution found, if any.
std::optional<Sudoku> solve_sudoku(const Sudoku& puzzle);

// A random complete valid grid (randomised backtracking from an empty grid; every valid grid can
// come out, though not with exactly equal probability).
Sudoku random_sudoku_solution(std::mt19937_64& rng);

// Removes the cells of `solution` in a random order, skipping a cell whenever removing it would
// admit a second solution, until `target_clues` givens remain. Returns the puzzle reached: it has
// `target_clues` givens, or more when it became minimal first (no given can be removed without
// losing uniqueness). The result always has `solution` as its unique solution.
Sudoku carve_sudoku(const Sudoku& solution, int target_clues, std::mt19937_64& rng);

// Upstream's build_sudoku_dataset.py shuffle_sudoku: digit map [0] + permutation of 1..9; transpose
// with probability 1/2 (applied first); rows = bands in random order, rows within each band in
// random order; columns likewise by stacks; new cell (r, c) takes old (row_perm[r], col_perm[c]).
// Applied identically to a puzzle and its solution it keeps the solution valid and unique.
struct SudokuShuffle {
  std::array<uint8_t, 10> digit_map{};  // digit_map[0] == 0
  bool transpose = false;
  std::array<int, 9> row_perm{}, col_perm{};
};
SudokuShuffle random_sudoku_shuffle(std::mt19937_64& rng);
Sudoku apply_sudoku_shuffle(const SudokuShuffle& shuffle, const Sudoku& grid);

// ---- builders --------------------------------------------------------------------------------

struct SplitSummary {
  int64_t examples = 0, puzzles = 0, groups = 0;
};
struct BuildSummary {
  SplitSummary train, test;
  int64_t num_identifiers = 1;   // including <blank>
  int64_t skipped_rows = 0;      // CSV rows dropped by --min-difficulty
  int64_t short_groups = 0;      // ARC puzzles that got fewer than num_aug distinct augmentations
  bool has_test = true;          // false when no test split was written (ARC without an evaluation set)
};

// Sudoku from upstream's CSV (sapientinc/sudoku-extreme): a header row, then
// source,question,answer,rating with question '.' or '0' for blanks. Every row is checked: 81
// characters each, digits only, the answer a valid solution agreeing with the givens (FormatError
// "file:line: ..."). Tokens: 0 PAD, blank 1, digit d -> d + 1; vocab 11, seq_len 81, one
// identifier (all 0). Train: each CSV row a group of 1 + num_aug puzzles (the row, then its
// shuffles), one example each; test: no augmentation.
struct SudokuCsvOptions {
  std::vector<std::string> train_csv, test_csv;  // rows of all files, in order
  std::optional<int64_t> subsample;              // train only: a random subset of this size, in random order
  int num_aug = 0;                               // train only
  std::optional<int64_t> min_difficulty;         // keep rows with rating >= this (both splits)
  uint64_t seed = 0;
};
BuildSummary build_sudoku_dataset(const std::string& out_dir, const SudokuCsvOptions& options);

// Our own Sudoku generator (no upstream counterpart): `train` + `test` puzzles, each from a fresh
// random solution grid carved to a clue count drawn uniformly from [clues_min, clues_max], with a
// unique solution. A carve that ends minimal above clues_max is thrown away and retried with a new
// grid (at most 1000 times in a row, then UsageError: the range is too low to reach in
// practice -- clues_max below ~20). Speed: ~50 us per puzzle of 30-40 clues on one core (20k in
// ~1 s); lower ranges are slower (25-30: ~140 us). No solution grid occurs twice, and no test solution grid equals
// any train solution grid, augmentations included (so no test puzzle equals a train puzzle).
// Written like build_sudoku_dataset: train groups of 1 + num_aug shuffles, test not augmented.
struct SudokuGenOptions {
  int64_t train = 1000, test = 100;
  int clues_min = 30, clues_max = 40;  // 17 <= clues_min <= clues_max <= 81
  int num_aug = 0;
  uint64_t seed = 0;
};
BuildSummary generate_sudoku_dataset(const std::string& out_dir, const SudokuGenOptions& options);
// The same, positional.
BuildSummary sudoku_generate(const std::string& out_dir, int64_t n_train, int64_t n_test, int clues_min, int clues_max,
                             uint64_t seed, int num_aug = 0);

// Maze from upstream's CSV (sapientinc/maze-30x30-hard-1k): header row, then
// source,question,answer,rating; question and answer are n*n characters of "# SGo" (n from the
// first row, the same for every row). Tokens '#' 1, ' ' 2, 'S' 3, 'G' 4, 'o' 5; vocab 6,
// seq_len n*n, one identifier. `aug` adds the 8 dihedral transforms of each train maze to its group
// (test not augmented).
struct MazeCsvOptions {
  std::vector<std::string> train_csv, test_csv;
  std::optional<int64_t> subsample;  // train only
  bool aug = false;
  uint64_t seed = 0;
};
BuildSummary build_maze_dataset(const std::string& out_dir, const MazeCsvOptions& options);

// ARC from task JSON files ({"train": [{"input": grid, "output": grid}, ...], "test": [...]},
// grids 1..30 x 1..30 of colours 0..9; an optional "name" string replaces the file stem as the
// puzzle's name). Each `task_dirs` entry is read like upstream's dataset_dirs: each of its
// subdirectories (sorted by name) is a set of *.json tasks, and so is the entry itself when it
// holds *.json files. Within a set the tasks are sorted by file name, then shuffled.
// Split rule (upstream): "train" pairs go to the train split; "test" pairs go to the test split when
// the set's directory is named "evaluation", else to the train split too. The test split is
// written only when some set is named "evaluation" (as upstream).
// Augmentation per task: up to 5 * num_aug trials of (dihedral t in 0..7, colour map [0] +
// permutation of 1..9), applied colour map first then dihedral to every grid of both splits;
// a trial whose set of (input, output) pairs equals the original's or an earlier kept one's is
// rejected; original + up to num_aug kept form a group. Names: "<name>" and
// "<name>_t<t>_<the 10 digits of the colour map>"; each name gets its own identifier (1, 2, ... in
// train-split order; a task's test-split puzzles share its train-split identifiers).
// Sequences: 30x30, PAD 0, EOS 1, colour c -> c + 2, the grid at a top-left offset with EOS on the
// row below it and the column right of it (see arc_score.h arc_encode_grid); train-split examples
// get a random offset (input and output the same) except one random example per puzzle; the test
// split uses offset 0. Vocab 12, seq_len 900.
struct ArcBuildOptions {
  std::vector<std::string> task_dirs;
  int num_aug = 1000;
  uint64_t seed = 42;
};
BuildSummary build_arc_dataset(const std::string& out_dir, const ArcBuildOptions& options);

}  // namespace hrmclara::puzzles
