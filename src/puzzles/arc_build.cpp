// ARC from task JSON files (build_arc_dataset.py).
#include "build_internal.h"

#include <hrmclara/arc_score.h>
#include <hrmclara/cli.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/log.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <map>
#include <unordered_set>

namespace hrmclara::puzzles {

namespace {

constexpr int kAugmentRetriesFactor = 5;  // upstream ARCAugmentRetriesFactor
constexpr int64_t kArcVocab = 12;         // PAD, EOS, colours 0..9

struct ArcExample {
  Grid input, output;
};

// One puzzle of a group: the task itself or an augmentation of it.
struct ArcVariant {
  std::string name;
  std::vector<ArcExample> train, test;
};

struct TaskFile {
  std::string path, stem;
  bool test_to_test_split = false;  // the set is named "evaluation"
};

// Directory work goes through files.h's POSIX helpers: std::filesystem's symbols are shadowed by
// the copies libtorch.so exports (see files.h).
bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

std::string join_path(const std::string& dir, const std::string& name) {
  return ends_with(dir, "/") ? dir + name : dir + "/" + name;
}

// The last component of `dir` as named on disk ("." and ".." resolved).
std::string directory_name(const std::string& dir) {
  char resolved[PATH_MAX];
  std::string p = ::realpath(dir.c_str(), resolved) ? std::string(resolved) : dir;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  const size_t slash = p.find_last_of('/');
  return slash == std::string::npos ? p : p.substr(slash + 1);
}

std::vector<std::string> json_files_in(const std::string& dir) {
  std::vector<std::string> files;
  for (const std::string& name : list_directory(dir)) {  // sorted
    const std::string path = join_path(dir, name);
    if (ends_with(name, ".json") && name.size() > 5 && !is_directory(path)) files.push_back(path);
  }
  return files;
}

// The sets of one --tasks entry: the directory itself when it holds *.json, then each
// subdirectory in name order (upstream scans os.scandir(dataset_path) for subdirectories).
std::vector<std::pair<std::string, std::vector<std::string>>> task_sets(const std::string& root) {
  if (!is_directory(root)) throw IoError(root + ": not a directory of ARC tasks");
  std::vector<std::pair<std::string, std::vector<std::string>>> sets;
  if (auto own = json_files_in(root); !own.empty()) sets.emplace_back(directory_name(root), std::move(own));
  for (const std::string& name : list_directory(root)) {  // sorted
    const std::string sub = join_path(root, name);
    if (!is_directory(sub)) continue;
    if (auto files = json_files_in(sub); !files.empty()) sets.emplace_back(name, std::move(files));
  }
  return sets;
}

Grid arc_grid(const nlohmann::json& j, const std::string& where) {
  if (!j.is_array() || j.empty() || j.size() > kArcGridSize)
    throw FormatError(where + ": expected a list of 1 to 30 rows");
  Grid g;
  g.rows = static_cast<int>(j.size());
  for (size_t r = 0; r < j.size(); ++r) {
    const auto& row = j[r];
    if (!row.is_array() || row.empty() || row.size() > kArcGridSize)
      throw FormatError(where + ": row " + std::to_string(r) + " is not a list of 1 to 30 colours");
    if (r == 0) g.cols = static_cast<int>(row.size());
    if (row.size() != static_cast<size_t>(g.cols))
      throw FormatError(where + ": row " + std::to_string(r) + " has " + std::to_string(row.size()) + " cells, row 0 has " +
                        std::to_string(g.cols));
    for (size_t c = 0; c < row.size(); ++c) {
      const auto& v = row[c];
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > 9)
        throw FormatError(where + ": row " + std::to_string(r) + " column " + std::to_string(c) + " is " + v.dump() +
                          ", not a colour 0-9");
      g.cells.push_back(static_cast<uint8_t>(v.get<int64_t>()));
    }
  }
  return g;
}

ArcVariant read_task(const TaskFile& file) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(file.path));
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(file.path + ": invalid JSON (" + first_line(e.what()) + ")");
  }
  if (!j.is_object()) throw FormatError(file.path + ": expected a JSON object with \"train\" and \"test\"");
  ArcVariant task;
  task.name = file.stem;
  if (j.contains("name")) {
    if (!j["name"].is_string() || j["name"].get<std::string>().empty())
      throw FormatError(file.path + ": name: expected a non-empty string");
    task.name = j["name"].get<std::string>();
  }
  for (const char* split : {"train", "test"}) {
    if (!j.contains(split) || !j[split].is_array() || j[split].empty())
      throw FormatError(file.path + ": " + split + ": expected a non-empty list of {\"input\", \"output\"} pairs");
    auto& dest = std::string(split) == "train" ? task.train : task.test;
    for (size_t i = 0; i < j[split].size(); ++i) {
      const auto& ex = j[split][i];
      const std::string where = file.path + ": " + split + "[" + std::to_string(i) + "]";
      if (!ex.is_object() || !ex.contains("input") || !ex.contains("output"))
        throw FormatError(where + ": expected an object with \"input\" and \"output\"");
      dest.push_back({arc_grid(ex["input"], where + ".input"), arc_grid(ex["output"], where + ".output")});
    }
  }
  return task;
}

// Equal for two variants exactly when their multisets of (input, output) pairs are equal
// (upstream's puzzle_hash, without the hashing).
std::string variant_key(const ArcVariant& v) {
  std::vector<std::string> parts;
  for (const auto* list : {&v.train, &v.test})
    for (const ArcExample& e : *list) {
      std::string s;
      for (const Grid* g : {&e.input, &e.output}) {
        s.push_back(static_cast<char>(g->rows));
        s.push_back(static_cast<char>(g->cols));
        s.append(g->cells.begin(), g->cells.end());
      }
      parts.push_back(std::move(s));
    }
  std::sort(parts.begin(), parts.end());
  std::string key;
  for (const auto& p : parts) key += p;
  return key;
}

std::vector<ArcVariant> augment(const ArcVariant& task, int num_aug, std::mt19937_64& rng) {
  std::vector<ArcVariant> group = {task};
  if (num_aug <= 0) return group;
  std::unordered_set<std::string> seen = {variant_key(task)};
  for (int trial = 0; trial < kAugmentRetriesFactor * num_aug && static_cast<int>(group.size()) < num_aug + 1; ++trial) {
    ArcIdentifier id;
    id.puzzle_id = task.name;
    id.augmented = true;
    id.dihedral = static_cast<int>(rand_below(rng, 8));
    std::vector<uint8_t> colours = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    shuffle_in_place(colours, rng);
    for (size_t i = 0; i < 9; ++i) id.colour_map[i + 1] = colours[i];
    ArcVariant v;
    v.name = arc_identifier_name(id);
    for (const auto& [from, to] : {std::make_pair(&task.train, &v.train), std::make_pair(&task.test, &v.test)})
      for (const ArcExample& e : *from) to->push_back({arc_apply_augmentation(id, e.input), arc_apply_augmentation(id, e.output)});
    if (seen.insert(variant_key(v)).second) group.push_back(std::move(v));
  }
  return group;
}

void emit_puzzle(detail::SplitWriter& w, const std::vector<const ArcExample*>& examples, int32_t identifier, bool translate,
                 std::mt19937_64& rng) {
  std::vector<uint8_t> in(kArcGridSize * kArcGridSize), out(kArcGridSize * kArcGridSize);
  // Upstream keeps one random example of each train-split puzzle at offset 0.
  const uint64_t keep = translate ? rand_below(rng, examples.size()) : 0;
  for (size_t i = 0; i < examples.size(); ++i) {
    const ArcExample& e = *examples[i];
    int pad_r = 0, pad_c = 0;
    if (translate && i != keep) {
      pad_r = static_cast<int>(rand_below(rng, static_cast<uint64_t>(kArcGridSize - std::max(e.input.rows, e.output.rows) + 1)));
      pad_c = static_cast<int>(rand_below(rng, static_cast<uint64_t>(kArcGridSize - std::max(e.input.cols, e.output.cols) + 1)));
    }
    arc_encode_grid(e.input, pad_r, pad_c, in.data());
    arc_encode_grid(e.output, pad_r, pad_c, out.data());
    w.add_example(in.data(), out.data());
  }
  w.end_puzzle(identifier);
}

}  // namespace

BuildSummary build_arc_dataset(const std::string& out_dir, const ArcBuildOptions& o) {
  if (o.task_dirs.empty()) throw UsageError("no ARC task directory given");
  if (o.num_aug < 0) throw UsageError("num_aug must not be negative");
  std::mt19937_64 rng(o.seed);

  // Every set, in order, its files shuffled (upstream shuffles each directory's puzzles).
  std::vector<TaskFile> files;
  for (const std::string& root : o.task_dirs)
    for (auto& [set_name, paths] : task_sets(root)) {
      std::vector<TaskFile> set;
      for (const std::string& p : paths) {
        const std::string file = p.substr(p.find_last_of('/') + 1);
        set.push_back({p, file.substr(0, file.size() - 5), set_name == "evaluation"});
      }
      shuffle_in_place(set, rng);
      files.insert(files.end(), set.begin(), set.end());
    }
  if (files.empty()) throw IoError(o.task_dirs.front() + ": no ARC task files (*.json) in it or its subdirectories");

  BuildSummary summary;
  make_directories(out_dir);
  detail::SplitWriter train(out_dir + "/train", kArcGridSize * kArcGridSize);
  std::unique_ptr<detail::SplitWriter> test;
  std::vector<std::string> names = {"<blank>"};
  std::map<std::string, int32_t> ids;
  std::map<std::string, std::string> task_file;  // task name -> its file, to refuse duplicates
  auto identifier = [&](const std::string& name) {
    auto [it, fresh] = ids.emplace(name, static_cast<int32_t>(names.size()));
    if (fresh) names.push_back(name);
    return it->second;
  };

  for (const TaskFile& f : files) {
    const ArcVariant task = read_task(f);
    if (parse_arc_identifier(task.name).augmented)
      throw FormatError(f.path + ": task name '" + task.name + "' looks like an augmented name (<id>_t<t>_<map>)");
    if (auto [it, fresh] = task_file.emplace(task.name, f.path); !fresh)
      throw FormatError(f.path + ": task name '" + task.name + "' is also the name of " + it->second);
    const std::vector<ArcVariant> group = augment(task, o.num_aug, rng);
    if (static_cast<int>(group.size()) < o.num_aug + 1) {
      ++summary.short_groups;
      log_debug("[Puzzle " + task.name + "] augmentation not full, only " + std::to_string(group.size()));
    }
    for (const ArcVariant& v : group) {
      std::vector<const ArcExample*> examples;
      for (const ArcExample& e : v.train) examples.push_back(&e);
      if (!f.test_to_test_split)
        for (const ArcExample& e : v.test) examples.push_back(&e);
      emit_puzzle(train, examples, identifier(v.name), /*translate=*/true, rng);
    }
    train.end_group();
    if (f.test_to_test_split) {
      if (!test) test = std::make_unique<detail::SplitWriter>(out_dir + "/test", kArcGridSize * kArcGridSize);
      for (const ArcVariant& v : group) {
        std::vector<const ArcExample*> examples;
        for (const ArcExample& e : v.test) examples.push_back(&e);
        emit_puzzle(*test, examples, identifier(v.name), /*translate=*/false, rng);
      }
      test->end_group();
    }
  }
  if (summary.short_groups)
    log_warn(std::to_string(summary.short_groups) + " ARC task(s) got fewer than " + std::to_string(o.num_aug) +
             " distinct augmentations (too symmetric); see --log-level debug");

  summary.num_identifiers = static_cast<int64_t>(names.size());
  summary.train = train.finish(kArcVocab, summary.num_identifiers);
  detail::write_identifiers(out_dir, names);
  summary.has_test = test != nullptr;
  if (test) summary.test = test->finish(kArcVocab, summary.num_identifiers);
  return summary;
}

}  // namespace hrmclara::puzzles
