// LoRA adapters against the real PEFT library (tests/fixtures/peft-adapter: an adapter PEFT 0.17.1
// saved in its standard layout, and the logits it computes with it, unmerged and merged), PEFT's
// initialisation, switching adapters per call, merging, the files, and bad adapters.
#include <hrmclara/config.h>
#include <hrmclara/errors.h>
#include <hrmclara/files.h>
#include <hrmclara/llm.h>
#include <hrmclara/lora.h>
#include <hrmclara/tensor_io.h>

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <set>

#include "test_util.h"

using namespace hrmclara;
using namespace hrmclara::test;

namespace {

const std::string kBase = fixture("clara-reference");
const std::string kPeft = fixture("peft-adapter");

std::map<std::string, torch::Tensor> peft_expected() {
  std::map<std::string, torch::Tensor> m;
  for (auto& [k, v] : read_safetensors(kPeft + "/expected.safetensors")) m[k] = v.clone();
  return m;
}

// Largest absolute difference over the attended positions.
double masked_max_diff(const torch::Tensor& got, const torch::Tensor& want, const torch::Tensor& mask) {
  const auto keep = mask.ne(0).unsqueeze(-1).expand_as(want);
  return (got.to(torch::kFloat) - want).abs().masked_select(keep).max().item<double>();
}

torch::Tensor logits_of(const DecoderLM& model, const LoraAdapter* adapter) {
  auto e = peft_expected();
  LlmForwardInput in;
  in.input_ids = e["input_ids"];
  in.attention_mask = e["attention_mask"];
  in.position_ids = torch::arange(e["input_ids"].size(1)).unsqueeze(0).expand_as(e["input_ids"]);
  LlmForwardOptions o;
  o.adapter = adapter;
  return model.forward(in, nullptr, o).logits;
}

}  // namespace

TEST(Lora, PeftAdapterGivesPeftsLogitsUnmergedAndMerged) {
  auto e = peft_expected();
  auto model = DecoderLM::load(kBase);
  const auto adapter = read_peft_adapter(kPeft, "default", model.config(), c10::kFloat, c10::Device(c10::kCPU));
  EXPECT_EQ(adapter.config().r, 4);
  EXPECT_DOUBLE_EQ(adapter.config().scaling(), 4.0);
  EXPECT_TRUE(adapter.has(0, LoraTarget::kQ));
  EXPECT_FALSE(adapter.has(0, LoraTarget::kK));
  EXPECT_TRUE(adapter.has(1, LoraTarget::kDown));
  EXPECT_EQ(adapter.state_dict().size(), 12u);
  const auto mask = e["attention_mask"];
  const double base_err = masked_max_diff(logits_of(model, nullptr), e["logits.base"], mask);
  const double adapter_err = masked_max_diff(logits_of(model, &adapter), e["logits.adapter"], mask);
  EXPECT_LE(base_err, 1e-4);
  EXPECT_LE(adapter_err, 1e-4);
  // The adapter matters: its logits are far from the base's (measured up to 16).
  EXPECT_GT(masked_max_diff(e["logits.adapter"], e["logits.base"], mask), 1.0);

  const auto q_before = model.weight("model.layers.0.self_attn.q_proj.weight").clone();
  model.merge_adapter(adapter);
  EXPECT_EQ(model.merged_adapter(), "default");
  EXPECT_FALSE(model.weight("model.layers.0.self_attn.q_proj.weight").equal(q_before));
  const double merged_err = masked_max_diff(logits_of(model, nullptr), e["logits.merged"], mask);
  EXPECT_LE(merged_err, 1e-4);  // the merged weights are the model, as after PEFT's merge_and_unload
  EXPECT_LE(masked_max_diff(logits_of(model, &adapter), e["logits.merged"], mask), 1e-4);
  // Another adapter while one is merged: the merged term is taken out, the other added.
  auto half = adapter.clone("half");
  {
    NamedTensors scaled;
    for (const auto& [k, v] : half.state_dict()) scaled.emplace_back(k, k.find("lora_B") != std::string::npos ? v * 0.5 : v);
    half.load_state_dict(scaled, "test");
  }
  const auto half_merged = logits_of(model, &half);
  model.unmerge_adapter();
  const double unmerged_view_err = (half_merged - logits_of(model, &half)).abs().max().item<double>();
  EXPECT_LE(unmerged_view_err, 1e-4);
  model.merge_adapter(adapter);
  EXPECT_THROW(model.merge_adapter(adapter), UsageError);
  model.unmerge_adapter();
  EXPECT_EQ(model.merged_adapter(), "");
  EXPECT_LE((model.weight("model.layers.0.self_attn.q_proj.weight") - q_before).abs().max().item<double>(), 1e-6);
  EXPECT_LE(masked_max_diff(logits_of(model, nullptr), e["logits.base"], mask), 1e-4);
  std::cout << "[ measured ] logits vs PEFT: base " << base_err << ", adapter " << adapter_err << ", merged " << merged_err
            << ", another adapter over the merged one " << unmerged_view_err << std::endl;
}

TEST(Lora, AdaptersSwitchPerCallWithoutTouchingTheBase) {
  auto model = DecoderLM::load(kBase);
  const auto a = read_peft_adapter(kPeft, "a", model.config(), c10::kFloat, c10::Device(c10::kCPU));
  auto b = a.clone("b");
  {
    NamedTensors scaled;
    for (const auto& [k, v] : b.state_dict()) scaled.emplace_back(k, v * 0.5);
    b.load_state_dict(scaled, "test");
  }
  const auto* q = model.weight("model.layers.0.self_attn.q_proj.weight").data_ptr();
  const auto la = logits_of(model, &a), lb = logits_of(model, &b), base = logits_of(model, nullptr);
  EXPECT_FALSE(torch::allclose(la, lb));
  EXPECT_TRUE(same_tensor(logits_of(model, &a), la));
  EXPECT_TRUE(same_tensor(logits_of(model, nullptr), base));
  EXPECT_EQ(model.weight("model.layers.0.self_attn.q_proj.weight").data_ptr(), q);  // no copy, no change
}

TEST(Lora, PeftInitialisationChangesNothingUntilTrained) {
  auto model = DecoderLM::load(kBase);
  LoraConfig c;
  c.r = 8;
  c.alpha = 16;
  LoraAdapter fresh("fresh", c, model.config(), c10::kFloat, c10::Device(c10::kCPU));
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  fresh.reset_parameters(gen);
  EXPECT_EQ(fresh.state_dict().size(), 2u * 7u * 2u);
  for (int64_t l = 0; l < fresh.layers(); ++l)
    for (int i = 0; i < kLoraTargetCount; ++i) {
      const auto t = static_cast<LoraTarget>(i);
      const double bound = 1.0 / std::sqrt(static_cast<double>(fresh.A(l, t).size(1)));
      EXPECT_LE(fresh.A(l, t).abs().max().item<double>(), bound);
      EXPECT_GT(fresh.A(l, t).abs().max().item<double>(), 0.5 * bound);  // kaiming-uniform fills its range
      EXPECT_EQ(fresh.B(l, t).abs().max().item<double>(), 0.0);
    }
  EXPECT_TRUE(same_tensor(logits_of(model, &fresh), logits_of(model, nullptr)));
  // Runtime names as PEFT's, with the adapter's name; gradients reach A and B only.
  EXPECT_EQ(fresh.named_parameters()[0].first, "model.layers.0.self_attn.q_proj.lora_A.fresh.weight");
  fresh.set_requires_grad(true);
  logits_of(model, &fresh).sum().backward();
  EXPECT_TRUE(fresh.B(0, LoraTarget::kQ).grad().defined());
  EXPECT_FALSE(model.weight("model.layers.0.self_attn.q_proj.weight").requires_grad());
}

TEST(Lora, FilesRoundTripInPeftsLayout) {
  ScratchDir dir;
  auto model = DecoderLM::load(kBase);
  const auto a = read_peft_adapter(kPeft, "default", model.config(), c10::kFloat, c10::Device(c10::kCPU));
  write_peft_adapter(dir / "out", a, "clara-reference");
  const auto back = read_peft_adapter(dir / "out", "default", model.config(), c10::kFloat, c10::Device(c10::kCPU));
  expect_same_tensors(back.state_dict(), a.state_dict());
  // The same keys as PEFT's own file, and the config fields PEFT reads.
  std::set<std::string> ours, peft;
  for (const auto& [k, v] : read_safetensors(dir / "out/adapter_model.safetensors")) ours.insert(k);
  for (const auto& [k, v] : read_safetensors(kPeft + "/adapter_model.safetensors")) peft.insert(k);
  EXPECT_EQ(ours, peft);
  const Json cfg = read_json_file(dir / "out/adapter_config.json");
  EXPECT_EQ(cfg["peft_type"], "LORA");
  EXPECT_EQ(cfg["r"], 4);
  EXPECT_EQ(cfg["lora_alpha"], 16.0);
  EXPECT_EQ(cfg["task_type"], "CAUSAL_LM");
  EXPECT_EQ(read_peft_config(dir / "out/adapter_config.json").target_modules, a.config().target_modules);
}

TEST(Lora, BadAdaptersNameTheFileAndTheProblem) {
  ScratchDir dir;
  auto model = DecoderLM::load(kBase);
  const auto cpu = c10::Device(c10::kCPU);
  auto copy_fixture = [&](const std::string& name) {
    make_directories(dir / name);
    copy_file(kPeft + "/adapter_model.safetensors", dir / (name + "/adapter_model.safetensors"));
    copy_file(kPeft + "/adapter_config.json", dir / (name + "/adapter_config.json"));
    return dir / name;
  };
  auto with_config = [&](const std::string& name, const std::string& key, const Json& value) {
    const std::string d = copy_fixture(name);
    Json cfg = read_json_file(d + "/adapter_config.json");
    cfg[key] = value;
    write_json_file(d + "/adapter_config.json", cfg);
    return d;
  };
  // Another rank than the tensors: the first misshaped tensor is named with both shapes.
  auto what = error_of<ShapeError>([&] { read_peft_adapter(with_config("rank", "r", 8), "x", model.config(), c10::kFloat, cpu); });
  EXPECT_NE(what.find("adapter_model.safetensors"), std::string::npos) << what;
  EXPECT_NE(what.find("this model needs [8,"), std::string::npos) << what;
  // A base of another size.
  LlmConfig wide = model.config();
  wide.hidden_size = 128;
  what = error_of<ShapeError>([&] { read_peft_adapter(kPeft, "x", wide, c10::kFloat, cpu); });
  EXPECT_NE(what.find("another base"), std::string::npos) << what;
  // Unsupported settings are config errors naming the field.
  for (const auto& [key, value] : std::vector<std::pair<std::string, Json>>{
           {"use_dora", true}, {"target_modules", Json::array({"q_proj", "lm_head"})}, {"modules_to_save", Json::array({"lm_head"})},
           {"peft_type", "IA3"}, {"bias", "all"}}) {
    what = error_of<ConfigError>([&] { read_peft_adapter(with_config("cfg_" + key, key, value), "x", model.config(), c10::kFloat, cpu); });
    EXPECT_NE(what.find(key == "target_modules" ? "lm_head" : key), std::string::npos) << what;
  }
  // Fewer targets in the config than tensors in the file: an unexpected tensor.
  what = error_of<ShapeError>(
      [&] { read_peft_adapter(with_config("targets", "target_modules", Json::array({"q_proj"})), "x", model.config(), c10::kFloat, cpu); });
  EXPECT_NE(what.find("unexpected tensor"), std::string::npos) << what;
  // Missing files.
  make_directories(dir / "empty");
  EXPECT_THROW(read_peft_adapter(dir / "empty", "x", model.config(), c10::kFloat, cpu), IoError);
  EXPECT_THROW(LoraAdapter("a.b", LoraConfig{}, model.config(), c10::kFloat, cpu), UsageError);
}

TEST(Lora, LlmToolRunsAPeftAdapterMergedOrNot) {
  ScratchDir dir;
  auto e = peft_expected();
  write_safetensors(dir / "in.safetensors", {{"input_ids", e["input_ids"]}, {"attention_mask", e["attention_mask"]}});
  for (const std::string flags : {"--adapter " + kPeft, "--adapter " + kPeft + " --merge-adapter"}) {
    const auto r = run_command(tool("llm_tool") + " forward --model " + kBase + " --in " + (dir / "in.safetensors") + " --out " +
                                   (dir / "out.safetensors") + " --log-level warn " + flags,
                               dir.path());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::map<std::string, torch::Tensor> out;
    for (auto& [k, v] : read_safetensors(dir / "out.safetensors")) out[k] = v;
    EXPECT_LE(masked_max_diff(out["logits"], e["logits.adapter"], e["attention_mask"]), 1e-4) << flags;
  }
  const auto r = run_command(tool("llm_tool") + " forward --model " + kBase + " --in " + (dir / "in.safetensors") + " --out " +
                                 (dir / "x.safetensors") + " --merge-adapter",
                             dir.path());
  EXPECT_EQ(r.exit_code, 2) << r.err;
}

TEST(Lora, Bfloat16BranchOverABfloat16BaseStaysNearFloat32) {
  // Upstream's path: the LoRA weights take the base's dtype, so over a bf16 base the branch runs
  // in bf16. Against PEFT's float32 logits (of size ~13): bf16 rounding through 2 layers.
  auto e = peft_expected();
  LlmLoadOptions o;
  o.dtype = c10::kBFloat16;
  auto model = DecoderLM::load(kBase, o);
  const auto adapter = read_peft_adapter(kPeft, "default", model.config(), c10::kBFloat16, c10::Device(c10::kCPU));
  EXPECT_EQ(adapter.dtype(), c10::kBFloat16);
  const double err = masked_max_diff(logits_of(model, &adapter), e["logits.adapter"], e["attention_mask"]);
  std::cout << "[ measured ] bf16 base + bf16 LoRA vs PEFT float32: " << err << std::endl;
  EXPECT_LE(err, 0.5);
  EXPECT_GT(err, 0.0);
}
