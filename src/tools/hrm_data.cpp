// hrm_data: builds HRM puzzle datasets in upstream's layout (see include/hrmclara/puzzle_build.h).
#include <hrmclara/cli.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/puzzle_build.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

using namespace hrmclara;
using namespace hrmclara::puzzles;

namespace {

const char* kUsage =
    "usage: hrm_data <command> [options]   (hrm_data <command> --help for its options)\n"
    "\n"
    "commands:\n"
    "  sudoku      Sudoku from upstream's CSV (source,question,answer,rating)\n"
    "  maze        Maze from upstream's CSV\n"
    "  arc         ARC from task JSON directories\n"
    "  sudoku-gen  generated Sudoku puzzles with unique solutions\n"
    "\n"
    "Each writes <out>/identifiers.json and <out>/{train,test}/{dataset.json,all__*.npy} and prints\n"
    "one summary line.\n";

// Options that take several values (--csv a.csv b.csv): every following argument up to the next
// "--option" is a value; the option may also be repeated. Removed from `args`.
std::vector<std::string> take_multi(std::vector<std::string>& args, const std::string& name) {
  std::vector<std::string> values, rest;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    const bool bare = a == "--" + name, inline_value = a.rfind("--" + name + "=", 0) == 0;
    if (!bare && !inline_value) {
      rest.push_back(a);
      continue;
    }
    if (inline_value) values.push_back(a.substr(name.size() + 3));
    size_t taken = 0;
    while (i + 1 < args.size() && args[i + 1].rfind("--", 0) != 0) {
      values.push_back(args[++i]);
      ++taken;
    }
    if (bare && taken == 0) throw UsageError("option --" + name + " needs at least one value");
  }
  args = rest;
  return values;
}

// Parses the remaining arguments with `parser`; false after --help.
bool parse(ArgParser& parser, const std::vector<std::string>& args) {
  std::vector<char*> argv;
  std::string program = parser.program();
  argv.push_back(program.data());
  std::vector<std::string> copy = args;
  for (std::string& a : copy) argv.push_back(a.data());
  return parser.parse(static_cast<int>(argv.size()), argv.data(), 0);
}

bool wants_help(const std::vector<std::string>& args) {
  for (const auto& a : args)
    if (a == "--help" || a == "-h") return true;
  return false;
}

std::optional<int64_t> optional_int(const ArgParser& p, const char* name) {
  if (!p.has(name)) return std::nullopt;
  return p.get_int(name);
}

// CSV arguments: a file is a train CSV; a directory contributes its train.csv and test.csv.
void split_csv_arguments(const std::vector<std::string>& csv, const std::vector<std::string>& test_csv,
                         std::vector<std::string>& train_out, std::vector<std::string>& test_out) {
  for (const std::string& c : csv) {
    if (is_directory(c)) {
      train_out.push_back(c + "/train.csv");
      test_out.push_back(c + "/test.csv");
    } else {
      train_out.push_back(c);
    }
  }
  test_out.insert(test_out.end(), test_csv.begin(), test_csv.end());
  if (train_out.empty()) throw UsageError("missing required option --csv (see --help)");
  if (test_out.empty()) throw UsageError("no test CSV: give --test-csv FILE or a --csv directory holding test.csv");
}

void print_summary(const std::string& what, const std::string& out, const BuildSummary& s, double seconds) {
  auto split = [](const char* name, const SplitSummary& x) {
    return std::string(name) + " " + std::to_string(x.examples) + " examples / " + std::to_string(x.puzzles) +
           " puzzles / " + std::to_string(x.groups) + " groups";
  };
  std::string line = what + ": " + split("train", s.train) + ", " + (s.has_test ? split("test", s.test) : "no test split") +
                     ", " + std::to_string(s.num_identifiers) + " identifiers";
  if (s.skipped_rows) line += ", " + std::to_string(s.skipped_rows) + " rows below --min-difficulty";
  if (s.short_groups) line += ", " + std::to_string(s.short_groups) + " short augmentation groups";
  char secs[32];
  std::snprintf(secs, sizeof secs, "%.2f", seconds);
  std::cout << line << " -> " << out << " in " << secs << " s" << std::endl;
}

int run(std::vector<std::string> args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::cout << kUsage;
    return args.empty() ? static_cast<int>(ExitCode::kUsage) : 0;
  }
  const std::string command = args[0];
  args.erase(args.begin());
  const auto t0 = std::chrono::steady_clock::now();
  auto seconds = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  BuildSummary summary;
  std::string out;

  if (command == "sudoku" || command == "maze") {
    const bool sudoku = command == "sudoku";
    ArgParser p("hrm_data " + command,
                sudoku ? "--csv FILE|DIR... [--test-csv FILE...] --out DIR [--subsample N] [--num-aug N]\n"
                         "                       [--min-difficulty R] [--seed S]"
                       : "--csv FILE|DIR... [--test-csv FILE...] --out DIR [--aug] [--subsample N] [--seed S]");
    p.option("csv", "train CSV file(s); a directory stands for its train.csv (train) and test.csv (test)")
        .option("test-csv", "test CSV file(s)")
        .option("out", "output directory")
        .option("subsample", "train: keep a random subset of N rows");
    if (sudoku)
      p.option("num-aug", "train: shuffled copies of each puzzle (digits, transpose, bands, rows)", "0")
          .option("min-difficulty", "keep rows whose rating is at least R");
    else
      p.flag("aug", "train: add the 8 dihedral transforms of each maze");
    p.option("seed", "random seed", "0").option("log-level", "trace|debug|info|warn|error|off", "info");
    if (wants_help(args)) {
      parse(p, {"--help"});
      return 0;
    }
    const std::vector<std::string> csv = take_multi(args, "csv"), test_csv = take_multi(args, "test-csv");
    parse(p, args);
    out = p.require("out");
    std::vector<std::string> train_files, test_files;
    split_csv_arguments(csv, test_csv, train_files, test_files);
    if (sudoku) {
      SudokuCsvOptions o;
      o.train_csv = train_files;
      o.test_csv = test_files;
      o.subsample = optional_int(p, "subsample");
      o.num_aug = static_cast<int>(p.get_int("num-aug"));
      o.min_difficulty = optional_int(p, "min-difficulty");
      o.seed = static_cast<uint64_t>(p.get_int("seed"));
      summary = build_sudoku_dataset(out, o);
    } else {
      MazeCsvOptions o;
      o.train_csv = train_files;
      o.test_csv = test_files;
      o.subsample = optional_int(p, "subsample");
      o.aug = p.has("aug");
      o.seed = static_cast<uint64_t>(p.get_int("seed"));
      summary = build_maze_dataset(out, o);
    }
  } else if (command == "arc") {
    ArgParser p("hrm_data arc", "--tasks DIR... --out DIR [--num-aug N] [--seed S]");
    p.option("tasks",
             "task directories: each subdirectory (and the directory itself) holding *.json is a set; a set named "
             "'evaluation' sends its test pairs to the test split")
        .option("out", "output directory")
        .option("num-aug", "augmented copies per task (dihedral + colour permutation)", "1000")
        .option("seed", "random seed", "42")
        .option("log-level", "trace|debug|info|warn|error|off", "info");
    if (wants_help(args)) {
      parse(p, {"--help"});
      return 0;
    }
    ArcBuildOptions o;
    o.task_dirs = take_multi(args, "tasks");
    parse(p, args);
    out = p.require("out");
    if (o.task_dirs.empty()) throw UsageError("missing required option --tasks (see --help)");
    o.num_aug = static_cast<int>(p.get_int("num-aug"));
    o.seed = static_cast<uint64_t>(p.get_int("seed"));
    summary = build_arc_dataset(out, o);
  } else if (command == "sudoku-gen") {
    ArgParser p("hrm_data sudoku-gen", "--out DIR --train N --test M [--clues A-B] [--seed S] [--num-aug N]");
    p.option("out", "output directory")
        .option("train", "number of train puzzles")
        .option("test", "number of test puzzles (disjoint from train)")
        .option("clues", "clue count range A-B (17 <= A <= B <= 81)", "30-40")
        .option("seed", "random seed", "0")
        .option("num-aug", "train: shuffled copies of each puzzle", "0")
        .option("log-level", "trace|debug|info|warn|error|off", "info");
    if (!parse(p, args)) return 0;
    SudokuGenOptions o;
    out = p.require("out");
    p.require("train");
    p.require("test");
    o.train = p.get_int("train");
    o.test = p.get_int("test");
    const std::string clues = p.get("clues");
    const size_t dash = clues.find('-');
    try {
      size_t used_a = 0, used_b = 0;
      if (dash == std::string::npos) throw std::invalid_argument("no dash");
      o.clues_min = std::stoi(clues.substr(0, dash), &used_a);
      o.clues_max = std::stoi(clues.substr(dash + 1), &used_b);
      if (used_a != dash || used_b != clues.size() - dash - 1) throw std::invalid_argument("trailing text");
    } catch (const std::exception&) {
      throw UsageError("option --clues: '" + clues + "' is not a range A-B");
    }
    o.seed = static_cast<uint64_t>(p.get_int("seed"));
    o.num_aug = static_cast<int>(p.get_int("num-aug"));
    summary = generate_sudoku_dataset(out, o);
  } else {
    throw UsageError("unknown command '" + command + "' (sudoku, maze, arc, sudoku-gen)");
  }
  print_summary(command, out, summary, seconds());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return run_main("hrm_data", [&] {
    if (print_version_if_asked("hrm_data", argc, argv)) return 0;
    return run(std::vector<std::string>(argv + 1, argv + argc));
  });
}
