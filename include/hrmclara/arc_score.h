// ARC encoding, decoding and scoring (sapientinc/HRM build_arc_dataset.py and arc_eval.ipynb),
// torch-free.
//
// How the test split relates to puzzles (build_arc_dataset.py, see puzzle_build.h): only tasks of
// an "evaluation" set contribute to it. Each such task gives one group: the original puzzle named
// "<id>" and its augmentations "<id>_t<t>_<map>", each puzzle holding the task's test pairs in the
// task's order (the same transform applied to every pair). So the row at position k within any
// puzzle of the group is test input k of task <id>, seen through that puzzle's transform, and the
// identifier (through identifiers.json) names the transform. Scoring therefore keys every
// prediction by (task id, k): decode the predicted 30x30 sequence, undo the transform, vote.
//
// Typical use after an evaluation over <data>/test:
//   ArcScorer scorer;
//   scorer.set_all_labels(load_arc_test_labels(data_dir));
//   for each row i (identifier id != 0) of puzzle p:
//     scorer.add(identifiers[id], i - puzzle_indices[p], argmax_tokens_of_row_i, q_halt_logit_i);
//   ArcScore s = scorer.score({1, 2});   // s.pass_at(2) is the ARC metric
#pragma once

#include <hrmclara/puzzle_build.h>

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

namespace hrmclara::puzzles {

constexpr int kArcGridSize = 30;  // sequences are 30 x 30 = 900 tokens
constexpr int kArcPad = 0, kArcEos = 1, kArcColourOffset = 2;

// ---- identifier names ------------------------------------------------------------------------

struct ArcIdentifier {
  std::string puzzle_id;                                        // the task's name
  bool augmented = false;
  int dihedral = 0;                                             // t in 0..7
  std::array<uint8_t, 10> colour_map{0, 1, 2, 3, 4, 5, 6, 7, 8, 9};  // augmented colour = map[original]
};

// "<id>_t<t>_<d0..d9>" (t in 0..7, d a permutation of 0..9) -> augmented; any other name (e.g.
// "007bbfb7") -> not augmented, puzzle_id = the whole name. Only that exact suffix counts, so task
// names may contain '_' (upstream's notebook splits on the first '_' instead).
ArcIdentifier parse_arc_identifier(const std::string& name);
// The inverse of parse_arc_identifier: "<id>" or "<id>_t<t>_<10 digits>".
std::string arc_identifier_name(const ArcIdentifier& id);

// The transform a builder applies: colour map, then dihedral.
Grid arc_apply_augmentation(const ArcIdentifier& id, const Grid& original);
// Its inverse (arc_eval.ipynb inverse_aug): inverse dihedral, then inverse colour map.
Grid arc_invert_augmentation(const ArcIdentifier& id, const Grid& augmented);

// ---- sequences -------------------------------------------------------------------------------

// Writes `grid` (colours 0..9, at most 30x30) into the 900-token sequence `seq`: colour + 2 at
// rows [pad_r, pad_r + rows) x columns [pad_c, pad_c + cols), EOS on row pad_r + rows over the
// grid's columns and on column pad_c + cols over the grid's rows (each only when inside 30x30),
// PAD elsewhere. Throws UsageError if the grid does not fit at that offset.
void arc_encode_grid(const Grid& grid, int pad_r, int pad_c, uint8_t* seq);

// arc_eval.ipynb crop(): the largest-area top-left rectangle whose cells are all colour tokens
// (2..11), scanning rows downwards with a column limit that only shrinks; returns it minus 2
// (0x0 when the top-left token is not a colour). T is any integer token type.
template <typename T>
Grid arc_decode_sequence(const T* seq) {
  int best_area = 0, best_r = 0, best_c = 0, num_c = kArcGridSize;
  for (int r = 1; r <= kArcGridSize; ++r) {
    for (int c = 1; c <= num_c; ++c) {
      const T x = seq[(r - 1) * kArcGridSize + (c - 1)];
      if (x < 2 || x > 11) {
        num_c = c - 1;
        break;
      }
    }
    if (r * num_c > best_area) {
      best_area = r * num_c;
      best_r = r;
      best_c = num_c;
    }
  }
  Grid g(best_r, best_c);
  for (int r = 0; r < best_r; ++r)
    for (int c = 0; c < best_c; ++c) g.at(r, c) = static_cast<uint8_t>(seq[r * kArcGridSize + c] - 2);
  return g;
}

// ---- scoring ---------------------------------------------------------------------------------

struct ArcScore {
  std::vector<int> ks;                 // as asked, e.g. {1, 2}
  std::vector<int64_t> puzzles_correct;  // per K: puzzles whose every test input is in the top K
  int64_t puzzles = 0;                 // puzzles with labels (the denominator)
  int64_t test_inputs = 0;             // test inputs with labels
  std::vector<int64_t> test_inputs_correct;  // per K
  int64_t predictions = 0;             // predictions added and used
  int64_t unmatched_predictions = 0;   // added for a puzzle / test index without a label (ignored)
  // Fraction of puzzles solved at K (0 when there are none); throws UsageError for a K not scored.
  double pass_at(int k) const;
};

// arc_eval.ipynb's vote. Each prediction is mapped back to the original task's frame; identical
// grids are pooled per (task, test input); candidates rank by (votes, mean sigmoid(q_halt logit))
// descending, ties keeping first-seen order (Python's stable sort); a test input is right at K when
// its label is among the top K; a puzzle counts at K only when all its test inputs are right.
class ArcScorer {
 public:
  // The true output grids of task `puzzle_id`'s test inputs, in order (replaces earlier ones).
  void set_labels(const std::string& puzzle_id, std::vector<Grid> outputs);
  void set_all_labels(const std::map<std::string, std::vector<Grid>>& labels);

  // One prediction. `identifier_name`: the name of the row's puzzle identifier; `test_index`: the
  // row's position within its puzzle; `predicted`: the 900 predicted tokens (argmax of the logits);
  // `q_halt_logit`: the row's final q_halt logit.
  template <typename T>
  void add(const std::string& identifier_name, int test_index, const T* predicted, double q_halt_logit) {
    add_grid(identifier_name, test_index, arc_decode_sequence(predicted), q_halt_logit);
  }
  // The same with the prediction already decoded (still in the augmented frame).
  void add_grid(const std::string& identifier_name, int test_index, const Grid& predicted, double q_halt_logit);

  ArcScore score(const std::vector<int>& ks = {1, 2}) const;

  // The ranked distinct candidates (original frame) for one test input, best first, at most k.
  std::vector<Grid> top_predictions(const std::string& puzzle_id, int test_index, int k) const;

 private:
  struct Candidate {
    Grid grid;
    int64_t votes = 0;
    double q_sum = 0;
  };
  std::vector<Candidate> ranked(const std::string& puzzle_id, int test_index) const;
  std::map<std::string, std::vector<Grid>> labels_;
  std::map<std::pair<std::string, int>, std::vector<Candidate>> candidates_;  // first-seen order
  std::map<std::pair<std::string, int>, std::unordered_map<std::string, size_t>> index_;  // grid bytes -> position
  int64_t unmatched_ = 0, used_ = 0;
};

// Labels from a dataset built by build_arc_dataset: reads <data_dir>/identifiers.json and
// <data_dir>/test/all__{labels,puzzle_identifiers,puzzle_indices}.npy and decodes, for every
// un-augmented puzzle, its label rows in order (the test split has no translation, so decoding is
// exact). Throws IoError / FormatError naming the file.
std::map<std::string, std::vector<Grid>> load_arc_test_labels(const std::string& data_dir);

// identifiers.json as a vector (index = identifier id). Throws IoError / FormatError naming it.
std::vector<std::string> load_identifiers(const std::string& path);

}  // namespace hrmclara::puzzles
