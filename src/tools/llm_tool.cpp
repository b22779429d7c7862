// llm_tool: the decoder LLM from the command line (the contract external checks use).
//   llm_tool tokenize --model DIR [--add-special-tokens T1,T2,...] --text TEXT
//   llm_tool forward  --model DIR --in IN.safetensors --out OUT.safetensors [--dtype D]
//   llm_tool generate --model DIR (--in IN.safetensors --out OUT.safetensors | --prompt TEXT) ...
//   llm_tool info     --model DIR
#include <hrmclara/cli.h>
#include <hrmclara/config.h>
#include <hrmclara/device.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/llm.h>
#include <hrmclara/llm_tokenizer.h>
#include <hrmclara/log.h>
#include <hrmclara/lora.h>
#include <hrmclara/tensor_io.h>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <nlohmann/json.hpp>

#include <iostream>
#include <algorithm>
#include <map>
#include <numeric>
#include <optional>

using namespace hrmclara;

namespace {

const char* kUsage =
    "llm_tool COMMAND [options]\n"
    "  tokenize --model DIR [--add-special-tokens T1,T2,...] [--bos] --text TEXT\n"
    "  forward  --model DIR --in IN.safetensors --out OUT.safetensors [--dtype auto|float32|bfloat16|float16]\n"
    "           [--all-hidden] [--adapter DIR [--merge-adapter]] [--device D]\n"
    "  generate --model DIR (--in IN.safetensors --out OUT.safetensors | --prompt TEXT [--chat] [--system S])\n"
    "           [--max-new-tokens N] [--greedy | --sample] [--temperature T] [--top-k K] [--top-p P] [--seed S]\n"
    "           [--ignore-eos] [--no-cache] [--dtype D] [--device D] [--add-special-tokens T1,...]\n"
    "  info     --model DIR\n"
    "  init     --config config.json --tokenizer DIR --out DIR [--dtype D] [--seed S]   (random weights)\n"
    "Run `llm_tool COMMAND --help` for a command's options.";

std::vector<std::string> split_commas(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t end = text.find(',', start);
    const std::string item = text.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (!item.empty()) out.push_back(item);
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

LlmTokenizer load_tokenizer(const ArgParser& args) {
  LlmTokenizer tokenizer(args.require("model"));
  if (args.has("add-special-tokens")) tokenizer.add_special_tokens(split_commas(args.get("add-special-tokens")));
  return tokenizer;
}

// A model and the LoRA adapter given with --adapter (PEFT's layout), if any.
struct LoadedModel {
  DecoderLM model;
  std::unique_ptr<LoraAdapter> adapter;  // null when none, or when merged into the weights
};

// `default_dtype` applies when --dtype is absent: float32 for the parity contract (forward,
// generate --in), auto (the model's torch_dtype where the device runs it natively) otherwise.
LoadedModel load_model(const ArgParser& args, const std::string& default_dtype) {
  configure_threads(static_cast<int>(args.get_int("threads")));
  LlmLoadOptions options;
  options.device = resolve_device(args.get("device"));
  const std::string dir = args.require("model");
  options.dtype = resolve_dtype(args.has("dtype") ? args.get("dtype") : default_dtype, options.device,
                                LlmConfig::load(dir + "/config.json").torch_dtype);
  LoadedModel loaded{DecoderLM::load(dir, options), nullptr};
  if (args.has("adapter")) {
    auto adapter = read_peft_adapter(args.get("adapter"), "default", loaded.model.config(), options.dtype, options.device);
    if (args.has("merge-adapter")) {
      loaded.model.merge_adapter(adapter);  // as fast as the base from here on
    } else {
      loaded.adapter = std::make_unique<LoraAdapter>(std::move(adapter));
    }
  } else if (args.has("merge-adapter")) {
    throw UsageError("--merge-adapter needs --adapter");
  }
  return loaded;
}

// --adapter / --merge-adapter, for forward and generate.
void adapter_options(ArgParser& args) {
  args.option("adapter", "a LoRA adapter in PEFT's layout (adapter_model.safetensors + adapter_config.json)")
      .flag("merge-adapter", "merge the --adapter into the weights first (PEFT's merge_and_unload: faster, same outputs)");
}

std::map<std::string, at::Tensor> read_inputs(const std::string& path) {
  std::map<std::string, at::Tensor> t;
  for (auto& [name, tensor] : read_safetensors(path)) t[name] = tensor;
  return t;
}

at::Tensor require_integer(const std::map<std::string, at::Tensor>& t, const std::string& path, const std::string& name,
                           int64_t batch, int64_t length) {
  const auto& x = t.at(name);
  if (!c10::isIntegralType(x.scalar_type(), /*includeBool=*/true))
    throw FormatError(path + ": tensor '" + name + "' must be an integer tensor, not " + dtype_name(x.scalar_type()));
  if (x.dim() != 2 || x.size(0) != batch || x.size(1) != length)
    throw ShapeError(path + ": tensor '" + name + "' must be [" + std::to_string(batch) + ", " + std::to_string(length) +
                     "], got " + shape_text(x.sizes()));
  return x.to(at::kLong);
}

// Token ids are checked against the model's vocabulary before the weights load: the embedding
// lookup would otherwise fail with LibTorch's "index out of range in self" and no file named.
void require_token_ids(const at::Tensor& ids, int64_t vocab_size, const std::string& path) {
  if (ids.numel() == 0) return;
  const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
  if (lo < 0 || hi >= vocab_size)
    throw FormatError(path + ": tensor 'input_ids' holds " + std::to_string(lo < 0 ? lo : hi) + ", outside the model's vocabulary [0, " +
                      std::to_string(vocab_size) + ")");
}

int cmd_tokenize(int argc, char** argv) {
  ArgParser args("llm_tool tokenize", "--model DIR [--add-special-tokens T1,T2,...] [--bos] --text TEXT");
  args.option("model", "model directory with tokenizer.model (tokenizer_config.json optional)")
      .option("add-special-tokens", "comma-separated special tokens added after the vocabulary, in order")
      .flag("bos", "add the tokenizer's BOS (and EOS if its config asks) as tokenizer(text) does")
      .option("text", "the text to encode")
      .option("log-level", "error, warn, info or debug", "warn");
  if (!args.parse(argc, argv, 0)) return 0;
  set_log_level(args.get("log-level"));
  const auto tokenizer = load_tokenizer(args);
  const auto ids = tokenizer.encode(args.require("text"), args.has("bos"));
  std::cout << nlohmann::json(ids).dump() << "\n";
  return 0;
}

std::string model_dir_of(const ArgParser& args) { return args.get("model"); }

int cmd_forward(int argc, char** argv) {
  ArgParser args("llm_tool forward", "--model DIR --in IN.safetensors --out OUT.safetensors [--dtype D] [--device D]");
  args.option("model", "Hugging Face model directory (config.json + safetensors)")
      .option("in", "int64 input_ids [B,T] or float32 inputs_embeds [B,T,H]; optional attention_mask, position_ids")
      .option("out", "written: float32 logits [B,T,V] and hidden_last [B,T,H] (padding rows zero)")
      .option("dtype", std::string(kDtypeChoices) + " (auto: config.json's torch_dtype where the device runs it natively, else float32)", "float32")
      .flag("all-hidden", "also write hidden_states.<i>: the embeddings and every layer's output");
  adapter_options(args);
  args.common_options();
  if (!args.parse(argc, argv, 0)) return 0;
  set_log_level(args.get("log-level"));
  const std::string in_path = args.require("in"), out_path = args.require("out");
  auto t = read_inputs(in_path);
  // The inputs are checked against config.json before the (possibly large) weights are loaded.
  const auto config = LlmConfig::load(args.require("model") + "/config.json");

  LlmForwardInput in;
  if (t.count("input_ids") == t.count("inputs_embeds"))
    throw FormatError(in_path + ": needs exactly one of the tensors 'input_ids' and 'inputs_embeds'");
  int64_t B = 0, T = 0;
  if (t.count("input_ids")) {
    const auto& ids = t["input_ids"];
    if (ids.dim() != 2) throw ShapeError(in_path + ": tensor 'input_ids' must be [B, T], got " + shape_text(ids.sizes()));
    B = ids.size(0), T = ids.size(1);
    in.input_ids = require_integer(t, in_path, "input_ids", B, T);
    require_token_ids(in.input_ids, config.vocab_size, in_path);
  } else {
    const auto& e = t["inputs_embeds"];
    if (!at::isFloatingType(e.scalar_type()))
      throw FormatError(in_path + ": tensor 'inputs_embeds' must be a float tensor, not " + dtype_name(e.scalar_type()));
    if (e.dim() != 3 || e.size(2) != config.hidden_size)
      throw ShapeError(in_path + ": tensor 'inputs_embeds' must be [B, T, " + std::to_string(config.hidden_size) +
                       "], got " + shape_text(e.sizes()));
    B = e.size(0), T = e.size(1);
    if (!at::isfinite(e).all().item<bool>()) throw NumericError(in_path + ": tensor 'inputs_embeds' holds NaN or Inf");
    in.inputs_embeds = e;
  }
  if (t.count("attention_mask")) in.attention_mask = require_integer(t, in_path, "attention_mask", B, T);
  if (t.count("position_ids")) in.position_ids = require_integer(t, in_path, "position_ids", B, T);
  const auto loaded = load_model(args, "float32");
  const auto& model = loaded.model;

  c10::InferenceMode inference;
  LlmForwardOptions options;
  options.all_hidden_states = args.has("all-hidden");
  options.adapter = loaded.adapter.get();
  const auto out = model.forward(in, nullptr, options);
  // Rows at padding positions are undefined; they are written as zeros.
  const auto keep = in.attention_mask.defined() ? in.attention_mask.ne(0).unsqueeze(-1) : at::ones({B, T, 1}, at::kBool);
  require_finite_logits(model, at::where(keep.to(out.logits.device()), out.logits, 0.0f), model_dir_of(args));
  auto host = [&](const at::Tensor& x) { return (x.to(at::kCPU, at::kFloat) * keep).contiguous(); };
  NamedTensors written = {{"logits", host(out.logits)}, {"hidden_last", host(out.hidden_last)}};
  for (size_t i = 0; i < out.hidden_states.size(); ++i)
    written.emplace_back("hidden_states." + std::to_string(i), host(out.hidden_states[i]));
  write_safetensors(out_path, written);
  return 0;
}

// Decoding settings: transformers' defaults, then generation_config.json, then the flags.
GenerationOptions generation_options(const ArgParser& args) {
  GenerationOptions o;
  o.top_k = 50;
  const std::string gen_path = args.get("model") + "/generation_config.json";
  if (file_exists(gen_path)) {
    const Json g = read_json_file(gen_path);
    // Absent and null fields keep the defaults.
    auto read = [&](const char* key, auto& target) {
      if (!g.is_object() || !g.contains(key) || g[key].is_null()) return;
      try {
        target = g[key].get<std::decay_t<decltype(target)>>();
      } catch (const nlohmann::json::exception&) {
        throw ConfigError(gen_path + ": field '" + key + "' has the wrong type");
      }
    };
    read("do_sample", o.do_sample);
    read("temperature", o.temperature);
    read("top_k", o.top_k);
    read("top_p", o.top_p);
    read("pad_token_id", o.pad_token_id);
    if (g.is_object() && g.contains("eos_token_id") && g["eos_token_id"].is_number_integer())
      o.eos_token_ids = {g["eos_token_id"].get<int64_t>()};
    else
      read("eos_token_id", o.eos_token_ids);
  }
  if (args.has("greedy") && args.has("sample")) throw UsageError("--greedy and --sample exclude each other");
  if (args.has("greedy")) o.do_sample = false;
  if (args.has("sample")) o.do_sample = true;
  if (args.has("temperature")) o.temperature = args.get_double("temperature");
  if (args.has("top-k")) o.top_k = args.get_int("top-k");
  if (args.has("top-p")) o.top_p = args.get_double("top-p");
  o.seed = static_cast<uint64_t>(args.get_int("seed"));
  o.max_new_tokens = args.get_int("max-new-tokens");
  o.stop_at_eos = !args.has("ignore-eos");
  o.use_cache = !args.has("no-cache");
  validate_generation_options(o);
  return o;
}

int cmd_generate(int argc, char** argv) {
  ArgParser args("llm_tool generate",
                 "--model DIR (--in IN.safetensors --out OUT.safetensors | --prompt TEXT) [--max-new-tokens N] ...");
  args.option("model", "Hugging Face model directory (config.json + safetensors + tokenizer.model)")
      .option("in", "int64 input_ids [B,T] and attention_mask [B,T] (left-padded)")
      .option("out", "written: int64 output_ids [B,N] (pad after a row's EOS)")
      .option("prompt", "generate from this text instead and print the decoded continuation")
      .flag("chat", "with --prompt: wrap the text as a user turn in the chat template")
      .option("system", "with --chat: a system message")
      .option("add-special-tokens", "comma-separated special tokens added to the tokenizer (for --prompt)")
      .option("max-new-tokens", "tokens to generate per row", "128")
      .flag("greedy", "argmax decoding (overrides generation_config.json)")
      .flag("sample", "sampled decoding (overrides generation_config.json)")
      .option("temperature", "sampling temperature")
      .option("top-k", "sampling: keep the K most likely tokens (0 = all)")
      .option("top-p", "sampling: nucleus probability mass")
      .option("seed", "sampling seed", "0")
      .flag("ignore-eos", "do not stop at EOS")
      .flag("no-cache", "recompute the whole sequence every step instead of using the KV cache")
      .option("dtype", std::string(kDtypeChoices) + " [float32 with --in (the parity contract), auto with --prompt: config.json's torch_dtype where the device runs it natively, else float32]");
  adapter_options(args);
  args.common_options();
  if (!args.parse(argc, argv, 0)) return 0;
  set_log_level(args.get("log-level"));
  if (args.has("prompt") == args.has("in")) throw UsageError("give exactly one of --in and --prompt");
  if (args.has("in") && !args.has("out")) throw UsageError("--in needs --out");
  if (args.has("system") && !args.has("chat")) throw UsageError("--system needs --chat");
  if (args.has("chat") && !args.has("prompt")) throw UsageError("--chat needs --prompt");

  // Every setting is checked before the tokenizer and the model load.
  auto options = generation_options(args);
  configure_threads(static_cast<int>(args.get_int("threads")));
  resolve_device(args.get("device"));
  const auto config = LlmConfig::load(args.require("model") + "/config.json");
  at::Tensor ids, mask;
  std::optional<LlmTokenizer> tokenizer;
  if (args.has("in")) {
    const std::string in_path = args.get("in");
    auto t = read_inputs(in_path);
    if (!t.count("input_ids")) throw FormatError(in_path + ": missing tensor 'input_ids'");
    if (t["input_ids"].dim() != 2)
      throw ShapeError(in_path + ": tensor 'input_ids' must be [B, T], got " + shape_text(t["input_ids"].sizes()));
    const int64_t B = t["input_ids"].size(0), T = t["input_ids"].size(1);
    ids = require_integer(t, in_path, "input_ids", B, T);
    require_token_ids(ids, config.vocab_size, in_path);
    if (t.count("attention_mask")) mask = require_integer(t, in_path, "attention_mask", B, T);
  } else {
    tokenizer.emplace(load_tokenizer(args));
    std::string text = args.get("prompt");
    if (args.has("chat")) {
      std::vector<ChatMessage> messages;
      if (args.has("system")) messages.push_back({"system", args.get("system")});
      messages.push_back({"user", text});
      text = tokenizer->apply_chat_template(messages);
    }
    // A chat rendering carries its own BOS.
    const auto encoded = tokenizer->encode(text, /*add_special_tokens=*/!args.has("chat"));
    ids = at::tensor(std::vector<int64_t>(encoded.begin(), encoded.end()), at::kLong).unsqueeze(0);
    require_token_ids(ids, config.vocab_size, "--prompt (encoded)");
  }
  const auto loaded = load_model(args, args.has("prompt") ? "auto" : "float32");
  const auto& model = loaded.model;
  options.adapter = loaded.adapter.get();
  // --prompt streams the text as it is generated: each step re-decodes the whole continuation
  // and prints what is new.
  std::vector<int> generated_ids;
  std::string printed;
  if (tokenizer) {
    const auto eos = options.eos_token_ids.empty() ? model.config().eos_token_ids : options.eos_token_ids;
    options.on_step = [&, eos](int64_t, const at::Tensor& tokens) {
      const int64_t id = tokens[0].item<int64_t>();
      if (options.stop_at_eos && std::find(eos.begin(), eos.end(), id) != eos.end()) return true;
      generated_ids.push_back(static_cast<int>(id));
      const std::string text = tokenizer->decode(generated_ids, /*skip_special_tokens=*/true);
      // A run of byte pieces decodes as a whole (valid UTF-8, or U+FFFD for every byte), so
      // nothing is printed while the newest token may still extend such a run.
      const std::string piece = tokenizer->has_token(static_cast<int>(id)) ? tokenizer->id_to_token(static_cast<int>(id)) : "";
      const bool in_byte_run = piece.size() == 6 && piece.compare(0, 3, "<0x") == 0 && piece.back() == '>';
      if (!in_byte_run && text.size() > printed.size() && text.compare(0, printed.size(), printed) == 0) {
        std::cout << text.substr(printed.size()) << std::flush;
        printed = text;
      }
      return true;
    };
  }
  const auto result = generate(model, ids, mask, options);
  const int64_t generated = std::accumulate(result.lengths.begin(), result.lengths.end(), int64_t{0});
  const double decode_rate =
      result.decode_seconds > 0 ? static_cast<double>(generated - ids.size(0)) / result.decode_seconds : 0.0;
  log_info(c10::str("prompt ", ids.numel(), " tokens, first token after ", result.prefill_seconds, " s; ", generated,
                    " tokens in ", result.steps, " steps, ", decode_rate, " tokens/s after the first"));
  if (args.has("in")) {
    write_safetensors(args.get("out"), {{"output_ids", result.tokens}});
  } else {
    const std::string text = tokenizer->decode(generated_ids, /*skip_special_tokens=*/true);
    if (text.compare(0, printed.size(), printed) == 0) {
      std::cout << text.substr(printed.size()) << "\n";
    } else {  // a later piece rewrote earlier text (not seen with SentencePiece); print it whole
      std::cout << "\n" << text << "\n";
    }
  }
  return 0;
}

int cmd_init(int argc, char** argv) {
  ArgParser args("llm_tool init", "--config config.json --tokenizer DIR --out DIR [--dtype float32|bfloat16|float16] [--seed S]");
  args.option("config", "a Hugging Face config.json (e.g. models/llm/tiny-clara.json)")
      .option("tokenizer", "a directory with tokenizer.model (and tokenizer_config.json) to copy")
      .option("out", "the new model directory")
      .option("dtype", "weights dtype", "float32")
      .option("seed", "random seed", "0")
      .option("log-level", "error, warn, info or debug", "warn");
  if (!args.parse(argc, argv, 0)) return 0;
  const auto config = LlmConfig::load(args.require("config"));
  write_random_llm(args.require("out"), config, dtype_from_name(args.get("dtype")), static_cast<uint64_t>(args.get_int("seed")),
                   args.require("tokenizer"));
  std::cout << nlohmann::json{{"out", args.get("out")}, {"parameters", config.parameter_count()}}.dump() << "\n";
  return 0;
}

int cmd_info(int argc, char** argv) {
  ArgParser args("llm_tool info", "--model DIR");
  args.option("model", "Hugging Face model directory");
  if (!args.parse(argc, argv, 0)) return 0;
  const auto config = LlmConfig::load(args.require("model") + "/config.json");
  auto j = nlohmann::json::parse(config.to_json_text());
  j["parameters"] = config.parameter_count();
  std::cout << j.dump(1) << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return run_main("llm_tool", [&] {
    if (print_version_if_asked("llm_tool", argc, argv)) return 0;
    if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
      std::cout << kUsage << "\n";
      return argc < 2 ? 2 : 0;
    }
    const std::string command = argv[1];
    if (command == "tokenize") return cmd_tokenize(argc - 1, argv + 1);
    if (command == "forward") return cmd_forward(argc - 1, argv + 1);
    if (command == "generate") return cmd_generate(argc - 1, argv + 1);
    if (command == "info") return cmd_info(argc - 1, argv + 1);
    if (command == "init") return cmd_init(argc - 1, argv + 1);
    throw UsageError("unknown command '" + command + "' (tokenize, forward, generate, info or init)");
  });
}
