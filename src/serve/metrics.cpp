// Prometheus text exposition (format 0.0.4) of the server's metrics; see metrics.h.
#include "serve/metrics.h"

#include <cmath>
#include <cstdio>

namespace hrmclara::serve {

namespace {

const std::vector<double> kLatencyBounds = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
const std::vector<double> kBatchBounds = {1, 2, 4, 8, 16, 32, 64, 128, 256};

std::string number(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

std::string join_labels(const std::string& a, const std::string& b) {
  if (a.empty()) return b;
  if (b.empty()) return a;
  return a + "," + b;
}

}  // namespace

std::string prometheus_label(const std::string& value) {
  std::string out;
  for (const char c : value) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double value) {
  size_t i = 0;
  while (i < bounds_.size() && value > bounds_[i]) ++i;
  ++counts_[i];
  ++count_;
  sum_ += value;
}

void Histogram::render(std::string& out, const std::string& name, const std::string& labels) const {
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += counts_[i];
    const std::string le = i < bounds_.size() ? number(bounds_[i]) : "+Inf";
    out += name + "_bucket{" + join_labels(labels, "le=\"" + le + "\"") + "} " + std::to_string(cumulative) + "\n";
  }
  const std::string braces = labels.empty() ? "" : "{" + labels + "}";
  out += name + "_sum" + braces + " " + number(sum_) + "\n";
  out += name + "_count" + braces + " " + std::to_string(count_) + "\n";
}

void Metrics::request(const std::string& endpoint, int status, double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++requests_[{endpoint, status}];
  if (status >= 400) ++errors_[endpoint];
  auto it = latency_.find(endpoint);
  if (it == latency_.end()) it = latency_.emplace(endpoint, Histogram(kLatencyBounds)).first;
  it->second.observe(seconds);
}

void Metrics::batch(const std::string& model, int64_t size) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = batch_.find(model);
  if (it == batch_.end()) it = batch_.emplace(model, Histogram(kBatchBounds)).first;
  it->second.observe(static_cast<double>(size));
}

void Metrics::queue_depth(const std::string& model, int64_t depth) {
  std::lock_guard<std::mutex> lock(mutex_);
  queue_depth_[model] = depth;
}

void Metrics::in_flight(const std::string& model, int64_t delta) {
  std::lock_guard<std::mutex> lock(mutex_);
  in_flight_[model] += delta;
}

uint64_t Metrics::requests(const std::string& endpoint, int status) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = requests_.find({endpoint, status});
  return it == requests_.end() ? 0 : it->second;
}

double Metrics::mean_batch(const std::string& model) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = batch_.find(model);
  return it == batch_.end() || it->second.count() == 0 ? 0.0 : it->second.sum() / static_cast<double>(it->second.count());
}

std::string Metrics::render() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::string out;
  out += "# HELP hrmclara_requests_total HTTP requests by endpoint and status.\n# TYPE hrmclara_requests_total counter\n";
  for (const auto& [key, n] : requests_)
    out += "hrmclara_requests_total{endpoint=\"" + prometheus_label(key.first) + "\",status=\"" + std::to_string(key.second) +
           "\"} " + std::to_string(n) + "\n";
  out += "# HELP hrmclara_errors_total Requests answered with a 4xx or 5xx status.\n# TYPE hrmclara_errors_total counter\n";
  for (const auto& [endpoint, n] : errors_)
    out += "hrmclara_errors_total{endpoint=\"" + prometheus_label(endpoint) + "\"} " + std::to_string(n) + "\n";
  out += "# HELP hrmclara_request_seconds Request latency, from the request read to the reply (streams: to the last event).\n"
         "# TYPE hrmclara_request_seconds histogram\n";
  for (const auto& [endpoint, h] : latency_)
    h.render(out, "hrmclara_request_seconds", "endpoint=\"" + prometheus_label(endpoint) + "\"");
  out += "# HELP hrmclara_batch_size Requests per model step (HRM: per ACT step of the continuous batch).\n"
         "# TYPE hrmclara_batch_size histogram\n";
  for (const auto& [model, h] : batch_) h.render(out, "hrmclara_batch_size", "model=\"" + prometheus_label(model) + "\"");
  out += "# HELP hrmclara_queue_depth Requests waiting for a model's worker.\n# TYPE hrmclara_queue_depth gauge\n";
  for (const auto& [model, n] : queue_depth_)
    out += "hrmclara_queue_depth{model=\"" + prometheus_label(model) + "\"} " + std::to_string(n) + "\n";
  out += "# HELP hrmclara_in_flight Requests of a model being answered.\n# TYPE hrmclara_in_flight gauge\n";
  for (const auto& [model, n] : in_flight_)
    out += "hrmclara_in_flight{model=\"" + prometheus_label(model) + "\"} " + std::to_string(n) + "\n";
  return out;
}

}  // namespace hrmclara::serve
