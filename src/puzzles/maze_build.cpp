// Maze from upstream's CSV (build_maze_dataset.py).
#include "build_internal.h"

#include <hrmclara/errors.h>
#include <hrmclara/files.h>

#include <cmath>
#include <cstdio>
#include <cstring>

namespace hrmclara::puzzles {

namespace {

constexpr const char* kMazeCharset = "# SGo";  // token = position + 1; 0 is PAD

struct MazePair {
  Grid input, label;
};

Grid maze_grid(const std::string& text, int n, const std::string& where, const char* what) {
  if (text.size() != static_cast<size_t>(n) * static_cast<size_t>(n))
    throw FormatError(where + ": " + what + " has " + std::to_string(text.size()) + " characters, expected " +
                      std::to_string(n * n) + " (" + std::to_string(n) + "x" + std::to_string(n) + ", from the first row)");
  Grid g(n, n);
  for (size_t i = 0; i < text.size(); ++i) {
    const char* p = text[i] ? std::strchr(kMazeCharset, text[i]) : nullptr;
    if (!p)
      throw FormatError(where + ": " + what + " character " + std::to_string(i + 1) + " is " + detail::describe_char(text[i]) +
                        ", not one of '#', ' ', 'S', 'G', 'o'");
    g.cells[i] = static_cast<uint8_t>(p - kMazeCharset + 1);
  }
  return g;
}

std::vector<MazePair> read_maze_csvs(const std::vector<std::string>& files, int& n) {
  std::vector<MazePair> pairs;
  for (const std::string& file : files) {
    const size_t before = pairs.size();
    detail::read_csv(file, 4, [&](const detail::CsvRow& row) {
      const std::string& q = row.fields[1];
      if (n == 0) {
        n = static_cast<int>(std::lround(std::sqrt(static_cast<double>(q.size()))));
        if (n == 0 || static_cast<size_t>(n) * static_cast<size_t>(n) != q.size())
          throw FormatError(row.where() + ": question has " + std::to_string(q.size()) +
                            " characters, not a square grid");
      }
      pairs.push_back({maze_grid(q, n, row.where(), "question"), maze_grid(row.fields[2], n, row.where(), "answer")});
    });
    if (pairs.size() == before) throw FormatError(file + ": no maze rows after the header");
  }
  return pairs;
}

SplitSummary write_maze_split(const std::string& dir, const std::vector<MazePair>& pairs, int n, bool aug) {
  detail::SplitWriter w(dir, static_cast<int64_t>(n) * n);
  for (const MazePair& p : pairs) {
    for (int t = 0; t < (aug ? 8 : 1); ++t) {
      const Grid in = dihedral_transform(p.input, t), out = dihedral_transform(p.label, t);
      w.add_example(in.cells.data(), out.cells.data());
      w.end_puzzle(0);
    }
    w.end_group();
  }
  return w.finish(6, 1);  // PAD + the 5 characters
}

}  // namespace

BuildSummary build_maze_dataset(const std::string& out_dir, const MazeCsvOptions& o) {
  if (o.train_csv.empty()) throw UsageError("no train CSV file given");
  if (o.test_csv.empty()) throw UsageError("no test CSV file given");
  if (o.subsample && *o.subsample < 1) throw UsageError("subsample must be at least 1");
  int n = 0;
  std::vector<MazePair> train = read_maze_csvs(o.train_csv, n);
  std::vector<MazePair> test = read_maze_csvs(o.test_csv, n);
  std::mt19937_64 rng(o.seed);
  if (o.subsample && static_cast<size_t>(*o.subsample) < train.size()) {
    const auto k = static_cast<size_t>(*o.subsample);
    for (size_t i = 0; i < k; ++i) std::swap(train[i], train[i + rand_below(rng, train.size() - i)]);
    train.resize(k);
  }
  BuildSummary summary;
  make_directories(out_dir);
  summary.train = write_maze_split(out_dir + "/train", train, n, o.aug);
  detail::write_identifiers(out_dir, {"<blank>"});
  summary.test = write_maze_split(out_dir + "/test", test, n, false);
  return summary;
}

}  // namespace hrmclara::puzzles
