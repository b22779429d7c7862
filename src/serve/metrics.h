// The server's counters and histograms, rendered in Prometheus' text format (GET /metrics).
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace hrmclara::serve {

// A cumulative histogram with fixed upper bounds (Prometheus' "le" buckets; +Inf is implied).
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds = {});
  void observe(double value);
  // name{labels,le="..."} lines plus _sum and _count; `labels` is "" or `key="value",...`.
  void render(std::string& out, const std::string& name, const std::string& labels) const;
  uint64_t count() const { return count_; }
  double sum() const { return sum_; }

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket (not cumulative), the last one is +Inf
  uint64_t count_ = 0;
  double sum_ = 0.0;
};

class Metrics {
 public:
  void request(const std::string& endpoint, int status, double seconds);
  void batch(const std::string& model, int64_t size);
  void queue_depth(const std::string& model, int64_t depth);
  void in_flight(const std::string& model, int64_t delta);
  std::string render() const;

  // For tests and the closing figures: requests seen with this endpoint and status.
  uint64_t requests(const std::string& endpoint, int status) const;
  // Mean batch size a model's steps ran with (0 when none ran).
  double mean_batch(const std::string& model) const;

 private:
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  std::map<std::string, uint64_t> errors_;
  std::map<std::string, Histogram> latency_;
  std::map<std::string, Histogram> batch_;
  std::map<std::string, int64_t> queue_depth_, in_flight_;
};

// Escapes a label value (backslash, double quote, newline) for the text format.
std::string prometheus_label(const std::string& value);

}  // namespace hrmclara::serve
