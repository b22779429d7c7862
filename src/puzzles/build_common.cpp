// What the puzzle builders share: portable random helpers, dihedral transforms, the CSV reader,
// and the writer of upstream's split layout.
#include "build_internal.h"

#include <hrmclara/errors.h>
#include <hrmclara/files.h>

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>

namespace hrmclara::puzzles {

uint64_t rand_below(std::mt19937_64& rng, uint64_t n) {
  if (n == 0) throw UsageError("rand_below: empty range");
  // Reject the lowest (2^64 mod n) raw values so that every residue is equally likely.
  const uint64_t threshold = (0 - n) % n;
  for (;;) {
    const uint64_t r = rng();
    if (r >= threshold) return r % n;
  }
}

// ---- dihedral transforms ---------------------------------------------------------------------

int dihedral_inverse(int tid) {
  static const int kInverse[8] = {0, 3, 2, 1, 4, 5, 6, 7};
  if (tid < 0 || tid > 7) throw UsageError("dihedral transform id " + std::to_string(tid) + " is not in 0..7");
  return kInverse[tid];
}

Grid dihedral_transform(const Grid& a, int tid) {
  if (tid < 0 || tid > 7) throw UsageError("dihedral transform id " + std::to_string(tid) + " is not in 0..7");
  const int m = a.rows, n = a.cols;
  const bool swaps = tid == 1 || tid == 3 || tid == 6 || tid == 7;
  Grid out(swaps ? n : m, swaps ? m : n);
  for (int i = 0; i < out.rows; ++i)
    for (int j = 0; j < out.cols; ++j) {
      uint8_t v = 0;
      switch (tid) {
        case 0: v = a.at(i, j); break;
        case 1: v = a.at(j, n - 1 - i); break;          // numpy rot90: counter-clockwise
        case 2: v = a.at(m - 1 - i, n - 1 - j); break;
        case 3: v = a.at(m - 1 - j, i); break;          // rot90 three times: clockwise
        case 4: v = a.at(i, n - 1 - j); break;          // fliplr
        case 5: v = a.at(m - 1 - i, j); break;          // flipud
        case 6: v = a.at(j, i); break;                  // transpose
        default: v = a.at(m - 1 - j, n - 1 - i); break; // fliplr(rot90): anti-transpose
      }
      out.at(i, j) = v;
    }
  return out;
}

Grid inverse_dihedral_transform(const Grid& grid, int tid) { return dihedral_transform(grid, dihedral_inverse(tid)); }

namespace detail {

std::string describe_char(char c) {
  const auto u = static_cast<unsigned char>(c);
  if (u >= 0x20 && u < 0x7f) return std::string("'") + c + "'";
  char buf[8];
  std::snprintf(buf, sizeof buf, "\\x%02x", u);
  return buf;
}


// ---- CSV -------------------------------------------------------------------------------------

namespace {

// Splits one line into fields; false on an unterminated quote.
bool split_csv_line(const std::string& line, std::vector<std::string>& fields) {
  fields.clear();
  std::string field;
  size_t i = 0;
  for (;;) {
    field.clear();
    if (i < line.size() && line[i] == '"') {
      ++i;
      for (;;) {
        if (i >= line.size()) return false;
        if (line[i] == '"') {
          if (i + 1 < line.size() && line[i + 1] == '"') {
            field.push_back('"');
            i += 2;
            continue;
          }
          ++i;
          break;
        }
        field.push_back(line[i++]);
      }
      // Text after a closing quote (a"b"c) is kept, as Python's csv module does.
      while (i < line.size() && line[i] != ',') field.push_back(line[i++]);
    } else {
      while (i < line.size() && line[i] != ',') field.push_back(line[i++]);
    }
    fields.push_back(field);
    if (i >= line.size()) return true;
    ++i;  // the comma
  }
}

}  // namespace

void read_csv(const std::string& path, size_t fields, const std::function<void(const CsvRow&)>& on_row) {
  require_regular_file(path);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path + ": cannot open (" + std::strerror(errno) + ")");
  std::string line;
  CsvRow row;
  row.file = &path;
  bool header = true;
  while (std::getline(in, line)) {
    ++row.line;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (header) {
      header = false;  // upstream skips the first row whatever it holds
      continue;
    }
    if (line.empty()) continue;
    if (!split_csv_line(line, row.fields)) throw FormatError(row.where() + ": unterminated quoted field");
    if (row.fields.size() != fields)
      throw FormatError(row.where() + ": " + std::to_string(row.fields.size()) + " fields, expected " +
                        std::to_string(fields));
    on_row(row);
  }
  if (in.bad()) throw IoError(path + ": read failed");
  if (header) throw FormatError(path + ": empty CSV file (no header row)");
}

int64_t parse_int_field(const std::string& text, const std::string& where, const std::string& what) {
  size_t i = 0;
  bool negative = false;
  if (i < text.size() && (text[i] == '-' || text[i] == '+')) negative = text[i++] == '-';
  if (i >= text.size()) throw FormatError(where + ": " + what + " '" + text + "' is not an integer");
  int64_t v = 0;
  for (; i < text.size(); ++i) {
    const char c = text[i];
    if (c < '0' || c > '9') throw FormatError(where + ": " + what + " '" + text + "' is not an integer");
    if (v > (std::numeric_limits<int64_t>::max() - (c - '0')) / 10)
      throw FormatError(where + ": " + what + " '" + text + "' is out of range");
    v = v * 10 + (c - '0');
  }
  return negative ? -v : v;
}

// ---- output ----------------------------------------------------------------------------------

void write_identifiers(const std::string& out_dir, const std::vector<std::string>& names) {
  nlohmann::json j = names;
  write_file_atomically(out_dir + "/identifiers.json", j.dump());
}

SplitWriter::SplitWriter(const std::string& dir, int64_t seq_len) : dir_(dir), seq_len_(seq_len) {
  make_directories(dir_);
  inputs_ = std::make_unique<npy::StreamWriter>(dir_ + "/all__inputs.npy", "|u1", std::vector<int64_t>{seq_len_});
  labels_ = std::make_unique<npy::StreamWriter>(dir_ + "/all__labels.npy", "|u1", std::vector<int64_t>{seq_len_});
}

void SplitWriter::add_example(const uint8_t* input, const uint8_t* label) {
  inputs_->append(input, static_cast<uint64_t>(seq_len_));
  labels_->append(label, static_cast<uint64_t>(seq_len_));
  ++examples_;
  if (examples_ > std::numeric_limits<int32_t>::max())
    throw FormatError(dir_ + ": more than 2^31 - 1 examples do not fit the int32 index arrays");
}

void SplitWriter::end_puzzle(int32_t identifier) {
  if (examples_ == puzzle_indices_.back()) throw UsageError(dir_ + ": a puzzle needs at least one example");
  puzzle_indices_.push_back(static_cast<int32_t>(examples_));
  puzzle_identifiers_.push_back(identifier);
}

void SplitWriter::end_group() {
  const auto puzzles = static_cast<int32_t>(puzzle_identifiers_.size());
  if (puzzles == group_indices_.back()) throw UsageError(dir_ + ": a group needs at least one puzzle");
  group_indices_.push_back(puzzles);
}

SplitSummary SplitWriter::finish(int64_t vocab_size, int64_t num_puzzle_identifiers) {
  if (examples_ != puzzle_indices_.back() || static_cast<int32_t>(puzzle_identifiers_.size()) != group_indices_.back())
    throw UsageError(dir_ + ": finish() with an open puzzle or group");
  SplitSummary s;
  s.examples = examples_;
  s.puzzles = static_cast<int64_t>(puzzle_identifiers_.size());
  s.groups = static_cast<int64_t>(group_indices_.size()) - 1;
  npy::write(dir_ + "/all__puzzle_identifiers.npy", {s.puzzles}, puzzle_identifiers_);
  npy::write(dir_ + "/all__puzzle_indices.npy", {s.puzzles + 1}, puzzle_indices_);
  npy::write(dir_ + "/all__group_indices.npy", {s.groups + 1}, group_indices_);
  inputs_->finish();
  labels_->finish();
  // Field order as upstream's PuzzleDatasetMetadata.
  nlohmann::ordered_json meta;
  meta["pad_id"] = 0;
  meta["ignore_label_id"] = 0;
  meta["blank_identifier_id"] = 0;
  meta["vocab_size"] = vocab_size;
  meta["seq_len"] = seq_len_;
  meta["num_puzzle_identifiers"] = num_puzzle_identifiers;
  meta["total_groups"] = s.groups;
  meta["mean_puzzle_examples"] = s.puzzles ? static_cast<double>(s.examples) / static_cast<double>(s.puzzles) : 0.0;
  meta["sets"] = nlohmann::ordered_json::array({"all"});
  write_file_atomically(dir_ + "/dataset.json", meta.dump());
  return s;
}

}  // namespace detail
}  // namespace hrmclara::puzzles
