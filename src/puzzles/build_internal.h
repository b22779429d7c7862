// Pieces the puzzle builders share (not installed): a CSV reader and the split writer.
#pragma once

#include <hrmclara/npy.h>
#include <hrmclara/puzzle_build.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace hrmclara::puzzles::detail {

// A character for an error message: 'c' when printable, else \xNN.
std::string describe_char(char c);

// One CSV record and where it came from.
struct CsvRow {
  std::vector<std::string> fields;
  int64_t line = 0;  // 1-based line number in `file`
  const std::string* file = nullptr;
  std::string where() const { return *file + ":" + std::to_string(line); }
};

// Reads a CSV file (RFC 4180 quoting within one line, "\n" or "\r\n" line ends), skipping the first
// (header) line and empty lines; calls `on_row` for each record. Throws IoError if the file cannot
// be read and FormatError "file:line: ..." for an unterminated quote or a row with a number of
// fields other than `fields`. Also refuses an empty file (no header).
void read_csv(const std::string& path, size_t fields, const std::function<void(const CsvRow&)>& on_row);

// Writes one split directory (<dir>/dataset.json and all__*.npy), streaming the example rows.
class SplitWriter {
 public:
  SplitWriter(const std::string& dir, int64_t seq_len);
  void add_example(const uint8_t* input, const uint8_t* label);
  // Closes the current puzzle (at least one example since the previous one).
  void end_puzzle(int32_t identifier);
  // Closes the current group (at least one puzzle since the previous one).
  void end_group();
  // Writes the index arrays and dataset.json and renames the row files into place.
  SplitSummary finish(int64_t vocab_size, int64_t num_puzzle_identifiers);

 private:
  std::string dir_;
  int64_t seq_len_;
  std::unique_ptr<npy::StreamWriter> inputs_, labels_;
  std::vector<int32_t> puzzle_identifiers_, puzzle_indices_{0}, group_indices_{0};
  int64_t examples_ = 0;
};

// <out>/identifiers.json.
void write_identifiers(const std::string& out_dir, const std::vector<std::string>& names);

// Parses a non-negative decimal integer field; FormatError "<where>: <what> '<text>' is not an integer".
int64_t parse_int_field(const std::string& text, const std::string& where, const std::string& what);

}  // namespace hrmclara::puzzles::detail
