// ARC identifier names, encoding and the arc_eval.ipynb vote.
#include <hrmclara/arc_score.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/npy.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>

namespace hrmclara::puzzles {

// ---- names -----------------------------------------------------------------------------------

ArcIdentifier parse_arc_identifier(const std::string& name) {
  ArcIdentifier id;
  id.puzzle_id = name;
  // "<id>" + "_t" + digit + "_" + 10 digits
  constexpr size_t kSuffix = 2 + 1 + 1 + 10;
  if (name.size() <= kSuffix) return id;
  const size_t s = name.size() - kSuffix;
  if (name[s] != '_' || name[s + 1] != 't' || name[s + 2] < '0' || name[s + 2] > '7' || name[s + 3] != '_') return id;
  std::array<uint8_t, 10> map{};
  int seen = 0;
  for (size_t i = 0; i < 10; ++i) {
    const char c = name[s + 4 + i];
    if (c < '0' || c > '9' || (seen & (1 << (c - '0')))) return id;  // not a permutation of 0..9
    seen |= 1 << (c - '0');
    map[i] = static_cast<uint8_t>(c - '0');
  }
  id.puzzle_id = name.substr(0, s);
  id.augmented = true;
  id.dihedral = name[s + 2] - '0';
  id.colour_map = map;
  return id;
}

std::string arc_identifier_name(const ArcIdentifier& id) {
  if (!id.augmented) return id.puzzle_id;
  if (id.dihedral < 0 || id.dihedral > 7) throw UsageError("dihedral transform id " + std::to_string(id.dihedral) + " is not in 0..7");
  std::string name = id.puzzle_id + "_t" + std::to_string(id.dihedral) + "_";
  for (uint8_t v : id.colour_map) {
    if (v > 9) throw UsageError("colour map value " + std::to_string(v) + " is not in 0..9");
    name.push_back(static_cast<char>('0' + v));
  }
  return name;
}

Grid arc_apply_augmentation(const ArcIdentifier& id, const Grid& original) {
  if (!id.augmented) return original;
  Grid mapped = original;
  for (uint8_t& v : mapped.cells) v = v < 10 ? id.colour_map[v] : v;
  return dihedral_transform(mapped, id.dihedral);
}

Grid arc_invert_augmentation(const ArcIdentifier& id, const Grid& augmented) {
  if (!id.augmented) return augmented;
  std::array<uint8_t, 10> inverse{};
  for (uint8_t i = 0; i < 10; ++i) inverse[id.colour_map[i]] = i;
  Grid g = inverse_dihedral_transform(augmented, id.dihedral);
  for (uint8_t& v : g.cells) v = v < 10 ? inverse[v] : v;
  return g;
}

// ---- sequences -------------------------------------------------------------------------------

void arc_encode_grid(const Grid& grid, int pad_r, int pad_c, uint8_t* seq) {
  if (grid.rows < 0 || grid.cols < 0 || pad_r < 0 || pad_c < 0 || pad_r + grid.rows > kArcGridSize ||
      pad_c + grid.cols > kArcGridSize)
    throw UsageError("a " + std::to_string(grid.rows) + "x" + std::to_string(grid.cols) + " grid at offset (" +
                     std::to_string(pad_r) + ", " + std::to_string(pad_c) + ") does not fit 30x30");
  std::fill(seq, seq + kArcGridSize * kArcGridSize, static_cast<uint8_t>(kArcPad));
  for (int r = 0; r < grid.rows; ++r)
    for (int c = 0; c < grid.cols; ++c)
      seq[(pad_r + r) * kArcGridSize + pad_c + c] = static_cast<uint8_t>(grid.at(r, c) + kArcColourOffset);
  const int eos_row = pad_r + grid.rows, eos_col = pad_c + grid.cols;
  if (eos_row < kArcGridSize)
    for (int c = pad_c; c < eos_col; ++c) seq[eos_row * kArcGridSize + c] = kArcEos;
  if (eos_col < kArcGridSize)
    for (int r = pad_r; r < eos_row; ++r) seq[r * kArcGridSize + eos_col] = kArcEos;
}

// ---- scoring ---------------------------------------------------------------------------------

double ArcScore::pass_at(int k) const {
  for (size_t i = 0; i < ks.size(); ++i)
    if (ks[i] == k) return puzzles ? static_cast<double>(puzzles_correct[i]) / static_cast<double>(puzzles) : 0.0;
  throw UsageError("pass@" + std::to_string(k) + " was not scored");
}

void ArcScorer::set_labels(const std::string& puzzle_id, std::vector<Grid> outputs) {
  labels_[puzzle_id] = std::move(outputs);
}

void ArcScorer::set_all_labels(const std::map<std::string, std::vector<Grid>>& labels) {
  for (const auto& [id, grids] : labels) labels_[id] = grids;
}

void ArcScorer::add_grid(const std::string& identifier_name, int test_index, const Grid& predicted, double q_halt_logit) {
  const ArcIdentifier id = parse_arc_identifier(identifier_name);
  auto it = labels_.find(id.puzzle_id);
  if (it == labels_.end() || test_index < 0 || static_cast<size_t>(test_index) >= it->second.size()) {
    ++unmatched_;
    return;
  }
  ++used_;
  const Grid grid = arc_invert_augmentation(id, predicted);
  const double q = 1.0 / (1.0 + std::exp(-q_halt_logit));
  const std::pair<std::string, int> key{id.puzzle_id, test_index};
  auto& list = candidates_[key];
  std::string grid_key = {static_cast<char>(grid.rows), static_cast<char>(grid.cols)};
  grid_key.append(grid.cells.begin(), grid.cells.end());
  auto [pos, fresh] = index_[key].emplace(std::move(grid_key), list.size());
  if (!fresh) {
    ++list[pos->second].votes;
    list[pos->second].q_sum += q;
    return;
  }
  list.push_back({grid, 1, q});
}

std::vector<ArcScorer::Candidate> ArcScorer::ranked(const std::string& puzzle_id, int test_index) const {
  auto it = candidates_.find({puzzle_id, test_index});
  if (it == candidates_.end()) return {};
  std::vector<Candidate> list = it->second;  // first-seen order
  std::stable_sort(list.begin(), list.end(), [](const Candidate& a, const Candidate& b) {
    if (a.votes != b.votes) return a.votes > b.votes;
    return a.q_sum / static_cast<double>(a.votes) > b.q_sum / static_cast<double>(b.votes);
  });
  return list;
}

std::vector<Grid> ArcScorer::top_predictions(const std::string& puzzle_id, int test_index, int k) const {
  std::vector<Grid> out;
  for (const Candidate& c : ranked(puzzle_id, test_index)) {
    if (static_cast<int>(out.size()) >= k) break;
    out.push_back(c.grid);
  }
  return out;
}

ArcScore ArcScorer::score(const std::vector<int>& ks) const {
  ArcScore s;
  s.ks = ks;
  s.puzzles_correct.assign(ks.size(), 0);
  s.test_inputs_correct.assign(ks.size(), 0);
  s.predictions = used_;
  s.unmatched_predictions = unmatched_;
  for (const auto& [puzzle_id, outputs] : labels_) {
    ++s.puzzles;
    std::vector<int64_t> right(ks.size(), 0);
    for (size_t t = 0; t < outputs.size(); ++t) {
      ++s.test_inputs;
      const std::vector<Candidate> list = ranked(puzzle_id, static_cast<int>(t));
      for (size_t i = 0; i < ks.size(); ++i) {
        bool ok = false;
        for (size_t r = 0; r < list.size() && static_cast<int>(r) < ks[i]; ++r) ok = ok || list[r].grid == outputs[t];
        right[i] += ok;
      }
    }
    for (size_t i = 0; i < ks.size(); ++i) {
      s.test_inputs_correct[i] += right[i];
      s.puzzles_correct[i] += right[i] == static_cast<int64_t>(outputs.size());
    }
  }
  return s;
}

// ---- loading ---------------------------------------------------------------------------------

std::vector<std::string> load_identifiers(const std::string& path) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(path + ": invalid JSON (" + std::string(e.what()) + ")");
  }
  if (!j.is_array()) throw FormatError(path + ": expected a JSON list of identifier names");
  std::vector<std::string> names;
  for (size_t i = 0; i < j.size(); ++i) {
    if (!j[i].is_string()) throw FormatError(path + ": entry " + std::to_string(i) + " is not a string");
    names.push_back(j[i].get<std::string>());
  }
  return names;
}

std::map<std::string, std::vector<Grid>> load_arc_test_labels(const std::string& data_dir) {
  const std::vector<std::string> names = load_identifiers(data_dir + "/identifiers.json");
  const std::string base = data_dir + "/test/all__";
  const npy::Array labels = npy::read(base + "labels.npy");
  const npy::Array ids_arr = npy::read(base + "puzzle_identifiers.npy");
  const npy::Array idx_arr = npy::read(base + "puzzle_indices.npy");
  if (labels.shape.size() != 2 || labels.shape[1] != kArcGridSize * kArcGridSize)
    throw FormatError(base + "labels.npy: expected shape [N, 900]");
  std::vector<int64_t> ids, idx;
  try {
    ids = ids_arr.to_int64();
    idx = idx_arr.to_int64();
  } catch (const FormatError& e) {
    throw FormatError(base + "puzzle_*.npy: " + e.what());
  }
  // Rows are decoded one by one from the stored type (the split can be GBs as int64).
  auto decode_row = [&](int64_t row) {
    const size_t offset = static_cast<size_t>(row) * kArcGridSize * kArcGridSize;
    if (labels.descr == "|u1") return arc_decode_sequence(labels.data<uint8_t>() + offset);
    if (labels.descr == "<i4") return arc_decode_sequence(labels.data<int32_t>() + offset);
    if (labels.descr == "<i8") return arc_decode_sequence(labels.data<int64_t>() + offset);
    throw FormatError(base + "labels.npy: dtype '" + labels.descr + "', expected uint8, int32 or int64");
  };
  if (idx.size() != ids.size() + 1 || idx.front() != 0 || idx.back() != labels.shape[0])
    throw FormatError(base + "puzzle_indices.npy: does not match puzzle_identifiers.npy and labels.npy");
  std::map<std::string, std::vector<Grid>> out;
  for (size_t p = 0; p < ids.size(); ++p) {
    if (ids[p] < 0 || static_cast<size_t>(ids[p]) >= names.size())
      throw FormatError(base + "puzzle_identifiers.npy: identifier " + std::to_string(ids[p]) + " is not in identifiers.json");
    if (ids[p] == 0) continue;
    const ArcIdentifier id = parse_arc_identifier(names[static_cast<size_t>(ids[p])]);
    if (id.augmented) continue;
    if (idx[p] > idx[p + 1]) throw FormatError(base + "puzzle_indices.npy: not increasing");
    std::vector<Grid>& grids = out[id.puzzle_id];
    grids.clear();
    for (int64_t row = idx[p]; row < idx[p + 1]; ++row)
      grids.push_back(decode_row(row));
  }
  return out;
}

}  // namespace hrmclara::puzzles
