// Sudoku: bitmask solver, generator, upstream's shuffle augmentation, and the two builders (from
// upstream's CSV, and from our generator).
#include "build_internal.h"

#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/log.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <tuple>
#include <unordered_set>

namespace hrmclara::puzzles {

namespace {

constexpr uint16_t kAllDigits = 0x1ff;  // bit d-1 stands for digit d

struct CellTables {
  uint8_t row[81], col[81], box[81];
  CellTables() {
    for (int i = 0; i < 81; ++i) {
      row[i] = static_cast<uint8_t>(i / 9);
      col[i] = static_cast<uint8_t>(i % 9);
      box[i] = static_cast<uint8_t>((i / 27) * 3 + (i % 9) / 3);
    }
  }
};
const CellTables kCells;

// Backtracking over bitmasks of used digits per row, column and box, always branching on the
// empty cell with the fewest candidates. Counts solutions up to a limit; optionally tries the
// candidates in random order (to generate grids), and can forbid digits in given cells.
class Solver {
 public:
  // False when a value is outside 0..9 or two givens conflict.
  bool load(const Sudoku& puzzle) {
    std::fill(std::begin(rows_), std::end(rows_), 0);
    std::fill(std::begin(cols_), std::end(cols_), 0);
    std::fill(std::begin(boxes_), std::end(boxes_), 0);
    std::fill(std::begin(forbid_), std::end(forbid_), 0);
    n_empty_ = 0;
    grid_ = puzzle;
    for (int i = 0; i < 81; ++i) {
      const int v = puzzle[static_cast<size_t>(i)];
      if (v == 0) {
        empties_[n_empty_++] = static_cast<uint8_t>(i);
        continue;
      }
      if (v > 9) return false;
      const uint16_t bit = static_cast<uint16_t>(1u << (v - 1));
      if ((rows_[kCells.row[i]] | cols_[kCells.col[i]] | boxes_[kCells.box[i]]) & bit) return false;
      place(i, bit);
    }
    return true;
  }
  void forbid(int cell, int digit) { forbid_[cell] = static_cast<uint16_t>(forbid_[cell] | (1u << (digit - 1))); }

  int count(int limit, std::mt19937_64* rng = nullptr) {
    count_ = 0;
    limit_ = limit;
    rng_ = rng;
    if (limit > 0) search();
    return count_;
  }
  const Sudoku& first_solution() const { return first_; }

 private:
  void place(int cell, uint16_t bit) {
    rows_[kCells.row[cell]] = static_cast<uint16_t>(rows_[kCells.row[cell]] | bit);
    cols_[kCells.col[cell]] = static_cast<uint16_t>(cols_[kCells.col[cell]] | bit);
    boxes_[kCells.box[cell]] = static_cast<uint16_t>(boxes_[kCells.box[cell]] | bit);
  }
  void unplace(int cell, uint16_t bit) {
    rows_[kCells.row[cell]] = static_cast<uint16_t>(rows_[kCells.row[cell]] & ~bit);
    cols_[kCells.col[cell]] = static_cast<uint16_t>(cols_[kCells.col[cell]] & ~bit);
    boxes_[kCells.box[cell]] = static_cast<uint16_t>(boxes_[kCells.box[cell]] & ~bit);
  }
  uint16_t candidates(int cell) const {
    return static_cast<uint16_t>(~(rows_[kCells.row[cell]] | cols_[kCells.col[cell]] | boxes_[kCells.box[cell]] |
                                   forbid_[cell]) & kAllDigits);
  }

  void search() {
    if (n_empty_ == 0) {
      if (count_ == 0) first_ = grid_;
      ++count_;
      return;
    }
    int best_k = 0, best_n = 10;
    uint16_t best_mask = 0;
    for (int k = 0; k < n_empty_; ++k) {
      const uint16_t mask = candidates(empties_[k]);
      const int n = __builtin_popcount(mask);
      if (n == 0) return;  // dead end
      if (n < best_n) {
        best_n = n;
        best_k = k;
        best_mask = mask;
        if (n == 1) break;
      }
    }
    std::swap(empties_[best_k], empties_[n_empty_ - 1]);
    --n_empty_;
    const int cell = empties_[n_empty_];
    int digits[9], nd = 0;
    for (int d = 0; d < 9; ++d)
      if (best_mask & (1u << d)) digits[nd++] = d;
    if (rng_)
      for (int i = nd; i > 1; --i) std::swap(digits[i - 1], digits[rand_below(*rng_, static_cast<uint64_t>(i))]);
    for (int i = 0; i < nd && count_ < limit_; ++i) {
      const uint16_t bit = static_cast<uint16_t>(1u << digits[i]);
      grid_[static_cast<size_t>(cell)] = static_cast<uint8_t>(digits[i] + 1);
      place(cell, bit);
      search();
      unplace(cell, bit);
    }
    grid_[static_cast<size_t>(cell)] = 0;
    ++n_empty_;
  }

  uint16_t rows_[9] = {}, cols_[9] = {}, boxes_[9] = {}, forbid_[81] = {};
  uint8_t empties_[81] = {};
  int n_empty_ = 0, count_ = 0, limit_ = 0;
  std::mt19937_64* rng_ = nullptr;
  Sudoku grid_{}, first_{};
};

// The digits a blank `cell` of `puzzle` could take given its row, column and box.
uint16_t cell_candidates(const Sudoku& p, int cell) {
  uint16_t used = 0;
  const int r = kCells.row[cell], c = kCells.col[cell], b = kCells.box[cell];
  for (int i = 0; i < 81; ++i)
    if (p[static_cast<size_t>(i)] && i != cell && (kCells.row[i] == r || kCells.col[i] == c || kCells.box[i] == b))
      used = static_cast<uint16_t>(used | (1u << (p[static_cast<size_t>(i)] - 1)));
  return static_cast<uint16_t>(~used & kAllDigits);
}

uint64_t grid_hash(const Sudoku& g) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (uint8_t v : g) h = (h ^ v) * 1099511628211ull;
  return h;
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

int clue_count(const Sudoku& p) {
  return static_cast<int>(std::count_if(p.begin(), p.end(), [](uint8_t v) { return v != 0; }));
}

}  // namespace

// ---- validity and solving ----------------------------------------------------------------------

bool is_valid_sudoku_solution(const Sudoku& g) {
  uint16_t rows[9] = {}, cols[9] = {}, boxes[9] = {};
  for (int i = 0; i < 81; ++i) {
    const int v = g[static_cast<size_t>(i)];
    if (v < 1 || v > 9) return false;
    const uint16_t bit = static_cast<uint16_t>(1u << (v - 1));
    if ((rows[kCells.row[i]] | cols[kCells.col[i]] | boxes[kCells.box[i]]) & bit) return false;
    rows[kCells.row[i]] = static_cast<uint16_t>(rows[kCells.row[i]] | bit);
    cols[kCells.col[i]] = static_cast<uint16_t>(cols[kCells.col[i]] | bit);
    boxes[kCells.box[i]] = static_cast<uint16_t>(boxes[kCells.box[i]] | bit);
  }
  return true;
}

bool sudoku_solution_matches(const Sudoku& puzzle, const Sudoku& solution) {
  if (!is_valid_sudoku_solution(solution)) return false;
  for (size_t i = 0; i < 81; ++i)
    if (puzzle[i] != 0 && puzzle[i] != solution[i]) return false;
  return true;
}

int count_solutions(const Sudoku& puzzle, int limit) {
  Solver s;
  if (!s.load(puzzle)) return 0;
  return s.count(limit);
}

std::optional<Sudoku> solve_sudoku(const Sudoku& puzzle) {
  Solver s;
  if (!s.load(puzzle) || s.count(1) == 0) return std::nullopt;
  return s.first_solution();
}

Sudoku random_sudoku_solution(std::mt19937_64& rng) {
  Solver s;
  s.load(Sudoku{});
  s.count(1, &rng);  // an empty grid always has a solution
  return s.first_solution();
}

Sudoku carve_sudoku(const Sudoku& solution, int target_clues, std::mt19937_64& rng) {
  std::vector<int> order(81);
  for (int i = 0; i < 81; ++i) order[static_cast<size_t>(i)] = i;
  shuffle_in_place(order, rng);
  Sudoku puzzle = solution;
  int clues = 81;
  Solver solver;
  for (int cell : order) {
    if (clues <= target_clues) break;
    const auto c = static_cast<size_t>(cell);
    const uint8_t digit = puzzle[c];
    puzzle[c] = 0;
    // The puzzle has `solution` as its only solution; without this given it has another one
    // exactly when some solution puts a different digit here.
    const uint16_t cand = cell_candidates(puzzle, cell);
    bool unique = cand == (1u << (digit - 1));
    if (!unique) {
      solver.load(puzzle);
      solver.forbid(cell, digit);
      unique = solver.count(1) == 0;
    }
    if (unique) {
      --clues;
    } else {
      puzzle[c] = digit;
    }
  }
  return puzzle;
}

SudokuShuffle random_sudoku_shuffle(std::mt19937_64& rng) {
  SudokuShuffle s;
  std::vector<uint8_t> digits = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  shuffle_in_place(digits, rng);
  s.digit_map[0] = 0;
  for (size_t i = 0; i < 9; ++i) s.digit_map[i + 1] = digits[i];
  s.transpose = (rng() >> 63) != 0;
  for (std::array<int, 9>* perm : {&s.row_perm, &s.col_perm}) {
    std::vector<int> bands = {0, 1, 2};
    shuffle_in_place(bands, rng);
    size_t k = 0;
    for (int b : bands) {
      std::vector<int> within = {0, 1, 2};
      shuffle_in_place(within, rng);
      for (int w : within) (*perm)[k++] = b * 3 + w;
    }
  }
  return s;
}

Sudoku apply_sudoku_shuffle(const SudokuShuffle& s, const Sudoku& grid) {
  Sudoku x = grid;
  if (s.transpose)
    for (size_t r = 0; r < 9; ++r)
      for (size_t c = 0; c < 9; ++c) x[r * 9 + c] = grid[c * 9 + r];
  Sudoku out{};
  for (size_t i = 0; i < 81; ++i) {
    const uint8_t v = x[static_cast<size_t>(s.row_perm[i / 9]) * 9 + static_cast<size_t>(s.col_perm[i % 9])];
    out[i] = v <= 9 ? s.digit_map[v] : v;
  }
  return out;
}

// ---- writing -----------------------------------------------------------------------------------

namespace {

struct SudokuPair {
  Sudoku puzzle, solution;
};

constexpr int64_t kSudokuVocab = 11;  // PAD + blank + digits 1..9 (upstream: "10 + 1")

std::array<uint8_t, 81> sudoku_tokens(const Sudoku& g) {
  std::array<uint8_t, 81> t{};
  for (size_t i = 0; i < 81; ++i) t[i] = static_cast<uint8_t>(g[i] + 1);
  return t;
}

// One split: each pair a group of 1 + num_aug single-example puzzles (identifier 0). `on_row` sees
// every written solution (for the generator's disjointness check).
SplitSummary write_sudoku_split(const std::string& dir, const std::vector<SudokuPair>& pairs, int num_aug,
                                std::mt19937_64& rng, const std::function<void(const Sudoku&)>& on_solution = {}) {
  detail::SplitWriter w(dir, 81);
  for (const SudokuPair& p : pairs) {
    for (int a = 0; a <= num_aug; ++a) {
      SudokuPair q = p;
      if (a > 0) {
        const SudokuShuffle s = random_sudoku_shuffle(rng);
        q.puzzle = apply_sudoku_shuffle(s, p.puzzle);
        q.solution = apply_sudoku_shuffle(s, p.solution);
      }
      const auto in = sudoku_tokens(q.puzzle), out = sudoku_tokens(q.solution);
      w.add_example(in.data(), out.data());
      w.end_puzzle(0);
      if (on_solution) on_solution(q.solution);
    }
    w.end_group();
  }
  return w.finish(kSudokuVocab, 1);
}

std::vector<SudokuPair> read_sudoku_csvs(const std::vector<std::string>& files, const std::optional<int64_t>& min_difficulty,
                                         int64_t& skipped) {
  std::vector<SudokuPair> pairs;
  for (const std::string& file : files) {
    const size_t before = pairs.size();
    detail::read_csv(file, 4, [&](const detail::CsvRow& row) {
      const std::string& q = row.fields[1];
      const std::string& a = row.fields[2];
      if (min_difficulty && detail::parse_int_field(row.fields[3], row.where(), "rating") < *min_difficulty) {
        ++skipped;
        return;
      }
      SudokuPair p;
      for (const auto& [text, what, grid] : {std::make_tuple(&q, "question", &p.puzzle), std::make_tuple(&a, "answer", &p.solution)}) {
        if (text->size() != 81)
          throw FormatError(row.where() + ": " + what + " has " + std::to_string(text->size()) + " characters, expected 81");
        for (size_t i = 0; i < 81; ++i) {
          const char c = (*text)[i];
          const bool blank_ok = std::string(what) == "question" && (c == '.' || c == '0');
          if (!blank_ok && (c < '1' || c > '9'))
            throw FormatError(row.where() + ": " + what + " character " + std::to_string(i + 1) + " is " + detail::describe_char(c) +
                              (std::string(what) == "question" ? ", expected '.' or a digit 0-9" : ", expected a digit 1-9"));
          (*grid)[i] = static_cast<uint8_t>(c == '.' ? 0 : c - '0');
        }
      }
      if (!is_valid_sudoku_solution(p.solution)) throw FormatError(row.where() + ": answer is not a valid Sudoku solution");
      for (size_t i = 0; i < 81; ++i)
        if (p.puzzle[i] && p.puzzle[i] != p.solution[i])
          throw FormatError(row.where() + ": answer disagrees with the question's given at cell " + std::to_string(i + 1));
      pairs.push_back(p);
    });
    if (pairs.size() == before && !min_difficulty) throw FormatError(file + ": no puzzle rows after the header");
  }
  return pairs;
}

void require_sudoku_files(const std::vector<std::string>& files, const char* what) {
  if (files.empty()) throw UsageError(std::string("no ") + what + " CSV file given");
}

}  // namespace

BuildSummary build_sudoku_dataset(const std::string& out_dir, const SudokuCsvOptions& o) {
  require_sudoku_files(o.train_csv, "train");
  require_sudoku_files(o.test_csv, "test");
  if (o.num_aug < 0) throw UsageError("num_aug must not be negative");
  if (o.subsample && *o.subsample < 1) throw UsageError("subsample must be at least 1");
  BuildSummary summary;
  std::vector<SudokuPair> train = read_sudoku_csvs(o.train_csv, o.min_difficulty, summary.skipped_rows);
  std::vector<SudokuPair> test = read_sudoku_csvs(o.test_csv, o.min_difficulty, summary.skipped_rows);
  if (train.empty()) throw FormatError(o.train_csv.front() + ": no train rows left (rating filter?)");
  if (test.empty()) throw FormatError(o.test_csv.front() + ": no test rows left (rating filter?)");
  std::mt19937_64 rng(o.seed);
  if (o.subsample && static_cast<size_t>(*o.subsample) < train.size()) {
    // A random subset in random order (upstream: np.random.choice without replacement).
    const auto n = static_cast<size_t>(*o.subsample);
    for (size_t i = 0; i < n; ++i) std::swap(train[i], train[i + rand_below(rng, train.size() - i)]);
    train.resize(n);
  }
  make_directories(out_dir);
  summary.train = write_sudoku_split(out_dir + "/train", train, o.num_aug, rng);
  detail::write_identifiers(out_dir, {"<blank>"});
  summary.test = write_sudoku_split(out_dir + "/test", test, 0, rng);
  return summary;
}

BuildSummary generate_sudoku_dataset(const std::string& out_dir, const SudokuGenOptions& o) {
  if (o.train < 1 || o.test < 1) throw UsageError("the generator needs at least 1 train and 1 test puzzle");
  if (o.clues_min < 17 || o.clues_max > 81 || o.clues_min > o.clues_max)
    throw UsageError("clue range " + std::to_string(o.clues_min) + "-" + std::to_string(o.clues_max) +
                     " is not within 17-81 with min <= max");
  if (o.num_aug < 0) throw UsageError("num_aug must not be negative");
  // Separate streams, so that the puzzles do not depend on num_aug.
  std::mt19937_64 puzzle_rng(splitmix64(o.seed)), aug_rng(splitmix64(o.seed ^ 0x5ca1ab1e0ddba11ull));
  std::unordered_set<uint64_t> seen;  // solution grids used so far (hash collisions only cost a retry)
  auto make = [&](int64_t n, const std::vector<uint64_t>* forbidden) {
    std::vector<SudokuPair> pairs;
    pairs.reserve(static_cast<size_t>(n));
    int failures = 0;
    while (static_cast<int64_t>(pairs.size()) < n) {
      const int target = o.clues_min + static_cast<int>(rand_below(puzzle_rng, static_cast<uint64_t>(o.clues_max - o.clues_min + 1)));
      SudokuPair p;
      p.solution = random_sudoku_solution(puzzle_rng);
      const uint64_t h = grid_hash(p.solution);
      if (seen.count(h) || (forbidden && std::binary_search(forbidden->begin(), forbidden->end(), h))) continue;
      p.puzzle = carve_sudoku(p.solution, target, puzzle_rng);
      if (clue_count(p.puzzle) > o.clues_max) {
        // Minimal above the range: a fresh grid is the only way down.
        if (++failures >= 1000)
          throw UsageError("cannot generate Sudoku puzzles with at most " + std::to_string(o.clues_max) +
                           " clues: 1000 carves in a row ended minimal above that");
        continue;
      }
      failures = 0;
      seen.insert(h);
      pairs.push_back(p);
    }
    return pairs;
  };
  BuildSummary summary;
  make_directories(out_dir);
  std::vector<uint64_t> train_solutions;
  {
    const std::vector<SudokuPair> train = make(o.train, nullptr);
    train_solutions.reserve(static_cast<size_t>(o.train) * static_cast<size_t>(o.num_aug + 1));
    summary.train = write_sudoku_split(out_dir + "/train", train, o.num_aug, aug_rng,
                                       [&](const Sudoku& s) { train_solutions.push_back(grid_hash(s)); });
  }
  std::sort(train_solutions.begin(), train_solutions.end());
  detail::write_identifiers(out_dir, {"<blank>"});
  const std::vector<SudokuPair> test = make(o.test, &train_solutions);
  summary.test = write_sudoku_split(out_dir + "/test", test, 0, aug_rng);
  return summary;
}

BuildSummary sudoku_generate(const std::string& out_dir, int64_t n_train, int64_t n_test, int clues_min, int clues_max,
                             uint64_t seed, int num_aug) {
  SudokuGenOptions o;
  o.train = n_train;
  o.test = n_test;
  o.clues_min = clues_min;
  o.clues_max = clues_max;
  o.seed = seed;
  o.num_aug = num_aug;
  return generate_sudoku_dataset(out_dir, o);
}

}  // namespace hrmclara::puzzles
