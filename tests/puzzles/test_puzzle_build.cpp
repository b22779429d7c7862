// Puzzle dataset builders (Sudoku CSV + generator, Maze CSV, ARC JSON), the torch-free .npy
// reader/writer, dihedral transforms, ARC encoding, identifier names and scoring, and hrm_data.
#include <hrmclara/arc_score.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/npy.h>
#include <hrmclara/puzzle_build.h>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <fstream>
#include <set>

#include "test_util.h"

namespace hrmclara::puzzles {
namespace {

using test::fixture;
using test::ScratchDir;

using test::error_of;

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

struct SplitArrays {
  npy::Array inputs, labels, identifiers, puzzle_indices, group_indices;
  nlohmann::json meta;
};

SplitArrays read_split(const std::string& dir) {
  SplitArrays s;
  s.inputs = npy::read(dir + "/all__inputs.npy");
  s.labels = npy::read(dir + "/all__labels.npy");
  s.identifiers = npy::read(dir + "/all__puzzle_identifiers.npy");
  s.puzzle_indices = npy::read(dir + "/all__puzzle_indices.npy");
  s.group_indices = npy::read(dir + "/all__group_indices.npy");
  s.meta = nlohmann::json::parse(read_file(dir + "/dataset.json"));
  return s;
}

// Layout invariants every builder must meet.
void expect_layout(const SplitArrays& s, int64_t seq_len, int64_t vocab, int64_t num_ids) {
  EXPECT_EQ(s.inputs.descr, "|u1");
  EXPECT_EQ(s.labels.descr, "|u1");
  for (const npy::Array* a : {&s.identifiers, &s.puzzle_indices, &s.group_indices}) EXPECT_EQ(a->descr, "<i4");
  ASSERT_EQ(s.inputs.shape.size(), 2u);
  EXPECT_EQ(s.inputs.shape[1], seq_len);
  EXPECT_EQ(s.labels.shape, s.inputs.shape);
  const auto puzzles = static_cast<int64_t>(s.identifiers.numel());
  const auto pidx = s.puzzle_indices.to_int64(), gidx = s.group_indices.to_int64();
  ASSERT_EQ(static_cast<int64_t>(pidx.size()), puzzles + 1);
  EXPECT_EQ(pidx.front(), 0);
  EXPECT_EQ(pidx.back(), s.inputs.shape[0]);
  EXPECT_EQ(gidx.front(), 0);
  EXPECT_EQ(gidx.back(), puzzles);
  EXPECT_TRUE(std::is_sorted(pidx.begin(), pidx.end()));
  EXPECT_TRUE(std::is_sorted(gidx.begin(), gidx.end()));
  for (const uint8_t* a : {s.inputs.data<uint8_t>(), s.labels.data<uint8_t>()})
    for (uint64_t i = 0; i < s.inputs.numel(); ++i) ASSERT_LT(a[i], vocab);
  for (int64_t id : s.identifiers.to_int64()) ASSERT_TRUE(id >= 0 && id < num_ids);
  // dataset.json: upstream's PuzzleDatasetMetadata fields.
  EXPECT_EQ(s.meta["pad_id"], 0);
  EXPECT_EQ(s.meta["ignore_label_id"], 0);
  EXPECT_EQ(s.meta["blank_identifier_id"], 0);
  EXPECT_EQ(s.meta["vocab_size"], vocab);
  EXPECT_EQ(s.meta["seq_len"], seq_len);
  EXPECT_EQ(s.meta["num_puzzle_identifiers"], num_ids);
  EXPECT_EQ(s.meta["total_groups"], static_cast<int64_t>(gidx.size()) - 1);
  EXPECT_DOUBLE_EQ(s.meta["mean_puzzle_examples"].get<double>(),
                   static_cast<double>(s.inputs.shape[0]) / static_cast<double>(puzzles));
  EXPECT_EQ(s.meta["sets"], nlohmann::json::array({"all"}));
}

Sudoku sudoku_row(const uint8_t* tokens) {
  Sudoku g{};
  for (size_t i = 0; i < 81; ++i) g[i] = static_cast<uint8_t>(tokens[i] - 1);
  return g;
}

int clues(const Sudoku& g) { return static_cast<int>(81 - std::count(g.begin(), g.end(), 0)); }

Grid random_grid(std::mt19937_64& rng, int rows, int cols, int values) {
  Grid g(rows, cols);
  for (auto& v : g.cells) v = static_cast<uint8_t>(rand_below(rng, static_cast<uint64_t>(values)));
  return g;
}

// ---- .npy --------------------------------------------------------------------------------------

TEST(PuzzleNpy, RoundTripsAndStreams) {
  ScratchDir dir;
  npy::write<int32_t>(dir / "i4.npy", {2, 3}, {1, -2, 3, 4, 5, 2147483647});
  npy::write<uint8_t>(dir / "u1.npy", {4}, {0, 1, 254, 255});
  npy::write<int64_t>(dir / "scalar.npy", {}, {-7});
  npy::write<float>(dir / "f4.npy", {0, 5}, {});
  const npy::Array i4 = npy::read(dir / "i4.npy");
  EXPECT_EQ(i4.descr, "<i4");
  EXPECT_EQ(i4.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(i4.to_int64(), (std::vector<int64_t>{1, -2, 3, 4, 5, 2147483647}));
  EXPECT_EQ(npy::read(dir / "u1.npy").to_int64(), (std::vector<int64_t>{0, 1, 254, 255}));
  EXPECT_EQ(npy::read(dir / "scalar.npy").shape, std::vector<int64_t>{});
  EXPECT_EQ(npy::read(dir / "scalar.npy").data<int64_t>()[0], -7);
  EXPECT_EQ(npy::read(dir / "f4.npy").shape, (std::vector<int64_t>{0, 5}));
  EXPECT_THROW(i4.data<uint8_t>(), FormatError);
  // The header numpy writes: 64-byte aligned, ends in a newline.
  const std::string h = npy::format_header("<i4", {3});
  EXPECT_EQ(h.size() % 64, 0u);
  EXPECT_EQ(h.back(), '\n');
  EXPECT_TRUE(contains(h, "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }"));
  const npy::Header parsed = npy::parse_header(h.data(), h.size(), "x");
  EXPECT_EQ(parsed.descr, "<i4");
  EXPECT_EQ(parsed.shape, std::vector<int64_t>{3});
  EXPECT_EQ(parsed.data_offset, h.size());
  // A streamed array reads back like a written one.
  {
    npy::StreamWriter w(dir / "stream.npy", "|u1", {3});
    const uint8_t rows[6] = {1, 2, 3, 4, 5, 6};
    w.append(rows, 3);
    w.append(rows + 3, 3);
    EXPECT_THROW(w.append(rows, 2), FormatError);
    w.finish();
  }
  const npy::Array st = npy::read(dir / "stream.npy");
  EXPECT_EQ(st.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(st.to_int64(), (std::vector<int64_t>{1, 2, 3, 4, 5, 6}));
  {
    npy::StreamWriter abandoned(dir / "abandoned.npy", "<i4", {2});
  }
  EXPECT_FALSE(file_exists(dir / "abandoned.npy"));
  // Errors name the file.
  const std::string good = read_file(dir / "i4.npy");
  test::write_bytes(dir / "cut.npy", good.substr(0, good.size() - 1));
  EXPECT_TRUE(contains(error_of<FormatError>([&] { npy::read(dir / "cut.npy"); }), dir / "cut.npy"));
  EXPECT_TRUE(contains(error_of<IoError>([&] { npy::read(dir / "absent.npy"); }), dir / "absent.npy"));
  std::string structured = npy::format_header("<i4", {1});
  structured.replace(structured.find("'<i4'"), 5, "[('a', '<i4')]");
  test::write_bytes(dir / "structured.npy", structured);
  EXPECT_TRUE(contains(error_of<FormatError>([&] { npy::read(dir / "structured.npy"); }), "structured"));
  EXPECT_THROW(npy::write<int32_t>(dir / "bad.npy", {4}, {1, 2, 3}), FormatError);
}

// ---- dihedral transforms ----------------------------------------------------------------------

TEST(PuzzleGrids, DihedralMatchesNumpyAndInverts) {
  // numpy: rot90([[1,2,3],[4,5,6]]) == [[3,6],[2,5],[1,4]] (counter-clockwise).
  Grid a(2, 3);
  a.cells = {1, 2, 3, 4, 5, 6};
  const std::vector<std::vector<uint8_t>> expected = {
      {1, 2, 3, 4, 5, 6}, {3, 6, 2, 5, 1, 4}, {6, 5, 4, 3, 2, 1}, {4, 1, 5, 2, 6, 3},
      {3, 2, 1, 6, 5, 4}, {4, 5, 6, 1, 2, 3}, {1, 4, 2, 5, 3, 6}, {6, 3, 5, 2, 4, 1}};
  for (int t = 0; t < 8; ++t) {
    const Grid b = dihedral_transform(a, t);
    EXPECT_EQ(b.cells, expected[static_cast<size_t>(t)]) << "t=" << t;
    EXPECT_EQ(b.rows, (t == 0 || t == 2 || t == 4 || t == 5) ? 2 : 3) << t;
    EXPECT_EQ(inverse_dihedral_transform(b, t), a) << t;
  }
  std::mt19937_64 rng(5);
  for (int k = 0; k < 20; ++k) {
    const Grid g = random_grid(rng, 1 + static_cast<int>(rand_below(rng, 30)), 1 + static_cast<int>(rand_below(rng, 30)), 10);
    for (int t = 0; t < 8; ++t) EXPECT_EQ(inverse_dihedral_transform(dihedral_transform(g, t), t), g);
  }
  EXPECT_THROW(dihedral_transform(a, 8), UsageError);

  REQUIRE_PYTHON();  // the expected table above is numpy's; check it against numpy itself
  ScratchDir dir;
  std::string py = "import numpy as np; a=np.arange(1,7).reshape(2,3); f=[lambda a:a, lambda a:np.rot90(a,1), "
                   "lambda a:np.rot90(a,2), lambda a:np.rot90(a,3), np.fliplr, np.flipud, lambda a:a.T, "
                   "lambda a:np.fliplr(np.rot90(a,1))]; print(';'.join(','.join(map(str,g(a).ravel())) for g in f))";
  const auto r = test::run_python(py, dir.path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::string want;
  for (size_t t = 0; t < 8; ++t) {
    if (t) want += ";";
    for (size_t i = 0; i < 6; ++i) want += (i ? "," : "") + std::to_string(expected[t][i]);
  }
  EXPECT_EQ(r.out, want + "\n");
}

// ---- Sudoku ------------------------------------------------------------------------------------

TEST(PuzzleSudoku, SolverCountsAndValidates) {
  std::mt19937_64 rng(1);
  const Sudoku full = random_sudoku_solution(rng);
  EXPECT_TRUE(is_valid_sudoku_solution(full));
  EXPECT_EQ(count_solutions(full, 2), 1);
  EXPECT_EQ(count_solutions(Sudoku{}, 2), 2);
  EXPECT_EQ(count_solutions(Sudoku{}, 5), 5);
  Sudoku conflict{};
  conflict[0] = conflict[1] = 5;
  EXPECT_EQ(count_solutions(conflict, 2), 0);
  Sudoku broken = full;
  std::swap(broken[0], broken[1]);
  EXPECT_FALSE(is_valid_sudoku_solution(broken));
  const Sudoku puzzle = carve_sudoku(full, 30, rng);
  EXPECT_EQ(clues(puzzle), 30);
  EXPECT_EQ(count_solutions(puzzle, 2), 1);
  EXPECT_EQ(solve_sudoku(puzzle), full);
  EXPECT_TRUE(sudoku_solution_matches(puzzle, full));
  // Minimal: asking for 0 clues stops where no given can go.
  const Sudoku minimal = carve_sudoku(full, 0, rng);
  EXPECT_EQ(count_solutions(minimal, 2), 1);
  for (size_t i = 0; i < 81; ++i)
    if (minimal[i]) {
      Sudoku less = minimal;
      less[i] = 0;
      EXPECT_EQ(count_solutions(less, 2), 2) << i;
    }
  // Shuffles keep puzzles valid and unique, and match upstream's structure.
  for (int k = 0; k < 50; ++k) {
    const SudokuShuffle s = random_sudoku_shuffle(rng);
    EXPECT_EQ(s.digit_map[0], 0);
    const Sudoku p2 = apply_sudoku_shuffle(s, puzzle), s2 = apply_sudoku_shuffle(s, full);
    EXPECT_TRUE(is_valid_sudoku_solution(s2));
    EXPECT_TRUE(sudoku_solution_matches(p2, s2));
    EXPECT_EQ(clues(p2), 30);
    EXPECT_EQ(count_solutions(p2, 2), 1);
    for (int b = 0; b < 3; ++b)  // rows stay within bands
      EXPECT_EQ(s.row_perm[static_cast<size_t>(b * 3)] / 3, s.row_perm[static_cast<size_t>(b * 3 + 2)] / 3);
  }
}

TEST(PuzzleSudoku, GeneratorWritesValidDisjointSplits) {
  ScratchDir dir;
  const BuildSummary sum = sudoku_generate(dir / "gen", 150, 40, 28, 35, 7, 2);
  EXPECT_EQ(sum.train.groups, 150);
  EXPECT_EQ(sum.train.puzzles, 450);
  EXPECT_EQ(sum.test.puzzles, 40);
  EXPECT_EQ(nlohmann::json::parse(read_file(dir / "gen/identifiers.json")), nlohmann::json::array({"<blank>"}));
  const SplitArrays train = read_split(dir / "gen/train"), test = read_split(dir / "gen/test");
  expect_layout(train, 81, 11, 1);
  expect_layout(test, 81, 11, 1);
  EXPECT_EQ(train.group_indices.to_int64()[1], 3);  // original + 2 shuffles
  std::set<std::string> train_solutions;
  for (int64_t row = 0; row < train.inputs.shape[0]; ++row) {
    const Sudoku p = sudoku_row(train.inputs.data<uint8_t>() + row * 81), s = sudoku_row(train.labels.data<uint8_t>() + row * 81);
    ASSERT_TRUE(sudoku_solution_matches(p, s)) << row;
    ASSERT_EQ(count_solutions(p, 2), 1) << row;
    ASSERT_GE(clues(p), 28);
    ASSERT_LE(clues(p), 35);
    train_solutions.insert(std::string(s.begin(), s.end()));
  }
  for (int64_t row = 0; row < test.inputs.shape[0]; ++row) {
    const Sudoku p = sudoku_row(test.inputs.data<uint8_t>() + row * 81), s = sudoku_row(test.labels.data<uint8_t>() + row * 81);
    ASSERT_TRUE(sudoku_solution_matches(p, s));
    ASSERT_EQ(count_solutions(p, 2), 1);
    EXPECT_EQ(train_solutions.count(std::string(s.begin(), s.end())), 0u) << "test row " << row << " is in train";
  }
  // Reproducible, and the seed matters.
  sudoku_generate(dir / "again", 150, 40, 28, 35, 7, 2);
  sudoku_generate(dir / "other", 150, 40, 28, 35, 8, 2);
  EXPECT_EQ(read_file(dir / "gen/train/all__inputs.npy"), read_file(dir / "again/train/all__inputs.npy"));
  EXPECT_NE(read_file(dir / "gen/train/all__inputs.npy"), read_file(dir / "other/train/all__inputs.npy"));
  EXPECT_THROW(sudoku_generate(dir / "x", 1, 1, 10, 20, 0), UsageError);
}

// Writes a Sudoku CSV in upstream's format from generated puzzles.
std::vector<std::pair<Sudoku, Sudoku>> write_sudoku_csv(const std::string& path, int n, uint64_t seed, bool dots) {
  std::mt19937_64 rng(seed);
  std::vector<std::pair<Sudoku, Sudoku>> rows;
  std::ofstream out(path);
  out << "source,question,answer,rating\n";
  for (int i = 0; i < n; ++i) {
    const Sudoku s = random_sudoku_solution(rng), p = carve_sudoku(s, 30, rng);
    std::string q, a;
    for (size_t k = 0; k < 81; ++k) {
      q.push_back(p[k] ? static_cast<char>('0' + p[k]) : (dots ? '.' : '0'));
      a.push_back(static_cast<char>('0' + s[k]));
    }
    out << "src" << i << "," << q << "," << a << "," << i % 5 << "\r\n";
    rows.emplace_back(p, s);
  }
  return rows;
}

TEST(PuzzleSudoku, BuildsFromUpstreamCsv) {
  ScratchDir dir;
  const auto train_rows = write_sudoku_csv(dir / "train.csv", 30, 1, true);
  const auto test_rows = write_sudoku_csv(dir / "test.csv", 10, 2, false);
  SudokuCsvOptions o;
  o.train_csv = {dir / "train.csv"};
  o.test_csv = {dir / "test.csv"};
  o.num_aug = 3;
  const BuildSummary sum = build_sudoku_dataset(dir / "out", o);
  EXPECT_EQ(sum.train.examples, 120);
  EXPECT_EQ(sum.train.groups, 30);
  EXPECT_EQ(sum.test.examples, 10);
  const SplitArrays train = read_split(dir / "out/train"), test = read_split(dir / "out/test");
  expect_layout(train, 81, 11, 1);
  expect_layout(test, 81, 11, 1);
  // Token map: blank 1, digit d -> d + 1; rows in file order, original first in each group.
  for (size_t i = 0; i < 30; ++i) {
    EXPECT_EQ(sudoku_row(train.inputs.data<uint8_t>() + i * 4 * 81), train_rows[i].first);
    EXPECT_EQ(sudoku_row(train.labels.data<uint8_t>() + i * 4 * 81), train_rows[i].second);
  }
  for (int64_t row = 0; row < 120; ++row)
    ASSERT_TRUE(sudoku_solution_matches(sudoku_row(train.inputs.data<uint8_t>() + row * 81),
                                        sudoku_row(train.labels.data<uint8_t>() + row * 81)));
  EXPECT_EQ(sudoku_row(test.inputs.data<uint8_t>() + 81), test_rows[1].first);
  // Subsample and the rating filter (ratings are row % 5).
  o.num_aug = 0;
  o.subsample = 7;
  o.min_difficulty = 3;
  const BuildSummary sub = build_sudoku_dataset(dir / "sub", o);
  EXPECT_EQ(sub.train.examples, 7);
  EXPECT_EQ(sub.test.examples, 4);
  EXPECT_EQ(sub.skipped_rows, 18 + 6);
}

TEST(PuzzleSudoku, BadCsvNamesFileAndLine) {
  ScratchDir dir;
  write_sudoku_csv(dir / "good.csv", 3, 1, true);
  const std::string good = read_file(dir / "good.csv");
  SudokuCsvOptions o;
  o.test_csv = {dir / "good.csv"};
  auto build = [&](const std::string& csv) { o.train_csv = {csv}; build_sudoku_dataset(dir / "out", o); };
  EXPECT_TRUE(contains(error_of<IoError>([&] { build(dir / "missing.csv"); }), dir / "missing.csv"));
  // Line 3 with 80 question characters.
  std::string text = good;
  const size_t line3 = text.find('\n', text.find('\n') + 1) + 1;
  text.erase(text.find(',', line3) + 1, 1);
  test::write_bytes(dir / "short.csv", text);
  std::string what = error_of<FormatError>([&] { build(dir / "short.csv"); });
  EXPECT_TRUE(contains(what, dir / "short.csv:3")) << what;
  // A full-width digit (UTF-8) in place of an ASCII one.
  text = good;
  const size_t q = text.find(',', line3) + 1;
  text.replace(text.find_first_of("123456789", q), 1, "\xef\xbc\x95");
  test::write_bytes(dir / "unicode.csv", text);
  what = error_of<FormatError>([&] { build(dir / "unicode.csv"); });
  EXPECT_TRUE(contains(what, dir / "unicode.csv:3")) << what;
  // An answer that breaks a row.
  text = good;
  const size_t a = text.find(',', q) + 1;
  std::swap(text[a], text[a + 1]);
  test::write_bytes(dir / "wrong.csv", text);
  what = error_of<FormatError>([&] { build(dir / "wrong.csv"); });
  EXPECT_TRUE(contains(what, dir / "wrong.csv:3")) << what;
  test::write_bytes(dir / "fields.csv", "source,question,answer,rating\nonly,three,fields\n");
  EXPECT_TRUE(contains(error_of<FormatError>([&] { build(dir / "fields.csv"); }), dir / "fields.csv:2"));
  test::write_bytes(dir / "empty.csv", "");
  EXPECT_TRUE(contains(error_of<FormatError>([&] { build(dir / "empty.csv"); }), dir / "empty.csv"));
}

// ---- Maze --------------------------------------------------------------------------------------

TEST(PuzzleMaze, BuildsWithDihedralAugmentation) {
  ScratchDir dir;
  test::write_bytes(dir / "train.csv",
                    "source,question,answer,rating\n"
                    "a,#S  # G #,#So #oG #,1\n"
                    "b,\"S##  #  G\",\"Soo##o##G\",2\n");
  test::write_bytes(dir / "test.csv", "source,question,answer,rating\nc,S#G      ,S#Goooooo,3\n");
  MazeCsvOptions o;
  o.train_csv = {dir / "train.csv"};
  o.test_csv = {dir / "test.csv"};
  o.aug = true;
  const BuildSummary sum = build_maze_dataset(dir / "out", o);
  EXPECT_EQ(sum.train.puzzles, 16);
  EXPECT_EQ(sum.train.groups, 2);
  EXPECT_EQ(sum.test.puzzles, 1);
  const SplitArrays train = read_split(dir / "out/train"), test = read_split(dir / "out/test");
  expect_layout(train, 9, 6, 1);
  expect_layout(test, 9, 6, 1);
  // '#' 1, ' ' 2, 'S' 3, 'G' 4, 'o' 5.
  Grid first(3, 3);
  first.cells = {1, 3, 2, 2, 1, 2, 4, 2, 1};
  for (int t = 0; t < 8; ++t) {
    const uint8_t* row = train.inputs.data<uint8_t>() + t * 9;
    EXPECT_EQ(std::vector<uint8_t>(row, row + 9), dihedral_transform(first, t).cells) << t;
  }
  test::write_bytes(dir / "bad.csv", "source,question,answer,rating\na,#S  # G #,#So #oG #,1\nb,#S  # G x,#So #oG #,1\n");
  o.train_csv = {dir / "bad.csv"};
  const std::string what = error_of<FormatError>([&] { build_maze_dataset(dir / "out2", o); });
  EXPECT_TRUE(contains(what, dir / "bad.csv:3")) << what;
  EXPECT_TRUE(contains(what, "'x'")) << what;
}

// ---- ARC ---------------------------------------------------------------------------------------

std::vector<std::pair<Grid, Grid>> task_pairs(const std::string& path, const char* split) {
  const auto j = nlohmann::json::parse(read_file(path));
  std::vector<std::pair<Grid, Grid>> out;
  auto grid = [](const nlohmann::json& g) {
    Grid r(static_cast<int>(g.size()), static_cast<int>(g[0].size()));
    for (int i = 0; i < r.rows; ++i)
      for (int k = 0; k < r.cols; ++k) r.at(i, k) = g[static_cast<size_t>(i)][static_cast<size_t>(k)].get<uint8_t>();
    return r;
  };
  for (const auto& ex : j[split]) out.emplace_back(grid(ex["input"]), grid(ex["output"]));
  return out;
}

TEST(PuzzleArc, IdentifierNamesAndSequences) {
  ArcIdentifier id = parse_arc_identifier("007bbfb7_t3_0918273645");
  EXPECT_TRUE(id.augmented);
  EXPECT_EQ(id.puzzle_id, "007bbfb7");
  EXPECT_EQ(id.dihedral, 3);
  EXPECT_EQ(id.colour_map, (std::array<uint8_t, 10>{0, 9, 1, 8, 2, 7, 3, 6, 4, 5}));
  EXPECT_EQ(arc_identifier_name(id), "007bbfb7_t3_0918273645");
  for (const char* plain : {"007bbfb7", "a_b", "x_t8_0123456789", "x_t1_0123456788", "x_t1_012345678"}) {
    const ArcIdentifier p = parse_arc_identifier(plain);
    EXPECT_FALSE(p.augmented) << plain;
    EXPECT_EQ(p.puzzle_id, plain);
  }
  EXPECT_EQ(parse_arc_identifier("my_task_t0_0123456789").puzzle_id, "my_task");
  std::mt19937_64 rng(3);
  for (int k = 0; k < 40; ++k) {
    const Grid g = random_grid(rng, 1 + static_cast<int>(rand_below(rng, 30)), 1 + static_cast<int>(rand_below(rng, 30)), 10);
    // Augmentation and its inverse.
    id.dihedral = static_cast<int>(rand_below(rng, 8));
    std::vector<uint8_t> colours = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    shuffle_in_place(colours, rng);
    std::copy(colours.begin(), colours.end(), id.colour_map.begin() + 1);
    EXPECT_EQ(arc_invert_augmentation(id, arc_apply_augmentation(id, g)), g);
    // Encoding at offset 0 decodes exactly; EOS borders; PAD elsewhere.
    uint8_t seq[900];
    arc_encode_grid(g, 0, 0, seq);
    EXPECT_EQ(arc_decode_sequence(seq), g);
    if (g.rows < 30) EXPECT_EQ(seq[g.rows * 30], kArcEos);
    if (g.cols < 30) EXPECT_EQ(seq[g.cols], kArcEos);
    if (g.rows < 30 && g.cols < 30) EXPECT_EQ(seq[g.rows * 30 + g.cols], kArcPad);  // corner not marked
    // With an offset the grid sits there, shifted.
    const int pr = static_cast<int>(rand_below(rng, static_cast<uint64_t>(31 - g.rows)));
    const int pc = static_cast<int>(rand_below(rng, static_cast<uint64_t>(31 - g.cols)));
    arc_encode_grid(g, pr, pc, seq);
    EXPECT_EQ(seq[pr * 30 + pc], g.at(0, 0) + 2);
    const std::vector<int64_t> wide(seq, seq + 900);
    EXPECT_EQ(arc_decode_sequence(wide.data()), (pr || pc) ? Grid(0, 0) : g);
  }
  uint8_t seq[900];
  EXPECT_THROW(arc_encode_grid(Grid(5, 5), 26, 0, seq), UsageError);
  // Crop as arc_eval.ipynb: a predicted non-colour token shrinks the rectangle.
  Grid g(3, 4, 1);
  arc_encode_grid(g, 0, 0, seq);
  seq[1 * 30 + 2] = kArcEos;  // row 1, column 2: rows 1.. keep 2 columns; 3x2 (area 6) beats 1x4
  EXPECT_EQ(arc_decode_sequence(seq), Grid(3, 2, 1));
  seq[0] = kArcPad;
  EXPECT_EQ(arc_decode_sequence(seq), Grid(0, 0));
}

TEST(PuzzleArc, BuildsFromTaskDirectoriesAndMapsBack) {
  ScratchDir dir;
  ArcBuildOptions o;
  o.task_dirs = {fixture("arc")};
  o.num_aug = 5;
  o.seed = 1;
  const BuildSummary sum = build_arc_dataset(dir / "arc", o);
  ASSERT_TRUE(sum.has_test);
  EXPECT_EQ(sum.train.groups, 4);
  EXPECT_EQ(sum.test.groups, 2);
  EXPECT_EQ(sum.num_identifiers, 1 + 4 * 6);
  const std::vector<std::string> names = load_identifiers(dir / "arc/identifiers.json");
  ASSERT_EQ(static_cast<int64_t>(names.size()), sum.num_identifiers);
  EXPECT_EQ(names[0], "<blank>");
  const SplitArrays train = read_split(dir / "arc/train"), test = read_split(dir / "arc/test");
  expect_layout(train, 900, 12, sum.num_identifiers);
  expect_layout(test, 900, 12, sum.num_identifiers);
  // Train split: evaluation tasks give their train pairs, training tasks train + test pairs.
  const auto pidx = train.puzzle_indices.to_int64(), ids = train.identifiers.to_int64();
  std::set<std::string> train_tasks;
  for (size_t p = 0; p < ids.size(); ++p) {
    const ArcIdentifier id = parse_arc_identifier(names[static_cast<size_t>(ids[p])]);
    train_tasks.insert(id.puzzle_id);
    const bool evaluation = id.puzzle_id == "66e6c45b" || id.puzzle_id == "6ea4a07e";
    const std::string file = fixture(std::string("arc/") + (evaluation ? "evaluation/" : "training/") + id.puzzle_id + ".json");
    const size_t n = task_pairs(file, "train").size() + (evaluation ? 0 : task_pairs(file, "test").size());
    EXPECT_EQ(static_cast<size_t>(pidx[p + 1] - pidx[p]), n) << names[static_cast<size_t>(ids[p])];
  }
  EXPECT_EQ(train_tasks.size(), 4u);
  // Test split: every row maps back to the task's test pair at the same position.
  const auto tidx = test.puzzle_indices.to_int64(), tids = test.identifiers.to_int64();
  std::set<int64_t> test_ids(tids.begin(), tids.end());
  EXPECT_EQ(test_ids.size(), tids.size());  // one identifier per augmented puzzle
  for (int64_t id : tids) EXPECT_NE(std::find(ids.begin(), ids.end(), id), ids.end());  // shared with train
  int augmented = 0;
  for (size_t p = 0; p < tids.size(); ++p) {
    const ArcIdentifier id = parse_arc_identifier(names[static_cast<size_t>(tids[p])]);
    augmented += id.augmented;
    const auto pairs = task_pairs(fixture("arc/evaluation/" + id.puzzle_id + ".json"), "test");
    ASSERT_EQ(static_cast<size_t>(tidx[p + 1] - tidx[p]), pairs.size());
    for (int64_t row = tidx[p]; row < tidx[p + 1]; ++row) {
      const auto& [in, out] = pairs[static_cast<size_t>(row - tidx[p])];
      EXPECT_EQ(arc_invert_augmentation(id, arc_decode_sequence(test.inputs.data<uint8_t>() + row * 900)), in);
      EXPECT_EQ(arc_invert_augmentation(id, arc_decode_sequence(test.labels.data<uint8_t>() + row * 900)), out);
    }
  }
  EXPECT_EQ(augmented, 10);
  // Reproducible.
  build_arc_dataset(dir / "again", o);
  EXPECT_EQ(read_file(dir / "arc/train/all__inputs.npy"), read_file(dir / "again/train/all__inputs.npy"));
  EXPECT_EQ(read_file(dir / "arc/identifiers.json"), read_file(dir / "again/identifiers.json"));
  // Only training tasks: no test split, as upstream.
  o.task_dirs = {fixture("arc/training")};
  EXPECT_FALSE(build_arc_dataset(dir / "train-only", o).has_test);
  EXPECT_FALSE(file_exists(dir / "train-only/test"));
}

TEST(PuzzleArc, BadTasksNameTheFile) {
  ScratchDir dir;
  ArcBuildOptions o;
  o.task_dirs = {dir / "tasks"};
  o.num_aug = 1;
  make_directories(dir / "tasks/training");
  test::write_bytes(dir / "tasks/training/bad.json", "{\"train\": [ {\"input\": [[1]], ");
  std::string what = error_of<FormatError>([&] { build_arc_dataset(dir / "out", o); });
  EXPECT_TRUE(contains(what, dir / "tasks/training/bad.json")) << what;
  test::write_bytes(dir / "tasks/training/bad.json",
                    R"({"train": [{"input": [[1, 2], [3]], "output": [[1]]}], "test": [{"input": [[1]], "output": [[1]]}]})");
  what = error_of<FormatError>([&] { build_arc_dataset(dir / "out", o); });
  EXPECT_TRUE(contains(what, "bad.json: train[0].input: row 1")) << what;
  test::write_bytes(dir / "tasks/training/bad.json",
                    R"({"train": [{"input": [[10]], "output": [[1]]}], "test": [{"input": [[1]], "output": [[1]]}]})");
  EXPECT_TRUE(contains(error_of<FormatError>([&] { build_arc_dataset(dir / "out", o); }), "colour 0-9"));
  test::write_bytes(dir / "tasks/training/bad.json", R"({"train": [{"input": [[1]], "output": [[1]]}]})");
  EXPECT_TRUE(contains(error_of<FormatError>([&] { build_arc_dataset(dir / "out", o); }), "bad.json: test"));
  std::remove((dir / "tasks/training/bad.json").c_str());
  EXPECT_THROW(build_arc_dataset(dir / "out", o), IoError);  // no tasks at all
  o.task_dirs = {dir / "absent"};
  EXPECT_TRUE(contains(error_of<IoError>([&] { build_arc_dataset(dir / "out", o); }), dir / "absent"));
}

TEST(PuzzleArc, ScorerVotesAndNeedsEveryTestInput) {
  ScratchDir dir;
  ArcBuildOptions o;
  o.task_dirs = {fixture("arc")};
  o.num_aug = 3;
  build_arc_dataset(dir / "arc", o);
  const auto labels = load_arc_test_labels(dir / "arc");
  ASSERT_EQ(labels.size(), 2u);
  EXPECT_EQ(labels.at("6ea4a07e").size(), 2u);
  EXPECT_EQ(labels.at("6ea4a07e")[1], task_pairs(fixture("arc/evaluation/6ea4a07e.json"), "test")[1].second);
  const std::vector<std::string> names = load_identifiers(dir / "arc/identifiers.json");
  const SplitArrays test = read_split(dir / "arc/test");
  const auto idx = test.puzzle_indices.to_int64(), ids = test.identifiers.to_int64();

  // Perfect predictions (the label rows, in each puzzle's own frame) solve everything.
  ArcScorer perfect;
  perfect.set_all_labels(labels);
  for (size_t p = 0; p < ids.size(); ++p)
    for (int64_t row = idx[p]; row < idx[p + 1]; ++row)
      perfect.add(names[static_cast<size_t>(ids[p])], static_cast<int>(row - idx[p]), test.labels.data<uint8_t>() + row * 900, 0.0);
  ArcScore s = perfect.score({1, 2});
  EXPECT_EQ(s.puzzles, 2);
  EXPECT_EQ(s.test_inputs, 3);
  EXPECT_EQ(s.puzzles_correct, (std::vector<int64_t>{2, 2}));
  EXPECT_DOUBLE_EQ(s.pass_at(2), 1.0);
  EXPECT_EQ(s.unmatched_predictions, 0);

  // 6ea4a07e test input 1: a wrong grid wins the vote 2:1, so pass@1 fails for that puzzle (its
  // other test input is right) but pass@2 holds.
  const Grid right0 = labels.at("6ea4a07e")[0], right1 = labels.at("6ea4a07e")[1];
  Grid wrong = right1;
  wrong.cells[0] = static_cast<uint8_t>((wrong.cells[0] + 1) % 10);
  ArcScorer vote;
  vote.set_all_labels(labels);
  vote.add_grid("6ea4a07e", 0, right0, 0.0);
  vote.add_grid("6ea4a07e", 1, right1, 5.0);
  vote.add_grid("6ea4a07e", 1, wrong, -5.0);
  ArcIdentifier aug = parse_arc_identifier("6ea4a07e_t1_0987654321");
  vote.add_grid(arc_identifier_name(aug), 1, arc_apply_augmentation(aug, wrong), -5.0);  // maps back to `wrong`
  vote.add_grid("66e6c45b", 0, labels.at("66e6c45b")[0], 0.0);
  vote.add_grid("unknown", 0, right0, 0.0);
  s = vote.score({1, 2});
  EXPECT_EQ(s.puzzles_correct, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(s.test_inputs_correct, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(s.unmatched_predictions, 1);
  EXPECT_EQ(vote.top_predictions("6ea4a07e", 1, 2), (std::vector<Grid>{wrong, right1}));

  // Equal votes: the higher mean sigmoid(q_halt) ranks first, whatever the order of arrival.
  ArcScorer tie;
  tie.set_labels("p", {right1});
  tie.add_grid("p", 0, wrong, 1.0);
  tie.add_grid("p", 0, right1, 2.0);
  EXPECT_EQ(tie.score({1}).puzzles_correct[0], 1);
  tie.add_grid("p", 0, wrong, 4.0);
  tie.add_grid("p", 0, right1, -4.0);  // votes 2:2, mean q now favours `wrong`
  EXPECT_EQ(tie.score({1}).puzzles_correct[0], 0);
  // Missing predictions count as wrong.
  ArcScorer none;
  none.set_all_labels(labels);
  EXPECT_EQ(none.score({2}).puzzles_correct[0], 0);
}

// ---- Python and the tool -----------------------------------------------------------------------

TEST(PuzzleTool, NumpyReadsWhatWeWrite) {
  REQUIRE_PYTHON();
  ScratchDir dir;
  sudoku_generate(dir / "gen", 20, 5, 30, 40, 1, 1);
  ArcBuildOptions o;
  o.task_dirs = {fixture("arc")};
  o.num_aug = 2;
  build_arc_dataset(dir / "arc", o);
  const std::string code =
      "import numpy as np, json, sys\n"
      "for d, S in [('" + dir / "gen" + "', 81), ('" + dir / "arc" + "', 900)]:\n"
      "  for split in ['train', 'test']:\n"
      "    a = {k: np.load(d + '/' + split + '/all__' + k + '.npy') for k in "
      "['inputs', 'labels', 'puzzle_identifiers', 'puzzle_indices', 'group_indices']}\n"
      "    assert a['inputs'].dtype == np.uint8 and a['labels'].dtype == np.uint8, a['inputs'].dtype\n"
      "    assert all(a[k].dtype == np.int32 for k in ['puzzle_identifiers', 'puzzle_indices', 'group_indices'])\n"
      "    assert a['inputs'].shape == (a['puzzle_indices'][-1], S) and a['inputs'].flags.c_contiguous\n"
      "    m = json.load(open(d + '/' + split + '/dataset.json'))\n"
      "    assert m['total_groups'] == len(a['group_indices']) - 1\n"
      "    assert len(json.load(open(d + '/identifiers.json'))) == m['num_puzzle_identifiers']\n"
      "print('ok')\n";
  test::write_bytes(dir / "check.py", code);
  const auto r = test::run_command(test::test_python() + " '" + dir / "check.py" + "'", dir.path());
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "ok\n");
}

TEST(PuzzleTool, HrmDataEndToEnd) {
  const std::string bin = test::tool("hrm_data");
  ASSERT_TRUE(file_exists(bin)) << bin << " not built (cmake --build <dir> --target hrm_data)";
  ScratchDir dir;
  auto run = [&](const std::string& args) { return test::run_command("'" + bin + "' " + args, dir.path()); };

  auto r = run("sudoku-gen --out '" + dir / "gen" + "' --train 50 --test 10 --clues 32-36 --seed 3 --num-aug 1");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(test::count_lines(r.out), 1);
  EXPECT_TRUE(contains(r.out, "train 100 examples")) << r.out;
  EXPECT_TRUE(file_exists(dir / "gen/test/all__inputs.npy"));

  write_sudoku_csv(dir / "a.csv", 5, 1, true);
  write_sudoku_csv(dir / "b.csv", 4, 2, true);
  write_sudoku_csv(dir / "t.csv", 3, 3, true);
  r = run("sudoku --csv '" + dir / "a.csv" + "' '" + dir / "b.csv" + "' --test-csv '" + dir / "t.csv" +
          "' --out '" + dir / "sud" + "' --num-aug 2 --seed 1");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "train 27 examples / 27 puzzles / 9 groups, test 3 examples")) << r.out;

  r = run("arc --tasks '" + fixture("arc") + "' --out '" + dir / "arc" + "' --num-aug 2");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "13 identifiers")) << r.out;

  make_directories(dir / "maze");
  test::write_bytes(dir / "maze/train.csv", "source,question,answer,rating\na,S G,SoG,0\n");
  test::write_bytes(dir / "maze/test.csv", "source,question,answer,rating\na,S G,SoG,0\n");
  r = run("maze --csv '" + dir / "maze" + "' --out '" + dir / "mz" + "' --aug");
  ASSERT_NE(r.exit_code, 0);  // 3 characters: not a square grid
  EXPECT_TRUE(contains(r.err, dir / "maze/train.csv:2")) << r.err;
  test::write_bytes(dir / "maze/train.csv", "source,question,answer,rating\na,S  G,SooG,0\n");
  test::write_bytes(dir / "maze/test.csv", "source,question,answer,rating\na,S  G,SooG,0\n");
  r = run("maze --csv '" + dir / "maze" + "' --out '" + dir / "mz" + "' --aug");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "train 8 examples / 8 puzzles / 1 groups")) << r.out;

  // Bad input: one line naming the file, the error family's exit code.
  r = run("sudoku --csv '" + dir / "nope.csv" + "' --test-csv '" + dir / "t.csv" + "' --out '" + dir / "x" + "'");
  EXPECT_EQ(r.exit_code, static_cast<int>(ExitCode::kIo));
  EXPECT_EQ(test::count_lines(r.err), 1);
  EXPECT_TRUE(contains(r.err, "hrm_data: error: " + dir / "nope.csv")) << r.err;
  r = run("sudoku-gen --out '" + dir / "y" + "' --train 5");
  EXPECT_EQ(r.exit_code, static_cast<int>(ExitCode::kUsage));
  EXPECT_TRUE(contains(r.err, "--test")) << r.err;
  r = run("sudoku-gen --out '" + dir / "y" + "' --train 5 --test 1 --clues 40");
  EXPECT_EQ(r.exit_code, static_cast<int>(ExitCode::kUsage));
  r = run("frobnicate");
  EXPECT_EQ(r.exit_code, static_cast<int>(ExitCode::kUsage));
  r = run("arc --help");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_TRUE(contains(r.out, "--tasks")) << r.out;
}

}  // namespace
}  // namespace hrmclara::puzzles
