// The decoder LLM against the CLaRa fixture's float32 ground truth (a tiny Mistral: hidden 64,
// 2 layers, GQA 4/2, vocab 647, BF16 weights in two shards), plus decoding, the loader's
// memory mapping on a 7B-shaped sparse checkpoint, and the llm_tool contract.
#include <hrmclara/hrmclara.h>  // the umbrella header: also checks that it compiles as a whole

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <fcntl.h>
#include <unistd.h>

#include <fstream>
#include <map>

#include "test_util.h"

using namespace hrmclara;
using namespace hrmclara::test;

namespace {

const std::string kModelDir = fixture("clara-reference");

std::map<std::string, torch::Tensor> expected() {
  static const auto tensors = [] {
    std::map<std::string, torch::Tensor> m;
    for (auto& [k, v] : read_safetensors(fixture("clara-reference/expected.safetensors"))) m[k] = v.clone();
    return m;
  }();
  return tensors;
}

const DecoderLM& fixture_model() {
  static const DecoderLM model = DecoderLM::load(kModelDir);
  return model;
}

// Largest absolute difference over the positions the mask marks as real tokens.
double masked_max_diff(const torch::Tensor& got, const torch::Tensor& want, const torch::Tensor& mask) {
  const auto keep = mask.ne(0).unsqueeze(-1).expand_as(want);
  return (got.to(torch::kFloat) - want).abs().masked_select(keep).max().item<double>();
}

LlmForwardInput batch_input() {
  auto e = expected();
  LlmForwardInput in;
  in.input_ids = e["input_ids"];
  in.attention_mask = e["attention_mask"];
  in.position_ids = e["position_ids"];
  return in;
}

GenerationOptions greedy(int64_t n, bool cache) {
  GenerationOptions o;
  o.max_new_tokens = n;
  o.stop_at_eos = false;
  o.use_cache = cache;
  return o;
}

std::string write_config(const std::string& dir, const std::string& json_text) {
  make_directories(dir);
  write_file_atomically(dir + "/config.json", json_text);
  return dir;
}

}  // namespace

// ---- config ----------------------------------------------------------------------------------

TEST(LlmConfig, ParsesTheFixtureAndCountsMistral7BParameters) {
  const auto c = LlmConfig::load(kModelDir + "/config.json");
  EXPECT_EQ(c.model_type, "mistral");
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.vocab_size, 647);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_FALSE(c.tie_word_embeddings);
  // The count CLaRa's training logs print for Mistral-7B-Instruct-v0.2.
  LlmConfig m = c;
  m.vocab_size = 32000, m.hidden_size = 4096, m.intermediate_size = 14336, m.num_hidden_layers = 32;
  m.num_attention_heads = 32, m.num_key_value_heads = 8, m.head_dim = 128;
  EXPECT_EQ(m.parameter_count(), 7241732096LL);
  // to_json_text round trip.
  const auto back = LlmConfig::from_json_text(m.to_json_text(), "round trip");
  EXPECT_EQ(back.parameter_count(), m.parameter_count());
  EXPECT_EQ(back.eos_token_ids, m.eos_token_ids);
}

// Field errors are config errors (exit 5), as HRM's and CLaRa's are; unreadable JSON is a format error.
TEST(LlmConfig, BadConfigsNameTheField) {
  const std::string base = read_file(kModelDir + "/config.json");
  auto with = [&](const std::string& key, const nlohmann::json& value) {
    auto j = nlohmann::json::parse(base);
    if (value.is_null()) j.erase(key); else j[key] = value;
    return error_of<ConfigError>([&] { LlmConfig::from_json_text(j.dump(), "cfg.json"); });
  };
  EXPECT_NE(with("hidden_size", nullptr).find("cfg.json: field 'hidden_size' is missing"), std::string::npos);
  EXPECT_NE(with("model_type", "gpt2").find("'model_type'"), std::string::npos);
  EXPECT_NE(with("num_key_value_heads", 3).find("'num_key_value_heads' must divide"), std::string::npos);
  EXPECT_NE(with("hidden_act", "gelu").find("'hidden_act'"), std::string::npos);
  EXPECT_NE(with("vocab_size", "many").find("'vocab_size' must be an integer"), std::string::npos);
  EXPECT_NE(with("rope_scaling", nlohmann::json{{"type", "yarn"}, {"factor", 2.0}}).find("rope_type"), std::string::npos);
  EXPECT_NE(error_of<FormatError>([] { LlmConfig::from_json_text("{nope", "x.json"); }).find("x.json: not valid JSON"),
            std::string::npos);
}

// ---- parity with the fixture ------------------------------------------------------------------

TEST(LlmParity, BatchLogitsAndHiddenStatesMatchOnAttendedPositions) {
  auto e = expected();
  torch::InferenceMode guard;
  LlmForwardOptions opt;
  opt.all_hidden_states = true;
  const auto out = fixture_model().forward(batch_input(), nullptr, opt);
  const auto& mask = e["attention_mask"];
  ASSERT_EQ(out.logits.sizes(), e["logits.batch"].sizes());
  ASSERT_EQ(out.hidden_states.size(), 3u);  // embeddings, layer 0, final norm
  // Logits are ~13 in size; the README's float64 check agrees with the reference to ~1e-5.
  EXPECT_LT(masked_max_diff(out.logits, e["logits.batch"], mask), 1e-4);
  EXPECT_LT(masked_max_diff(out.hidden_last, e["hidden.last.batch"], mask), 1e-4);
  EXPECT_LT(masked_max_diff(out.hidden_states[0], e["hidden.embed.batch"], mask), 1e-6);
  EXPECT_LT(masked_max_diff(out.hidden_states[1], e["hidden.layer0.batch"], mask), 1e-4);
  EXPECT_TRUE(test::same_tensor(out.hidden_states[2], out.hidden_last));
}

TEST(LlmParity, DefaultPositionsAreZeroToTMinusOneAndPaddingDoesNotLeakIntoRows) {
  // Without position_ids a left-padded row gets shifted positions; RoPE is relative, so its
  // attended logits stay those of the fixture up to rounding.
  auto e = expected();
  torch::InferenceMode guard;
  auto in = batch_input();
  in.position_ids = torch::Tensor();
  const auto out = fixture_model().forward(in);
  EXPECT_LT(masked_max_diff(out.logits, e["logits.batch"], e["attention_mask"]), 2e-4);
  // Each row alone, without padding, gives the same logits as inside the padded batch.
  for (int64_t b = 0; b < 3; ++b) {
    const auto mask = e["attention_mask"][b];
    const auto real = mask.nonzero().squeeze(1);
    LlmForwardInput single;
    single.input_ids = e["input_ids"][b].index_select(0, real).unsqueeze(0);
    const auto alone = fixture_model().forward(single).logits[0];
    const auto in_batch = e["logits.batch"][b].index_select(0, real);
    EXPECT_LT((alone - in_batch).abs().max().item<double>(), 2e-4) << "row " << b;
  }
}

TEST(LlmParity, InputsEmbedsPathMatchesTheSplicedFixture) {
  auto e = expected();
  torch::InferenceMode guard;
  const auto& model = fixture_model();
  auto embeds = model.embed(e["embeds.input_ids"]).clone();
  const auto pos = e["embeds.splice_positions"];
  for (int64_t i = 0; i < pos.size(0); ++i) embeds[0][pos[i].item<int64_t>()].copy_(e["embeds.vectors"][i]);
  EXPECT_TRUE(test::same_tensor(embeds, e["embeds.inputs_embeds"]));
  LlmForwardInput in;
  in.inputs_embeds = e["embeds.inputs_embeds"];
  const auto out = model.forward(in);
  EXPECT_LT((out.logits - e["logits.embeds"]).abs().max().item<double>(), 1e-4);
}

TEST(LlmParity, GreedyGenerationMatchesTheFixtureWithAndWithoutCache) {
  auto e = expected();
  const auto want = e["generate.output_ids"];
  // The smallest top1-top2 margin says how safe exact token equality is.
  EXPECT_GT(e["generate.top2_margin"].min().item<double>(), 1e-3);
  for (bool cache : {false, true}) {
    const auto r = generate(fixture_model(), e["generate.prompt_ids"], e["generate.attention_mask"], greedy(12, cache));
    EXPECT_TRUE(test::same_tensor(r.tokens, want)) << "cache " << cache << "\n" << r.tokens << "\n" << want;
    EXPECT_EQ(r.steps, 12);
    EXPECT_EQ(r.lengths, std::vector<int64_t>(3, 12));
  }
}

TEST(LlmParity, Bfloat16StaysWithinTheReferenceBf16Deviation) {
  auto e = expected();
  LlmLoadOptions o;
  o.dtype = torch::kBFloat16;
  const auto model = DecoderLM::load(kModelDir, o);
  torch::InferenceMode guard;
  const auto out = model.forward(batch_input());
  const auto keep = e["attention_mask"].ne(0);
  const auto diff = (out.logits - e["logits.batch"]).abs().masked_select(keep.unsqueeze(-1).expand_as(out.logits));
  // The README's HF-style bf16 run deviates by max 0.156, mean 0.0233 (we measured 0.156 / 0.021).
  EXPECT_LT(diff.max().item<double>(), 0.25);
  EXPECT_LT(diff.mean().item<double>(), 0.035);
  const auto agree = out.logits.argmax(-1).eq(e["logits.batch"].argmax(-1)).masked_select(keep);
  EXPECT_GT(agree.to(torch::kFloat).mean().item<double>(), 0.95);
  EXPECT_EQ(out.hidden_last.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(out.logits.scalar_type(), torch::kFloat);
}

// ---- decoding --------------------------------------------------------------------------------

TEST(LlmDecoding, CachedStepsReproduceTheFullForward) {
  auto e = expected();
  torch::InferenceMode guard;
  const auto& model = fixture_model();
  const auto ids = e["input_ids"], mask = e["attention_mask"];
  const int64_t T = ids.size(1), split = 9;
  const auto full = model.forward(batch_input()).logits;
  auto cache = model.new_cache(3, T);
  LlmForwardInput head;
  head.input_ids = ids.narrow(1, 0, split);
  head.attention_mask = mask.narrow(1, 0, split);
  head.position_ids = e["position_ids"].narrow(1, 0, split);
  auto parts = std::vector<torch::Tensor>{model.forward(head, &cache).logits};
  for (int64_t t = split; t < T; ++t) {
    LlmForwardInput step;
    step.input_ids = ids.narrow(1, t, 1);
    step.attention_mask = mask.narrow(1, 0, t + 1);  // the whole mask so far is accepted too
    step.position_ids = e["position_ids"].narrow(1, t, 1);
    parts.push_back(model.forward(step, &cache).logits);
  }
  EXPECT_EQ(cache.length, T);
  EXPECT_LT(masked_max_diff(torch::cat(parts, 1), full, mask), 1e-4);
  // A cache that is too small is an error, not a crash.
  auto small = model.new_cache(3, 4);
  EXPECT_NE(error_of<UsageError>([&] { model.forward(batch_input(), &small); }).find("KV cache holds 4"),
            std::string::npos);
}

TEST(LlmDecoding, BatchedLeftPaddedGenerationEqualsEachRowAlone) {
  auto e = expected();
  const auto batch = generate(fixture_model(), e["generate.prompt_ids"], e["generate.attention_mask"], greedy(8, true));
  for (int64_t b = 0; b < 3; ++b) {
    const auto real = e["generate.attention_mask"][b].nonzero().squeeze(1);
    const auto alone = generate(fixture_model(), e["generate.prompt_ids"][b].index_select(0, real).unsqueeze(0),
                                torch::Tensor(), greedy(8, true));
    EXPECT_TRUE(test::same_tensor(alone.tokens[0], batch.tokens[b])) << "row " << b;
  }
}

TEST(LlmDecoding, RowsStopAtEosAndArePaddedAfterIt) {
  auto e = expected();
  const auto want = e["generate.output_ids"];
  auto o = greedy(12, true);
  o.stop_at_eos = true;
  o.eos_token_ids = {want[0][2].item<int64_t>()};  // row 0's third token plays EOS
  o.pad_token_id = 1;
  const auto r = generate(fixture_model(), e["generate.prompt_ids"], e["generate.attention_mask"], o);
  EXPECT_EQ(r.lengths[0], 3);
  EXPECT_TRUE(test::same_tensor(r.tokens[0].narrow(0, 0, 3), want[0].narrow(0, 0, 3)));
  EXPECT_TRUE(r.tokens[0].narrow(0, 3, 9).eq(1).all().item<bool>());
  for (int64_t b = 1; b < 3; ++b) {
    // Other rows run on unless they produce the same token.
    const auto hits = want[b].eq(o.eos_token_ids[0]).nonzero();
    const int64_t len = hits.numel() ? hits[0][0].item<int64_t>() + 1 : 12;
    EXPECT_EQ(r.lengths[b], len);
    EXPECT_TRUE(test::same_tensor(r.tokens[b].narrow(0, 0, len), want[b].narrow(0, 0, len)));
  }
  // When every row has stopped, generation ends early.
  o.eos_token_ids = {want[0][0].item<int64_t>(), want[1][0].item<int64_t>(), want[2][0].item<int64_t>()};
  const auto early = generate(fixture_model(), e["generate.prompt_ids"], e["generate.attention_mask"], o);
  EXPECT_EQ(early.steps, 1);
  EXPECT_EQ(early.tokens.size(1), 12);
}

TEST(LlmDecoding, TheStepCallbackSeesEveryStepAndCanStop) {
  auto e = expected();
  auto o = greedy(12, true);
  std::vector<torch::Tensor> seen;
  o.on_step = [&](int64_t step, const torch::Tensor& tokens) {
    EXPECT_EQ(step, static_cast<int64_t>(seen.size()));
    seen.push_back(tokens.clone());
    return step < 4;
  };
  const auto r = generate(fixture_model(), e["generate.prompt_ids"], e["generate.attention_mask"], o);
  EXPECT_EQ(r.steps, 5);
  ASSERT_EQ(seen.size(), 5u);
  EXPECT_TRUE(test::same_tensor(torch::stack(seen, 1), e["generate.output_ids"].narrow(1, 0, 5)));
  EXPECT_TRUE(test::same_tensor(r.tokens.narrow(1, 0, 5), e["generate.output_ids"].narrow(1, 0, 5)));
}

TEST(LlmDecoding, SamplingIsSeededAndItsFiltersDegenerateToGreedy) {
  auto e = expected();
  const auto ids = e["generate.prompt_ids"], mask = e["generate.attention_mask"];
  auto o = greedy(10, true);
  o.do_sample = true;
  o.temperature = 1.5;
  o.seed = 7;
  const auto a = generate(fixture_model(), ids, mask, o), b = generate(fixture_model(), ids, mask, o);
  EXPECT_TRUE(test::same_tensor(a.tokens, b.tokens));
  bool any_differs = false;
  for (uint64_t seed = 8; seed < 12; ++seed) {
    o.seed = seed;
    any_differs |= !generate(fixture_model(), ids, mask, o).tokens.equal(a.tokens);
  }
  EXPECT_TRUE(any_differs);
  // Sampling is cache-independent for a fixed seed (the draws come from one CPU generator).
  o.seed = 7;
  o.use_cache = false;
  EXPECT_TRUE(test::same_tensor(generate(fixture_model(), ids, mask, o).tokens, a.tokens));
  const auto want = e["generate.output_ids"].narrow(1, 0, 10);
  o.top_k = 1;
  EXPECT_TRUE(test::same_tensor(generate(fixture_model(), ids, mask, o).tokens, want));
  o.top_k = 0;
  o.top_p = 1e-6;
  EXPECT_TRUE(test::same_tensor(generate(fixture_model(), ids, mask, o).tokens, want));
  // Every sampled token respects top-k: with k = 2 each one is among the two most likely.
  GenerationOptions k2;
  k2.do_sample = true, k2.top_k = 2;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  const auto logits = torch::randn({64, 50});
  const auto picked = select_next_tokens(logits, k2, gen);
  const auto top2 = std::get<1>(logits.topk(2, -1));
  EXPECT_TRUE(top2.eq(picked.unsqueeze(1)).any(1).all().item<bool>());
  GenerationOptions bad;
  bad.do_sample = true, bad.top_p = 0;
  EXPECT_THROW(generate(fixture_model(), ids, mask, [&] { bad.max_new_tokens = 2; return bad; }()), UsageError);
}

TEST(LlmDecoding, GeneratesFromSplicedEmbeddingsLikeFromIds) {
  auto e = expected();
  const auto ids = e["generate.prompt_ids"], mask = e["generate.attention_mask"];
  const auto embeds = fixture_model().embed(ids);
  for (bool cache : {true, false}) {
    const auto r = generate_from_embeds(fixture_model(), embeds, mask, greedy(12, cache));
    EXPECT_TRUE(test::same_tensor(r.tokens, e["generate.output_ids"])) << "cache " << cache;
  }
}

// ---- weights -----------------------------------------------------------------------------------

TEST(LlmModel, ResizeKeepsOldRowsAndDrawsNewOnesAroundTheMean) {
  auto model = DecoderLM::load(kModelDir);
  const auto old_embed = model.weight("model.embed_tokens.weight").clone();
  const auto old_head = model.weight("lm_head.weight").clone();
  model.resize_token_embeddings(652, 5);
  EXPECT_EQ(model.config().vocab_size, 652);
  const auto embed = model.weight("model.embed_tokens.weight");
  ASSERT_EQ(embed.sizes(), torch::IntArrayRef({652, 64}));
  EXPECT_TRUE(test::same_tensor(embed.narrow(0, 0, 647), old_embed));
  EXPECT_TRUE(test::same_tensor(model.weight("lm_head.weight").narrow(0, 0, 647), old_head));
  // New rows: the old mean plus noise with 1e-9 times the old covariance (std ~1e-5 of the spread).
  const auto added = embed.narrow(0, 647, 5);
  EXPECT_LT((added - old_embed.mean(0)).abs().max().item<double>(), 1e-3);
  EXPECT_FALSE(added[0].equal(added[1]));
  torch::InferenceMode guard;
  LlmForwardInput in;
  in.input_ids = torch::tensor({{1, 650, 651, 5}}, torch::kLong);
  EXPECT_EQ(model.forward(in).logits.size(2), 652);
  // set_weight checks shapes and names.
  EXPECT_THROW(model.set_weight("lm_head.weight", torch::zeros({647, 64})), FormatError);
  EXPECT_THROW(model.set_weight("lm_head.bias", torch::zeros({652})), UsageError);
  model.resize_token_embeddings(600);
  EXPECT_TRUE(test::same_tensor(model.weight("model.embed_tokens.weight"), old_embed.narrow(0, 0, 600)));
}

TEST(LlmModel, SavedRandomModelsReloadIdenticallyIncludingTiedHeadsAndQwenBiases) {
  ScratchDir scratch;
  for (const std::string type : {"llama", "qwen2"}) {
    LlmConfig c;
    c.model_type = type;
    c.vocab_size = 50, c.hidden_size = 32, c.intermediate_size = 48, c.num_hidden_layers = 2;
    c.num_attention_heads = 4, c.num_key_value_heads = 1, c.head_dim = 8, c.rms_norm_eps = 1e-6;
    c.tie_word_embeddings = type == "llama";
    c.attention_bias = type == "qwen2";
    if (type == "llama") c.rope_type = "llama3", c.rope_factor = 8, c.rope_original_max_positions = 16;
    auto model = DecoderLM::random(c, {}, 3);
    if (type == "qwen2") model.set_weight("model.layers.0.self_attn.q_proj.bias", torch::randn({32}));
    const std::string dir = write_config(scratch.path() + "/" + type, c.to_json_text());
    write_safetensors(dir + "/model.safetensors", model.named_weights());
    const auto loaded = DecoderLM::load(dir);
    EXPECT_EQ(loaded.config().parameter_count(), c.parameter_count());
    int64_t count = 0;
    for (const auto& [name, w] : loaded.named_weights()) count += w.numel();
    EXPECT_EQ(count, c.parameter_count()) << type;
    torch::InferenceMode guard;
    LlmForwardInput in;
    in.input_ids = torch::randint(0, 50, {2, 7}, torch::kLong);
    const auto a = model.forward(in), b = loaded.forward(in);
    EXPECT_TRUE(test::same_tensor(a.logits, b.logits)) << type;
    if (c.tie_word_embeddings) {
      const auto manual = torch::matmul(a.hidden_last, model.weight("model.embed_tokens.weight").t());
      EXPECT_LT((manual - a.logits).abs().max().item<double>(), 1e-5);
    } else {
      // The q bias is used: zeroing it changes the output.
      model.set_weight("model.layers.0.self_attn.q_proj.bias", torch::zeros({32}));
      EXPECT_FALSE(model.forward(in).logits.equal(a.logits));
    }
  }
}

TEST(LlmModel, SlidingWindowLimitsWhatOneLayerSees) {
  // With one layer, position t attends to t-w+1..t only, and RoPE is relative: its logits equal
  // those of the last w tokens run alone. The cache must apply the same window.
  LlmConfig c = LlmConfig::load(kModelDir + "/config.json");
  c.num_hidden_layers = 1;
  c.sliding_window = 4;
  const auto model = DecoderLM::random(c, {}, 11);
  torch::InferenceMode guard;
  LlmForwardInput in;
  in.input_ids = torch::randint(3, 647, {1, 10}, torch::kLong);
  const auto full = model.forward(in).logits;
  for (int64_t t = 4; t < 10; ++t) {
    LlmForwardInput tail;
    tail.input_ids = in.input_ids.narrow(1, t - 3, 4);
    const auto alone = model.forward(tail).logits.select(1, 3);
    EXPECT_LT((alone - full.select(1, t)).abs().max().item<double>(), 1e-4) << "position " << t;
  }
  auto cache = model.new_cache(1, 10);
  std::vector<torch::Tensor> steps;
  for (int64_t t = 0; t < 10; ++t) {
    LlmForwardInput step;
    step.input_ids = in.input_ids.narrow(1, t, 1);
    steps.push_back(model.forward(step, &cache).logits);
  }
  EXPECT_LT((torch::cat(steps, 1) - full).abs().max().item<double>(), 1e-4);
  // Without the window the early tokens matter.
  LlmConfig wide = c;
  wide.sliding_window = 0;
  LlmForwardInput tail;
  tail.input_ids = in.input_ids.narrow(1, 6, 4);
  const auto unwindowed = DecoderLM::random(wide, {}, 11);
  EXPECT_GT((unwindowed.forward(in).logits.select(1, 9) - unwindowed.forward(tail).logits.select(1, 3)).abs().max().item<double>(), 1e-3);
}

// ---- the loader --------------------------------------------------------------------------------

namespace {

int64_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

}  // namespace

TEST(LlmLoader, A7BShardedBf16CheckpointIsMemoryMappedNotCopied) {
  ScratchDir scratch;
  LlmConfig c = LlmConfig::load(kModelDir + "/config.json");
  c.vocab_size = 32000, c.hidden_size = 4096, c.intermediate_size = 14336, c.num_hidden_layers = 32;
  c.num_attention_heads = 32, c.num_key_value_heads = 8, c.head_dim = 128;
  // A sparse checkpoint: real headers, data regions that are holes (no disk used).
  const std::string dir = scratch.path() + "/mistral-7b";
  write_sparse_llm_checkpoint(dir, c, torch::kBFloat16, 3);
  EXPECT_TRUE(file_exists(dir + "/model-00003-of-00003.safetensors"));

  const int64_t before = resident_bytes();
  LlmLoadOptions o;
  o.dtype = torch::kBFloat16;
  const auto model = DecoderLM::load(dir, o);
  const int64_t grown = resident_bytes() - before;
  int64_t count = 0;
  for (const auto& [name, w] : model.named_weights()) {
    count += w.numel();
    ASSERT_EQ(w.scalar_type(), torch::kBFloat16) << name;
  }
  EXPECT_EQ(count, 7241732096LL);
  // 14.5 GB of weights, but nothing was read: the tensors point into the mappings.
  EXPECT_LT(grown, 256ll << 20) << "resident memory grew by " << grown << " bytes";
  // Reading one row touches only its pages, and the hole reads as zeros.
  EXPECT_EQ(model.weight("model.layers.31.mlp.down_proj.weight")[7].abs().sum().item<float>(), 0.0f);
}

TEST(LlmLoader, BrokenCheckpointsNameTheFileAndTensor) {
  ScratchDir scratch;
  const auto weights = DecoderLM::load(kModelDir).named_weights();
  const std::string config = read_file(kModelDir + "/config.json");
  auto model_dir = [&](const std::string& name, NamedTensors tensors) {
    const std::string dir = write_config(scratch.path() + "/" + name, config);
    write_safetensors(dir + "/model.safetensors", tensors);
    return dir;
  };
  auto without = weights;
  without.erase(without.begin() + 3);
  const std::string missing = weights[3].first;
  EXPECT_NE(error_of<FormatError>([&] { DecoderLM::load(model_dir("missing", without)); }).find("'" + missing + "' is missing"),
            std::string::npos);
  auto misshaped = weights;
  misshaped[1].second = torch::zeros({3, 3});
  EXPECT_NE(error_of<FormatError>([&] { DecoderLM::load(model_dir("shape", misshaped)); })
                .find("model.safetensors: tensor '" + weights[1].first + "' has shape [3,3], expected"),
            std::string::npos);
  auto extra = weights;
  extra.emplace_back("model.layers.9.mlp.gate_proj.weight", torch::zeros({2}));
  EXPECT_NE(error_of<FormatError>([&] { DecoderLM::load(model_dir("extra", extra)); }).find("unexpected tensor 'model.layers.9"),
            std::string::npos);
  // Rotary tables that old Llama exports carry are ignored (recomputed from the config).
  auto with_rotary = weights;
  with_rotary.emplace_back("model.layers.0.self_attn.rotary_emb.inv_freq", torch::zeros({8}));
  EXPECT_NO_THROW(DecoderLM::load(model_dir("rotary", with_rotary)));
  // A truncated shard.
  const std::string dir = model_dir("truncated", weights);
  const std::string bytes = read_file(dir + "/model.safetensors");
  write_bytes(dir + "/model.safetensors", bytes.substr(0, bytes.size() - 100));
  EXPECT_NE(error_of<FormatError>([&] { DecoderLM::load(dir); }).find("truncated"), std::string::npos);
  // A directory with no weights, and none at all.
  const std::string empty = write_config(scratch.path() + "/empty", config);
  EXPECT_NE(error_of<IoError>([&] { DecoderLM::load(empty); }).find("neither model.safetensors nor"), std::string::npos);
  EXPECT_THROW(DecoderLM::load(scratch.path() + "/nowhere"), IoError);
  // An index naming a shard that is not there.
  const std::string bad_index = write_config(scratch.path() + "/index", config);
  write_file_atomically(bad_index + "/model.safetensors.index.json", R"({"weight_map": {"lm_head.weight": "gone.safetensors"}})");
  EXPECT_NE(error_of<IoError>([&] { DecoderLM::load(bad_index); }).find("gone.safetensors"), std::string::npos);
}

// ---- llm_tool ----------------------------------------------------------------------------------

namespace {

std::string llm_tool(const std::string& args, const ScratchDir& scratch, int* rc = nullptr) {
  const auto r = run_command(tool("llm_tool") + " " + args + " --log-level warn", scratch.path());
  if (rc) {
    *rc = r.exit_code;
    return r.err;
  }
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return r.out;
}

std::map<std::string, torch::Tensor> read_map(const std::string& path) {
  std::map<std::string, torch::Tensor> m;
  for (auto& [k, v] : read_safetensors(path)) m[k] = v;
  return m;
}

}  // namespace

TEST(LlmTool, TokenizePrintsTheFixtureIds) {
  ScratchDir scratch;
  const auto cases = nlohmann::json::parse(read_file(kModelDir + "/tokenizer_expected.json"))["cases"];
  for (const auto& c : cases) {
    const std::string text = c["text"].get<std::string>();
    if (text.find('\'') != std::string::npos) continue;  // keep the shell quoting simple
    const auto out = llm_tool("tokenize --model " + kModelDir +
                                  " --add-special-tokens '<MEM0>,<MEM1>,<MEM2>,<MEM3>,<AE>,<ENC>,<SEP>' --text '" + text + "'",
                              scratch);
    EXPECT_EQ(nlohmann::json::parse(out), c["clara_ids"]) << text;
  }
  // --bos prints what transformers' tokenizer(text) gives, i.e. add_special_tokens=True
  // (tokenizer-cases/expected.json, made by tests/scripts/make_tokenizer_cases.py).
  const auto clara = nlohmann::json::parse(read_file(fixture("tokenizer-cases/expected.json")))["configs"]["clara"];
  std::string added;
  for (const auto& t : clara["add_special_tokens"]) added += (added.empty() ? "" : ",") + t.get<std::string>();
  size_t checked = 0;
  for (const auto& e : clara["encode"]) {
    const std::string text = e["text"].get<std::string>();
    if (text.find('\'') != std::string::npos) continue;
    const auto out = llm_tool("tokenize --bos --model " + kModelDir + " --add-special-tokens '" + added + "' --text '" + text + "'", scratch);
    EXPECT_EQ(nlohmann::json::parse(out), e["ids_with_special"]) << text;
    ++checked;
  }
  EXPECT_GE(checked, 10u);
}

TEST(LlmTool, ForwardAndGenerateReproduceTheFixtureThroughFiles) {
  ScratchDir scratch;
  auto e = expected();
  const std::string in = scratch.path() + "/in.safetensors", out = scratch.path() + "/out.safetensors";
  write_safetensors(in, {{"input_ids", e["input_ids"]}, {"attention_mask", e["attention_mask"]}, {"position_ids", e["position_ids"]}});
  llm_tool("forward --model " + kModelDir + " --in " + in + " --out " + out + " --device cpu", scratch);
  auto got = read_map(out);
  EXPECT_LT(masked_max_diff(got["logits"], e["logits.batch"], e["attention_mask"]), 1e-4);
  EXPECT_LT(masked_max_diff(got["hidden_last"], e["hidden.last.batch"], e["attention_mask"]), 1e-4);
  EXPECT_EQ(got["logits"].scalar_type(), torch::kFloat);
  EXPECT_EQ(got["logits"][0][0].abs().sum().item<float>(), 0.0f);  // row 0 starts with padding

  write_safetensors(in, {{"inputs_embeds", e["embeds.inputs_embeds"]}});
  llm_tool("forward --model " + kModelDir + " --in " + in + " --out " + out, scratch);
  EXPECT_LT((read_map(out)["logits"] - e["logits.embeds"]).abs().max().item<double>(), 1e-4);

  write_safetensors(in, {{"input_ids", e["generate.prompt_ids"]}, {"attention_mask", e["generate.attention_mask"]}});
  for (const std::string flags : {"--no-cache", ""}) {
    llm_tool("generate --model " + kModelDir + " --in " + in + " --out " + out +
                 " --max-new-tokens 12 --greedy --ignore-eos " + flags, scratch);
    EXPECT_TRUE(test::same_tensor(read_map(out)["output_ids"], e["generate.output_ids"])) << flags;
  }
  // bf16 forward runs and stays close.
  write_safetensors(in, {{"input_ids", e["input_ids"]}, {"attention_mask", e["attention_mask"]}, {"position_ids", e["position_ids"]}});
  llm_tool("forward --model " + kModelDir + " --in " + in + " --out " + out + " --dtype bfloat16", scratch);
  EXPECT_LT(masked_max_diff(read_map(out)["logits"], e["logits.batch"], e["attention_mask"]), 0.35);
}

TEST(LlmTool, GenerateFromAPromptPrintsTheDecodedText) {
  ScratchDir scratch;
  const auto prompts = nlohmann::json::parse(read_file(kModelDir + "/prompts.json"));
  // The text is streamed step by step; byte-fallback runs (two of the three rows decode to U+FFFD)
  // must come out as the whole continuation decodes them.
  for (size_t i = 0; i < prompts["generation_prompts"].size(); ++i) {
    const auto out = llm_tool("generate --model " + kModelDir + " --prompt '" +
                                  prompts["generation_prompts"][i].get<std::string>() + "' --max-new-tokens 12 --greedy --ignore-eos --dtype float32",
                              scratch);
    EXPECT_EQ(out, prompts["generated_text"][i].get<std::string>() + "\n") << i;
  }
}

TEST(LlmTool, BadInputsGiveOneLineErrors) {
  ScratchDir scratch;
  const std::string in = scratch.path() + "/in.safetensors", out = scratch.path() + "/out.safetensors";
  int rc = 0;
  write_safetensors(in, {{"input_ids", torch::zeros({2, 3}, torch::kFloat)}});
  auto msg = llm_tool("forward --model " + kModelDir + " --in " + in + " --out " + out, scratch, &rc);
  EXPECT_NE(rc, 0);
  EXPECT_NE(msg.find("tensor 'input_ids' must be an integer tensor"), std::string::npos) << msg;
  EXPECT_EQ(count_lines(msg), 1) << msg;
  write_safetensors(in, {{"input_ids", torch::full({1, 3}, 5000, torch::kLong)}});
  msg = llm_tool("forward --model " + kModelDir + " --in " + in + " --out " + out, scratch, &rc);
  EXPECT_NE(msg.find("tensor 'input_ids' holds 5000, outside the model's vocabulary [0, 647)"), std::string::npos) << msg;
  EXPECT_EQ(rc, 4);
  write_safetensors(in, {{"input_ids", torch::ones({1, 3}, torch::kLong)}, {"attention_mask", torch::ones({1, 4}, torch::kLong)}});
  msg = llm_tool("generate --model " + kModelDir + " --in " + in + " --out " + out, scratch, &rc);
  EXPECT_NE(msg.find("'attention_mask' must be [1, 3]"), std::string::npos) << msg;
  msg = llm_tool("generate --model " + kModelDir + " --in " + in, scratch, &rc);
  EXPECT_NE(msg.find("--in needs --out"), std::string::npos) << msg;
  msg = run_command(tool("llm_tool") + " frobnicate", scratch.path()).err;
  EXPECT_NE(msg.find("unknown command 'frobnicate'"), std::string::npos) << msg;
  msg = llm_tool("forward --model " + scratch.path() + " --in " + in + " --out " + out, scratch, &rc);
  EXPECT_NE(msg.find("config.json"), std::string::npos) << msg;
  EXPECT_FALSE(file_exists(out));
}

TEST(LlmTool, InitWritesASeededRandomModelThatLoadsWithItsTokenizer) {
  ScratchDir scratch;
  const std::string config = fixture("../../models/llm/tiny-clara.json");
  const std::string a = scratch.path() + "/a", b = scratch.path() + "/b", c = scratch.path() + "/c";
  const auto printed = nlohmann::json::parse(llm_tool("init --config " + config + " --tokenizer " + kModelDir + " --out " + a + " --seed 7", scratch));
  llm_tool("init --config " + config + " --tokenizer " + kModelDir + " --out " + b + " --seed 7", scratch);
  llm_tool("init --config " + config + " --tokenizer " + kModelDir + " --out " + c + " --seed 8 --dtype bfloat16", scratch);
  const auto model = DecoderLM::load(a);
  const auto& cfg = model.config();
  EXPECT_EQ(cfg.hidden_size, 256);
  EXPECT_EQ(cfg.num_hidden_layers, 4);
  EXPECT_EQ(printed["parameters"].get<int64_t>(), cfg.parameter_count());
  // Same seed, same bytes; another seed, other weights; the dtype flag is honoured.
  EXPECT_EQ(read_file(a + "/model.safetensors"), read_file(b + "/model.safetensors"));
  const auto wa = read_map(a + "/model.safetensors"), wc = read_map(c + "/model.safetensors");
  EXPECT_EQ(wc.at("model.embed_tokens.weight").scalar_type(), torch::kBFloat16);
  EXPECT_FALSE(torch::allclose(wa.at("model.embed_tokens.weight"), wc.at("model.embed_tokens.weight").to(torch::kFloat), 0, 1e-3));
  // Weights are normal(0, 0.02), norms one.
  const auto q = wa.at("model.layers.0.self_attn.q_proj.weight");
  EXPECT_NEAR(q.std().item<double>(), 0.02, 0.001);
  EXPECT_NEAR(q.mean().item<double>(), 0.0, 0.001);
  EXPECT_TRUE(wa.at("model.norm.weight").eq(1).all().item<bool>());
  // The tokenizer came along: the new directory tokenizes as the fixture does.
  EXPECT_EQ(llm_tool("tokenize --model " + a + " --text 'hello world'", scratch),
            llm_tool("tokenize --model " + kModelDir + " --text 'hello world'", scratch));
  int rc = 0;
  const auto msg = llm_tool("init --config " + config + " --tokenizer " + scratch.path() + " --out " + scratch.path() + "/d", scratch, &rc);
  EXPECT_EQ(rc, 3) << msg;
  EXPECT_EQ(count_lines(msg), 1) << msg;
  EXPECT_NE(msg.find("tokenizer.model"), std::string::npos) << msg;
  EXPECT_FALSE(file_exists(scratch.path() + "/d/model.safetensors"));
}
