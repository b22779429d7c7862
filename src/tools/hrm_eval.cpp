// hrm_eval: evaluates an HRM checkpoint (ours or upstream's step_N) on a puzzle test split. The
// last stdout line is one JSON object: exact_accuracy, accuracy, mean_steps, count (and pass@1,
// pass@2 for ARC, with augmented predictions voted back onto their tasks).
#include <hrmclara/cli.h>
#include <hrmclara/config.h>
#include <hrmclara/device.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/hrm_train.h>
#include <hrmclara/log.h>
#include <hrmclara/arc_score.h>
#include <hrmclara/tensor_io.h>
#include <hrmclara/trainer.h>

#include <torch/torch.h>

#include <chrono>
#include <iostream>

using namespace hrmclara;

namespace {

// What a checkpoint's directory says about its run: our config.json (data_path, batch sizes) or
// upstream's all_config.yaml (data_path); read once.
struct RunRecord {
  std::string data_path;
  int64_t eval_batch_size = 0;
};

RunRecord read_run_record(const std::string& checkpoint) {
  const std::string dir = containing_directory(checkpoint);
  RunRecord r;
  Json c;
  if (file_exists(dir + "/config.json")) {
    c = read_json_file(dir + "/config.json");
    const int64_t e = c.value("eval_batch_size", int64_t{0}), g = c.value("global_batch_size", int64_t{0});
    r.eval_batch_size = e > 0 ? e : g;
  } else if (file_exists(dir + "/all_config.yaml")) {
    c = read_yaml_file(dir + "/all_config.yaml");
  }
  if (c.contains("data_path") && c["data_path"].is_string()) r.data_path = c["data_path"];
  return r;
}


// pass@1 and pass@2 of ARC predictions (one row per example of `split`, in file order): each
// augmented prediction is mapped back onto its task and the candidates voted (arc_eval.ipynb).
void add_arc_scores(Json& line, const puzzles::PuzzleDataset& dataset, const std::string& split, const torch::Tensor& predictions,
                    const torch::Tensor& q_halt_logits) {
  const std::string data_dir = parent_directory(split);
  const auto names = puzzles::load_identifiers(data_dir + "/identifiers.json");
  puzzles::ArcScorer scorer;
  scorer.set_all_labels(puzzles::load_arc_test_labels(data_dir));
  const auto preds = predictions.to(torch::kInt).contiguous();
  const auto q = q_halt_logits.to(torch::kDouble).contiguous();
  const int64_t n = preds.size(0);
  for (const auto& set : dataset.sets())
    for (size_t p = 0; p + 1 < set.puzzle_indices.size(); ++p)
      for (int64_t e = set.puzzle_indices[p]; e < set.puzzle_indices[p + 1]; ++e) {
        const int64_t row = set.first_example + e;
        if (row >= n) break;
        const int32_t id = dataset.example_identifiers()[static_cast<size_t>(row)];
        if (id == dataset.metadata().blank_identifier_id || id >= static_cast<int32_t>(names.size())) continue;
        scorer.add(names[static_cast<size_t>(id)], static_cast<int>(e - set.puzzle_indices[p]),
                   preds.data_ptr<int32_t>() + row * preds.size(1), q.data_ptr<double>()[row]);
      }
  const auto score = scorer.score({1, 2});
  line["pass@1"] = score.pass_at(1);
  line["pass@2"] = score.pass_at(2);
  line["arc_puzzles"] = score.puzzles;
}

// Scores saved predictions (hrm_eval --out, or any safetensors with int predictions [N, S] and
// q_halt_logits [N], one row per example of the split in file order) without running a model:
// exact_accuracy and accuracy against the split's labels, count.
Json score_saved_predictions(const std::string& path, const puzzles::PuzzleDataset& dataset) {
  std::map<std::string, torch::Tensor> t;
  for (auto& [k, v] : read_safetensors(path)) t[k] = v;
  if (!t.count("predictions")) throw FormatError(path + ": missing tensor 'predictions'");
  const auto& preds = t["predictions"];
  const int64_t S = dataset.metadata().seq_len, N = dataset.num_examples();
  if (!c10::isIntegralType(preds.scalar_type(), false)) throw FormatError(path + ": 'predictions' must be an integer tensor");
  if (preds.dim() != 2 || preds.size(1) != S || preds.size(0) < 1 || preds.size(0) > N)
    throw ShapeError(path + ": 'predictions' must be [N, " + std::to_string(S) + "] with 1 <= N <= " + std::to_string(N) +
                     " (the split's examples), got " + shape_text(preds.sizes()));
  if (t.count("q_halt_logits") && (t["q_halt_logits"].dim() != 1 || t["q_halt_logits"].size(0) != preds.size(0)))
    throw ShapeError(path + ": 'q_halt_logits' must be [" + std::to_string(preds.size(0)) + "]");
  const int64_t n = preds.size(0);
  double exact = 0, accuracy = 0;
  const int64_t chunk = 1024;
  for (int64_t start = 0; start < n; start += chunk) {
    std::vector<int64_t> ids;
    for (int64_t i = start; i < std::min(n, start + chunk); ++i) ids.push_back(i);
    const auto labels = dataset.gather(ids, static_cast<int64_t>(ids.size())).labels;
    const auto p = preds.narrow(0, start, static_cast<int64_t>(ids.size())).to(torch::kInt);
    const auto mask = labels != puzzles::kIgnoreLabel;
    const auto counts = mask.sum(-1);
    const auto correct = (mask & (p == labels)).sum(-1);
    exact += (correct == counts).sum().item<double>();
    accuracy += (correct.to(torch::kDouble) / counts.clamp_min(1).to(torch::kDouble)).sum().item<double>();
  }
  return Json{{"exact_accuracy", exact / static_cast<double>(n)},
              {"accuracy", accuracy / static_cast<double>(n)},
              {"count", n}};
}

}  // namespace

int main(int argc, char** argv) {
  return run_main("hrm_eval", [&] {
    ArgParser args("hrm_eval",
                   "--checkpoint PATH [--data DIR] [--out PREDS.safetensors] [--batch-size N] [--device D] [--dtype D]\n"
                   "       hrm_eval --predictions PREDS.safetensors --data DIR");
    args.option("checkpoint", "our checkpoint directory, a run directory (its newest checkpoint), or upstream's step_N")
        .option("data", "dataset directory (its test/ split is used) or a split directory; default: the data the checkpoint trained on")
        .option("out", "write per-example predictions (inputs, labels, puzzle_identifiers, predictions, q_halt_logits)")
        .option("batch-size", "examples per forward pass (default: the run's eval batch size)", "0")
        .option("max-examples", "evaluate only the first N examples", "0")
        .option("dataset-json", "dataset.json for an upstream checkpoint whose data is elsewhere")
        .option("dtype", std::string(kDtypeChoices) + "; auto: the checkpoint's forward_dtype where the device runs it natively, else float32", "auto")
        .option("predictions", "score saved predictions (a --out file: int predictions [N,S], q_halt_logits [N]) instead of a checkpoint")
        .common_options();
    if (!args.parse(argc, argv, 0)) return 0;
    auto split_of = [](const std::string& data) { return file_exists(data + "/dataset.json") ? data : data + "/test"; };
    auto is_arc = [](const std::string& split, const puzzles::PuzzleDataset& d) {
      return file_exists(parent_directory(split) + "/identifiers.json") && d.metadata().vocab_size == 12 &&
             d.metadata().seq_len == 900;
    };
    if (args.has("predictions")) {
      if (args.has("checkpoint")) throw UsageError("give --checkpoint or --predictions, not both");
      const std::string split = split_of(args.require("data"));
      const puzzles::PuzzleDataset dataset(split);
      Json line = score_saved_predictions(args.get("predictions"), dataset);
      if (is_arc(split, dataset)) {
        std::map<std::string, torch::Tensor> t;
        for (auto& [k, v] : read_safetensors(args.get("predictions"))) t[k] = v;
        const auto q = t.count("q_halt_logits") ? t["q_halt_logits"] : torch::zeros({t["predictions"].size(0)});
        add_arc_scores(line, dataset, split, t["predictions"], q);
      }
      std::cout << line.dump() << std::endl;
      return 0;
    }
    configure_threads(static_cast<int>(args.get_int("threads")));
    const auto device = resolve_device(args.get("device"));

    std::string checkpoint = args.require("checkpoint");
    if (is_directory(checkpoint) && is_directory(checkpoint + "/checkpoints")) {
      const std::string latest = latest_checkpoint(checkpoint);
      if (latest.empty()) throw IoError(checkpoint + ": run directory without a checkpoint");
      checkpoint = latest;
    }
    if (!file_exists(checkpoint)) throw IoError(checkpoint + ": no such checkpoint");

    const RunRecord run = read_run_record(checkpoint);
    std::string data = args.get("data");
    if (data.empty()) {
      data = run.data_path;
      if (data.empty()) throw UsageError("the checkpoint does not say which data it was trained on: pass --data DIR");
    }
    const std::string split = split_of(data);
    const puzzles::PuzzleDataset dataset(split);

    int64_t batch = args.get_int("batch-size");
    if (batch <= 0) batch = run.eval_batch_size > 0 ? run.eval_batch_size : 256;
    // The model's data fields come from the checkpoint's own record: our config.json, or for upstream
    // the dataset.json beside the checkpoint or under its data_path; the evaluated data's own
    // train/dataset.json only when neither exists.
    hrm::HrmConfig config;
    try {
      config = hrm::checkpoint_config(checkpoint, args.get("dataset-json"), batch);
    } catch (const IoError&) {
      const std::string train_meta = parent_directory(split) + "/train/dataset.json";
      if (!args.get("dataset-json").empty() || !file_exists(train_meta)) throw;
      config = hrm::checkpoint_config(checkpoint, train_meta, batch);
    }
    config.forward_dtype = hrm::resolve_forward_dtype(args.get("dtype"), device, config.forward_dtype);
    auto model = hrm::make_puzzle_model(config);
    hrm::load_hrm_weights(*model, checkpoint);
    model->to(device);

    const auto t0 = std::chrono::steady_clock::now();
    const bool arc = is_arc(split, dataset);
    auto result = hrm::evaluate_model(*model, dataset, batch, args.get_int("max-examples"), args.has("out") || arc);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    log_info("evaluated " + std::to_string(static_cast<int64_t>(result.metrics["count"])) + " examples of " + split + " in " +
             std::to_string(seconds) + " s");

    Json line{{"exact_accuracy", result.metrics["exact_accuracy"]},
              {"accuracy", result.metrics["accuracy"]},
              {"mean_steps", result.metrics["mean_steps"]},
              {"count", static_cast<int64_t>(result.metrics["count"])},
              {"q_halt_accuracy", result.metrics["q_halt_accuracy"]},
              {"lm_loss", result.metrics["lm_loss"]}};
    if (arc) add_arc_scores(line, dataset, split, result.predictions, result.q_halt_logits);
    if (args.has("out")) {
      write_safetensors(args.get("out"), {{"inputs", result.inputs},
                                          {"labels", result.labels},
                                          {"puzzle_identifiers", result.puzzle_identifiers},
                                          {"predictions", result.predictions},
                                          {"q_halt_logits", result.q_halt_logits}});
    }
    std::cout << line.dump() << std::endl;
    return 0;
  });
}
