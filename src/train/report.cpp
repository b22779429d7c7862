// Summary table and SVG curves from metrics.jsonl (see report.h).
#include <hrmclara/config.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/report.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>

namespace hrmclara {

namespace {

std::string num(double v, int precision = 4) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*g", precision, v);
  return buf;
}

std::string escape_xml(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '&') out += "&amp;";
    else out += c;
  }
  return out;
}

// About `count` round tick values covering [lo, hi].
std::vector<double> nice_ticks(double lo, double hi, int count) {
  std::vector<double> ticks;
  if (!(hi > lo)) return {lo};
  const double raw = (hi - lo) / count;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  for (double t = std::ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push_back(std::abs(t) < step * 1e-9 ? 0 : t);
  return ticks;
}

const char* kColours[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"};

}  // namespace

std::vector<Series> read_metric_series(const std::string& metrics_jsonl) {
  std::map<std::string, Series> by_name;
  std::vector<std::string> order;
  std::istringstream lines(read_file(metrics_jsonl));
  std::string line;
  int line_no = 0;
  while (std::getline(lines, line)) {
    ++line_no;
    if (line.empty()) continue;
    Json rec;
    try {
      rec = Json::parse(line);
    } catch (const std::exception& e) {
      throw FormatError(metrics_jsonl + ":" + std::to_string(line_no) + ": not a JSON object");
    }
    if (!rec.is_object() || !rec.contains("step") || !rec["step"].is_number())
      throw FormatError(metrics_jsonl + ":" + std::to_string(line_no) + ": record without a numeric 'step'");
    const double step = rec["step"].get<double>();
    for (const auto& [k, v] : rec.items()) {
      if (k == "step" || !v.is_number()) continue;
      if (!by_name.count(k)) {
        order.push_back(k);
        by_name[k].name = k;
      }
      by_name[k].x.push_back(step);
      by_name[k].y.push_back(v.get<double>());
    }
  }
  std::vector<Series> out;
  for (const auto& k : order) out.push_back(by_name[k]);
  return out;
}

void write_svg_plot(const std::string& path, const std::vector<Panel>& panels, const std::string& x_label) {
  const double W = 640, H = 300, left = 70, right = 170, top = 34, bottom = 44;
  std::ostringstream svg;
  const double total_h = H * std::max<size_t>(1, panels.size());
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << total_h
      << "\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  for (size_t pi = 0; pi < panels.size(); ++pi) {
    const Panel& p = panels[pi];
    const double y0 = H * static_cast<double>(pi);
    const double pw = W - left - right, ph = H - top - bottom;
    double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
    auto ty = [&](double v) { return p.log_y ? std::log10(std::max(v, 1e-12)) : v; };
    for (const auto& s : p.series)
      for (size_t i = 0; i < s.x.size(); ++i) {
        if (!std::isfinite(s.y[i])) continue;
        xmin = std::min(xmin, s.x[i]);
        xmax = std::max(xmax, s.x[i]);
        ymin = std::min(ymin, ty(s.y[i]));
        ymax = std::max(ymax, ty(s.y[i]));
      }
    svg << "<text x=\"" << left << "\" y=\"" << y0 + 20 << "\" font-size=\"13\" font-weight=\"bold\">" << escape_xml(p.title)
        << "</text>\n";
    if (!std::isfinite(xmin)) {
      svg << "<text x=\"" << left << "\" y=\"" << y0 + H / 2 << "\">no data</text>\n";
      continue;
    }
    if (xmax == xmin) xmax = xmin + 1;
    if (ymax == ymin) {
      ymax += 0.5;
      ymin -= 0.5;
    }
    const double pad = (ymax - ymin) * 0.05;
    ymin -= pad;
    ymax += pad;
    auto sx = [&](double x) { return left + (x - xmin) / (xmax - xmin) * pw; };
    auto sy = [&](double y) { return y0 + top + (1.0 - (y - ymin) / (ymax - ymin)) * ph; };
    svg << "<rect x=\"" << left << "\" y=\"" << y0 + top << "\" width=\"" << pw << "\" height=\"" << ph
        << "\" fill=\"none\" stroke=\"#444\"/>\n";
    for (double t : nice_ticks(xmin, xmax, 6))
      svg << "<line x1=\"" << sx(t) << "\" x2=\"" << sx(t) << "\" y1=\"" << y0 + top + ph << "\" y2=\"" << y0 + top + ph + 4
          << "\" stroke=\"#444\"/><text x=\"" << sx(t) << "\" y=\"" << y0 + top + ph + 16 << "\" text-anchor=\"middle\">"
          << num(t) << "</text>\n";
    for (double t : nice_ticks(ymin, ymax, 5))
      svg << "<line x1=\"" << left << "\" x2=\"" << left + pw << "\" y1=\"" << sy(t) << "\" y2=\"" << sy(t)
          << "\" stroke=\"#ddd\"/><text x=\"" << left - 6 << "\" y=\"" << sy(t) + 4 << "\" text-anchor=\"end\">"
          << num(p.log_y ? std::pow(10.0, t) : t, 3) << "</text>\n";
    svg << "<text x=\"" << left + pw / 2 << "\" y=\"" << y0 + H - 8 << "\" text-anchor=\"middle\">" << escape_xml(x_label)
        << "</text>\n";
    for (size_t si = 0; si < p.series.size(); ++si) {
      const Series& s = p.series[si];
      const char* colour = kColours[si % (sizeof kColours / sizeof *kColours)];
      svg << "<polyline fill=\"none\" stroke=\"" << colour << "\" stroke-width=\"1.5\" points=\"";
      for (size_t i = 0; i < s.x.size(); ++i)
        if (std::isfinite(s.y[i])) svg << sx(s.x[i]) << "," << sy(ty(s.y[i])) << " ";
      svg << "\"/>\n";
      if (s.x.size() == 1) svg << "<circle cx=\"" << sx(s.x[0]) << "\" cy=\"" << sy(ty(s.y[0])) << "\" r=\"3\" fill=\"" << colour << "\"/>\n";
      const double ly = y0 + top + 14 + 16 * static_cast<double>(si);
      svg << "<line x1=\"" << left + pw + 10 << "\" x2=\"" << left + pw + 28 << "\" y1=\"" << ly - 4 << "\" y2=\"" << ly - 4
          << "\" stroke=\"" << colour << "\" stroke-width=\"2\"/><text x=\"" << left + pw + 32 << "\" y=\"" << ly << "\">"
          << escape_xml(s.name) << "</text>\n";
    }
  }
  svg << "</svg>\n";
  write_file_atomically(path, svg.str());
}

void write_training_plot(const std::string& metrics_jsonl, const std::string& svg_path) {
  Panel losses{"loss", {}, true}, accuracy{"accuracy", {}, false};
  for (const auto& s : read_metric_series(metrics_jsonl)) {
    if (s.name == "train/loss" || s.name == "train/lm_loss" || s.name == "eval/lm_loss") losses.series.push_back(s);
    if (s.name == "train/accuracy" || s.name == "train/exact_accuracy" || s.name == "eval/accuracy" ||
        s.name == "eval/exact_accuracy")
      accuracy.series.push_back(s);
  }
  write_svg_plot(svg_path, {losses, accuracy}, "step");
}

std::string summary_table(const std::vector<Series>& series, const std::vector<std::string>& keys) {
  std::ostringstream out;
  char buf[200];
  std::snprintf(buf, sizeof buf, "%-26s %12s %12s %12s %12s\n", "metric", "first", "last", "min", "max");
  out << buf;
  // Rows in the order of `keys` (the caller's headline first), or the series' order without keys.
  std::vector<const Series*> rows;
  if (keys.empty()) {
    for (const auto& s : series) rows.push_back(&s);
  } else {
    for (const auto& k : keys)
      for (const auto& s : series)
        if (s.name == k) rows.push_back(&s);
  }
  for (const Series* row : rows) {
    const Series& s = *row;
    if (s.y.empty()) continue;
    const auto [lo, hi] = std::minmax_element(s.y.begin(), s.y.end());
    std::snprintf(buf, sizeof buf, "%-26s %12.5g %12.5g %12.5g %12.5g\n", s.name.c_str(), s.y.front(), s.y.back(), *lo, *hi);
    out << buf;
  }
  return out.str();
}

}  // namespace hrmclara
