// Sampled decoding against transformers' logits warpers (tests/fixtures/sampling), the draws
// against those distributions, and llm_tool's decoding settings: generation_config.json, the
// flags that override it, and the chat prompt (--chat, --system).
#include <hrmclara/files.h>
#include <hrmclara/llm.h>
#include <hrmclara/llm_tokenizer.h>
#include <hrmclara/tensor_io.h>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>

#include "test_util.h"

using namespace hrmclara;
using namespace hrmclara::test;

namespace {

const std::string kModelDir = fixture("clara-reference");

std::map<std::string, torch::Tensor> read_map(const std::string& path) {
  std::map<std::string, torch::Tensor> m;
  for (auto& [k, v] : read_safetensors(path)) m[k] = v.clone();
  return m;
}

const DecoderLM& model() {
  static const DecoderLM m = DecoderLM::load(kModelDir);
  return m;
}

GenerationOptions sampled(double temperature, int64_t top_k, double top_p) {
  GenerationOptions o;
  o.do_sample = true;
  o.temperature = temperature;
  o.top_k = top_k;
  o.top_p = top_p;
  return o;
}

// Softmax of `scores` over the tokens `keep` marks.
torch::Tensor masked_softmax(const torch::Tensor& scores, const torch::Tensor& keep) {
  return scores.masked_fill(~keep, -std::numeric_limits<double>::infinity()).softmax(-1);
}

}  // namespace

TEST(LlmSampling, DistributionsAreTransformersWarpersInTheirOrder) {
  auto f = read_map(fixture("sampling/warpers.safetensors"));
  const auto logits = f.at("logits");
  int cases = 0, order_shown = 0;
  for (int i = 0; f.count("case" + std::to_string(i) + ".probs"); ++i, ++cases) {
    const auto s = f.at("case" + std::to_string(i) + ".settings");
    const double t = s[0].item<double>(), p = s[2].item<double>();
    const int64_t k = static_cast<int64_t>(s[1].item<double>());
    const auto want = f.at("case" + std::to_string(i) + ".probs");
    const auto got = sampling_probabilities(logits, sampled(t, k, p));
    const std::string name = "T=" + std::to_string(t) + " k=" + std::to_string(k) + " p=" + std::to_string(p);
    EXPECT_EQ(got.scalar_type(), torch::kFloat) << name;
    EXPECT_TRUE(same_tensor(got == 0, want == 0)) << name << ": which tokens survive";
    EXPECT_LE((got - want).abs().max().item<double>(), 1e-6) << name;
    // The same filters in other orders: top-p before the temperature, top-p before top-k.
    if (p < 1.0) {
      const auto scaled = logits / t;
      const auto p_keep_raw = sampling_probabilities(logits, sampled(1.0, 0, p)) > 0;
      const auto k_keep = k > 0 ? sampling_probabilities(scaled, sampled(1.0, k, 1.0)) > 0 : torch::ones_like(p_keep_raw);
      const auto p_keep_scaled = sampling_probabilities(scaled, sampled(1.0, 0, p)) > 0;
      for (const auto& other : {masked_softmax(scaled, p_keep_raw & k_keep), masked_softmax(scaled, p_keep_scaled & k_keep)})
        if (!torch::allclose(other, want, 0, 1e-4)) {
          EXPECT_FALSE(torch::allclose(got, other, 0, 1e-4)) << name;
          ++order_shown;
        }
    }
  }
  EXPECT_EQ(cases, 10);
  EXPECT_GE(order_shown, 3) << "the fixture must tell the warpers' order apart";
  // Temperature sharpens below 1 and flattens above: the largest probability of every row moves.
  const auto base = sampling_probabilities(logits, sampled(1.0, 0, 1.0)).amax(-1);
  EXPECT_TRUE((sampling_probabilities(logits, sampled(0.6, 0, 1.0)).amax(-1) > base).all().item<bool>());
  EXPECT_TRUE((sampling_probabilities(logits, sampled(1.8, 0, 1.0)).amax(-1) < base).all().item<bool>());
}

TEST(LlmSampling, DrawsFollowTheDistribution) {
  auto f = read_map(fixture("sampling/warpers.safetensors"));
  const int64_t n = 20000;
  for (int i : {1, 5, 7}) {  // T=0.6; T=0.5 with top-p; top-k with top-p
    const auto s = f.at("case" + std::to_string(i) + ".settings");
    const auto o = sampled(s[0].item<double>(), static_cast<int64_t>(s[1].item<double>()), s[2].item<double>());
    const auto want = f.at("case" + std::to_string(i) + ".probs")[2];
    auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
    const auto draws = select_next_tokens(f.at("logits")[2].unsqueeze(0).expand({n, -1}).contiguous(), o, gen);
    const auto freq = torch::bincount(draws, {}, want.size(0)).to(torch::kDouble) / static_cast<double>(n);
    // 20000 draws: a frequency's standard deviation is at most 0.0035; 0.015 is over 4 of them.
    EXPECT_LE((freq - want.to(torch::kDouble)).abs().max().item<double>(), 0.015) << "case " << i;
    EXPECT_EQ(freq.masked_select(want == 0).sum().item<double>(), 0.0) << "case " << i << ": a filtered token was drawn";
  }
}

// ---- llm_tool generate: where its decoding settings come from -------------------------------------

namespace {

// A model folder whose files link to the fixture's, plus `generation_config` when not empty.
std::string model_copy(const ScratchDir& scratch, const std::string& name, const std::string& generation_config) {
  const std::string dir = scratch / name;
  make_directories(dir);
  for (const char* file : {"config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
                           "model-00002-of-00002.safetensors", "tokenizer.model", "tokenizer_config.json"})
    EXPECT_EQ(symlink((kModelDir + "/" + file).c_str(), (dir + "/" + file).c_str()), 0) << file;
  if (!generation_config.empty()) write_file_atomically(dir + "/generation_config.json", generation_config);
  return dir;
}

torch::Tensor generate_with_tool(const std::string& dir, const std::string& flags, const ScratchDir& scratch) {
  const auto e = read_map(fixture("clara-reference/expected.safetensors"));
  const std::string in = scratch / "in.safetensors", out = scratch / "out.safetensors";
  write_safetensors(in, {{"input_ids", e.at("generate.prompt_ids")}, {"attention_mask", e.at("generate.attention_mask")}});
  const auto r = run_command(tool("llm_tool") + " generate --model " + dir + " --in " + in + " --out " + out +
                                 " --max-new-tokens 8 --ignore-eos --log-level warn " + flags,
                             scratch.path());
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return r.exit_code == 0 ? read_map(out).at("output_ids") : torch::Tensor();
}

torch::Tensor generate_with_library(GenerationOptions o) {
  const auto e = read_map(fixture("clara-reference/expected.safetensors"));
  o.max_new_tokens = 8;
  o.stop_at_eos = false;
  return generate(model(), e.at("generate.prompt_ids"), e.at("generate.attention_mask"), o).tokens;
}

}  // namespace

TEST(LlmToolDecoding, GenerationConfigSetsSamplingAndFlagsOverrideIt) {
  ScratchDir scratch;
  const std::string configured =
      model_copy(scratch, "configured", R"({"do_sample": true, "temperature": 0.8, "top_k": 5, "top_p": 0.9})");
  auto o = sampled(0.8, 5, 0.9);
  o.seed = 3;
  const auto from_config = generate_with_tool(configured, "--seed 3", scratch);
  EXPECT_TRUE(same_tensor(from_config, generate_with_library(o)));
  const auto greedy_tokens = generate_with_library(GenerationOptions{});
  EXPECT_FALSE(from_config.equal(greedy_tokens)) << "sampling at seed 3 happened to give the greedy tokens";
  // Flags win over the file, one setting at a time.
  o.temperature = 0.5;
  EXPECT_TRUE(same_tensor(generate_with_tool(configured, "--seed 3 --temperature 0.5", scratch), generate_with_library(o)));
  o.temperature = 0.8;
  o.top_k = 0;
  EXPECT_TRUE(same_tensor(generate_with_tool(configured, "--seed 3 --top-k 0", scratch), generate_with_library(o)));
  o.top_k = 5;
  o.top_p = 0.5;
  o.seed = 4;
  EXPECT_TRUE(same_tensor(generate_with_tool(configured, "--seed 4 --top-p 0.5", scratch), generate_with_library(o)));
  EXPECT_TRUE(same_tensor(generate_with_tool(configured, "--greedy", scratch), greedy_tokens));
  // Without a generation_config.json: transformers' defaults (greedy; top_k 50 when sampling).
  const std::string plain = model_copy(scratch, "plain", "");
  EXPECT_TRUE(same_tensor(generate_with_tool(plain, "", scratch), greedy_tokens));
  auto defaults = sampled(1.0, 50, 1.0);
  defaults.seed = 9;
  EXPECT_TRUE(same_tensor(generate_with_tool(plain, "--sample --seed 9", scratch), generate_with_library(defaults)));
  // A malformed file names the field.
  const std::string bad = model_copy(scratch, "bad", R"({"top_k": "five"})");
  const auto r = run_command(tool("llm_tool") + " generate --model " + bad + " --prompt x --max-new-tokens 1", scratch.path());
  EXPECT_EQ(r.exit_code, 5) << r.err;  // a config field, as config.json's are
  EXPECT_NE(r.err.find("generation_config.json: field 'top_k'"), std::string::npos) << r.err;
}

TEST(LlmToolDecoding, ChatAndSystemWrapThePromptInTheTemplate) {
  // transformers renders this model's template as '<s> [INST] ' + (system + '\n\n' if any) +
  // user + ' [/INST]' (prompts.json, checked against the rendering in the tokenizer tests).
  ScratchDir scratch;
  LlmTokenizer tokenizer(kModelDir);
  auto expected_text = [&](const std::string& rendering, bool add_special) {
    const auto ids = tokenizer.encode(rendering, add_special);
    GenerationOptions o;
    o.max_new_tokens = 6;
    o.stop_at_eos = false;
    const auto r = generate(model(), torch::tensor(std::vector<int64_t>(ids.begin(), ids.end())).unsqueeze(0), torch::Tensor(), o);
    std::vector<int> out;
    for (int64_t j = 0; j < r.tokens.size(1); ++j) out.push_back(static_cast<int>(r.tokens[0][j].item<int64_t>()));
    return tokenizer.decode(out, /*skip_special_tokens=*/true) + "\n";
  };
  auto tool_text = [&](const std::string& flags) {
    const auto r = run_command(tool("llm_tool") + " generate --model " + kModelDir +
                                   " --prompt 'The Licensor' --greedy --max-new-tokens 6 --ignore-eos --dtype float32 --log-level warn " + flags,
                               scratch.path());
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return r.out;
  };
  const std::string plain = expected_text("The Licensor", true);
  const std::string chat = expected_text("<s> [INST] The Licensor [/INST]", false);
  const std::string system = expected_text("<s> [INST] Be brief.\n\nThe Licensor [/INST]", false);
  EXPECT_NE(plain, chat);
  EXPECT_NE(chat, system);
  EXPECT_EQ(tool_text(""), plain);
  EXPECT_EQ(tool_text("--chat"), chat);
  EXPECT_EQ(tool_text("--chat --system 'Be brief.'"), system);
  const auto r = run_command(tool("llm_tool") + " generate --model " + kModelDir + " --prompt x --system 'Be brief.'", scratch.path());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--system needs --chat"), std::string::npos) << r.err;
}
