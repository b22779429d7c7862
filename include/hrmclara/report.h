// End-of-run reports from RUNDIR/metrics.jsonl: a summary table for the terminal and an SVG plot
// of the curves (no plotting library needed to read it: any browser shows it).
#pragma once

#include <string>
#include <vector>

namespace hrmclara {

struct Series {
  std::string name;
  std::vector<double> x, y;
};

// Every numeric key of the JSONL records with a "step", as series over step. Throws FormatError
// naming the file and line for a malformed record.
std::vector<Series> read_metric_series(const std::string& metrics_jsonl);

// Writes an SVG with one panel per group of series (e.g. losses, accuracies), atomically.
// Each panel: axes with ticks, a polyline per series, a legend.
struct Panel {
  std::string title;
  std::vector<Series> series;
  bool log_y = false;
};
void write_svg_plot(const std::string& path, const std::vector<Panel>& panels, const std::string& x_label);

// The standard training report: losses (train/loss, train/lm_loss, eval/lm_loss...) and
// accuracies (train/eval accuracy and exact_accuracy) from metrics.jsonl.
void write_training_plot(const std::string& metrics_jsonl, const std::string& svg_path);

// A fixed-width table: the last, best and first value of every series whose name is in `keys`
// (all series when empty).
std::string summary_table(const std::vector<Series>& series, const std::vector<std::string>& keys = {});

}  // namespace hrmclara
